"""The raw watch resumes exactly through faults, against real etcd: a restart, cut and reset
connections, a black hole, a hung member of three, on both faces.

Each test checks the delivered stream against an independent reader (a fresh client replaying
etcd's history from the same start revision, with no fault on its path) and against the
writer's own acknowledged writes: no event lost, none repeated, order kept, while writes go on
across the fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

import etcdkit
from _helpers import fresh_client, quickly
from _peer_net import StarvableCluster
from _raw_watch import (
    WAIT,
    Row,
    assert_same_stream,
    check_batch,
    row,
    sync_events_until,
    until,
)
from etcdkit import AsyncClient, Client, Op, PrefixWatch, Watch, WatchState
from etcdkit.server import EtcdCluster, EtcdServer, Proxy

RETRYABLE = (etcdkit.ConnectionUnavailableError, etcdkit.EtcdTimeoutError)

# -- a writer through faults, and the ground truth ------------------------------------------------


class Writer:
    """Writes puts, deletes and txns under ``prefix`` until stopped, retrying through faults;
    ``acked`` holds every event etcd confirmed, as :data:`Row`."""

    def __init__(self, client: AsyncClient, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.acked: list[Row] = []
        self.stop = asyncio.Event()

    async def retrying(self, fn: Callable[[], Any]) -> Any:
        async with asyncio.timeout(30):
            while True:
                try:
                    return await fn()
                except RETRYABLE:
                    await asyncio.sleep(0.05)  # etcd down, cut off, or electing

    async def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            i += 1
            k = f"{self.prefix}k{i % 7}"
            if i % 9 == 0:  # a txn: several events at one revision
                keys = [f"{self.prefix}t{j}" for j in range(3)]
                ops = [Op.put(t, str(i)) for t in keys]
                res = await self.retrying(functools.partial(self.client.txn, success=ops))
                self.acked += [("put", t.encode(), res.revision, str(i).encode()) for t in keys]
            elif i % 5 == 0:
                res = await self.retrying(functools.partial(self.client.delete_range, k))
                if res.deleted:
                    assert res.header is not None
                    self.acked.append(("delete", k.encode(), res.header.revision, b""))
            else:
                rev = await self.retrying(functools.partial(self.client.put, k, str(i)))
                self.acked.append(("put", k.encode(), rev, str(i).encode()))
            await asyncio.sleep(0.005)

    async def finish(self, task: asyncio.Task[None]) -> int:
        """Stop writing; then one last put (the readers' end mark): its revision."""
        self.stop.set()
        await task
        end = self.prefix + "end"
        rev: int = await self.retrying(lambda: self.client.put(end, "end"))
        self.acked.append(("put", end.encode(), rev, b"end"))
        return rev


async def read_all(w: Watch, into: list[Row], end: int) -> None:
    last = 0
    async for batch in w:
        last = check_batch(batch, last)
        into.extend(row(e) for e in batch.events)
        if into and into[-1][2] >= end:
            return


async def reader_until(w: Watch, into: list[Row], done: asyncio.Event) -> None:
    last = 0
    async for batch in w:
        last = check_batch(batch, last)
        into.extend(row(e) for e in batch.events)
        if batch.events and batch.events[-1].kv.key.endswith(b"/end"):
            done.set()
            return


async def history(endpoints: str | list[str], prefix: str, start: int, end: int) -> list[Row]:
    """etcd's history of ``prefix`` from ``start`` to ``end``, replayed by a fresh client."""
    async with (
        AsyncClient(endpoints) as client,
        client.watch(prefix, prefix=True, start_revision=start) as w,
    ):
        rows: list[Row] = []
        async with asyncio.timeout(WAIT):
            await read_all(w, rows, end)
        return rows


def check_against_truth(got: list[Row], truth: list[Row], acked: list[Row]) -> None:
    assert_same_stream(got, truth)
    revs = [r[2] for r in got]
    assert revs == sorted(revs)
    missing = set(acked) - set(truth)
    assert not missing, f"acknowledged writes not in etcd's history: {sorted(missing)[:5]}"


async def run_through_fault(
    client: AsyncClient,
    writer_client: AsyncClient,
    prefix: str,
    fault: Callable[[], Any],
    truth_endpoints: str | list[str],
) -> None:
    """Watch ``prefix`` on ``client`` while ``writer_client`` writes and ``fault()`` runs;
    then compare what the watch delivered with etcd's history and the writer's log."""
    base = await writer_client.put(prefix + "base", "0")
    async with client.watch(prefix, prefix=True, start_revision=base + 1) as w:
        writer = Writer(writer_client, prefix)
        got: list[Row] = []
        done = asyncio.Event()
        reading = asyncio.create_task(reader_until(w, got, done))
        writing = asyncio.create_task(writer.run())
        await until("writes under way", lambda: len(writer.acked) > 20)
        await fault()
        n = len(writer.acked)
        await until("writes after the fault", lambda: len(writer.acked) > n + 20, 20.0)
        end = await writer.finish(writing)
        async with asyncio.timeout(20.0):
            await reading
    assert client.stats.watches == 0
    truth = await history(truth_endpoints, prefix, base + 1, end)
    check_against_truth(got, truth, writer.acked)
    assert truth[-1][2] == end


# -- the faults -----------------------------------------------------------------------------------


async def test_resumes_exactly_through_an_etcd_restart(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    server = etcd_server_factory()

    async def restart() -> None:
        await asyncio.sleep(0.2)
        await asyncio.to_thread(server.kill)
        await asyncio.sleep(0.3)  # writes fail meanwhile, and are retried
        await asyncio.to_thread(server.restart)

    async with (
        fresh_client(server.endpoint, timeout=1) as client,
        AsyncClient(server.endpoint, timeout=1) as writer,
    ):
        await run_through_fault(client, writer, "/restart/", restart, server.endpoint)
        assert client.stats.watch_reconnects >= 1


async def test_resumes_exactly_through_cut_connections(
    etcd: AsyncClient, etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    with Proxy(etcd_server.endpoint) as proxy:

        async def cuts() -> None:
            proxy.drop_connections()  # reset
            await asyncio.sleep(0.3)
            proxy.cut()  # black hole, with writes going on directly
            await asyncio.sleep(0.5)
            proxy.drop_connections()
            proxy.restore()
            await asyncio.sleep(0.3)
            proxy.drop_connections()

        async with fresh_client(proxy.endpoint, timeout=1) as client:
            await run_through_fault(client, etcd, etcd_prefix, cuts, etcd_server.endpoint)
            assert client.stats.watch_reconnects >= 2


def _confirmed(w: Watch) -> bool:
    return w.connected and w.confirmed_at > 0


def _broke_once(w: Watch) -> bool:
    return w.disconnects == 1


async def test_a_single_key_watch_reports_its_stream_as_a_range_watch_does(
    etcd: AsyncClient, etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    """A watch of one key (carried by the client's shared key watches) says ``connected``,
    ``confirmed_at`` and ``disconnects`` of the etcd watch under it, as a prefix watch does."""
    key = etcd_prefix + "one"
    with Proxy(etcd_server.endpoint) as proxy:
        async with fresh_client(proxy.endpoint, timeout=1) as client:
            async with client.watch(key) as single, client.watch(key, prefix=True) as ranged:
                for w in (single, ranged):
                    await until("confirmed", functools.partial(_confirmed, w))
                assert (single.disconnects, ranged.disconnects) == (0, 0)
                proxy.drop_connections()
                for w in (single, ranged):
                    await until("the break seen", functools.partial(_broke_once, w))
                    await until("resumed", functools.partial(_confirmed, w))
                rev = await etcd.put(key, "v")
                for w in (single, ranged):
                    async with asyncio.timeout(WAIT):
                        batch = await w.__anext__()
                    assert [e.kv.mod_revision for e in batch.events] == [rev]


@pytest.mark.slow
async def test_resumes_exactly_after_a_black_hole_is_detected(
    etcd: AsyncClient, etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    with Proxy(etcd_server.endpoint) as proxy:

        async def black_hole() -> None:
            proxy.cut()  # no reset, no EOF: only the stall detection can notice
            await until("the stall noticed", lambda: client.stats.watch_reconnects >= 1, 8.0)
            proxy.restore()

        async with fresh_client(proxy.endpoint, timeout=1) as client:
            await run_through_fault(client, etcd, etcd_prefix, black_hole, etcd_server.endpoint)


@pytest.mark.cluster
@pytest.mark.slow
async def test_resumes_exactly_off_a_hung_member(
    etcd_cluster: EtcdCluster, etcd_prefix: str
) -> None:
    members = etcd_cluster.members
    hung = members[0]  # the client prefers the first endpoint: its watch stream is there
    others = [m.endpoint for m in members[1:]]

    async def hang() -> None:
        hung.pause()
        try:
            await until("the hang noticed", lambda: client.stats.watch_reconnects >= 1, 8.0)
            await asyncio.sleep(0.3)  # writes land while the member still sleeps
        finally:
            hung.resume()

    async with (
        fresh_client(etcd_cluster.endpoints, timeout=2) as client,
        AsyncClient(others, timeout=2) as writer,
    ):
        await run_through_fault(client, writer, etcd_prefix, hang, others)


# -- the threaded face ----------------------------------------------------------------------------


def test_threaded_watch_resumes_exactly_through_dropped_connections(
    etcd_sync: Client, etcd_server: EtcdServer, etcd_prefix: str, no_leaked_threads: None
) -> None:
    p = etcd_prefix
    with Proxy(etcd_server.endpoint) as proxy, Client(proxy.endpoint, timeout=1) as client:
        base = etcd_sync.put(p + "base", "0")
        acked: list[Row] = []
        with client.watch(p, prefix=True, start_revision=base + 1) as w:
            for i in range(60):
                if i in (15, 30, 45):
                    proxy.drop_connections()
                k = f"{p}k{i % 5}"
                acked.append(("put", k.encode(), etcd_sync.put(k, str(i)), str(i).encode()))
            got = [row(e) for e in sync_events_until(w, acked[-1][2])]
        assert client.stats.watch_reconnects >= 1
        assert client.stats.watches == 0
    # A reconnect the proxy accepted while closing leaves a thread of its own on its way out
    # (the client's are checked by no_leaked_threads): let those end first.
    name = f"etcdkit-proxy-{proxy.port}-"
    deadline = time.monotonic() + 2.0
    while any(t.name.startswith(name) for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the proxy's threads did not end"
        time.sleep(0.01)
    assert_same_stream(got, acked)


@contextlib.asynccontextmanager
async def starved_member(
    timeout: float,
) -> AsyncIterator[tuple[StarvableCluster, int, AsyncClient, AsyncClient]]:
    """A 3-member cluster; a client whose endpoints start with a follower (its streams go
    there), and a writer on the other two; and the follower's member id, to starve it."""
    cluster = StarvableCluster()
    with cluster:
        async with AsyncClient(cluster.endpoints, timeout=5) as admin:
            ids = {m.name: m.id for m in await admin.members.list()}
        lagging = next(m for m in cluster.members if not m.is_leader())
        good = [m.endpoint for m in cluster.members if m is not lagging]
        async with (
            fresh_client([lagging.endpoint, *good], timeout=timeout) as client,
            AsyncClient(good, timeout=5) as writer,
        ):
            yield cluster, ids[lagging.name], client, writer


async def live_at(watch: PrefixWatch[Any, Any], revision: int, bound: float) -> None:
    await until(
        f"watch_prefix LIVE at revision {revision}",
        lambda: (
            watch.state is WatchState.LIVE
            and watch.snapshot is not None
            and watch.snapshot.revision >= revision
        ),
        bound,
    )


@pytest.mark.slow
async def test_a_member_starved_of_its_raft_log_loses_the_watches(etcd_prefix: str) -> None:
    """A follower whose incoming raft log stream is held while its heartbeats get through
    keeps its leader (``hasleader`` does not end its streams) and falls behind. Once the
    client's calls have failed over from it and seen the cluster's newer revisions, the
    watches it carries move too: a wait_for of a key written elsewhere returns, watch_prefix
    catches up. (They stayed on it, confirmed every second by its own answers at its old
    revision: wait_for timed out, watch_prefix said LIVE hundreds of revisions behind.)"""
    async with starved_member(2) as (cluster, lagging, client, writer):
        async with client.watch_prefix(etcd_prefix) as watch:
            await watch.synced(timeout=WAIT)
            cluster.starve(lagging)
            for i in range(20):
                await writer.put(f"{etcd_prefix}w{i}", "x")
            try:  # the lagging member cannot serve a linearizable read: the call moves
                await client.get_revision()
            except etcdkit.EtcdTimeoutError:
                await client.get_revision()
            waiting = asyncio.create_task(client.wait_for(etcd_prefix + "ready", timeout=10.0))
            await asyncio.sleep(0.5)  # (it read, found nothing: it watches)
            ready = await writer.put(etcd_prefix + "ready", "1")
            with quickly(10.0):
                assert await waiting >= ready
            await live_at(watch, ready, 10.0)


@pytest.mark.parametrize(
    "members", [1, pytest.param(3, marks=[pytest.mark.cluster, pytest.mark.slow])]
)
async def test_a_revision_gone_back_on_every_member_is_taken_after_each_had_its_turn(
    request: pytest.FixtureRequest, etcd_prefix: str, caplog: pytest.LogCaptureFixture, members: int
) -> None:
    """Every member says a revision below one the client saw (etcd restored from an older
    backup, with no write of the client's to say so). A member behind what the client saw
    confirms no watch (watch_prefix turns STALE: it stayed LIVE, confirmed every second by a
    lagging member's own answers, however far behind), and the stream moves from member to member
    (not the client's calls: a failover would cancel the calls in flight, a write among them
    failing "may or may not have been applied"). Once each had its turn and stayed behind,
    the client takes etcd's revision as it is now, with a WARNING, and the watches are
    confirmed again (not moved between members, unconfirmed, for good)."""
    endpoints: str | list[str] = (
        request.getfixturevalue("etcd_server").endpoint
        if members == 1
        else request.getfixturevalue("etcd_cluster").endpoints
    )
    async with fresh_client(endpoints, timeout=2) as client:
        hub = client.core._watches
        assert hub is not None
        async with client.watch_prefix(etcd_prefix) as watch:
            await watch.synced(timeout=WAIT)
            client.core.conn.revision = 10**15
            await until("the watch turns STALE", lambda: watch.state is WatchState.STALE, 10.0)
            await until("each had its turn", lambda: hub.lags >= members, 10.0 * members)
            await until("etcd's revision taken", lambda: client.core.conn.revision < 10**15, 15.0)
            assert "went back" in caplog.text
            await until("confirmed again", lambda: watch.state is WatchState.LIVE, 10.0)
            assert hub.lags == members
            assert client.stats.failovers == 0
            rev = await client.put(etcd_prefix + "k", "v")  # (the calls' endpoint, unmoved)
            await until(
                "the new key seen",
                lambda: watch.snapshot is not None and watch.snapshot.revision >= rev,
                10.0,
            )


async def test_a_write_of_the_client_says_at_once_that_etcd_went_back(
    etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    """A write is answered at the cluster's newest revision: below what the client saw,
    etcd's revision went back (a restore), and the client takes it at once; its watches are
    not taken for behind (they were given up on, one endpoint after the other)."""
    async with fresh_client(etcd_server.endpoint, timeout=2) as client:
        hub = client.core._watches
        assert hub is not None
        async with client.watch_prefix(etcd_prefix) as watch:
            await watch.synced(timeout=WAIT)
            client.core.conn.revision = 10**15
            rev = await client.put(etcd_prefix + "k", "v")
            assert client.core.conn.revision == rev
            await asyncio.sleep(3.5)  # (behind for 2 s would have moved the stream)
            assert hub.lags == 0
            assert watch.state is WatchState.LIVE


@pytest.mark.slow
async def test_a_client_that_only_watches_leaves_a_member_starved_of_its_raft_log(
    etcd_prefix: str,
) -> None:
    """As above, but the client makes no call of its own (a recipe-only client: its lease
    refreshes are answered at the lagging member's revision): the stream's member cannot
    answer the linearizable read the stream asks of it every 10 s while the client makes no
    call, and the watches move. (They stayed on it for as long as it was starved.) The read
    counts in no call figure."""
    async with starved_member(5) as (cluster, lagging, client, writer):
        async with client.watch_prefix(etcd_prefix) as watch:
            await watch.synced(timeout=WAIT)
            calls = client.stats.calls
            cluster.starve(lagging)
            ready = await writer.put(etcd_prefix + "ready", "1")
            await live_at(watch, ready, 30.0)
            assert client.stats.calls == calls
            assert client.stats.failovers == 0  # (the stream moved, alone)


@pytest.mark.cluster
@pytest.mark.slow
async def test_a_stream_moved_for_lag_follows_the_client_when_its_member_fails(
    etcd_cluster: EtcdCluster, etcd_prefix: str
) -> None:
    """A stream that moved off a member behind (to the next endpoint) and whose new member
    then fails goes back to the client's endpoint, which fails over as usual. (It kept
    retrying the member it had moved to: a stopped member kept every watch down.)"""
    async with (
        fresh_client(etcd_cluster.endpoints, timeout=2) as client,
        AsyncClient(etcd_cluster.endpoints[2], timeout=5) as writer,
    ):
        hub = client.core._watches
        assert hub is not None
        async with client.watch_prefix(etcd_prefix) as watch:
            await watch.synced(timeout=WAIT)
            client.core.conn.revision = 10**15  # (member 0 taken for behind: the stream moves)
            await until("the stream moved", lambda: hub.lags == 1, 10.0)
            client.core.conn.revision = 0
            await until("LIVE on member 1", lambda: watch.state is WatchState.LIVE, 10.0)
            moved_to = etcd_cluster.members[1]
            moved_to.kill()
            try:
                async with asyncio.timeout(20.0):  # (it may have led: an election first)
                    while True:
                        try:
                            rev = await writer.put(etcd_prefix + "k", "v")
                            break
                        except (etcdkit.ConnectionUnavailableError, etcdkit.EtcdTimeoutError):
                            await asyncio.sleep(0.2)
                await live_at(watch, rev, 15.0)
            finally:
                moved_to.restart()


async def test_the_freshness_read_is_for_idle_clients_of_several_endpoints(
    etcd_server: EtcdServer, etcd_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The linearizable read a stream asks of its member (see FRESH_EVERY) is only asked
    when it can help: with several endpoints (somewhere to move to), while no call of the
    client's had an answer for FRESH_EVERY seconds. (A quiet client of one etcd paid one
    read every 5 s, for nothing.)"""
    from etcdkit._wire import watch_hub

    monkeypatch.setattr(watch_hub, "FRESH_EVERY", 0.5)
    reads = 0
    read_fresh = watch_hub.WatchHub._read_fresh

    async def counted(self: watch_hub.WatchHub, ch: Any) -> bool:
        nonlocal reads
        reads += 1
        return await read_fresh(self, ch)

    monkeypatch.setattr(watch_hub.WatchHub, "_read_fresh", counted)
    for endpoints, busy, expected in (
        ([etcd_server.endpoint], False, 0),  # one endpoint: nowhere to move
        ([etcd_server.endpoint] * 2, True, 0),  # its calls tell (by their revisions)
        ([etcd_server.endpoint] * 2, False, 1),  # idle, several endpoints: asked
    ):
        reads = 0
        async with fresh_client(endpoints) as client, client.watch_prefix(etcd_prefix) as w:
            await w.synced(timeout=WAIT)
            for _ in range(12):  # (progress ticks are 1 s apart: 3.6 s)
                await asyncio.sleep(0.3)
                if busy:
                    await client.get_revision()
        assert (reads >= 1) == bool(expected), (endpoints, busy, reads)


@pytest.mark.cluster
async def test_a_check_call_that_fails_moves_no_call(etcd_cluster: EtcdCluster) -> None:
    """A check of an endpoint (the freshness read) that fails does not fail the client over:
    that would cancel the calls in flight there, a write among them "maybe applied"."""
    from aetcd import rpc

    from etcdkit._wire.watch_hub import PROBE_KEY

    m0 = etcd_cluster.members[0]
    async with fresh_client(etcd_cluster.endpoints[:2], timeout=0.5) as client:
        conn = client.core.conn
        await client.get_revision()
        with contextlib.ExitStack() as paused:
            m0.pause()
            paused.callback(m0.resume)
            with pytest.raises(etcdkit.EtcdTimeoutError):
                await conn.call(
                    "check",
                    "kv",
                    "Range",
                    rpc.RangeRequest(key=PROBE_KEY, count_only=True),
                    idempotent=True,
                    channel=conn.channel,
                    check=True,
                )
        assert client.stats.failovers == 0
        assert client.stats.calls == 1
