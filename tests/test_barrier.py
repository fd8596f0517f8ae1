"""Barrier and double barrier against real etcd, on both faces, and with Go's
``recipe.Barrier`` / ``recipe.DoubleBarrier`` on the same keys (skipped without Go)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time

import pytest

from _go import GoProc, GoPrograms, go_program
from etcdkit import (
    AsyncClient,
    BarrierFullError,
    Client,
    DoubleBarrier,
    EtcdTimeoutError,
    HoldState,
    Op,
)
from etcdkit.server import EtcdServer, Proxy

__all__ = ["go_program"]  # (a fixture, imported for pytest)

WAIT = 20.0


async def keys(etcd: AsyncClient, prefix: str) -> list[bytes]:
    kvs = (await etcd.range(prefix, prefix=True)).kvs
    return [kv.key for kv in sorted(kvs, key=lambda kv: kv.create_revision)]


# -- barrier --------------------------------------------------------------------------------------


async def test_barrier_holds_until_released(etcd: AsyncClient, etcd_prefix: str) -> None:
    name = etcd_prefix + "gate"
    b = etcd.barrier(name)
    assert b.key == name.encode()  # Go's layout: the barrier is the key itself
    assert await b.wait() > 0  # not up: returns at once
    assert await b.hold() is True
    assert await b.hold() is False  # up already (Go: ErrKeyExists)
    kv = await etcd.get(name)
    assert kv is not None
    assert (kv.value, kv.lease) == (b"", 0)
    waiters = [asyncio.create_task(etcd.barrier(name).wait()) for _ in range(3)]
    await asyncio.sleep(0.3)
    assert not any(w.done() for w in waiters)
    with pytest.raises(EtcdTimeoutError, match="still up"):
        await b.wait(timeout=0)
    with pytest.raises(EtcdTimeoutError, match=r"still up after 0\.2 s"):
        await b.wait(timeout=0.2)
    assert await b.release() is True
    revs = await asyncio.gather(*waiters)
    assert len(set(revs)) == 1
    assert await b.release() is False
    assert await etcd.get(name) is None


async def test_barrier_wait_sees_the_release_whatever_else_is_written(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    """Go 3.4's Wait misses the release when another key is written after the barrier's
    creation (it waits for a PUT it never gets); ours waits for the deletion alone."""
    name = etcd_prefix + "gate"
    b = etcd.barrier(name)
    await b.hold()
    for i in range(5):
        await etcd.put(f"{etcd_prefix}other/{i}", "x")
    await etcd.put(name + "2", "a neighbour of the key")  # a prefix read would see this one
    waiter = asyncio.create_task(b.wait())
    await asyncio.sleep(0.2)
    await etcd.put(etcd_prefix + "other/after", "x")
    await b.release()
    async with asyncio.timeout(WAIT):
        await waiter
    await b.hold(lease=(await etcd.grant(5)).id)  # a barrier on a lease goes with it
    kv = await etcd.get(name)
    assert kv is not None
    waiter = asyncio.create_task(b.wait())
    await etcd.revoke(kv.lease)
    async with asyncio.timeout(WAIT):
        await waiter


async def test_barrier_wait_sees_a_release_it_missed_while_cut_off(
    etcd: AsyncClient, etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    """While the waiter is cut off, the barrier is released and put up again (a new round),
    and the history is compacted past both: its watch cannot resume, so it reads the key
    again and finds a barrier, but not the one it waited on (another create revision). It
    returns: that barrier was released, at a revision before the new one's creation."""
    name = etcd_prefix + "gate"
    b = etcd.barrier(name)
    await b.hold()
    with Proxy(etcd_server.endpoint) as proxy:
        async with AsyncClient(proxy.endpoint) as cut_off:
            waiter = asyncio.create_task(cut_off.barrier(name).wait(timeout=WAIT))
            await asyncio.sleep(0.3)  # its watch is on
            assert not waiter.done()
            proxy.cut()
            await b.release()
            await b.hold()
            again = await etcd.get(name)
            assert again is not None
            await etcd.put(etcd_prefix + "noise", "x")
            await etcd.compact(await etcd.get_revision())
            proxy.drop_connections()
            proxy.restore()
            async with asyncio.timeout(WAIT):
                seen = await waiter
    assert seen == again.create_revision - 1  # the key was absent there
    await b.release()


async def test_barrier_bad_input(etcd: AsyncClient) -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        etcd.barrier("")
    with pytest.raises(TypeError):
        etcd.barrier(3)  # type: ignore[arg-type]
    b = etcd.barrier("/b")
    with pytest.raises(ValueError, match="timeout must be"):
        await b.wait(timeout=-1)
    with pytest.raises(TypeError):
        await b.wait(timeout="1")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await b.hold(lease="1")  # type: ignore[arg-type]


def test_threaded_barrier(etcd_sync: Client, etcd_prefix: str, no_leaked_threads: None) -> None:
    name = etcd_prefix + "gate"
    b = etcd_sync.barrier(name)
    assert b.hold() is True
    passed: list[float] = []
    threads = [
        threading.Thread(target=lambda: passed.append(b.wait(timeout=WAIT))) for _ in range(3)
    ]
    for t in threads:
        t.start()
    time.sleep(0.3)
    assert passed == []
    assert b.release() is True
    for t in threads:
        t.join()
    assert len(passed) == 3
    b.hold()
    with pytest.raises(EtcdTimeoutError):
        b.wait(timeout=0.1)
    b.release()


# -- double barrier -------------------------------------------------------------------------------


async def test_double_barrier_enters_and_leaves_together(
    etcd: AsyncClient, etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    name = etcd_prefix + "db"
    events: list[str] = []
    clients = [AsyncClient(etcd_server.endpoint) for _ in range(3)]
    for c in clients:
        await c.connect()
    try:
        parts = [c.double_barrier(name, 3, ttl=5) for c in clients]

        async def run(i: int, delay: float) -> None:
            await asyncio.sleep(delay)
            events.append(f"enter {i}")
            await parts[i].enter(timeout=WAIT)
            events.append(f"in {i}")
            assert parts[i].state is HoldState.HELD
            await asyncio.sleep(delay)
            events.append(f"leave {i}")
            await parts[i].leave(timeout=WAIT)
            events.append(f"out {i}")

        await asyncio.gather(*(run(i, 0.2 * i) for i in range(3)))
    finally:
        for c in clients:
            await c.close()
    first_in = min(events.index(f"in {i}") for i in range(3))
    assert all(events.index(f"enter {i}") < first_in for i in range(3)), events
    first_out = min(events.index(f"out {i}") for i in range(3))
    assert all(events.index(f"leave {i}") < first_out for i in range(3)), events
    assert all(p.state is HoldState.RELEASED for p in parts)
    assert await keys(etcd, name + "/") == []


async def test_double_barrier_layout_timeouts_and_too_many(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    name = etcd_prefix + "db"
    leases = set(await etcd.leases())
    a = etcd.double_barrier(name, 2, ttl=5)
    with pytest.raises(EtcdTimeoutError, match="1 of 2 are in"):
        await a.enter(timeout=0)
    with pytest.raises(EtcdTimeoutError, match=r"not entered within 0\.3 s"):
        await etcd.double_barrier(name, 2, ttl=5).enter(timeout=0.3)
    assert await keys(etcd, name + "/") == []
    entering = asyncio.create_task(a.enter())
    async with asyncio.timeout(WAIT):
        while not await keys(etcd, name + "/waiters/"):
            await asyncio.sleep(0.01)
    entering.cancel()
    with pytest.raises(asyncio.CancelledError):
        await entering
    assert await keys(etcd, name + "/") == []
    assert set(await etcd.leases()) == leases

    a, b = etcd.double_barrier(name, 2, ttl=5), etcd.double_barrier(name, 2, ttl=5)
    await asyncio.gather(a.enter(timeout=WAIT), b.enter(timeout=WAIT))
    assert a.key == f"{name}/waiters/{a.lease_id:x}".encode()  # Go's layout
    assert await etcd.get(name + "/ready") is not None
    with pytest.raises(BarrierFullError, match="3 participants are in, more than 2"):
        await etcd.double_barrier(name, 2, ttl=5).enter(timeout=WAIT)
    assert len(await keys(etcd, name + "/waiters/")) == 2
    with pytest.raises(RuntimeError, match="its own handle"):
        await a.enter()
    with pytest.raises(EtcdTimeoutError, match="not everyone left"):
        await b.leave(timeout=0)  # a is still in: b would have to wait
    assert b.state is HoldState.RELEASED
    assert await keys(etcd, name + "/waiters/") == [a.key]  # b's key went all the same
    with pytest.raises(RuntimeError, match="left already"):
        await b.leave()
    assert (await etcd.txn([a.guard()], [Op.put(etcd_prefix + "d", "1")])).succeeded
    await etcd.revoke(a.lease_id)  # a's session goes: it is counted out
    async with asyncio.timeout(WAIT):
        await a.lost.wait()
    assert a.state is HoldState.LOST
    assert not (await etcd.txn([a.guard()], [Op.put(etcd_prefix + "d", "2")])).succeeded
    await a.leave(timeout=WAIT)  # nobody is in any more: returns at once
    assert await keys(etcd, name + "/waiters/") == []
    await etcd.delete(name + "/ready")
    assert set(await etcd.leases()) == leases


async def test_double_barrier_bad_input(etcd: AsyncClient) -> None:
    cases: list[tuple[dict[str, object], type[Exception]]] = [
        ({"count": 0}, ValueError),
        ({"count": "2"}, TypeError),
        ({"count": True}, TypeError),
        ({"name": ""}, ValueError),
        ({"ttl": 0}, ValueError),
    ]
    for kwargs, error in cases:
        args: dict[str, object] = {"name": "/db", "count": 2, **kwargs}
        with pytest.raises(error):
            etcd.double_barrier(**args)  # type: ignore[arg-type]
    db: DoubleBarrier = etcd.double_barrier("/db", 2)
    with pytest.raises(ValueError, match="timeout must be"):
        await db.enter(timeout=-1)
    with pytest.raises(RuntimeError, match="before enter"):
        await db.leave()


def test_threaded_double_barrier(
    etcd_sync: Client, etcd_prefix: str, no_leaked_threads: None
) -> None:
    name = etcd_prefix + "db"
    done: list[str] = []
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            db = etcd_sync.double_barrier(name, 2, ttl=5)
            db.enter(timeout=WAIT)
            done.append(f"in {i}")
            assert db.state is HoldState.HELD
            assert not db.lost.is_set()
            db.leave(timeout=WAIT)
            assert db.lost.is_set()
            done.append(f"out {i}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(done) == ["in 0", "in 1", "out 0", "out 1"]
    assert etcd_sync.get_prefix(name + "/").kvs == []


async def test_a_double_barrier_waiter_whose_key_is_deleted_queues_again(
    etcd: AsyncClient, etcd_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A's key is deleted (its lease alive) while A waits in enter(), then B enters: A queues
    again with a new key (REQUEUED, one WARNING), so the count is reached and both get in.
    (A once went on waiting on the ready key alone: the two counted one, both timed out.)"""
    name = etcd_prefix + "db"
    a = etcd.double_barrier(name, 2, ttl=5)
    b = etcd.double_barrier(name, 2, ttl=5)
    states: list[HoldState] = []
    a.add_listener(states.append)
    entering = asyncio.create_task(a.enter(timeout=WAIT))
    async with asyncio.timeout(WAIT):
        while not await keys(etcd, a.waiters_prefix.decode() + "/"):
            await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)  # (A waits on the ready key now)
    assert await etcd.delete_prefix(a.waiters_prefix.decode() + "/") == 1
    await b.enter(timeout=WAIT)
    await entering
    assert HoldState.REQUEUED in states
    assert a.state is b.state is HoldState.HELD
    assert "deleted" in caplog.text
    await asyncio.gather(a.leave(timeout=WAIT), b.leave(timeout=WAIT))
    assert await keys(etcd, name + "/") == []


def test_threaded_double_barrier_waiter_whose_key_is_deleted_queues_again(
    etcd_sync: Client, etcd_prefix: str, no_leaked_threads: None
) -> None:
    name = etcd_prefix + "db"
    a = etcd_sync.double_barrier(name, 2, ttl=5)
    b = etcd_sync.double_barrier(name, 2, ttl=5)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        entering = pool.submit(a.enter, WAIT)
        deadline = time.monotonic() + WAIT
        while not etcd_sync.get_prefix(a.waiters_prefix + b"/").kvs:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.2)
        assert etcd_sync.delete_prefix(a.waiters_prefix + b"/") == 1
        b.enter(timeout=WAIT)
        entering.result(timeout=WAIT)
    assert a.state is b.state is HoldState.HELD
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        leaving = pool.submit(a.leave, WAIT)
        b.leave(timeout=WAIT)
        leaving.result(timeout=WAIT)
    assert etcd_sync.get_prefix(name + "/").kvs == []


# -- with Go's recipes on the same keys -----------------------------------------------------------


@pytest.mark.timeout(360)
async def test_go_barrier_and_ours(
    etcd: AsyncClient, etcd_server: EtcdServer, etcd_prefix: str, go_program: GoPrograms
) -> None:
    binary = go_program("barrier")
    name = etcd_prefix + "gate"
    ep = etcd_server.endpoint
    go = await GoProc.start(binary, ep, name, "hold")
    await go.expect("done")
    assert await go.finish() == 0
    ours = asyncio.create_task(etcd.barrier(name).wait())
    await asyncio.sleep(0.3)
    assert not ours.done()  # Go's Hold holds us
    go = await GoProc.start(binary, ep, name, "release")
    await go.expect("done")
    async with asyncio.timeout(WAIT):
        await ours

    b = etcd.barrier(name)
    assert await b.hold()
    go = await GoProc.start(binary, ep, name, "hold")  # Go sees it up: ErrKeyExists
    assert await go.finish() != 0
    go_waiter = await GoProc.start(binary, ep, name, "wait")
    await go_waiter.expect("waiting")
    assert await go_waiter.silent_for(1.0)
    await b.release()
    await go_waiter.expect("released")
    assert await go_waiter.finish() == 0


@pytest.mark.timeout(360)
async def test_double_barrier_of_two_go_and_two_python_participants(
    etcd: AsyncClient, etcd_server: EtcdServer, etcd_prefix: str, go_program: GoPrograms
) -> None:
    binary = go_program("double_barrier")
    name = etcd_prefix + "db"
    ep = etcd_server.endpoint
    gos = [await GoProc.start(binary, ep, name, "4") for _ in range(2)]
    try:
        for g in gos:
            await g.expect("entering")
        async with asyncio.timeout(WAIT):
            while len(await keys(etcd, name + "/waiters/")) < 2:
                await asyncio.sleep(0.01)
        ours = [etcd.double_barrier(name, 4, ttl=5) for _ in range(2)]
        first = asyncio.create_task(ours[0].enter(timeout=WAIT))
        for g in gos:
            assert await g.silent_for(0.5)  # three in: nobody enters yet
        assert not first.done()
        await ours[1].enter(timeout=WAIT)  # the fourth: everyone enters
        await first
        for g in gos:
            await g.expect("entered")
        leaving = [asyncio.create_task(p.leave(timeout=WAIT)) for p in ours]
        await asyncio.sleep(0.5)
        assert not any(t.done() for t in leaving)  # the Go participants are still in
        for g in gos:
            g.send()
        await asyncio.gather(*leaving)
        for g in gos:
            await g.expect("left")
            assert await g.finish() == 0
    finally:
        for g in gos:
            await g.kill()
    assert await keys(etcd, name + "/") == []


# -- the double barrier under faults --------------------------------------------------------------


async def _compact_while_cut(proxy: Proxy, admin: AsyncClient) -> None:
    """Cut the proxied client off, write and compact meanwhile, and let it back in: its
    watches resume from a compacted revision."""
    proxy.cut()
    for i in range(10):
        rev = await admin.put("/other/x", str(i))
    await admin.compact(rev)
    proxy.drop_connections()
    proxy.restore()


@pytest.mark.slow
async def test_a_double_barrier_leave_waits_for_the_last_one_through_a_compaction(
    etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    """B and C leave, A (the oldest) is still in; B's watch comes back over a compaction and
    B reads the waiters again: one key, A's. B waits for it. (B took it for "the last one":
    it deleted the ready key and returned while A was inside.)"""
    name = etcd_prefix + "dbl"
    with Proxy(etcd_server.endpoint) as proxy:
        async with (
            AsyncClient(etcd_server.endpoint) as a,
            AsyncClient(proxy.endpoint) as b,
            AsyncClient(etcd_server.endpoint) as c,
        ):
            da, db, dc = (x.double_barrier(name, 3, ttl=10) for x in (a, b, c))
            entering = asyncio.create_task(da.enter(timeout=WAIT))
            await asyncio.sleep(0.3)  # (A's key is the oldest)
            await asyncio.gather(db.enter(timeout=WAIT), dc.enter(timeout=WAIT), entering)
            b_leaves = asyncio.create_task(db.leave(timeout=WAIT))
            c_leaves = asyncio.create_task(dc.leave(timeout=WAIT))
            await asyncio.sleep(1.0)  # (both deleted their keys: they wait for A)
            await _compact_while_cut(proxy, a)
            await asyncio.sleep(2.0)
            assert not b_leaves.done(), "B left while A was still in"
            assert await a.get(da.ready_key) is not None
            await da.leave(timeout=WAIT)
            await asyncio.wait_for(asyncio.gather(b_leaves, c_leaves), WAIT)


@pytest.mark.slow
async def test_a_requeued_double_barrier_waiter_is_counted_once(
    etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    """A's client gives up on its lease while cut off (REQUEUED) before etcd let it expire:
    its old key is still in etcd when it queues again. The old key goes with the new one's
    put, so A counts once: with B, 2 of 3, nobody is in. (Both of A's keys counted: A and B
    "entered" with 2 of 3, and C got BarrierFullError.)"""
    name = etcd_prefix + "dbc"
    with Proxy(etcd_server.endpoint) as proxy:
        async with (
            AsyncClient(proxy.endpoint, timeout=1) as a,
            AsyncClient(etcd_server.endpoint) as b,
            AsyncClient(etcd_server.endpoint) as c,
        ):
            da, db, dc = (x.double_barrier(name, 3, ttl=6) for x in (a, b, c))
            requeued = asyncio.Event()
            da.add_listener(lambda s: requeued.set() if s is HoldState.REQUEUED else None)
            entering = asyncio.create_task(da.enter(timeout=30))
            await asyncio.sleep(0.5)
            proxy.cut()
            await asyncio.wait_for(requeued.wait(), 15)
            proxy.restore()
            async with asyncio.timeout(WAIT):  # A's new key is in line
                while da.state is not HoldState.WAITING:
                    await asyncio.sleep(0.02)
            waiters = await b.get_prefix(da.waiters_prefix.decode() + "/")
            assert len(waiters.kvs) == 1  # its new key: the old one went with its put
            b_enters = asyncio.create_task(db.enter(timeout=WAIT))
            await asyncio.sleep(1.0)
            assert not entering.done()  # 2 of 3: nobody is in
            assert not b_enters.done()
            await dc.enter(timeout=WAIT)
            await asyncio.wait_for(asyncio.gather(entering, b_enters), WAIT)
            await asyncio.gather(*(d.leave(timeout=WAIT) for d in (da, db, dc)))


@pytest.mark.slow
async def test_a_double_barrier_waiter_does_not_poll_after_a_compaction(
    etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    """A waits; its watch comes back over a compaction of the history since its key: it
    watches on from its read (it watched again from the compacted revision: ~30 etcd calls
    a second for as long as it waited)."""
    name = etcd_prefix + "dbs"
    with Proxy(etcd_server.endpoint) as proxy:
        async with AsyncClient(proxy.endpoint) as a, AsyncClient(etcd_server.endpoint) as b:
            da, db = a.double_barrier(name, 2, ttl=10), b.double_barrier(name, 2, ttl=10)
            entering = asyncio.create_task(da.enter(timeout=WAIT))
            await asyncio.sleep(1.0)
            await _compact_while_cut(proxy, b)
            await asyncio.sleep(1.0)
            calls = a.stats.calls
            await asyncio.sleep(2.0)
            assert a.stats.calls - calls <= 2
            await db.enter(timeout=WAIT)
            await asyncio.wait_for(entering, WAIT)
            await asyncio.gather(da.leave(timeout=WAIT), db.leave(timeout=WAIT))
