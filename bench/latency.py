"""Scenario ``latency``: put -> snapshot, one put at a time, at a small and a large tree.

A ``watch_prefix`` consumer (``async for``, same transform as ``watch``) records when it gets
each snapshot; a second client puts a new value to an existing key, waits until the consumer
has a snapshot at that put's revision, and moves on. Reported: the time from calling ``put``
to the consumer holding the snapshot (the figure the goal is about), the put's own round trip
(etcd's commit: a floor no watch can beat), and the snapshot's delay after the put returned
(negative when the event arrived before the put's response).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench._common import Env, Goal, Job, key_of, ms, percentile, preload, progress, result
from bench._common import transform as parse
from etcdkit import AsyncClient

PREFIX = b"/bench/latency/"
WARMUP = 20


def jobs(quick: bool) -> list[Job]:
    if quick:
        return [Job("latency", {"n": n, "puts": 100}) for n in (10, 10_000)]
    return [Job("latency", {"n": n, "puts": 200}) for n in (10, 100_000)]


async def run(env: Env, params: dict[str, Any]) -> None:
    n, puts = int(params["n"]), int(params["puts"])
    async with (
        AsyncClient(env.endpoint, timeout=60.0) as writer,
        AsyncClient(env.endpoint) as client,
    ):
        progress(f"latency: preloading {n:,} keys")
        await preload(writer, ((key_of(PREFIX, i), b"0") for i in range(n)))
        async with client.watch_prefix(PREFIX, parse) as watch:
            await watch.synced(timeout=300.0)
            seen_rev = 0
            seen_at = 0.0
            arrived = asyncio.Event()

            async def consume() -> None:
                nonlocal seen_rev, seen_at
                async for snap in watch:
                    seen_rev, seen_at = snap.revision, time.perf_counter()
                    arrived.set()

            consumer = asyncio.create_task(consume())
            total: list[float] = []
            rtt: list[float] = []
            after: list[float] = []
            try:
                for i in range(WARMUP + puts):
                    t0 = time.perf_counter()
                    rev = await writer.put(key_of(PREFIX, i % n), b"%d" % (i + 1))
                    t1 = time.perf_counter()
                    async with asyncio.timeout(10.0):
                        while seen_rev < rev:
                            arrived.clear()
                            await arrived.wait()
                    if i >= WARMUP:
                        total.append(seen_at - t0)
                        rtt.append(t1 - t0)
                        after.append(seen_at - t1)
            finally:
                consumer.cancel()
    figures = {
        "p50_ms": ms(percentile(total, 50)),
        "p99_ms": ms(percentile(total, 99)),
        "max_ms": ms(max(total)),
        "put_rtt_p50_ms": ms(percentile(rtt, 50)),
        "put_rtt_p99_ms": ms(percentile(rtt, 99)),
        "after_put_return_p50_ms": ms(percentile(after, 50)),
        "after_put_return_p99_ms": ms(percentile(after, 99)),
    }
    progress(f"latency n={n:,}: p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms")
    env.emit(
        result(
            "latency",
            f"n={n}",
            {**params, "warmup": WARMUP},
            figures,
            [Goal("p50_ms", "<=", 2.0)],
            notes="p50/p99 from calling put() to the consumer holding the snapshot",
        )
    )
