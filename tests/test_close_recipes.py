"""README "Calls and faults": ``close()`` ends everything still in flight with ClosedError, on
both faces: here the recipes' waits (a queue's get, a lock, a semaphore, a barrier, a double
barrier, an election's observe), each blocked on what another client holds, or on nothing."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable
from typing import Any

import etcdkit
from _helpers import etcdkit_tasks
from etcdkit import AsyncClient, Client
from etcdkit.testing import EtcdServer

BOUND = 1.0  # every wait ends within this after close()


async def test_close_ends_the_recipes_waits(etcd_server: EtcdServer, etcd_prefix: str) -> None:
    p = etcd_prefix
    async with AsyncClient(etcd_server.endpoint) as other:
        await other.lock(p + "lock").acquire()
        await other.semaphore(p + "sem", 1).acquire()
        await other.barrier(p + "bar").hold()
        client = AsyncClient(etcd_server.endpoint)
        await client.connect()

        async def observe() -> None:
            async for _ in client.election(p + "none").observe():
                pass

        waits = {
            "queue.get": client.queue(p + "q").get(),
            "priority_queue.get": client.priority_queue(p + "pq").get(),
            "lock.acquire": client.lock(p + "lock", timeout=None).acquire(),
            "semaphore.acquire": client.semaphore(p + "sem", 1, timeout=None).acquire(),
            "barrier.wait": client.barrier(p + "bar").wait(),
            "double_barrier.enter": client.double_barrier(p + "db", 3).enter(),
            "election.observe": observe(),
        }
        tasks = {name: asyncio.ensure_future(wait) for name, wait in waits.items()}
        await asyncio.sleep(0.5)
        assert [name for name, t in tasks.items() if t.done()] == []
        t0 = time.monotonic()
        await client.close()
        _done, pending = await asyncio.wait(tasks.values(), timeout=BOUND)
        assert not pending, [name for name, t in tasks.items() if not t.done()]
        assert time.monotonic() - t0 < BOUND
        for name, t in tasks.items():
            assert isinstance(t.exception(), etcdkit.ClosedError), (name, t.exception())
    await asyncio.sleep(0)
    assert etcdkit_tasks() == []


def test_close_ends_the_recipes_waits_threaded(
    etcd_server: EtcdServer, etcd_prefix: str, no_leaked_threads: None
) -> None:
    p = etcd_prefix
    with Client(etcd_server.endpoint) as other:
        other.lock(p + "lock").acquire()
        other.semaphore(p + "sem", 1).acquire()
        other.barrier(p + "bar").hold()
        client = Client(etcd_server.endpoint)

        def observe() -> None:
            for _ in client.election(p + "none").observe():
                pass

        waits: dict[str, Callable[[], Any]] = {
            "queue.get": lambda: client.queue(p + "q").get(),
            "priority_queue.get": lambda: client.priority_queue(p + "pq").get(),
            "lock.acquire": lambda: client.lock(p + "lock", timeout=None).acquire(),
            "semaphore.acquire": lambda: client.semaphore(p + "sem", 1, timeout=None).acquire(),
            "barrier.wait": lambda: client.barrier(p + "bar").wait(),
            "double_barrier.enter": lambda: client.double_barrier(p + "db", 3).enter(),
            "election.observe": observe,
        }
        with concurrent.futures.ThreadPoolExecutor(len(waits)) as pool:
            futures = {name: pool.submit(wait) for name, wait in waits.items()}
            time.sleep(0.5)
            assert [name for name, f in futures.items() if f.done()] == []
            t0 = time.monotonic()
            client.close()
            _done, pending = concurrent.futures.wait(futures.values(), timeout=BOUND)
            assert not pending, [name for name, f in futures.items() if not f.done()]
            assert time.monotonic() - t0 < BOUND
            for name, f in futures.items():
                assert isinstance(f.exception(), etcdkit.ClosedError), (name, f.exception())
