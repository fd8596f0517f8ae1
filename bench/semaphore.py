"""Scenario ``semaphore``: permit hand-off latency between processes, against the lock's in the
same run (the baseline), and the uncontended cost.

- ``handoff``: two contender processes (``python -m bench.semaphore contend ...``) take turns on
  a semaphore of one permit: acquire, hold HOLD_MS, release, queue again. A hand-off is the
  time from one process calling ``release()`` to the other's ``acquire()`` returning: the
  revoke reaching etcd, the first waiter's watch on the holders firing, its promotion
  transaction. Then the same two processes do the same on a lock (``etcd.lock``), in the same
  job, against the same etcd: ``lock_p50_ms`` and ``ratio_p50`` put the figure in context on
  a machine whose load varies from run to run.
- ``uncontended``: one process, nobody else: ``acquire()`` + ``release()`` p50/p99 (a lease
  grant, the join transaction, the promotion; then the revoke), and the lock's alongside.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncio
import itertools
import json
import time
from typing import Any, Literal

from bench._common import Env, Goal, Job, child_env, ms, percentile, result
from etcdkit import AsyncClient

NAME = "/bench/semaphore/x"
HOLD_MS = 10.0

Kind = Literal["semaphore", "lock"]


def jobs(quick: bool) -> list[Job]:
    return [
        Job("semaphore", {"case": "handoff", "handoffs": 60 if quick else 400}),
        Job("semaphore", {"case": "uncontended", "rounds": 100 if quick else 500}),
    ]


async def contend(endpoint: str, kind: Kind, name: str, rounds: int, hold_ms: float) -> None:
    """One contender process: ``rounds`` turns, one JSON line per acquire and release."""
    async with AsyncClient(endpoint) as client:
        sem = client.semaphore(name, 1, ttl=10, timeout=60)
        lock = client.lock(name, ttl=10, timeout=60)
        print(json.dumps({"ready": True}), flush=True)
        for _ in range(rounds):
            held = await (sem.acquire() if kind == "semaphore" else lock.acquire())
            got = time.monotonic()
            print(json.dumps({"acquired": got, "token": held.fencing_token}), flush=True)
            await asyncio.sleep(hold_ms / 1000.0)
            released = time.monotonic()
            await held.release()
            print(json.dumps({"released": released}), flush=True)


async def handoffs(env: Env, kind: Kind, count: int) -> tuple[list[float], bool]:
    """``count`` hand-offs between two processes; (latencies, tokens increasing)."""
    rounds = count // 2 + 2
    name = f"{NAME}-{kind}"
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.semaphore",
            "contend",
            env.endpoint,
            kind,
            name,
            str(rounds),
            str(HOLD_MS),
            stdout=asyncio.subprocess.PIPE,
            env=child_env(),
        )
        for _ in range(2)
    ]
    try:
        outs = await asyncio.gather(*(p.communicate() for p in procs))
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
    if any(p.returncode != 0 for p in procs):
        raise RuntimeError(f"a contender failed: exit statuses {[p.returncode for p in procs]}")
    events: list[tuple[float, str, int, int]] = []  # (time, kind, process, token)
    for i, (out, _err) in enumerate(outs):
        for line in out.decode().splitlines():
            ev = json.loads(line)
            if "acquired" in ev:
                events.append((ev["acquired"], "acquired", i, ev["token"]))
            elif "released" in ev:
                events.append((ev["released"], "released", i, 0))
    events.sort()
    lat = [
        cur[0] - prev[0]
        for prev, cur in itertools.pairwise(events)
        if prev[1] == "released" and cur[1] == "acquired" and prev[2] != cur[2]
    ]
    tokens = [e[3] for e in events if e[1] == "acquired"]
    return lat[:count], all(a < b for a, b in itertools.pairwise(tokens))


async def handoff(env: Env, params: dict[str, Any]) -> None:
    count = int(params["handoffs"])
    sem, sem_ordered = await handoffs(env, "semaphore", count)
    lock, _ = await handoffs(env, "lock", count)
    figures = {
        "handoffs": len(sem),
        "p50_ms": ms(percentile(sem, 50)),
        "p99_ms": ms(percentile(sem, 99)),
        "max_ms": ms(max(sem)),
        "lock_p50_ms": ms(percentile(lock, 50)),
        "lock_p99_ms": ms(percentile(lock, 99)),
        "ratio_p50": round(percentile(sem, 50) / percentile(lock, 50), 3),
        "tokens_increasing": int(sem_ordered),
    }
    env.emit(
        result(
            "semaphore",
            "handoff",
            params,
            figures,
            [Goal("p50_ms", "<=", 3.0), Goal("tokens_increasing", ">=", 1)],
            notes=f"two processes, one permit, hold {HOLD_MS:g} ms; release() call -> other's "
            "acquire(); lock_*: the same processes on etcd.lock, same etcd, same job",
        )
    )


async def uncontended(env: Env, params: dict[str, Any]) -> None:
    rounds = int(params["rounds"])
    figures: dict[str, Any] = {"rounds": rounds}
    async with AsyncClient(env.endpoint) as client:
        for kind in ("semaphore", "lock"):
            both: list[float] = []
            sem = client.semaphore(f"{NAME}-u", 1)
            lock = client.lock(f"{NAME}-u")
            for i in range(rounds + 10):
                t0 = time.perf_counter()
                held = await (sem.acquire() if kind == "semaphore" else lock.acquire())
                await held.release()
                if i >= 10:  # warm-up
                    both.append(time.perf_counter() - t0)
            pre = "" if kind == "semaphore" else "lock_"
            figures[f"{pre}p50_ms"] = ms(percentile(both, 50))
            figures[f"{pre}p99_ms"] = ms(percentile(both, 99))
    env.emit(result("semaphore", "uncontended", params, figures, notes="acquire() + release()"))


async def run(env: Env, params: dict[str, Any]) -> None:
    case = params["case"]
    if case == "handoff":
        await handoff(env, params)
    elif case == "uncontended":
        await uncontended(env, params)
    else:
        raise ValueError(f"unknown semaphore case {case!r}")


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "contend":
        _, _, endpoint, kind, name, rounds, hold = sys.argv
        assert kind in ("semaphore", "lock")
        asyncio.run(contend(endpoint, kind, name, int(rounds), float(hold)))  # type: ignore[arg-type]
    else:
        sys.exit("usage: python -m bench.semaphore contend ENDPOINT semaphore|lock NAME ROUNDS MS")
