"""The fault and correctness checker: every snapshot exact, through real faults, on real etcd.

``await run_chaos(seed, duration)`` returns a :class:`ChaosReport`. ``tests/test_chaos.py`` runs
it briefly in CI (``pytest -m chaos``); ``python -m bench.soak --minutes N`` runs it longer.

The set-up: a 3-member :class:`~etcdkit.server.EtcdCluster` on loopback, one
:class:`~etcdkit.server.Proxy` in front of each member. The *client under test* reaches the
members only through the proxies ("cut the client's connection" = cut every proxy); the oracle
side (writer, checker, lease observer) talks to the members directly.

- **Writer**: one sequential task, so its history is exact. Random puts, deletes, range
  deletes, multi-key txns, values the transform rejects, lease-attached keys and revokes, all
  under ``data/``. Every data write is a txn guarded by a *fence* key (``value(fence) == id of
  the last op``) that also moves the fence to its own id. An op with an unknown outcome
  (timeout, unavailable) is resolved before the next: read the fence; if it holds the op's id
  the op landed, at the fence's mod revision; otherwise a "burn" txn moves the fence on, so the
  op can never land later. (A request parked in a SIGSTOPped member is applied seconds after
  the client gave up; without the fence it would rewrite history behind the model's back.)
  A revoke with an unknown outcome is retried until definite; if an earlier attempt had
  landed, its revision is found by bisecting ``get_prefix`` (no compaction runs meanwhile).
  The history, revision -> transformed tree, is therefore exact, not a guess.
- **Under test**, at once: ``watch_prefix`` consumers on ``data/`` (the last one slow),
  ``wait_for`` callers on ``wait/``, and PersistentLeases on ``leases/``, followed by a
  ``watch_prefix`` on a direct client.
- **Faults**, one at a time, each bounded and healed in ``finally``: kill -9 and restart a
  member (or the leader), SIGSTOP/SIGCONT a member (or the leader), black-hole the client's
  connections (briefly, or past the keepalive detection time), black-hole one of its links,
  reset its connections, compact to the current revision, and a full outage (every member
  down) with recovery.
- **Checker**: every delivered snapshot's tree equals the transform of ``get_prefix`` at its
  revision, or, once that revision is compacted, the writer's history; revisions never go
  back; ``changes`` turn the consumer's previous tree into this one. After each fault heals:
  every PersistentLease is back (state REGISTERED, its value visible to the observer, its own
  lease on the key) within its ttl + a bound, and every consumer reaches the revision written
  before the heal within a bound. ``wait_for`` never returns before its condition held and
  returns within a bound after. At the end every consumer converges to the final state, and
  closing leaves no lease key and no etcdkit task behind.

Every mismatch is recorded with the run's seed. The seed fixes every random choice (ops,
faults, durations, delays) per component; timing still varies, so a replay reproduces the
same schedule, not the same interleaving.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import functools
import json
import logging
import random
import re
import statistics
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import grpc
import grpc.aio
from aetcd import rpc

import etcdkit
from etcdkit import AsyncClient, ChangeKind, LeaseState, PersistentLease, PrefixWatch, Snapshot
from etcdkit.server import EtcdCluster, EtcdServer, Proxy

__all__ = ["FAULTS", "ChaosConfig", "ChaosReport", "Mismatch", "run_chaos", "transform"]

log = logging.getLogger("etcdkit.chaos")

Tree = dict[str, int]
Raw = dict[bytes, tuple[bytes, int]]  # key -> (value, lease id) as etcd stores it

FAULTS = (
    "kill_member",
    "kill_leader",
    "pause_member",
    "pause_leader",
    "cut_client",
    "cut_client_long",
    "cut_one_link",
    "drop_client",
    "compact",
    "full_outage",
)
DATA_LEASE_TTL = 86_400  # data-prefix leases are only ever revoked, never left to expire
INVALID_VALUES = (b"not-int", b"", b"1.5", b"0x1f", b"seven")
_UNCERTAIN = (etcdkit.ConnectionUnavailableError, etcdkit.EtcdTimeoutError)


def transform(key: bytes, value: bytes) -> tuple[str, int]:
    """The transform under test: the key's last path segment, and the value as an int."""
    return key.rsplit(b"/", 1)[-1].decode(), int(value)


def tree_of(kvs: Iterable[tuple[bytes, bytes]]) -> Tree:
    """What a correct watch shows for these records: transformed, rejected ones left out."""
    out: Tree = {}
    for key, value in kvs:
        try:
            name, number = transform(key, value)
        except ValueError:
            continue
        out[name] = number
    return out


@dataclass(frozen=True)
class ChaosConfig:
    """Knobs of one run; the defaults suit a 2-core machine."""

    consumers: int = 3  # watch_prefix consumers on the data prefix; the last one is slow
    leases: int = 3
    lease_ttls: tuple[int, ...] = (2, 3, 5)
    wait_callers: int = 2
    keys: int = 16
    write_rate: float = 40.0  # mean data ops per second
    fault_duration: tuple[float, float] = (0.5, 3.0)
    long_cut: tuple[float, float] = (6.0, 10.0)  # past the client's keepalive detection (~8 s)
    fault_gap: tuple[float, float] = (1.0, 3.0)
    faults: tuple[str, ...] = FAULTS
    lease_bound: float = 10.0  # a PersistentLease is back within its ttl + this after a heal
    catch_up_bound: float = 15.0  # consumers reach the pre-heal revision within this
    wait_for_bound: float = 25.0  # wait_for returns within this once its condition holds
    converge_bound: float = 30.0
    op_timeout: float = 2.0  # the writer's per-request deadline
    slow_delay: tuple[float, float] = (0.2, 1.0)
    max_recorded: int = 100  # mismatches kept in full (all are counted)
    # How "kill" faults stop a member: "auto" = SIGKILL, except on etcd 3.5.0-3.5.2, where a
    # SIGKILL can make members diverge (etcd-io/etcd#13766, fixed in 3.5.3): SIGTERM there.
    kill_signal: str = "auto"
    history_wait: float = 60.0  # how long a check waits for the writer's history to cover it


@dataclass(frozen=True)
class Mismatch:
    """One violated guarantee. ``context`` is the fault active (or last healed) at the time."""

    kind: str
    seed: int
    at: float  # seconds since the run started
    where: str
    revision: int
    detail: str
    context: str

    def __str__(self) -> str:
        return (
            f"[{self.kind}] seed={self.seed} t={self.at:.1f}s {self.where} rev={self.revision} "
            f"({self.context}): {self.detail}"
        )


def _pct(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"p50 {statistics.median(values):.2f} s, max {max(values):.2f} s (n={len(values)})"


@dataclass
class ChaosReport:
    """What a run did and found. ``ok`` means no mismatch."""

    seed: int
    duration: float
    elapsed: float = 0.0
    snapshots_checked: int = 0
    checked_by_get: int = 0  # compared with get_prefix at the snapshot's revision
    checked_by_history: int = 0  # revision compacted: compared with the writer's history
    skipped: int = 0  # compacted and not covered by an exact history (should stay 0)
    per_consumer: dict[str, int] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)
    ops: dict[str, int] = field(default_factory=dict)
    uncertain_ops: int = 0  # writer ops with an unknown outcome, all resolved exactly
    landed_anyway: int = 0  # ...of which had in fact been applied
    wait_for_calls: int = 0
    wait_for_latency: list[float] = field(default_factory=list)
    lease_recovery: list[float] = field(default_factory=list)
    catch_up: list[float] = field(default_factory=list)
    convergence: dict[str, float] = field(default_factory=dict)
    etcd_version: str = ""
    kill_signal: str = ""  # SIGKILL or SIGTERM, see ChaosConfig.kill_signal
    members_agree: bool | None = None  # every member's HashKV equal at the end
    watch_stats: dict[str, dict[str, int]] = field(default_factory=dict)
    mismatch_count: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)
    timeline: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.mismatch_count == 0

    def summary(self) -> str:
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())) or "none"
        ops = ", ".join(f"{k} {v}" for k, v in sorted(self.ops.items())) or "none"
        consumers = ", ".join(f"{k} {v}" for k, v in sorted(self.per_consumer.items()))
        conv = ", ".join(f"{k} {v:.2f} s" for k, v in sorted(self.convergence.items()))
        lines = [
            f"chaos run: seed {self.seed}, {self.elapsed:.0f} s (asked {self.duration:.0f} s), "
            f"etcd {self.etcd_version}, kill faults by {self.kill_signal}, members agree at the "
            f"end: {self.members_agree}",
            f"snapshots checked: {self.snapshots_checked} ({self.checked_by_get} against "
            f"get_prefix, {self.checked_by_history} against history; {self.skipped} skipped)",
            f"  per consumer: {consumers}",
            f"faults injected: {sum(self.faults.values())} ({faults})",
            f"writer ops: {sum(self.ops.values())} ({ops}); {self.uncertain_ops} with unknown "
            f"outcome resolved ({self.landed_anyway} had landed)",
            f"wait_for calls: {self.wait_for_calls}; latency {_pct(self.wait_for_latency)}",
            f"recovery after heal: leases {_pct(self.lease_recovery)}; "
            f"watch catch-up {_pct(self.catch_up)}",
            f"convergence at the end: {conv or 'n/a'}",
            f"mismatches: {self.mismatch_count}",
        ]
        lines.extend(f"  {m}" for m in self.mismatches[:20])
        if self.mismatch_count:
            lines.append(f"  replay with seed {self.seed} (ETCDKIT_CHAOS_SEED / --seed)")
        return "\n".join(lines)

    def as_json(self) -> str:
        data = asdict(self)
        data["ok"] = self.ok
        data["timeline"] = self.timeline[-200:]
        return json.dumps(data, sort_keys=True)


class History:
    """The data prefix's transformed tree at every revision since the start, as written.

    ``covered`` is the revision up to which the record is complete: the tree at any revision
    ``r <= covered`` is the one recorded at the greatest revision ``<= r``.
    """

    def __init__(self) -> None:
        self._revs: list[int] = []
        self._trees: list[Tree] = []
        self.covered = 0
        self._grew = asyncio.Event()

    def record(self, revision: int, tree: Tree) -> None:
        if self._revs and revision <= self._revs[-1]:
            raise AssertionError(f"history went back: {revision} after {self._revs[-1]}")
        if revision <= self.covered and tree != self.at(revision):
            raise AssertionError(
                f"history changed at {revision}, which was already covered up to {self.covered}"
            )
        if not self._trees or tree != self._trees[-1]:
            self._revs.append(revision)
            self._trees.append(dict(tree))
        self.cover(revision)

    def cover(self, revision: int) -> None:
        if revision > self.covered:
            self.covered = revision
            self._grew.set()

    @property
    def last(self) -> tuple[int, Tree]:
        return self._revs[-1], self._trees[-1]

    def at(self, revision: int) -> Tree | None:
        if revision > self.covered or not self._revs or revision < self._revs[0]:
            return None
        return self._trees[bisect.bisect_right(self._revs, revision) - 1]

    async def wait_at(self, revision: int, timeout: float) -> Tree | None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while revision > self.covered:
                    self._grew.clear()
                    await self._grew.wait()
        return self.at(revision)

    def prune(self, below: int) -> None:
        """Forget what no check can ask for any more (revisions below ``below``)."""
        i = bisect.bisect_right(self._revs, below) - 1
        if i > 0:
            del self._revs[:i]
            del self._trees[:i]


@dataclass
class _Delivery:
    consumer: str
    prefix: str
    snap: Snapshot[Any, Any]
    at: float


def _put(key: bytes, value: bytes, lease: int = 0) -> Any:
    return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=lease))


def _delete(key: bytes, range_end: bytes = b"") -> Any:
    return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key, range_end=range_end))


def _is_uncertain(exc: grpc.aio.AioRpcError) -> bool:
    return exc.code() in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
    )


class _Writer:
    """The single writer of the data prefix; keeps the exact history (see the module doc)."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.rng = random.Random(f"{run.seed}/writer")
        self.kv = run.direct.raw.kv
        self.lease_stub = run.direct.raw.lease
        self.raw: Raw = {}
        self.fence = b"init"
        self.leases: list[int] = []
        self.seq = 0
        self.gate = asyncio.Lock()  # held per op; the compaction fault takes it in between
        self.keys = [f"{run.data}k{i:02d}".encode() for i in range(run.cfg.keys)]

    async def start(self) -> None:
        await self.run.retry(lambda: self.run.direct.put(self.run.fence_key, self.fence))
        res = await self.run.retry(lambda: self.run.direct.get_prefix(self.run.data))
        self.raw = {kv.key: (kv.value, kv.lease) for kv in res.kvs}
        self.run.history.record(res.revision, self.tree())

    def tree(self, raw: Raw | None = None) -> Tree:
        return tree_of((k, v) for k, (v, _lease) in (raw if raw is not None else self.raw).items())

    async def loop(self, stop: asyncio.Event) -> None:
        rate = self.run.cfg.write_rate
        while not stop.is_set():
            await asyncio.sleep(min(self.rng.expovariate(rate), 1.0))
            async with self.gate:
                await self.step()

    def _value(self) -> bytes:
        if self.rng.random() < 0.08:
            return self.rng.choice(INVALID_VALUES)
        return str(self.rng.randrange(1000)).encode()

    async def step(self) -> None:
        rng = self.rng
        roll = rng.random()
        if roll < 0.40:
            kind, key = "put", rng.choice(self.keys)
            await self.txn(kind, [_put(key, self._value())])
        elif roll < 0.55:
            kind = "delete"
            await self.txn(kind, [_delete(rng.choice(self.keys))])
        elif roll < 0.58:
            a, b = sorted(rng.sample(range(len(self.keys) + 1), 2))
            end = self.keys[b] if b < len(self.keys) else self.run.data.encode() + b"l"
            await self.txn("delete_range", [_delete(self.keys[a], end)])
        elif roll < 0.75:
            keys = rng.sample(self.keys, rng.randint(2, 4))
            ops = [_delete(k) if rng.random() < 0.3 else _put(k, self._value()) for k in keys]
            await self.txn("txn", ops)
        elif roll < 0.90:
            if len(self.leases) < 3 or rng.random() < 0.2:
                try:
                    grant = await self.run.direct.grant(DATA_LEASE_TTL)
                except _UNCERTAIN:
                    return  # an orphan lease with no key attached harms nobody
                self.leases.append(grant.id)
            lease = rng.choice(self.leases)
            keys = rng.sample(self.keys, rng.randint(1, 3))
            await self.txn("lease_put", [_put(k, self._value(), lease) for k in keys])
        elif self.leases:
            lease = self.leases.pop(rng.randrange(len(self.leases)))
            await self.revoke(lease)

    def _apply(self, ops: list[Any]) -> Raw:
        raw = dict(self.raw)
        for op in ops:
            if op.HasField("request_put"):
                put = op.request_put
                raw[put.key] = (put.value, put.lease)
            else:
                rng_ = op.request_delete_range
                if not rng_.range_end:
                    raw.pop(rng_.key, None)
                else:
                    for k in [k for k in raw if rng_.key <= k < rng_.range_end]:
                        del raw[k]
        return raw

    def _commit(self, kind: str, ops: list[Any], revision: int) -> None:
        self.raw = self._apply(ops)
        self.run.history.record(revision, self.tree())
        ops_count = self.run.report.ops
        ops_count[kind] = ops_count.get(kind, 0) + 1

    def _fenced(self, op_id: bytes, ops: list[Any]) -> Any:
        compare = rpc.Compare(
            key=self.run.fence_key.encode(),
            target=rpc.Compare.CompareTarget.VALUE,
            result=rpc.Compare.CompareResult.EQUAL,
            value=self.fence,
        )
        return rpc.TxnRequest(
            compare=[compare], success=[_put(self.run.fence_key.encode(), op_id), *ops]
        )

    async def txn(self, kind: str, ops: list[Any]) -> None:
        self.seq += 1
        op_id = f"op-{self.seq}".encode()
        try:
            resp = await self.kv.Txn(self._fenced(op_id, ops), timeout=self.run.cfg.op_timeout)
        except grpc.aio.AioRpcError as exc:
            if not _is_uncertain(exc):
                self.run.mismatch("harness", "writer", 0, f"{kind} refused: {exc.details()}")
                return
            self.run.report.uncertain_ops += 1
            landed, read_rev = await self.resolve(op_id)
            if landed:
                self.run.report.landed_anyway += 1
                self._commit(kind, ops, landed)
            self.run.history.cover(read_rev)  # only now: the record must precede the cover
            return
        if not resp.succeeded:
            self.run.mismatch(
                "harness", "writer", resp.header.revision, "fence moved behind the writer"
            )
            _landed, read_rev = await self.resolve(op_id)
            self.run.history.cover(read_rev)
            return
        self.fence = op_id
        self._commit(kind, ops, int(resp.header.revision))

    async def read_fence(self) -> tuple[bytes, int, int]:
        """(fence value, its mod revision, revision of the read), retried until it answers."""
        req = rpc.RangeRequest(key=self.run.fence_key.encode())
        resp = await self.run.retry(lambda: self.kv.Range(req, timeout=self.run.cfg.op_timeout))
        kv = resp.kvs[0]
        return kv.value, int(kv.mod_revision), int(resp.header.revision)

    async def resolve(self, op_id: bytes) -> tuple[int, int]:
        """Settle an op with an unknown outcome: (its revision if it landed, else 0 -- and it
        never will: the fence moved on; the revision up to which that is known). The caller
        records the op, then covers the history up to the second number."""
        while True:
            value, mod_rev, read_rev = await self.read_fence()
            if value == op_id:
                self.fence = op_id
                return mod_rev, read_rev
            if value != self.fence:  # one of our burns landed
                self.fence = value
                return 0, read_rev
            self.seq += 1
            burn = f"burn-{self.seq}".encode()
            try:
                resp = await self.kv.Txn(self._fenced(burn, []), timeout=self.run.cfg.op_timeout)
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.1)
                continue  # unknown again: the next read tells
            if resp.succeeded:
                self.fence = burn
                return 0, int(resp.header.revision)

    async def revoke(self, lease: int) -> None:
        attached = [k for k, (_v, lid) in self.raw.items() if lid == lease]
        before = self.run.history.covered
        attempts = 0
        while True:
            attempts += 1
            try:
                resp = await self.lease_stub.LeaseRevoke(
                    rpc.LeaseRevokeRequest(ID=lease), timeout=self.run.cfg.op_timeout
                )
            except grpc.aio.AioRpcError as exc:
                if "lease not found" in (exc.details() or ""):
                    break
                if not _is_uncertain(exc):
                    self.run.mismatch("harness", "writer", 0, f"revoke refused: {exc.details()}")
                    return
                if attempts == 1:
                    self.run.report.uncertain_ops += 1
                await asyncio.sleep(0.1)
                continue
            rev = int(resp.header.revision)
            self._revoked(lease, attached, rev)
            self.run.history.cover(rev)
            return
        if attempts == 1:
            self.run.mismatch("harness", "writer", 0, f"lease {lease:#x} vanished before revoke")
            return
        # An earlier attempt landed: find its revision (keys attached to the lease go at once).
        self.run.report.landed_anyway += 1
        _v, _m, hi = await self.read_fence()
        if attached:
            lo = before  # the keys were there at `before`, gone at `hi`
            while hi - lo > 1:
                mid = (lo + hi) // 2
                res = await self.run.retry(
                    functools.partial(self.run.direct.get_prefix, self.run.data, revision=mid)
                )
                if any(kv.lease == lease for kv in res.kvs):
                    lo = mid
                else:
                    hi = mid
            self._revoked(lease, attached, hi)
        self.run.history.cover(hi)

    def _revoked(self, lease: int, attached: list[bytes], revision: int) -> None:
        ops = self.run.report.ops
        ops["revoke"] = ops.get("revoke", 0) + 1
        if attached:
            self.raw = {k: v for k, v in self.raw.items() if v[1] != lease}
            self.run.history.record(revision, self.tree())


class _Run:
    """One chaos run: owns the clients, tasks and shared state (see the module doc)."""

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
        self.queue: asyncio.Queue[_Delivery] = asyncio.Queue()
        self.prev: dict[str, Snapshot[Any, Any]] = {}
        self.latest: dict[str, Snapshot[Any, Any]] = {}
        # a few recently checked data snapshots per consumer, re-checked after a compaction
        self.recent: dict[str, collections.deque[Snapshot[Any, Any]]] = {}
        self.cache: dict[str, collections.OrderedDict[int, Mapping[Any, Any]]] = {}
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
            except (*_UNCERTAIN, grpc.aio.AioRpcError) as exc:
                if isinstance(exc, grpc.aio.AioRpcError) and not _is_uncertain(exc):
                    raise
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)

    # -- the run ----------------------------------------------------------------------------------

    async def main(self) -> None:
        cfg = self.cfg
        endpoints = [p.endpoint for p in self.proxies]
        async with (
            AsyncClient(self.cluster.endpoints) as direct,
            AsyncClient(endpoints) as client,
            contextlib.AsyncExitStack() as stack,
        ):
            self.direct, self.client = direct, client
            self.writer = _Writer(self)
            await self.writer.start()
            watches: dict[str, PrefixWatch[Any, Any]] = {}
            for i in range(cfg.consumers):
                name = "slow" if i == cfg.consumers - 1 else f"c{i}"
                watches[name] = await stack.enter_async_context(
                    client.watch_prefix(self.data, transform)
                )
            observer = await stack.enter_async_context(direct.watch_prefix(self.lease_prefix))
            for i in range(cfg.leases):
                ttl = cfg.lease_ttls[i % len(cfg.lease_ttls)]
                lease = client.persistent_lease(f"{self.lease_prefix}l{i}", f"{i}:0", ttl=ttl)
                self.leases.append(await stack.enter_async_context(lease))
            async with asyncio.timeout(60):
                for lease in self.leases:
                    await lease.registered()
            tasks = [
                self.spawn(self.consume(name, w, self.data, slow=name == "slow"), name)
                for name, w in watches.items()
            ]
            tasks.append(self.spawn(self.consume("leases", observer, self.lease_prefix), "obs"))
            tasks.append(self.spawn(self.check_loop(), "checker"))
            writer = self.spawn(self.writer.loop(self.stop), "writer")
            waiters = [self.spawn(self.wait_caller(i), f"wait{i}") for i in range(cfg.wait_callers)]
            self.event("started")
            try:
                await self.faults()
            finally:
                self.stop.set()
                self.context = "final"
                await self.settle([writer, *waiters], 90.0)
            await self.converge(watches)
            await self.members_agree()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(60):
                    await self.queue.join()
            for name, w in [*watches.items(), ("leases", observer)]:
                st = w.stats
                self.report.watch_stats[name] = {
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
            left = await self.retry(lambda: direct.get_prefix(self.lease_prefix))
            if left.kvs:
                keys = [kv.key.decode() for kv in left.kvs]
                self.mismatch("lease-close", "leases", left.revision, f"still there: {keys}")
        await asyncio.sleep(0)
        names = sorted(
            t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("etcdkit")
        )
        if names:
            self.mismatch("task-leak", "clients", 0, f"tasks left after close: {names}")

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

    # -- consumers and the checker ----------------------------------------------------------------

    async def consume(
        self, name: str, watch: PrefixWatch[Any, Any], prefix: str, *, slow: bool = False
    ) -> None:
        rng = random.Random(f"{self.seed}/consumer/{name}")

        def deliver(snap: Snapshot[Any, Any]) -> None:
            self.latest[name] = snap
            self.queue.put_nowait(_Delivery(name, prefix, snap, self.elapsed()))

        try:
            deliver(await watch.synced(timeout=60))
            async for snap in watch:
                deliver(snap)
                if slow:
                    await asyncio.sleep(rng.uniform(*self.cfg.slow_delay))
                elif rng.random() < 0.1:
                    await asyncio.sleep(rng.uniform(0.0, 0.05))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.mismatch("watch-error", name, watch.revision, f"the watch raised {exc!r}")

    async def check_loop(self) -> None:
        while True:
            item = await self.queue.get()
            try:
                await self.check(item)
            except Exception as exc:
                tb = "".join(traceback.format_exception(exc)[-3:])
                self.mismatch("harness", "checker", item.snap.revision, f"{exc!r}\n{tb}")
            finally:
                self.queue.task_done()

    async def check(self, d: _Delivery) -> None:
        snap = d.snap
        tree = dict(snap.tree)
        prev = self.prev.get(d.consumer)
        self.check_changes(d, {} if prev is None else dict(prev.tree), tree, prev is None)
        if prev is not None and snap.revision < prev.revision:
            self.mismatch(
                "revision-back", d.consumer, snap.revision, f"after revision {prev.revision}"
            )
        self.prev[d.consumer] = snap
        if d.prefix == self.data:
            self.recent.setdefault(d.consumer, collections.deque(maxlen=8)).append(snap)
        expected, how = await self.expected(d.prefix, snap.revision)
        self.compare(d.consumer, snap.revision, tree, expected, how)
        report = self.report
        if d.prefix == self.data and report.snapshots_checked % 200 == 0:
            revs = [r[0].revision for r in self.recent.values() if r]  # oldest kept
            if len(revs) == self.cfg.consumers:
                self.history.prune(min(revs))

    def compare(
        self, consumer: str, revision: int, tree: Tree, expected: Mapping[Any, Any] | None, how: str
    ) -> None:
        """Count one tree check (``expected`` None: it could not be checked) and its outcome."""
        report = self.report
        if expected is None:
            report.skipped += 1
            return
        report.snapshots_checked += 1
        report.per_consumer[consumer] = report.per_consumer.get(consumer, 0) + 1
        if how == "get":
            report.checked_by_get += 1
        else:
            report.checked_by_history += 1
        if expected != tree:
            self.mismatch("tree", consumer, revision, _diff(expected, tree, how))

    def check_changes(self, d: _Delivery, old: Tree, new: Tree, first: bool) -> None:
        changes = d.snap.changes
        if first:
            return  # the first snapshot's changes are relative to nothing we delivered
        applied = dict(old)
        problems: list[str] = []
        for key, ch in changes.items():
            if ch.key != key:
                problems.append(f"change filed under {key!r} is for {ch.key!r}")
            if ch.old != old.get(key):
                problems.append(f"{key}: old {ch.old!r} but previous tree had {old.get(key)!r}")
            if ch.kind is ChangeKind.REMOVED:
                if key not in old or key in new:
                    problems.append(f"{key}: REMOVED but in old={key in old} new={key in new}")
                applied.pop(key, None)
            else:
                want = ChangeKind.UPDATED if key in old else ChangeKind.ADDED
                if ch.kind is not want:
                    problems.append(f"{key}: {ch.kind.name}, expected {want.name}")
                if ch.new != new.get(key):
                    problems.append(f"{key}: new {ch.new!r} but tree has {new.get(key)!r}")
                applied[key] = cast(int, ch.new)
        if applied != new:
            problems.append(
                "changes do not turn the previous tree into this one: "
                + _diff(new, applied, "changes")
            )
        if problems:
            self.mismatch("changes", d.consumer, d.snap.revision, "; ".join(problems[:5]))

    async def expected(self, prefix: str, revision: int) -> tuple[Mapping[Any, Any] | None, str]:
        cache = self.cache.setdefault(prefix, collections.OrderedDict())
        if revision in cache:
            return cache[revision], "get"
        try:
            res = await self.retry(lambda: self.direct.get_prefix(prefix, revision=revision))
        except etcdkit.CompactedError:
            if prefix != self.data:
                return None, "skipped"
            tree = await self.history.wait_at(revision, timeout=self.cfg.history_wait)
            return tree, "history"
        if prefix == self.data:
            got: Mapping[Any, Any] = tree_of((kv.key, kv.value) for kv in res.kvs)
            hist = self.history.at(revision)
            if hist is not None and hist != got:
                self.mismatch("history-model", "writer", revision, _diff(got, hist, "history"))
        else:
            got = {kv.key.decode(): kv.value for kv in res.kvs}
        cache[revision] = got
        if len(cache) > 512:
            cache.popitem(last=False)
        return got, "get"

    # -- wait_for callers -------------------------------------------------------------------------

    async def wait_caller(self, idx: int) -> None:
        rng = random.Random(f"{self.seed}/wait/{idx}")
        n = 0
        while not self.stop.is_set():
            n += 1
            key = f"{self.wait_prefix}{idx}-{n}"
            exists = rng.random() < 0.7
            created = 0 if exists else await self.put_once(key)
            self.report.wait_for_calls += 1
            task = asyncio.create_task(
                self.client.wait_for(key, exists=exists, timeout=self.cfg.wait_for_bound + 60)
            )
            await asyncio.sleep(rng.uniform(0.0, 1.0))
            if task.done():
                outcome = repr(task.exception()) if task.exception() else f"rev {task.result()}"
                self.mismatch("wait_for", key, 0, f"returned before the condition held ({outcome})")
                continue
            if exists:
                low = await self.put_once(key)
            else:
                low = await self.delete_once(key) or created + 1
            held = time.monotonic()
            try:
                rev = await task
            except Exception as exc:
                self.mismatch("wait_for", key, low, f"raised {exc!r}")
                continue
            latency = time.monotonic() - held
            self.report.wait_for_latency.append(latency)
            if rev < low:
                self.mismatch("wait_for", key, rev, f"returned revision {rev} < {low}")
            if latency > self.cfg.wait_for_bound:
                self.mismatch("wait_for", key, rev, f"returned {latency:.1f} s after the fact")
            await asyncio.sleep(rng.uniform(0.1, 0.5))

    async def put_once(self, key: str) -> int:
        """Put a fresh key (retried); the revision it was created at."""
        rev = 0
        for attempt in range(1000):
            try:
                rev = await self.direct.put(key, "x")
            except _UNCERTAIN:
                await asyncio.sleep(0.1)
                continue
            if attempt == 0:
                return rev
            break
        kv = await self.retry(lambda: self.direct.get(key))
        return int(kv.create_revision) if kv is not None else rev

    async def delete_once(self, key: str) -> int:
        """Delete a key (retried); the revision of the deletion, 0 if unknown."""
        req = rpc.DeleteRangeRequest(key=key.encode())
        resp = await self.retry(lambda: self.direct.raw.kv.DeleteRange(req, timeout=2.0))
        return int(resp.header.revision) if resp.deleted else 0

    # -- faults and recovery ----------------------------------------------------------------------

    async def faults(self) -> None:
        rng = random.Random(f"{self.seed}/faults")
        cfg = self.cfg
        last_note = 0.0
        while self.elapsed() < self.duration:
            await asyncio.sleep(rng.uniform(*cfg.fault_gap))
            if self.elapsed() >= self.duration:
                break
            if self.leases and rng.random() < 0.3:
                lease = rng.choice(self.leases)
                lease.set_value(f"{lease.value.decode().split(':')[0]}:{rng.randrange(10**6)}")
            kind = rng.choice(cfg.faults)
            what = await self.inject(kind, rng)
            healed = time.monotonic()
            self.report.faults[kind] = self.report.faults.get(kind, 0) + 1
            self.context = f"after {what}"
            lease_times, catch_up = await asyncio.gather(
                self.lease_recovery(healed), self.catch_up(healed)
            )
            self.event(
                f"healed {what}: leases back in {max(lease_times, default=0):.2f} s, "
                f"consumers caught up in {max(catch_up, default=0):.2f} s"
            )
            self.context = "idle"
            if self.progress and self.elapsed() - last_note > 30:
                last_note = self.elapsed()
                r = self.report
                self.progress(
                    f"t={self.elapsed():.0f}s snapshots={r.snapshots_checked} "
                    f"faults={sum(r.faults.values())} mismatches={r.mismatch_count}"
                )

    async def inject(self, kind: str, rng: random.Random) -> str:
        """Inject one fault and heal it; returns a description."""
        dur = rng.uniform(*self.cfg.fault_duration)
        members: list[EtcdServer] = list(self.cluster.members)
        if kind in ("kill_member", "kill_leader", "pause_member", "pause_leader"):
            victim = rng.choice(members)
            if kind.endswith("leader"):
                with contextlib.suppress(Exception):
                    victim = await asyncio.to_thread(self.cluster.leader)
            idx = members.index(victim)
            what = f"{kind} m{idx} {dur:.1f}s"
            self.context = f"during {what}"
            self.event(what)
            if kind.startswith("kill"):
                await asyncio.to_thread(self.kill, victim)
                try:
                    await asyncio.sleep(dur)
                finally:
                    await asyncio.to_thread(victim.restart)
            else:
                await asyncio.to_thread(victim.pause)
                try:
                    await asyncio.sleep(dur)
                finally:
                    await asyncio.to_thread(victim.resume)
        elif kind in ("cut_client", "cut_client_long", "cut_one_link"):
            if kind == "cut_client_long":
                dur = rng.uniform(*self.cfg.long_cut)
            cut = [rng.choice(self.proxies)] if kind == "cut_one_link" else list(self.proxies)
            what = f"{kind} {dur:.1f}s"
            self.context = f"during {what}"
            self.event(what)
            try:
                for p in cut:
                    await asyncio.to_thread(p.cut)
                await asyncio.sleep(dur)
            finally:
                for p in cut:
                    await asyncio.to_thread(p.restore)
        elif kind == "drop_client":
            what = kind
            self.event(what)
            for p in self.proxies:
                await asyncio.to_thread(p.drop_connections)
        elif kind == "compact":
            what = await self.compact()
        elif kind == "full_outage":
            what = f"{kind} {dur:.1f}s"
            self.context = f"during {what}"
            self.event(what)
            try:
                await asyncio.gather(*(asyncio.to_thread(self.kill, m) for m in members))
                await asyncio.sleep(dur)
            finally:
                await asyncio.gather(*(asyncio.to_thread(m.restart) for m in members))
        else:
            raise ValueError(f"unknown fault {kind!r}; choose from {FAULTS}")
        return what

    def kill(self, member: EtcdServer) -> None:
        if self.report.kill_signal == "SIGTERM":
            member.stop()
        else:
            member.kill()

    async def members_agree(self) -> None:
        """etcd's own consistency: every member's KV hash at one revision is the same.

        A difference is etcd's fault, not the client's, but it makes every other check
        meaningless, so it is reported as a mismatch of its own kind ("etcd-divergence").
        """
        clients = [AsyncClient(m.endpoint, timeout=5) for m in self.cluster.members]
        try:
            for c in clients:
                await c.connect()
            revs = []
            for c in clients:
                resp = await self.retry(
                    functools.partial(
                        c.raw.kv.Range, rpc.RangeRequest(key=b"\0", serializable=True), timeout=5
                    )
                )
                revs.append(int(resp.header.revision))
            rev = min(revs)
            hashes = []
            for c in clients:
                resp = await self.retry(
                    functools.partial(
                        c.raw.maintenance.HashKV, rpc.HashKVRequest(revision=rev), timeout=5
                    )
                )
                hashes.append(int(resp.hash))
        finally:
            for c in clients:
                await c.close()
        self.report.members_agree = len(set(hashes)) == 1
        if not self.report.members_agree:
            self.mismatch(
                "etcd-divergence",
                "cluster",
                rev,
                f"members' KV hashes differ at revision {rev} (revisions {revs}): etcd itself "
                "lost or reordered writes; see etcd-io/etcd#13766 for etcd 3.5.0-3.5.2",
            )

    async def compact(self) -> str:
        async with self.writer.gate:  # the writer is between ops: its history is complete
            rev = await self.retry(self.direct.get_revision)
            self.history.cover(rev)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await self.queue.join()  # check what was delivered while it is readable
            await self.retry(lambda: self.direct.compact(rev))
        # Each consumer's newest snapshot older than the compaction can now only be checked
        # against the writer's history: check it again that way (the history path, end to end).
        for name, recent in list(self.recent.items()):
            for snap in [s for s in recent if s.revision < rev]:
                expected = self.history.at(snap.revision)
                self.compare(name, snap.revision, dict(snap.tree), expected, "history")
        what = f"compact to {rev}"
        self.context = f"during {what}"
        self.event(what)
        return what

    async def lease_recovery(self, healed: float) -> list[float]:
        async def one(lease: PersistentLease) -> float:
            limit = lease.ttl + self.cfg.lease_bound
            while True:
                obs = self.latest.get("leases")
                seen = None if obs is None else obs.tree.get(str(lease.key))
                if lease.state is LeaseState.REGISTERED and seen == lease.value:
                    kv = await self.retry(lambda: self.direct.get(lease.key))
                    if kv is not None and kv.lease == lease.lease_id and kv.value == lease.value:
                        took = time.monotonic() - healed
                        self.report.lease_recovery.append(took)
                        return took
                if time.monotonic() - healed > limit:
                    self.mismatch(
                        "lease-recovery",
                        str(lease.key),
                        0 if obs is None else obs.revision,
                        f"not back {limit:.0f} s after the heal: state {lease.state.name}, "
                        f"observer sees {seen!r}, want {lease.value!r}",
                    )
                    return limit
                await asyncio.sleep(0.05)

        return list(await asyncio.gather(*(one(lease) for lease in self.leases)))

    async def catch_up(self, healed: float) -> list[float]:
        target = self.history.last[0]
        times: list[float] = []
        for name in list(self.latest):
            if name == "leases":
                continue
            limit = self.cfg.catch_up_bound + (self.cfg.slow_delay[1] if name == "slow" else 0)
            while (snap := self.latest.get(name)) is None or snap.revision < target:
                if time.monotonic() - healed > limit:
                    got = None if snap is None else snap.revision
                    self.mismatch(
                        "catch-up", name, target, f"at revision {got} {limit:.0f} s after heal"
                    )
                    break
                await asyncio.sleep(0.05)
            else:
                times.append(time.monotonic() - healed)
        self.report.catch_up.extend(times)
        return times

    async def converge(self, watches: Mapping[str, PrefixWatch[Any, Any]]) -> None:
        res = await self.retry(lambda: self.direct.get_prefix(self.data))
        self.history.cover(res.revision)
        final = tree_of((kv.key, kv.value) for kv in res.kvs)
        last_rev, last_tree = self.history.last
        if final != last_tree:
            self.mismatch("history-model", "writer", res.revision, _diff(final, last_tree, "hist"))
        start = time.monotonic()
        for name in watches:
            while (s := self.latest.get(name)) is None or (
                s.revision < last_rev or dict(s.tree) != final
            ):
                if time.monotonic() - start > self.cfg.converge_bound:
                    got = "nothing" if s is None else f"revision {s.revision}"
                    self.mismatch("converge", name, last_rev, f"still at {got}")
                    break
                await asyncio.sleep(0.05)
            else:
                self.report.convergence[name] = time.monotonic() - start
        await self.lease_recovery(start)


def _kill_signal(choice: str, version: str) -> str:
    if choice in ("SIGKILL", "SIGTERM"):
        return choice
    if choice != "auto":
        raise ValueError(f"kill_signal must be auto, SIGKILL or SIGTERM, not {choice!r}")
    parts = tuple(int(p) for p in re.findall(r"\d+", version)[:3])
    return "SIGTERM" if (3, 5, 0) <= parts < (3, 5, 3) else "SIGKILL"


def _diff(expected: Mapping[Any, Any], got: Mapping[Any, Any], source: str) -> str:
    missing = {k: expected[k] for k in expected if k not in got}
    extra = {k: got[k] for k in got if k not in expected}
    wrong = {k: (expected[k], got[k]) for k in expected if k in got and expected[k] != got[k]}
    return f"vs {source}: missing {missing}, extra {extra}, wrong (want, got) {wrong}"


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
    report.kill_signal = _kill_signal(cfg.kill_signal, report.etcd_version)
    await asyncio.to_thread(cluster.start)
    try:
        proxies = [Proxy(m.endpoint) for m in cluster.members]
        try:
            run = _Run(seed, duration, cfg, report, cluster, proxies, progress)
            await run.main()
        finally:
            for p in proxies:
                p.close()
    finally:
        await asyncio.to_thread(cluster.close)
    report.elapsed = time.monotonic() - started
    return report
