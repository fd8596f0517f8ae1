"""Lock against real etcd: exclusion, fencing, hand-off order, no herd, faults, and Go's layout
(``etcdctl lock`` contends with us in both directions when it is on PATH)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable

import pytest

import etcdkit
from etcdkit import AsyncClient, Client, Compare, HoldState, Lock, NotHeldError, Op
from etcdkit.server import EtcdServer, Proxy

WAIT = 20.0


async def keys_under(client: AsyncClient, prefix: str) -> list[bytes]:
    """The keys under ``prefix`` in line order (by create revision)."""
    kvs = sorted((await client.get_prefix(prefix)).kvs, key=lambda kv: kv.create_revision)
    return [kv.key for kv in kvs]


async def until(cond: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)
    assert cond(), what


def metric(server: EtcdServer, name: str) -> float:
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    m = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert m is not None, f"no metric {name}"
    return float(m.group(1))


# -- exclusion and fencing ------------------------------------------------------------------------


async def test_exclusion_fencing_and_go_layout(
    etcd: AsyncClient, etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    name = etcd_prefix + "invoices"
    data = etcd_prefix + "data"
    async with AsyncClient(etcd_server.endpoint) as other:
        async with etcd.lock(name, ttl=5) as first:
            assert first.state is HoldState.HELD
            assert first.key == f"{name}/{first.lease_id:x}".encode()  # Go's key
            kv = await etcd.get(first.key)
            assert kv is not None
            assert (kv.value, kv.lease, kv.create_revision) == (
                b"",
                first.lease_id,
                first.fencing_token,
            )
            res = await etcd.txn([first.guard()], [Op.put(data, "first")])
            assert res.succeeded
            with pytest.raises(etcdkit.EtcdTimeoutError, match="waiting behind"):
                await other.lock(name, timeout=0.5).acquire()
            assert await keys_under(etcd, name + "/") == [first.key]  # the waiter left the line
        after: HoldState = first.state  # (read again: it changed on leaving the block)
        assert after is HoldState.RELEASED
        assert first.lost.is_set()
        assert await keys_under(etcd, name + "/") == []
        async with other.lock(name, ttl=5) as second:
            assert second.fencing_token > first.fencing_token
            stale = await etcd.txn([first.guard()], [Op.put(data, "stale")])
            assert not stale.succeeded  # the old holder's fenced write is refused
            assert (await etcd.txn([second.guard()], [Op.put(data, "second")])).succeeded
    kv = await etcd.get(data)
    assert kv is not None
    assert kv.value == b"second"


async def test_waiters_get_the_lock_in_line_order(
    etcd: AsyncClient, etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    name = etcd_prefix + "line"
    order: list[int] = []
    tokens: list[int] = []
    async with AsyncClient(etcd_server.endpoint) as other:
        holder = etcd.lock(name)
        await holder.acquire()

        async def contend(i: int) -> None:
            async with (etcd if i % 2 else other).lock(name) as lock:
                order.append(i)
                tokens.append(lock.fencing_token)
                await asyncio.sleep(0.02)

        tasks = []
        for i in range(5):  # one after the other: each key exists before the next queues
            tasks.append(asyncio.create_task(contend(i)))
            async with asyncio.timeout(WAIT):
                while len(await keys_under(etcd, name + "/")) < i + 2:
                    await asyncio.sleep(0.01)
        await holder.release()
        await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]
    assert tokens == sorted(tokens)
    assert len(set(tokens)) == 5


async def test_a_waiter_watches_only_its_predecessor(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    server = etcd_server_factory()
    n = 8
    async with AsyncClient(server.endpoint) as client:
        base = metric(server, "etcd_debugging_mvcc_watcher_total")
        locks = [client.lock("/herd", ttl=5) for _ in range(n)]
        await locks[0].acquire()
        waiting = []
        for i, lock in enumerate(locks[1:]):  # in this order: each queues after the one before
            waiting.append(asyncio.create_task(lock.acquire()))
            async with asyncio.timeout(WAIT):
                while len(await keys_under(client, "/herd/")) < i + 2:
                    await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        # one watch per waiter (on the key before its own) and one of the holder's own key
        assert metric(server, "etcd_debugging_mvcc_watcher_total") - base == n
        events = metric(server, "etcd_debugging_mvcc_events_total")
        for i in range(n - 1):
            await locks[i].release()
            await waiting[i]
            assert locks[i + 1].state is HoldState.HELD
            assert all(not w.done() for w in waiting[i + 1 :])
        await locks[-1].release()
        assert [lock.wakeups for lock in locks] == [0] + [1] * (n - 1)  # one wake per hand-off
        woken = metric(server, "etcd_debugging_mvcc_events_total") - events
        # each hand-off: the next waiter's watch, and at most the releasing holder's own watch
        assert woken <= 2 * (n - 1) + 1, woken


# -- leaving the line -----------------------------------------------------------------------------


async def test_cancel_and_timeout_while_waiting_leave_no_key(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    name = etcd_prefix + "c"
    async with etcd.lock(name) as holder:
        waiter = etcd.lock(name)
        task = asyncio.create_task(waiter.acquire())
        async with asyncio.timeout(WAIT):
            while len(await keys_under(etcd, name + "/")) < 2:
                await asyncio.sleep(0.01)
        lease = waiter.lease_id
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert waiter.state is HoldState.IDLE
        assert await keys_under(etcd, name + "/") == [holder.key]
        assert await etcd.time_to_live(lease) == -1  # its lease was revoked, not left to expire
        with pytest.raises(etcdkit.EtcdTimeoutError):
            await etcd.lock(name, timeout=0.2).acquire()
        assert await keys_under(etcd, name + "/") == [holder.key]
        with pytest.raises(etcdkit.EtcdTimeoutError):
            await etcd.lock(name, timeout=0).acquire()
        assert await keys_under(etcd, name + "/") == [holder.key]


async def test_try_acquire(etcd: AsyncClient, etcd_server: EtcdServer, etcd_prefix: str) -> None:
    name = etcd_prefix + "t"
    async with AsyncClient(etcd_server.endpoint) as other:
        first = etcd.lock(name)
        assert await first.try_acquire()
        assert first.state is HoldState.HELD
        second = other.lock(name)
        assert not await second.try_acquire()
        assert second.state is HoldState.IDLE
        assert await keys_under(etcd, name + "/") == [first.key]  # as Go's TryLock: key removed
        await first.release()
        assert await second.try_acquire()
        assert second.fencing_token > first.fencing_token
        with pytest.raises(RuntimeError, match="not re-entrant"):
            await second.acquire()
        await second.release()
        await second.release()  # idempotent
        async with second:  # a Lock may be acquired again after release
            again: HoldState = second.state
            assert again is HoldState.HELD
        assert await keys_under(etcd, name + "/") == []


async def test_release_while_acquiring_ends_it(etcd: AsyncClient, etcd_prefix: str) -> None:
    name = etcd_prefix + "r"
    async with etcd.lock(name):
        waiter = etcd.lock(name)
        task = asyncio.create_task(waiter.acquire())
        async with asyncio.timeout(WAIT):
            while len(await keys_under(etcd, name + "/")) < 2:
                await asyncio.sleep(0.01)
        await waiter.release()
        with pytest.raises(etcdkit.ClosedError, match="released"):
            await task
        assert len(await keys_under(etcd, name + "/")) == 1


async def test_client_close_releases(etcd_server: EtcdServer, etcd_prefix: str) -> None:
    name = etcd_prefix + "close"
    async with AsyncClient(etcd_server.endpoint) as observer:
        client = AsyncClient(etcd_server.endpoint)
        await client.connect()
        lock = client.lock(name)
        await lock.acquire()
        waiter_client = AsyncClient(etcd_server.endpoint)
        await waiter_client.connect()
        waiter = waiter_client.lock(name)
        task = asyncio.create_task(waiter.acquire())
        async with asyncio.timeout(WAIT):
            while len(await keys_under(observer, name + "/")) < 2:
                await asyncio.sleep(0.01)
        await client.close()
        assert lock.lost.is_set()
        await asyncio.wait_for(task, WAIT)
        assert waiter.state is HoldState.HELD
        await waiter_client.close()  # closing while holding: released
        assert await keys_under(observer, name + "/") == []


# -- faults ---------------------------------------------------------------------------------------


async def test_revoke_or_delete_sets_lost_and_hands_over(
    etcd: AsyncClient, etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    name = etcd_prefix + "f"
    async with AsyncClient(etcd_server.endpoint) as other:
        for how in ("revoke", "delete"):
            states: list[HoldState] = []
            lock = etcd.lock(name, ttl=10)
            lock.add_listener(states.append)
            await lock.acquire()
            waiter = other.lock(name)
            task = asyncio.create_task(waiter.acquire())
            async with asyncio.timeout(WAIT):
                while len(await keys_under(etcd, name + "/")) < 2:
                    await asyncio.sleep(0.01)
            t0 = time.monotonic()
            if how == "revoke":
                await etcd.revoke(lock.lease_id)
            else:
                await etcd.delete(lock.key)
            await asyncio.wait_for(lock.lost.wait(), 2.0)
            assert time.monotonic() - t0 < 1.0, "lost was not set promptly"
            assert lock.state is HoldState.LOST
            await asyncio.wait_for(task, WAIT)
            assert waiter.fencing_token > lock.fencing_token
            assert not (await etcd.txn([lock.guard()], [Op.put(name + "x", "stale")])).succeeded
            await lock.release()
            assert lock.state is HoldState.LOST  # still says what happened
            assert states == [HoldState.WAITING, HoldState.HELD, HoldState.LOST]
            await waiter.release()


async def test_a_delete_before_the_holds_watch_started_still_loses_it(
    etcd: AsyncClient, etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    """The watch of a hold's key starts after acquire() returned, from the revision the hold
    began at: a delete made in between (here by a threaded client, while this loop is blocked
    and so cannot start it) is still seen, and the hold is lost."""
    name = etcd_prefix + "early"

    def delete(key: bytes) -> None:
        with Client(etcd_server.endpoint) as blocking:
            blocking.delete(key)

    lock = etcd.lock(name, ttl=10)
    await lock.acquire()
    deleter = threading.Thread(target=delete, args=(lock.key,))
    deleter.start()
    deleter.join()  # (blocks this loop: nothing of ours runs meanwhile)
    await asyncio.wait_for(lock.lost.wait(), 2.0)
    assert lock.state is HoldState.LOST
    await lock.release()
    # and one released in the turn it began needs no watch: nothing is left behind
    lock = etcd.lock(name, ttl=10)
    await lock.acquire()
    await lock.release()
    assert lock.state is HoldState.RELEASED
    assert await keys_under(etcd, name + "/") == []
    assert [t for t in asyncio.all_tasks() if t.get_name().startswith("etcdkit-lock")] == []


async def test_server_paused_past_ttl_sets_lost(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    server = etcd_server_factory()
    async with AsyncClient(server.endpoint, timeout=1.0) as client:
        states: list[tuple[HoldState, float]] = []
        lock = client.lock("/paused", ttl=3)
        lock.add_listener(lambda s: states.append((s, time.monotonic())))
        await lock.acquire()
        t0 = time.monotonic()
        server.pause()
        try:
            await asyncio.wait_for(lock.lost.wait(), 3 + 5)
            took = time.monotonic() - t0
        finally:
            server.resume()
        assert lock.state is HoldState.LOST
        seen = [s for s, _ in states]
        assert HoldState.SUSPENDED in seen
        # lost before etcd could have expired the lease (TTL after the last refresh)
        assert took < 3.0, took
        await lock.release()
        async with asyncio.timeout(WAIT):
            async with client.lock("/paused", ttl=3) as again:  # usable again after the fault
                assert again.state is HoldState.HELD


async def test_a_cut_off_holder_lets_go_before_the_next_takes_over(
    etcd: AsyncClient, etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    name = etcd_prefix + "cut"
    with Proxy(etcd_server.endpoint) as proxy:
        async with AsyncClient(proxy.endpoint, timeout=1.0) as cut_off:
            holder = cut_off.lock(name, ttl=2)
            await holder.acquire()
            lost_at: list[float] = []
            holder.add_listener(
                lambda s: lost_at.append(time.monotonic()) if s is HoldState.LOST else None
            )
            waiter = etcd.lock(name, ttl=2)
            task = asyncio.create_task(waiter.acquire())
            async with asyncio.timeout(WAIT):
                while len(await keys_under(etcd, name + "/")) < 2:
                    await asyncio.sleep(0.01)
            proxy.cut()
            await asyncio.wait_for(task, WAIT)  # etcd expired the holder's lease
            acquired_at = time.monotonic()
            assert lost_at, "the cut-off holder still believes it holds"
            assert lost_at[0] < acquired_at  # it let go first (the margin before the TTL)
            assert waiter.fencing_token > holder.fencing_token
            await waiter.release()
            proxy.restore()
            await holder.release()


# -- input ----------------------------------------------------------------------------------------


async def test_bad_input(etcd: AsyncClient, etcd_prefix: str) -> None:
    with pytest.raises(ValueError, match="empty"):
        etcd.lock("")
    with pytest.raises(TypeError):
        etcd.lock(1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ttl"):
        etcd.lock("/x", ttl=0)
    with pytest.raises(TypeError, match="ttl"):
        etcd.lock("/x", ttl=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        etcd.lock("/x", timeout=-1)
    with pytest.raises(TypeError, match="timeout"):
        etcd.lock("/x", timeout="1")  # type: ignore[arg-type]
    with pytest.raises(NotHeldError, match="never acquired"):
        etcd.lock("/x").guard()
    # "/a" and "/ab" are different locks ("/" is added, as Go does)
    async with etcd.lock(etcd_prefix + "a") as a, etcd.lock(etcd_prefix + "ab") as ab:
        assert a.key.startswith(f"{etcd_prefix}a/".encode())
        assert ab.key.startswith(f"{etcd_prefix}ab/".encode())
    assert isinstance(Lock(etcd, b"/bytes-name").name, bytes)
    assert "Lock" in repr(etcd.lock("/x"))


# -- the threaded face ----------------------------------------------------------------------------


def test_threaded_face(etcd_server: EtcdServer, etcd_sync: Client, etcd_prefix: str) -> None:
    name = etcd_prefix + "sync"
    with Client(etcd_server.endpoint) as other:
        with etcd_sync.lock(name, ttl=5) as lock:
            assert isinstance(lock.lost, threading.Event)
            assert not lock.lost.is_set()
            assert lock.state is HoldState.HELD
            assert etcd_sync.txn([lock.guard()], [Op.put(name + "-data", "v")]).succeeded
            assert not other.lock(name).try_acquire()
            got: list[int] = []
            t = threading.Thread(target=lambda: got.append(_take(other, name)))
            t.start()
            time.sleep(0.3)
            assert got == []
            first_token = lock.fencing_token
        assert lock.lost.is_set()
        after: HoldState = lock.state
        assert after is HoldState.RELEASED
        t.join(WAIT)
        assert got
        assert got[0] > first_token
        with etcd_sync.lock(name) as again:  # a new acquisition: a new lost event
            assert not again.lost.is_set()
        assert isinstance(lock.guard(), Compare)
        assert "SyncLock" in repr(lock)


def _take(client: Client, name: str) -> int:
    with client.lock(name) as lock:
        return lock.fencing_token


# -- interop with etcdctl (Go's concurrency.Mutex) ------------------------------------------------

ETCDCTL = shutil.which("etcdctl")
needs_etcdctl = pytest.mark.skipif(ETCDCTL is None, reason="etcdctl is not on PATH")


def etcdctl(server: EtcdServer, *args: str) -> subprocess.Popen[str]:
    assert ETCDCTL is not None
    env = dict(os.environ, ETCDCTL_API="3")
    return subprocess.Popen(
        [ETCDCTL, "--endpoints", server.endpoint, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )


@needs_etcdctl
async def test_etcdctl_lock_waits_for_ours(
    etcd: AsyncClient, etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    name = etcd_prefix + "go"
    proc = None
    try:
        async with etcd.lock(name) as lock:
            proc = etcdctl(etcd_server, "lock", name, "--", "sh", "-c", 'echo "got $ETCD_LOCK_KEY"')
            async with asyncio.timeout(WAIT):
                while len(await keys_under(etcd, name + "/")) < 2:
                    await asyncio.sleep(0.02)
            await asyncio.sleep(0.5)
            assert proc.poll() is None, "etcdctl ran while we held the lock"
            ours, go_key = await keys_under(etcd, name + "/")  # in line behind us
            assert ours == lock.key
        out, err = await asyncio.to_thread(proc.communicate, timeout=WAIT)
        assert proc.returncode == 0, err
        assert f"got {go_key.decode()}" in out  # it ran once we released
        assert int(go_key.rsplit(b"/", 1)[1], 16) > 0  # Go's key: name/<lease id in hex>
    finally:
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            await asyncio.to_thread(proc.communicate, timeout=WAIT)


@needs_etcdctl
async def test_ours_waits_for_etcdctl_lock(
    etcd: AsyncClient, etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    name = etcd_prefix + "go2"
    proc = etcdctl(etcd_server, "lock", name)
    try:
        assert proc.stdout is not None
        line = await asyncio.to_thread(proc.stdout.readline)  # etcdctl prints its key once held
        assert line.startswith(name + "/"), line
        assert not await etcd.lock(name).try_acquire()
        waiter = etcd.lock(name, timeout=WAIT)
        task = asyncio.create_task(waiter.acquire())
        await asyncio.sleep(0.5)
        assert not task.done()
        proc.send_signal(signal.SIGINT)  # etcdctl unlocks on SIGINT
        await task
        assert waiter.state is HoldState.HELD
        assert await keys_under(etcd, name + "/") == [waiter.key]
        await waiter.release()
    finally:
        if proc.poll() is None:
            proc.kill()
        await asyncio.to_thread(proc.communicate, timeout=WAIT)


def test_a_one_second_ttl_is_allowed_with_one_warning(
    etcd_sync: Client, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ttl=1 is allowed (as in Go), but a cut-off holder may be told LOST only after etcd
    expired its lease: one WARNING per process says so; ttl >= 2 says nothing."""
    import math

    from etcdkit._logs import RateLimitedLog
    from etcdkit.recipes import _hold

    monkeypatch.setattr(_hold, "_SHORT_TTL", RateLimitedLog(_hold.log, math.inf))
    with caplog.at_level("WARNING", logger="etcdkit.recipes"):
        etcd_sync.lock("/short", ttl=2)
        assert not caplog.records
        etcd_sync.lock("/short", ttl=1)
        etcd_sync.semaphore("/short-sem", 1, ttl=1)
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1
    assert "ttl >= 2" in warned[0]


def test_a_threaded_listener_reads_the_lock_and_cancels_a_watch(
    etcd_sync: Client, etcd_prefix: str
) -> None:
    """Listeners run on the client's loop thread: the twins' non-blocking reads and cancels
    work there (they raised WrongContextError, as a blocking call would)."""
    lock = etcd_sync.lock(etcd_prefix + "listened")
    seen: list[tuple[HoldState, HoldState, int]] = []
    errors: list[BaseException] = []

    def on_state(state: HoldState) -> None:
        try:
            seen.append((state, lock.state, lock.fencing_token))
            assert lock.hold is not None
        except BaseException as exc:  # (reported below: a listener's error is only logged)
            errors.append(exc)

    lock.add_listener(on_state)
    with lock as held:
        token = held.fencing_token
    assert errors == []
    assert (HoldState.HELD, HoldState.HELD, token) in seen
    watch = etcd_sync.watch(etcd_prefix + "w")
    cancelled = threading.Event()

    def cancel_it() -> None:
        try:
            watch.cancel()
            cancelled.set()
        except BaseException as exc:
            errors.append(exc)

    with watch:
        watch.add_listener(cancel_it)
        etcd_sync.put(etcd_prefix + "w", "1")
        assert cancelled.wait(10), errors
        assert list(watch) == []  # cancelled: the iteration ends
    assert errors == []


INTERRUPTED_ACQUIRE = """
import os, signal, sys, time
import etcdkit
from etcdkit import HoldState

with etcdkit.Client(sys.argv[1]) as c:
    lock = c.lock(sys.argv[2], ttl=5, timeout=3)
    fired = []

    def on_state(state):  # on the loop thread, as the acquisition holds
        if state is HoldState.HELD and not fired:
            fired.append(1)
            os.kill(os.getpid(), signal.SIGINT)

    lock.add_listener(on_state)
    try:
        lock.acquire()
        print("returned")
    except KeyboardInterrupt:
        print("interrupted")
    deadline = time.monotonic() + 10
    while c.get_prefix(sys.argv[2] + "/").kvs and time.monotonic() < deadline:
        time.sleep(0.05)
    print("keys", len(c.get_prefix(sys.argv[2] + "/").kvs))
    again = c.lock(sys.argv[2], ttl=5, timeout=3).acquire()  # free again
    print("again", again.state.name)
    again.release()
"""


def test_an_acquire_interrupted_as_it_holds_releases_the_lock(
    etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    """A KeyboardInterrupt in the thread waiting in acquire(), arriving once the acquisition
    holds but before the thread has it: the lock is released, not held by nobody (it was
    held until the client closed). A real SIGINT, in a process of its own."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_ACQUIRE, etcd_server.endpoint, etcd_prefix + "kb"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    assert "interrupted" in lines, out.stdout
    assert out.stdout.splitlines()[-2:] == ["keys 0", "again HELD"], (out.stdout, out.stderr)
