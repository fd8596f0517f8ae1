"""Scenario ``initial``: the first sync of ``watch_prefix`` on a big tree, time and memory.

The job's process preloads N small keys (``k0000042`` = ``42``), times a bare paged listing of
them on the raw KV stub (pages of 10,000 read at one revision, nothing kept), then starts fresh
processes (``python -m bench.initial ENDPOINT N MODE ETCD_PID``), one per figure, so each peak
RSS (``ru_maxrss``) belongs to that figure alone (plus the interpreter and imports, shown as
``rss_before_mb``), and so do the CPU seconds the probe and etcd used meanwhile (``cpu_s``,
``etcd_cpu_s``; on 2 cores the wall time of a sync is at least half their sum):

- ``sync``: ``watch_prefix(prefix, transform)`` until ``synced()`` (the first snapshot);
- ``seed``: the Go seed's design done in Python, the reference the issue compares with: ONE
  unpaged Range of the whole prefix on the raw stub, then a dict of the transformed records;
- ``get_prefix``: ``client.get_prefix(prefix)`` (every ``KeyValue``, one revision).
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from typing import Any

import psutil
from aetcd import rpc

from bench._common import (
    Env,
    Goal,
    Job,
    key_of,
    peak_rss_mb,
    preload,
    progress,
    result,
    rss_mb,
    run_async,
    run_probe,
    transform,
)
from etcdkit import AsyncClient

PREFIX = b"/bench/initial/"
PAGE = 10_000


def jobs(quick: bool) -> list[Job]:
    sizes = (100_000,) if quick else (100_000, 1_000_000)
    return [Job("initial", {"n": n}) for n in sizes]


async def raw_listing(client: AsyncClient, n: int) -> float:
    """Seconds to page through the prefix on the raw stub at one revision, keeping nothing."""
    end = PREFIX[:-1] + bytes([PREFIX[-1] + 1])
    start, revision, seen = PREFIX, 0, 0
    t0 = time.monotonic()
    while True:
        req = rpc.RangeRequest(key=start, range_end=end, limit=PAGE, revision=revision)
        resp = await client.raw.kv.Range(req, timeout=60.0)
        revision = revision or resp.header.revision
        seen += len(resp.kvs)
        if not resp.more or not resp.kvs:
            break
        start = resp.kvs[-1].key + b"\0"
    if seen != n:
        raise RuntimeError(f"raw listing saw {seen} keys, expected {n}")
    return time.monotonic() - t0


async def run(env: Env, params: dict[str, Any]) -> None:
    n = int(params["n"])
    async with AsyncClient(env.endpoint, timeout=60.0) as client:
        progress(f"initial: preloading {n:,} keys")
        await preload(client, ((key_of(PREFIX, i), b"%d" % i) for i in range(n)), what="keys")
        raw_s = await raw_listing(client, n)
    progress(f"initial n={n:,}: raw listing {raw_s:.2f} s; syncing in fresh processes")
    probes = {}
    for mode in ("sync", "seed", "get_prefix"):
        args = [env.endpoint, str(n), mode, str(env.server.pid)]
        probes[mode] = await run_probe("bench.initial", args, timeout=900)
    sync, seed, getp = probes["sync"], probes["seed"], probes["get_prefix"]
    figures = {
        "seconds": round(sync["seconds"], 3),
        "keys_per_s": round(n / sync["seconds"], 1),
        "peak_rss_mb": sync["peak_rss_mb"],
        "rss_before_mb": sync["rss_before_mb"],
        "rss_after_mb": sync["rss_after_mb"],
        "rss_after_gc_mb": sync["rss_after_gc_mb"],
        "cpu_s": round(sync["cpu_s"], 3),
        "etcd_cpu_s": round(sync["etcd_cpu_s"], 3),
        "seed_design_s": round(seed["seconds"], 3),
        "seed_design_cpu_s": round(seed["cpu_s"], 3),
        "seed_design_etcd_cpu_s": round(seed["etcd_cpu_s"], 3),
        "seed_design_peak_rss_mb": seed["peak_rss_mb"],
        "vs_seed_design": round(sync["seconds"] / seed["seconds"], 2),
        "get_prefix_s": round(getp["seconds"], 3),
        "get_prefix_peak_rss_mb": getp["peak_rss_mb"],
        "raw_listing_s": round(raw_s, 3),
    }
    goals = [Goal("vs_seed_design", "<=", 1.0)]
    if n >= 1_000_000:
        goals += [
            Goal("seconds", "<=", 5.0),
            Goal("peak_rss_mb", "<=", 350.0),
            Goal("get_prefix_s", "<=", 3.0),
        ]
    progress(f"initial n={n:,}: {figures}")
    env.emit(
        result(
            "initial",
            f"n={n}",
            {**params, "page_size_raw": PAGE},
            figures,
            goals,
            notes="each of seconds (watch_prefix synced), seed_design_s (one unpaged Range + a "
            "dict, in Python) and get_prefix_s measured in a fresh process that does only that; "
            "raw_listing_s = paged raw Range of 10,000 keys, nothing kept",
        )
    )


def cpu_s(proc: psutil.Process) -> float:
    """CPU seconds (user + system, every thread) a process has used so far."""
    times = proc.cpu_times()
    return float(times.user + times.system)


async def probe(endpoint: str, n: int, mode: str, etcd_pid: int) -> dict[str, Any]:
    """The measuring process: one of ``sync``, ``seed``, ``get_prefix`` (module docstring).
    Besides the seconds, the CPU seconds this process (grpc's threads included) and etcd
    (``etcd_pid``) used meanwhile: on 2 cores, what the two sides can overlap at best."""
    etcd, me = psutil.Process(etcd_pid), psutil.Process()
    async with AsyncClient(endpoint, timeout=60.0) as client:
        await client.get_revision()  # connected before the clock starts
        rss_before = rss_mb()
        etcd_cpu0, cpu0 = cpu_s(etcd), cpu_s(me)
        t0 = time.monotonic()
        if mode == "sync":
            async with client.watch_prefix(PREFIX, transform) as watch:
                snap = await watch.synced(timeout=900.0)
                seconds = time.monotonic() - t0
                cpu1, etcd_cpu1 = cpu_s(me), cpu_s(etcd)
                got = len(snap.tree)
                rss_after = rss_mb()
                gc.collect()
                rss_after_gc = rss_mb()
        elif mode == "seed":
            end = PREFIX[:-1] + bytes([PREFIX[-1] + 1])
            resp = await client.raw.kv.Range(rpc.RangeRequest(key=PREFIX, range_end=end))
            tree = dict(transform(kv.key, kv.value) for kv in resp.kvs)
            seconds = time.monotonic() - t0
            cpu1, etcd_cpu1 = cpu_s(me), cpu_s(etcd)
            got = len(tree)
            rss_after = rss_after_gc = rss_mb()
        else:
            listing = await client.get_prefix(PREFIX)
            seconds = time.monotonic() - t0
            cpu1, etcd_cpu1 = cpu_s(me), cpu_s(etcd)
            got = len(listing.kvs)
            rss_after = rss_after_gc = rss_mb()
        if got != n:
            raise RuntimeError(f"{mode}: {got} keys, expected {n}")
    return {
        "seconds": seconds,
        "cpu_s": cpu1 - cpu0,
        "etcd_cpu_s": etcd_cpu1 - etcd_cpu0,
        "rss_before_mb": rss_before,
        "rss_after_mb": rss_after,
        "rss_after_gc_mb": rss_after_gc,
        "peak_rss_mb": peak_rss_mb(),
    }


def main(argv: list[str]) -> int:
    endpoint, n, mode, etcd_pid = argv
    out = run_async(
        f"initial-probe-{mode}-n{n}-{os.getpid()}", probe(endpoint, int(n), mode, int(etcd_pid))
    )
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit("usage: python -m bench.initial ENDPOINT N sync|seed|get_prefix ETCD_PID  (probe)")
    sys.exit(main(sys.argv[1:]))
