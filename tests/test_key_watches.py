"""Many single-key watches carried by few etcd watches (etcdkit._key_watches), as wait_for uses
them: the delivery rule as a property, then against real etcd with faults, on both faces."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import etcdkit
from etcdkit import AsyncClient, Client
from etcdkit._errors import CompactedError, EtcdkitError
from etcdkit._key_watches import GROUP_MIN, KEYS_PER_WATCH, KeyWatch, KeyWatches, _Group, parent_of
from etcdkit._types import EventType, KeyValue, WatchEvent
from etcdkit._wire import kv as wire_kv
from etcdkit.server import EtcdServer

WAIT = 20.0


@pytest.fixture(autouse=True)
def batched_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Waiters started together share etcd watches when their reads come back together: in
    read-only transactions of up to 128 reads, which etcd 3.5.1 (from PyPI) does not get
    (etcd-io/etcd#14110, see tests/test_read_batches.py); its reads come back one by one, in
    as many loop turns as the machine's load makes, and the sharing these tests check is
    then partial. So the clients here batch at once, on any etcd. (Their reads never run out
    of time, which is what 3.5.0-3.5.4 panic on.)"""
    monkeypatch.setattr(wire_kv.KV, "_batches", True)


def test_parent_of() -> None:
    assert parent_of(b"/a/b/c") == b"/a/b/"
    assert parent_of(b"/a/") == b"/a/"
    assert parent_of(b"abc") == b""


# -- the delivery rule, without etcd ---------------------------------------------------------------


def _event(key: bytes, rev: int, put: bool) -> WatchEvent:
    kv = KeyValue(key, b"v" if put else b"", rev, rev, 1, 0)
    return WatchEvent(EventType.PUT if put else EventType.DELETE, kv, None)


@settings(max_examples=200, deadline=None)
@given(
    members=st.lists(
        st.tuples(st.sampled_from([b"k0", b"k1", b"k2", b"k3"]), st.integers(1, 12)),
        min_size=1,
        max_size=12,
    ),
    batches=st.lists(
        st.lists(
            st.tuples(st.sampled_from([b"k0", b"k1", b"k2", b"k3", b"k15", b"x"]), st.booleans()),
            max_size=5,
        ),
        max_size=6,
    ),
    cancel=st.sets(st.integers(0, 11)),
)
def test_each_watcher_sees_exactly_its_own_watch(
    members: list[tuple[bytes, int]], batches: list[list[tuple[bytes, bool]]], cancel: set[int]
) -> None:
    """What a member of a shared watch is handed is exactly what a watch of its own key from
    its own start revision would show, batch by batch; cancelled members get nothing more."""
    owner = KeyWatches.__new__(KeyWatches)
    owner.live = len(members)
    seen: list[list[list[WatchEvent]]] = [[] for _ in members]
    ws = [
        KeyWatch(owner, key, start, seen[i].append, lambda err: None)
        for i, (key, start) in enumerate(members)
    ]
    group = _Group(sorted(ws, key=lambda w: w.key))
    rev = 0
    expected: list[list[list[WatchEvent]]] = [[] for _ in members]
    for n, batch in enumerate(batches):
        if n == 1:
            for i in cancel:
                if i < len(ws):
                    ws[i].cancel()
        events = []
        for key, put in batch:
            rev += 1
            events.append(_event(key, rev, put))
        group.on_events(events)
        for i, (key, start) in enumerate(members):
            if ws[i].ended:
                continue
            mine = [ev for ev in events if ev.kv.key == key and ev.kv.mod_revision >= start]
            if mine:
                expected[i].append(mine)
    assert seen == expected
    assert group.count == sum(not w.ended for w in ws)


@settings(max_examples=200, deadline=None)
@given(
    joiners=st.lists(
        st.tuples(st.sampled_from([b"k0", b"k1", b"k2"]), st.integers(0, 4), st.integers(0, 3)),
        max_size=8,
    ),
    batches=st.lists(
        st.lists(
            st.tuples(st.sampled_from([b"k0", b"k1", b"k2", b"x"]), st.booleans()), max_size=4
        ),
        max_size=5,
    ),
)
def test_a_watcher_that_joins_later_sees_exactly_its_own_watch(
    joiners: list[tuple[bytes, int, int]], batches: list[list[tuple[bytes, bool]]]
) -> None:
    """A watcher joining an open group (before batch ``n``, from a start revision the group
    has not delivered yet: ``delivered + 1 + ahead``) is handed exactly what a watch of its own
    key from its start revision would show."""
    owner = KeyWatches.__new__(KeyWatches)
    owner.live = 1 + len(joiners)
    founder = KeyWatch(owner, b"k1", 1, lambda evs: None, lambda err: None)
    group = _Group([founder])
    seen: list[list[WatchEvent]] = [[] for _ in joiners]
    ws: list[KeyWatch | None] = [None] * len(joiners)
    rev = 0
    history: list[WatchEvent] = []
    for n in range(len(batches) + 1):
        for i, (key, at, ahead) in enumerate(joiners):
            if at == n:
                w = KeyWatch(owner, key, rev + 1 + ahead, seen[i].extend, lambda err: None)
                group.join(w)
                ws[i] = w
        if n == len(batches):
            break
        events = []
        for key, put in batches[n]:
            rev += 1
            events.append(_event(key, rev, put))
        history += events
        group.on_events(events)
    for i, joined in enumerate(ws):
        if joined is None:
            assert seen[i] == []
            continue
        start = joined.start
        assert seen[i] == [
            e for e in history if e.kv.key == joined.key and e.kv.mod_revision >= start
        ]


def test_an_end_reaches_every_member_once() -> None:
    owner = KeyWatches.__new__(KeyWatches)
    owner.live = 3
    ends: list[tuple[bytes, EtcdkitError]] = []

    def on_end_of(key: bytes) -> Callable[[EtcdkitError], None]:
        return lambda err: ends.append((key, err))

    ws = [KeyWatch(owner, key, 1, lambda evs: None, on_end_of(key)) for key in (b"a", b"a", b"b")]
    group = _Group(ws)
    ws[2].cancel()
    err = CompactedError("compacted")
    group.on_end(err)
    group.on_end(err)
    assert ends == [(b"a", err), (b"a", err)]
    assert owner.live == 0
    assert all(w.ended for w in ws)


# -- against etcd ----------------------------------------------------------------------------------


async def _settled(client: AsyncClient, waiting: int) -> etcdkit.ClientStats:
    """Until ``waiting`` calls wait on watches etcd confirmed."""
    async with asyncio.timeout(WAIT):
        while True:
            stats = client.stats
            if stats.waiting == waiting and not stats.watches_unconfirmed:
                return stats
            await asyncio.sleep(0.01)


async def test_many_waiters_share_watches_and_each_wakes_on_its_own_key(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    n = 3 * KEYS_PER_WATCH + 7
    keys = [f"{etcd_prefix}s/{i:05d}" for i in range(n)]
    waiters = [asyncio.create_task(etcd.wait_for(k, timeout=WAIT)) for k in keys]
    stats = await _settled(etcd, n)
    # Shared: a handful of etcd watches, not 391. (How many depends on how the reads' answers
    # arrive: the first read goes out alone, and a transaction's answer of fewer than
    # GROUP_MIN keys, arriving in a turn of its own, keeps a watch per key.)
    assert stats.watches < n // 10
    # Keys inside the runs that nobody waits for, and deletes, wake nobody.
    for i in range(0, n, 50):
        await etcd.put(f"{etcd_prefix}s/{i:05d}x", "other")
        await etcd.delete(keys[i])
    await asyncio.sleep(0.2)
    assert not any(w.done() for w in waiters)
    # Each wakes on its own put, with that put's revision.
    order = list(range(n))[::-1]
    revs = {}
    for i in order:
        revs[i] = await etcd.put(keys[i], "up")
    got = await asyncio.gather(*waiters)
    assert got == [revs[i] for i in range(n)]
    assert etcd.stats.waiting == 0
    assert etcd.stats.watches == 0


async def test_absent_waiters_share_too(etcd: AsyncClient, etcd_prefix: str) -> None:
    n = 2 * GROUP_MIN
    keys = [f"{etcd_prefix}d/{i}" for i in range(n)]
    for k in keys:
        await etcd.put(k, "v")
    gone = [asyncio.create_task(etcd.wait_for(k, exists=False, timeout=WAIT)) for k in keys]
    stats = await _settled(etcd, n)
    assert stats.watches < n
    for k in keys:
        await etcd.put(k, "still here")  # a put does not end an absent wait
    await asyncio.sleep(0.1)
    assert not any(g.done() for g in gone)
    for k in keys:
        await etcd.delete(k)
    assert all(r > 0 for r in await asyncio.gather(*gone))


async def test_a_few_waiters_keep_a_watch_each(etcd: AsyncClient, etcd_prefix: str) -> None:
    n = GROUP_MIN - 1
    waiters = [
        asyncio.create_task(etcd.wait_for(f"{etcd_prefix}f/{i}", timeout=WAIT)) for i in range(n)
    ]
    stats = await _settled(etcd, n)
    assert stats.watches == n
    for i in range(n):
        await etcd.put(f"{etcd_prefix}f/{i}", "1")
    await asyncio.gather(*waiters)


async def test_cancelled_and_timed_out_waiters_leave_nothing(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    n = 2 * KEYS_PER_WATCH
    waiters = [
        asyncio.create_task(etcd.wait_for(f"{etcd_prefix}c/{i:04d}", timeout=WAIT))
        for i in range(n)
    ]
    before = (await _settled(etcd, n)).watches
    for w in waiters[::2]:
        w.cancel()
    await asyncio.gather(*waiters[::2], return_exceptions=True)
    assert etcd.stats.waiting == n // 2
    assert 2 <= etcd.stats.watches <= before
    for w in waiters[1::2]:
        w.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    assert etcd.stats.waiting == 0
    assert etcd.stats.watches == 0
    # Timing out together, too.
    results = await asyncio.gather(
        *(etcd.wait_for(f"{etcd_prefix}t/{i}", timeout=0.3) for i in range(GROUP_MIN * 2)),
        return_exceptions=True,
    )
    assert all(isinstance(r, etcdkit.EtcdTimeoutError) for r in results)
    assert etcd.stats.waiting == 0
    assert etcd.stats.watches == 0


async def test_a_compacted_start_ends_every_member(etcd: AsyncClient, etcd_prefix: str) -> None:
    for i in range(3):
        await etcd.put(f"{etcd_prefix}old", str(i))
    rev = await etcd.put(f"{etcd_prefix}old", "last")
    await etcd.compact(rev)
    ended: list[EtcdkitError] = []
    events: list[list[WatchEvent]] = []
    mux = etcd.core.key_watches
    ws = [
        mux.watch(f"{etcd_prefix}k/{i}".encode(), 2, on_events=events.append, on_end=ended.append)
        for i in range(GROUP_MIN)
    ]
    async with asyncio.timeout(WAIT):
        while len(ended) < GROUP_MIN:
            await asyncio.sleep(0.01)
    assert all(isinstance(e, CompactedError) for e in ended)
    assert not events
    assert all(w.ended for w in ws)
    assert mux.live == 0


async def test_a_compacted_start_ends_only_the_watches_it_compacts(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    """Raw single-key watches entered in one turn share etcd watches from their oldest start;
    one from a compacted revision gets CompactedError, and the others go on as their own
    watches would (Go gives each its own etcd watch: only that one is compacted)."""
    p = etcd_prefix
    for i in range(3):
        await etcd.put(f"{p}k/000", str(i))
    compacted = await etcd.put(f"{p}k/000", "last")
    await etcd.compact(compacted)
    good = compacted + 1
    bad = etcd.watch(f"{p}k/000", start_revision=2)  # (entered first: the group's oldest)
    others = [etcd.watch(f"{p}k/{i:03d}", start_revision=good) for i in range(1, GROUP_MIN + 8)]
    for w in (bad, *others):  # (a given start: entering does not yield; one turn, shared)
        await w.__aenter__()
    revs = [await etcd.put(f"{p}k/{i:03d}", "new") for i in range(1, GROUP_MIN + 8)]
    with pytest.raises(CompactedError) as info:
        async with asyncio.timeout(WAIT):
            await bad.__anext__()
    assert info.value.compact_revision == compacted
    async with asyncio.timeout(WAIT):
        firsts = [await w.__anext__() for w in others]
    assert [[e.kv.mod_revision for e in b.events] for b in firsts] == [[r] for r in revs]
    for w in others:
        w.cancel()
    assert etcd.core.key_watches.live == 0


async def test_wait_for_in_bulk_reads_again_after_compaction(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    # Waiters whose watch starts at a compacted revision read again and still wake exactly.
    keys = [f"{etcd_prefix}r/{i:03d}" for i in range(GROUP_MIN * 2)]
    waiters = [asyncio.create_task(etcd.wait_for(k, timeout=WAIT)) for k in keys]
    await _settled(etcd, len(keys))
    for i in range(20):
        await etcd.put(f"{etcd_prefix}noise", str(i))
    await etcd.compact(await etcd.get_revision())
    revs = [await etcd.put(k, "1") for k in keys]
    assert await asyncio.gather(*waiters) == revs


async def test_bulk_waiters_survive_a_restart(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    server = etcd_server_factory()
    n = KEYS_PER_WATCH + GROUP_MIN
    async with AsyncClient(server.endpoint) as client:
        keys = [f"/w/bulk/{i:04d}" for i in range(n)]
        waiters = [asyncio.create_task(client.wait_for(k, timeout=WAIT)) for k in keys]
        await _settled(client, n)
        server.kill()
        await asyncio.sleep(0.3)
        server.restart()
        revs = []
        async with asyncio.timeout(WAIT):
            for k in keys:
                while True:
                    try:
                        revs.append(await client.put(k, "1"))
                        break
                    except etcdkit.ConnectionUnavailableError:
                        await asyncio.sleep(0.1)
        assert await asyncio.gather(*waiters) == revs
        assert client.stats.watch_reconnects >= 1


async def test_waiters_joining_shared_watches_after_a_restart_wake_exactly(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    # Shared watches over the even keys live through a restart and deliver some puts; waiters
    # on the odd keys between then join them (from their own, later, start revisions). Every
    # waiter still wakes on its own put only, with that put's revision.
    server = etcd_server_factory()
    async with AsyncClient(server.endpoint) as client:
        even = [f"/w/join/{i:04d}" for i in range(0, 4 * SHARED, 2)]
        odd = [f"/w/join/{i:04d}" for i in range(5, 4 * SHARED - 4, 2)]
        first = [asyncio.create_task(client.wait_for(k, timeout=WAIT)) for k in even]
        await _settled(client, len(even))
        server.kill()
        await asyncio.sleep(0.3)
        server.restart()

        async def put(key: str) -> int:
            while True:
                try:
                    return await client.put(key, "1")
                except etcdkit.ConnectionUnavailableError:
                    await asyncio.sleep(0.1)

        async with asyncio.timeout(WAIT):
            early = [await put(k) for k in even[::3]]
            assert [await first[i] for i in range(0, len(even), 3)] == early
            held = client.stats.watches
            later = [asyncio.create_task(client.wait_for(k, timeout=WAIT)) for k in odd]
            rest = [i for i in range(len(even)) if i % 3]
            await _settled(client, len(rest) + len(odd))
            assert _open_groups(client)
            assert client.stats.watches == held  # (they all rode on the shared watches)
            revs = [await put(k) for k in odd] + [await put(even[i]) for i in rest]
        assert await asyncio.gather(*later, *(first[i] for i in rest)) == revs
        assert client.stats.watch_reconnects >= 1
        assert client.stats.watches == 0


async def test_bulk_waiters_through_the_grpc_proxy(etcd_grpc_proxy: object) -> None:
    endpoint = etcd_grpc_proxy.endpoint  # type: ignore[attr-defined]
    n = GROUP_MIN * 3
    async with AsyncClient(endpoint) as client:
        keys = [f"/w/proxied/{i:03d}" for i in range(n)]
        waiters = [asyncio.create_task(client.wait_for(k, timeout=WAIT)) for k in keys]
        await _settled(client, n)
        revs = [await client.put(k, "1") for k in keys]
        assert await asyncio.gather(*waiters) == revs


def test_threaded_waiters_share_too(etcd_sync: Client, etcd_prefix: str) -> None:
    n = GROUP_MIN * 2
    keys = [f"{etcd_prefix}th/{i:03d}" for i in range(n)]
    got: dict[int, int] = {}
    errors: list[BaseException] = []

    def wait(i: int) -> None:
        try:
            got[i] = etcd_sync.wait_for(keys[i], timeout=WAIT)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=wait, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    deadline = 200
    while etcd_sync.stats.waiting < n and deadline:
        threading.Event().wait(0.05)
        deadline -= 1
    revs = [etcd_sync.put(k, "1") for k in keys]
    for t in threads:
        t.join(WAIT)
    assert not errors
    assert [got[i] for i in range(n)] == revs


@pytest.mark.parametrize("exists", [True, False])
async def test_a_key_waited_for_twice_wakes_both(
    etcd: AsyncClient, etcd_prefix: str, exists: bool
) -> None:
    keys = [f"{etcd_prefix}two/{i:03d}" for i in range(GROUP_MIN)]
    if not exists:
        for k in keys:
            await etcd.put(k, "v")
    waiters = [
        asyncio.create_task(etcd.wait_for(k, exists=exists, timeout=WAIT)) for k in keys + keys
    ]
    await _settled(etcd, 2 * len(keys))
    for k in keys:
        if exists:
            await etcd.put(k, "1")
        else:
            await etcd.delete(k)
    got = await asyncio.gather(*waiters)
    assert got[: len(keys)] == got[len(keys) :]


async def test_the_first_watch_of_a_turn_asks_etcd_at_once(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    # A lone single-key watch (a PersistentLease's) is asked for before the caller's next
    # request can reach etcd: one created behind its start revision waits for etcd's 100 ms
    # catch-up loop. Those asked for later in the same turn wait for the next turn, together.
    rev = await etcd.put(f"{etcd_prefix}lone", "1")
    first = etcd.watch(f"{etcd_prefix}lone", start_revision=rev + 1)
    await first.start()  # a given start revision: no I/O, no turn of the loop
    assert etcd.stats.watches == 1  # asked for already
    others = [etcd.watch(f"{etcd_prefix}o{i}", start_revision=rev + 1) for i in range(3)]
    for w in others:
        await w.start()
    assert etcd.stats.watches == 1  # ... these at the next turn
    await asyncio.sleep(0)
    assert etcd.stats.watches == 4
    put = await etcd.put(f"{etcd_prefix}lone", "2")
    async with asyncio.timeout(WAIT):
        batch = await anext(aiter(first))
    assert [e.kv.mod_revision for e in batch.events] == [put]
    for w in (first, *others):
        w.cancel()


def _open_groups(client: AsyncClient) -> list[tuple[bytes, bytes]]:
    """The ranges of the client's open shared watches, sorted."""
    groups = client._core.key_watches._groups
    return sorted((g.first, g.last) for gs in groups.values() for g in gs)


async def _revisions(w: etcdkit.Watch, count: int) -> list[int]:
    """The revisions of the watch's next events, until ``count`` of them."""
    out: list[int] = []
    async with asyncio.timeout(WAIT):
        async for batch in w:
            out += [e.kv.mod_revision for e in batch.events]
            if len(out) >= count:
                break
    return out


# Enough keys for a shared watch: the first read goes out alone, and the first watch of each
# turn is asked for alone; the rest (>= GROUP_MIN) share.
SHARED = GROUP_MIN + 4


async def test_keys_asked_for_later_inside_a_shared_watch_join_it(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    # Waiters on even keys share a watch; waiters on the odd keys between, asked for later,
    # ride on it: no etcd watch more, and each still wakes on its own put only, with that
    # put's revision.
    even = [f"{etcd_prefix}j/{i:03d}" for i in range(0, 2 * SHARED, 2)]
    odd = [f"{etcd_prefix}j/{i:03d}" for i in range(5, 2 * SHARED - 4, 2)]
    first = [asyncio.create_task(etcd.wait_for(k, timeout=WAIT)) for k in even]
    before = await _settled(etcd, len(even))
    assert len(_open_groups(etcd)) == 1
    later = [asyncio.create_task(etcd.wait_for(k, timeout=WAIT)) for k in odd]
    after = await _settled(etcd, len(even) + len(odd))
    assert after.watches == before.watches
    revs = [await etcd.put(k, "up") for k in odd + even]
    assert await asyncio.gather(*later, *first) == revs
    assert etcd.stats.watches == 0
    assert _open_groups(etcd) == []


async def test_keys_joining_later_never_pass_the_bound_of_a_shared_watch(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    """Waiters joining an open shared watch stop at KEYS_PER_WATCH; the rest get watches of
    their own (or new shared ones), and everyone still wakes on exactly its own put."""
    n = KEYS_PER_WATCH
    even = [f"{etcd_prefix}b/{i:04d}" for i in range(0, 2 * n, 2)]
    odd = [f"{etcd_prefix}b/{i:04d}" for i in range(1, 2 * n, 2)]
    first = [asyncio.create_task(etcd.wait_for(k, timeout=WAIT)) for k in even]
    await _settled(etcd, len(even))
    later = [asyncio.create_task(etcd.wait_for(k, timeout=WAIT)) for k in odd]
    await _settled(etcd, len(even) + len(odd))
    groups = [g for gs in etcd.core.key_watches._groups.values() for g in gs]
    assert groups
    assert max(g.count for g in groups) <= KEYS_PER_WATCH
    revs = [await etcd.put(k, "up") for k in odd + even]
    assert await asyncio.gather(*later, *first) == revs
    assert etcd.stats.watches == 0


async def test_a_watch_from_before_what_a_shared_watch_delivered_gets_its_own(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    # A watch of a key inside an open shared watch's range, from a revision that shared watch
    # has already delivered past, must not ride on it (it would miss the events between): it
    # gets an etcd watch of its own, and sees them. From a revision not yet delivered, it rides.
    p = f"{etcd_prefix}r/"
    keys = [f"{p}{i:03d}" for i in range(0, 2 * SHARED, 2)]
    early = await etcd.put(f"{p}031", "early")
    waiters = [asyncio.create_task(etcd.wait_for(k, timeout=WAIT)) for k in keys]
    await _settled(etcd, len(keys))
    ((lo, hi),) = _open_groups(etcd)
    assert lo < f"{p}031".encode() < f"{p}033".encode() < hi
    past = await etcd.put(keys[-2], "up")  # the shared watch delivers it
    assert await waiters[-2] == past
    before = etcd.stats.watches
    behind = etcd.watch(f"{p}031", start_revision=early)
    await behind.start()
    await asyncio.sleep(0)
    assert etcd.stats.watches == before + 1
    ahead = etcd.watch(f"{p}033", start_revision=past + 1)
    await ahead.start()
    await asyncio.sleep(0)
    assert etcd.stats.watches == before + 1
    now = await etcd.put(f"{p}033", "now")
    again = await etcd.put(f"{p}031", "again")
    assert await _revisions(behind, 2) == [early, again]
    assert await _revisions(ahead, 1) == [now]
    behind.cancel()
    ahead.cancel()
    rest = [k for i, k in enumerate(keys) if i != len(keys) - 2]
    revs = [await etcd.put(k, "up") for k in rest]
    assert await asyncio.gather(*(w for i, w in enumerate(waiters) if i != len(keys) - 2)) == revs


async def test_a_later_run_is_cut_rather_than_reach_over_a_shared_watch(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    # Waiters asked for together on keys below and above an open shared watch's range make
    # runs that stop short of it, so no event reaches two shared watches.
    p = f"{etcd_prefix}c/"
    middle = [f"{p}1{i:02d}" for i in range(SHARED)]
    outside = [f"{p}0{i:02d}" for i in range(SHARED)] + [f"{p}2{i:02d}" for i in range(SHARED)]
    first = [asyncio.create_task(etcd.wait_for(k, timeout=WAIT)) for k in middle]
    await _settled(etcd, len(middle))
    later = [asyncio.create_task(etcd.wait_for(k, timeout=WAIT)) for k in outside]
    await _settled(etcd, len(middle) + len(outside))
    ranges = _open_groups(etcd)
    assert len(ranges) >= 3, ranges
    assert all(a[1] < b[0] for a, b in itertools.pairwise(ranges)), ranges
    revs = [await etcd.put(k, "up") for k in outside + middle]
    assert await asyncio.gather(*later, *first) == revs


async def test_waiters_on_keys_allowed_one_by_one_wake_on_their_own_watches(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    """etcd allows a watch only if the user may read its whole range. A user allowed each of
    40 keys, not the keys between them: the shared watches over them are refused, and every
    waiter goes on, on a watch of its own, as it would have alone: it wakes on its own key's
    put (not a WatchEndedError), and one on a key it may not read is refused alone."""
    server = etcd_server_factory()
    keys = [f"/g/k{i:03d}" for i in range(0, 2 * SHARED, 2)]
    async with AsyncClient(server.endpoint) as admin:
        await admin.auth.user_add("root", "rootpw")
        await admin.auth.role_add("root")
        await admin.auth.user_grant_role("root", "root")
        await admin.auth.role_add("some")
        for k in keys:
            await admin.auth.role_grant_permission("some", k, perm="read")
        await admin.auth.user_add("alice", "alicepw")
        await admin.auth.user_grant_role("alice", "some")
        await admin.auth.enable()
    async with (
        AsyncClient(server.endpoint, username="root", password="rootpw") as root,
        AsyncClient(server.endpoint, username="alice", password="alicepw") as alice,
    ):
        waiters = [asyncio.create_task(alice.wait_for(k, timeout=WAIT)) for k in keys]
        forbidden = asyncio.create_task(alice.wait_for("/g/k001", timeout=WAIT))
        await asyncio.sleep(0.5)  # (the shared watches were asked for, and refused)
        assert not any(w.done() for w in waiters)
        with pytest.raises(etcdkit.PermissionDeniedError):
            await forbidden
        revs = [await root.put(k, "up") for k in keys]
        assert await asyncio.gather(*waiters) == revs
        assert alice.stats.watches == 0
