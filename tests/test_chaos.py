"""The fault and correctness checker (the bench.chaos package) in the test suite.

``pytest -m chaos`` runs it once on a real 3-member cluster for a couple of minutes with a fixed
seed (override with ``ETCDKIT_CHAOS_SEED``, the length with ``ETCDKIT_CHAOS_SECONDS``) and
prints its summary: ``watch_prefix`` snapshots and raw ``watch()`` event streams, both exact.
The other tests here show, without etcd, that the checker does catch what it claims to catch:
a checker that never fails proves nothing.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping
from typing import Any

import bench.chaos
import pytest
from aetcd import rpc
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
from bench.chaos.history import Event, EventLog
from bench.chaos.raw import RawChecker, RawConsumer
from bench.chaos.writer import apply_ops

from _helpers import fresh_client
from etcdkit import (
    Change,
    ChangeKind,
    EventType,
    KeyValue,
    RangeResult,
    Snapshot,
    WatchBatch,
    WatchEvent,
)
from etcdkit.testing import EtcdServer

DEFAULT_SEED = 20250611
SECONDS = float(os.environ.get("ETCDKIT_CHAOS_SECONDS", "150"))


@pytest.mark.chaos
@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.timeout(SECONDS + 240)
async def test_snapshots_stay_exact_through_random_faults(
    record_property: Callable[[str, object], None],
) -> None:
    seed = int(os.environ.get("ETCDKIT_CHAOS_SEED", DEFAULT_SEED))
    report = await run_chaos(seed, SECONDS)
    record_property("report", report.summary())
    assert report.mismatches == [], report.summary()
    assert report.mismatch_count == 0
    assert report.skipped == 0
    assert report.snapshots_checked > 100
    assert report.checked_by_history > 0  # compaction happened and history was used
    missing = [f for f in FAULTS if not report.faults.get(f)]
    assert not missing, f"faults never injected: {missing}"
    # the raw watch: every event exact, in order, once; the event log itself equal to etcd's
    assert report.raw_watch_mismatches == 0
    assert report.raw_per_consumer.get("raw", 0) > 100
    assert report.raw_per_consumer.get("raw-slow", 0) > 100
    assert report.raw_log_verified > 100
    assert report.raw_stepped_off > 0  # the slow one fell past its buffer bound, and came back


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


async def test_wait_callers_create_keys_only_with_a_put_that_answered(
    etcd_server_factory: object,
) -> None:
    # A put that timed out may be applied later (here: etcd, paused, reads it once resumed),
    # so the checker's create_once says -1 for it and its wait_for caller takes a fresh key.
    server: EtcdServer = etcd_server_factory()  # type: ignore[operator]
    async with fresh_client(server.endpoint, timeout=1) as client:
        run = Run(7, 1.0, ChaosConfig(), report_for(7), None, [], None)  # type: ignore[arg-type]
        run.direct = client
        checker = Checker(run)
        rev = await checker.create_once("/wait/answered")
        kv = await client.get("/wait/answered")
        assert kv is not None
        assert rev == kv.create_revision > 0
        server.pause()
        try:
            assert await checker.create_once("/wait/timed-out") == -1
        finally:
            server.resume()


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


def test_event_log_indexes_find_and_prune() -> None:
    log = EventLog()
    log.start = 10
    log.extend([Event("put", b"a", 11, b"1"), Event("put", b"b", 12, b"2")])
    log.extend([Event("put", b"c", 12, b"3"), Event("delete", b"a", 14, b"", b"1")])
    assert len(log) == 4
    assert log.last_revision == 14
    assert log.index_after(10) == 0
    assert log.index_after(12) == 3
    assert log.find(12, b"c") == 2
    assert log.find(12, b"a") is None
    assert log.get(4) is None
    log.prune(2)
    assert len(log) == 4  # indexes do not move
    assert log.get(2) == Event("put", b"c", 12, b"3")
    with pytest.raises(IndexError):
        log.get(1)
    with pytest.raises(AssertionError):
        log.extend([Event("put", b"a", 13, b"x")])  # before the newest


def test_the_writer_models_etcd_events() -> None:
    raw = {b"d/a": (b"1", 0), b"d/b": (b"2", 7), b"d/c": (b"3", 0)}
    ops = [
        rpc_put(b"d/a", b"10"),
        rpc_put(b"d/z", b"new"),
        rpc_delete(b"d/nothing"),
        rpc_delete(b"d/b", b"d/d"),  # a range: b and c, in key order
    ]
    after, events = apply_ops(raw, ops, 42)
    assert events == [
        Event("put", b"d/a", 42, b"10", b"1"),
        Event("put", b"d/z", 42, b"new", None),
        Event("delete", b"d/b", 42, b"", b"2"),
        Event("delete", b"d/c", 42, b"", b"3"),
    ]
    assert after == {b"d/a": (b"10", 0), b"d/z": (b"new", 0)}
    assert raw[b"d/b"] == (b"2", 7)  # the input is left alone


def rpc_put(key: bytes, value: bytes) -> Any:
    return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value))


def rpc_delete(key: bytes, range_end: bytes = b"") -> Any:
    return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key, range_end=range_end))


def _raw_checker(events: list[Event]) -> tuple[RawChecker, RawConsumer]:
    cfg = ChaosConfig(history_wait=0.2)
    run = Run(7, 1.0, cfg, report_for(7), None, [], None)  # type: ignore[arg-type]
    run.events.start = 10
    run.events.extend(events)
    run.history.record(10, {})
    run.history.cover(events[-1].revision)
    checker = RawChecker(run)
    consumer = RawConsumer("raw", None, prev_kv=True)  # type: ignore[arg-type]
    checker.consumers.append(consumer)
    return checker, consumer


def wev(e: Event, prev: bytes | None = None) -> WatchEvent:
    kind = EventType.PUT if e.type == "put" else EventType.DELETE
    prev_kv = None if prev is None else KeyValue(e.key, prev, 1, 1, 1, 0)
    return WatchEvent(kind, KeyValue(e.key, e.value, 1, e.revision, 1, 0), prev_kv)


async def test_raw_checker_passes_the_exact_stream() -> None:
    log = [Event("put", b"a", 11, b"1"), Event("put", b"b", 12, b"2"), Event("put", b"c", 12, b"3")]
    checker, c = _raw_checker(log)
    await checker.check_batch(c, WatchBatch(10, []))  # a confirmation: nothing due yet
    await checker.check_batch(c, WatchBatch(11, [wev(log[0])]))
    await checker.check_batch(c, WatchBatch(11, []))  # every change up to 11 was delivered
    await checker.check_batch(c, WatchBatch(15, [wev(log[1]), wev(log[2])]))
    report = checker.run.report
    assert report.mismatches == []
    assert report.raw_events_checked == 3
    assert report.raw_progress_checked == 2
    assert c.pos == 3
    await checker.converge()
    assert report.mismatches == []


async def test_raw_checker_flags_lost_repeated_wrong_split_and_false_progress() -> None:
    log = [
        Event("put", b"a", 11, b"1"),
        Event("put", b"b", 12, b"2"),
        Event("put", b"c", 12, b"3"),  # a txn: b and c at 12
        Event("delete", b"a", 13, b"", b"1"),
        Event("put", b"a", 14, b"4"),
        Event("put", b"d", 15, b"5"),
    ]
    checker, c = _raw_checker(log)
    run = checker.run
    await checker.check_batch(c, WatchBatch(11, [wev(log[0])]))
    await checker.check_batch(c, WatchBatch(12, []))  # says 12 was delivered: it was not
    await checker.check_batch(c, WatchBatch(12, [wev(log[1])]))
    await checker.check_batch(c, WatchBatch(12, [wev(log[2])]))  # the txn split in two
    await checker.check_batch(c, WatchBatch(14, [wev(log[4])]))  # the delete at 13 lost
    await checker.check_batch(c, WatchBatch(14, [wev(log[4])]))  # repeated
    wrong = Event("put", b"d", 15, b"other")
    await checker.check_batch(c, WatchBatch(15, [wev(wrong)]))  # wrong value
    kinds = [m.kind for m in run.report.mismatches]
    assert kinds == [
        "raw-progress",
        "raw-batch",  # split
        "raw-event",  # lost
        "raw-batch",  # repeated: a revision again...
        "raw-event",  # ... and the event again
        "raw-event",  # wrong value
    ]
    assert "lost 1 events" in run.report.mismatches[2].detail
    assert "repeated" in run.report.mismatches[4].detail
    assert run.report.raw_watch_mismatches == len(kinds) == run.report.mismatch_count


async def test_raw_checker_flags_a_wrong_prev_kv_and_a_short_stream() -> None:
    log = [Event("put", b"a", 11, b"1"), Event("put", b"a", 12, b"2", b"1")]
    checker, c = _raw_checker(log)
    await checker.check_batch(c, WatchBatch(11, [wev(log[0])]))
    await checker.check_batch(c, WatchBatch(12, [wev(log[1], prev=b"0")]))
    checker.run.events.extend([Event("put", b"b", 13, b"3")])
    checker.run.history.cover(13)
    c.ended = True  # the stream ends before the event at 13
    await checker.converge()
    assert [m.kind for m in checker.run.report.mismatches] == ["raw-prev-kv", "raw-converge"]


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
