"""The STM fault checker: bank transfers keep the sum of the accounts at every revision, under
each isolation level that promises it, through real faults on a real 3-member cluster.

``await run_stm_chaos(seed, duration)`` returns an :class:`StmChaosReport`;
``tests/test_stm.py`` runs it briefly (``pytest -m chaos``). By hand: ``python -m
bench.chaos.stm --seconds 30`` prints the report as JSON (exit status 1 on a violation).

The machinery is the lock checker's (see :mod:`bench.chaos.workers`). ACCOUNTS accounts start
at START each. Each worker process runs ``count`` workers, each on a client of its own and at
one of the three levels that promise the invariant (``serializable_snapshot``,
``serializable``, ``repeatable_reads``, by turns). A worker makes random transfers (read both
accounts, write both; none when the source has too little) and, one time in five, an audit:
a read-only STM that reads every account and reports their sum. It reports each transfer as
committed (with what it moved), unknown (:class:`OutcomeUnknownError`), or failed.

Checks, once the workers stopped, on etcd's own history of the accounts (nothing is
compacted; a watch from the revision that opened them replays every commit):

- at every revision the sum is ACCOUNTS * START and no balance is negative;
- every revision moves one amount from one account to another (one transfer, atomically);
- the committed transfers are each one of those revisions, and every other revision is one of
  the transfers whose outcome was unknown;
- every committed audit saw the whole sum.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from bench.chaos.locks import LockChaosConfig, LockChaosReport, _retry, _Run, emit, run_contenders
from bench.chaos.workers import config, main_of, no_holder, worker_argv
from etcdkit import (
    AsyncClient,
    Compare,
    ConflictError,
    EtcdkitError,
    Op,
    OutcomeUnknownError,
    Stm,
)
from etcdkit.recipes.stm import Isolation

PREFIX = "/chaos/stm/acct/"
ACCOUNTS = 5
START = 100
LEVELS: tuple[Isolation, ...] = ("serializable_snapshot", "serializable", "repeatable_reads")
READY = "/chaos/stm/ready"  # its create revision: where the history of transfers starts
VERIFY = "/chaos/stm/verify"  # written once the workers stopped (see _verify)

Move = tuple[int, int, int]  # (from, to, amount)


@dataclass
class StmChaosReport(LockChaosReport):
    committed: dict[str, int] = field(default_factory=dict)  # per isolation level
    unknown: int = 0
    conflicts: int = 0  # ConflictError: gave up after its attempts, nothing written
    failed: int = 0
    audits: int = 0
    revisions: int = 0  # commits in etcd's history
    unknown_landed: int = 0
    marker: int = 0  # the revision of the write made once the workers stopped
    replay_target: int = 0  # the accounts' last mod revision at that revision
    replayed_to: int = 0  # the last revision the replay saw a commit at

    def summary(self) -> str:
        rec = max(self.recoveries, default=0.0)
        return (
            f"stm chaos seed={self.seed} {self.duration:.0f}s etcd {self.etcd_version} "
            f"(kill={self.kill_signal}): {self.contenders} workers, transfers committed "
            f"{self.committed}, {self.unknown} unknown ({self.unknown_landed} landed), "
            f"{self.conflicts} gave up, {self.failed} failed; {self.audits} audits; "
            f"{self.revisions} commits replayed (to revision {self.replayed_to} of "
            f"{self.replay_target}, marker {self.marker}); faults {sum(self.faults.values())} "
            f"{self.faults}, recovery max {rec:.2f}s; server panics {self.server_panics}, "
            f"violations {len(self.violations)}, "
            f"took {self.elapsed:.0f}s"
        )


# -- the checks, free of I/O ----------------------------------------------------------------------


def check_replay(
    start: list[int],
    commits: list[tuple[int, dict[int, int]]],
    committed: list[Move],
    unknown: list[Move],
) -> tuple[list[str], int]:
    """``commits``: (revision, {account: new balance}) per revision that changed accounts, in
    order. Returns the violations and how many commits were unknown transfers."""
    bad: list[str] = []
    total = sum(start)
    balances = list(start)
    seen: Counter[Move] = Counter()
    for rev, changes in commits:
        before = list(balances)
        for acct, value in changes.items():
            balances[acct] = value
        if sum(balances) != total or min(balances) < 0:
            bad.append(f"revision {rev}: balances {balances} (sum {sum(balances)}, not {total})")
        delta = {a: balances[a] - before[a] for a in changes if balances[a] != before[a]}
        down = [a for a, d in delta.items() if d < 0]
        up = [a for a, d in delta.items() if d > 0]
        if len(down) != 1 or len(up) != 1:
            bad.append(f"revision {rev} is not one transfer: {delta}")
            continue
        seen[(down[0], up[0], delta[up[0]])] += 1
    want = Counter(m for m in committed if m[2] > 0)
    missing = want - seen
    if missing:
        bad.append(f"committed transfers not in etcd's history: {dict(missing)}")
    extra = seen - want
    unexplained = extra - Counter(unknown)
    if unexplained:
        bad.append(f"transfers in etcd's history that no worker committed: {dict(unexplained)}")
    return bad, sum(extra.values())


# -- a worker process -----------------------------------------------------------------------------


def transfer(src: int, dst: int, amount: int) -> Callable[[Stm], Awaitable[Move]]:
    async def fn(stm: Stm) -> Move:
        a = int(await stm.get(f"{PREFIX}{src}") or b"0")
        b = int(await stm.get(f"{PREFIX}{dst}") or b"0")
        if a < amount:
            return (src, dst, 0)
        stm.put(f"{PREFIX}{src}", str(a - amount))
        stm.put(f"{PREFIX}{dst}", str(b + amount))
        return (src, dst, amount)

    return fn


async def audit(stm: Stm) -> int:
    return sum([int(await stm.get(f"{PREFIX}{i}") or b"0") for i in range(ACCOUNTS)])


async def worker(who: str, level: Isolation, endpoints: list[str], stop: asyncio.Event) -> None:
    rng = random.Random(who)
    async with AsyncClient(endpoints, timeout=1.0) as client:
        await _retry(open_accounts, client)
        while not stop.is_set():
            if rng.random() < 0.2:
                try:
                    total = await client.stm(audit, level)
                except (EtcdkitError, TimeoutError):
                    await asyncio.sleep(0.05)
                    continue
                emit(ev="audit", who=who, level=level, total=total, t=time.monotonic())
                continue
            src, dst = rng.sample(range(ACCOUNTS), 2)
            move = (src, dst, rng.randint(1, 40))
            try:
                done = await client.stm(transfer(*move), level)
            except OutcomeUnknownError:
                emit(ev="transfer", who=who, move=move, ok=None, t=time.monotonic())
            except ConflictError:
                emit(ev="transfer", who=who, move=move, ok=False, conflict=True, t=time.monotonic())
            except (EtcdkitError, TimeoutError) as exc:
                emit(
                    ev="transfer", who=who, move=move, ok=False, error=str(exc), t=time.monotonic()
                )
                await asyncio.sleep(0.05)
            else:
                emit(ev="write", who=who, level=level, move=done, ok=True, t=time.monotonic())
            await asyncio.sleep(rng.uniform(0.002, 0.02))  # leave the members some CPU


async def work(args: argparse.Namespace, stop: asyncio.Event) -> None:
    endpoints = args.endpoints.split(",")
    tag = int(args.tag.lstrip("p") or 0)
    await asyncio.gather(
        *(
            worker(f"{args.tag}.{i}", LEVELS[(tag * args.count + i) % len(LEVELS)], endpoints, stop)
            for i in range(args.count)
        )
    )


# -- the run --------------------------------------------------------------------------------------


async def run_stm_chaos(
    seed: int,
    duration: float,
    *,
    config_: LockChaosConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> StmChaosReport:
    """Run the STM checker for ``duration`` seconds of faults; never raises for a violated
    guarantee: read ``report.violations``."""
    cfg = config_ or config()
    report = StmChaosReport(seed=seed, duration=duration)
    argv = worker_argv("bench.chaos.stm", cfg)
    return await run_contenders(report, cfg, argv, _verify, no_holder, progress)


async def open_accounts(client: AsyncClient) -> int:
    """Open the accounts, once for the whole run (the first worker to come does it, with
    READY in the same transaction); returns the revision they were opened at."""
    await client.txn(
        [Compare.version(READY, "==", 0)],
        [Op.put(f"{PREFIX}{i}", str(START)) for i in range(ACCOUNTS)] + [Op.put(READY, "1")],
    )
    kv = await client.get(READY)
    assert kv is not None
    return kv.create_revision


async def _verify(direct: AsyncClient, run: _Run) -> None:
    report = run.report
    assert isinstance(report, StmChaosReport)
    ready = await _retry(direct.get, READY)
    if ready is None:
        report.violations.append("the accounts were never opened")
        return
    opened = ready.create_revision
    # The last commit to replay up to, read AT a revision no acknowledged commit can be after:
    # a write's (made through the leader, once every worker stopped). A plain read could come
    # from a member still catching up (one revived after a panic, say): the replay would then
    # stop early and the commits after it would look lost.
    report.marker = await _retry(direct.put, VERIFY, "1")
    now = await _retry(direct.range, PREFIX, prefix=True, revision=report.marker)
    last = max((kv.mod_revision for kv in now.kvs), default=opened)
    report.replay_target = last
    commits: dict[int, dict[int, int]] = {}
    if last > opened:  # replay every commit since the accounts were opened
        async with direct.watch(PREFIX, prefix=True, start_revision=opened + 1) as w:
            async for batch in w:
                for ev in batch.events:
                    acct = int(ev.kv.key.rsplit(b"/", 1)[-1])
                    commits.setdefault(ev.kv.mod_revision, {})[acct] = int(ev.kv.value)
                if commits and max(commits) >= last:
                    break
        report.replayed_to = max(commits, default=opened)
    committed: list[Move] = []
    unknown: list[Move] = []
    levels: Counter[str] = Counter()
    for e in run.events:
        if e["ev"] == "write":
            committed.append(tuple(e["move"]))
            levels[e["level"]] += 1
        elif e["ev"] == "transfer":
            if e["ok"] is None:
                unknown.append(tuple(e["move"]))
            elif e.get("conflict"):
                report.conflicts += 1
            else:
                report.failed += 1
        elif e["ev"] == "audit":
            report.audits += 1
            if e["total"] != ACCOUNTS * START:
                report.violations.append(f"an audit at {e['level']} saw a sum of {e['total']}")
    report.committed = dict(levels)
    report.unknown = len(unknown)
    history = [(rev, commits[rev]) for rev in sorted(commits)]
    report.revisions = len(history)
    bad, report.unknown_landed = check_replay([START] * ACCOUNTS, history, committed, unknown)
    report.violations.extend(bad)
    for level in LEVELS:
        if levels[level] < 10:
            report.violations.append(f"only {levels[level]} transfers committed at {level}")


def main(argv: list[str] | None = None) -> int:
    return main_of("python -m bench.chaos.stm", work, run_stm_chaos, argv)


if __name__ == "__main__":
    sys.exit(main())
