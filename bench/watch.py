"""Scenario ``watch``: how fast ``watch_prefix`` follows a burst of writes, and the raw ceiling.

For each tree size N: preload N keys under a prefix; then, in rounds, two phases on the same
tree with the same workload (a writer process putting UPDATES new integer values to existing
keys, 64 puts in flight, through ``AsyncClient.put``):

- ``raw``: a second client's own prefix watch on ``client.raw.watch.Watch`` counts events and
  nothing else: the receive rate this process can reach at all (the ceiling);
- ``watch_prefix``: ``watch_prefix(prefix, transform)`` (the transform parses the key's last
  segment and an int value) synced, then consumed with ``async for`` until a snapshot reaches
  the writer's last revision; its tree is then checked against ``get_prefix`` at that revision.

The phases run one after the other (not concurrently) so neither watcher's CPU slows the
other; the writer runs in its own process for the same reason. Seconds are measured from the
writer's first put (``time.monotonic`` is system-wide) to the last event / snapshot.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import grpc.aio
from aetcd import rpc

from bench._common import (
    Env,
    Goal,
    Job,
    key_of,
    preload,
    progress,
    result,
    run_probe,
    transform,
)
from etcdkit import AsyncClient

PREFIX = b"/bench/watch/"
IN_FLIGHT = 64


def jobs(quick: bool) -> list[Job]:
    if quick:
        return [Job("watch", {"n": n, "updates": 2_000, "rounds": 1}) for n in (1_000, 10_000)]
    return [Job("watch", {"n": n, "updates": 5_000, "rounds": 3}) for n in (1_000, 10_000, 100_000)]


def range_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


async def _writer(endpoint: str, n: int, updates: int) -> Any:
    args = [endpoint, PREFIX.decode(), str(n), str(updates), str(IN_FLIGHT)]
    return await run_probe("bench._writer", args, timeout=300.0)


async def raw_phase(endpoint: str, n: int, updates: int) -> dict[str, float]:
    async with AsyncClient(endpoint) as client:
        start = await client.get_revision() + 1
        call = client.raw.watch.Watch()
        create = rpc.WatchCreateRequest(
            key=PREFIX, range_end=range_end(PREFIX), start_revision=start
        )
        await call.write(rpc.WatchRequest(create_request=create))
        created = await call.read()
        if created is grpc.aio.EOF or not created.created:
            raise RuntimeError(f"raw watch not created: {created!r}")
        writer = asyncio.create_task(_writer(endpoint, n, updates))
        cpu0 = time.process_time()
        events = responses = 0
        async with asyncio.timeout(300.0):
            while events < updates:
                resp = await call.read()
                if resp is grpc.aio.EOF:
                    raise RuntimeError("raw watch stream ended early")
                events += len(resp.events)
                responses += 1
        t_done = time.monotonic()
        cpu = time.process_time() - cpu0
        call.cancel()
        w = await writer
    seconds = t_done - w["t_start"]
    return {
        "seconds": seconds,
        "events_per_s": updates / seconds,
        "responses": responses,
        "cpu_us_per_event": cpu / updates * 1e6,
        "writer_puts_per_s": updates / (w["t_end"] - w["t_start"]),
    }


async def watch_phase(endpoint: str, n: int, updates: int) -> dict[str, float]:
    async with AsyncClient(endpoint) as client, client.watch_prefix(PREFIX, transform) as watch:
        t0 = time.monotonic()
        snap = await watch.synced(timeout=300.0)
        sync_s = time.monotonic() - t0
        if len(snap.tree) != n:
            raise RuntimeError(f"synced tree has {len(snap.tree)} keys, expected {n}")
        target = snap.revision + updates  # nobody but the writer writes meanwhile
        writer = asyncio.create_task(_writer(endpoint, n, updates))
        cpu0 = time.process_time()
        snapshots = 0
        async with asyncio.timeout(300.0):
            async for snap in watch:
                snapshots += 1
                if snap.revision >= target:
                    break
        t_done = time.monotonic()
        cpu = time.process_time() - cpu0
        w = await writer
        if w["last_revision"] != target:
            raise RuntimeError(f"writer ended at {w['last_revision']}, expected {target}")
        listed = await client.get_prefix(PREFIX, revision=snap.revision)
        expected = dict(transform(kv.key, kv.value) for kv in listed.kvs)
        if dict(snap.tree) != expected:
            raise RuntimeError(f"snapshot at {snap.revision} differs from get_prefix (bug!)")
    seconds = t_done - w["t_start"]
    return {
        "initial_sync_s": sync_s,
        "seconds": seconds,
        "events_per_s": updates / seconds,
        "lag_after_writer_s": t_done - w["t_end"],
        "snapshots": snapshots,
        "cpu_us_per_event": cpu / updates * 1e6,
        "writer_puts_per_s": updates / (w["t_end"] - w["t_start"]),
    }


def _median(rounds: list[dict[str, float]], key: str, digits: int = 4) -> float:
    return round(statistics.median(r[key] for r in rounds), digits)


async def run(env: Env, params: dict[str, Any]) -> None:
    n, updates, rounds = int(params["n"]), int(params["updates"]), int(params["rounds"])
    async with AsyncClient(env.endpoint, timeout=60.0) as client:
        progress(f"watch: preloading {n:,} keys")
        await preload(client, ((key_of(PREFIX, i), b"0") for i in range(n)))
    raws: list[dict[str, float]] = []
    watches: list[dict[str, float]] = []
    for r in range(rounds):
        raws.append(await raw_phase(env.endpoint, n, updates))
        progress(f"watch n={n:,} round {r + 1}: raw {raws[-1]['events_per_s']:,.0f} events/s")
        watches.append(await watch_phase(env.endpoint, n, updates))
        progress(
            f"watch n={n:,} round {r + 1}: watch_prefix "
            f"{watches[-1]['events_per_s']:,.0f} events/s "
            f"(initial sync {watches[-1]['initial_sync_s']:.3f} s)"
        )
    rate = _median(watches, "events_per_s", 1)
    raw_rate = _median(raws, "events_per_s", 1)
    figures: dict[str, Any] = {
        "initial_sync_s": _median(watches, "initial_sync_s"),
        "seconds": _median(watches, "seconds"),
        "events_per_s": rate,
        "snapshots": _median(watches, "snapshots", 0),
        "lag_after_writer_s": _median(watches, "lag_after_writer_s"),
        "cpu_us_per_event": _median(watches, "cpu_us_per_event", 1),
        "writer_puts_per_s": _median(watches, "writer_puts_per_s", 1),
        "raw_seconds": _median(raws, "seconds"),
        "raw_events_per_s": raw_rate,
        "raw_responses": _median(raws, "responses", 0),
        "raw_cpu_us_per_event": _median(raws, "cpu_us_per_event", 1),
        "raw_writer_puts_per_s": _median(raws, "writer_puts_per_s", 1),
        "ratio_to_raw": round(rate / raw_rate, 3),
        "events_per_s_rounds": [round(w["events_per_s"], 1) for w in watches],
        "raw_events_per_s_rounds": [round(r["events_per_s"], 1) for r in raws],
    }
    goals = [Goal("ratio_to_raw", ">=", 0.8)]
    if n >= 100_000:
        goals.insert(0, Goal("events_per_s", ">=", 2000))
    env.emit(
        result(
            "watch",
            f"n={n}",
            {**params, "in_flight": IN_FLIGHT},
            figures,
            goals,
            notes="medians over rounds; raw and watch_prefix phases run one after the other "
            "with the same writer workload",
        )
    )
