"""The run from start to end: set up the cluster, start every part, inject faults, tear down.

:func:`run_chaos` starts a 3-member cluster with one proxy in front of each member, connects
the client under test through the proxies and the oracle side directly, starts the writer, the
consumers (``watch_prefix`` and raw ``watch``), the checkers, the ``wait_for`` callers and the
PersistentLeases, lets the faults run for the asked duration, then checks convergence, the
writer's event log against etcd's replay, etcd's own consistency, and that closing leaves no
lease key and no etcdkit task behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import etcdkit._watch
from bench.chaos.checker import Checker
from bench.chaos.faults import Faults, kill_signal_for
from bench.chaos.history import transform
from bench.chaos.raw import RawChecker
from bench.chaos.report import FAULTS, ChaosConfig, ChaosReport
from bench.chaos.state import Run
from bench.chaos.writer import Writer
from etcdkit import AsyncClient, PrefixWatch
from etcdkit.server import EtcdCluster, Proxy


async def run_chaos(
    seed: int,
    duration: float,
    *,
    config: ChaosConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> ChaosReport:
    """Run the checker for ``duration`` seconds of faults (plus start-up and convergence).

    Starts its own 3-member cluster and proxies and tears them down. ``progress`` receives a
    line now and then (the soak command prints them). Never raises for a violated guarantee:
    read ``report.mismatches``.
    """
    cfg = config or ChaosConfig()
    unknown = set(cfg.faults) - set(FAULTS)
    if unknown:
        raise ValueError(f"unknown faults {sorted(unknown)}; choose from {FAULTS}")
    report = ChaosReport(seed=seed, duration=duration)
    started = time.monotonic()
    cluster = EtcdCluster(size=3)
    report.etcd_version = cluster.members[0].version
    report.kill_signal = kill_signal_for(cfg.kill_signal, report.etcd_version)
    bound = etcdkit._watch.MAX_BUFFERED, etcdkit._watch.RESUME_BELOW
    await asyncio.to_thread(cluster.start)
    try:
        proxies = [Proxy(m.endpoint) for m in cluster.members]
        try:
            if cfg.raw_buffer:
                etcdkit._watch.MAX_BUFFERED = cfg.raw_buffer
                etcdkit._watch.RESUME_BELOW = cfg.raw_buffer // 4
            run = Run(seed, duration, cfg, report, cluster, proxies, progress)
            await _main(run)
        finally:
            etcdkit._watch.MAX_BUFFERED, etcdkit._watch.RESUME_BELOW = bound
            for p in proxies:
                p.close()
    finally:
        await asyncio.to_thread(cluster.close)
    report.elapsed = time.monotonic() - started
    return report


async def _main(run: Run) -> None:
    """Connect, start every part, inject the faults, then check the end state."""
    cfg = run.cfg
    endpoints = [p.endpoint for p in run.proxies]
    async with (
        AsyncClient(run.cluster.endpoints) as direct,
        AsyncClient(endpoints) as client,
        contextlib.AsyncExitStack() as stack,
    ):
        run.direct, run.client = direct, client
        checker = Checker(run)
        raw = RawChecker(run)
        writer = Writer(run)
        await writer.start()
        faults = Faults(run, writer, checker, raw)
        watches: dict[str, PrefixWatch[Any, Any]] = {}
        for i in range(cfg.consumers):
            name = "slow" if i == cfg.consumers - 1 else f"c{i}"
            watches[name] = await stack.enter_async_context(
                client.watch_prefix(run.data, transform)
            )
        for c in raw.open(client):
            await stack.enter_async_context(c.watch)
        observer = await stack.enter_async_context(direct.watch_prefix(run.lease_prefix))
        for i in range(cfg.leases):
            ttl = cfg.lease_ttls[i % len(cfg.lease_ttls)]
            lease = client.persistent_lease(f"{run.lease_prefix}l{i}", f"{i}:0", ttl=ttl)
            run.leases.append(await stack.enter_async_context(lease))
        async with asyncio.timeout(60):
            for lease in run.leases:
                await lease.registered()
        tasks = [
            run.spawn(checker.consume(name, w, run.data, slow=name == "slow"), name)
            for name, w in watches.items()
        ]
        tasks += [run.spawn(raw.consume(c), c.name) for c in raw.consumers]
        tasks.append(run.spawn(checker.consume("leases", observer, run.lease_prefix), "obs"))
        tasks.append(run.spawn(checker.check_loop(), "checker"))
        writing = run.spawn(writer.loop(run.stop), "writer")
        waiters = [run.spawn(checker.wait_caller(i), f"wait{i}") for i in range(cfg.wait_callers)]
        run.event("started")
        try:
            await faults.loop()
        finally:
            run.stop.set()
            run.context = "final"
            await run.settle([writing, *waiters], 90.0)
            async with writer.gate:
                await writer.mark()  # the newest data event is in the log: replays stop there
        await checker.converge(watches)
        await raw.converge()
        await raw.verify_log()
        await checker.members_agree()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(60):
                await checker.queue.join()
        for name, w in [*watches.items(), ("leases", observer)]:
            st = w.stats
            run.report.watch_stats[name] = {
                "events": st.events,
                "snapshots": st.snapshots,
                "relists": st.relists,
                "disconnects": st.disconnects,
                "invalid_records": st.invalid_records,
            }
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await stack.aclose()  # watches and leases closed (leases revoked) while etcd is up
        left = await run.retry(lambda: direct.get_prefix(run.lease_prefix))
        if left.kvs:
            keys = [kv.key.decode() for kv in left.kvs]
            run.mismatch("lease-close", "leases", left.revision, f"still there: {keys}")
    await asyncio.sleep(0)
    names = sorted(t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("etcdkit"))
    if names:
        run.mismatch("task-leak", "clients", 0, f"tasks left after close: {names}")
