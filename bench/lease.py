"""Scenario ``lease``: PersistentLease recovery, and the idle cost of many leases.

- ``recovery``: one ``persistent_lease(key, value, ttl=10)``; a second client deletes the key
  (CYCLES times), then revokes the lease (CYCLES times). Recovery is the time from calling
  ``delete``/``revoke`` to the lease's state listener seeing REGISTERED again after LOST; each
  cycle then checks the key holds the value under the lease's current id. Then RESTARTS
  times: kill -9 the etcd server, wait for SUSPENDED, restart it, and time from the server
  answering again to REGISTERED.
- ``idle``: LEASES persistent leases (ttl=10) on one client, all registered; then this
  process's CPU time over SECONDS of idleness, in % of one core. The etcd server is another
  process and is not counted (its own CPU is reported next to it when known).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psutil

from bench._common import Env, Goal, Job, ms, percentile, progress, result
from etcdkit import AsyncClient, LeaseState, PersistentLease

PREFIX = b"/bench/lease/"
TTL = 10
BACK_TIMEOUT = 30.0


def jobs(quick: bool) -> list[Job]:
    if quick:
        return [
            Job("lease", {"case": "recovery", "cycles": 5, "restarts": 1}),
            Job("lease", {"case": "idle", "leases": 200, "seconds": 3.0}),
        ]
    return [
        Job("lease", {"case": "recovery", "cycles": 20, "restarts": 3}),
        Job("lease", {"case": "idle", "leases": 1_000, "seconds": 10.0}),
    ]


class Transitions:
    """The lease's state changes with their time, as its listener saw them."""

    def __init__(self, lease: PersistentLease) -> None:
        self.seen: list[tuple[LeaseState, float]] = []
        self._changed = asyncio.Event()
        lease.add_listener(self._on_state)

    def _on_state(self, state: LeaseState) -> None:
        self.seen.append((state, time.perf_counter()))
        self._changed.set()

    def mark(self) -> int:
        return len(self.seen)

    async def back_after(self, mark: int, via: frozenset[LeaseState]) -> float:
        """When the lease became REGISTERED after being in one of ``via``, since ``mark``."""
        async with asyncio.timeout(BACK_TIMEOUT):
            while True:
                left = False
                for state, at in self.seen[mark:]:
                    if state in via:
                        left = True
                    elif state is LeaseState.REGISTERED and left:
                        return at
                self._changed.clear()
                await self._changed.wait()


async def recovery(env: Env, params: dict[str, Any]) -> None:
    cycles, restarts = int(params["cycles"]), int(params["restarts"])
    key = PREFIX + b"node"
    value = b"10.0.0.1:80"
    lost = frozenset({LeaseState.LOST})
    results: dict[str, list[float]] = {"delete": [], "revoke": [], "restart": []}
    async with (
        AsyncClient(env.endpoint) as client,
        AsyncClient(env.endpoint) as admin,
        client.persistent_lease(key, value, ttl=TTL) as lease,
    ):
        log = Transitions(lease)
        await lease.registered(timeout=BACK_TIMEOUT)
        for kind in ("delete", "revoke"):
            for _ in range(cycles):
                old = lease.lease_id
                mark = log.mark()
                t0 = time.perf_counter()
                if kind == "delete":
                    await admin.delete(key)
                else:
                    await admin.revoke(old)
                back = await log.back_after(mark, lost)
                results[kind].append(back - t0)
                kv = await admin.get(key)
                if kv is None or kv.value != value or kv.lease != lease.lease_id:
                    raise RuntimeError(f"after {kind}: key is {kv!r}, lease {lease!r}")
                if kind == "revoke" and lease.lease_id == old:
                    raise RuntimeError("after revoke: the lease id did not change")
                await asyncio.sleep(0.05)
        for i in range(restarts):
            mark = log.mark()
            await asyncio.to_thread(env.server.kill)
            await lease.wait_state(LeaseState.SUSPENDED, LeaseState.LOST, timeout=BACK_TIMEOUT)
            await asyncio.to_thread(env.server.restart)
            t_up = time.perf_counter()
            back = await log.back_after(mark, frozenset({LeaseState.SUSPENDED, LeaseState.LOST}))
            results["restart"].append(back - t_up)
            progress(f"lease: restart {i + 1}: back {back - t_up:.3f} s after etcd answered")
            kv = await admin.get(key)
            if kv is None or kv.value != value or kv.lease != lease.lease_id:
                raise RuntimeError(f"after restart: key is {kv!r}, lease {lease!r}")
    for kind, goal in (("delete", True), ("revoke", True), ("restart", False)):
        values = results[kind]
        if not values:
            continue
        figures: dict[str, Any] = {"p50_ms": ms(percentile(values, 50)), "max_ms": ms(max(values))}
        figures["samples"] = len(values)
        progress(f"lease {kind} recovery: {figures}")
        env.emit(
            result(
                "lease",
                f"{kind}_recovery",
                {**params, "ttl": TTL},
                figures,
                [Goal("p50_ms", "<=", 10.0)] if goal else [],
                notes=(
                    "from etcd answering again after a restart (restart() returned) to REGISTERED"
                    if kind == "restart"
                    else f"from calling {kind}() to REGISTERED again"
                ),
            )
        )


async def idle(env: Env, params: dict[str, Any]) -> None:
    count, seconds = int(params["leases"]), float(params["seconds"])
    server_proc = _server_process(env.server)
    async with AsyncClient(env.endpoint) as client:
        leases = [
            client.persistent_lease(PREFIX + b"idle/n%05d" % i, b"10.0.0.1:80", ttl=TTL)
            for i in range(count)
        ]
        t0 = time.monotonic()
        for lease in leases:
            lease.start()
        try:
            await asyncio.gather(*(lease.registered(timeout=120.0) for lease in leases))
            registered_s = time.monotonic() - t0
            progress(f"lease idle: {count} leases registered in {registered_s:.2f} s")
            await asyncio.sleep(1.0)  # let the registrations' last answers settle
            etcd0 = _cpu(server_proc)
            cpu0, w0 = time.process_time(), time.monotonic()
            await asyncio.sleep(seconds)
            cpu1, w1 = time.process_time(), time.monotonic()
            etcd1 = _cpu(server_proc)
            not_registered = sum(lease.state is not LeaseState.REGISTERED for lease in leases)
        finally:
            await asyncio.gather(*(lease.aclose() for lease in leases))
    figures: dict[str, Any] = {
        "cpu_pct": round((cpu1 - cpu0) / (w1 - w0) * 100.0, 3),
        "cpu_s": round(cpu1 - cpu0, 4),
        "wall_s": round(w1 - w0, 3),
        "registered_s": round(registered_s, 3),
        "not_registered_at_end": not_registered,
    }
    if etcd0 is not None and etcd1 is not None:
        figures["etcd_cpu_pct"] = round((etcd1 - etcd0) / (w1 - w0) * 100.0, 3)
    progress(f"lease idle: {figures}")
    env.emit(
        result(
            "lease",
            "idle_cpu",
            {**params, "ttl": TTL},
            figures,
            [Goal("cpu_pct", "<=", 2.0)] if count >= 1000 else [],
            notes="this process's CPU (time.process_time) over the idle period / wall time; "
            "etcd_cpu_pct is the server process, not counted",
        )
    )


def _server_process(server: Any) -> Any:
    pid = getattr(server, "pid", None)
    if not isinstance(pid, int):
        proc = getattr(server, "process", None) or getattr(server, "proc", None)
        pid = getattr(proc, "pid", None)
    if not isinstance(pid, int):
        return None
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def _cpu(proc: Any) -> float | None:
    if proc is None:
        return None
    try:
        t = proc.cpu_times()
    except psutil.Error:
        return None
    return float(t.user + t.system)


async def run(env: Env, params: dict[str, Any]) -> None:
    if params["case"] == "recovery":
        await recovery(env, params)
    else:
        await idle(env, params)
