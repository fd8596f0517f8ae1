"""``etcdkit.compat.etcd3`` where an outside audit under faults and bad input found it
differing from python-etcd3 0.12, against real etcd: bad timeouts checked before anything is
sent, calls from inside a running event loop, a defragment while etcd is down, the order of
the callbacks of one client."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest

import etcdkit.compat.etcd3 as etcd3
from _helpers import compat
from etcdkit import Client, WrongContextError
from etcdkit.compat.etcd3 import exceptions
from etcdkit.testing import EtcdServer

Etcd3 = etcd3.Etcd3Client


def lock_keys(server: EtcdServer, name: str) -> list[bytes]:
    with Client(server.endpoint) as check:
        return [kv.key for kv in check.range(f"/locks/{name}/", prefix=True).kvs]


# -- bad timeouts: refused before anything is sent ------------------------------------------------


@pytest.mark.parametrize("timeout", ["5", b"5", [5], True])
def test_lock_acquire_with_a_timeout_not_a_number_takes_nothing(
    etcd_server: EtcdServer, e3: Etcd3, etcd_prefix: str, timeout: Any
) -> None:
    """A timeout read as text (a config file, the environment) on a free lock: it took the
    lock, then raised TypeError, and the lock stayed held by nobody until the client
    closed."""
    name = etcd_prefix + "cfg"
    lock = e3.lock(name, ttl=5)
    with pytest.raises(TypeError, match="timeout"):
        lock.acquire(timeout=timeout)
    assert lock_keys(etcd_server, name) == []
    assert lock.lease is None
    other = e3.lock(name, ttl=5)
    assert other.acquire(timeout=0) is True
    assert other.release() is True


def test_lock_acquire_takes_python_etcd3s_numbers(e3: Etcd3, etcd_prefix: str) -> None:
    name = etcd_prefix + "numbers"
    holder, waiter = e3.lock(name, ttl=5), e3.lock(name, ttl=5)
    assert holder.acquire(timeout=float("inf")) is True  # (for ever: a free lock at once)
    assert waiter.acquire(timeout=-1) is False  # one look, as tenacity's stop gave
    with pytest.raises(ValueError, match="nan"):
        waiter.acquire(timeout=float("nan"))
    assert holder.release() is True
    assert waiter.acquire(timeout=10**400) is True
    assert waiter.release() is True


def bounded(fn: Callable[[], object], bound: float = 10.0) -> BaseException | object:
    """What ``fn()`` returned or raised, run in a thread: a hang fails the test after
    ``bound`` seconds instead of hanging it."""
    box: list[BaseException | object] = []

    def run() -> None:
        try:
            box.append(fn())
        except BaseException as exc:  # (the test says which)
            box.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(bound)
    assert box, f"still blocked after {bound} s"
    return box[0]


ONCE = ["watch_once", "watch_prefix_once", "watch_once_response", "watch_prefix_once_response"]


@pytest.mark.parametrize(
    ("timeout", "error"),
    [
        ("1", TypeError),
        (b"1", TypeError),
        ([1], TypeError),
        (-1, ValueError),
        (float("nan"), ValueError),
        (float("inf"), OverflowError),
    ],
)
def test_watch_once_with_a_bad_timeout_raises_at_once_and_leaves_no_watch(
    e3: Etcd3, etcd_prefix: str, timeout: Any, error: type[BaseException]
) -> None:
    """python-etcd3 handed the timeout to ``queue.Queue.get``, which raised at once. Here a
    timer thread died of it: the call waited for an event for ever, and each left an etcd
    watch behind (-1 gave WatchTimedOut)."""
    for name in ONCE:
        outcome = bounded(partial(getattr(e3, name), etcd_prefix + "nothing", timeout=timeout))
        assert isinstance(outcome, error), (name, outcome)
    deadline = time.monotonic() + 10
    while e3.native.stats.watches:
        assert time.monotonic() < deadline, f"{e3.native.stats.watches} watches left"
        time.sleep(0.01)


def test_watch_once_with_timeout_0_times_out_at_once(e3: Etcd3, etcd_prefix: str) -> None:
    for name in ONCE:
        outcome = bounded(partial(getattr(e3, name), etcd_prefix + "nothing", timeout=0))
        assert isinstance(outcome, etcd3.watch.WatchTimedOut), (name, outcome)


# -- inside a running event loop ------------------------------------------------------------------


async def test_calls_inside_a_running_event_loop_block_it_as_python_etcd3s_did(
    no_leaked_threads: None, etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    """An ``async def`` handler (a web framework's, a Jupyter cell) calling the client: its
    calls were plain blocking grpc calls in python-etcd3, which blocked the loop and worked.
    Here each raised WrongContextError (``client()`` a raw etcdkit one)."""
    asyncio.get_running_loop()  # (inside one)
    k = etcd_prefix + "k"
    client = compat(etcd_server)
    try:
        client.put(k, "v")
        assert client.get(k)[0] == b"v"
        assert [v for v, _ in client.get_prefix(etcd_prefix)] == [b"v"]
        ok, _ = client.transaction([client.transactions.value(k) == "v"], [], [])
        assert ok
        lease = client.lease(5)
        lease.revoke()
        lock = client.lock(etcd_prefix + "lock", ttl=5)
        assert lock.acquire(timeout=5) is True
        assert lock.release() is True
        with pytest.raises(etcd3.watch.WatchTimedOut):
            client.watch_once(k, timeout=0.1)
        seen: queue.Queue[Any] = queue.Queue()
        client.add_watch_callback(k, seen.put)
        client.put(k, "w")
        assert seen.get(timeout=10).events[0].value == b"w"
        assert client.status().version
    finally:
        client.close()
    assert client.native.closed


async def test_etcdkits_own_client_still_refuses_a_running_loop(
    etcd_server: EtcdServer,
) -> None:
    """The compat client's way is its own: etcdkit's Client, which async code should not
    block a loop with, refuses as before."""
    plain = await asyncio.to_thread(Client, etcd_server.endpoint)
    try:
        with pytest.raises(WrongContextError):
            plain.get("/k")
    finally:
        await asyncio.to_thread(plain.close)


# -- defragment with no timeout -------------------------------------------------------------------


def test_defragment_without_a_timeout_fails_at_once_while_etcd_is_down(
    no_leaked_threads: None, etcd_server_factory: Callable[..., EtcdServer]
) -> None:
    """python-etcd3's ``timeout=None`` was no deadline, but its call did not wait for etcd to
    come back: a refused connection failed at once. Here it waited for ever."""
    server = etcd_server_factory()
    with compat(server) as client:
        client.put("/k", "v")
        server.stop()
        outcome = bounded(client.defragment)
        assert isinstance(outcome, exceptions.ConnectionFailedError), outcome
        server.start()
        assert bounded(client.defragment, 30) is None


def test_close_ends_a_defragment_under_way(
    no_leaked_threads: None, etcd_server_factory: Callable[..., EtcdServer]
) -> None:
    """The defragment (``timeout=None``) runs on a client of its own, which close() did not
    know: a defragment waiting for a hung etcd went on after close(), its loop thread too."""
    server = etcd_server_factory()
    client = compat(server)
    outcome: list[object] = []
    started = threading.Event()

    def defragment() -> None:
        started.set()
        try:
            outcome.append(client.defragment())
        except Exception as exc:  # (the test says which)
            outcome.append(exc)

    server.pause()
    try:
        worker = threading.Thread(target=defragment)
        worker.start()
        assert started.wait(10)
        time.sleep(0.5)  # (it waits on the hung etcd now)
        assert outcome == []
        client.close()
        worker.join(10)
        assert not worker.is_alive(), "close() did not end the defragment"
    finally:
        server.resume()
    assert len(outcome) == 1
    assert isinstance(outcome[0], exceptions.Etcd3Exception), outcome
    assert "closed" in str(outcome[0])


# -- callbacks: one thread, the stream's order ----------------------------------------------------


def test_callbacks_of_different_watches_run_in_revision_order(
    no_leaked_threads: None, etcd_server: EtcdServer, e3: Etcd3, etcd_prefix: str
) -> None:
    """python-etcd3 called every callback of a client from the one thread that read its
    Watch stream, as each response came: in revision order across watches ("write the
    config keys, then the commit marker"). Each watch had a thread of its own here, taking
    turns through a lock: the one that got it first went first (with the program's own
    threads busy, a few rounds in twenty came out of order). While one callback is held (as
    a slow one held python-etcd3's thread), keys are written one by one: once it returns,
    their callbacks come in the order of the writes, on one thread."""
    n = 10
    seen: list[int] = []
    threads: set[str] = set()
    entered, go, done = threading.Event(), threading.Event(), threading.Event()

    def on(response: Any) -> None:
        threads.add(threading.current_thread().name)
        if not isinstance(response, Exception):
            seen.extend(e.mod_revision for e in response.events)

    def holding(response: Any) -> None:
        if not isinstance(response, Exception):
            entered.set()
            go.wait(10)

    def busy() -> None:  # (the program's own work: its threads contend for the GIL)
        while not done.is_set():
            sum(range(10_000))

    ids = [e3.add_watch_callback(f"{etcd_prefix}o/{i}", on) for i in range(n)]
    ids.append(e3.add_watch_callback(etcd_prefix + "hold", holding))
    spinner = threading.Thread(target=busy)
    spinner.start()
    out_of_order = []
    try:
        with compat(etcd_server) as writer:
            for _ in range(12):
                seen.clear()
                entered.clear()
                go.clear()
                writer.put(etcd_prefix + "hold", "x")
                assert entered.wait(10)
                written = [writer.put(f"{etcd_prefix}o/{i}", "v").header.revision for i in range(n)]
                go.set()
                deadline = time.monotonic() + 10
                while len(seen) < n:
                    assert time.monotonic() < deadline, seen
                    time.sleep(0.01)
                if seen != written:
                    out_of_order.append((written, list(seen)))
    finally:
        done.set()
        spinner.join()
    assert out_of_order == []
    assert len(threads) == 1, threads
    for watch_id in ids:
        e3.cancel_watch(watch_id)


def test_a_callback_far_behind_gets_every_response_in_order(
    no_leaked_threads: None, e3: Etcd3, etcd_prefix: str
) -> None:
    """Past ``QUEUED_PER_WATCH`` responses queued for a callback, its watch keeps the rest
    until the callback caught up: none is lost or repeated, and they stay in order."""
    e3.watcher.QUEUED_PER_WATCH = 2
    k = etcd_prefix + "k"
    seen: list[bytes] = []
    entered, go = threading.Event(), threading.Event()

    def on(response: Any) -> None:
        if isinstance(response, Exception):
            return
        entered.set()
        go.wait(10)
        seen.extend(e.value for e in response.events)

    watch_id = e3.add_watch_callback(k, on)
    e3.put(k, "0")
    assert entered.wait(10)
    for i in range(1, 20):
        e3.put(k, str(i))
    go.set()
    deadline = time.monotonic() + 10
    while len(seen) < 20:
        assert time.monotonic() < deadline, seen
        time.sleep(0.01)
    e3.put(k, "20")
    while len(seen) < 21:
        assert time.monotonic() < deadline, seen
        time.sleep(0.01)
    assert seen == [str(i).encode() for i in range(21)]
    e3.cancel_watch(watch_id)
