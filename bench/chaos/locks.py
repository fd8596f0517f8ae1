"""The lock fault checker: fenced writes stay in token order, and no stale holder's write
lands, through real faults, on a real 3-member cluster.

``await run_lock_chaos(seed, duration)`` returns a :class:`LockChaosReport`;
``tests/test_lock_chaos.py`` runs it in CI (``pytest -m chaos``). ``python -m bench.chaos.locks
--seconds 120`` runs it by hand and prints the report as JSON.

- **Contenders**: PROCESSES processes (``python -m bench.chaos.locks contend ...``), each with
  PER_PROCESS contenders, each on an :class:`AsyncClient` of its own that reaches the members
  through its process's own proxies (one per member), so one process can be cut off alone.
  A contender loops: ``lock.acquire()``, then for a random time writes *fenced records*: a
  txn ``if lock.guard() then put(journal, "token contender seq")``; then releases. When its
  lock is lost it makes one more fenced write on purpose, as a late stale holder would. Every
  acquisition, write (accepted, refused, unknown), loss and release is reported as a JSON line
  with the process's ``time.monotonic()`` (one clock for every process on the machine).
- **Faults**, one at a time, each healed in ``finally``, in a seeded shuffled rotation so that
  every kind happens: kill and restart a member or the leader (SIGKILL; SIGTERM on etcd
  3.5.0-3.5.2, see the README), SIGSTOP/SIGCONT a member or the leader, cut one process's
  proxies (a partition; for longer than the TTL now and then, so its sessions expire), and
  revoke the current holder's lease.
- **Checks**: after every heal, some contender makes an accepted fenced write within
  ``ttl + RECOVERY_SLACK`` seconds. At the end, every version of the journal key (all of its
  history: nothing is compacted) is read back with the lock keys at its revision: the record's
  token must be the create revision of the oldest lock key at that revision (its writer held
  the lock when etcd applied the write: no stale holder's write was accepted), tokens never go
  down from one record to the next and change only with the writer; every write a contender
  saw accepted is in the journal. Where two contenders *believed* they held at once (the
  instant between etcd handing over and the old holder hearing of it) is counted, not a
  violation: that is what the fencing is for.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import random
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from bench.chaos.faults import kill_signal_for, revive_panicked
from etcdkit import AsyncClient, EtcdkitError, HoldState, KeyValue, Op
from etcdkit.server import EtcdCluster, EtcdServer, Proxy

T = TypeVar("T")
R = TypeVar("R", bound="LockChaosReport")

NAME = "/chaos/locks/job"
JOURNAL = "/chaos/locks/journal"
RECOVERY_SLACK = 6.0  # someone holds within ttl + this after a heal
LOCK_FAULTS = (
    "kill_member",
    "kill_leader",
    "pause_member",
    "pause_leader",
    "cut_process",
    "revoke_holder",
)


@dataclass(frozen=True)
class LockChaosConfig:
    """Knobs of one run; the defaults suit a 2-core machine and a CI minute."""

    processes: int = 3
    per_process: int = 2
    ttl: int = 2
    hold: tuple[float, float] = (0.05, 0.4)  # seconds a contender keeps the lock
    write_every: float = 0.03
    fault_gap: tuple[float, float] = (0.5, 1.5)
    fault_duration: tuple[float, float] = (0.5, 2.0)
    long_cut: tuple[float, float] = (3.0, 4.0)  # past the TTL: the process's sessions expire
    faults: tuple[str, ...] = LOCK_FAULTS
    kill_signal: str = "auto"


@dataclass
class LockChaosReport:
    seed: int
    duration: float
    etcd_version: str = ""
    kill_signal: str = ""
    contenders: int = 0
    acquisitions: int = 0
    losses: int = 0
    writes_accepted: int = 0
    writes_refused: int = 0  # by the guard: the writer no longer held the lock
    writes_unknown: int = 0  # no answer in time (they may have landed: the journal says)
    journal_records: int = 0
    stale_writes_tried: int = 0  # the one extra fenced write after each loss
    stale_writes_accepted: int = 0  # ... that etcd accepted (allowed only while still holder)
    faults: dict[str, int] = field(default_factory=dict)
    recoveries: list[float] = field(default_factory=list)  # heal -> next accepted write, s
    belief_overlaps: int = 0
    max_overlap_ms: float = 0.0
    server_panics: int = 0  # members restarted after etcd-io/etcd#14110 (not a fault of ours)
    violations: list[str] = field(default_factory=list)
    elapsed: float = 0.0

    def summary(self) -> str:
        rec = max(self.recoveries, default=0.0)
        return (
            f"lock chaos seed={self.seed} {self.duration:.0f}s etcd {self.etcd_version} "
            f"(kill={self.kill_signal}): {self.contenders} contenders, "
            f"{self.acquisitions} acquisitions, {self.losses} losses, "
            f"{self.writes_accepted} fenced writes accepted / {self.writes_refused} refused / "
            f"{self.writes_unknown} unknown, {self.journal_records} journal records, "
            f"stale writes {self.stale_writes_accepted}/{self.stale_writes_tried} accepted "
            f"(each by a key still oldest), faults {sum(self.faults.values())} {self.faults}, "
            f"recovery max {rec:.2f}s, belief overlaps {self.belief_overlaps} "
            f"(max {self.max_overlap_ms:.1f} ms), server panics {self.server_panics}, "
            f"violations {len(self.violations)}, "
            f"took {self.elapsed:.0f}s"
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self))


# -- the checks, free of I/O ----------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One version of the journal key, with the oldest lock key's create revision then."""

    revision: int
    token: int
    writer: str
    oldest: int  # create revision of the oldest lock key at ``revision`` (0: none)


def parse_record(revision: int, value: bytes, oldest: int) -> Record:
    token, writer, _seq = value.decode().split(" ", 2)
    return Record(revision, int(token), writer, oldest)


def check_journal(records: list[Record]) -> list[str]:
    """Every fenced record was written by the holder of the moment, in token order."""
    bad: list[str] = []
    ordered = sorted(records, key=lambda r: r.revision)
    for r in ordered:
        if r.token != r.oldest:
            bad.append(
                f"stale write accepted at revision {r.revision}: token {r.token} by {r.writer}, "
                f"but the holder then had token {r.oldest or 'none'}"
            )
    for a, b in itertools.pairwise(ordered):
        if b.token < a.token:
            bad.append(
                f"token went down at revision {b.revision}: {a.token} ({a.writer}) -> "
                f"{b.token} ({b.writer})"
            )
        elif b.token == a.token and b.writer != a.writer:
            bad.append(f"two writers with token {a.token}: {a.writer} and {b.writer}")
    return bad


def belief_overlaps(intervals: dict[str, list[tuple[float, float]]]) -> tuple[int, float]:
    """How often two contenders believed they held at once, and the longest such time (ms)."""
    spans = sorted((s, e, who) for who, lst in intervals.items() for s, e in lst)
    count, longest = 0, 0.0
    for i, (_s1, e1, w1) in enumerate(spans):
        for s2, e2, w2 in spans[i + 1 :]:
            if s2 >= e1:
                break
            if w1 != w2:
                count += 1
                longest = max(longest, (min(e1, e2) - s2) * 1000.0)
    return count, longest


# -- a contender process --------------------------------------------------------------------------


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


async def contender(
    who: str, endpoints: list[str], ttl: int, cfg: LockChaosConfig, stop: asyncio.Event
) -> None:
    rng = random.Random(who)
    async with AsyncClient(endpoints, timeout=1.0) as client:
        seq = 0
        while not stop.is_set():
            lock = client.lock(NAME, ttl=ttl, timeout=3.0)
            try:
                held = await lock.acquire()  # this acquisition's own handle
            except (EtcdkitError, TimeoutError):
                await asyncio.sleep(0.05)
                continue
            token = held.fencing_token
            emit(ev="acquired", who=who, token=token, t=time.monotonic())
            lost_at: list[float] = []
            held.add_listener(_when_lost(lost_at))
            until = time.monotonic() + rng.uniform(*cfg.hold)
            while time.monotonic() < until and not held.lost.is_set() and not stop.is_set():
                seq += 1
                await fenced_write(client, held.guard(), who, token, seq, "write")
                await asyncio.sleep(cfg.write_every)
            if held.lost.is_set():
                emit(ev="lost", who=who, token=token, t=lost_at[0] if lost_at else time.monotonic())
                seq += 1
                await fenced_write(client, held.guard(), who, token, seq, "stale")
            else:
                emit(ev="releasing", who=who, token=token, t=time.monotonic())
            with contextlib.suppress(EtcdkitError):
                await held.release()


def _when_lost(into: list[float]) -> Callable[[HoldState], None]:
    def on_state(state: HoldState) -> None:
        if state is HoldState.LOST:
            into.append(time.monotonic())

    return on_state


async def fenced_write(
    client: AsyncClient, guard: Any, who: str, token: int, seq: int, kind: str
) -> None:
    try:
        res = await client.txn([guard], [Op.put(JOURNAL, f"{token} {who} {seq}")])
    except (EtcdkitError, TimeoutError):
        emit(ev=kind, who=who, token=token, seq=seq, ok=None, t=time.monotonic())
        return
    emit(
        ev=kind,
        who=who,
        token=token,
        seq=seq,
        ok=res.succeeded,
        rev=res.revision,
        t=time.monotonic(),
    )


async def contend_main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.ERROR)  # faults make etcdkit warn a lot; that is expected
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    cfg = LockChaosConfig()
    endpoints = args.endpoints.split(",")
    await asyncio.gather(
        *(contender(f"{args.tag}.{i}", endpoints, args.ttl, cfg, stop) for i in range(args.count))
    )


# -- the run --------------------------------------------------------------------------------------


class _Run:
    """What the orchestrator knows while a run goes on."""

    def __init__(self, report: LockChaosReport) -> None:
        self.report = report
        self.events: list[dict[str, Any]] = []
        self.accepted = asyncio.Event()  # set on every accepted fenced write
        self.last_accepted = 0.0

    def take(self, ev: dict[str, Any]) -> None:
        self.events.append(ev)
        if ev["ev"] == "write" and ev.get("ok"):
            self.last_accepted = max(self.last_accepted, ev["t"])
            self.accepted.set()

    def holder_process(self) -> int | None:
        """The process of the contender that acquired last ("p1.0" -> 1)."""
        for ev in reversed(self.events):
            if ev["ev"] == "acquired":
                return int(ev["who"].split(".")[0][1:])
        return None

    async def accepted_after(self, t: float, bound: float) -> float | None:
        """Seconds from ``t`` to the first accepted fenced write after it (None: none)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(bound):
                while self.last_accepted < t:
                    self.accepted.clear()
                    await self.accepted.wait()
                return max(0.0, self.last_accepted - t)
        return None


async def run_lock_chaos(
    seed: int,
    duration: float,
    *,
    config: LockChaosConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> LockChaosReport:
    """Run the lock checker for ``duration`` seconds of faults; never raises for a violated
    guarantee: read ``report.violations``."""
    cfg = config or LockChaosConfig()

    def argv(i: int, group: list[Proxy]) -> list[str]:
        return [
            "-m", "bench.chaos.locks", "contend",
            "--endpoints", ",".join(p.endpoint for p in group),
            "--count", str(cfg.per_process), "--ttl", str(cfg.ttl), "--tag", f"p{i}",
        ]  # fmt: skip

    report = LockChaosReport(seed=seed, duration=duration)
    return await run_contenders(report, cfg, argv, _verify, _oldest_lock_key, progress)


async def _oldest_lock_key(direct: AsyncClient) -> KeyValue | None:
    kvs = (await direct.get_prefix(NAME + "/")).kvs
    return min(kvs, key=lambda kv: kv.create_revision) if kvs else None


async def run_contenders(
    report: R,
    cfg: LockChaosConfig,
    argv: Callable[[int, list[Proxy]], list[str]],
    verify: Callable[[AsyncClient, _Run], Awaitable[None]],
    holder: Callable[[AsyncClient], Awaitable[KeyValue | None]],
    progress: Callable[[str], None] | None = None,
) -> R:
    """The machinery of a fault run, for any recipe whose contender processes print this
    module's JSON lines (``acquired``, ``write``, ``lost``, ... with ``who``, ``token``,
    ``t``): a 3-member cluster; ``cfg.processes`` processes (``python`` + ``argv(i, its
    proxies)``), each reaching the members through proxies of its own; ``cfg.faults`` for
    ``report.duration`` seconds, one at a time, each healed and followed by a recovery check
    (``revoke_holder`` revokes the lease of the key ``holder(direct)`` names); then
    ``verify(direct, run)``. Fills ``report``; never raises for a violated guarantee."""
    unknown = set(cfg.faults) - set(LOCK_FAULTS)
    if unknown:
        raise ValueError(f"unknown faults {sorted(unknown)}; choose from {LOCK_FAULTS}")
    seed, duration = report.seed, report.duration
    report.contenders = cfg.processes * cfg.per_process
    started = time.monotonic()
    cluster = EtcdCluster(size=3)
    report.etcd_version = cluster.members[0].version
    report.kill_signal = kill_signal_for(cfg.kill_signal, report.etcd_version)
    await asyncio.to_thread(cluster.start)
    proxies = [[Proxy(m.endpoint) for m in cluster.members] for _ in range(cfg.processes)]
    run = _Run(report)
    procs: list[asyncio.subprocess.Process] = []
    readers: list[asyncio.Task[None]] = []
    try:
        async with AsyncClient(cluster.endpoints, timeout=2.0) as direct:
            for i, group in enumerate(proxies):
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    *argv(i, group),
                    stdout=asyncio.subprocess.PIPE,
                    env=_child_env(),
                )
                procs.append(proc)
                readers.append(asyncio.create_task(_read(proc, run)))
            first = await run.accepted_after(time.monotonic() - 60, 30.0)
            if first is None:
                report.violations.append("no contender ever made an accepted fenced write")
            supervisor = asyncio.create_task(_supervise(cluster, report, progress))
            try:
                await _faults(cfg, seed, duration, cluster, proxies, direct, run, progress, holder)
            finally:
                supervisor.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await supervisor
            for proc in procs:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(20.0):
                    await asyncio.gather(*(p.wait() for p in procs))
            await asyncio.gather(*readers, return_exceptions=True)
            for i, p in enumerate(procs):
                if p.returncode != 0:
                    report.violations.append(f"contender process p{i} exited with {p.returncode}")
            await verify(direct, run)
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
        for group in proxies:
            for proxy in group:
                proxy.close()
        await asyncio.to_thread(cluster.close)
    report.elapsed = time.monotonic() - started
    return report


def _child_env() -> dict[str, str]:
    from bench._common import child_env

    return child_env()


async def _supervise(
    cluster: EtcdCluster, report: LockChaosReport, progress: Callable[[str], None] | None
) -> None:
    """Restart members that died of etcd-io/etcd#14110 while the faults run (see
    :func:`revive_panicked`); counted in ``report.server_panics``."""
    while True:
        await asyncio.sleep(0.25)
        report.server_panics += await revive_panicked(list(cluster.members), progress)


async def _read(proc: asyncio.subprocess.Process, run: _Run) -> None:
    assert proc.stdout is not None
    async for line in proc.stdout:
        with contextlib.suppress(ValueError):
            run.take(json.loads(line))


async def _faults(
    cfg: LockChaosConfig,
    seed: int,
    duration: float,
    cluster: EtcdCluster,
    proxies: list[list[Proxy]],
    direct: AsyncClient,
    run: _Run,
    progress: Callable[[str], None] | None,
    holder: Callable[[AsyncClient], Awaitable[KeyValue | None]] = _oldest_lock_key,
) -> None:
    rng = random.Random(f"{seed}/lock-faults")
    report = run.report
    rotation: list[str] = []
    t_end = time.monotonic() + duration
    injected = 0
    while time.monotonic() < t_end or injected < len(cfg.faults):  # every kind at least once
        injected += 1
        await asyncio.sleep(rng.uniform(*cfg.fault_gap))
        if not rotation:
            rotation = list(cfg.faults)
            rng.shuffle(rotation)
        kind = rotation.pop()
        what = await _inject(kind, rng, cfg, cluster, proxies, direct, run, holder)
        healed = time.monotonic()
        report.faults[kind] = report.faults.get(kind, 0) + 1
        took = await run.accepted_after(healed, cfg.ttl + RECOVERY_SLACK)
        if took is None:
            report.violations.append(
                f"nobody made an accepted fenced write within {cfg.ttl + RECOVERY_SLACK:g} s "
                f"after healing {what}"
            )
        else:
            report.recoveries.append(took)
        if progress is not None:
            after = "nobody wrote" if took is None else f"a holder wrote {took:.2f} s later"
            progress(f"healed {what}; {after}")


async def _inject(
    kind: str,
    rng: random.Random,
    cfg: LockChaosConfig,
    cluster: EtcdCluster,
    proxies: list[list[Proxy]],
    direct: AsyncClient,
    run: _Run,
    holder: Callable[[AsyncClient], Awaitable[KeyValue | None]] = _oldest_lock_key,
) -> str:
    dur = rng.uniform(*cfg.fault_duration)
    members: list[EtcdServer] = list(cluster.members)
    if kind in ("kill_member", "kill_leader", "pause_member", "pause_leader"):
        victim = rng.choice(members)
        if kind.endswith("leader"):
            with contextlib.suppress(Exception):
                victim = await asyncio.to_thread(cluster.leader)
        if kind.startswith("kill"):
            stop = victim.stop if run.report.kill_signal == "SIGTERM" else victim.kill
            await asyncio.to_thread(stop)
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
        return f"{kind} {victim.name} {dur:.1f}s"
    if kind == "cut_process":
        i = run.holder_process()  # the holder's, so that it loses the lock on a long cut
        if i is None or i >= len(proxies):
            i = rng.randrange(len(proxies))
        if rng.random() < 0.5:
            dur = rng.uniform(*cfg.long_cut)
        try:
            for p in proxies[i]:
                p.cut()
            await asyncio.sleep(dur)
        finally:
            for p in proxies[i]:
                p.restore()
        return f"{kind} p{i} {dur:.1f}s"
    if kind == "revoke_holder":
        for _ in range(20):
            with contextlib.suppress(EtcdkitError):
                held = await holder(direct)
                if held is not None:
                    with contextlib.suppress(EtcdkitError):
                        await direct.revoke(held.lease)
                    return f"{kind} {held.key.decode()}"
            await asyncio.sleep(0.05)
        return f"{kind} (nobody held)"
    raise ValueError(f"unknown fault {kind!r}")


def count_events(run: _Run) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Count what the contenders reported into ``run.report`` (acquisitions, losses, fenced
    writes by outcome, stale writes, and where two believed they held at once); returns the
    fenced writes and the stale writes."""
    report = run.report
    events = run.events
    report.acquisitions = sum(1 for e in events if e["ev"] == "acquired")
    report.losses = sum(1 for e in events if e["ev"] == "lost")
    writes = [e for e in events if e["ev"] == "write"]
    report.writes_accepted = sum(1 for e in writes if e["ok"])
    report.writes_refused = sum(1 for e in writes if e["ok"] is False)
    report.writes_unknown = sum(1 for e in writes if e["ok"] is None)
    stale = [e for e in events if e["ev"] == "stale"]
    report.stale_writes_tried = len(stale)
    report.stale_writes_accepted = sum(1 for e in stale if e["ok"])
    intervals: dict[str, list[tuple[float, float]]] = {}
    start: dict[str, float] = {}
    for e in sorted(events, key=lambda e: e["t"]):
        if e["ev"] == "acquired":
            start[e["who"]] = e["t"]
        elif e["ev"] in ("lost", "releasing") and e["who"] in start:
            intervals.setdefault(e["who"], []).append((start.pop(e["who"]), e["t"]))
    report.belief_overlaps, report.max_overlap_ms = belief_overlaps(intervals)
    return writes, stale


async def _verify(direct: AsyncClient, run: _Run) -> None:
    report = run.report
    writes, stale = count_events(run)

    # Every version of the journal, newest first, each with the lock keys at its revision.
    records: list[Record] = []
    kv = await _retry(direct.get, JOURNAL)
    rev = kv.mod_revision if kv is not None else 0
    while rev > 0:
        at = await _retry(direct.get, JOURNAL, revision=rev)
        assert at is not None
        locks = await _retry(direct.get_prefix, NAME + "/", revision=at.mod_revision)
        oldest = min((k.create_revision for k in locks.kvs), default=0)
        records.append(parse_record(at.mod_revision, at.value, oldest))
        rev = at.mod_revision - 1 if at.version > 1 else 0
    report.journal_records = len(records)
    report.violations.extend(check_journal(records))
    in_journal = {(r.revision, r.token, r.writer) for r in records}
    for e in writes + stale:
        if e["ok"] and (e["rev"], e["token"], e["who"]) not in in_journal:
            report.violations.append(f"accepted write missing from the journal: {e}")


async def _retry(fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
    for attempt in range(20):
        try:
            return await fn(*args, **kwargs)
        except (EtcdkitError, TimeoutError):
            if attempt == 19:
                raise
            await asyncio.sleep(0.2)
    raise AssertionError("unreachable")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos.locks")
    sub = parser.add_subparsers(dest="mode")
    c = sub.add_parser("contend")
    c.add_argument("--endpoints", required=True)
    c.add_argument("--count", type=int, default=2)
    c.add_argument("--ttl", type=int, default=2)
    c.add_argument("--tag", default="p")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=20261126)
    args = parser.parse_args(argv)
    if args.mode == "contend":
        asyncio.run(contend_main(args))
        return 0

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    report = asyncio.run(run_lock_chaos(args.seed, args.seconds, progress=say))
    say(report.summary())
    print(report.to_json())
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
