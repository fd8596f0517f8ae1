"""What every part of one chaos run shares, and how a part reports.

:class:`Run` holds the run's seed, config, report, key prefixes, clients, history and the
context (the fault active or last healed); the writer, the checkers and the faults each take it
as ``run``. It records a mismatch or a timeline event, retries an oracle-side request while
etcd is unreachable (:data:`UNCERTAIN`, :func:`is_uncertain`: the errors after which a request
may or may not have been applied), and owns background tasks whose crash is a mismatch.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import grpc.aio

import etcdkit
from bench.chaos.history import EventLog, History
from bench.chaos.report import ChaosConfig, ChaosReport, Mismatch
from etcdkit import AsyncClient, PersistentLease
from etcdkit.server import EtcdCluster, Proxy

log = logging.getLogger("etcdkit.chaos")

UNCERTAIN = (etcdkit.ConnectionUnavailableError, etcdkit.EtcdTimeoutError)


def is_uncertain(exc: grpc.aio.AioRpcError) -> bool:
    return exc.code() in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
    )


class Run:
    """One chaos run's shared state and bookkeeping (see :mod:`bench.chaos`)."""

    def __init__(
        self,
        seed: int,
        duration: float,
        cfg: ChaosConfig,
        report: ChaosReport,
        cluster: EtcdCluster,
        proxies: list[Proxy],
        progress: Callable[[str], None] | None,
    ) -> None:
        self.seed = seed
        self.duration = duration
        self.cfg = cfg
        self.report = report
        self.cluster = cluster
        self.proxies = proxies
        self.progress = progress
        root = f"/chaos/{seed}-{uuid.uuid4().hex[:6]}/"
        self.data = root + "data/"
        self.lease_prefix = root + "leases/"
        self.wait_prefix = root + "wait/"
        self.fence_key = root + "fence"
        self.history = History()
        self.events = EventLog()
        self.context = "starting"
        self.t0 = time.monotonic()
        self.stop = asyncio.Event()
        self.direct: AsyncClient
        self.client: AsyncClient
        self.leases: list[PersistentLease] = []

    # -- bookkeeping ------------------------------------------------------------------------------

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def mismatch(self, kind: str, where: str, revision: int, detail: str) -> None:
        m = Mismatch(
            kind, self.seed, round(self.elapsed(), 2), where, revision, detail, self.context
        )
        self.report.mismatch_count += 1
        if kind.startswith("raw-"):
            self.report.raw_watch_mismatches += 1
        if len(self.report.mismatches) < self.cfg.max_recorded:
            self.report.mismatches.append(m)
        log.error("chaos mismatch: %s", m)
        self.event(f"MISMATCH {m}")

    def event(self, text: str) -> None:
        self.report.timeline.append(f"t={self.elapsed():7.2f} {text}")
        if len(self.report.timeline) > 2000:
            del self.report.timeline[:1000]

    async def retry(self, fn: Callable[[], Awaitable[Any]], limit: float = 120.0) -> Any:
        """``fn()`` retried while etcd is unreachable (oracle side; faults are bounded)."""
        deadline = time.monotonic() + limit
        while True:
            try:
                return await fn()
            except (*UNCERTAIN, grpc.aio.AioRpcError) as exc:
                if isinstance(exc, grpc.aio.AioRpcError) and not is_uncertain(exc):
                    raise
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)

    # -- background tasks -------------------------------------------------------------------------

    def spawn(self, coro: Awaitable[None], name: str) -> asyncio.Task[None]:
        async def guarded() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                tb = "".join(traceback.format_exception(exc)[-3:])
                self.mismatch("harness", name, 0, f"task crashed: {exc!r}\n{tb}")

        return asyncio.get_running_loop().create_task(guarded(), name=f"chaos-{name}")

    async def settle(self, tasks: list[asyncio.Task[None]], timeout: float) -> None:
        _done, pending = await asyncio.wait(tasks, timeout=timeout)
        for t in pending:
            self.mismatch("harness", t.get_name(), 0, f"did not stop within {timeout} s")
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
