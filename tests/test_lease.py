"""PersistentLease against real etcd, with real faults."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

import etcdkit
from etcdkit import AsyncClient, Client, LeaseState, PersistentLease
from etcdkit.server import EtcdCluster, EtcdServer, Proxy

WAIT = 20.0


async def value_becomes(client: AsyncClient, key: str, value: bytes | None) -> int:
    """Poll until the key holds ``value`` (None = absent); returns its mod revision."""
    async with asyncio.timeout(WAIT):
        while True:
            try:
                kv = await client.get(key)
            except (etcdkit.ConnectionUnavailableError, etcdkit.EtcdTimeoutError):
                kv = None
                await asyncio.sleep(0.05)
                continue
            if (kv.value if kv else None) == value:
                return kv.mod_revision if kv else 0
            await asyncio.sleep(0.01)


async def test_seed_cycles_delete_and_revoke(etcd: AsyncClient, etcd_prefix: str) -> None:
    key = etcd_prefix + "node"
    async with etcd.persistent_lease(key, "10.0.0.1:80", ttl=5) as lease:
        rev = await lease.registered(timeout=WAIT)
        assert lease.state is LeaseState.REGISTERED
        kv = await etcd.get(key)
        assert kv is not None
        assert (kv.value, kv.lease, kv.mod_revision) == (b"10.0.0.1:80", lease.lease_id, rev)
        assert lease.create_revision == kv.create_revision
        for cycle in range(5):
            old_lease = lease.lease_id
            if cycle % 2 == 0:
                await etcd.delete(key)
            else:
                await etcd.revoke(old_lease)
            await value_becomes(etcd, key, b"10.0.0.1:80")
            await lease.wait_state(LeaseState.REGISTERED, timeout=WAIT)
            kv = await etcd.get(key)
            assert kv is not None
            assert kv.lease == lease.lease_id
            if cycle % 2 == 1:
                assert lease.lease_id != old_lease
        lease.set_value("10.0.0.1:81")
        rev = await lease.synced(timeout=WAIT)
        kv = await etcd.get(key)
        assert kv is not None
        assert (kv.value, kv.mod_revision) == (b"10.0.0.1:81", rev)
        assert lease.value == b"10.0.0.1:81"
    final_state: LeaseState = lease.state  # (read again: it changed on close)
    assert final_state is LeaseState.CLOSED
    assert await etcd.get(key) is None  # revoked on close: gone at once
    await lease.aclose()  # idempotent
    with pytest.raises(etcdkit.ClosedError, match="closed"):
        lease.set_value("x")


async def test_state_listener_sees_lost_and_back(etcd: AsyncClient, etcd_prefix: str) -> None:
    key = etcd_prefix + "l"
    states: list[LeaseState] = []
    async with etcd.persistent_lease(key, "v", ttl=5) as lease:
        lease.add_listener(states.append)
        await lease.registered(timeout=WAIT)
        await etcd.delete(key)
        await value_becomes(etcd, key, b"v")
        await lease.wait_state(LeaseState.REGISTERED, timeout=WAIT)
    assert LeaseState.LOST in states
    assert states[-1] is LeaseState.CLOSED
    assert "PersistentLease" in repr(lease)


async def test_expiry_while_the_loop_is_blocked(etcd: AsyncClient, etcd_prefix: str) -> None:
    key = etcd_prefix + "exp"
    async with etcd.persistent_lease(key, "v", ttl=2) as lease:
        await lease.registered(timeout=WAIT)
        first = lease.lease_id
        time.sleep(lease.ttl + 2.5)  # noqa: ASYNC251 - blocks the loop on purpose: a paused process
        async with asyncio.timeout(WAIT):
            while lease.lease_id in (first, 0) or lease.state is not LeaseState.REGISTERED:
                await asyncio.sleep(0.02)
        kv = await etcd.get(key)
        assert kv is not None
        assert kv.lease == lease.lease_id != first


async def test_server_kill_and_restart(etcd_server_factory: Callable[..., EtcdServer]) -> None:
    server = etcd_server_factory()
    async with AsyncClient(server.endpoint) as client:
        async with client.persistent_lease("/k/a", "v", ttl=2) as lease:
            await lease.registered(timeout=WAIT)
            server.kill()
            await lease.wait_state(LeaseState.SUSPENDED, LeaseState.LOST, timeout=WAIT)
            await asyncio.sleep(3)  # longer than the TTL: the lease is gone when etcd is back
            lease.set_value("during-outage")  # latest value wins after recovery
            server.restart()
            await lease.synced(timeout=WAIT)
            assert (await client.get("/k/a")).value == b"during-outage"  # type: ignore[union-attr]


async def test_proxy_cut_and_restore(etcd_server_factory: Callable[..., EtcdServer]) -> None:
    server = etcd_server_factory()
    with Proxy(server.endpoint) as proxy:
        async with AsyncClient(server.endpoint) as admin, AsyncClient(proxy.endpoint) as client:
            async with client.persistent_lease("/k/p", "v", ttl=2) as lease:
                await lease.registered(timeout=WAIT)
                proxy.cut()
                await lease.wait_state(LeaseState.SUSPENDED, LeaseState.LOST, timeout=WAIT)
                await value_becomes(admin, "/k/p", None)  # expired on the server meanwhile
                proxy.restore()
                await value_becomes(admin, "/k/p", b"v")
                await lease.wait_state(LeaseState.REGISTERED, timeout=WAIT)


async def test_close_during_outage_is_bounded(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    server = etcd_server_factory()
    async with AsyncClient(server.endpoint, timeout=1) as client:
        lease = client.persistent_lease("/k/c", "v", ttl=2)
        await lease.__aenter__()
        await lease.registered(timeout=WAIT)
        server.pause()
        try:
            t0 = time.monotonic()
            await lease.aclose()
            assert time.monotonic() - t0 < 5
            assert lease.state is LeaseState.CLOSED
        finally:
            server.resume()
    await asyncio.sleep(0)
    assert [t for t in asyncio.all_tasks() if t.get_name().startswith("etcdkit")] == []


async def test_another_writer_is_not_fought_in_a_hot_loop(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    key = etcd_prefix + "contested"
    async with etcd.persistent_lease(key, "mine", ttl=5) as lease:
        await lease.registered(timeout=WAIT)
        start_rev = await etcd.put(key, "theirs")
        await lease.wait_state(LeaseState.LOST, timeout=WAIT)
        await value_becomes(etcd, key, b"mine")  # re-asserted, at backoff pace
        kv = await etcd.get(key)
        assert kv is not None
        assert kv.mod_revision - start_rev <= 3  # not hundreds of writes


@pytest.mark.cluster
async def test_leader_kill_in_cluster(etcd_cluster: EtcdCluster) -> None:
    async with AsyncClient(etcd_cluster.endpoints) as client:
        async with client.persistent_lease("/cl/node", "v", ttl=3) as lease:
            await lease.registered(timeout=WAIT)
            leader = etcd_cluster.leader()
            leader.kill()
            try:
                await value_becomes(client, "/cl/node", b"v")
                await lease.wait_state(LeaseState.REGISTERED, timeout=WAIT)
                await asyncio.sleep(4)  # past the TTL: keepalives kept going through the change
                await value_becomes(client, "/cl/node", b"v")
            finally:
                leader.restart()
            await lease.wait_state(LeaseState.REGISTERED, timeout=WAIT)


@pytest.mark.slow
async def test_a_thousand_leases_share_one_stream(etcd: AsyncClient, etcd_prefix: str) -> None:
    leases = [etcd.persistent_lease(f"{etcd_prefix}n{i}", str(i), ttl=10) for i in range(1000)]
    for lease in leases:
        lease.start()
    try:
        async with asyncio.timeout(60):
            await asyncio.gather(*(lease.registered() for lease in leases))
        assert len((await etcd.get_prefix(etcd_prefix)).kvs) == 1000
        assert len({lease.lease_id for lease in leases}) == 1  # one etcd lease for them all
        assert len(etcd.core.keepalives) == 1  # so one keepalive per ttl/3, not a thousand
        assert etcd.core.watches.reconnects == 0
    finally:
        async with asyncio.timeout(60):
            await asyncio.gather(*(lease.aclose() for lease in leases))
    assert (await etcd.get_prefix(etcd_prefix)).kvs == []
    assert len(etcd.core.keepalives) == 0


@pytest.mark.parametrize(
    ("args", "exc", "match"),
    [
        (("", "v", 5), ValueError, "key must not be empty"),
        (("k", 5, 5), TypeError, "value must be str or bytes"),
        (("k", "v", 0), ValueError, "ttl must be >= 1"),
        (("k", "v", -2), ValueError, "ttl must be >= 1"),
        (("k", "v", 1.5), TypeError, "whole number"),
    ],
)
async def test_bad_arguments_fail_at_the_call(
    etcd: AsyncClient, args: tuple[object, object, object], exc: type, match: str
) -> None:
    with pytest.raises(exc, match=match):
        etcd.persistent_lease(*args)  # type: ignore[arg-type]
    with pytest.raises(exc, match=match):
        PersistentLease(etcd, *args)  # type: ignore[arg-type]


def test_threaded_lease(etcd_sync: Client, etcd_prefix: str, no_leaked_threads: None) -> None:
    key = etcd_prefix + "sync"
    with Client(etcd_sync.endpoints) as client:
        with client.persistent_lease(key, "a", ttl=5) as lease:
            assert lease.registered(timeout=WAIT) > 0
            lease.set_value("b")
            lease.synced(timeout=WAIT)
            assert client.get(key).value == b"b"  # type: ignore[union-attr]
            client.delete(key)
            lease.wait_state(LeaseState.LOST, LeaseState.REGISTERED, timeout=WAIT)
            deadline = time.monotonic() + WAIT
            while client.get(key) is None and time.monotonic() < deadline:
                time.sleep(0.01)
            assert client.get(key) is not None
        assert client.get(key) is None
        with pytest.raises(etcdkit.ClosedError):
            lease.set_value("c")


async def test_shared_lease_close_revoke_and_own_lease(etcd: AsyncClient, etcd_prefix: str) -> None:
    p = etcd_prefix
    async with (
        etcd.persistent_lease(p + "a", "1", ttl=5) as a,
        etcd.persistent_lease(p + "b", "2", ttl=5) as b,
        etcd.persistent_lease(p + "c", "3", ttl=5, own_lease=True) as c,
    ):
        await asyncio.gather(a.registered(timeout=WAIT), b.registered(timeout=WAIT))
        await c.registered(timeout=WAIT)
        assert a.lease_id == b.lease_id != c.lease_id
        assert a.create_revision != b.create_revision
        await etcd.revoke(a.lease_id)  # both keys on it go, both come back on a new lease
        await value_becomes(etcd, p + "a", b"1")
        await value_becomes(etcd, p + "b", b"2")
        await asyncio.gather(a.registered(timeout=WAIT), b.registered(timeout=WAIT))
        assert a.lease_id == b.lease_id
        await a.aclose()  # b still hangs on the lease: only a's key goes
        assert await etcd.get(p + "a") is None
        kv = await etcd.get(p + "b")
        assert kv is not None
        assert kv.lease == b.lease_id
        assert await etcd.time_to_live(b.lease_id) > 0
    assert (await etcd.get_prefix(p)).kvs == []


async def test_constructor_starts_at_once_like_the_seed(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    lease = PersistentLease(etcd, etcd_prefix + "seed", "v", 5)
    try:
        rev = await lease.registered(timeout=WAIT)
        kv = await etcd.get(etcd_prefix + "seed")
        assert kv is not None
        assert kv.mod_revision == rev
    finally:
        await lease.aclose()
        await lease.aclose()  # idempotent
    assert await etcd.get(etcd_prefix + "seed") is None
    with pytest.raises(etcdkit.ClosedError):
        lease.set_value("late")


async def test_client_close_during_outage_with_many_leases_is_bounded(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    server = etcd_server_factory()
    client = AsyncClient(server.endpoint, timeout=1)
    await client.connect()
    leases = [client.persistent_lease(f"/many/{i}", "v", ttl=3) for i in range(50)]
    await asyncio.gather(*(lease.registered(timeout=WAIT) for lease in leases))
    server.pause()
    try:
        t0 = time.monotonic()
        await client.close()  # every lease removes its key at once, in parallel
        assert time.monotonic() - t0 < 10
        assert all(lease.state is LeaseState.CLOSED for lease in leases)
    finally:
        server.resume()


async def test_closing_the_client_with_open_leases_warns_of_nothing(
    etcd: AsyncClient, etcd_server: EtcdServer, etcd_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Leases left open when their client closes go with their shared lease's revoke: no
    false "could not remove the key" warning (one per lease but the last)."""
    client = AsyncClient(etcd_server.endpoint)
    await client.connect()
    leases = [client.persistent_lease(f"{etcd_prefix}open/{i}", "v", ttl=30) for i in range(4)]
    for lease in leases:
        lease.start()
    for lease in leases:
        await lease.registered(timeout=10)
    with caplog.at_level("WARNING", logger="etcdkit"):
        await client.close()
    assert [r.getMessage() for r in caplog.records] == []
    assert (await etcd.get_prefix(etcd_prefix + "open/")).kvs == []


TOO_LARGE = b"x" * (2 << 20)  # past etcd's default request limit (1.5 MiB)


async def test_a_value_etcd_refuses_fails_the_lease_until_a_new_value(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    """FAILED on its value, with etcd's refusal; set_value then goes on with the new value
    (it returned, and nothing was ever put again: the waits kept raising the old error)."""
    key = etcd_prefix + "big"
    async with etcd.persistent_lease(key, TOO_LARGE, ttl=5) as lease:
        with pytest.raises(etcdkit.InvalidArgumentError, match="too large"):
            await lease.registered(timeout=WAIT)
        assert lease.state is LeaseState.FAILED
        lease.set_value("small")
        assert await lease.synced(timeout=WAIT) > 0
        assert lease.error is None
        kv = await etcd.get(key)
        assert kv is not None
        assert kv.value == b"small"
    assert await etcd.get(key) is None


def test_a_value_etcd_refuses_fails_the_lease_until_a_new_value_threaded(
    etcd_sync: Client, etcd_prefix: str, no_leaked_threads: None
) -> None:
    key = etcd_prefix + "big-sync"
    with Client(etcd_sync.endpoints) as client, client.persistent_lease(key, TOO_LARGE) as lease:
        with pytest.raises(etcdkit.InvalidArgumentError, match="too large"):
            lease.registered(timeout=WAIT)
        lease.set_value("small")
        lease.synced(timeout=WAIT)
        assert client.get(key).value == b"small"  # type: ignore[union-attr]


async def test_another_value_on_our_shared_lease_is_an_overwrite(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    """Two PersistentLeases of one TTL in one client share one etcd lease: the second one's
    put over the first's key was not seen as another writer's (only the lease was compared),
    and the first stayed REGISTERED with the other's value in etcd. Now they fight as any two
    writers do: at backoff pace, with a warning."""
    key = etcd_prefix + "twice"
    async with (
        etcd.persistent_lease(key, "a", ttl=10) as first,
        etcd.persistent_lease(key, "b", ttl=10) as second,
    ):
        await first.registered(timeout=WAIT)
        await second.registered(timeout=WAIT)
        assert first.lease_id == second.lease_id
        await first.wait_state(LeaseState.LOST, timeout=WAIT)
        start = await etcd.get_revision()
        await asyncio.sleep(2.0)
        assert await etcd.get_revision() - start <= 8  # (paced: not a hot loop)


async def test_the_session_pool_keeps_nothing_per_ttl_once_unused(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    """Leases of many TTLs, opened together (several per TTL) and closed: the pool keeps no
    lock per TTL ever used (it kept one each, for the client's life)."""
    leases = [
        etcd.persistent_lease(f"{etcd_prefix}{ttl}/{i}", "v", ttl=ttl)
        for ttl in range(5, 45)
        for i in range(2)
    ]
    await asyncio.gather(*(lease.registered(timeout=WAIT) for lease in leases))
    assert len({lease.lease_id for lease in leases}) == 40  # (one shared lease per TTL)
    await asyncio.gather(*(lease.aclose() for lease in leases))
    assert etcd._sessions._locks == {}
    assert etcd._sessions._by_ttl == {}


async def test_a_close_cut_off_from_etcd_removes_the_key_once_etcd_answers(
    etcd: AsyncClient, etcd_server: EtcdServer, etcd_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Two leases of one TTL share one etcd lease. One closes while etcd is out of reach: its
    close returns (bounded), and its key goes once etcd answers again, though the other keeps
    the shared lease alive (the delete is sent again; before, the key stayed as long as the
    other did)."""
    with Proxy(etcd_server.endpoint) as proxy:
        client = AsyncClient(proxy.endpoint, timeout=5)
        await client.connect()
        try:
            stays = client.persistent_lease(etcd_prefix + "stays", "v", ttl=3)
            goes = client.persistent_lease(etcd_prefix + "goes", "v", ttl=3)
            await stays.registered(timeout=WAIT)
            await goes.registered(timeout=WAIT)
            assert stays.lease_id == goes.lease_id  # shared
            proxy.cut()
            t0 = time.monotonic()
            with caplog.at_level("WARNING", logger="etcdkit"):
                await goes.aclose()
            assert time.monotonic() - t0 < 10
            assert goes.state is LeaseState.CLOSED
            assert await etcd.get(etcd_prefix + "goes") is not None  # etcd never heard
            proxy.restore()
            async with asyncio.timeout(WAIT):
                while await etcd.get(etcd_prefix + "goes") is not None:
                    await asyncio.sleep(0.1)
            assert any("sending the delete again" in r.getMessage() for r in caplog.records)
            await asyncio.sleep(4)  # past the TTL: the shared lease lives on, and the key too
            assert await etcd.get(etcd_prefix + "stays") is not None
            assert stays.state is LeaseState.REGISTERED
        finally:
            await client.close()
    assert (await etcd.get_prefix(etcd_prefix)).kvs == []


async def test_a_late_delete_ends_with_its_client(
    etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    """A close's delete still waiting for an etcd that stays out of reach ends when the client
    closes, promptly (the client's revoke of the shared lease, bounded, takes the key)."""
    with Proxy(etcd_server.endpoint) as proxy:
        client = AsyncClient(proxy.endpoint, timeout=5)
        await client.connect()
        stays = client.persistent_lease(etcd_prefix + "stays", "v", ttl=3)
        goes = client.persistent_lease(etcd_prefix + "goes", "v", ttl=3)
        await stays.registered(timeout=WAIT)
        await goes.registered(timeout=WAIT)
        proxy.cut()
        await goes.aclose()
        late = [t for t in asyncio.all_tasks() if t.get_name() == "etcdkit-late-calls"]
        assert len(late) == 1  # (the client's one task of calls sent again: the delete)
        t0 = time.monotonic()
        await client.close()
        assert time.monotonic() - t0 < 10
        assert late[0].done()


async def test_closing_one_of_two_leases_of_a_key_leaves_the_other_s_key(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    """Two leases of one client on one key (a new registration opened before the old one
    closes) share the client's etcd lease. The older one's close leaves the key the newer one
    put after it: no delete that the newer one would then undo (a watcher saw the key go and
    come back)."""
    key = etcd_prefix + "handover"
    client = AsyncClient(etcd.endpoints, timeout=5)
    await client.connect()
    try:
        old = client.persistent_lease(key, "v", ttl=5)
        await old.registered(timeout=WAIT)
        new = client.persistent_lease(key, "v", ttl=5)
        await new.registered(timeout=WAIT)
        since = await etcd.get_revision() + 1
        await old.aclose()
        await asyncio.sleep(0.5)
        assert new.state is LeaseState.REGISTERED
        await new.aclose()
        assert await etcd.get(key) is None
        events = []
        async with etcd.watch(key, start_revision=since) as w:
            async for batch in w:
                events.extend(batch.events)
                if any(ev.type is etcdkit.EventType.DELETE for ev in events):
                    break
        assert [ev.type for ev in events] == [etcdkit.EventType.DELETE]  # new's close alone
    finally:
        await client.close()
