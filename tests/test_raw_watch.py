"""The raw watch (``AsyncClient.watch`` / ``Client.watch``) against real etcd: events and
options, how it ends, progress notifications, bad input and the bounded buffer, on both faces.
Resumes through faults are in test_raw_watch_faults.py.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

import etcdkit
import etcdkit._watch as watch_module
from _helpers import fresh_client, quickly
from _raw_watch import (
    WAIT,
    Row,
    assert_same_stream,
    batches_until,
    check_batch,
    confirmed,
    events_until,
    row,
    sync_events_until,
    until,
)
from etcdkit import AsyncClient, Client, EventType, Op, SyncWatch, Watch, WatchBatch
from etcdkit.server import EtcdServer

# -- events and options ---------------------------------------------------------------------------


async def test_puts_and_deletes_arrive_in_order(etcd: AsyncClient, etcd_prefix: str) -> None:
    p = etcd_prefix
    async with etcd.watch(p, prefix=True) as w:
        r1 = await etcd.put(p + "a", "1")
        r2 = await etcd.put(p + "b", "2")
        await etcd.delete(p + "a")
        r3 = await etcd.get_revision()
        events = await events_until(w, r3)
    assert [row(e) for e in events] == [
        ("put", (p + "a").encode(), r1, b"1"),
        ("put", (p + "b").encode(), r2, b"2"),
        ("delete", (p + "a").encode(), r3, b""),
    ]
    assert [e.type for e in events] == [EventType.PUT, EventType.PUT, EventType.DELETE]
    assert events[0].kv.create_revision == r1
    assert events[0].kv.version == 1
    assert all(e.prev_kv is None for e in events)  # not asked for
    assert etcd.stats.watches == 0


async def test_one_key_a_range_and_a_prefix_see_exactly_their_keys(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    p = etcd_prefix
    keys = ["a", "ab", "b", "c", "d"]
    async with (
        etcd.watch(p + "a") as one,
        etcd.watch(p + "a", p + "c") as span,
        etcd.watch(p + "a", prefix=True) as pre,
        etcd.watch((p + "b").encode()) as one_bytes,
    ):
        revs = {k: await etcd.put(p + k, k) for k in keys}
        end = await etcd.put(p + "a", "end")  # in every range but one_bytes's: the last event
        rev_b2 = await etcd.put(p + "b", "again")
        got_one = await events_until(one, end)
        got_span = await events_until(span, rev_b2)
        got_pre = await events_until(pre, end)
        got_b = await events_until(one_bytes, rev_b2)
    assert [(e.kv.key, e.kv.mod_revision) for e in got_one] == [
        ((p + "a").encode(), revs["a"]),
        ((p + "a").encode(), end),
    ]
    assert [e.kv.key.decode()[len(p) :] for e in got_span] == ["a", "ab", "b", "a", "b"]
    assert [e.kv.key.decode()[len(p) :] for e in got_pre] == ["a", "ab", "a"]
    assert [e.kv.value for e in got_b] == [b"b", b"again"]
    assert etcd.stats.watches == 0


async def test_a_past_start_revision_replays_history(etcd: AsyncClient, etcd_prefix: str) -> None:
    p = etcd_prefix
    revs = [await etcd.put(f"{p}k{i % 3}", str(i)) for i in range(10)]
    await etcd.delete(p + "k0")
    deleted = await etcd.get_revision()
    async with etcd.watch(p, prefix=True, start_revision=revs[0]) as w:
        events = await events_until(w, deleted)
        live = await etcd.put(p + "k9", "live")  # replay, then live, in one stream
        events += await events_until(w, live)
    assert [e.kv.mod_revision for e in events] == [*revs, deleted, live]
    assert [e.kv.value for e in events[:10]] == [str(i).encode() for i in range(10)]
    async with etcd.watch(p + "k1", start_revision=revs[5]) as w:  # one key, from the middle
        events = await events_until(w, revs[7])
    assert [e.kv.mod_revision for e in events] == [revs[7]]  # k1 was written at 1, 4, 7


async def test_prev_kv_on_put_and_delete(etcd: AsyncClient, etcd_prefix: str) -> None:
    p = etcd_prefix
    r0 = await etcd.put(p + "k", "old")
    async with etcd.watch(p + "k", prev_kv=True) as w:
        r1 = await etcd.put(p + "k", "new")
        await etcd.delete(p + "k")
        r2 = await etcd.get_revision()
        r3 = await etcd.put(p + "k", "again")
        events = await events_until(w, r3)
    put, delete, again = events
    assert put.prev_kv is not None
    assert (put.prev_kv.value, put.prev_kv.mod_revision) == (b"old", r0)
    assert (put.kv.value, put.kv.mod_revision) == (b"new", r1)
    assert delete.type is EventType.DELETE
    assert delete.prev_kv is not None
    assert (delete.prev_kv.value, delete.prev_kv.mod_revision) == (b"new", r1)
    assert delete.kv.mod_revision == r2
    assert again.prev_kv is None  # the key did not exist before
    assert again.kv.create_revision == r3
    kind, kv, prev = delete  # WatchEvent(type, kv, prev_kv) unpacks, as WatchBatch does
    assert (kind, kv, prev) == (delete.type, delete.kv, delete.prev_kv)


async def test_filters_leave_out_puts_or_deletes(etcd: AsyncClient, etcd_prefix: str) -> None:
    p = etcd_prefix
    async with (
        etcd.watch(p, prefix=True, filters=("noput",)) as deletes,
        etcd.watch(p, prefix=True, filters=["nodelete"]) as puts,
        etcd.watch(p + "x", filters=("noput", "nodelete")) as nothing,
    ):
        r1 = await etcd.put(p + "x", "1")
        await etcd.delete(p + "x")
        r2 = await etcd.get_revision()
        r3 = await etcd.put(p + "y", "3")
        await etcd.delete(p + "y")
        r4 = await etcd.get_revision()
        r5 = await etcd.put(p + "z", "5")
        got_deletes = await events_until(deletes, r4)
        got_puts = await events_until(puts, r5)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await anext(nothing)
    assert [(e.type, e.kv.mod_revision) for e in got_deletes] == [
        (EventType.DELETE, r2),
        (EventType.DELETE, r4),
    ]
    assert [(e.type, e.kv.mod_revision) for e in got_puts] == [
        (EventType.PUT, r1),
        (EventType.PUT, r3),
        (EventType.PUT, r5),
    ]


async def test_a_txn_arrives_as_one_batch(etcd: AsyncClient, etcd_prefix: str) -> None:
    p = etcd_prefix
    await etcd.put(p + "gone", "x")
    async with etcd.watch(p, prefix=True) as w, etcd.watch(p + "b") as one:
        await confirmed(etcd, 2)  # (a watch still catching up gets many revisions per batch)
        before = await etcd.put(p + "before", "0")
        res = await etcd.txn(
            success=[Op.put(p + "a", "1"), Op.put(p + "b", "2"), Op.put(p + "c", "3")]
        )
        res2 = await etcd.txn(success=[Op.put(p + "d", "4"), Op.delete(p + "gone")])
        batches = await batches_until(w, res2.revision)
        one_batches = await batches_until(one, res.revision)
    assert [[row(e)[:3] for e in b.events] for b in batches] == [
        [("put", (p + "before").encode(), before)],
        [("put", (p + k).encode(), res.revision) for k in "abc"],
        [
            ("put", (p + "d").encode(), res2.revision),
            ("delete", (p + "gone").encode(), res2.revision),
        ],
    ]
    assert [b.revision for b in batches] == [before, res.revision, res2.revision]
    assert [[e.kv.key for e in b.events] for b in one_batches] == [[(p + "b").encode()]]
    assert one_batches[0].revision >= res.revision


async def test_batch_revision_is_at_least_its_events(etcd: AsyncClient, etcd_prefix: str) -> None:
    p = etcd_prefix
    async with etcd.watch(p + "mine/", prefix=True) as w, etcd.watch(p + "mine/k") as one:
        for i in range(5):
            await etcd.put(f"{p}other/{i}", "x")  # moves the store's revision, not our keys
            last = await etcd.put(p + "mine/k", str(i))
        for watch in (w, one):
            batches = await batches_until(watch, last)
            assert sum(len(b.events) for b in batches) == 5
            for batch in batches:
                assert batch.events
                assert batch.revision >= batch.events[-1].kv.mod_revision


# -- how a watch ends -----------------------------------------------------------------------------


async def test_cancel_ends_a_waiting_iteration(etcd: AsyncClient, etcd_prefix: str) -> None:
    for key, prefix in [(etcd_prefix, True), (etcd_prefix + "one", False)]:
        w = etcd.watch(key, prefix=prefix)
        await w.start()
        got: list[WatchBatch] = []

        async def read(w: Watch = w, got: list[WatchBatch] = got) -> None:
            async for batch in w:
                got.append(batch)

        reader = asyncio.create_task(read())
        await confirmed(etcd)
        await asyncio.sleep(0.05)  # the reader waits in __anext__
        assert not reader.done()
        with quickly(2.0):
            w.cancel()
            await asyncio.wait_for(reader, 2.0)
        assert got == []
        w.cancel()  # idempotent
        assert "cancelled" in repr(w)
        with pytest.raises(StopAsyncIteration):
            await anext(w)
        await until("the etcd watch removed", lambda: etcd.stats.watches == 0)


async def test_leaving_the_block_ends_the_watch(etcd: AsyncClient, etcd_prefix: str) -> None:
    async with etcd.watch(etcd_prefix, prefix=True) as w:
        await confirmed(etcd)
        rev = await etcd.put(etcd_prefix + "a", "1")
        assert w.revision <= rev
    assert etcd.stats.watches == 0
    await etcd.put(etcd_prefix + "b", "2")
    assert [b async for b in w] == []  # what was buffered is dropped with the watch


async def test_closing_the_client_ends_a_waiting_iterator(etcd_server: EtcdServer) -> None:
    async with fresh_client(etcd_server.endpoint) as client:
        watches = [client.watch("/raw-close/", prefix=True), client.watch("/raw-close/k")]
        for w in watches:
            await w.start()
        readers = [asyncio.create_task(anext(w)) for w in watches]
        await confirmed(client, 2)
        await asyncio.sleep(0.05)
        with quickly(2.0):
            await client.close()
            for reader in readers:
                with pytest.raises(etcdkit.ClosedError, match="closed"):
                    await reader
        for w in watches:
            with pytest.raises(StopAsyncIteration):
                await anext(w)
        assert client.stats.watches == 0
        with pytest.raises(etcdkit.ClosedError):
            await client.watch("/raw-close/", prefix=True).start()


@pytest.mark.parametrize("one_key", [False, True], ids=["prefix", "one-key"])
async def test_a_compacted_start_raises_compacted_error(
    etcd: AsyncClient, etcd_prefix: str, one_key: bool
) -> None:
    p = etcd_prefix
    r1 = await etcd.put(p + "k", "1")
    r2 = await etcd.put(p + "k", "2")
    r3 = await etcd.put(p + "k", "3")
    await etcd.compact(r2)
    key = p + "k" if one_key else p
    async with etcd.watch(key, prefix=not one_key, start_revision=r1) as w:
        with pytest.raises(etcdkit.CompactedError) as info:
            await anext(w)
        assert info.value.compact_revision == r2
        assert "read the keys again, then watch from that read's revision + 1" in str(info.value)
        with pytest.raises(StopAsyncIteration):  # the error ended it
            await anext(w)
    # the compaction revision itself is still there
    async with etcd.watch(key, prefix=not one_key, start_revision=r2) as w:
        events = await events_until(w, r3)
    assert [e.kv.mod_revision for e in events] == [r2, r3]
    await until("the etcd watches removed", lambda: etcd.stats.watches == 0)


async def test_a_watch_etcd_ended_leaves_no_watcher_on_etcd(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    """etcd keeps a watcher it canceled itself (a compacted start) on the stream until the
    client cancels it: without the client's cancel, each such watch stayed on etcd for as
    long as the client was open (Go's client cancels it at once)."""
    server = etcd_server_factory()

    def watchers() -> float:
        url = f"http://127.0.0.1:{server.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
        m = re.search(r"^etcd_debugging_mvcc_watcher_total (\S+)$", text, re.MULTILINE)
        assert m is not None
        return float(m.group(1))

    async with fresh_client(server.endpoint) as c:
        revs = [await c.put("k", str(i)) for i in range(3)]
        await c.compact(revs[1])
        async with c.watch("other") as live:  # the client's stream stays open throughout
            await until("the live watch on etcd", lambda: watchers() == 1)
            for one_key in (True, False):
                for _ in range(5):
                    async with c.watch("k", prefix=not one_key, start_revision=revs[0]) as w:
                        with pytest.raises(etcdkit.CompactedError):
                            await anext(w)
            await until("the ended watches gone from etcd", lambda: watchers() == 1)
            await c.put("other", "x")
            assert [e.kv.value for e in (await anext(live)).events] == [b"x"]


# -- progress notifications -----------------------------------------------------------------------


async def progress_to(w: Watch, revision: int) -> WatchBatch:
    """The first progress batch at ``revision`` or later; no events may come before it."""
    async with asyncio.timeout(WAIT):
        last = 0
        async for batch in w:
            last = check_batch(batch, last)
            assert batch.events == [], f"events where only progress was due: {batch}"
            if batch.revision >= revision:
                return batch
    raise AssertionError("the watch ended")


async def test_progress_notify_arrives_as_empty_batches(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    # etcd sends per-watch progress every 10 min by default; this server every 200 ms.
    interval = "--experimental-watch-progress-notify-interval=200ms"
    server = etcd_server_factory(extra_args=[interval])
    async with fresh_client(server.endpoint) as client:
        async with (
            client.watch("/pn/", prefix=True, progress_notify=True) as w,
            client.watch("/pn/k", progress_notify=True) as one,
            client.watch("/pn/", prefix=True) as quiet,
        ):
            await confirmed(client, 3)
            other = await client.put("/elsewhere", "1")  # moves the revision, not our keys
            for watch in (w, one):
                await progress_to(watch, other)  # current up to the write elsewhere
            rev = await client.put("/pn/k", "1")
            for watch in (w, one):
                got = await batches_until(watch, rev)
                assert all(not b.events and b.revision < rev for b in got[:-1])
                assert [e.kv.mod_revision for e in got[-1].events] == [rev]
            other2 = await client.put("/elsewhere", "2")
            for watch in (w, one):
                await progress_to(watch, other2)  # everything up to it was delivered
            rev2 = await client.put("/pn/k", "2")
            await asyncio.sleep(0.6)  # three progress intervals: `quiet` must not show them
            got = await batches_until(quiet, rev2)
            assert [[e.kv.mod_revision for e in b.events] for b in got] == [[rev], [rev2]]
            assert w.revision >= rev2
            # nothing written anywhere: etcd's progress still arrives, each one (as Go's
            # client hands them out), though the revision does not move
            now = await client.get_revision()
            assert now == rev2
            for watch in (w, one):
                await batches_until(watch, rev2)
                watch.take()
                async with asyncio.timeout(WAIT):
                    idle = [await watch.__anext__() for _ in range(2)]
                assert idle == [WatchBatch(now, []), WatchBatch(now, [])]


async def test_progress_never_claims_events_not_yet_delivered(
    etcd: AsyncClient, etcd_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: etcd replays history in responses of at most 1000 revisions, each with the
    # store's current revision in its header. A watch that stepped off the stream (or lost
    # it) after the first one confirmed "everything up to" that header revision on resuming,
    # while 1000s of its events were still to come.
    monkeypatch.setattr(watch_module, "MAX_BUFFERED", 2)
    monkeypatch.setattr(watch_module, "RESUME_BELOW", 0)
    p = etcd_prefix
    first = await etcd.put(p + "k", "start")
    await asyncio.gather(*(etcd.put(f"{p}k{i % 10}", str(i)) for i in range(1200)))
    end = await etcd.put(p + "k", "end")
    async with etcd.watch(p, prefix=True, start_revision=first, progress_notify=True) as w:
        await until("the watch stepped off the stream", lambda: "paused" in repr(w))
        claimed, revs = 0, []
        async with asyncio.timeout(WAIT):
            last = 0
            async for batch in w:
                last = check_batch(batch, last)
                if not batch.events:
                    assert batch.revision >= claimed
                    claimed = batch.revision
                    continue
                assert batch.events[0].kv.mod_revision > claimed, (
                    f"events from {batch.events[0].kv.mod_revision} after progress said "
                    f"everything up to {claimed} was delivered"
                )
                revs += [e.kv.mod_revision for e in batch.events]
                if revs[-1] >= end:
                    break
    assert len(revs) == 1202
    assert revs == sorted(set(revs))


# -- bad input ------------------------------------------------------------------------------------

BAD = [
    pytest.param({"filters": "noput"}, TypeError, "filters", id="filters-str"),
    pytest.param({"filters": ("x",)}, ValueError, "filters", id="filters-unknown"),
    pytest.param({"filters": 3}, TypeError, "filters", id="filters-int"),
    pytest.param({"start_revision": -1}, ValueError, "start_revision", id="start-negative"),
    pytest.param({"start_revision": 1.5}, TypeError, "start_revision", id="start-float"),
    pytest.param({"start_revision": True}, TypeError, "start_revision", id="start-bool"),
    pytest.param({"range_end": "/z", "prefix": True}, ValueError, "not both", id="range+prefix"),
    pytest.param({"range_end": ""}, ValueError, "range_end", id="range-end-empty"),
    pytest.param({"prefix": 1}, TypeError, "prefix", id="prefix-int"),
    pytest.param({"prev_kv": "yes"}, TypeError, "prev_kv", id="prev-kv-str"),
    pytest.param({"progress_notify": 1}, TypeError, "progress_notify", id="progress-int"),
    pytest.param({"key": 42}, TypeError, "key", id="key-int"),
    pytest.param({"key": ""}, ValueError, "key", id="key-empty"),
    # (the hint was garbled: a NUL byte where b'\0' was meant)
    pytest.param({"range_end": "/a"}, ValueError, r"\(b'\\0': every key", id="range-backward"),
]


@pytest.mark.parametrize(("kwargs", "exc", "match"), BAD)
async def test_bad_input_fails_before_any_io(
    kwargs: dict[str, Any], exc: type[Exception], match: str
) -> None:
    args = {"key": "/k"} | kwargs
    async with fresh_client("127.0.0.1:1", timeout=1) as client:  # nobody listens there
        with quickly(1.0), pytest.raises(exc, match=match):
            client.watch(**args)
        assert client.stats.calls == 0
        assert client.stats.watches == 0


@pytest.mark.parametrize(("kwargs", "exc", "match"), BAD)
def test_bad_input_fails_before_any_io_threaded(
    kwargs: dict[str, Any], exc: type[Exception], match: str, no_leaked_threads: None
) -> None:
    args = {"key": "/k"} | kwargs
    with Client("127.0.0.1:1", timeout=1) as client:
        with quickly(1.0), pytest.raises(exc, match=match):
            client.watch(**args)
        assert client.stats.calls == 0


HUGE_KEY = b"/huge/" + b"k" * (2 << 20)  # past what etcd takes in one request (2 MiB)


async def test_a_watch_larger_than_etcd_takes_fails_alone(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    """Its create would be past etcd's request limit: etcd ended the whole shared stream, and
    again at each reconnect (the create sent again), every watch of the client with it, while
    that watch never failed. It fails alone, at once."""
    async with etcd.watch(etcd_prefix, prefix=True) as other:
        rev = await etcd.put(etcd_prefix + "a", "1")
        reconnects = etcd.stats.watch_reconnects
        with quickly(), pytest.raises(etcdkit.InvalidArgumentError, match="2 MiB"):
            async with etcd.watch(HUGE_KEY, start_revision=1) as huge:
                await huge.__anext__()
        async with asyncio.timeout(10):
            batch = await other.__anext__()
        assert [e.kv.mod_revision for e in batch.events] == [rev]
        assert etcd.stats.watch_reconnects == reconnects


def test_a_watch_larger_than_etcd_takes_fails_alone_threaded(
    etcd_sync: Client, no_leaked_threads: None
) -> None:
    with Client(etcd_sync.endpoints) as client:
        with quickly(), pytest.raises(etcdkit.InvalidArgumentError, match="2 MiB"):
            with client.watch(HUGE_KEY, start_revision=1) as huge:
                next(iter(huge))


# -- the bounded buffer ---------------------------------------------------------------------------


@pytest.fixture
def small_buffer(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(watch_module, "MAX_BUFFERED", 8)
    monkeypatch.setattr(watch_module, "RESUME_BELOW", 2)
    return 8


@pytest.mark.parametrize("one_key", [False, True], ids=["prefix", "one-key"])
async def test_a_reader_that_falls_behind_loses_nothing(
    etcd: AsyncClient, etcd_prefix: str, small_buffer: int, one_key: bool
) -> None:
    p = etcd_prefix
    keys = [p + "k"] if one_key else [f"{p}k{i}" for i in range(5)]
    async with etcd.watch(p + "k" if one_key else p, prefix=not one_key) as w:
        await confirmed(etcd)
        acked: list[Row] = []
        for i in range(5 * small_buffer):  # one batch each, and nobody reads
            k = keys[i % len(keys)]
            acked.append(("put", k.encode(), await etcd.put(k, str(i)), str(i).encode()))
        await until("the watch stepped off the stream", lambda: "paused" in repr(w))
        assert etcd.stats.watches == 0  # its etcd watch was cancelled: no buffer beyond the bound
        for i in range(small_buffer):  # written while it is off the stream
            k = keys[i % len(keys)]
            acked.append(("put", k.encode(), await etcd.put(k, f"off{i}"), f"off{i}".encode()))
        got: list[Row] = []
        async with asyncio.timeout(WAIT):
            last = 0
            async for batch in w:
                last = check_batch(batch, last)
                got.extend(row(e) for e in batch.events)
                if len(got) >= len(acked):
                    break
                if len(got) == small_buffer:
                    await asyncio.sleep(0.05)  # slow again for a moment, on the stream
        assert_same_stream(got, acked)
        assert "live" in repr(w)
        await confirmed(etcd)  # back on the stream
        late = await etcd.put(keys[0], "late")
        assert [e.kv.mod_revision for e in await events_until(w, late)] == [late]
    assert etcd.stats.watches == 0


async def test_a_slow_reader_under_steady_writes_gets_every_event_once(
    etcd: AsyncClient, etcd_prefix: str, small_buffer: int
) -> None:
    p = etcd_prefix
    n = 120
    end = f"{p}end"
    acked: list[Row] = []
    fell_behind = asyncio.Event()
    async with etcd.watch(p, prefix=True) as w:

        async def write() -> None:
            # At least n puts, and on until the reader has fallen more than the bound behind:
            # on a loaded machine etcd may send a late-created watch's first events in one
            # batch, or the writer may be slower than the reader's naps (CI saw both).
            i = 0
            while i < n or not fell_behind.is_set():
                k = f"{p}k{i % 4}"
                acked.append(("put", k.encode(), await etcd.put(k, str(i)), str(i).encode()))
                i += 1
            acked.append(("put", end.encode(), await etcd.put(end, "end"), b"end"))

        writer = asyncio.create_task(write())
        got: list[Row] = []
        stepped_off = 0
        naps = 0
        async with asyncio.timeout(WAIT):
            last = 0
            async for batch in w:
                last = check_batch(batch, last)
                got.extend(row(e) for e in batch.events)
                stepped_off += "paused" in repr(w)
                if got[-1][1] == end.encode():
                    break
                if len(got) // 5 > naps:  # a nap per 5 events (a batch may hold several)
                    if naps == 0:  # the first nap lasts until the watch steps off the stream
                        await until("the watch stepped off the stream", lambda: "paused" in repr(w))
                        fell_behind.set()
                    naps = len(got) // 5
                    await asyncio.sleep(0.05)  # slower than the writer
            await writer
    assert_same_stream(got, acked)
    assert len(acked) > n
    assert stepped_off  # it did fall more than the bound behind
    assert etcd.stats.watches == 0


def test_a_threaded_reader_past_the_real_bound_loses_nothing(
    etcd_sync: Client, etcd_prefix: str
) -> None:
    # api.md: at most MAX_BUFFERED (1,024) batches wait for the reader; past that the watch
    # steps off the stream and comes back from where the reader is. At the real bound, on the
    # threaded face: a batch per put, nobody reading, then every event once, in order.
    p = etcd_prefix
    n = watch_module.MAX_BUFFERED + 200
    with etcd_sync.watch(p, prefix=True) as w:
        first = etcd_sync.put(p + "first", "0")
        assert [e.kv.mod_revision for e in sync_events_until(w, first)] == [first]
        acked: list[int] = []
        for i in range(n):
            acked.append(etcd_sync.put(f"{p}k{i % 7}", str(i)))
        deadline = time.monotonic() + WAIT
        while "paused" not in repr(w):
            assert time.monotonic() < deadline, "the watch never stepped off the stream"
            time.sleep(0.01)
        assert etcd_sync.stats.watches == 0
        acked.append(etcd_sync.put(p + "off", "1"))  # while it is off the stream
        got = [e.kv.mod_revision for e in sync_events_until(w, acked[-1])]
    assert got == acked
    assert etcd_sync.stats.watches == 0


async def test_closing_the_client_while_a_watch_is_off_the_stream(
    etcd_server: EtcdServer, etcd_prefix: str, small_buffer: int
) -> None:
    # Regression: a watch off the stream (its reader behind) is not the hub's, so the hub's
    # close does not tell it; stepping back on then failed inside __anext__, losing a batch,
    # and left the iterator to hang once the buffer was empty.
    p = etcd_prefix
    async with fresh_client(etcd_server.endpoint) as client:
        w = client.watch(p, prefix=True)
        await w.start()
        await confirmed(client)
        revs = [await client.put(f"{p}k", str(i)) for i in range(3 * small_buffer)]
        await until("the watch stepped off the stream", lambda: "paused" in repr(w))
        await client.close()
        got: list[int] = []

        async def read() -> None:
            async for batch in w:
                got.extend(e.kv.mod_revision for e in batch.events)

        with quickly(2.0), pytest.raises(etcdkit.ClosedError, match="closed"):
            await asyncio.wait_for(read(), WAIT)
        assert got == revs[: len(got)]  # a prefix of the stream, with no gap
        assert len(got) >= small_buffer  # what was buffered is still handed over first
        with pytest.raises(StopAsyncIteration):
            await anext(w)


# -- the threaded face ----------------------------------------------------------------------------


def test_threaded_watch_events_and_options(
    etcd_sync: Client, etcd_prefix: str, no_leaked_threads: None
) -> None:
    p = etcd_prefix
    r0 = etcd_sync.put(p + "a", "0")
    with etcd_sync.watch(p, prefix=True, prev_kv=True, start_revision=r0) as w:
        r1 = etcd_sync.put(p + "a", "1")
        etcd_sync.delete(p + "a")
        r2 = etcd_sync.get_revision()
        events = sync_events_until(w, r2)
        assert w.revision >= r2
    assert [row(e) for e in events] == [
        ("put", (p + "a").encode(), r0, b"0"),
        ("put", (p + "a").encode(), r1, b"1"),
        ("delete", (p + "a").encode(), r2, b""),
    ]
    assert events[0].prev_kv is None
    assert events[1].prev_kv is not None
    assert events[1].prev_kv.value == b"0"
    assert events[2].prev_kv is not None
    assert events[2].prev_kv.value == b"1"
    assert list(w) == []  # leaving the block ended it
    with etcd_sync.watch(p, prefix=True, filters=("noput",)) as w:
        etcd_sync.put(p + "b", "1")
        etcd_sync.delete(p + "b")
        r3 = etcd_sync.get_revision()
        assert [(e.type, e.kv.mod_revision) for e in sync_events_until(w, r3)] == [
            (EventType.DELETE, r3)
        ]
    assert etcd_sync.stats.watches == 0


def test_threaded_txn_is_one_batch_and_compaction_raises(
    etcd_sync: Client, etcd_prefix: str, no_leaked_threads: None
) -> None:
    p = etcd_prefix
    with etcd_sync.watch(p, prefix=True) as w:
        res = etcd_sync.txn(success=[Op.put(p + "x", "1"), Op.put(p + "y", "2")])
        batch = next(iter(w))
    assert [e.kv.mod_revision for e in batch.events] == [res.revision] * 2
    r1 = etcd_sync.put(p + "x", "3")
    r2 = etcd_sync.put(p + "x", "4")
    etcd_sync.compact(r2)
    with etcd_sync.watch(p, prefix=True, start_revision=r1) as w:
        with pytest.raises(etcdkit.CompactedError) as info:
            next(iter(w))
        assert info.value.compact_revision == r2
        assert list(w) == []


def test_threaded_cancel_from_another_thread_ends_a_blocked_for(
    etcd_sync: Client, etcd_prefix: str, no_leaked_threads: None
) -> None:
    for key, prefix in [(etcd_prefix, True), (etcd_prefix + "one", False)]:
        with etcd_sync.watch(key, prefix=prefix) as w:
            got: list[WatchBatch] = []
            ended = threading.Event()

            def read(
                w: SyncWatch = w, got: list[WatchBatch] = got, ended: threading.Event = ended
            ) -> None:
                got.extend(w)
                ended.set()

            t = threading.Thread(target=read, name="test-reader")
            t.start()
            time.sleep(0.2)  # blocked in __next__
            assert not ended.is_set()
            with quickly(2.0):
                w.cancel()
                t.join(5.0)
            assert ended.is_set()
            assert got == []
    assert etcd_sync.stats.watches == 0


def test_threaded_next_after_close_is_refused_and_leaves_nothing_unawaited(
    etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    import gc
    import warnings

    client = Client(etcd_server.endpoint)
    w = client.watch(etcd_prefix, prefix=True)
    client.close()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            with pytest.raises(etcdkit.ClosedError):
                next(w)
        with pytest.raises(etcdkit.ClosedError):
            w.start()
        gc.collect()
    assert [str(c.message) for c in caught] == []


def test_threaded_close_ends_a_blocked_for_with_closed_error(
    etcd_server: EtcdServer, no_leaked_threads: None
) -> None:
    client = Client(etcd_server.endpoint)
    try:
        w = client.watch("/raw-sync-close/", prefix=True)
        w.start()
        outcome: list[BaseException | None] = []

        def read() -> None:
            try:
                for _ in w:
                    pass
            except BaseException as exc:
                outcome.append(exc)
            else:
                outcome.append(None)

        t = threading.Thread(target=read, name="test-reader")
        t.start()
        time.sleep(0.2)
        with quickly(5.0):
            client.close()
            t.join(5.0)
        assert not t.is_alive()
        assert len(outcome) == 1
        assert isinstance(outcome[0], etcdkit.ClosedError), outcome
    finally:
        client.close()


# -- take() and listeners: a reader that applies batches in the turn they arrive -----------------


async def test_a_listener_takes_batches_in_the_turn_they_arrive(
    etcd: AsyncClient, etcd_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    p = etcd_prefix
    async with etcd.watch(p, prefix=True) as w:
        taken: list[WatchBatch] = []

        def on_batches() -> None:
            taken.extend(w.take())

        remove = w.add_listener(on_batches)
        r1 = await etcd.put(p + "a", "1")
        txn = await etcd.txn([], [Op.put(p + "b", "2"), Op.put(p + "c", "3")])
        async with asyncio.timeout(WAIT):
            while sum(len(b.events) for b in taken) < 3:
                await asyncio.sleep(0.01)
        revs = [ev.kv.mod_revision for b in taken for ev in b.events]
        assert revs == [r1, txn.revision, txn.revision]
        assert taken[-1].revision == txn.revision
        remove()
        remove()  # idempotent
        r3 = await etcd.put(p + "d", "4")
        async with asyncio.timeout(WAIT):
            batch = await anext(w)  # no listener now: the iteration gets it
        assert batch.revision == r3
        assert sum(len(b.events) for b in taken) == 3
        assert w.take() == []

    async with etcd.watch(p, prefix=True) as w:

        def broken() -> None:
            raise RuntimeError("listener bug")

        w.add_listener(broken)
        r4 = await etcd.put(p + "e", "5")
        async with asyncio.timeout(WAIT):
            batch = await anext(w)  # a failing listener loses nothing: the batch stays
        assert batch.revision == r4
        assert "listener bug" in caplog.text
        with pytest.raises(TypeError, match="callable"):
            w.add_listener("not a function")  # type: ignore[arg-type]


async def test_take_raises_the_end_as_the_iteration_does(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    # A reader with no task of its own (a listener and take()) learns how the watch ended:
    # take() raises it once every batch before it was taken; the iteration still raises it.
    p = etcd_prefix
    rev = await etcd.put(p + "a", "1")
    await etcd.put(p + "a", "2")
    await etcd.compact(await etcd.get_revision())
    w = etcd.watch(p, prefix=True, start_revision=rev)
    ended = asyncio.Event()
    async with w:
        w.add_listener(ended.set)  # called when the watch ends too
        async with asyncio.timeout(WAIT):
            await ended.wait()
        with pytest.raises(etcdkit.CompactedError) as info:
            w.take()
        assert info.value.compact_revision > rev
        with pytest.raises(etcdkit.CompactedError):
            w.take()  # (again: the end stays)
        with pytest.raises(etcdkit.CompactedError):
            async with asyncio.timeout(WAIT):
                await anext(w)
        assert w.take() == []  # the iteration ended it (cancelled): nothing more
    assert w.take() == []


async def test_take_keeps_the_batches_before_the_end(etcd: AsyncClient, etcd_prefix: str) -> None:
    p = etcd_prefix
    rev = await etcd.put(p + "a", "1")
    w = etcd.watch(p, prefix=True, start_revision=rev)
    async with w:
        async with asyncio.timeout(WAIT):
            while w.revision < rev:
                await asyncio.sleep(0.01)
        await etcd.close()  # the watch ends with the client, after the batch it holds
        got = w.take()
        assert [b.revision for b in got] == [rev]
        with pytest.raises(etcdkit.ClosedError):
            w.take()


def test_threaded_take_and_listener(etcd_sync: Client, etcd_prefix: str) -> None:
    p = etcd_prefix
    with etcd_sync.watch(p, prefix=True) as w:
        assert (w.key, w.range_end) == (p.encode(), etcdkit._types.prefix_range_end(p.encode()))
        arrived = threading.Event()
        remove = w.add_listener(arrived.set)  # (on the loop thread)
        rev = etcd_sync.put(p + "a", "1")
        assert arrived.wait(WAIT)
        remove()
        deadline = time.monotonic() + WAIT
        got: list[WatchBatch] = []
        while not got and time.monotonic() < deadline:
            got = w.take()
        assert [b.revision for b in got] == [rev]
        assert w.disconnects == 0
        assert w.connected
        assert w.confirmed_at > 0


async def test_a_second_reader_of_one_watch_is_refused_and_the_first_keeps_its_batches(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    """One watch, one reader at a time (as an async generator refuses a second ``anext``): a
    second reader waiting at once took the first one's place, so the first got no batch and
    was never woken, by a cancel or the client's close."""
    async with etcd.watch(etcd_prefix, prefix=True) as w:
        first = asyncio.create_task(anext(w))
        await asyncio.sleep(0.05)
        with pytest.raises(RuntimeError, match="one reader at a time"):
            await anext(w)
        await etcd.put(etcd_prefix + "k", "1")
        with quickly(5.0):
            batch = await first
        assert [ev.kv.value for ev in batch.events] == [b"1"]
        first = asyncio.create_task(anext(w))
        await asyncio.sleep(0.05)
        w.cancel()
        with quickly(2.0), pytest.raises(StopAsyncIteration):
            await first


def test_a_second_thread_reading_one_watch_is_refused(etcd_sync: Client, etcd_prefix: str) -> None:
    with etcd_sync.watch(etcd_prefix, prefix=True) as w:
        got: list[object] = []
        reader = threading.Thread(target=lambda: got.extend(next(w).events))
        reader.start()
        time.sleep(0.2)
        with pytest.raises(RuntimeError, match="one reader at a time"):
            next(w)
        etcd_sync.put(etcd_prefix + "k", "1")
        reader.join(5.0)
        assert not reader.is_alive()
        assert [ev.kv.value for ev in got] == [b"1"]  # type: ignore[attr-defined]
