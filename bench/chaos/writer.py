"""The fenced writer: the single writer of the data prefix, whose history is exact.

One sequential task writes random puts, deletes, range deletes, multi-key txns, values the
transform rejects, lease-attached keys and revokes under ``data/``. Every data write is a txn
guarded by a *fence* key (``value(fence) == id of the last op``) that also moves the fence to
its own id. An op with an unknown outcome (timeout, unavailable) is resolved before the next:
read the fence; if it holds the op's id the op landed, at the fence's mod revision; otherwise a
"burn" txn moves the fence on, so the op can never land later. (A request parked in a
SIGSTOPped member is applied seconds after the client gave up; without the fence it would
rewrite history behind the model's back.) A revoke with an unknown outcome is retried until
definite; if an earlier attempt had landed, its revision is found by bisecting ``get_prefix``
(no compaction runs meanwhile: the compaction fault takes :attr:`Writer.gate`).

Each op is recorded in :class:`~bench.chaos.history.History` at the revision it landed at,
and its events (:func:`apply_ops`) in the :class:`~bench.chaos.history.EventLog`.
"""

from __future__ import annotations

import asyncio
import functools
import random
from typing import Any

import grpc
import grpc.aio
from aetcd import rpc

from bench.chaos.history import Event, Tree, tree_of
from bench.chaos.state import UNCERTAIN, Run, is_uncertain

Raw = dict[bytes, tuple[bytes, int]]  # key -> (value, lease id) as etcd stores it

DATA_LEASE_TTL = 86_400  # data-prefix leases are only ever revoked, never left to expire
INVALID_VALUES = (b"not-int", b"", b"1.5", b"0x1f", b"seven")


def _put(key: bytes, value: bytes, lease: int = 0) -> Any:
    return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=lease))


def _delete(key: bytes, range_end: bytes = b"") -> Any:
    return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key, range_end=range_end))


def apply_ops(raw: Raw, ops: list[Any], revision: int) -> tuple[Raw, list[Event]]:
    """``raw`` after a transaction of ``ops`` landed at ``revision``, and the events etcd
    reports for it: in op order, one per put, one per key a delete removed (a range's in key
    order, as etcd deletes them); none for a delete of an absent key."""
    raw = dict(raw)
    events: list[Event] = []
    for op in ops:
        if op.HasField("request_put"):
            put = op.request_put
            old = raw.get(put.key)
            events.append(Event("put", put.key, revision, put.value, old[0] if old else None))
            raw[put.key] = (put.value, put.lease)
        else:
            rng_ = op.request_delete_range
            if rng_.range_end:
                keys = sorted(k for k in raw if rng_.key <= k < rng_.range_end)
            else:
                keys = [rng_.key]
            for k in keys:
                gone = raw.pop(k, None)
                if gone is not None:
                    events.append(Event("delete", k, revision, b"", gone[0]))
    return raw, events


class Writer:
    """The single writer of the data prefix; keeps the exact history (see the module doc)."""

    def __init__(self, run: Run) -> None:
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
        self.run.events.start = res.revision
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
                except UNCERTAIN:
                    return  # an orphan lease with no key attached harms nobody
                self.leases.append(grant.id)
            lease = rng.choice(self.leases)
            keys = rng.sample(self.keys, rng.randint(1, 3))
            await self.txn("lease_put", [_put(k, self._value(), lease) for k in keys])
        elif self.leases:
            lease = self.leases.pop(rng.randrange(len(self.leases)))
            await self.revoke(lease)

    async def mark(self) -> None:
        """One put between ops (hold :attr:`gate`), so that the newest event under the data
        prefix is one the log holds: a replay of etcd's history can stop at it."""
        key = self.keys[self.seq % len(self.keys)]  # (no draw from rng: ops stay as seeded)
        await self.txn("mark", [_put(key, str(self.seq).encode())])

    def _commit(self, kind: str, ops: list[Any], revision: int) -> None:
        self.raw, events = apply_ops(self.raw, ops, revision)
        self.run.events.extend(events)  # before the record below covers the revision
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
            if not is_uncertain(exc):
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
                if not is_uncertain(exc):
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
            # etcd deletes a revoked lease's keys in one txn, in key order
            gone = [Event("delete", k, revision, b"", self.raw[k][0]) for k in sorted(attached)]
            self.raw = {k: v for k, v in self.raw.items() if v[1] != lease}
            self.run.events.extend(gone)
            self.run.history.record(revision, self.tree())
