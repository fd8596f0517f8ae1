"""The queue, counter and STM fault checkers (bench.chaos.queues / counter / stm) in the test
suite.

``pytest -m chaos`` runs each once on a real 3-member cluster for a short while with a fixed seed
(override with ``ETCDKIT_RECIPE_CHAOS_SEED``, the length with ``ETCDKIT_RECIPE_CHAOS_SECONDS``)
and prints its summary. The other tests show, without etcd, that their checks catch what they
claim to catch.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from bench.chaos.counter import check_history, run_counter_chaos
from bench.chaos.queues import check_deliveries, run_queue_chaos
from bench.chaos.stm import check_replay, run_stm_chaos

DEFAULT_SEED = 20261204
SECONDS = float(os.environ.get("ETCDKIT_RECIPE_CHAOS_SECONDS", "12"))


def seed() -> int:
    return int(os.environ.get("ETCDKIT_RECIPE_CHAOS_SEED", DEFAULT_SEED))


@pytest.mark.chaos
@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.timeout(SECONDS + 150)
async def test_queue_delivers_each_item_once_through_faults(
    record_property: Callable[[str, object], None],
) -> None:
    report = await run_queue_chaos(seed(), SECONDS)
    record_property("report", report.summary())
    assert report.violations == [], report.summary()
    assert report.puts_added > 100
    assert report.taken > 100
    assert sum(report.faults.values()) >= 3


@pytest.mark.chaos
@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.timeout(SECONDS + 150)
async def test_counter_loses_no_acknowledged_add_through_faults(
    record_property: Callable[[str, object], None],
) -> None:
    report = await run_counter_chaos(seed(), SECONDS)
    record_property("report", report.summary())
    assert report.violations == [], report.summary()
    assert report.adds_acked > 100
    assert report.final_value >= report.acked_sum
    assert sum(report.faults.values()) >= 3


@pytest.mark.chaos
@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.timeout(SECONDS + 150)
async def test_stm_transfers_keep_the_sum_through_faults(
    record_property: Callable[[str, object], None],
) -> None:
    report = await run_stm_chaos(seed(), SECONDS)
    record_property("report", report.summary())
    assert report.violations == [], report.summary()
    assert sum(report.faults.values()) >= 3


# -- the checks themselves, without etcd ----------------------------------------------------------


def test_queue_check_catches_duplicates_strays_and_silent_losses() -> None:
    puts = {"a": (True, "/q/1"), "b": (True, "/q/2"), "c": (None, None), "d": (False, None)}
    ok = check_deliveries(puts, ["a", "c"], ["b"], set())
    assert ok.violations == []
    assert ok.unknown_puts_delivered == 1
    bad = check_deliveries(puts, ["a", "a", "d", "x"], [], set())
    assert "item a delivered 2 times" in bad.violations
    assert "item d appeared, but its put failed" in bad.violations
    assert "item x appeared, but no producer put it" in bad.violations
    assert "item b (/q/2) was added, then lost without a report" in bad.violations
    documented = check_deliveries(puts, ["a"], [], {"/q/2"})
    assert documented.violations == []
    assert documented.lost_as_documented == 1


def test_counter_check_catches_lost_and_stray_updates() -> None:
    assert check_history([0, 1, 3, 6], [(1, 1), (2, 3), (3, 6)], []) == ([], 0)
    bad, _ = check_history([0, 1, 3], [(1, 1), (2, 3), (3, 6)], [])  # an ack not applied
    assert any("which no step of 3 made" in b for b in bad)
    bad, _ = check_history([0, 5], [], [])
    assert any("no add makes that" in b for b in bad)
    assert check_history([0, 1, 3], [(1, 1)], [2]) == ([], 1)  # an unknown add that landed


def test_stm_check_catches_a_broken_invariant() -> None:
    start = [10, 10]
    assert check_replay(start, [(5, {0: 7, 1: 13})], [(0, 1, 3)], []) == ([], 0)
    bad, _ = check_replay(start, [(5, {0: 7, 1: 12})], [], [])
    assert any("sum 19" in b for b in bad)
    bad, _ = check_replay(start, [(5, {0: 7, 1: 13})], [], [])
    assert any("no worker committed" in b for b in bad)
