"""A user's listener that raises is logged and skipped, whatever it raises short of
KeyboardInterrupt/SystemExit: a plain function cannot be cancelled, so a CancelledError out of
one is the function's own, and it must not end the task that called it (the client's shared
Watch stream, a lock's or a lease's keeper)."""

from __future__ import annotations

import asyncio

import pytest

from etcdkit import AsyncClient, HoldState, LeaseState

WAIT = 10.0


def cancelling(*args: object) -> None:
    raise asyncio.CancelledError("from a listener")


async def test_a_watch_listener_raising_cancelled_error_harms_no_watch(
    etcd: AsyncClient, etcd_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    p = etcd_prefix
    async with etcd.watch(p + "a/", prefix=True) as a, etcd.watch(p + "b/", prefix=True) as b:
        a.add_listener(cancelling)
        ra = await etcd.put(p + "a/1", "x")
        rb = await etcd.put(p + "b/1", "y")
        async with asyncio.timeout(WAIT):
            assert (await anext(b)).events[0].kv.mod_revision == rb  # the shared stream goes on
            assert (await anext(a)).events[
                0
            ].kv.mod_revision == ra  # and a's batch stays for its iteration
        assert "from a listener" in caplog.text
        rb = await etcd.put(p + "b/2", "z")
        async with asyncio.timeout(WAIT):
            assert (await anext(b)).events[0].kv.mod_revision == rb


async def test_a_keep_alive_listener_raising_cancelled_error_keeps_the_lease(
    etcd: AsyncClient,
) -> None:
    lease = (await etcd.grant(2)).id
    async with etcd.keep_alive(lease) as kept:
        kept.add_listener(cancelling)
        await asyncio.sleep(3.5)  # past the TTL: renewed all along
        assert await etcd.time_to_live(lease) > 0
        async with asyncio.timeout(WAIT):
            assert (await anext(kept)).ttl > 0


async def test_a_lock_listener_raising_cancelled_error_keeps_the_lock_working(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    name = etcd_prefix + "l"
    lock = etcd.lock(name, ttl=5)
    lock.add_listener(cancelling)
    await asyncio.wait_for(lock.acquire(), WAIT)
    assert lock.state is HoldState.HELD
    await etcd.revoke(lock.lease_id)
    await asyncio.wait_for(lock.lost.wait(), WAIT)  # LOST still seen
    lost: HoldState = lock.state
    assert lost is HoldState.LOST
    await asyncio.wait_for(lock.release(), WAIT)
    await asyncio.wait_for(lock.acquire(), WAIT)  # and it can be taken again
    held: HoldState = lock.state
    assert held is HoldState.HELD
    await asyncio.wait_for(lock.release(), WAIT)


async def test_a_lease_listener_raising_cancelled_error_keeps_the_key(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    key = etcd_prefix + "k"
    async with etcd.persistent_lease(key, "v", ttl=5) as lease:
        lease.add_listener(cancelling)
        await lease.registered(timeout=WAIT)
        await etcd.delete(key)
        async with asyncio.timeout(WAIT):
            while await etcd.get(key) is None:
                await asyncio.sleep(0.05)
        await lease.wait_state(LeaseState.REGISTERED, timeout=WAIT)
    assert await etcd.get(key) is None
