"""Scenario ``recipes``: throughput of the queue, the counter and the STM (issue 23), each
with its own clients in one process against one etcd.

- ``queue``: 4 producers and 4 consumers, each on a client of its own, move N items through
  one queue; items/s from the first put to the last get, and the put -> get latency p50/p99.
- ``counter``: 8 contenders, each on a client of its own, add 1 until N adds are done;
  adds/s, conflicts retried per add, and the final value checked against N.
- ``stm``: 8 workers, each on a client of its own, make N random transfers between 16
  accounts (``serializable_snapshot``); transfers/s, and the sum checked at the end.

No baseline peer has these recipes (Go's are not run here); the figures are throughputs on
this machine, to compare with earlier runs of the same scenario.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncio
import contextlib
import random
import time
from typing import Any

from bench._common import Env, Job, ms, percentile, result
from etcdkit import AsyncClient, Stm

WORKERS = 8
ACCOUNTS = 16
START = 1000


def jobs(quick: bool) -> list[Job]:
    n = 300 if quick else 4000
    return [
        Job("recipes", {"case": "queue", "items": n, "producers": 4, "consumers": 4}),
        Job("recipes", {"case": "counter", "adds": n, "contenders": WORKERS}),
        Job("recipes", {"case": "stm", "transfers": n // 2, "workers": WORKERS}),
    ]


async def clients(env: Env, n: int, stack: contextlib.AsyncExitStack) -> list[AsyncClient]:
    return [await stack.enter_async_context(AsyncClient(env.endpoint)) for _ in range(n)]


async def queue_case(env: Env, params: dict[str, Any]) -> None:
    items, producers, consumers = int(params["items"]), params["producers"], params["consumers"]
    name = f"/bench/recipes/queue-{time.monotonic_ns()}"
    latencies: list[float] = []
    got = 0
    done = asyncio.Event()
    async with contextlib.AsyncExitStack() as stack:
        cs = await clients(env, producers + consumers, stack)

        async def produce(i: int) -> None:
            q = cs[i].queue(name)
            for n in range(i, items, producers):
                await q.put(f"{time.monotonic()}:{n}")

        async def consume(i: int) -> None:
            nonlocal got
            q = cs[producers + i].queue(name)
            while not done.is_set():
                try:
                    value = await q.get(timeout=1.0)
                except TimeoutError:
                    continue
                latencies.append(time.monotonic() - float(value.split(b":")[0]))
                got += 1
                if got >= items:
                    done.set()

        t0 = time.monotonic()
        workers = [asyncio.create_task(consume(i)) for i in range(consumers)]
        await asyncio.gather(*(produce(i) for i in range(producers)))
        await asyncio.wait_for(done.wait(), timeout=300)
        took = time.monotonic() - t0
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    figures = {
        "items": got,
        "items_per_s": round(got / took),
        "latency_p50_ms": ms(percentile(latencies, 50)),
        "latency_p99_ms": ms(percentile(latencies, 99)),
    }
    notes = f"{producers} producers, {consumers} consumers, one client each"
    env.emit(result("recipes", "queue", params, figures, notes=notes))


async def counter_case(env: Env, params: dict[str, Any]) -> None:
    adds, contenders = int(params["adds"]), int(params["contenders"])
    key = f"/bench/recipes/counter-{time.monotonic_ns()}"
    left = adds
    async with contextlib.AsyncExitStack() as stack:
        cs = await clients(env, contenders, stack)

        async def add(c: AsyncClient) -> None:
            nonlocal left
            counter = c.counter(key)
            while left > 0:
                left -= 1
                await counter.add(1)

        t0 = time.monotonic()
        await asyncio.gather(*(add(c) for c in cs))
        took = time.monotonic() - t0
        final = await cs[0].counter(key).value()
        mods = (await cs[0].range(key)).kvs[0].version
    figures = {
        "adds": adds,
        "adds_per_s": round(adds / took),
        "final_value_ok": int(final == adds),
        "versions": mods,
    }
    env.emit(result("recipes", "counter", params, figures, notes=f"{contenders} contenders"))


async def stm_case(env: Env, params: dict[str, Any]) -> None:
    transfers, workers = int(params["transfers"]), int(params["workers"])
    prefix = f"/bench/recipes/stm-{time.monotonic_ns()}/"
    left = transfers
    rng = random.Random(20261204)
    async with contextlib.AsyncExitStack() as stack:
        cs = await clients(env, workers, stack)
        for a in range(ACCOUNTS):
            await cs[0].put(f"{prefix}{a}", str(START))

        async def work(c: AsyncClient) -> None:
            nonlocal left
            while left > 0:
                left -= 1
                src, dst = rng.sample(range(ACCOUNTS), 2)

                async def move(stm: Stm, src: int = src, dst: int = dst) -> None:
                    have = int(await stm.get(f"{prefix}{src}") or b"0")
                    if have >= 1:
                        other = int(await stm.get(f"{prefix}{dst}") or b"0")
                        stm.put(f"{prefix}{src}", str(have - 1))
                        stm.put(f"{prefix}{dst}", str(other + 1))

                await c.stm(move)

        t0 = time.monotonic()
        await asyncio.gather(*(work(c) for c in cs))
        took = time.monotonic() - t0
        res = await cs[0].range(prefix, prefix=True)
        total = sum(int(kv.value) for kv in res.kvs)
    figures = {
        "transfers": transfers,
        "transfers_per_s": round(transfers / took),
        "sum_ok": int(total == ACCOUNTS * START),
    }
    notes = f"{workers} workers, {ACCOUNTS} accounts, serializable_snapshot"
    env.emit(result("recipes", "stm", params, figures, notes=notes))


async def run(env: Env, params: dict[str, Any]) -> None:
    case = params["case"]
    if case == "queue":
        await queue_case(env, params)
    elif case == "counter":
        await counter_case(env, params)
    elif case == "stm":
        await stm_case(env, params)
    else:
        raise ValueError(f"unknown recipes case {case!r}")
