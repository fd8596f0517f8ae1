"""The fault and correctness checker (the bench.chaos package) in the test suite.

``pytest -m chaos`` runs it once on a real 3-member cluster for a couple of minutes with a fixed
seed (override with ``ETCDKIT_CHAOS_SEED``, the length with ``ETCDKIT_CHAOS_SECONDS``) and
prints its summary. The other tests here show, without etcd, that the checker does catch what
it claims to catch: a checker that never fails proves nothing.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from typing import Any

import bench.chaos
import pytest
from bench.chaos import (
    FAULTS,
    ChaosConfig,
    ChaosReport,
    Checker,
    Delivery,
    History,
    Run,
    run_chaos,
    tree_of,
)

from etcdkit import Change, ChangeKind, KeyValue, RangeResult, Snapshot

DEFAULT_SEED = 20250611
SECONDS = float(os.environ.get("ETCDKIT_CHAOS_SECONDS", "150"))


@pytest.mark.chaos
@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.timeout(SECONDS + 240)
async def test_snapshots_stay_exact_through_random_faults(
    capsys: pytest.CaptureFixture[str],
) -> None:
    seed = int(os.environ.get("ETCDKIT_CHAOS_SEED", DEFAULT_SEED))
    report = await run_chaos(seed, SECONDS)
    with capsys.disabled():
        print(f"\n{report.summary()}")
    assert report.mismatches == [], report.summary()
    assert report.mismatch_count == 0
    assert report.skipped == 0
    assert report.snapshots_checked > 100
    assert report.checked_by_history > 0  # compaction happened and history was used
    missing = [f for f in FAULTS if not report.faults.get(f)]
    assert not missing, f"faults never injected: {missing}"


# -- the checker itself, without etcd -------------------------------------------------------------


def test_tree_of_leaves_out_what_the_transform_rejects() -> None:
    kvs = [(b"/d/a", b"1"), (b"/d/b", b"not-int"), (b"/d/c", b""), (b"/d/e", b"-4")]
    assert tree_of(kvs) == {"a": 1, "e": -4}


async def test_history_answers_only_what_it_covers() -> None:
    h = History()
    h.record(10, {"a": 1})
    h.record(12, {"a": 2})
    h.record(13, {"a": 2})  # no change: only extends the cover
    assert h.at(9) is None
    assert h.at(10) == {"a": 1}
    assert h.at(11) == {"a": 1}
    assert h.at(13) == {"a": 2}
    assert h.at(14) is None  # not known yet: the next write may land at 14
    assert await h.wait_at(14, timeout=0.05) is None
    h.cover(20)
    assert h.at(19) == {"a": 2}
    h.prune(12)
    assert h.at(11) is None
    assert h.at(12) == {"a": 2}
    with pytest.raises(AssertionError):
        h.record(20, {})


class _FakeDirect:
    """Answers get_prefix from a fixed table of revision -> records."""

    def __init__(self, table: Mapping[int, dict[bytes, bytes]]) -> None:
        self.table = table

    async def get_prefix(self, prefix: str, *, revision: int = 0) -> RangeResult:
        kvs = [KeyValue(k, v, 1, revision, 1, 0) for k, v in self.table[revision].items()]
        return RangeResult(kvs, revision)


def _checker_with(table: Mapping[int, dict[bytes, bytes]]) -> Checker:
    cfg = ChaosConfig(history_wait=0.5)
    run = Run(7, 1.0, cfg, report_for(7), None, [], None)  # type: ignore[arg-type]
    run.direct = _FakeDirect(table)  # type: ignore[assignment]
    return Checker(run)


def report_for(seed: int) -> ChaosReport:
    return ChaosReport(seed=seed, duration=1.0)


def snap(tree: dict[str, int], revision: int, changes: dict[str, Change[str, int]]) -> Any:
    return Snapshot(tree, revision, changes)


async def test_checker_flags_wrong_trees_changes_and_going_back() -> None:
    d = "/chaos/data/"
    table = {
        5: {f"{d}a".encode(): b"1"},
        6: {f"{d}a".encode(): b"1", f"{d}b".encode(): b"2"},
        7: {f"{d}b".encode(): b"2"},
    }
    checker = _checker_with(table)
    run = checker.run
    run.data = d
    added_b = {"b": Change(ChangeKind.ADDED, "b", None, 2)}
    deliveries = [
        snap({"a": 1}, 5, {}),  # right
        snap({"a": 1, "b": 2}, 6, added_b),  # right
        snap({"a": 1, "b": 2}, 7, {}),  # wrong tree (a was deleted at 7), no changes
        snap({"b": 3}, 6, {"b": Change(ChangeKind.UPDATED, "b", 2, 3)}),  # back; wrong
    ]
    for s in deliveries:
        await checker.check(Delivery("c0", d, s, 0.0))
    kinds = sorted(m.kind for m in run.report.mismatches)
    assert kinds == ["changes", "revision-back", "tree", "tree"]
    assert all(m.seed == 7 for m in run.report.mismatches)
    assert run.report.snapshots_checked == 4
    assert run.report.checked_by_get == 4


async def test_checker_falls_back_to_history_when_compacted() -> None:
    import etcdkit

    class Compacted(_FakeDirect):
        async def get_prefix(self, prefix: str, *, revision: int = 0) -> RangeResult:
            raise etcdkit.CompactedError("compacted", compact_revision=100)

    checker = _checker_with({})
    run = checker.run
    run.direct = Compacted({})  # type: ignore[assignment]
    run.data = "/chaos/data/"
    run.history.record(3, {"a": 1})
    run.history.record(8, {"a": 2})
    await checker.check(Delivery("c0", run.data, snap({"a": 1}, 5, {}), 0.0))
    await checker.check(Delivery("c0", run.data, snap({"a": 1}, 9, {}), 0.0))  # wrong
    assert run.report.checked_by_history == 1  # 9 is beyond the cover: waits, then skips
    assert [m.kind for m in run.report.mismatches] == ["changes"] or run.report.skipped == 1


def test_fault_names_are_known() -> None:
    with pytest.raises(ValueError, match="unknown faults"):
        asyncio.run(run_chaos(1, 1.0, config=ChaosConfig(faults=("kill_everything",))))


def test_public_api_is_pinned() -> None:
    assert sorted(bench.chaos.__all__) == sorted(
        [
            "FAULTS",
            "ChaosConfig",
            "ChaosReport",
            "Checker",
            "Delivery",
            "History",
            "Mismatch",
            "Run",
            "run_chaos",
            "transform",
            "tree_of",
        ]
    )
    assert all(hasattr(bench.chaos, name) for name in bench.chaos.__all__)
