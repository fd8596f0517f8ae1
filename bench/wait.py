"""Scenario ``wait``: ``wait_for`` wake-up latency, and many concurrent waiters.

- ``wakeup``: one ``wait_for(key)`` at a time on a fresh key, given 50 ms to read and start
  watching; then a second client puts the key. Reported: from calling ``put`` to ``wait_for``
  returning, p50/p99 over the rounds.
- ``watches``: COUNT ``watch_prefix`` on one client, until every one is LIVE.
- ``concurrent``: COUNT ``wait_for`` calls on distinct absent keys at once, all under one
  parent (so they share etcd watches, 128 keys each). ``setup_s``: until every call waits on a
  watch etcd confirmed (``client.stats``: ``waiting`` and ``watches_unconfirmed``), checked
  against etcd's own watcher gauge (``etcd_debugging_mvcc_watcher_total``); then every key is
  written (transactions of 128 puts) and ``release_s`` runs until all calls returned. The
  baseline in the same run, ``layout=apart``: each key under a parent of its own, so each
  call has an etcd watch of its own (the design before sharing). Memory: this process's RSS
  before, once all wait, and its peak (``ru_maxrss``; the case runs in a process of its own,
  so the peak is this case's).
"""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
from typing import Any

from bench._common import (
    Env,
    Goal,
    Job,
    ms,
    peak_rss_mb,
    percentile,
    preload,
    progress,
    result,
    rss_mb,
)
from etcdkit import AsyncClient

PREFIX = b"/bench/wait/"
WARMUP = 10
_WATCHERS = re.compile(rb"^etcd_debugging_mvcc_watcher_total (\S+)$", re.MULTILINE)


def jobs(quick: bool) -> list[Job]:
    return [
        Job("wait", {"case": "wakeup", "rounds": 50 if quick else 100}),
        Job("wait", {"case": "concurrent", "count": 2_000 if quick else 10_000}),
        # The baseline, same run: every key under a parent of its own, so none share a watch.
        Job(
            "wait",
            {"case": "concurrent", "count": 2_000 if quick else 10_000, "layout": "apart"},
        ),
        Job("wait", {"case": "watches", "count": 200 if quick else 1_000}),
    ]


def _watchers(endpoint: str) -> int | None:
    with urllib.request.urlopen(f"{endpoint}/metrics", timeout=5.0) as resp:
        m = _WATCHERS.search(resp.read())
    return None if m is None else int(float(m.group(1)))


async def etcd_watchers(endpoint: str) -> int | None:
    """How many watchers etcd has (None if this etcd does not export the metric)."""
    return await asyncio.to_thread(_watchers, endpoint)


async def wakeup(env: Env, params: dict[str, Any]) -> None:
    rounds = int(params["rounds"])
    lat: list[float] = []
    async with AsyncClient(env.endpoint) as client, AsyncClient(env.endpoint) as writer:
        for i in range(WARMUP + rounds):
            key = PREFIX + b"w%d" % i
            returned_at = 0.0

            async def waiter(key: bytes = key) -> None:
                nonlocal returned_at
                await client.wait_for(key, timeout=10.0)
                returned_at = time.perf_counter()

            task = asyncio.create_task(waiter())
            await asyncio.sleep(0.05)
            t0 = time.perf_counter()
            await writer.put(key, b"1")
            await task
            if i >= WARMUP:
                lat.append(returned_at - t0)
    figures = {
        "p50_ms": ms(percentile(lat, 50)),
        "p99_ms": ms(percentile(lat, 99)),
        "max_ms": ms(max(lat)),
    }
    progress(f"wait wakeup: p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms")
    env.emit(result("wait", "wakeup", {**params, "warmup": WARMUP}, figures))


async def concurrent(env: Env, params: dict[str, Any]) -> None:
    count = int(params["count"])
    apart = params.get("layout") == "apart"
    keys = [PREFIX + (b"a%06d/k" if apart else b"c%06d") % i for i in range(count)]
    async with AsyncClient(env.endpoint) as client, AsyncClient(env.endpoint) as writer:
        base = await etcd_watchers(env.endpoint)
        rss_before = rss_mb()
        cpu0 = time.process_time()
        t0 = time.monotonic()
        tasks = [asyncio.create_task(client.wait_for(k, timeout=600.0)) for k in keys]
        async with asyncio.timeout(300.0):
            while True:  # every call waits on a watch etcd confirmed
                stats = client.stats
                if stats.waiting >= count and not stats.watches_unconfirmed:
                    break
                await asyncio.sleep(0.005)
        t1 = time.monotonic()
        watches = client.stats.watches
        if base is not None:  # ... and etcd's own count agrees
            etcd_has = (await etcd_watchers(env.endpoint) or 0) - base
            if etcd_has < watches:
                raise RuntimeError(f"etcd has {etcd_has} watchers; the client holds {watches}")
        cpu1 = time.process_time()
        rss_waiting = rss_mb()
        progress(f"wait: {count:,} waiters set up in {t1 - t0:.2f} s; releasing")
        await preload(writer, ((k, b"1") for k in keys), what="released keys")
        t_written = time.monotonic()
        async with asyncio.timeout(300.0):
            revisions = await asyncio.gather(*tasks)
        t2 = time.monotonic()
        cpu2 = time.process_time()
    if not all(r > 0 for r in revisions):
        raise RuntimeError("a wait_for returned no revision")
    figures = {
        "setup_s": round(t1 - t0, 4),
        "etcd_watches": watches,
        "release_s": round(t2 - t1, 4),
        "total_s": round(t2 - t0, 4),
        "writes_s": round(t_written - t1, 4),
        "setup_cpu_s": round(cpu1 - cpu0, 3),
        "release_cpu_s": round(cpu2 - cpu1, 3),
        "rss_before_mb": rss_before,
        "rss_waiting_mb": rss_waiting,
        "peak_rss_mb": peak_rss_mb(),
        "kb_per_waiter": round((rss_waiting - rss_before) * 1024 / count, 2),
    }
    progress(f"wait concurrent: {figures}")
    env.emit(
        result(
            "wait",
            "concurrent",
            params,
            figures,
            [Goal("setup_s", "<=", 1.0)] if count >= 10_000 and not apart else [],
            notes="own process; setup = until every call waits on a watch etcd confirmed "
            "(client.stats; etcd's watcher gauge checked to agree); release = writes (txns of "
            "128 puts) until every call returned",
        )
    )


async def run(env: Env, params: dict[str, Any]) -> None:
    if params["case"] == "wakeup":
        await wakeup(env, params)
    elif params["case"] == "watches":
        await watches(env, params)
    else:
        await concurrent(env, params)


async def watches(env: Env, params: dict[str, Any]) -> None:
    """COUNT ``watch_prefix`` on one client (distinct prefixes, one key each): seconds until
    every one is LIVE (listed, and its watch confirmed by etcd). Issue 15's goal: 1,000 in 2 s."""
    count = int(params["count"])
    prefixes = [PREFIX + b"w%05d/" % i for i in range(count)]
    async with AsyncClient(env.endpoint, timeout=60.0) as client:
        await preload(client, ((p + b"k", b"1") for p in prefixes), what="keys")
        t0 = time.monotonic()
        opened = [client.watch_prefix(p) for p in prefixes]
        try:
            async with asyncio.timeout(120.0):
                await asyncio.gather(*(w.synced() for w in opened))
            t1 = time.monotonic()
            live = sum(1 for w in opened if w.state.value == "live")
        finally:
            await asyncio.gather(*(w.aclose() for w in opened))
    figures = {"count": count, "all_live_s": round(t1 - t0, 4), "live": live}
    progress(f"wait watches: {figures}")
    env.emit(
        result(
            "wait",
            "watches",
            params,
            figures,
            [Goal("all_live_s", "<=", 2.0)] if count >= 1_000 else [],
            notes="synced() returns once the listing is loaded and etcd confirmed the watch",
        )
    )
