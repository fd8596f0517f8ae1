"""The faults: one at a time, each bounded and healed in ``finally``.

Kill -9 and restart a member (or the leader), SIGSTOP/SIGCONT a member (or the leader),
black-hole the client's connections (briefly, or past the keepalive detection time), black-hole
one of its links, reset its connections, compact to the current revision (or the newest one
every raw watch has received: it resumes from the next), and a full outage (every member
down) with recovery. After each heal :class:`Faults` has the checkers wait for
the PersistentLeases to come back and the consumers (raw watches too) to catch up.

How a "kill" stops a member is :func:`kill_signal_for`'s choice: SIGKILL, except on etcd
3.5.0-3.5.2, where a SIGKILL can make members diverge (etcd-io/etcd#13766).

:func:`revive_panicked` restarts, as a supervisor would, a member that died of a known server
bug rather than of a fault of ours: etcd 3.5.0-3.5.4 panics when a client gives up on a
read-only transaction while the member is still executing it (etcd-io/etcd#14110, fixed in
3.5.5), which a hung member resumed after SIGSTOP does as it works through requests whose
callers long timed out (ours and Go's alike). Two such panics take a 3-member cluster's quorum,
and every later fault then finds no leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
from collections.abc import Callable

from bench.chaos.checker import Checker
from bench.chaos.raw import RawChecker
from bench.chaos.report import FAULTS
from bench.chaos.state import Run
from bench.chaos.writer import Writer
from etcdkit import CompactedError
from etcdkit.server import EtcdServer


class Faults:
    """Injects the configured faults at random until the run's duration is up."""

    def __init__(self, run: Run, writer: Writer, checker: Checker, raw: RawChecker) -> None:
        self.run = run
        self.writer = writer
        self.checker = checker
        self.raw = raw

    async def loop(self) -> None:
        rng = random.Random(f"{self.run.seed}/faults")
        cfg = self.run.cfg
        last_note = 0.0
        while self.run.elapsed() < self.run.duration:
            await asyncio.sleep(rng.uniform(*cfg.fault_gap))
            if self.run.elapsed() >= self.run.duration:
                break
            if self.run.leases and rng.random() < 0.3:
                lease = rng.choice(self.run.leases)
                lease.set_value(f"{lease.value.decode().split(':')[0]}:{rng.randrange(10**6)}")
            kind = rng.choice(cfg.faults)
            what = await self.inject(kind, rng)
            healed = time.monotonic()
            self.run.report.faults[kind] = self.run.report.faults.get(kind, 0) + 1
            self.run.context = f"after {what}"
            lease_times, catch_up, raw_catch_up = await asyncio.gather(
                self.checker.lease_recovery(healed),
                self.checker.catch_up(healed),
                self.raw.catch_up(healed),
            )
            self.run.event(
                f"healed {what}: leases back in {max(lease_times, default=0):.2f} s, "
                f"consumers caught up in {max(catch_up, default=0):.2f} s, "
                f"raw watches in {max(raw_catch_up, default=0):.2f} s"
            )
            self.run.context = "idle"
            if self.run.progress and self.run.elapsed() - last_note > 30:
                last_note = self.run.elapsed()
                r = self.run.report
                self.run.progress(
                    f"t={self.run.elapsed():.0f}s snapshots={r.snapshots_checked} "
                    f"faults={sum(r.faults.values())} mismatches={r.mismatch_count}"
                )

    async def inject(self, kind: str, rng: random.Random) -> str:
        """Inject one fault and heal it; returns a description."""
        dur = rng.uniform(*self.run.cfg.fault_duration)
        members: list[EtcdServer] = list(self.run.cluster.members)
        if kind in ("kill_member", "kill_leader", "pause_member", "pause_leader"):
            victim = rng.choice(members)
            if kind.endswith("leader"):
                with contextlib.suppress(Exception):
                    victim = await asyncio.to_thread(self.run.cluster.leader)
            idx = members.index(victim)
            what = f"{kind} m{idx} {dur:.1f}s"
            self.run.context = f"during {what}"
            self.run.event(what)
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
                dur = rng.uniform(*self.run.cfg.long_cut)
            cut = (
                [rng.choice(self.run.proxies)] if kind == "cut_one_link" else list(self.run.proxies)
            )
            what = f"{kind} {dur:.1f}s"
            self.run.context = f"during {what}"
            self.run.event(what)
            try:
                for p in cut:
                    await asyncio.to_thread(p.cut)
                await asyncio.sleep(dur)
            finally:
                for p in cut:
                    await asyncio.to_thread(p.restore)
        elif kind == "drop_client":
            what = kind
            self.run.event(what)
            for p in self.run.proxies:
                await asyncio.to_thread(p.drop_connections)
        elif kind == "compact":
            what = await self.compact()
        elif kind == "full_outage":
            what = f"{kind} {dur:.1f}s"
            self.run.context = f"during {what}"
            self.run.event(what)
            try:
                await asyncio.gather(*(asyncio.to_thread(self.kill, m) for m in members))
                await asyncio.sleep(dur)
            finally:
                await asyncio.gather(*(asyncio.to_thread(m.restart) for m in members))
        else:
            raise ValueError(f"unknown fault {kind!r}; choose from {FAULTS}")
        return what

    def kill(self, member: EtcdServer) -> None:
        if self.run.report.kill_signal == "SIGTERM":
            member.stop()
        else:
            member.kill()

    async def compact(self) -> str:
        async with self.writer.gate:  # the writer is between ops: its history is complete
            await self.writer.mark()  # the newest data event is in the log: replays stop there
            rev = await self.run.retry(self.run.direct.get_revision)
            self.run.history.cover(rev)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await self.checker.queue.join()  # check what was delivered while it is readable
            await self.raw.verify_log()  # ... and the event log, against etcd's replay
            rev = await self.raw.compactable(rev)  # nothing a raw watch may resume from
            await self.run.retry(lambda: self._compact_to(rev))
        # Each consumer's newest snapshot older than the compaction can now only be checked
        # against the writer's history: check it again that way (the history path, end to end).
        for name, recent in list(self.checker.recent.items()):
            for snap in [s for s in recent if s.revision < rev]:
                expected = self.run.history.at(snap.revision)
                self.checker.compare(name, snap.revision, dict(snap.tree), expected, "history")
        what = f"compact to {rev}"
        self.run.context = f"during {what}"
        self.run.event(what)
        return what

    async def _compact_to(self, rev: int) -> None:
        """Compact to ``rev``; etcd's "required revision has been compacted" means the store
        is compacted to ``rev`` or past it already: by a try of this one whose answer a fault
        lost (run.retry tries again), or by the last compaction when a raw watch held both at
        its revision (RawChecker.compactable). Either way what this fault asks holds."""
        try:
            await self.run.direct.compact(rev)
        except CompactedError:
            self.run.event(f"compact to {rev}: compacted that far already")


# etcd-io/etcd#14110: the panic a cancelled read-only txn causes on etcd 3.5.0-3.5.4
TXN_PANIC = '"msg":"unexpected error during txn","error":"context canceled"'
START_MARK = "--- etcdkit: starting"


def panicked(member: EtcdServer) -> bool:
    """The member exited on its own with the etcd-io/etcd#14110 panic since it last started
    (never one we killed or stopped: their logs end without it)."""
    if member.running:
        return False
    log = member.logs(400)
    return TXN_PANIC in log[log.rfind(START_MARK) :]


async def revive_panicked(
    members: list[EtcdServer], progress: Callable[[str], None] | None = None
) -> int:
    """Start every member :func:`panicked` again, without waiting for it to be healthy (with
    two down, none is healthy alone); returns how many."""
    dead = [m for m in members if panicked(m)]
    for m in dead:
        if progress is not None:
            progress(f"{m.name} died of etcd-io/etcd#14110 (a cancelled read-only txn); restarting")
        await asyncio.to_thread(m.start, wait=False)
    return len(dead)


def kill_signal_for(choice: str, version: str) -> str:
    """The signal a "kill" fault sends, for ``ChaosConfig.kill_signal`` on etcd ``version``."""
    if choice in ("SIGKILL", "SIGTERM"):
        return choice
    if choice != "auto":
        raise ValueError(f"kill_signal must be auto, SIGKILL or SIGTERM, not {choice!r}")
    parts = tuple(int(p) for p in re.findall(r"\d+", version)[:3])
    return "SIGTERM" if (3, 5, 0) <= parts < (3, 5, 3) else "SIGKILL"
