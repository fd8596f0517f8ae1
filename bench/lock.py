"""Scenario ``lock``: lock hand-off latency between processes, the herd, and the uncontended cost.

- ``handoff``: two contender processes (``python -m bench.lock contend ...``) take turns on one
  lock: acquire, hold HOLD_MS, release, queue again. Each prints when it acquired and when it
  started to release (``time.monotonic()``, one clock for every process on the machine). A
  hand-off is the time from one process calling ``release()`` to the other's ``acquire()``
  returning: its delete reaching etcd, the waiter's watch firing, the waiter's one read.
- ``herd``: WAITERS locks (on 4 clients) queue behind a holder; then the holder releases and
  each waiter, once it holds, releases at once: WAITERS hand-offs in a chain. ``wakeups`` is
  how many times a waiter's watch fired (every waiter watches only the key before its own);
  ``events`` is etcd's own count of watch events it sent meanwhile
  (``etcd_debugging_mvcc_events_total``, which also counts each releasing holder's watch on
  its own key); ``watchers`` is etcd's watcher count while all wait.
- ``uncontended``: one process, one lock, nobody else: ``acquire()`` + ``release()`` p50/p99
  (a lease grant, the create-or-get transaction, one read; then the revoke), held for
  ``hold_ms`` (default 2) in between (not timed).
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncio
import itertools
import json
import re
import time
import urllib.request
from typing import Any

from bench._common import Env, Goal, Job, child_env, ms, percentile, progress, result
from etcdkit import AsyncClient

NAME = "/bench/lock/x"
HOLD_MS = 10.0
CLIENTS = 4


def jobs(quick: bool) -> list[Job]:
    return [
        Job("lock", {"case": "handoff", "handoffs": 60 if quick else 400}),
        Job("lock", {"case": "herd", "waiters": 100}),
        Job("lock", {"case": "uncontended", "rounds": 100 if quick else 500, "hold_ms": 2}),
    ]


def _metric(metrics_port: int, name: str) -> float:
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5.0) as resp:
        text = resp.read().decode()
    m = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else float("nan")


async def metric(env: Env, name: str) -> float:
    return await asyncio.to_thread(_metric, env.server.metrics_port, name)


# -- handoff --------------------------------------------------------------------------------------


async def contend(endpoint: str, name: str, rounds: int, hold_ms: float) -> None:
    """One contender process: ``rounds`` turns, one JSON line per acquire and release."""
    async with AsyncClient(endpoint) as client:
        lock = client.lock(name, ttl=10, timeout=60)
        print(json.dumps({"ready": True}), flush=True)
        for _ in range(rounds):
            await lock.acquire()
            got = time.monotonic()
            print(json.dumps({"acquired": got, "token": lock.fencing_token}), flush=True)
            await asyncio.sleep(hold_ms / 1000.0)
            released = time.monotonic()
            await lock.release()
            print(json.dumps({"released": released}), flush=True)


async def handoff(env: Env, params: dict[str, Any]) -> None:
    handoffs = int(params["handoffs"])
    rounds = handoffs // 2 + 2
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.lock",
            "contend",
            env.endpoint,
            NAME,
            str(rounds),
            str(HOLD_MS),
            stdout=asyncio.subprocess.PIPE,
            env=child_env(),
        )
        for _ in range(2)
    ]
    events: list[tuple[float, str, int, int]] = []  # (time, kind, process, token)
    try:
        outs = await asyncio.gather(*(p.communicate() for p in procs))
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
    for i, (out, _err) in enumerate(outs):
        for line in out.decode().splitlines():
            ev = json.loads(line)
            if "acquired" in ev:
                events.append((ev["acquired"], "acquired", i, ev["token"]))
            elif "released" in ev:
                events.append((ev["released"], "released", i, 0))
    if any(p.returncode != 0 for p in procs):
        raise RuntimeError(f"a contender failed: exit statuses {[p.returncode for p in procs]}")
    events.sort()
    lat: list[float] = []
    tokens = [e[3] for e in events if e[1] == "acquired"]
    for prev, cur in itertools.pairwise(events):
        if prev[1] == "released" and cur[1] == "acquired" and prev[2] != cur[2]:
            lat.append(cur[0] - prev[0])
    lat = lat[:handoffs]
    figures = {
        "handoffs": len(lat),
        "p50_ms": ms(percentile(lat, 50)),
        "p99_ms": ms(percentile(lat, 99)),
        "max_ms": ms(max(lat)),
        "tokens_increasing": int(all(a < b for a, b in itertools.pairwise(tokens))),
    }
    env.emit(
        result(
            "lock",
            "handoff",
            params,
            figures,
            [Goal("p50_ms", "<=", 3.0), Goal("tokens_increasing", ">=", 1)],
            notes=f"two processes, hold {HOLD_MS:g} ms; release() call -> other's acquire()",
        )
    )


# -- herd -----------------------------------------------------------------------------------------


async def herd(env: Env, params: dict[str, Any]) -> None:
    waiters = int(params["waiters"])
    clients = [AsyncClient(env.endpoint) for _ in range(CLIENTS)]
    for c in clients:
        await c.connect()
    try:
        holder = clients[0].lock(NAME)
        await holder.acquire()
        base_watchers = await metric(env, "etcd_debugging_mvcc_watcher_total")
        locks = [clients[i % CLIENTS].lock(NAME, timeout=120) for i in range(waiters)]
        done_at: list[float] = []

        async def turn(i: int) -> None:
            await locks[i].acquire()
            done_at.append(time.monotonic())
            await locks[i].release()

        t0 = time.monotonic()
        tasks = [asyncio.create_task(turn(i)) for i in range(waiters)]
        while True:
            queued = (await clients[0].get_prefix(NAME + "/", keys_only=True)).kvs
            if len(queued) > waiters:
                break
            await asyncio.sleep(0.05)
        setup_s = time.monotonic() - t0
        await asyncio.sleep(0.5)  # every waiter is watching now
        watchers = await metric(env, "etcd_debugging_mvcc_watcher_total") - base_watchers
        events0 = await metric(env, "etcd_debugging_mvcc_events_total")
        progress(f"  {waiters} waiters queued in {setup_s:.2f} s; {watchers:g} watchers")
        t1 = time.monotonic()
        await holder.release()
        await asyncio.gather(*tasks)
        chain_s = time.monotonic() - t1
        events = await metric(env, "etcd_debugging_mvcc_events_total") - events0
    finally:
        for c in clients:
            await c.close()
    wakeups = sum(lock.wakeups for lock in locks)
    figures = {
        "waiters": waiters,
        "handoffs": waiters,
        "wakeups_per_handoff": round(wakeups / waiters, 3),
        "etcd_events_per_handoff": round(events / waiters, 3),
        "watchers_while_waiting": watchers,
        "queue_setup_s": round(setup_s, 3),
        "chain_mean_handoff_ms": ms(chain_s / waiters),
    }
    env.emit(
        result(
            "lock",
            "herd",
            params,
            figures,
            [Goal("wakeups_per_handoff", "<=", 1.0)],
            notes="each waiter watches only the key before its own; a herd would wake every "
            "waiter on every release",
        )
    )


# -- uncontended ----------------------------------------------------------------------------------


async def uncontended(env: Env, params: dict[str, Any]) -> None:
    rounds = int(params["rounds"])
    hold_s = float(params.get("hold_ms", 2)) / 1000.0
    both: list[float] = []
    acq: list[float] = []
    rel: list[float] = []
    async with AsyncClient(env.endpoint) as client:
        lock = client.lock(NAME)
        for i in range(rounds + 10):
            t0 = time.perf_counter()
            await lock.acquire()
            t1 = time.perf_counter()
            # held as a short critical section is (not timed): a hold released in the turn
            # it began never starts its watch of its key
            await asyncio.sleep(hold_s)
            t2 = time.perf_counter()
            await lock.release()
            t3 = time.perf_counter()
            if i >= 10:  # warm-up
                both.append(t1 - t0 + t3 - t2)
                acq.append(t1 - t0)
                rel.append(t3 - t2)
    figures = {
        "rounds": rounds,
        "p50_ms": ms(percentile(both, 50)),
        "p99_ms": ms(percentile(both, 99)),
        "acquire_p50_ms": ms(percentile(acq, 50)),
        "release_p50_ms": ms(percentile(rel, 50)),
    }
    env.emit(result("lock", "uncontended", params, figures, notes="acquire() + release()"))


async def run(env: Env, params: dict[str, Any]) -> None:
    case = params["case"]
    if case == "handoff":
        await handoff(env, params)
    elif case == "herd":
        await herd(env, params)
    elif case == "uncontended":
        await uncontended(env, params)
    else:
        raise ValueError(f"unknown lock case {case!r}")


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "contend":
        _, _, endpoint, name, rounds, hold = sys.argv
        asyncio.run(contend(endpoint, name, int(rounds), float(hold)))
    else:
        sys.exit("usage: python -m bench.lock contend ENDPOINT NAME ROUNDS HOLD_MS")
