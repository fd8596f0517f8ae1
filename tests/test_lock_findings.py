"""Regression tests for the five lock findings of issue 23, each on both faces (asyncio and
threads), and the one-way waiting of nested names (as in Go).

1. A shared Lock object released another acquisition (and answered with its state).
2. ``timeout=0`` never acquired, even a free lock.
3. A cancel during the lease grant could leave a granted lease behind.
4. A waiter whose own key or lease vanished re-queued silently at the back.
5. "could not revoke on close" was logged after an external revoke.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import shutil
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint

import etcdkit
from etcdkit import AsyncClient, Client, EtcdTimeoutError, HoldState, Op, _metrics
from etcdkit.testing import EtcdServer, Proxy

WAIT = 20.0


async def keys_under(client: AsyncClient, prefix: str) -> list[bytes]:
    """The keys under ``prefix`` in line order (by create revision)."""
    kvs = sorted((await client.get_prefix(prefix)).kvs, key=lambda kv: kv.create_revision)
    return [kv.key for kv in kvs]


def sync_keys_under(client: Client, prefix: str) -> list[bytes]:
    kvs = sorted(client.get_prefix(prefix).kvs, key=lambda kv: kv.create_revision)
    return [kv.key for kv in kvs]


async def line_is(client: AsyncClient, prefix: str, n: int) -> None:
    async with asyncio.timeout(WAIT):
        while len(await keys_under(client, prefix)) != n:
            await asyncio.sleep(0.01)


def sync_line_is(client: Client, prefix: str, n: int) -> None:
    deadline = time.monotonic() + WAIT
    while len(sync_keys_under(client, prefix)) != n:
        assert time.monotonic() < deadline, f"never {n} keys under {prefix}"
        time.sleep(0.01)


async def until(cond: Callable[[], bool], what: str) -> None:
    try:
        async with asyncio.timeout(WAIT):
            while not cond():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(what) from None


def sync_until(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def started(target: Callable[[], None]) -> threading.Thread:
    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    """etcdkit's instruments bound to a fresh SDK provider with an in-memory reader."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    assert _metrics.bind(provider)
    try:
        yield reader
    finally:
        _metrics.bind()
        provider.shutdown()


def requeues_counted(reader: InMemoryMetricReader, recipe: str) -> float:
    found = 0.0
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data is not None else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == "etcdkit.lock.requeues":
                    for p in metric.data.data_points:
                        assert isinstance(p, NumberDataPoint), p  # a counter's points
                        if dict(p.attributes or {}) == {"recipe": recipe}:
                            found += p.value
    return found


def requeued(lock: etcdkit.Lock) -> bool:
    return lock.requeues == 1


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.name.startswith("etcdkit") and r.levelno >= logging.WARNING
    ]


# -- 1. each acquisition is its own handle --------------------------------------------------------


async def test_1_a_late_exit_never_releases_a_newer_acquisition(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    name = etcd_prefix + "shared"
    lock = etcd.lock(name, ttl=10)
    seen: dict[str, Any] = {}
    a_in, a_go, b_in, b_go = (asyncio.Event() for _ in range(4))

    async def a() -> None:
        async with lock as held:
            seen["a"] = held
            a_in.set()
            await a_go.wait()
            seen["a_state"] = lock.state  # the Lock answers for this task's acquisition
            seen["a_lost"] = lock.lost.is_set()

    async def b() -> None:
        async with lock as held:
            seen["b"] = held
            b_in.set()
            await b_go.wait()

    ta = asyncio.create_task(a())
    await asyncio.wait_for(a_in.wait(), WAIT)
    a_held = seen["a"]
    await etcd.revoke(a_held.lease_id)  # someone revokes A's lease; A's body goes on
    await asyncio.wait_for(a_held.lost.wait(), WAIT)
    tb = asyncio.create_task(b())  # B acquires through the same Lock object
    await asyncio.wait_for(b_in.wait(), WAIT)
    b_held = seen["b"]
    a_go.set()
    await asyncio.wait_for(ta, WAIT)  # A's late exit
    assert await keys_under(etcd, name + "/") == [b_held.key]  # B's key stands
    assert b_held is not a_held
    assert b_held.state is HoldState.HELD
    assert not b_held.lost.is_set()
    assert (seen["a_state"], seen["a_lost"]) == (HoldState.LOST, True)  # A's own, not B's
    assert a_held.state is HoldState.LOST
    assert (await etcd.txn([b_held.guard()], [Op.put(name + "-data", "b")])).succeeded
    assert not (await etcd.txn([a_held.guard()], [Op.put(name + "-data", "a")])).succeeded
    await a_held.release()  # A's own late release: still nothing of B's
    assert await keys_under(etcd, name + "/") == [b_held.key]
    b_go.set()
    await asyncio.wait_for(tb, WAIT)
    after: HoldState = b_held.state  # (read again: it changed on leaving the block)
    assert after is HoldState.RELEASED
    assert await keys_under(etcd, name + "/") == []


async def test_1_tasks_sharing_a_lock_exclude_each_other(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    name = etcd_prefix + "tasks"
    lock = etcd.lock(name)
    inside: list[int] = []
    most = 0
    tokens: list[int] = []

    async def worker(i: int) -> None:
        nonlocal most
        async with lock as held:
            inside.append(i)
            most = max(most, len(inside))
            assert lock.fencing_token == held.fencing_token  # this task's acquisition
            tokens.append(held.fencing_token)
            await asyncio.sleep(0.02)
            inside.remove(i)

    await asyncio.wait_for(asyncio.gather(*(worker(i) for i in range(4))), WAIT)
    assert most == 1
    assert len(set(tokens)) == 4
    assert await keys_under(etcd, name + "/") == []
    held = await lock.acquire()
    with pytest.raises(RuntimeError, match="not re-entrant"):
        await lock.acquire()  # the same task again
    await lock.release()
    assert held.state is HoldState.RELEASED


def test_1_threaded_a_late_exit_never_releases_a_newer_acquisition(
    etcd_sync: Client, etcd_prefix: str
) -> None:
    name = etcd_prefix + "shared-sync"
    lock = etcd_sync.lock(name, ttl=10)
    seen: dict[str, Any] = {}
    a_in, a_go, b_in, b_go = (threading.Event() for _ in range(4))

    def a() -> None:
        with lock as held:
            seen["a"] = held
            a_in.set()
            a_go.wait(WAIT)
            seen["a_state"] = lock.state  # the Lock answers for this thread's acquisition
            seen["a_lost"] = lock.lost.is_set()

    def b() -> None:
        with lock as held:
            seen["b"] = held
            b_in.set()
            b_go.wait(WAIT)

    ta = started(a)
    assert a_in.wait(WAIT)
    a_held = seen["a"]
    etcd_sync.revoke(a_held.lease_id)
    assert a_held.lost.wait(WAIT)
    tb = started(b)
    assert b_in.wait(WAIT)
    b_held = seen["b"]
    a_go.set()
    ta.join(WAIT)
    assert sync_keys_under(etcd_sync, name + "/") == [b_held.key]  # B's key stands
    assert b_held.state is HoldState.HELD
    assert not b_held.lost.is_set()
    assert (seen["a_state"], seen["a_lost"]) == (HoldState.LOST, True)
    assert a_held.lost.is_set()
    assert etcd_sync.txn([b_held.guard()], [Op.put(name + "-data", "b")]).succeeded
    a_held.release()
    assert sync_keys_under(etcd_sync, name + "/") == [b_held.key]
    b_go.set()
    tb.join(WAIT)
    after: HoldState = b_held.state  # (read again: it changed on leaving the block)
    assert after is HoldState.RELEASED
    assert sync_keys_under(etcd_sync, name + "/") == []


async def test_1_a_release_from_a_task_that_made_none_ends_the_holder_not_a_waiter(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    """A acquires in a task of its own (what ``asyncio.wait_for(lock.acquire(), t)`` does on
    Python 3.11) and releases from its own task, which made no acquisition, while B waits
    through the same Lock: A's acquisition is released and B takes over (it was B's waiting
    acquisition that ended, and A's lock stayed held)."""
    name = etcd_prefix + "other-task"
    lock = etcd.lock(name, ttl=10)
    a_held = await asyncio.create_task(lock.acquire())  # acquired in another task
    assert lock.hold is a_held  # this task made none: the holder's
    assert lock.state is HoldState.HELD
    tb = asyncio.create_task(lock.acquire())  # B waits through the same Lock
    await line_is(etcd, name + "/", 2)
    assert lock.hold is a_held  # the holder, not the waiter
    await lock.release()  # this task made none: the one holding is released
    b_held = await asyncio.wait_for(tb, WAIT)
    assert a_held.state is HoldState.RELEASED
    assert b_held.state is HoldState.HELD
    assert await keys_under(etcd, name + "/") == [b_held.key]
    await b_held.release()
    await lock.release()  # nothing in progress: a no-op
    assert await keys_under(etcd, name + "/") == []


async def test_1_a_release_that_cannot_tell_which_raises(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    """Two acquisitions in progress that both held (A lost its lease, B holds now), released
    from a task that made neither: no guess, a RuntimeError, and nothing released."""
    name = etcd_prefix + "which"
    lock = etcd.lock(name, ttl=10)
    a_held = await asyncio.create_task(lock.acquire())
    await etcd.revoke(a_held.lease_id)
    await asyncio.wait_for(a_held.lost.wait(), WAIT)
    b_held = await asyncio.wait_for(asyncio.create_task(lock.acquire()), WAIT)
    with pytest.raises(RuntimeError, match=r"release\(\) on the LockHold"):
        await lock.release()
    assert b_held.state is HoldState.HELD
    assert await keys_under(etcd, name + "/") == [b_held.key]
    await a_held.release()  # A's own: nothing of B's
    await lock.release()  # now the one in progress is B's
    after: HoldState = b_held.state  # (read again: the release changed it)
    assert after is HoldState.RELEASED
    assert await keys_under(etcd, name + "/") == []


def test_1_threaded_a_release_from_a_thread_that_made_none_ends_the_holder(
    etcd_sync: Client, etcd_prefix: str
) -> None:
    name = etcd_prefix + "other-thread"
    lock = etcd_sync.lock(name, ttl=10)
    got: dict[str, Any] = {}
    ta = started(lambda: got.setdefault("a", lock.acquire()))
    ta.join(WAIT)
    a_held = got["a"]
    tb = started(lambda: got.setdefault("b", lock.acquire()))  # B waits, same Lock
    sync_line_is(etcd_sync, name + "/", 2)
    assert lock.state is HoldState.HELD  # this thread made none: the holder's
    lock.release()  # this thread made none: the one holding is released
    tb.join(WAIT)
    b_held = got["b"]
    assert a_held.state is HoldState.RELEASED
    assert b_held.state is HoldState.HELD
    assert sync_keys_under(etcd_sync, name + "/") == [b_held.key]
    b_held.release()
    assert sync_keys_under(etcd_sync, name + "/") == []


async def test_1_election_terms_are_their_own(etcd: AsyncClient, etcd_prefix: str) -> None:
    name = etcd_prefix + "elect"
    election = etcd.election(name)  # one Election object, shared
    first = election.campaign("a", ttl=10)
    a_in, a_go = asyncio.Event(), asyncio.Event()
    seen: dict[str, Any] = {}

    async def a() -> None:
        async with first as lead:
            seen["a"] = lead
            a_in.set()
            await a_go.wait()

    ta = asyncio.create_task(a())
    await asyncio.wait_for(a_in.wait(), WAIT)
    with pytest.raises(RuntimeError, match="entered already"):
        async with first:  # a second entry of the same campaign is refused ...
            pass
    assert seen["a"].state is HoldState.HELD  # ... and touches nothing of the first
    await etcd.revoke(seen["a"].lease_id)
    await asyncio.wait_for(seen["a"].lost.wait(), WAIT)
    async with election.campaign("b") as b:
        a_go.set()
        await asyncio.wait_for(ta, WAIT)  # A's late exit resigns A's term only
        assert await keys_under(etcd, name + "/") == [b.key]
        assert b.state is HoldState.HELD
        assert await election.leader() == etcdkit.Leader(b.key, b"b", b.revision)
    a_after: HoldState = seen["a"].state
    assert a_after is HoldState.LOST
    assert await keys_under(etcd, name + "/") == []


def test_1_threaded_election_terms_are_their_own(etcd_sync: Client, etcd_prefix: str) -> None:
    name = etcd_prefix + "elect-sync"
    election = etcd_sync.election(name)
    first = election.campaign("a", ttl=10)
    a_in, a_go = threading.Event(), threading.Event()
    seen: dict[str, Any] = {}

    def a() -> None:
        with first as lead:
            seen["a"] = lead
            a_in.set()
            a_go.wait(WAIT)

    ta = started(a)
    assert a_in.wait(WAIT)
    with pytest.raises(RuntimeError, match="entered already"), first:
        pass
    assert seen["a"].state is HoldState.HELD
    etcd_sync.revoke(seen["a"].lease_id)
    assert seen["a"].lost.wait(WAIT)
    with election.campaign("b") as b:
        a_go.set()
        ta.join(WAIT)
        assert sync_keys_under(etcd_sync, name + "/") == [b.key]
        assert b.state is HoldState.HELD
    assert sync_keys_under(etcd_sync, name + "/") == []


# -- 2. timeout=0: acquire if free, else raise at once --------------------------------------------


async def test_2_timeout_zero_takes_a_free_lock_and_refuses_a_held_one(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    name = etcd_prefix + "zero"
    async with etcd.lock(name, timeout=0) as held:
        assert held.state is HoldState.HELD
        with pytest.raises(EtcdTimeoutError, match="timeout=0"):
            await etcd.lock(name, timeout=0).acquire()
        assert await keys_under(etcd, name + "/") == [held.key]  # the refused one left
    election = etcd.election(name + "-e")
    async with election.campaign("a", timeout=0) as lead:
        assert lead.state is HoldState.HELD
        with pytest.raises(EtcdTimeoutError, match="timeout=0"):
            async with election.campaign("b", timeout=0):
                pass
        assert await keys_under(etcd, name + "-e/") == [lead.key]
    assert await keys_under(etcd, name + "/") == []


def test_2_threaded_timeout_zero(etcd_sync: Client, etcd_prefix: str) -> None:
    name = etcd_prefix + "zero-sync"
    with etcd_sync.lock(name, timeout=0) as held:
        assert held.state is HoldState.HELD
        with pytest.raises(EtcdTimeoutError, match="timeout=0"):
            etcd_sync.lock(name, timeout=0).acquire()
        assert sync_keys_under(etcd_sync, name + "/") == [held.key]
    election = etcd_sync.election(name + "-e")
    with election.campaign("a", timeout=0) as lead:
        assert lead.state is HoldState.HELD
        with pytest.raises(EtcdTimeoutError, match="timeout=0"), election.campaign("b", timeout=0):
            pass
        assert sync_keys_under(etcd_sync, name + "-e/") == [lead.key]


ZERO_TAKES: list[tuple[str, Callable[[Any, str], Any]]] = [
    ("lock", lambda c, n: c.lock(n, timeout=0)),
    ("election", lambda c, n: c.election(n).campaign("v", timeout=0)),
    ("semaphore", lambda c, n: c.semaphore(n, 1, timeout=0)),
    ("rwlock read", lambda c, n: c.rwlock(n, timeout=0).read()),
    ("rwlock write", lambda c, n: c.rwlock(n, timeout=0).write()),
]


async def test_2_timeout_zero_does_not_wait_for_an_unreachable_etcd(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    """With etcd paused, ``timeout=0`` raises the client's error (after its own timeout)
    instead of retrying until etcd answers: for every recipe that takes one."""
    server = etcd_server_factory()
    async with AsyncClient(server.endpoint, timeout=0.5) as client:
        server.pause()
        try:
            for what, take in ZERO_TAKES:

                async def enter(take: Any = take, name: str = "/zero-" + what) -> None:
                    async with take(client, name):
                        pass

                with pytest.raises(etcdkit.EtcdkitError):
                    await asyncio.wait_for(enter(), WAIT)
            with pytest.raises(etcdkit.EtcdkitError):
                async with asyncio.timeout(WAIT):
                    await client.double_barrier("/zero-db", 2).enter(timeout=0)
        finally:
            server.resume()
        assert (await client.get_prefix("/zero")).kvs == []  # nothing left behind
        assert await client.leases() == []


def test_2_threaded_timeout_zero_does_not_wait_for_an_unreachable_etcd(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    server = etcd_server_factory()
    with Client(server.endpoint, timeout=0.5) as client:
        server.pause()
        try:
            for what, take in ZERO_TAKES:
                t0 = time.monotonic()
                with pytest.raises(etcdkit.EtcdkitError), take(client, "/zero-" + what):
                    pass
                assert time.monotonic() - t0 < WAIT, what  # (a bound, not a speed)
            with pytest.raises(etcdkit.EtcdkitError):
                client.double_barrier("/zero-db", 2).enter(timeout=0)
        finally:
            server.resume()
        assert client.get_prefix("/zero").kvs == []
        assert client.leases() == []


# -- 3. a cancel during the lease grant leaves no lease -------------------------------------------

TRIES = 200


async def test_3_cancel_at_any_point_leaves_no_lease(etcd: AsyncClient, etcd_prefix: str) -> None:
    name = etcd_prefix + "cancel"
    rng = random.Random(23)
    took = []
    for _ in range(10):
        t0 = time.monotonic()
        async with etcd.lock(name):
            pass
        took.append(time.monotonic() - t0)

    async def acquire(lock: Any) -> None:
        t0 = time.monotonic()
        await lock.acquire()
        took.append(time.monotonic() - t0)

    before = set(await etcd.leases())
    stop = asyncio.Event()

    async def load() -> None:  # other calls in flight, so that the grant's answer races
        i = 0
        while not stop.is_set():
            await etcd.put(f"{etcd_prefix}load/{i % 20}", "x" * 64)
            i += 1

    loads = [asyncio.create_task(load()) for _ in range(3)]
    outcomes = {"cancelled": 0, "acquired": 0}
    try:
        for i in range(TRIES):
            lock = etcd.lock(name, ttl=30)
            task = asyncio.create_task(acquire(lock))
            # the cancels land all over an acquisition, as long as one takes now (the load
            # and the machine's make it longer or shorter than the first ten alone)
            span = 2 * statistics.median(took[-20:])
            await asyncio.sleep(rng.uniform(0, span))
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                outcomes["cancelled"] += 1
            else:
                outcomes["acquired"] += 1
                await lock.release()
            if i % 50 == 49:
                await asyncio.sleep(0)
    finally:
        stop.set()
        await asyncio.gather(*loads)
    left = set(await etcd.leases()) - before
    assert left == set(), f"{len(left)} leases left after {TRIES} tries ({outcomes})"
    assert await keys_under(etcd, name + "/") == []
    assert outcomes["cancelled"] > TRIES // 4, outcomes


def test_3_threaded_timeouts_at_any_point_leave_no_lease(
    etcd_sync: Client, etcd_prefix: str
) -> None:
    name = etcd_prefix + "timeout-sync"
    rng = random.Random(32)
    before = set(etcd_sync.leases())
    stop = threading.Event()

    def load() -> None:
        i = 0
        while not stop.is_set():
            etcd_sync.put(f"{etcd_prefix}load/{i % 20}", "x" * 64)
            i += 1

    loaders = [started(load) for _ in range(2)]
    outcomes = {"timed out": 0, "acquired": 0}
    try:
        for _ in range(TRIES):
            # (a timeout cancels the acquisition inside, wherever it is)
            lock = etcd_sync.lock(name, ttl=30, timeout=rng.uniform(0.0002, 0.006))
            try:
                lock.acquire()
            except EtcdTimeoutError:
                outcomes["timed out"] += 1
            else:
                outcomes["acquired"] += 1
                lock.release()
    finally:
        stop.set()
        for t in loaders:
            t.join(WAIT)
    left = set(etcd_sync.leases()) - before
    assert left == set(), f"{len(left)} leases left after {TRIES} tries ({outcomes})"
    assert sync_keys_under(etcd_sync, name + "/") == []
    assert outcomes["timed out"] > TRIES // 4, outcomes


GIVE_UP: list[tuple[str, Callable[[Any, str, float], Any]]] = [
    ("lock", lambda c, n, t: c.lock(n, timeout=t)),
    ("election", lambda c, n, t: c.election(n).campaign("v", timeout=t)),
    ("semaphore", lambda c, n, t: c.semaphore(n, 1, timeout=t)),
    ("rwlock", lambda c, n, t: c.rwlock(n, timeout=t).write()),
]
SHORT = 0.3
# A bound, not a speed: a timeout during a grant etcd does not answer used to return only after
# GRANT_WAIT (2 s) more, waiting for the grant's answer; now its lease is revoked by a task of
# its own while the call returns within ABANDON_WAIT (0.2 s) of its timeout.
ON_TIME = SHORT + 1.2


async def test_3_a_timeout_during_a_grant_etcd_does_not_answer_returns_on_time(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    server = etcd_server_factory()
    async with AsyncClient(server.endpoint, timeout=5.0) as client:
        server.pause()  # the grants stay unanswered (until resume: then each is revoked)
        try:
            for what, take in GIVE_UP:

                async def enter(take: Any = take, what: str = what) -> None:
                    async with take(client, "/give-up-" + what, SHORT):
                        pass

                t0 = time.monotonic()
                with pytest.raises(EtcdTimeoutError):
                    await asyncio.wait_for(enter(), WAIT)
                took = time.monotonic() - t0
                assert took < ON_TIME, f"{what}: timeout {SHORT} s, returned after {took:.2f} s"
        finally:
            server.resume()
        await until_no_leases(client)
        assert (await client.get_prefix("/give-up-")).kvs == []


async def until_no_leases(client: AsyncClient) -> None:
    """Granted leases of given-up acquisitions are revoked by their own tasks (bounded)."""
    async with asyncio.timeout(WAIT):
        while await client.leases():
            await asyncio.sleep(0.05)


def test_3_threaded_a_timeout_during_a_grant_etcd_does_not_answer_returns_on_time(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    server = etcd_server_factory()
    with Client(server.endpoint, timeout=5.0) as client:
        server.pause()
        try:
            for what, take in GIVE_UP:
                t0 = time.monotonic()
                with pytest.raises(EtcdTimeoutError), take(client, "/give-up-" + what, SHORT):
                    pass
                took = time.monotonic() - t0
                assert took < ON_TIME, f"{what}: timeout {SHORT} s, returned after {took:.2f} s"
        finally:
            server.resume()
        deadline = time.monotonic() + WAIT
        while client.leases():
            assert time.monotonic() < deadline, "leases of given-up acquisitions left"
            time.sleep(0.05)
        assert client.get_prefix("/give-up-").kvs == []


# -- 4. a waiter that loses its place says so -----------------------------------------------------


async def test_4_a_waiter_whose_key_or_lease_vanished_says_so(
    etcd: AsyncClient,
    etcd_prefix: str,
    caplog: pytest.LogCaptureFixture,
    reader: InMemoryMetricReader,
) -> None:
    caplog.set_level(logging.INFO, logger="etcdkit")
    name = etcd_prefix + "requeue"
    for how in ("delete", "revoke"):
        holder = await etcd.lock(name).acquire()
        waiter = etcd.lock(name, ttl=3)
        states: list[HoldState] = []
        waiter.add_listener(states.append)
        task = asyncio.create_task(waiter.acquire())
        await line_is(etcd, name + "/", 2)
        first_key = waiter.key
        caplog.clear()
        if how == "delete":
            await etcd.delete(first_key)  # someone deletes the waiter's key
        else:
            await etcd.revoke(waiter.lease_id)  # ... or revokes its lease
            await until(functools.partial(requeued, waiter), "the waiter never noticed")
            await line_is(etcd, name + "/", 2)  # in line again (a new key)
        await holder.release()
        held = await asyncio.wait_for(task, WAIT)
        assert states == [
            HoldState.WAITING,
            HoldState.REQUEUED,
            HoldState.WAITING,
            HoldState.HELD,
        ], how
        assert held.requeues == 1
        assert held.key != first_key
        warned = warnings_of(caplog)
        assert len(warned) == 1, [r.getMessage() for r in warned]
        assert warned[0].name == "etcdkit.lock"
        assert "queuing again at the back" in warned[0].getMessage()
        await held.release()
    assert requeues_counted(reader, "lock") == 2

    # an election's candidate too, seen through its campaign
    election = etcd.election(name + "-e")
    async with election.campaign("a") as lead:
        campaign = election.campaign("b", ttl=3)
        seen: list[HoldState] = []
        campaign.add_listener(seen.append)

        async def enter() -> int:
            async with campaign as b:
                return b.requeues

        task2 = asyncio.create_task(enter())
        await line_is(etcd, name + "-e/", 2)
        (_, theirs) = await keys_under(etcd, name + "-e/")
        await etcd.delete(theirs)
        await lead.resign()
        assert await asyncio.wait_for(task2, WAIT) == 1
        assert HoldState.REQUEUED in seen
        assert campaign.state is HoldState.RELEASED
    assert requeues_counted(reader, "election") == 1


def test_4_threaded_waiter_whose_lease_vanished_says_so(
    etcd_sync: Client,
    etcd_prefix: str,
    caplog: pytest.LogCaptureFixture,
    reader: InMemoryMetricReader,
) -> None:
    caplog.set_level(logging.INFO, logger="etcdkit")
    name = etcd_prefix + "requeue-sync"
    holder = etcd_sync.lock(name)
    holder.acquire()
    waiter = etcd_sync.lock(name, ttl=3)
    states: list[HoldState] = []
    waiter.add_listener(states.append)
    got: list[Any] = []
    t = started(lambda: got.append(waiter.acquire()))
    sync_line_is(etcd_sync, name + "/", 2)
    sync_until(lambda: waiter.lease_id != 0, "the waiter has no lease")
    caplog.clear()
    etcd_sync.revoke(waiter.lease_id)
    sync_until(lambda: waiter.requeues == 1, "the waiter never noticed")
    sync_line_is(etcd_sync, name + "/", 2)
    holder.release()
    t.join(WAIT)
    (held,) = got
    assert isinstance(held, etcdkit.SyncLockHold)
    assert held.requeues == 1
    assert states == [HoldState.WAITING, HoldState.REQUEUED, HoldState.WAITING, HoldState.HELD]
    warned = warnings_of(caplog)
    assert len(warned) == 1, [r.getMessage() for r in warned]
    assert warned[0].name == "etcdkit.lock"
    assert requeues_counted(reader, "lock") == 1
    held.release()


# -- 5. no warning when the lease is already gone -------------------------------------------------


async def test_5_no_revoke_warning_after_an_external_revoke(
    etcd: AsyncClient, etcd_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="etcdkit")
    name = etcd_prefix + "gone"
    # revoked, then released as soon as LOST shows (the release's revoke finds nothing) ...
    async with etcd.lock(name) as held:
        await etcd.revoke(held.lease_id)
        await asyncio.wait_for(held.lost.wait(), WAIT)
    # ... or released before the loss is noticed at all
    async with etcd.lock(name) as held2:
        await etcd.revoke(held2.lease_id)
    async with etcd.election(name + "-e").campaign("v") as lead:
        await etcd.revoke(lead.lease_id)
        await asyncio.wait_for(lead.lost.wait(), WAIT)
    await asyncio.sleep(0.2)  # (background closes end)
    assert not [r for r in caplog.records if "could not revoke" in r.getMessage()]
    warned = warnings_of(caplog)
    assert all(r.name != "etcdkit.lease" for r in warned), [r.getMessage() for r in warned]


def test_5_threaded_no_revoke_warning_after_an_external_revoke(
    etcd_sync: Client, etcd_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="etcdkit")
    name = etcd_prefix + "gone-sync"
    with etcd_sync.lock(name) as held:
        etcd_sync.revoke(held.lease_id)
        assert held.lost.wait(WAIT)
    with etcd_sync.lock(name) as held2:
        etcd_sync.revoke(held2.lease_id)
    with etcd_sync.election(name + "-e").campaign("v") as lead:
        etcd_sync.revoke(lead.lease_id)
        assert lead.lost.wait(WAIT)
    time.sleep(0.2)
    assert not [r for r in caplog.records if "could not revoke" in r.getMessage()]
    warned = warnings_of(caplog)
    assert all(r.name != "etcdkit.lease" for r in warned), [r.getMessage() for r in warned]


# -- nested names: /m waits for /m/x, not the other way (as in Go) -------------------------------


async def test_nested_names_wait_one_way_as_in_go(etcd: AsyncClient, etcd_prefix: str) -> None:
    outer, inner = etcd_prefix + "m", etcd_prefix + "m/x"
    async with etcd.lock(inner) as x:
        assert x.key.startswith(f"{outer}/".encode())  # /m/x's key is in /m's line
        with pytest.raises(EtcdTimeoutError):
            await etcd.lock(outer, timeout=0.3).acquire()  # /m waits for /m/x
        with pytest.raises(EtcdTimeoutError):
            await etcd.lock(outer, timeout=0).acquire()
    async with etcd.lock(outer) as m:
        async with etcd.lock(inner, timeout=0) as x2:  # /m/x does not wait for /m
            assert (m.state, x2.state) == (HoldState.HELD, HoldState.HELD)
    assert await keys_under(etcd, outer + "/") == []


ETCDCTL = shutil.which("etcdctl")


@pytest.mark.skipif(ETCDCTL is None, reason="etcdctl is not on PATH")
async def test_nested_names_with_etcdctl(
    etcd: AsyncClient, etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    outer, inner = etcd_prefix + "gm", etcd_prefix + "gm/x"
    assert ETCDCTL is not None

    def etcdctl(*args: str) -> subprocess.Popen[str]:
        assert ETCDCTL is not None
        return subprocess.Popen(
            [ETCDCTL, "--endpoints", etcd_server.endpoint, "lock", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=dict(os.environ, ETCDCTL_API="3"),
        )

    async with etcd.lock(outer):  # Go's /m/x does not wait for our /m
        out, err = await asyncio.to_thread(etcdctl(inner, "--", "echo", "ran").communicate)
        assert "ran" in out, err
    async with etcd.lock(inner):  # Go's /m waits for our /m/x
        proc = etcdctl(outer, "--", "echo", "ran")
        try:
            await line_is(etcd, outer + "/", 2)
            await asyncio.sleep(0.3)
            assert proc.poll() is None, "etcdctl took /m while we held /m/x"
        finally:
            if proc.poll() is None:
                proc.kill()
            await asyncio.to_thread(proc.communicate)


async def _gone_with_ttl_left(client: AsyncClient, lease: int) -> int:
    """Poll ``lease`` until etcd no longer has it; the remaining TTL it last showed (a lease
    revoked goes with some left; one left to expire counts down to 0 first), -1 when it was
    gone at the first look."""
    last = -1
    async with asyncio.timeout(WAIT):
        while (left := await client.time_to_live(lease)) >= 0:
            last = left
            await asyncio.sleep(0.05)
    return last


@pytest.mark.parametrize("role", ["lock holder", "election leader"])
async def test_a_lease_given_up_in_an_outage_is_revoked_once_etcd_is_back(
    etcd_server_factory: Callable[..., EtcdServer], role: str
) -> None:
    """etcd down longer than the TTL: the hold says LOST (its lease unconfirmed for its
    TTL). etcd, restarted, gives every lease a fresh TTL, so the lease lived on with its key
    first in line, and kept the lock (or the leadership, which every observer reported) from
    the others for one more TTL (an outside audit with Go's Mutex and Election). The lease is
    now revoked once etcd answers: it goes with most of its fresh TTL left, and the next in
    line takes over."""
    server = etcd_server_factory()
    ttl = 4
    async with (
        AsyncClient(server.endpoint, timeout=5) as etcd,
        contextlib.AsyncExitStack() as held_,
    ):
        if role == "lock holder":
            held: Any = await etcd.lock("/gone-lease/l", ttl=ttl, timeout=WAIT).acquire()
            held_.push_async_callback(held.release)
        else:
            campaign = etcd.election("/gone-lease/e").campaign(b"first", ttl=ttl, timeout=WAIT)
            held = await held_.enter_async_context(campaign)
        lease = held.lease_id
        server.kill()
        await asyncio.sleep(ttl + 1.5)
        assert held.state is HoldState.LOST
        await asyncio.to_thread(server.start)
        async with AsyncClient(server.endpoint, timeout=5) as other:
            left = await _gone_with_ttl_left(other, lease)
            assert left == -1 or left >= 2  # (-1: gone before the first look)
            if role == "lock holder":
                next_one = await other.lock("/gone-lease/l", ttl=ttl, timeout=WAIT).acquire()
                await next_one.release()
            else:
                assert await other.election("/gone-lease/e").leader() is None


async def test_revokes_left_waiting_share_one_task_and_go_out_as_the_client_closes(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    """Sessions given up on in an outage each had a task of their own sending its revoke
    again (a review of the change: 1,000 of them took 80% of a core while etcd was down);
    one task of the client's sends them all. And a client closed as etcd came back cancelled
    them: the leases lived on for a fresh TTL. The close now sends each once more."""
    server = etcd_server_factory()
    ttl = 3
    etcd = AsyncClient(server.endpoint, timeout=5)
    await etcd.connect()
    try:
        sessions = [await etcd.session(ttl) for _ in range(20)]
        server.kill()
        async with asyncio.timeout(WAIT):
            while any(s.state is not etcdkit.SessionState.LOST for s in sessions):
                await asyncio.sleep(0.1)
        late = [t for t in asyncio.all_tasks() if "late" in t.get_name()]
        assert len(late) == 1
        await asyncio.to_thread(server.start)
    finally:
        await etcd.close()
    async with AsyncClient(server.endpoint, timeout=5) as other:
        left = {s.lease_id: await other.time_to_live(s.lease_id) for s in sessions}
    assert set(left.values()) == {-1}, left


async def test_a_close_cutting_a_call_sent_again_still_sends_the_others(
    etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    """Two calls wait for etcd: a closed PersistentLease's delete, then a session's revoke.
    The client closes just as etcd answers again, while the delete is in flight: its close
    cut the delete, which ended the task of calls sent again before the close reached it,
    and the revoke was never sent (a review of the change: 3 of 5 runs); the lease lived on.
    The close now sends what is left once more."""
    with Proxy(etcd_server.endpoint) as proxy:
        etcd = AsyncClient(proxy.endpoint, timeout=3)
        await etcd.connect()
        try:
            async with AsyncClient(etcd_server.endpoint) as direct:
                goes = etcd.persistent_lease(etcd_prefix + "a", "1", ttl=30)
                stays = etcd.persistent_lease(etcd_prefix + "b", "2", ttl=30)
                await goes.registered(timeout=WAIT)
                await stays.registered(timeout=WAIT)
                session = await etcd.session(30)
                await etcd.put(etcd_prefix + "s", "x", lease=session.lease_id)
                proxy.cut()
                await goes.aclose()  # (its delete waits)
                await session.close()  # (its revoke waits)
                await asyncio.sleep(0.7)
                proxy.restore()
                proxy.drop_connections()
                await etcd.close()
                assert await direct.time_to_live(session.lease_id) == -1
                assert await direct.get(etcd_prefix + "s") is None
        finally:
            await etcd.close()


async def test_calls_sent_again_together_are_sent_once_more_when_a_close_cuts_them(
    etcd_server: EtcdServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three revokes wait for etcd; the first lands, and the client closes while the other
    two, sent together, are in flight (the path cut again). The close cancelled them and
    sent nothing more: the leases lived on (a review of the change, 2 of 2 runs). They stay
    queued until answered, and the close sends them once more."""
    from etcdkit.recipes import session as recipe_session

    closing: list[asyncio.Future[None]] = []
    send = recipe_session.Late._send
    with Proxy(etcd_server.endpoint) as proxy:
        etcd = AsyncClient(proxy.endpoint, timeout=3)

        async def first_lands_then_close(late: Any, call: Any) -> bool:
            ok = await send(late, call)
            if ok and not closing:  # (the first answer: cut again, and close)
                proxy.cut()
                closing.append(asyncio.ensure_future(etcd.close()))
            return ok

        monkeypatch.setattr(recipe_session.Late, "_send", first_lands_then_close)
        await etcd.connect()
        try:
            async with AsyncClient(etcd_server.endpoint) as direct:
                sessions = [await etcd.session(60) for _ in range(3)]
                proxy.cut()
                await asyncio.gather(*(s.close() for s in sessions))  # (their revokes wait)
                proxy.restore()
                async with asyncio.timeout(WAIT):
                    while not closing:
                        await asyncio.sleep(0.01)
                await asyncio.sleep(0.3)
                proxy.drop_connections()
                proxy.restore()
                await closing[0]
                left = [await direct.time_to_live(s.lease_id) for s in sessions]
                assert left == [-1, -1, -1]
        finally:
            await etcd.close()
