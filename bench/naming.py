"""Scenario ``naming``: gRPC naming (issue 24), Go's etcd endpoints as etcdkit keeps them.

- ``visible``: an endpoint registers (``eps.register(addr)``) in this process while an
  observer *process* (``python -m bench.naming observe``) watches the target
  (``eps.watch()``). The figure is the time from calling ``register`` to the observer's view
  holding the endpoint, p50/p99 (both read ``CLOCK_MONOTONIC``); each round then leaves the
  block and waits until the observer saw it go. Goal: p50 <= 5 ms.
- ``channel``: sequential unary calls to 3 in-process grpc.aio servers through a plain
  channel to one of them and through ``etcdkit.naming.grpc.channel(etcd, target)`` over the 3
  (round robin), alternating call by call; the overhead is the difference of the medians (and
  the median of the pairwise differences), in µs per call.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from typing import Any

import grpc
import grpc.aio

from bench._common import Env, Goal, Job, Observer, ms, percentile, progress, result
from bench.cluster import _server
from etcdkit import AsyncClient
from etcdkit.naming.grpc import channel

TARGET = "bench/naming"
WARMUP = 5


def jobs(quick: bool) -> list[Job]:
    return [
        Job("naming", {"case": "visible", "rounds": 30 if quick else 200}),
        Job("naming", {"case": "channel", "calls": 1_000 if quick else 10_000}),
    ]


async def observe(endpoint: str, target: str) -> None:
    """The observer process: print ``+KEY T`` / ``-KEY T`` when an endpoint appears / leaves."""
    async with AsyncClient(endpoint) as etcd, etcd.endpoint_manager(target).watch() as w:
        await w.synced(timeout=10)
        print("ready", flush=True)
        seen: set[str] = set()
        async for view in w:
            seen = Observer.report(seen, set(view.tree))


async def visible(env: Env, params: dict[str, Any]) -> None:
    rounds = int(params["rounds"])
    lat: list[float] = []
    observer = await Observer.start("bench.naming", env.endpoint, TARGET)
    try:
        async with AsyncClient(env.endpoint) as etcd:
            eps = etcd.endpoint_manager(TARGET)
            for i in range(WARMUP + rounds):
                addr = f"10.0.{i // 250}.{i % 250 + 1}:50051"
                t0 = time.monotonic()
                async with eps.register(addr, ttl=10) as reg:
                    await reg.registered(timeout=10.0)
                    seen_at = await observer.expect(f"+{TARGET}/{addr} ")
                await observer.expect(f"-{TARGET}/{addr} ")
                if i >= WARMUP:
                    lat.append(seen_at - t0)
    finally:
        await observer.stop()
    figures = {
        "visible_p50_ms": ms(percentile(lat, 50)),
        "visible_p99_ms": ms(percentile(lat, 99)),
        "visible_max_ms": ms(max(lat)),
    }
    progress(f"naming visible: {figures}")
    env.emit(
        result(
            "naming",
            "visible",
            {**params, "warmup": WARMUP},
            figures,
            [Goal("visible_p50_ms", "<=", 5.0)],
            notes="eps.register() in this process -> the endpoint in another process's view",
        )
    )


async def channel_case(env: Env, params: dict[str, Any]) -> None:
    calls = int(params["calls"])
    servers = [await _server(f"n{i}") for i in range(3)]
    figures: dict[str, Any] = {}
    try:
        async with AsyncClient(env.endpoint) as etcd:
            eps = etcd.endpoint_manager(TARGET + "-ch")
            for i, (_, port) in enumerate(servers):
                await eps.add(f"{TARGET}-ch/n{i}", f"127.0.0.1:{port}")
            plain = grpc.aio.insecure_channel(f"127.0.0.1:{servers[0][1]}")
            plain_echo = plain.unary_unary("/bench.Echo/Echo")
            async with channel(etcd, TARGET + "-ch") as ch:
                ours = ch.unary_unary("/bench.Echo/Echo")
                for _ in range(200):  # warm up every connection
                    await plain_echo(b"x", timeout=5.0)
                    await ours(b"x", timeout=5.0)
                plain_s: list[float] = []
                ours_s: list[float] = []
                for _ in range(calls):
                    t0 = time.perf_counter()
                    await plain_echo(b"x", timeout=5.0)
                    t1 = time.perf_counter()
                    await ours(b"x", timeout=5.0)
                    t2 = time.perf_counter()
                    plain_s.append(t1 - t0)
                    ours_s.append(t2 - t1)
            await plain.close()
    finally:
        for server, _ in servers:
            await server.stop(None)
    p50_plain, p50_ours = statistics.median(plain_s), statistics.median(ours_s)
    figures.update(
        {
            "plain_p50_us": round(p50_plain * 1e6, 1),
            "channel_p50_us": round(p50_ours * 1e6, 1),
            "overhead_us": round((p50_ours - p50_plain) * 1e6, 1),
            "pairwise_overhead_us": round(
                statistics.median(o - p for o, p in zip(ours_s, plain_s)) * 1e6, 1
            ),
            "plain_p99_us": round(percentile(plain_s, 99) * 1e6, 1),
            "channel_p99_us": round(percentile(ours_s, 99) * 1e6, 1),
        }
    )
    progress(f"naming channel: {figures}")
    env.emit(
        result(
            "naming",
            "channel",
            params,
            figures,
            notes="sequential unary calls on loopback, alternating: a plain channel to one "
            "server, and naming.grpc.channel (round robin over 3 endpoints in etcd)",
        )
    )


async def run(env: Env, params: dict[str, Any]) -> None:
    if params["case"] == "visible":
        await visible(env, params)
    else:
        await channel_case(env, params)


if __name__ == "__main__":  # the observer process of ``visible``
    if sys.argv[1:2] == ["observe"]:
        os.environ.pop("PYTHONASYNCIODEBUG", None)
        asyncio.run(observe(sys.argv[2], sys.argv[3]))
