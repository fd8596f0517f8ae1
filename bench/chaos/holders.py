"""Fault checkers for the recipes that let several hold at once: the semaphore (never more than
``permits`` fenced holders) and the read-write lock (never a writer together with anyone),
through real faults on a real 3-member cluster.

``await run_holders_chaos("semaphore" | "rwlock", seed, duration)`` returns a
:class:`HoldersChaosReport`; ``tests/test_holders_chaos.py`` runs both in CI (``pytest -m
chaos``). By hand: ``python -m bench.chaos.holders --recipe semaphore --seconds 30`` prints the
report as JSON (exit status 1 on a violation).

The machinery is the lock checker's (:func:`bench.chaos.locks.run_contenders`): contender
processes behind proxies of their own, kills and pauses of members and of the leader, cuts of
one process (now and then past the TTL), revokes of a holder's lease, one at a time, each healed
and followed by a recovery check. Only the contenders and the checks are this module's:

- **Contenders** loop: acquire (a permit of ``/chaos/semaphore/pool``, or a read or write hold
  of ``/chaos/rwlock/doc``, a write one time in three), then for a random time make *fenced
  writes*: ``if hold.guard() then put(journal, "token who seq mode")``; when the hold is lost,
  one more fenced write, as a late stale holder would; then release.
- **Checks**, on etcd's own history (nothing is compacted): every version of the journal key
  is read with the recipe's keys at its revision. Semaphore: the record's token is the create
  revision of a holder key then, and there were never more than ``permits`` holder keys at any
  revision (every revision of the run is replayed from a watch). Read-write lock: a writer's
  token is the oldest key of the lock then, a reader's is a reader key with no older writer
  key. Both: the fenced writes of one holder span an interval of revisions; at no revision
  were more than ``permits`` such intervals open (semaphore), and no writer's interval meets
  another's (read-write lock). Every write a contender saw accepted is in the journal.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from bench.chaos.locks import (
    LockChaosConfig,
    LockChaosReport,
    _retry,
    _Run,
    _when_lost,
    count_events,
    emit,
    run_contenders,
)
from etcdkit import AsyncClient, Compare, EtcdkitError, EventType, KeyValue, Op, RWHold
from etcdkit.server import Proxy

Recipe = Literal["semaphore", "rwlock"]

SEMAPHORE = "/chaos/semaphore/pool"
RWLOCK = "/chaos/rwlock/doc"
JOURNAL = "/chaos/holders/journal"
PERMITS = 2


@dataclass
class HoldersChaosReport(LockChaosReport):
    recipe: str = ""
    permits: int = 0
    max_holder_keys: int = 0  # semaphore: most holder keys at one revision, over the whole run
    max_fenced_together: int = 0  # most holders whose fenced writes spanned one revision
    max_readers_together: int = 0  # rwlock: ... of them readers
    max_believed_together: int = 0  # most contenders that believed they held at one instant
    writes_by_writers: int = 0

    def summary(self) -> str:
        rec = max(self.recoveries, default=0.0)
        what = (
            f"permits {self.permits}, holder keys at most {self.max_holder_keys}"
            if self.recipe == "semaphore"
            else f"readers together at most {self.max_readers_together}, "
            f"{self.writes_by_writers} writes by writers"
        )
        return (
            f"{self.recipe} chaos seed={self.seed} {self.duration:.0f}s etcd {self.etcd_version} "
            f"(kill={self.kill_signal}): {self.contenders} contenders, {what}, fenced holders "
            f"together at most {self.max_fenced_together}, {self.acquisitions} acquisitions, "
            f"{self.losses} losses, {self.writes_accepted} fenced writes accepted / "
            f"{self.writes_refused} refused / {self.writes_unknown} unknown, "
            f"{self.journal_records} journal records, stale writes "
            f"{self.stale_writes_accepted}/{self.stale_writes_tried} accepted, faults "
            f"{sum(self.faults.values())} {self.faults}, recovery max {rec:.2f}s, believed "
            f"they held together at most {self.max_believed_together} (fencing covers the "
            f"rest), server panics {self.server_panics}, "
            f"violations {len(self.violations)}, took {self.elapsed:.0f}s"
        )


# -- the checks, free of I/O ----------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One version of the journal key, with the recipe's keys at its revision."""

    revision: int
    token: int
    writer: str
    mode: str  # "hold" (semaphore), "read" or "write"
    keys: tuple[KeyValue, ...]


def parse_entry(revision: int, value: bytes, keys: tuple[KeyValue, ...]) -> Entry:
    token, writer, _seq, mode = value.decode().split(" ", 3)
    return Entry(revision, int(token), writer, mode, keys)


def check_semaphore(entries: list[Entry], prefix: str, permits: int) -> list[str]:
    """Each record's writer held a permit (its holder key existed) when etcd applied it."""
    bad: list[str] = []
    holders = (prefix + "/holders/").encode()
    for e in entries:
        tokens = {kv.create_revision for kv in e.keys if kv.key.startswith(holders)}
        if e.token not in tokens:
            bad.append(
                f"stale write accepted at revision {e.revision}: token {e.token} by {e.writer}, "
                f"not a holder then (holders {sorted(tokens)})"
            )
        if len(tokens) > permits:
            bad.append(f"{len(tokens)} holder keys at revision {e.revision}, over {permits}")
    return bad


def check_rwlock(entries: list[Entry], prefix: str) -> list[str]:
    """Each record's writer held the lock in its mode when etcd applied it: a writer's key was
    the oldest, a reader's key had no older writer key."""
    bad: list[str] = []
    write = (prefix + "/write").encode()
    for e in entries:
        by_rev = sorted(e.keys, key=lambda kv: kv.mod_revision)
        mine = next((kv for kv in by_rev if kv.create_revision == e.token), None)
        if mine is None:
            bad.append(f"stale write at revision {e.revision}: {e.writer}'s key was gone")
            continue
        older = [kv for kv in by_rev if kv.mod_revision < mine.mod_revision]
        if e.mode == "write" and older:
            bad.append(
                f"writer {e.writer} (token {e.token}) wrote at revision {e.revision} with "
                f"{len(older)} older keys in the lock"
            )
        if e.mode == "read" and any(kv.key.startswith(write) for kv in older):
            bad.append(
                f"reader {e.writer} (token {e.token}) wrote at revision {e.revision} behind a "
                "writer"
            )
    return bad


def spans(entries: list[Entry]) -> dict[int, tuple[int, int, str, str]]:
    """token -> (first revision, last revision, writer, mode) of its fenced writes."""
    out: dict[int, tuple[int, int, str, str]] = {}
    for e in sorted(entries, key=lambda e: e.revision):
        first = out.get(e.token)
        if first is None:
            out[e.token] = (e.revision, e.revision, e.writer, e.mode)
        else:
            out[e.token] = (first[0], e.revision, first[2], first[3])
    return out


def check_spans(
    entries: list[Entry], limit: int, *, exclusive_mode: str | None = None
) -> tuple[list[str], int, int]:
    """At no revision more than ``limit`` holders' fenced writes spanned it, and a holder in
    ``exclusive_mode`` spanned none with anyone. Returns (violations, most together, most
    readers together)."""
    bad: list[str] = []
    by_token = spans(entries)
    for token, (_a, _b, writer, _m) in by_token.items():
        others = {e.writer for e in entries if e.token == token} - {writer}
        if others:
            bad.append(f"two writers with token {token}: {writer} and {sorted(others)}")
    edges = sorted(
        [(a, 0, t) for t, (a, _b, _w, _m) in by_token.items()]
        + [(b, 1, t) for t, (_a, b, _w, _m) in by_token.items()]
    )
    open_: set[int] = set()
    most = most_readers = 0
    for rev, end, token in edges:
        if end:
            open_.discard(token)
            continue
        open_.add(token)
        most = max(most, len(open_))
        most_readers = max(most_readers, sum(1 for t in open_ if by_token[t][3] == "read"))
        if len(open_) > limit:
            bad.append(f"{len(open_)} fenced holders together at revision {rev}, over {limit}")
        modes = [by_token[t][3] for t in open_]
        if exclusive_mode in modes and len(open_) > 1:
            bad.append(f"a {exclusive_mode} hold together with {len(open_) - 1} others at {rev}")
    return bad, most, most_readers


def most_believed(events: list[dict[str, Any]]) -> int:
    """The most contenders that believed they held at one instant (from "acquired" to "lost" or
    "releasing", on the processes' shared monotonic clock)."""
    edges: list[tuple[float, int]] = []
    start: dict[str, float] = {}
    for e in sorted(events, key=lambda e: e["t"]):
        if e["ev"] == "acquired":
            start[e["who"]] = e["t"]
        elif e["ev"] in ("lost", "releasing") and e["who"] in start:
            edges += [(start.pop(e["who"]), 1), (e["t"], -1)]
    return max_keys([(0, d) for _t, d in sorted(edges)])


def max_keys(history: list[tuple[int, int]]) -> int:
    """The most keys alive at one revision, from (revision, +1 / -1) changes in order."""
    alive = most = 0
    for _rev, delta in history:
        alive += delta
        most = max(most, alive)
    return most


# -- a contender process --------------------------------------------------------------------------


async def contender(
    recipe: Recipe, who: str, endpoints: list[str], ttl: int, cfg: LockChaosConfig, stop: Any
) -> None:
    rng = random.Random(who)
    async with AsyncClient(endpoints, timeout=1.0) as client:
        seq = 0
        while not stop.is_set():
            mode = "hold"
            try:
                if recipe == "semaphore":
                    hold: Any = await client.semaphore(SEMAPHORE, PERMITS, ttl, 3.0).acquire()
                else:
                    mode = "write" if rng.random() < 1 / 3 else "read"
                    rw = client.rwlock(RWLOCK, ttl, 3.0)
                    h: RWHold = rw.write() if mode == "write" else rw.read()
                    hold = await h.acquire()
            except (EtcdkitError, TimeoutError):
                await asyncio.sleep(0.05)
                continue
            token = hold.fencing_token
            emit(ev="acquired", who=who, token=token, mode=mode, t=time.monotonic())
            lost_at: list[float] = []
            hold.add_listener(_when_lost(lost_at))
            until = time.monotonic() + rng.uniform(*cfg.hold)
            while time.monotonic() < until and not hold.lost.is_set() and not stop.is_set():
                seq += 1
                await fenced_write(client, hold.guard(), who, token, seq, mode, "write")
                await asyncio.sleep(cfg.write_every)
            if hold.lost.is_set():
                emit(ev="lost", who=who, token=token, t=lost_at[0] if lost_at else time.monotonic())
                seq += 1
                await fenced_write(client, hold.guard(), who, token, seq, mode, "stale")
            else:
                emit(ev="releasing", who=who, token=token, t=time.monotonic())
            with contextlib.suppress(EtcdkitError):
                await hold.release()


async def fenced_write(
    client: AsyncClient, guard: Compare, who: str, token: int, seq: int, mode: str, kind: str
) -> None:
    try:
        res = await client.txn([guard], [Op.put(JOURNAL, f"{token} {who} {seq} {mode}")])
    except (EtcdkitError, TimeoutError):
        emit(ev=kind, who=who, token=token, seq=seq, ok=None, t=time.monotonic())
        return
    emit(ev=kind, who=who, token=token, seq=seq, ok=res.succeeded, rev=res.revision,
         t=time.monotonic())  # fmt: skip


async def contend_main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.ERROR)  # faults make etcdkit warn a lot; that is expected
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    cfg = LockChaosConfig()
    endpoints = args.endpoints.split(",")
    await asyncio.gather(
        *(
            contender(args.recipe, f"{args.tag}.{i}", endpoints, args.ttl, cfg, stop)
            for i in range(args.count)
        )
    )


# -- the run ------------------------------------------------------------------------------------


async def run_holders_chaos(
    recipe: Recipe,
    seed: int,
    duration: float,
    *,
    config: LockChaosConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> HoldersChaosReport:
    """Run the ``recipe`` checker for ``duration`` seconds of faults; never raises for a
    violated guarantee: read ``report.violations``."""
    if recipe not in ("semaphore", "rwlock"):
        raise ValueError(f"recipe must be 'semaphore' or 'rwlock', not {recipe!r}")
    cfg = config or LockChaosConfig()
    name = SEMAPHORE if recipe == "semaphore" else RWLOCK

    def argv(i: int, group: list[Proxy]) -> list[str]:
        return [
            "-m", "bench.chaos.holders", "contend", "--recipe", recipe,
            "--endpoints", ",".join(p.endpoint for p in group),
            "--count", str(cfg.per_process), "--ttl", str(cfg.ttl), "--tag", f"p{i}",
        ]  # fmt: skip

    rng = random.Random(f"{seed}/revoke")

    async def holder(direct: AsyncClient) -> KeyValue | None:
        """A holder: any of the semaphore's, or the oldest key of the read-write lock."""
        if recipe == "semaphore":
            kvs = (await direct.get_prefix(SEMAPHORE + "/holders/")).kvs
            return rng.choice(kvs) if kvs else None
        kvs = (await direct.get_prefix(RWLOCK + "/")).kvs
        return min(kvs, key=lambda kv: kv.create_revision) if kvs else None

    async def verify(direct: AsyncClient, run: _Run) -> None:
        assert isinstance(run.report, HoldersChaosReport)
        await _verify(recipe, name, direct, run, run.report)

    report = HoldersChaosReport(seed=seed, duration=duration, recipe=recipe)
    report.permits = PERMITS if recipe == "semaphore" else 1
    return await run_contenders(report, cfg, argv, verify, holder, progress)


async def _verify(
    recipe: Recipe, name: str, direct: AsyncClient, run: _Run, report: HoldersChaosReport
) -> None:
    writes, stale = count_events(run)
    report.max_believed_together = most_believed(run.events)
    entries: list[Entry] = []
    kv = await _retry(direct.get, JOURNAL)
    rev = kv.mod_revision if kv is not None else 0
    while rev > 0:  # every version of the journal, newest first
        at = await _retry(direct.get, JOURNAL, revision=rev)
        assert at is not None
        keys = await _retry(direct.get_prefix, name + "/", revision=at.mod_revision)
        entries.append(parse_entry(at.mod_revision, at.value, tuple(keys.kvs)))
        rev = at.mod_revision - 1 if at.version > 1 else 0
    report.journal_records = len(entries)
    if recipe == "semaphore":
        report.violations.extend(check_semaphore(entries, name, PERMITS))
        bad, most, _ = check_spans(entries, PERMITS)
        report.max_holder_keys = max_keys(await _holder_history(direct, name))
        if report.max_holder_keys > PERMITS:
            report.violations.append(
                f"{report.max_holder_keys} holder keys at one revision, over {PERMITS}"
            )
    else:
        report.violations.extend(check_rwlock(entries, name))
        bad, most, readers = check_spans(entries, len(entries) + 1, exclusive_mode="write")
        report.max_readers_together = readers
        report.writes_by_writers = sum(1 for e in entries if e.mode == "write")
    report.violations.extend(bad)
    report.max_fenced_together = most
    in_journal = {(e.revision, e.token, e.writer) for e in entries}
    for e in writes + stale:
        if e["ok"] and (e["rev"], e["token"], e["who"]) not in in_journal:
            report.violations.append(f"accepted write missing from the journal: {e}")


async def _holder_history(direct: AsyncClient, name: str) -> list[tuple[int, int]]:
    """Every creation (+1) and deletion (-1) of a semaphore holder key, in revision order,
    replayed from a watch from revision 1 up to a marker key put now."""
    end = name + "/end"
    now = await _retry(direct.put, end, "")
    out: list[tuple[int, int]] = []
    holders = (name + "/holders/").encode()
    async with (
        asyncio.timeout(120.0),
        direct.watch(name + "/", prefix=True, start_revision=1) as watch,
    ):
        async for batch in watch:
            for ev in batch.events:
                if ev.kv.key.startswith(holders):
                    if ev.type is EventType.DELETE:
                        out.append((ev.kv.mod_revision, -1))
                    elif ev.kv.version == 1:
                        out.append((ev.kv.mod_revision, +1))
            if any(ev.kv.mod_revision >= now for ev in batch.events):
                break
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos.holders")
    sub = parser.add_subparsers(dest="mode")
    c = sub.add_parser("contend")
    c.add_argument("--recipe", choices=("semaphore", "rwlock"), required=True)
    c.add_argument("--endpoints", required=True)
    c.add_argument("--count", type=int, default=2)
    c.add_argument("--ttl", type=int, default=2)
    c.add_argument("--tag", default="p")
    parser.add_argument("--recipe", choices=("semaphore", "rwlock"), default="semaphore")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=20261203)
    args = parser.parse_args(argv)
    if args.mode == "contend":
        asyncio.run(contend_main(args))
        return 0

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    report = asyncio.run(run_holders_chaos(args.recipe, args.seed, args.seconds, progress=say))
    say(report.summary())
    print(report.to_json())
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
