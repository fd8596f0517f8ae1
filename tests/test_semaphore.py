"""Semaphore against real etcd: at most N holders, first come first served, one waiter woken per
release, fencing, each acquisition its own handle, and nothing left behind by a timeout or a
cancellation, on both faces."""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable

import pytest

from etcdkit import (
    AsyncClient,
    Client,
    EtcdTimeoutError,
    HoldState,
    NotHeldError,
    Op,
    Permit,
    Semaphore,
)
from etcdkit.recipes._hold import absent, deleted, watch_until
from etcdkit.server import EtcdServer

WAIT = 20.0


async def until(cond: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)
    assert cond(), what


async def keys(etcd: AsyncClient, prefix: bytes) -> list[bytes]:
    kvs = (await etcd.range(prefix, prefix=True)).kvs
    return [kv.key for kv in sorted(kvs, key=lambda kv: kv.create_revision)]


async def queued(etcd: AsyncClient, sem: Semaphore, n: int) -> None:
    """Wait until ``n`` waiter keys are in line."""
    async with asyncio.timeout(WAIT):
        while len(await keys(etcd, sem.waiters_prefix)) < n:
            await asyncio.sleep(0.01)


# -- at most N, first come first served -----------------------------------------------------------


async def test_at_most_n_holders_under_contention(
    etcd: AsyncClient, etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    name = etcd_prefix + "sem"
    permits = 3
    clients = [AsyncClient(etcd_server.endpoint) for _ in range(3)]
    for c in clients:
        await c.connect()
    inside = 0
    most = 0
    tokens: list[int] = []

    async def worker(i: int) -> None:
        nonlocal inside, most
        sem = clients[i % len(clients)].semaphore(name, permits, ttl=5, timeout=WAIT)
        for _ in range(3):
            async with sem as permit:
                inside += 1
                most = max(most, inside)
                holders = await keys(etcd, sem.holders_prefix)
                assert len(holders) <= permits
                assert permit.key in holders
                tokens.append(permit.fencing_token)
                await asyncio.sleep(random.uniform(0.0, 0.03))
                inside -= 1

    try:
        await asyncio.gather(*(worker(i) for i in range(12)))
    finally:
        for c in clients:
            await c.close()
    assert most == permits  # every permit was used, never one more
    assert len(set(tokens)) == len(tokens) == 36
    assert await keys(etcd, (name + "/").encode()) == []


async def test_first_come_first_served_and_one_wakeup_per_release(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    sem = etcd.semaphore(etcd_prefix + "sem", 2, ttl=5, timeout=WAIT)
    first, second = await sem.acquire(), await sem.acquire()
    assert first.state is second.state is HoldState.HELD
    assert second.fencing_token > first.fencing_token
    order: list[int] = []
    permits: dict[int, Permit] = {}
    go = {i: asyncio.Event() for i in range(6)}

    async def waiter(i: int) -> None:
        async with sem as permit:
            permits[i] = permit
            order.append(i)
            await go[i].wait()

    tasks = []
    for i in range(6):  # each one in line before the next comes
        tasks.append(asyncio.create_task(waiter(i)))
        await queued(etcd, sem, i + 1)
    await asyncio.sleep(0.2)
    await second.release()  # a permit in the middle of the holders goes: the first waiter gets it
    await until(lambda: order == [0], "waiter 0 holds")
    await first.release()
    await until(lambda: order == [0, 1], "waiter 1 holds")
    for i in range(2, 6):
        go[i - 2].set()
        await until(lambda i=i: order == list(range(i + 1)), f"waiter {i} holds")  # type: ignore[misc]
    go[4].set()
    go[5].set()
    await asyncio.gather(*tasks)
    assert order == list(range(6))
    tokens = [permits[i].fencing_token for i in range(6)]
    assert tokens == sorted(tokens)
    # Each release woke the first waiter (who promoted itself) and, through that promotion, the
    # one behind it: two wake-ups per release whatever the line's length, never a herd.
    wakeups = [permits[i].wakeups for i in range(6)]
    assert sum(wakeups) <= 2 * 6, wakeups
    assert max(wakeups) <= 2, wakeups


async def test_a_release_wakes_the_first_waiter_only(etcd: AsyncClient, etcd_prefix: str) -> None:
    sem = etcd.semaphore(etcd_prefix + "sem", 1, ttl=5, timeout=WAIT)
    holder = await sem.acquire()
    got: list[Permit] = []
    acquisitions = [asyncio.create_task(sem.acquire()) for _ in range(1)]
    await queued(etcd, sem, 1)
    for _ in range(4):
        acquisitions.append(asyncio.create_task(sem.acquire()))
        await queued(etcd, sem, len(acquisitions))
    watches = etcd.stats.watches
    await holder.release()
    done, _ = await asyncio.wait(acquisitions, return_when=asyncio.FIRST_COMPLETED)
    got = [t.result() for t in done]
    assert len(got) == 1
    await asyncio.sleep(0.3)
    assert sum(t.done() for t in acquisitions) == 1  # one permit, one holder
    assert got[0].wakeups == 1
    # The holder's release woke the first waiter; its promotion woke the second (which now
    # watches the holders); the three behind slept through it.
    assert etcd.stats.watches <= watches  # no watch piled up
    for t in acquisitions:
        if not t.done():
            t.cancel()
    await asyncio.gather(*acquisitions, return_exceptions=True)
    await got[0].release()
    assert await keys(etcd, (etcd_prefix + "sem/").encode()) == []


async def test_a_wait_sees_a_deletion_that_came_before_its_watch(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    # A waiter reads the key ahead at `rev`, and it goes before the watch exists: etcd then
    # replays it only when its "unsynced" watchers catch up (every 100 ms). The read made
    # beside the watch returns at once; here the watch's own events are ignored, so only that
    # read can end the wait.
    key = (etcd_prefix + "ahead").encode()
    await etcd.put(key, b"")
    rev = (await etcd.range(key)).revision
    await etcd.delete_range(key)
    async with asyncio.timeout(WAIT):
        await watch_until(etcd, key, rev, None, lambda events: False, settled=absent)
    await etcd.put(key, b"")  # still there: the read says nothing, the watch decides
    rev = (await etcd.range(key)).revision
    waiting = asyncio.create_task(watch_until(etcd, key, rev, None, deleted, settled=absent))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    await etcd.delete_range(key)
    async with asyncio.timeout(WAIT):
        await waiting


# -- fencing and loss -----------------------------------------------------------------------------


async def test_session_loss_sets_lost_and_guard_refuses(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    sem = etcd.semaphore(etcd_prefix + "sem", 2, ttl=5)
    data = etcd_prefix + "data"
    async with sem as permit:
        assert (await etcd.txn([permit.guard()], [Op.put(data, "1")])).succeeded
        kv = await etcd.get(permit.key)
        assert kv is not None
        assert (kv.lease, kv.create_revision) == (permit.lease_id, permit.fencing_token)
        assert permit.key == sem.holders_prefix + f"{permit.lease_id:x}".encode()
        await etcd.revoke(permit.lease_id)
        async with asyncio.timeout(WAIT):
            await permit.lost.wait()
        assert permit.state is HoldState.LOST
        assert not (await etcd.txn([permit.guard()], [Op.put(data, "late")])).succeeded
        async with sem as other:  # the lost permit is free for another
            assert other.fencing_token > permit.fencing_token
    states: list[HoldState] = [permit.state, other.state]  # (read again after the blocks)
    assert states == [HoldState.LOST, HoldState.RELEASED]  # (a loss stays LOST on release)
    with pytest.raises(NotHeldError):
        Permit(sem, etcd).guard()


async def test_each_acquisition_is_its_own_handle(etcd: AsyncClient, etcd_prefix: str) -> None:
    """Issue 23's first finding, for the semaphore: A's late exit must not release B."""
    sem = etcd.semaphore(etcd_prefix + "sem", 1, ttl=5, timeout=WAIT)
    a_in = asyncio.Event()
    a_out = asyncio.Event()
    b_in = asyncio.Event()
    seen: dict[str, Permit] = {}

    async def a() -> None:
        async with sem as permit:
            seen["a"] = permit
            a_in.set()
            await a_out.wait()

    async def b() -> None:
        async with sem as permit:
            seen["b"] = permit
            b_in.set()
            await asyncio.sleep(3600)

    ta = asyncio.create_task(a())
    await a_in.wait()
    await etcd.revoke(seen["a"].lease_id)
    async with asyncio.timeout(WAIT):
        await seen["a"].lost.wait()
    tb = asyncio.create_task(b())
    await b_in.wait()
    a_out.set()
    await ta  # A leaves its block late: it releases its own permit, not B's
    assert seen["a"].state is HoldState.LOST
    assert seen["b"].state is HoldState.HELD
    assert await etcd.get(seen["b"].key) is not None
    tb.cancel()
    await asyncio.gather(tb, return_exceptions=True)
    after: HoldState = seen["b"].state
    assert after is HoldState.RELEASED


# -- timeouts, cancellation, nothing left behind --------------------------------------------------


async def test_timeout_zero_takes_a_free_permit_and_refuses_at_once_when_none(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    sem = etcd.semaphore(etcd_prefix + "sem", 1, ttl=5, timeout=0)
    leases = set(await etcd.leases())
    permit = await sem.acquire()  # free: taken
    assert permit.state is HoldState.HELD
    t0 = time.monotonic()
    with pytest.raises(EtcdTimeoutError, match="no permit free"):
        await sem.acquire()
    assert time.monotonic() - t0 < 5.0
    assert await keys(etcd, sem.waiters_prefix) == []
    assert set(await etcd.leases()) - leases == {permit.lease_id}
    await permit.release()
    assert set(await etcd.leases()) == leases


async def test_timeout_and_cancel_leave_no_key_and_no_lease(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    sem = etcd.semaphore(etcd_prefix + "sem", 1, ttl=5, timeout=0.5)
    leases = set(await etcd.leases())
    holder = await sem.acquire()
    with pytest.raises(EtcdTimeoutError, match="permits held"):
        await sem.acquire()
    waiting = asyncio.create_task(etcd.semaphore(etcd_prefix + "sem", 1, timeout=None).acquire())
    await queued(etcd, sem, 1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert await keys(etcd, sem.waiters_prefix) == []
    assert await keys(etcd, sem.holders_prefix) == [holder.key]
    assert set(await etcd.leases()) - leases == {holder.lease_id}
    await holder.release()
    assert set(await etcd.leases()) == leases
    assert await keys(etcd, (etcd_prefix + "sem/").encode()) == []


async def test_cancel_at_any_moment_leaves_no_lease(etcd: AsyncClient, etcd_prefix: str) -> None:
    """Issue 23's third finding, for the semaphore: a cancel that races the lease grant."""
    sem = etcd.semaphore(etcd_prefix + "sem", 1, ttl=5, timeout=None)
    leases = set(await etcd.leases())
    rng = random.Random(23)
    for _ in range(40):
        task = asyncio.create_task(sem.acquire())
        await asyncio.sleep(rng.uniform(0.0, 0.004))
        task.cancel()
        result = await asyncio.gather(task, return_exceptions=True)
        if isinstance(result[0], Permit):
            await result[0].release()
    assert set(await etcd.leases()) == leases
    assert await keys(etcd, (etcd_prefix + "sem/").encode()) == []


async def test_a_waiter_that_loses_its_lease_queues_again_visibly(
    etcd: AsyncClient, etcd_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    sem = etcd.semaphore(etcd_prefix + "sem", 1, ttl=5, timeout=WAIT)
    holder = await sem.acquire()
    states: list[HoldState] = []
    sem.add_listener(states.append)
    waiting = asyncio.create_task(sem.acquire())
    await queued(etcd, sem, 1)
    (kv,) = (await etcd.range(sem.waiters_prefix, prefix=True)).kvs
    with caplog.at_level(logging.WARNING, logger="etcdkit.recipes"):
        await etcd.revoke(kv.lease)
        async with asyncio.timeout(WAIT):
            while True:  # back in line, with a new lease
                now = (await etcd.range(sem.waiters_prefix, prefix=True)).kvs
                if now and now[0].lease != kv.lease:
                    break
                await asyncio.sleep(0.01)
    lines = [r for r in caplog.records if "our place in line is lost" in r.getMessage()]
    assert len(lines) == 1, lines
    await holder.release()
    permit = await waiting
    assert permit.requeues == 1
    want = [HoldState.WAITING, HoldState.REQUEUED, HoldState.WAITING, HoldState.HELD]
    assert [s for s in states if s is not HoldState.RELEASED] == want  # (RELEASED: the holder's)
    await permit.release()


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"permits": 0}, ValueError),
        ({"permits": -1}, ValueError),
        ({"permits": "2"}, TypeError),
        ({"permits": True}, TypeError),
        ({"permits": 2.0}, TypeError),
        ({"name": ""}, ValueError),
        ({"name": 7}, TypeError),
        ({"ttl": 0}, ValueError),
        ({"ttl": 1.5}, TypeError),
        ({"timeout": -1}, ValueError),
        ({"timeout": "1"}, TypeError),
    ],
)
async def test_bad_arguments_raise_before_any_io(
    etcd: AsyncClient, kwargs: dict[str, object], error: type[Exception]
) -> None:
    args: dict[str, object] = {"name": "/s", "permits": 2, **kwargs}
    calls = etcd.stats.calls
    with pytest.raises(error):
        etcd.semaphore(**args)  # type: ignore[arg-type]
    assert etcd.stats.calls == calls


# -- the threaded face ----------------------------------------------------------------------------


def test_threaded_semaphore(etcd_sync: Client, etcd_prefix: str, no_leaked_threads: None) -> None:
    sem = etcd_sync.semaphore(etcd_prefix + "sem", 2, ttl=5, timeout=WAIT)
    inside = 0
    most = 0
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker() -> None:
        nonlocal inside, most
        try:
            for _ in range(3):
                with sem as permit:
                    assert permit.state is HoldState.HELD
                    with lock:
                        inside += 1
                        most = max(most, inside)
                    time.sleep(0.01)
                    with lock:
                        inside -= 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert 1 <= most <= 2
    # Two permits held at once, shown without timing (the loop above overlaps only when an
    # acquisition is quicker than a 10 ms hold: on a loaded machine it was not, once): two
    # threads each hold one and wait inside for the other.
    both_inside = threading.Barrier(2, timeout=WAIT)

    def meet() -> None:
        try:
            with sem:
                both_inside.wait()
        except BaseException as exc:
            errors.append(exc)

    pair = [threading.Thread(target=meet) for _ in range(2)]
    for t in pair:
        t.start()
    for t in pair:
        t.join()
    assert errors == []

    data = etcd_prefix + "data"
    with sem as permit:
        assert etcd_sync.txn([permit.guard()], [Op.put(data, "1")]).succeeded
        etcd_sync.revoke(permit.lease_id)
        assert permit.lost.wait(WAIT)
        assert permit.state is HoldState.LOST
        assert not etcd_sync.txn([permit.guard()], [Op.put(data, "2")]).succeeded
    other = etcd_sync.semaphore(etcd_prefix + "sem", 2, timeout=0)
    one, two = other.acquire(), other.acquire()
    with pytest.raises(EtcdTimeoutError):
        other.acquire()
    with one, two:
        assert one.fencing_token < two.fencing_token
    assert one.lost.is_set()
    assert two.state is HoldState.RELEASED
    assert etcd_sync.get_prefix(etcd_prefix + "sem/").kvs == []
