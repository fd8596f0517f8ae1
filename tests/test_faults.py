"""Faults that broke a promise (issue 17), each against real etcd: a hung member of three, a
foreign writer on a PersistentLease's key, and what a user reads when etcd never answers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import pytest

import etcdkit
from _helpers import fresh_client
from etcdkit import AsyncClient, LeaseState, Op, WatchState
from etcdkit.testing import EtcdCluster, EtcdServer, Proxy

RECOVER = 5.0  # issue 17: pausing one member of three, everything recovers within this


async def _until(what: str, check: object, bound: float) -> float:
    t0 = time.monotonic()
    while not check():  # type: ignore[operator]
        if time.monotonic() - t0 > bound:
            raise AssertionError(f"{what} did not happen within {bound} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - t0


async def _put_retrying(client: AsyncClient, key: str, value: str) -> int:
    for _ in range(100):
        try:
            return await client.put(key, value)
        except (etcdkit.ConnectionUnavailableError, etcdkit.EtcdTimeoutError):
            await asyncio.sleep(0.1)  # an election among the other two may be under way
    raise AssertionError("no write got through the two live members")


@pytest.mark.cluster
@pytest.mark.slow
async def test_a_hung_member_is_left_within_seconds(
    etcd_cluster: EtcdCluster, etcd_prefix: str
) -> None:
    p = etcd_prefix
    members = etcd_cluster.members
    async with fresh_client(etcd_cluster.endpoints, timeout=2) as client:
        hung = members[0]  # the client prefers the first endpoint: its streams are there
        async with (
            client.watch_prefix(p) as watch,
            client.persistent_lease(p + "lease", "v", ttl=5) as lease,
            AsyncClient([m.endpoint for m in members[1:]], timeout=2) as writer,
        ):
            await watch.synced(timeout=10)
            await lease.registered(timeout=10)
            hung.pause()
            try:
                t0 = time.monotonic()
                waiter = asyncio.create_task(client.wait_for(p + "k1", timeout=RECOVER + 5))
                late_watch = client.watch_prefix(p)
                late = asyncio.create_task(late_watch.synced(timeout=RECOVER + 5))
                rev = await _put_retrying(writer, p + "k1", "1")
                for i in range(20):
                    rev = await _put_retrying(writer, p + f"n{i}", str(i))
                await _until("the watch catching up", lambda: watch.revision >= rev, RECOVER)
                assert await waiter > 0
                snap = await late
                await _until(
                    "the lease registered again",
                    lambda: lease.state is LeaseState.REGISTERED,
                    RECOVER,
                )
                took = time.monotonic() - t0
                assert took < RECOVER + 1.0, f"recovery took {took:.1f} s"
                # nothing lost or duplicated: each view equals etcd at its revision
                now = watch.snapshot
                assert now is not None
                truth = await writer.get_prefix(p, revision=now.revision)
                assert dict(now.tree) == {kv.key.decode(): kv.value for kv in truth.kvs}
                truth = await writer.get_prefix(p, revision=snap.revision)
                assert dict(snap.tree) == {kv.key.decode(): kv.value for kv in truth.kvs}
                kv = await writer.get(p + "lease")
                assert kv is not None
                assert kv.lease == lease.lease_id
                await late_watch.aclose()
            finally:
                hung.resume()


@pytest.mark.cluster
@pytest.mark.slow
@pytest.mark.parametrize("face", ["async", "threaded"])
async def test_a_read_at_a_hung_member_is_answered_by_the_next_in_time(
    etcd_cluster: EtcdCluster, etcd_prefix: str, face: str
) -> None:
    # A client with no stream open (nothing to notice the hang but HTTP/2 keepalive, which
    # etcd allows every 5 s at most), connected to its preferred member, which then hangs:
    # its next read gets half its time there, then goes to the next endpoint, within its
    # timeout, on both faces.
    members = etcd_cluster.members
    key = etcd_prefix + "k"
    async with AsyncClient([m.endpoint for m in members[1:]]) as writer:
        await writer.put(key, "v")

    def threaded_read() -> tuple[etcdkit.KeyValue | None, float]:
        with etcdkit.Client(etcd_cluster.endpoints, timeout=5) as sync:
            assert sync.get(key) is not None  # connected, to the first endpoint
            members[0].pause()
            t0 = time.monotonic()
            return sync.get(key), time.monotonic() - t0

    try:
        if face == "async":
            async with fresh_client(etcd_cluster.endpoints, timeout=5) as client:
                assert await client.get(key) is not None  # connected, to the first endpoint
                members[0].pause()
                t0 = time.monotonic()
                kv = await client.get(key)
                took = time.monotonic() - t0
        else:
            kv, took = await asyncio.to_thread(threaded_read)
    finally:
        members[0].resume()
    assert kv is not None
    assert kv.value == b"v"
    assert took < 5.0, f"{took:.1f} s"


@pytest.mark.cluster
async def test_a_slow_read_at_a_live_member_stays_there(
    etcd_cluster: EtcdCluster, etcd_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only a member that answers nothing, not even its status, is left: a read that is merely
    # slow (a big range) goes on where it is, and the write in flight beside it is not cut.
    # (Scaled down: the member is asked after 0.02 s, not 1 s.)
    from etcdkit._wire import conn as conn_module

    monkeypatch.setattr(conn_module, "READ_PROBE_AFTER", 0.02)
    asked: list[str] = []
    ask = conn_module.Connection._status_or_failover

    async def counted(self: Any, ch: Any) -> None:
        asked.append(str(ch.endpoint))
        await ask(self, ch)

    monkeypatch.setattr(conn_module.Connection, "_status_or_failover", counted)
    async with fresh_client(etcd_cluster.endpoints, timeout=10) as client:
        for start in range(0, 30_000, 128):
            batch = range(start, min(start + 128, 30_000))
            await client.txn(success=[Op.put(f"{etcd_prefix}{i:06d}", "v" * 64) for i in batch])
        t0 = time.monotonic()
        read = asyncio.create_task(client.range(etcd_prefix, prefix=True))
        await asyncio.sleep(0.01)
        write = await client.put(etcd_prefix + "beside", "w")
        got = await read
        took = time.monotonic() - t0
        assert len(got.kvs) >= 30_000  # (and the write, if etcd read after applying it)
        assert write > 0
        assert client.stats.failovers == 0
        if took > 0.1:  # (slow enough that its member was asked, as it is here)
            assert asked
        await client.delete_range(etcd_prefix, prefix=True)


async def test_a_call_that_gave_up_keeps_grpcs_error_as_its_cause(
    etcd_server_factory: object,
) -> None:
    import grpc.aio

    server = etcd_server_factory()  # type: ignore[operator]
    server.kill()
    async with fresh_client(server.endpoint, timeout=1) as client:
        with pytest.raises(etcdkit.ConnectionUnavailableError) as caught:
            await client.get("/k")
    causes = []
    exc: BaseException | None = caught.value
    while exc is not None:
        causes.append(type(exc))
        exc = exc.__cause__
    assert grpc.aio.AioRpcError in causes, causes


async def test_a_foreign_writer_delays_recovery_by_at_most_the_cap(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    key = etcd_prefix + "contested"
    async with etcd.persistent_lease(key, "ours", ttl=5) as lease:
        await lease.registered(timeout=5)
        t_end = time.monotonic() + 4.0
        while time.monotonic() < t_end:  # another writer, every 50 ms for 4 s
            await etcd.put(key, "theirs")
            await asyncio.sleep(0.05)
        stopped = time.monotonic()
        await lease.wait_state(LeaseState.REGISTERED, timeout=10)
        kv = await etcd.get(key)
        assert kv is not None
        assert kv.value == b"ours"
        took = time.monotonic() - stopped
        assert took < 3.0, f"registered again {took:.1f} s after the other writer stopped"


async def test_wait_for_says_when_etcd_never_answered(etcd_server_factory: object) -> None:
    server: EtcdServer = etcd_server_factory()  # type: ignore[operator]
    endpoint = server.endpoint
    server.stop()  # a port nobody listens on
    async with fresh_client(endpoint, timeout=1) as client:
        with pytest.raises(etcdkit.EtcdTimeoutError) as info:
            await client.wait_for("/x", timeout=2)
    msg = str(info.value)
    assert "never answered" in msg
    assert endpoint.split("://")[-1] in msg
    assert "last error" in msg


async def test_wait_for_says_what_failed_after_etcd_answered(etcd_server: EtcdServer) -> None:
    # answered first, then cut off (a black hole): the message has the connection's newest
    # error, as the docs say
    target = etcd_server.endpoint.split("://")[-1]
    with Proxy(target) as proxy:
        async with fresh_client(f"127.0.0.1:{proxy.port}", timeout=1) as client:
            await client.put("/wait-for-cut", "v")
            proxy.cut()
            with pytest.raises(etcdkit.EtcdTimeoutError) as got:
                await client.get("/wait-for-cut")  # the connection's newest error
            assert "etcd may be stopped, overloaded or cut off" in str(got.value)  # what to do
            with pytest.raises(etcdkit.EtcdTimeoutError) as info:
                await client.wait_for("/never", timeout=1)
            proxy.restore()
    msg = str(info.value)
    assert "did not exist within 1 s" in msg
    assert "etcd answered before; last connection error:" in msg
    assert "DEADLINE_EXCEEDED" in msg


async def test_state_is_live_right_after_synced(etcd: AsyncClient, etcd_prefix: str) -> None:
    for _ in range(20):
        async with etcd.watch_prefix(etcd_prefix) as watch:
            await watch.synced(timeout=5)
            assert watch.state is WatchState.LIVE


@pytest.mark.parametrize(
    ("ttl", "exc"),
    [(1.5, TypeError), (True, TypeError), ("5", TypeError), (0, ValueError), (-1, ValueError)],
)
async def test_one_rule_for_bad_ttls(etcd: AsyncClient, ttl: object, exc: type[Exception]) -> None:
    with pytest.raises(exc, match="ttl"):
        await etcd.grant(ttl)  # type: ignore[arg-type]
    with pytest.raises(exc, match="ttl"):
        etcd.persistent_lease("/k", "v", ttl=ttl)  # type: ignore[arg-type]
    with pytest.raises(exc, match="ttl"):
        etcd.session(ttl)  # type: ignore[arg-type]


async def test_a_lease_comes_back_after_an_outage_longer_than_its_ttl(
    etcd_server_factory: object,
) -> None:
    # Regression (found by the chaos run): a grant that failed while etcd was down was
    # remembered, and every later attempt re-raised it, so the lease stayed LOST for good.
    server: EtcdServer = etcd_server_factory()  # type: ignore[operator]
    async with fresh_client(server.endpoint, timeout=1) as client:
        async with client.persistent_lease("/outage/k", "v", ttl=2) as lease:
            await lease.registered(timeout=5)
            server.stop()
            await lease.wait_state(LeaseState.LOST, timeout=10)
            await asyncio.sleep(1.5)  # re-registration attempts fail meanwhile
            server.start()
            await lease.registered(timeout=10)
            kv = await client.get("/outage/k")
            assert kv is not None
            assert kv.lease == lease.lease_id


async def test_a_session_opens_once_etcd_is_back(etcd_server_factory: object) -> None:
    server: EtcdServer = etcd_server_factory()  # type: ignore[operator]
    async with fresh_client(server.endpoint, timeout=1) as client:
        server.stop()
        session = client.session(5)
        with pytest.raises(etcdkit.ConnectionUnavailableError):
            await session.open()
        server.start()
        await session.open()
        assert session.lease_id
        await session.close()


async def test_a_listing_compacted_on_every_try_falls_back_to_one_read(
    etcd: AsyncClient, etcd_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compactions that keep overtaking the pages (here: one after every page) made the first
    sync list again for ever; after two such listings it reads the prefix in one read (one
    read is never compacted half-way) and syncs, exact."""
    p = etcd_prefix
    for i in range(50):
        await etcd.put(f"{p}k/{i:03d}", str(i))
    async with fresh_client(etcd.endpoints[0]) as watcher:
        paged = watcher.get_prefix_pages

        async def compacted_after_each_page(prefix: str | bytes, **kw: object) -> object:
            async for page, rev in paged(prefix, page_size=5):
                yield page, rev
                now = await etcd.put(f"{p}noise", "x")
                await etcd.compact(now)

        monkeypatch.setattr(watcher, "get_prefix_pages", compacted_after_each_page)
        async with watcher.watch_prefix(p + "k/") as watch:
            snap = await watch.synced(timeout=20)
        listed = await etcd.range(p + "k/", prefix=True, revision=snap.revision)
        assert dict(snap.tree) == {kv.key.decode(): kv.value for kv in listed.kvs}
        assert len(snap.tree) == 50


@pytest.mark.parametrize("recipe", ["lock", "campaign", "semaphore"])
async def test_a_timeout_while_waiting_is_kept_when_etcd_goes_away(
    etcd_server: EtcdServer, etcd_prefix: str, recipe: str
) -> None:
    """A lock, campaign or semaphore waiting in line when etcd becomes unreachable raises its
    EtcdTimeoutError on time: the revoke of its lease (bounded at 2 s with etcd gone) goes on
    in a task the client owns, not in the caller's timeout."""
    timeout = 1.0
    with Proxy(etcd_server.endpoint) as proxy:
        async with (
            AsyncClient(etcd_server.endpoint) as holder,
            AsyncClient(proxy.endpoint, timeout=2) as client,
        ):

            def made_by(etcd: AsyncClient, wait: float | None) -> Any:
                name = etcd_prefix + recipe
                if recipe == "lock":
                    return etcd.lock(name, ttl=5, timeout=wait)
                if recipe == "campaign":
                    return etcd.election(name).campaign("v", ttl=5, timeout=wait)
                return etcd.semaphore(name, 1, ttl=5, timeout=wait)

            async with made_by(holder, None):
                t0 = time.monotonic()
                waiting = asyncio.ensure_future(made_by(client, timeout).__aenter__())
                await asyncio.sleep(0.3)
                proxy.cut()
                with pytest.raises(etcdkit.EtcdTimeoutError):
                    await waiting
                took = time.monotonic() - t0
                proxy.restore()
            assert took < timeout + 0.9, f"raised after {took:.2f} s"


@pytest.mark.cluster
async def test_pages_read_at_a_member_behind_their_revision_wait_for_it(
    etcd_cluster: EtcdCluster, etcd_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pages at a known revision are serializable reads (no ReadIndex round each); a member
    # that has not reached the revision answers "a future revision", and the pages are read
    # linearizably from then on: every key of the revision, none lost, no error. The member
    # is made to lag: paused while the other two take writes, resumed as the listing starts.
    leader = etcd_cluster.leader()
    behind = next(m for m in etcd_cluster.members if m is not leader)
    others = [m.endpoint for m in etcd_cluster.members if m is not behind]
    keys = 3_000
    fell_back = 0
    async with (
        AsyncClient(others, timeout=10) as writer,
        fresh_client(behind.endpoint, timeout=10) as reader,
    ):
        read = reader.core.kv._read

        def watched(what: str, service: str, method: str, req: Any) -> Any:
            async def answer() -> Any:
                nonlocal fell_back
                try:
                    return await read(what, service, method, req)
                except etcdkit.InvalidArgumentError as exc:
                    if req.serializable and "future revision" in str(exc):
                        fell_back += 1
                    raise

            return answer()

        monkeypatch.setattr(reader.core.kv, "_read", watched)
        await reader.get_revision()  # (connected before the member stops)
        for attempt in range(5):
            await writer.delete_range(etcd_prefix, prefix=True)
            behind.pause()
            try:
                for start in range(0, keys, 128):
                    batch = range(start, min(start + 128, keys))
                    value = f"{attempt}-{start}"
                    rev = (
                        await writer.txn(
                            success=[Op.put(f"{etcd_prefix}{i:05d}", value) for i in batch]
                        )
                    ).revision
                listing = asyncio.create_task(
                    _collect_pages(reader, etcd_prefix, revision=rev, page_size=500)
                )
                await asyncio.sleep(0.05)  # (the first page's request waits at the member)
            finally:
                behind.resume()
            pages = await listing
            want = await writer.get_prefix(etcd_prefix, revision=rev)
            assert [kv.key for page in pages for kv in page] == [kv.key for kv in want.kvs]
            assert [kv.value for page in pages for kv in page] == [kv.value for kv in want.kvs]
            if fell_back:
                break
    assert fell_back, "the member was never behind the listing's revision: nothing shown"


async def _collect_pages(
    client: AsyncClient, prefix: str, *, revision: int, page_size: int
) -> list[Sequence[etcdkit.KeyValueLike]]:
    return [
        page
        async for page, _rev in client.get_prefix_pages(
            prefix, revision=revision, page_size=page_size
        )
    ]


@pytest.mark.parametrize("call", ["keep_alive_once", "snapshot"])
async def test_stream_calls_wait_for_a_ready_endpoint_as_unary_calls_do(
    etcd_server_factory: Any, tmp_path: Any, call: str
) -> None:
    # keep_alive_once (a stream of its own) and snapshot (a server stream) failed at once on an
    # endpoint that refused them, and never left it: the first endpoint dead, or etcd
    # restarting, and they raised where every unary call waits and fails over.
    from etcdkit.testing.ports import free_port

    server = etcd_server_factory()
    dead = f"http://127.0.0.1:{free_port()}"

    async def run(client: AsyncClient, lease_id: int) -> None:
        if call == "keep_alive_once":
            assert await client.keep_alive_once(lease_id) > 0
        else:
            assert await client.maintenance.snapshot(tmp_path / "snap.db") > 0

    async with fresh_client(server.endpoint, timeout=20) as owner:
        lease = await owner.grant(60)
        async with fresh_client([dead, server.endpoint], timeout=20) as client:
            await run(client, lease.id)  # the first call: the dead endpoint is left
            assert client.stats.failovers == 1
            if call == "keep_alive_once":
                assert client.stats.calls == 1
        server.stop()
        async with fresh_client(server.endpoint, timeout=20) as client:
            pending = asyncio.create_task(run(client, lease.id))  # while etcd is down
            await asyncio.sleep(0.5)
            assert not pending.done()
            server.restart()
            await pending


async def test_the_retry_policys_allow_list_decides_what_a_call_retries(
    etcd_server_factory: Any,
) -> None:
    # RetryPolicy.retryable, "the errors worth retrying", was consulted by recipes alone: a
    # call retried a refused endpoint until its timeout whatever the policy said.
    from etcdkit.testing.ports import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    never = etcdkit.RetryPolicy(retryable=())
    async with fresh_client(dead, timeout=60, retry=never) as client:
        async with asyncio.timeout(20):  # (not the call's 60 s of retries)
            with pytest.raises(etcdkit.ConnectionUnavailableError) as caught:
                await client.get("/k")
            with pytest.raises(etcdkit.ConnectionUnavailableError):
                await client.grant(5)
    assert "no etcd endpoint answered" not in str(caught.value)  # the attempt's own error
    async with fresh_client(dead, timeout=1) as client:  # the default: retried to the end
        with pytest.raises(etcdkit.ConnectionUnavailableError) as caught:
            await client.get("/k")
    assert "no etcd endpoint answered within 1" in str(caught.value)


@pytest.mark.parametrize("recipe", ["lock", "campaign", "semaphore", "rwlock"])
async def test_a_hold_found_lost_guards_no_write_while_its_key_outlives_it(
    etcd_server: EtcdServer, etcd_prefix: str, recipe: str
) -> None:
    # A holder cut off from etcd says LOST a margin before its lease's TTL ends: until etcd
    # expires the lease, the key is still there, and a write guarded by a compare on the key
    # alone landed (the guard said "refused once lost"). Asked for once the hold is lost, the
    # guard holds for no key.
    name = etcd_prefix + recipe
    with Proxy(etcd_server.endpoint) as proxy:
        async with (
            AsyncClient(proxy.endpoint, timeout=2) as holder,
            AsyncClient(etcd_server.endpoint) as writer,
        ):
            if recipe == "lock":
                hold: Any = await holder.lock(name, ttl=5).acquire()
            elif recipe == "campaign":
                hold = await holder.election(name).campaign("v", ttl=5).__aenter__()
            elif recipe == "semaphore":
                hold = await holder.semaphore(name, 1, ttl=5).acquire()
            else:
                hold = await holder.rwlock(name, ttl=5).write().acquire()
            before = hold.guard()
            assert (await writer.txn([before], [Op.put(name + "-w", "1")])).succeeded
            proxy.cut()
            await asyncio.wait_for(hold.lost.wait(), 10)
            assert hold.state is etcdkit.HoldState.LOST
            guard = hold.guard()
            result = await writer.txn([guard], [Op.put(name + "-w", "2")])
            still = await writer.get(hold.key)
            proxy.restore()
            assert not result.succeeded
            assert (await writer.get(name + "-w")).value == b"1"  # type: ignore[union-attr]
            if still is None:
                pytest.skip("etcd had expired the lease already: no window to show")
