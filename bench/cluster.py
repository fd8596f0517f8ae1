"""Scenario ``cluster``: membership latency, the hash ring, and routed gRPC calls.

- ``visible``: a member registers (``membership(...).register()``) in this process while an
  observer *process* (``python -m bench.cluster observe``) follows the same cluster root. The
  figure is the time from calling ``register`` to the observer's view containing the member,
  p50/p99 over the rounds (both processes read ``CLOCK_MONOTONIC``, one clock per machine).
  Each round then deregisters and waits until the observer saw the member leave. Also: the
  time ``register()`` itself took (until this process's own view had the member).
- ``ring``: lookups on a ring of NODES nodes of CLAIMS tokens each: ``ring.node(key)``,
  ``ring.nodes(key, 3)`` and ``RegistryView.owner(key)`` in µs per call; and the share of
  KEYS random keys that change owner when an 11th node joins 10 (ideal: 1/11, all of them to
  the new node), as a multiple of the ideal.
- ``routed``: sequential unary calls to in-process grpc.aio servers (3 nodes, generic
  handlers) through a plain channel to one node and through a ``RoutedChannel`` over a
  MemoryCluster of the 3 (routing key set by ``route_key``), alternating call by call; the
  overhead is the difference of the medians (and the median of the pairwise differences),
  in µs per call. The ``_1node`` figures route over the plain channel's server alone: the
  cost of the routing itself, without spreading calls over 3 connections.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import sys
import time
from typing import Any

import grpc
import grpc.aio

from bench._common import Env, Goal, Job, Observer, ms, percentile, progress, result
from etcdkit import AsyncClient
from etcdkit.cluster import HashRing, Member, MemoryCluster, NodeDescriptor, RegistryView
from etcdkit.cluster.grpc import RoutedChannel, route_key

ROOT = "/bench/cluster"
WARMUP = 5


def jobs(quick: bool) -> list[Job]:
    return [
        Job("cluster", {"case": "visible", "rounds": 30 if quick else 200}),
        Job(
            "cluster",
            {"case": "ring", "nodes": 10, "claims": 100, "keys": 20_000 if quick else 200_000},
        ),
        Job("cluster", {"case": "routed", "calls": 1_000 if quick else 10_000}),
    ]


# -- visible ------------------------------------------------------------------------------------


async def observe(endpoint: str, root: str) -> None:
    """The observer process: print ``+ID T`` / ``-ID T`` when a member appears / leaves."""
    async with AsyncClient(endpoint) as etcd, etcd.cluster(root) as cluster:
        print("ready", flush=True)
        seen: set[str] = set()
        async for members in cluster.watch_members():
            seen = Observer.report(seen, {m.id for m in members})


async def visible(env: Env, params: dict[str, Any]) -> None:
    rounds = int(params["rounds"])
    lat: list[float] = []
    own: list[float] = []
    observer = await Observer.start("bench.cluster", env.endpoint, ROOT)
    try:
        async with AsyncClient(env.endpoint) as etcd, etcd.cluster(ROOT, ttl=10) as cluster:
            for i in range(WARMUP + rounds):
                m = cluster.membership("10.0.0.1:80", id=f"m{i}")
                t0 = time.monotonic()
                await m.register(timeout=10.0)
                t1 = time.monotonic()
                seen_at = await observer.expect(f"+m{i} ")
                await m.deregister(timeout=10.0)
                await observer.expect(f"-m{i} ")
                if i >= WARMUP:
                    lat.append(seen_at - t0)
                    own.append(t1 - t0)
    finally:
        await observer.stop()
    figures = {
        "visible_p50_ms": ms(percentile(lat, 50)),
        "visible_p99_ms": ms(percentile(lat, 99)),
        "visible_max_ms": ms(max(lat)),
        "register_p50_ms": ms(percentile(own, 50)),
        "register_p99_ms": ms(percentile(own, 99)),
    }
    progress(f"cluster visible: {figures}")
    env.emit(
        result(
            "cluster",
            "visible",
            {**params, "warmup": WARMUP},
            figures,
            [Goal("visible_p50_ms", "<=", 5.0)],
            notes="register() in this process -> the member in another process's view",
        )
    )


# -- ring -----------------------------------------------------------------------------------------


def _per_call_us(fn: Any, keys: list[bytes]) -> float:
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for k in keys:
            fn(k)
        best = min(best, time.perf_counter() - t0)
    return round(best / len(keys) * 1e6, 3)


async def ring(env: Env, params: dict[str, Any]) -> None:
    nodes, claims, count = int(params["nodes"]), int(params["claims"]), int(params["keys"])
    rng = random.Random(42)
    keys = [rng.randbytes(16) for _ in range(count)]
    t0 = time.perf_counter()
    ring10 = HashRing({f"node-{i}": claims for i in range(nodes)})
    build_ms = (time.perf_counter() - t0) * 1000
    ring11 = ring10.with_claims(f"node-{nodes}", claims)
    descriptors = [NodeDescriptor(f"node-{i}", f"10.0.0.{i + 1}:80", claims) for i in range(nodes)]
    view = RegistryView.from_members([Member(d.id, d.encode()) for d in descriptors], 1)
    moved = sum(ring10.node(k) != ring11.node(k) for k in keys)
    to_new = sum(ring11.node(k) == f"node-{nodes}" for k in keys)
    ideal = 1 / (nodes + 1)
    figures = {
        "node_us": _per_call_us(ring10.node, keys),
        "nodes3_us": _per_call_us(lambda k: ring10.nodes(k, 3), keys),
        "owner_us": _per_call_us(view.owner, keys),
        "build_ms": round(build_ms, 3),
        "moved_share": round(moved / count, 5),
        "moved_to_new_share": round(to_new / count, 5),
        "moved_vs_ideal": round(moved / count / ideal, 3),
    }
    progress(f"cluster ring: {figures}")
    env.emit(
        result(
            "cluster",
            "ring",
            params,
            figures,
            [Goal("node_us", "<=", 2.0), Goal("moved_vs_ideal", "<=", 1.2)],
            notes=f"ideal share moved when node {nodes + 1} joins {nodes}: 1/{nodes + 1}",
        )
    )


# -- routed ---------------------------------------------------------------------------------------


async def _server(name: str) -> tuple[grpc.aio.Server, int]:
    async def echo(request: bytes, context: Any) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def _alternate(plain: Any, routed: Any, keys: list[bytes]) -> tuple[list[float], list[float]]:
    """Seconds per call of *plain* and *routed*, call by call in turn (drift hits both)."""
    for k in keys[:200]:  # warm up every connection
        await plain(k, timeout=5.0)
        with route_key(k):
            await routed(k, timeout=5.0)
    plain_s: list[float] = []
    routed_s: list[float] = []
    for k in keys:
        t0 = time.perf_counter()
        await plain(k, timeout=5.0)
        t1 = time.perf_counter()
        with route_key(k):
            await routed(k, timeout=5.0)
        t2 = time.perf_counter()
        plain_s.append(t1 - t0)
        routed_s.append(t2 - t1)
    return plain_s, routed_s


async def routed(env: Env, params: dict[str, Any]) -> None:
    calls = int(params["calls"])
    servers = [await _server(f"n{i}") for i in range(3)]
    keys = [b"user-%d" % i for i in range(calls)]
    figures: dict[str, Any] = {}
    try:
        plain = grpc.aio.insecure_channel(f"127.0.0.1:{servers[0][1]}")
        plain_echo = plain.unary_unary("/bench.Echo/Echo")
        # 3 nodes: the figure a user sees; 1 node (the plain channel's server): our own cost,
        # without the effect of spreading calls over 3 connections and servers
        for nodes, suffix in ((3, ""), (1, "_1node")):
            async with MemoryCluster() as cluster:
                for i, (_, port) in enumerate(servers[:nodes]):
                    desc = NodeDescriptor(f"n{i}", f"127.0.0.1:{port}", 100)
                    await cluster.membership(desc.encode(), id=desc.id).register()
                async with RoutedChannel(cluster) as channel:
                    routed_echo = channel.unary_unary("/bench.Echo/Echo")
                    plain_s, routed_s = await _alternate(plain_echo, routed_echo, keys)
            p50_plain, p50_routed = statistics.median(plain_s), statistics.median(routed_s)
            pairwise = statistics.median(r - p for r, p in zip(routed_s, plain_s))
            figures.update(
                {
                    f"plain_p50_us{suffix}": round(p50_plain * 1e6, 1),
                    f"routed_p50_us{suffix}": round(p50_routed * 1e6, 1),
                    f"overhead_us{suffix}": round((p50_routed - p50_plain) * 1e6, 1),
                    f"pairwise_overhead_us{suffix}": round(pairwise * 1e6, 1),
                    f"plain_p99_us{suffix}": round(percentile(plain_s, 99) * 1e6, 1),
                    f"routed_p99_us{suffix}": round(percentile(routed_s, 99) * 1e6, 1),
                }
            )
        await plain.close()
    finally:
        for server, _ in servers:
            await server.stop(None)
    progress(f"cluster routed: {figures}")
    env.emit(
        result(
            "cluster",
            "routed",
            params,
            figures,
            notes="sequential unary calls on loopback, alternating plain/routed; routed = "
            "RoutedChannel with route_key over 3 nodes (and over 1: the plain channel's "
            "server); overhead = difference of the medians; pairwise = median of the "
            "call-by-call differences",
        )
    )


async def run(env: Env, params: dict[str, Any]) -> None:
    case = params["case"]
    if case == "visible":
        await visible(env, params)
    elif case == "ring":
        await ring(env, params)
    else:
        await routed(env, params)


if __name__ == "__main__":  # the observer process of ``visible``
    if sys.argv[1:2] == ["observe"]:
        os.environ.pop("PYTHONASYNCIODEBUG", None)
        asyncio.run(observe(sys.argv[2], sys.argv[3]))
