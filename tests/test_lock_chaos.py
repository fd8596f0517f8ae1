"""The lock fault checker (bench.chaos.locks) in the test suite.

``pytest -m chaos`` runs it once on a real 3-member cluster for a short while with a fixed seed
(override with ``ETCDKIT_LOCK_CHAOS_SEED``, the length with ``ETCDKIT_LOCK_CHAOS_SECONDS``) and
prints its summary. The other tests show, without etcd, that its checks do catch what they
claim to catch.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from bench.chaos.locks import LOCK_FAULTS, Record, belief_overlaps, check_journal, run_lock_chaos

DEFAULT_SEED = 20261126
SECONDS = float(os.environ.get("ETCDKIT_LOCK_CHAOS_SECONDS", "30"))


@pytest.mark.chaos
@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.timeout(SECONDS + 120)
async def test_fenced_writes_stay_in_order_through_faults(
    record_property: Callable[[str, object], None],
) -> None:
    seed = int(os.environ.get("ETCDKIT_LOCK_CHAOS_SEED", DEFAULT_SEED))
    report = await run_lock_chaos(seed, SECONDS)
    record_property("report", report.summary())
    assert report.violations == [], report.summary()
    assert report.acquisitions > 20
    assert report.journal_records > 100
    assert report.journal_records >= report.writes_accepted
    missing = [f for f in LOCK_FAULTS if not report.faults.get(f)]
    assert not missing, f"faults never injected: {missing}"
    assert len(report.recoveries) == sum(report.faults.values())


# -- the checks themselves, without etcd ----------------------------------------------------------


def test_journal_in_token_order_by_the_holders_passes() -> None:
    records = [
        Record(10, 5, "p0.0", 5),
        Record(11, 5, "p0.0", 5),
        Record(14, 12, "p1.1", 12),
        Record(15, 12, "p1.1", 12),
    ]
    assert check_journal(records) == []


def test_a_stale_holders_write_is_caught() -> None:
    # p0.0 (token 5) wrote at revision 14, when the holder had token 12
    records = [Record(10, 5, "p0.0", 5), Record(13, 12, "p1.1", 12), Record(14, 5, "p0.0", 12)]
    bad = check_journal(records)
    assert any("stale write accepted at revision 14" in b for b in bad), bad
    assert any("token went down at revision 14" in b for b in bad), bad


def test_two_writers_with_one_token_are_caught() -> None:
    bad = check_journal([Record(10, 5, "p0.0", 5), Record(11, 5, "p2.1", 5)])
    assert bad == ["two writers with token 5: p0.0 and p2.1"]


def test_write_with_no_holder_is_caught() -> None:
    bad = check_journal([Record(10, 5, "p0.0", 0)])
    assert len(bad) == 1
    assert "holder then had token none" in bad[0]


def test_belief_overlaps() -> None:
    assert belief_overlaps({"a": [(0.0, 1.0)], "b": [(1.0, 2.0)]}) == (0, 0.0)
    count, longest = belief_overlaps({"a": [(0.0, 1.0), (3.0, 4.0)], "b": [(0.9, 2.0)]})
    assert count == 1
    assert longest == pytest.approx(100.0)
