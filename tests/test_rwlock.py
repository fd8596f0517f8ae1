"""Read-write lock against real etcd: readers share, a writer excludes everyone, first come
first served, fencing, nothing left behind, both faces, and Go's ``recipe.RWMutex`` sharing one
lock with ours in both directions (skipped without Go)."""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time

import pytest

from _go import GoProc, GoPrograms, go_program
from etcdkit import AsyncClient, Client, EtcdTimeoutError, HoldState, Op, RWHold
from etcdkit.server import EtcdServer

__all__ = ["go_program"]  # (a fixture, imported for pytest)

WAIT = 20.0


async def keys(etcd: AsyncClient, prefix: str) -> list[bytes]:
    kvs = (await etcd.range(prefix, prefix=True)).kvs
    return [kv.key for kv in sorted(kvs, key=lambda kv: kv.create_revision)]


async def in_line(etcd: AsyncClient, prefix: str, n: int) -> None:
    async with asyncio.timeout(WAIT):
        while len(await keys(etcd, prefix)) < n:
            await asyncio.sleep(0.01)


# -- exclusion ------------------------------------------------------------------------------------


async def test_readers_share_and_a_writer_excludes_everyone(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    name = etcd_prefix + "rw"
    rw = etcd.rwlock(name, ttl=5, timeout=0)
    async with rw.read() as r1, rw.read() as r2:
        assert r1.state is r2.state is HoldState.HELD
        assert r1.mode == "read"
        assert r1.key == f"{name}/read/{r1.lease_id:x}".encode()  # Go's layout
        kv = await etcd.get(r1.key)
        assert kv is not None
        assert (kv.value, kv.lease, kv.create_revision) == (b"", r1.lease_id, r1.fencing_token)
        with pytest.raises(EtcdTimeoutError, match="not free"):
            await rw.write().acquire()
        assert await keys(etcd, name + "/") == [r1.key, r2.key]  # the writer left the line
    async with rw.write() as w:
        assert w.key == f"{name}/write/{w.lease_id:x}".encode()
        assert w.fencing_token > r2.fencing_token
        with pytest.raises(EtcdTimeoutError):
            await rw.read().acquire()
        with pytest.raises(EtcdTimeoutError):
            await rw.write().acquire()
    assert await keys(etcd, name + "/") == []


async def test_first_come_first_served_writers_do_not_starve(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    name = etcd_prefix + "rw"
    rw = etcd.rwlock(name, ttl=5, timeout=WAIT)
    order: list[str] = []
    r1 = await rw.read().acquire()
    writer = rw.write()
    reader = rw.read()

    async def take(hold: RWHold, tag: str) -> None:
        await hold.acquire()
        order.append(tag)

    tw = asyncio.create_task(take(writer, "w"))
    await in_line(etcd, name + "/", 2)
    tr = asyncio.create_task(take(reader, "r2"))  # after a waiting writer: waits for it
    await in_line(etcd, name + "/", 3)
    await asyncio.sleep(0.3)
    assert order == []
    await r1.release()
    await tw
    assert order == ["w"]
    await asyncio.sleep(0.3)
    assert order == ["w"]  # the reader still waits for the writer
    await writer.release()
    await tr
    assert order == ["w", "r2"]
    assert r1.fencing_token < writer.fencing_token < reader.fencing_token
    assert writer.wakeups == 1  # woken once: by the one key just before its own
    await reader.release()


async def test_never_a_writer_together_with_anyone(
    etcd: AsyncClient, etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    name = etcd_prefix + "rw"
    clients = [AsyncClient(etcd_server.endpoint) for _ in range(3)]
    for c in clients:
        await c.connect()
    readers = writers = 0
    most_readers = 0
    bad: list[str] = []
    rng = random.Random(7)

    async def worker(i: int) -> None:
        nonlocal readers, writers, most_readers
        rw = clients[i % len(clients)].rwlock(name, ttl=5, timeout=WAIT)
        for _ in range(4):
            if rng.random() < 0.3:
                async with rw.write():
                    writers += 1
                    if writers != 1 or readers:
                        bad.append(f"writer with {writers - 1} writers and {readers} readers")
                    await asyncio.sleep(rng.uniform(0, 0.02))
                    writers -= 1
            else:
                async with rw.read():
                    readers += 1
                    most_readers = max(most_readers, readers)
                    if writers:
                        bad.append("a reader with a writer")
                    await asyncio.sleep(rng.uniform(0, 0.05))
                    readers -= 1

    try:
        await asyncio.gather(*(worker(i) for i in range(10)))
    finally:
        for c in clients:
            await c.close()
    assert bad == []
    assert most_readers > 1  # readers did share
    assert await keys(etcd, name + "/") == []


# -- fencing, loss, handles -----------------------------------------------------------------------


async def test_session_loss_sets_lost_and_guard_refuses(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    rw = etcd.rwlock(etcd_prefix + "rw", ttl=5, timeout=WAIT)
    data = etcd_prefix + "data"
    async with rw.write() as w:
        assert (await etcd.txn([w.guard()], [Op.put(data, "1")])).succeeded
        await etcd.revoke(w.lease_id)
        async with asyncio.timeout(WAIT):
            await w.lost.wait()
        assert w.state is HoldState.LOST
        assert not (await etcd.txn([w.guard()], [Op.put(data, "late")])).succeeded
        async with rw.read() as r:  # the lock is free for others at once
            assert r.fencing_token > w.fencing_token
    assert w.state is HoldState.LOST
    assert r.state is HoldState.RELEASED


async def test_each_acquisition_is_its_own_handle(etcd: AsyncClient, etcd_prefix: str) -> None:
    rw = etcd.rwlock(etcd_prefix + "rw", ttl=5, timeout=WAIT)
    hold = rw.write()
    assert hold.state is HoldState.IDLE
    assert rw.write() is not hold
    async with hold:
        with pytest.raises(RuntimeError, match="its own handle"):
            await hold.acquire()
        await etcd.revoke(hold.lease_id)
        async with asyncio.timeout(WAIT):
            await hold.lost.wait()
        async with rw.write() as other:  # a late release of the first must not touch this one
            await hold.release()
            assert other.state is HoldState.HELD
            assert await etcd.get(other.key) is not None
    after: HoldState = other.state
    assert after is HoldState.RELEASED


# -- timeouts, cancellation -----------------------------------------------------------------------


async def test_timeout_and_cancel_leave_nothing_behind(etcd: AsyncClient, etcd_prefix: str) -> None:
    name = etcd_prefix + "rw"
    rw = etcd.rwlock(name, ttl=5, timeout=0.5)
    leases = set(await etcd.leases())
    w = await rw.write().acquire()
    t0 = time.monotonic()
    with pytest.raises(EtcdTimeoutError, match=r"rwlock .* \(read\) not acquired within 0.5 s"):
        await rw.read().acquire()
    assert time.monotonic() - t0 < 5.0
    waiting = asyncio.create_task(etcd.rwlock(name, timeout=None).write().acquire())
    await in_line(etcd, name + "/", 2)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert await keys(etcd, name + "/") == [w.key]
    assert set(await etcd.leases()) - leases == {w.lease_id}
    rng = random.Random(3)
    for _ in range(20):  # a cancel that races the lease grant leaves no lease either
        task = asyncio.create_task(rw.read().acquire())
        await asyncio.sleep(rng.uniform(0.0, 0.004))
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert set(await etcd.leases()) - leases == {w.lease_id}
    await w.release()
    assert set(await etcd.leases()) == leases
    assert await keys(etcd, name + "/") == []


async def test_a_waiter_that_loses_its_lease_queues_again_visibly(
    etcd: AsyncClient, etcd_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    name = etcd_prefix + "rw"
    rw = etcd.rwlock(name, ttl=5, timeout=WAIT)
    w = await rw.write().acquire()
    reader = rw.read()
    states: list[HoldState] = []
    reader.add_listener(states.append)
    waiting = asyncio.create_task(reader.acquire())
    await in_line(etcd, name + "/", 2)
    (kv,) = (await etcd.range(name + "/read", prefix=True)).kvs
    with caplog.at_level(logging.WARNING, logger="etcdkit.recipes"):
        await etcd.revoke(kv.lease)
        async with asyncio.timeout(WAIT):
            while reader.requeues == 0 or len(await keys(etcd, name + "/")) < 2:
                await asyncio.sleep(0.01)
    assert len([r for r in caplog.records if "place in line is lost" in r.getMessage()]) == 1
    await w.release()
    await waiting
    assert reader.requeues == 1
    assert states == [HoldState.WAITING, HoldState.REQUEUED, HoldState.WAITING, HoldState.HELD]
    await reader.release()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"name": ""}, ValueError),
        ({"name": None}, TypeError),
        ({"ttl": 0}, ValueError),
        ({"ttl": "10"}, TypeError),
        ({"timeout": -0.5}, ValueError),
        ({"timeout": True}, TypeError),
    ],
)
async def test_bad_arguments_raise_before_any_io(
    etcd: AsyncClient, kwargs: dict[str, object], error: type[Exception]
) -> None:
    calls = etcd.stats.calls
    with pytest.raises(error):
        etcd.rwlock(**{"name": "/rw", **kwargs})  # type: ignore[arg-type]
    assert etcd.stats.calls == calls


# -- the threaded face ----------------------------------------------------------------------------


def test_threaded_rwlock(etcd_sync: Client, etcd_prefix: str, no_leaked_threads: None) -> None:
    rw = etcd_sync.rwlock(etcd_prefix + "rw", ttl=5, timeout=WAIT)
    readers = writers = 0
    lock = threading.Lock()
    bad: list[str] = []

    def worker(i: int) -> None:
        nonlocal readers, writers
        for _ in range(3):
            hold = rw.write() if i % 3 == 0 else rw.read()
            with hold:
                with lock:
                    if hold.mode == "write":
                        writers += 1
                        if writers > 1 or readers:
                            bad.append("writer with others")
                    else:
                        readers += 1
                        if writers:
                            bad.append("reader with a writer")
                time.sleep(0.01)
                with lock:
                    if hold.mode == "write":
                        writers -= 1
                    else:
                        readers -= 1
            assert hold.lost.is_set()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bad == []
    with rw.write() as w:
        assert w.state is HoldState.HELD
        etcd_sync.revoke(w.lease_id)
        assert w.lost.wait(WAIT)
        assert not etcd_sync.txn([w.guard()], [Op.put(etcd_prefix + "d", "x")]).succeeded
    with pytest.raises(EtcdTimeoutError):
        with rw.read() as r, etcd_sync.rwlock(etcd_prefix + "rw", timeout=0).write():
            pass
    assert r.state is HoldState.RELEASED
    assert etcd_sync.get_prefix(etcd_prefix + "rw/").kvs == []


# -- Go's RWMutex and ours, one lock --------------------------------------------------------------


@pytest.mark.timeout(360)
async def test_go_writer_blocks_our_reader_and_our_writer_blocks_go_readers(
    etcd: AsyncClient, etcd_server: EtcdServer, etcd_prefix: str, go_program: GoPrograms
) -> None:
    binary = go_program("rwlock")
    name = etcd_prefix + "rw"
    rw = etcd.rwlock(name, ttl=5, timeout=WAIT)
    go_writer = await GoProc.start(binary, etcd_server.endpoint, name, "write")
    try:
        await go_writer.expect("held")
        (go_key,) = await keys(etcd, name + "/")
        assert go_key.startswith(f"{name}/write/".encode())
        with pytest.raises(EtcdTimeoutError):
            await etcd.rwlock(name, timeout=0).read().acquire()
        reader = asyncio.create_task(rw.read().acquire())
        await in_line(etcd, name + "/", 2)
        await asyncio.sleep(0.3)
        assert not reader.done()  # waits for Go's writer
        go_writer.send()
        await go_writer.expect("released")
        ours = await reader
        assert ours.state is HoldState.HELD
        go_reader = await GoProc.start(binary, etcd_server.endpoint, name, "read")
        await go_reader.expect("held")  # readers share, Go's and ours
        go_reader.send()
        await go_reader.expect("released")
        await ours.release()
        assert await go_writer.finish() == 0
        assert await go_reader.finish() == 0

        async with rw.write() as w:
            go_reader = await GoProc.start(binary, etcd_server.endpoint, name, "read")
            await go_reader.expect("waiting")
            assert await go_reader.silent_for(1.0)  # Go's reader waits for our writer
            assert len(await keys(etcd, name + "/")) == 2
            assert w.state is HoldState.HELD
        await go_reader.expect("held")
        go_writer = await GoProc.start(binary, etcd_server.endpoint, name, "write")
        await go_writer.expect("waiting")
        assert await go_writer.silent_for(1.0)  # Go's writer waits for Go's reader
        our_writer = asyncio.create_task(rw.write().acquire())
        await in_line(etcd, name + "/", 3)
        go_reader.send()
        await go_writer.expect("held")  # first come, first served: Go's writer, then ours
        await asyncio.sleep(0.3)
        assert not our_writer.done()
        go_writer.send()
        w2 = await our_writer
        assert w2.state is HoldState.HELD
        await w2.release()
        assert await go_reader.finish() == 0
        assert await go_writer.finish() == 0
    finally:
        await go_writer.kill()
    assert await keys(etcd, name + "/") == []
