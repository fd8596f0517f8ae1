"""The checker: what the client under test delivers, compared with what etcd holds.

Consumers (``watch_prefix`` on ``data/``, the last one slow, and an observer of ``leases/`` on
a direct client) hand every snapshot to one queue as a :class:`Delivery`; :class:`Checker`
takes each in turn: its tree equals the transform of ``get_prefix`` at its revision, or, once
that revision is compacted, the writer's history; revisions never go back; ``changes`` turn
the consumer's previous tree into this one. ``wait_for`` callers check that it never returns
before its condition held and returns within a bound after. After each fault heals, every
PersistentLease is back and every consumer reaches the revision written before the heal, each
within a bound; at the end every consumer converges to the final state and every etcd member
holds the same data.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import random
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from aetcd import rpc

import etcdkit
from bench.chaos.history import Tree, tree_of
from bench.chaos.state import UNCERTAIN, Run
from etcdkit import AsyncClient, ChangeKind, LeaseState, PersistentLease, PrefixWatch, Snapshot


@dataclass
class Delivery:
    """One snapshot as a consumer received it, queued for the checker."""

    consumer: str
    prefix: str
    snap: Snapshot[Any, Any]
    at: float  # seconds since the run started


class Checker:
    """Checks every delivery and the recovery after each heal; owns what it needs to remember."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.queue: asyncio.Queue[Delivery] = asyncio.Queue()
        self.prev: dict[str, Snapshot[Any, Any]] = {}
        self.latest: dict[str, Snapshot[Any, Any]] = {}
        # a few recently checked data snapshots per consumer, re-checked after a compaction
        self.recent: dict[str, collections.deque[Snapshot[Any, Any]]] = {}
        self.cache: dict[str, collections.OrderedDict[int, Mapping[Any, Any]]] = {}

    # -- consumers and their deliveries -----------------------------------------------------------

    async def consume(
        self, name: str, watch: PrefixWatch[Any, Any], prefix: str, *, slow: bool = False
    ) -> None:
        rng = random.Random(f"{self.run.seed}/consumer/{name}")

        def deliver(snap: Snapshot[Any, Any]) -> None:
            self.latest[name] = snap
            self.queue.put_nowait(Delivery(name, prefix, snap, self.run.elapsed()))

        try:
            deliver(await watch.synced(timeout=60))
            async for snap in watch:
                deliver(snap)
                if slow:
                    await asyncio.sleep(rng.uniform(*self.run.cfg.slow_delay))
                elif rng.random() < 0.1:
                    await asyncio.sleep(rng.uniform(0.0, 0.05))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.run.mismatch("watch-error", name, watch.revision, f"the watch raised {exc!r}")

    async def check_loop(self) -> None:
        while True:
            item = await self.queue.get()
            try:
                await self.check(item)
            except Exception as exc:
                tb = "".join(traceback.format_exception(exc)[-3:])
                self.run.mismatch("harness", "checker", item.snap.revision, f"{exc!r}\n{tb}")
            finally:
                self.queue.task_done()

    async def check(self, d: Delivery) -> None:
        snap = d.snap
        tree = dict(snap.tree)
        prev = self.prev.get(d.consumer)
        self.check_changes(d, {} if prev is None else dict(prev.tree), tree, prev is None)
        if prev is not None and snap.revision < prev.revision:
            self.run.mismatch(
                "revision-back", d.consumer, snap.revision, f"after revision {prev.revision}"
            )
        self.prev[d.consumer] = snap
        if d.prefix == self.run.data:
            self.recent.setdefault(d.consumer, collections.deque(maxlen=8)).append(snap)
        expected, how = await self.expected(d.prefix, snap.revision)
        self.compare(d.consumer, snap.revision, tree, expected, how)
        report = self.run.report
        if d.prefix == self.run.data and report.snapshots_checked % 200 == 0:
            revs = [r[0].revision for r in self.recent.values() if r]  # oldest kept
            if len(revs) == self.run.cfg.consumers:
                self.run.history.prune(min(revs))

    def compare(
        self, consumer: str, revision: int, tree: Tree, expected: Mapping[Any, Any] | None, how: str
    ) -> None:
        """Count one tree check (``expected`` None: it could not be checked) and its outcome."""
        report = self.run.report
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
            self.run.mismatch("tree", consumer, revision, _diff(expected, tree, how))

    def check_changes(self, d: Delivery, old: Tree, new: Tree, first: bool) -> None:
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
            self.run.mismatch("changes", d.consumer, d.snap.revision, "; ".join(problems[:5]))

    async def expected(self, prefix: str, revision: int) -> tuple[Mapping[Any, Any] | None, str]:
        cache = self.cache.setdefault(prefix, collections.OrderedDict())
        if revision in cache:
            return cache[revision], "get"
        try:
            res = await self.run.retry(
                lambda: self.run.direct.get_prefix(prefix, revision=revision)
            )
        except etcdkit.CompactedError:
            if prefix != self.run.data:
                return None, "skipped"
            tree = await self.run.history.wait_at(revision, timeout=self.run.cfg.history_wait)
            return tree, "history"
        if prefix == self.run.data:
            got: Mapping[Any, Any] = tree_of((kv.key, kv.value) for kv in res.kvs)
            hist = self.run.history.at(revision)
            if hist is not None and hist != got:
                self.run.mismatch("history-model", "writer", revision, _diff(got, hist, "history"))
        else:
            got = {kv.key.decode(): kv.value for kv in res.kvs}
        cache[revision] = got
        if len(cache) > 512:
            cache.popitem(last=False)
        return got, "get"

    # -- wait_for callers -------------------------------------------------------------------------

    async def wait_caller(self, idx: int) -> None:
        rng = random.Random(f"{self.run.seed}/wait/{idx}")
        n = 0
        while not self.run.stop.is_set():
            n += 1
            key = f"{self.run.wait_prefix}{idx}-{n}"
            exists = rng.random() < 0.7
            created = 0
            if not exists:
                created = await self.create_once(key)
                if created < 0:
                    # A put that timed out may still land later (sent to a member that was
                    # then paused, applied once it resumes): after our delete it would create
                    # the key again, and a wait for its absence would rightly wait on. Such a
                    # key is left alone; the next one is created with certainty.
                    continue
            self.run.report.wait_for_calls += 1
            task = asyncio.create_task(
                self.run.client.wait_for(
                    key, exists=exists, timeout=self.run.cfg.wait_for_bound + 60
                )
            )
            await asyncio.sleep(rng.uniform(0.0, 1.0))
            if task.done():
                outcome = repr(task.exception()) if task.exception() else f"rev {task.result()}"
                self.run.mismatch(
                    "wait_for", key, 0, f"returned before the condition held ({outcome})"
                )
                continue
            if exists:
                low = await self.put_once(key)
            else:
                low = await self.delete_once(key) or created + 1
            held = time.monotonic()
            try:
                rev = await task
            except Exception as exc:
                now = await self.run.retry(functools.partial(self.run.direct.get, key))
                state = (
                    "absent"
                    if now is None
                    else f"present (created at {now.create_revision}, mod {now.mod_revision})"
                )
                self.run.mismatch("wait_for", key, low, f"raised {exc!r}; the key is {state} now")
                continue
            latency = time.monotonic() - held
            self.run.report.wait_for_latency.append(latency)
            if rev < low:
                self.run.mismatch("wait_for", key, rev, f"returned revision {rev} < {low}")
            if latency > self.run.cfg.wait_for_bound:
                self.run.mismatch("wait_for", key, rev, f"returned {latency:.1f} s after the fact")
            await asyncio.sleep(rng.uniform(0.1, 0.5))

    async def create_once(self, key: str) -> int:
        """Create a fresh key with one put: the revision it was created at, or -1 if the put
        timed out (it may have been applied, or may still be, later: creating it again)."""
        try:
            return await self.run.direct.put(key, "x")
        except UNCERTAIN:
            await asyncio.sleep(0.1)
            return -1

    async def put_once(self, key: str) -> int:
        """Put a fresh key (retried); the revision it was created at."""
        rev = 0
        for attempt in range(1000):
            try:
                rev = await self.run.direct.put(key, "x")
            except UNCERTAIN:
                await asyncio.sleep(0.1)
                continue
            if attempt == 0:
                return rev
            break
        kv = await self.run.retry(lambda: self.run.direct.get(key))
        return int(kv.create_revision) if kv is not None else rev

    async def delete_once(self, key: str) -> int:
        """Delete a key (retried); the revision of the deletion, 0 if unknown."""
        req = rpc.DeleteRangeRequest(key=key.encode())
        resp = await self.run.retry(lambda: self.run.direct.raw.kv.DeleteRange(req, timeout=2.0))
        return int(resp.header.revision) if resp.deleted else 0

    # -- recovery after each heal, convergence at the end ------------------------------------------

    async def members_agree(self) -> None:
        """etcd's own consistency: every member's KV hash at one revision is the same.

        A difference is etcd's fault, not the client's, but it makes every other check
        meaningless, so it is reported as a mismatch of its own kind ("etcd-divergence").
        """
        clients = [AsyncClient(m.endpoint, timeout=5) for m in self.run.cluster.members]
        try:
            for c in clients:
                await c.connect()
            revs = []
            for c in clients:
                resp = await self.run.retry(
                    functools.partial(
                        c.raw.kv.Range, rpc.RangeRequest(key=b"\0", serializable=True), timeout=5
                    )
                )
                revs.append(int(resp.header.revision))
            rev = min(revs)
            hashes = []
            for c in clients:
                resp = await self.run.retry(
                    functools.partial(
                        c.raw.maintenance.HashKV, rpc.HashKVRequest(revision=rev), timeout=5
                    )
                )
                hashes.append(int(resp.hash))
        finally:
            for c in clients:
                await c.close()
        self.run.report.members_agree = len(set(hashes)) == 1
        if not self.run.report.members_agree:
            self.run.mismatch(
                "etcd-divergence",
                "cluster",
                rev,
                f"members' KV hashes differ at revision {rev} (revisions {revs}): etcd itself "
                "lost or reordered writes; see etcd-io/etcd#13766 for etcd 3.5.0-3.5.2",
            )

    async def lease_recovery(self, healed: float) -> list[float]:
        async def one(lease: PersistentLease) -> float:
            limit = lease.ttl + self.run.cfg.lease_bound
            while True:
                obs = self.latest.get("leases")
                seen = None if obs is None else obs.tree.get(str(lease.key))
                if lease.state is LeaseState.REGISTERED and seen == lease.value:
                    kv = await self.run.retry(lambda: self.run.direct.get(lease.key))
                    if kv is not None and kv.lease == lease.lease_id and kv.value == lease.value:
                        took = time.monotonic() - healed
                        self.run.report.lease_recovery.append(took)
                        return took
                if time.monotonic() - healed > limit:
                    self.run.mismatch(
                        "lease-recovery",
                        str(lease.key),
                        0 if obs is None else obs.revision,
                        f"not back {limit:.0f} s after the heal: state {lease.state.name}, "
                        f"observer sees {seen!r}, want {lease.value!r}",
                    )
                    return limit
                await asyncio.sleep(0.05)

        return list(await asyncio.gather(*(one(lease) for lease in self.run.leases)))

    async def catch_up(self, healed: float) -> list[float]:
        target = self.run.history.last[0]
        times: list[float] = []
        for name in list(self.latest):
            if name == "leases":
                continue
            limit = self.run.cfg.catch_up_bound + (
                self.run.cfg.slow_delay[1] if name == "slow" else 0
            )
            while (snap := self.latest.get(name)) is None or snap.revision < target:
                if time.monotonic() - healed > limit:
                    got = None if snap is None else snap.revision
                    self.run.mismatch(
                        "catch-up", name, target, f"at revision {got} {limit:.0f} s after heal"
                    )
                    break
                await asyncio.sleep(0.05)
            else:
                times.append(time.monotonic() - healed)
        self.run.report.catch_up.extend(times)
        return times

    async def converge(self, watches: Mapping[str, PrefixWatch[Any, Any]]) -> None:
        res = await self.run.retry(lambda: self.run.direct.get_prefix(self.run.data))
        self.run.history.cover(res.revision)
        final = tree_of((kv.key, kv.value) for kv in res.kvs)
        last_rev, last_tree = self.run.history.last
        if final != last_tree:
            self.run.mismatch(
                "history-model", "writer", res.revision, _diff(final, last_tree, "hist")
            )
        start = time.monotonic()
        for name in watches:
            while (s := self.latest.get(name)) is None or (
                s.revision < last_rev or dict(s.tree) != final
            ):
                if time.monotonic() - start > self.run.cfg.converge_bound:
                    got = "nothing" if s is None else f"revision {s.revision}"
                    self.run.mismatch("converge", name, last_rev, f"still at {got}")
                    break
                await asyncio.sleep(0.05)
            else:
                self.run.report.convergence[name] = time.monotonic() - start
        await self.lease_recovery(start)


def _diff(expected: Mapping[Any, Any], got: Mapping[Any, Any], source: str) -> str:
    missing = {k: expected[k] for k in expected if k not in got}
    extra = {k: got[k] for k in got if k not in expected}
    wrong = {k: (expected[k], got[k]) for k in expected if k in got and expected[k] != got[k]}
    return f"vs {source}: missing {missing}, extra {extra}, wrong (want, got) {wrong}"
