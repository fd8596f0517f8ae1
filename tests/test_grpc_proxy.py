"""The recipes through etcd's own gRPC proxy (``etcd grpc-proxy start``), with its faults.

What the proxy does differently, and what these tests pin down:

- it never answers a watch *progress request* (etcd-io/etcd#19710); the watch hub notices on
  each stream (a probe watch's "created" overtakes the unanswered request) and probes with
  watch creates instead, so an idle watch stays LIVE without reconnecting every few seconds;
- it answers watch creates out of order (coalesced ones at once, new ones when etcd answers)
  and ignores asked watch ids (etcd-io/etcd#12819): the hub then creates one at a time;
- it ignores the ``hasleader`` metadata, and it refreshes a lease towards etcd on its own
  schedule (TTL/3) whatever the client asks: see README, "Through etcd's gRPC proxy".
"""

from __future__ import annotations

import asyncio
import random
import re
import time
import urllib.request
from collections.abc import Callable
from typing import Any, cast

import grpc
import grpc.aio
import pytest
from aetcd import rpc

import etcdkit
from etcdkit import (
    AsyncClient,
    ChangeKind,
    LeaseState,
    PrefixWatch,
    SessionState,
    WatchEvent,
    WatchState,
)
from etcdkit.testing import EtcdServer, GrpcProxy

WAIT = 20.0


async def until_state(watch: PrefixWatch[Any, Any], state: WatchState) -> None:
    async with asyncio.timeout(WAIT):
        while watch.state is not state:
            await asyncio.sleep(0.05)


async def until_revision(watch: PrefixWatch[Any, Any], revision: int) -> dict[str, bytes]:
    async with asyncio.timeout(WAIT):
        while watch.revision < revision:
            await asyncio.sleep(0.02)
    snap = watch.snapshot
    assert snap is not None
    return dict(snap.tree)


async def tree_at(client: AsyncClient, prefix: str, revision: int) -> dict[str, bytes]:
    result = await client.get_prefix(prefix, revision=revision)
    return {kv.key.decode(): kv.value for kv in result.kvs}


async def retrying(call: Callable[[], Any]) -> Any:
    async with asyncio.timeout(WAIT):
        while True:
            try:
                return await call()
            except (etcdkit.ConnectionUnavailableError, etcdkit.EtcdTimeoutError):
                await asyncio.sleep(0.1)


def proxy_complaints(proxy: GrpcProxy) -> int:
    return proxy.logs(10_000).count("not supported request type")


# -- the control ------------------------------------------------------------------------------


def test_grpc_proxy_control(etcd_server: EtcdServer, etcd_prefix: str) -> None:
    proxy = GrpcProxy(etcd_server)
    assert not proxy.running
    assert "stopped" in repr(proxy)
    with proxy:
        assert proxy.running
        assert proxy.healthy()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", proxy.endpoint)
        assert proxy.targets == [etcd_server.endpoint]
        endpoint = proxy.endpoint
        with etcdkit.Client(endpoint, timeout=5.0) as client:
            client.put(etcd_prefix + "k", "v")
            proxy.kill()
            assert not proxy.running
            assert not proxy.healthy()
            proxy.restart()  # same port
            assert proxy.endpoint == endpoint
            assert proxy.healthy()
            kv = client.get(etcd_prefix + "k")
            assert kv is not None
            assert kv.value == b"v"
        assert "etcd_grpc_proxy" in proxy.metrics()
        assert proxy.logs().count("--- etcdkit: starting grpc-proxy") == 2
        proxy.stop()
        assert not proxy.running
    proxy.close()  # idempotent
    with pytest.raises(etcdkit.testing.EtcdServerError, match="closed"):
        proxy.start()
    with pytest.raises(TypeError):
        GrpcProxy(cast(Any, 42))


def test_grpc_proxy_fixture_fronts_the_session_server(
    etcd_grpc_proxy: GrpcProxy, etcd_server: EtcdServer
) -> None:
    assert etcd_grpc_proxy.targets == [etcd_server.endpoint]
    with urllib.request.urlopen(f"{etcd_grpc_proxy.endpoint}/health", timeout=5) as resp:
        assert b'"health":"true"' in resp.read()


# -- watch_prefix ---------------------------------------------------------------------------------


async def test_every_snapshot_is_exact_through_the_proxy(
    etcd_grpc_proxy: GrpcProxy, etcd: AsyncClient, etcd_prefix: str
) -> None:
    """Many watchers of one prefix on two clients (the proxy coalesces them), random writes:
    every snapshot equals a direct read of the prefix at its revision."""
    p = etcd_prefix
    rng = random.Random(15)
    keys = [f"{p}k{i}" for i in range(12)]
    for k in keys[:6]:
        await etcd.put(k, "0")
    seen: list[tuple[int, int, dict[str, bytes]]] = []

    async def consume(n: int, watch: PrefixWatch[str, bytes]) -> None:
        async for snap in watch:
            seen.append((n, snap.revision, dict(snap.tree)))

    async with (
        AsyncClient(etcd_grpc_proxy.endpoint) as a,
        AsyncClient(etcd_grpc_proxy.endpoint) as b,
    ):
        watches = [(a if i % 2 else b).watch_prefix(p) for i in range(8)]
        for w in watches:
            w.start()
        consumers = [asyncio.create_task(consume(n, w)) for n, w in enumerate(watches)]
        try:
            last = 0
            for step in range(150):
                k, other = rng.sample(keys, 2)
                if step % 10 == 9:
                    r = await etcd.txn(
                        [], [etcdkit.Op.put(k, str(step)), etcdkit.Op.delete(other)], []
                    )
                    last = r.revision
                elif rng.random() < 0.3:
                    await etcd.delete(k)
                    last = await etcd.get_revision()
                else:
                    last = await etcd.put(k, str(step))
                if step == 20:
                    await asyncio.gather(*(w.synced(timeout=WAIT) for w in watches))
            for w in watches:
                await until_revision(w, last)
                assert w.state is WatchState.LIVE
                assert w.stats.relists == 0
        finally:
            for t in consumers:
                t.cancel()
            await asyncio.gather(*consumers, return_exceptions=True)
            for w in watches:
                await w.aclose()
    assert {n for n, _, _ in seen} == set(range(8))
    want: dict[int, dict[str, bytes]] = {}
    for _n, rev, tree in seen:
        if rev not in want:
            want[rev] = await tree_at(etcd, p, rev)
        assert tree == want[rev], f"snapshot at revision {rev} differs from etcd"
    assert "etcd_grpc_proxy_watchers_coalescing_total" in etcd_grpc_proxy.metrics()


async def test_creates_answered_out_of_order_are_not_swapped(
    etcd_grpc_proxy: GrpcProxy, etcd: AsyncClient, etcd_prefix: str
) -> None:
    """The proxy answers a create it joins to a running watch at once, and a new one only once
    etcd answered: with both in flight, pipelined creates swapped watch ids (events of one
    range went to the other watcher)."""
    p = etcd_prefix
    got: dict[str, list[bytes]] = {"new": [], "joined": []}

    def collect(name: str) -> Callable[[list[WatchEvent]], None]:
        return lambda events: got[name].extend(ev.kv.key for ev in events)

    ended: list[etcdkit.EtcdkitError] = []
    fail = ended.append

    async with (
        AsyncClient(etcd_grpc_proxy.endpoint) as other,
        AsyncClient(etcd_grpc_proxy.endpoint) as client,
    ):
        async with other.watch_prefix(p + "x/") as running:
            await running.synced(timeout=WAIT)
            rev = await etcd.get_revision()
            hub = client.core.watches
            hub.watch(b"warm-up", on_events=collect("new"), on_end=fail)  # the stream is up
            await asyncio.sleep(0.2)
            for _ in range(3):
                new = hub.watch(
                    f"{p}a/".encode(), f"{p}a0".encode(), 0, on_events=collect("new"), on_end=fail
                )
                joined = hub.watch(
                    f"{p}x/".encode(),
                    f"{p}x0".encode(),
                    rev + 1,
                    on_events=collect("joined"),
                    on_end=fail,
                )
                async with asyncio.timeout(WAIT):
                    while not (new.connected and joined.connected):
                        await asyncio.sleep(0.01)
                await etcd.put(p + "a/1", "a")
                rev = await etcd.put(p + "x/1", "x")
                async with asyncio.timeout(WAIT):
                    while len(got["new"]) < 1 or len(got["joined"]) < 1:
                        await asyncio.sleep(0.01)
                await asyncio.sleep(0.1)
                assert got == {"new": [f"{p}a/1".encode()], "joined": [f"{p}x/1".encode()]}
                new.cancel()
                joined.cancel()
                got = {"new": [], "joined": []}
            assert ended == []


async def test_idle_watch_stays_live_without_reconnecting(
    etcd_grpc_proxy: GrpcProxy, etcd: AsyncClient, etcd_prefix: str
) -> None:
    """The proxy never answers progress requests: a hub that waited for one reconnected every
    ~3 s. It now notices once per stream and probes with watch creates instead."""
    await etcd.put(etcd_prefix + "a", "1")
    async with AsyncClient(etcd_grpc_proxy.endpoint) as client:
        async with client.watch_prefix(etcd_prefix) as watch:
            await watch.synced(timeout=WAIT)
            hub = client.core.watches
            t_end = time.monotonic() + 6.0
            while time.monotonic() < t_end:
                assert watch.state is WatchState.LIVE
                await asyncio.sleep(0.1)
            assert (hub.stalls, hub.reconnects, watch.stats.disconnects) == (0, 0, 0)
    assert proxy_complaints(etcd_grpc_proxy) <= 1  # the first request, sent before it knew


async def test_resume_after_the_proxy_is_killed_and_restarted(
    etcd_grpc_proxy: GrpcProxy, etcd: AsyncClient, etcd_prefix: str
) -> None:
    p = etcd_prefix
    await etcd.put(p + "a", "1")
    async with AsyncClient(etcd_grpc_proxy.endpoint) as client:
        async with client.watch_prefix(p) as watch:
            await watch.synced(timeout=WAIT)
            etcd_grpc_proxy.kill()
            await until_state(watch, WatchState.STALE)
            await etcd.put(p + "b", "2")
            await etcd.delete(p + "a")
            rev = await etcd.put(p + "c", "3")
            etcd_grpc_proxy.start()
            tree = await until_revision(watch, rev)
            assert tree == {p + "b": b"2", p + "c": b"3"} == await tree_at(etcd, p, rev)
            assert watch.stats.relists == 0  # resumed from its revision, no listing again
            assert watch.stats.disconnects >= 1
            await until_state(watch, WatchState.LIVE)
            rev = await etcd.put(p + "d", "4")
            assert (await until_revision(watch, rev))[p + "d"] == b"4"


async def test_relist_after_compaction_through_the_proxy(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    server = etcd_server_factory()
    with GrpcProxy(server) as proxy:
        async with AsyncClient(server.endpoint) as writer, AsyncClient(proxy.endpoint) as client:
            for k in "abc":
                await writer.put("/cmp/" + k, "1")
            async with client.watch_prefix("/cmp/") as watch:
                await watch.synced(timeout=WAIT)
                proxy.kill()
                await writer.delete("/cmp/a")
                await writer.put("/cmp/b", "2")
                rev = await writer.put("/cmp/d", "4")
                await writer.compact(rev)
                proxy.start()
                async with asyncio.timeout(WAIT):
                    async for snap in watch:
                        if snap.revision >= rev:
                            break
                assert dict(snap.tree) == {"/cmp/b": b"2", "/cmp/c": b"1", "/cmp/d": b"4"}
                assert snap.changes["/cmp/a"].kind is ChangeKind.REMOVED  # synthesized delete
                assert watch.stats.relists >= 1
                await until_state(watch, WatchState.LIVE)


async def test_etcd_down_behind_the_proxy_turns_stale_then_live(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    """The proxy stays up; only its probes (which etcd must answer) tell the watch that etcd
    is gone. Progress requests would not, and hasleader is not honoured by the proxy."""
    server = etcd_server_factory()
    with GrpcProxy(server) as proxy:
        async with AsyncClient(proxy.endpoint) as client:
            await client.put("/down/a", "1")
            async with client.watch_prefix("/down/") as watch:
                await watch.synced(timeout=WAIT)
                await asyncio.sleep(1.5)  # past the first probe: the stream knows it is a proxy
                server.kill()
                t0 = time.monotonic()
                await until_state(watch, WatchState.STALE)
                assert time.monotonic() - t0 < 8.0
                server.restart()
                rev = await retrying(lambda: client.put("/down/b", "2"))
                assert await until_revision(watch, rev) == {"/down/a": b"1", "/down/b": b"2"}
                await until_state(watch, WatchState.LIVE)


# -- wait_for -----------------------------------------------------------------------------------


async def test_wait_for_through_the_proxy(
    etcd_grpc_proxy: GrpcProxy, etcd: AsyncClient, etcd_prefix: str
) -> None:
    key = etcd_prefix + "ready"
    async with AsyncClient(etcd_grpc_proxy.endpoint) as client:
        waiting = asyncio.create_task(client.wait_for(key, timeout=WAIT))
        await asyncio.sleep(0.3)
        etcd_grpc_proxy.kill()  # the wait outlives the proxy
        rev = await etcd.put(key, "1")
        etcd_grpc_proxy.start()
        assert await waiting == rev
        gone = asyncio.create_task(client.wait_for(key, exists=False, timeout=WAIT))
        await asyncio.sleep(0.2)
        assert not gone.done()
        await etcd.delete(key)
        assert await gone > rev
        with pytest.raises(etcdkit.EtcdTimeoutError):
            await client.wait_for(key, timeout=0.5)


# -- leases -------------------------------------------------------------------------------------


async def test_persistent_lease_through_the_proxy(
    etcd_grpc_proxy: GrpcProxy, etcd: AsyncClient, etcd_prefix: str
) -> None:
    key = etcd_prefix + "node"
    async with AsyncClient(etcd_grpc_proxy.endpoint) as client:
        async with client.persistent_lease(key, "10.0.0.1:80", ttl=5) as lease:
            await lease.registered(timeout=WAIT)
            kv = await etcd.get(key)
            assert kv is not None
            assert kv.lease == lease.lease_id
            await etcd.delete(key)  # comes back by itself
            await retrying(lambda: lease.wait_state(LeaseState.REGISTERED, timeout=WAIT))
            async with asyncio.timeout(WAIT):
                while (kv := await etcd.get(key)) is None:
                    await asyncio.sleep(0.05)
            assert kv.value == b"10.0.0.1:80"
            held = lease.lease_id
            etcd_grpc_proxy.kill()
            await lease.wait_state(LeaseState.SUSPENDED, LeaseState.LOST, timeout=WAIT)
            etcd_grpc_proxy.start()
            await lease.wait_state(LeaseState.REGISTERED, timeout=WAIT)
            assert lease.lease_id == held  # back within the TTL: the same lease lived on
            kv = await etcd.get(key)
            assert kv is not None
            assert kv.lease == held
        assert await etcd.get(key) is None  # gone on close


async def test_session_through_the_proxy(
    etcd_grpc_proxy: GrpcProxy, etcd: AsyncClient, etcd_prefix: str
) -> None:
    async with AsyncClient(etcd_grpc_proxy.endpoint) as client:
        states: list[SessionState] = []
        async with client.session(ttl=3) as session:
            session.add_listener(states.append)
            await etcd.put(etcd_prefix + "me", "here", lease=session.lease_id)
            await asyncio.sleep(7.0)  # more than twice the TTL: kept alive through the proxy
            assert SessionState.LOST not in states
            assert await etcd.get(etcd_prefix + "me") is not None
            await etcd.revoke(session.lease_id)
            assert await session.wait_lost(timeout=WAIT) is SessionState.LOST
        async with client.session(ttl=5) as session:
            lease_id = session.lease_id
        assert await etcd.time_to_live(lease_id) <= 0  # closing revoked it


async def test_leases_through_the_proxy_stay_alive_without_a_blip(
    etcd_grpc_proxy: GrpcProxy,
) -> None:
    """The proxy holds a refresh up to its TTL/3 + 0.5 s (next test), longer than the
    keepalive's stall budget. A member that answers a read at once shows the refresh is held,
    not lost: no SUSPENDED, no reconnect. (Before, these leases all blipped SUSPENDED every
    few seconds: 4 reconnects in 25 s.)"""
    async with AsyncClient(etcd_grpc_proxy.endpoint) as client:
        transitions: list[tuple[int, SessionState]] = []

        def recorder(ttl: int) -> Callable[[SessionState], None]:
            return lambda state: transitions.append((ttl, state))

        sessions = []
        for ttl in (2, 3, 5, 9, 10, 12):
            session = client.session(ttl=ttl)
            await session.open()
            session.add_listener(recorder(ttl))
            sessions.append(session)
            await asyncio.sleep(0.37)  # phases apart
        await asyncio.sleep(13.0)
        assert transitions == []
        assert client.stats.keepalive_reconnects == 0
        for session in sessions:
            await session.close()


async def test_the_proxy_answers_a_refresh_on_its_own_schedule(
    etcd_grpc_proxy: GrpcProxy, etcd: AsyncClient
) -> None:
    """Pins the proxy behaviour behind SUSPENDED blips of leases through it: it refreshes a
    lease towards etcd on its own client's schedule (every TTL/3, on a 0.5 s tick) and holds
    our refresh until that answer comes, so a refresh sent just after one of its own waits
    about TTL/3 + up to 0.5 s, which can exceed the keepalive hub's stall budget
    (``etcdkit._wire.keepalive.stall_after``: 1 s at TTL 3, 3 s at TTL >= 9)."""
    ttl = 3
    lease = await etcd.grant(ttl)
    channel = grpc.aio.insecure_channel(etcd_grpc_proxy.endpoint.removeprefix("http://"))
    try:
        call = rpc.LeaseStub(channel).LeaseKeepAlive()
        await call.write(rpc.LeaseKeepAliveRequest(ID=lease.id))
        await call.read()  # the proxy's first refresh towards etcd goes at once
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        await call.write(rpc.LeaseKeepAliveRequest(ID=lease.id))
        resp = await call.read()
        waited = time.monotonic() - t0
        granted = resp.TTL
        assert granted == ttl
        assert waited > ttl / 3 - 0.2, f"answered after {waited:.2f} s"  # held, not forwarded
        call.cancel()
    finally:
        await channel.close()
        await etcd.revoke(lease.id)
