"""The queue fault checker: no item delivered twice, and none lost except as documented, through
real faults on a real 3-member cluster.

``await run_queue_chaos(seed, duration)`` returns a :class:`QueueChaosReport`;
``tests/test_queue.py`` runs it briefly (``pytest -m chaos``). By hand: ``python -m
bench.chaos.queues --seconds 30`` prints the report as JSON (exit status 1 on a violation).

The machinery is the lock checker's (see :mod:`bench.chaos.workers`). Each worker process has
one producer (its own client) and ``count`` consumers that share one :class:`~etcdkit.Queue`
object (another client), so consumers take turns within a process and race across processes.

- **Producers** put items ``"<who>:<seq>"`` and report each put: added (with its key), unknown
  (:class:`OutcomeUnknownError`: it may or may not be in the queue) or failed.
- **Consumers** take items, one time in five through ``asyncio.wait_for`` with a timeout of
  a few milliseconds (a caller that gives up: the get is cancelled, now and then while its
  delete is in flight, and must put the item back). They report each item taken, and each
  take that raised :class:`OutcomeUnknownError` (with the key it names).
- **Checks**, once the workers stopped, with what is left in the queue read back: no item was
  taken twice, nor taken and still in the queue; no item appears that no put added (a failed
  put's item appears nowhere); every added item was taken once or is still in the queue,
  unless its key was named by a take that raised :class:`OutcomeUnknownError` or by the
  recipe's WARNING that a put-back failed: the losses the documentation allows (at most once).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.chaos.locks import LockChaosConfig, LockChaosReport, _retry, _Run, emit, run_contenders
from bench.chaos.workers import config, main_of, no_holder, worker_argv
from etcdkit import AsyncClient, EtcdkitError, OutcomeUnknownError, Queue

NAME = "/chaos/queue/jobs"
_KEY = re.compile(r"b'(" + re.escape(NAME) + r"/[0-9]+)'")


@dataclass
class QueueChaosReport(LockChaosReport):
    puts_added: int = 0
    puts_unknown: int = 0
    puts_failed: int = 0
    taken: int = 0
    takes_unknown: int = 0  # takes that raised OutcomeUnknownError
    putbacks_failed: int = 0  # the recipe's WARNING: a cancelled get could not put an item back
    remaining: int = 0  # still in the queue at the end
    lost_as_documented: int = 0
    unknown_puts_delivered: int = 0
    by_consumer: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        rec = max(self.recoveries, default=0.0)
        return (
            f"queue chaos seed={self.seed} {self.duration:.0f}s etcd {self.etcd_version} "
            f"(kill={self.kill_signal}): puts {self.puts_added} added / {self.puts_unknown} "
            f"unknown ({self.unknown_puts_delivered} of them delivered) / {self.puts_failed} "
            f"failed; {self.taken} taken by {len(self.by_consumer)} consumers, "
            f"{self.remaining} left in the queue, {self.takes_unknown} takes unknown, "
            f"{self.putbacks_failed} put-backs failed, {self.lost_as_documented} lost as "
            f"documented; faults {sum(self.faults.values())} {self.faults}, recovery max "
            f"{rec:.2f}s; server panics {self.server_panics}, "
            f"violations {len(self.violations)}, took {self.elapsed:.0f}s"
        )


# -- the checks, free of I/O ----------------------------------------------------------------------


@dataclass
class Outcome:
    violations: list[str]
    lost_as_documented: int
    unknown_puts_delivered: int


def check_deliveries(
    puts: dict[str, tuple[bool | None, str | None]],
    taken: list[str],
    remaining: list[str],
    documented: set[str],
) -> Outcome:
    """``puts``: item -> (added: True, unknown: None, failed: False; its key when added);
    ``taken``: every item a consumer got; ``remaining``: the items left in the queue;
    ``documented``: keys named by an unknown take or a failed put-back."""
    bad: list[str] = []
    counts = Counter(taken)
    for item, n in sorted(counts.items()):
        if n > 1:
            bad.append(f"item {item} delivered {n} times")
    left = Counter(remaining)
    for item, n in sorted(left.items()):
        if n > 1 or item in counts:
            bad.append(f"item {item} delivered {counts[item]} times and {n} times in the queue")
    for item in sorted(set(counts) | set(left)):
        if item not in puts:
            bad.append(f"item {item} appeared, but no producer put it")
        elif puts[item][0] is False:
            bad.append(f"item {item} appeared, but its put failed")
    lost = 0
    for item, (added, key) in sorted(puts.items()):
        if added and item not in counts and item not in left:
            if key in documented:
                lost += 1
            else:
                bad.append(f"item {item} ({key}) was added, then lost without a report")
    unknown_delivered = sum(1 for i, (a, _) in puts.items() if a is None and i in counts)
    return Outcome(bad, lost, unknown_delivered)


# -- a worker process -----------------------------------------------------------------------------


async def produce(who: str, q: Queue, stop: asyncio.Event) -> None:
    rng = random.Random(who)
    seq = 0
    while not stop.is_set():
        seq += 1
        item = f"{who}:{seq}"
        try:
            key = await q.put(item)
        except OutcomeUnknownError:
            emit(ev="put", item=item, ok=None, t=time.monotonic())
        except (EtcdkitError, TimeoutError) as exc:
            emit(ev="put", item=item, ok=False, error=str(exc), t=time.monotonic())
            await asyncio.sleep(0.05)
        else:
            emit(ev="put", item=item, key=key.decode(), ok=True, t=time.monotonic())
        await asyncio.sleep(rng.uniform(0.005, 0.03))


async def consume(who: str, q: Queue, stop: asyncio.Event) -> None:
    rng = random.Random(who)
    while not stop.is_set():
        try:
            if rng.random() < 0.2:  # a caller that gives up from outside: a cancel
                value = await asyncio.wait_for(q.get(), rng.uniform(0.001, 0.02))
            else:
                value = await q.get(timeout=0.5)
        except OutcomeUnknownError as exc:
            m = _KEY.search(str(exc))
            emit(ev="take_unknown", who=who, key=m.group(1) if m else None, t=time.monotonic())
        except TimeoutError:  # EtcdTimeoutError, or wait_for's
            continue
        except EtcdkitError as exc:
            emit(ev="error", who=who, error=str(exc), t=time.monotonic())
            await asyncio.sleep(0.05)
        else:
            emit(ev="write", ok=True, who=who, item=value.decode(), t=time.monotonic())


async def work(args: argparse.Namespace, stop: asyncio.Event) -> None:
    endpoints = args.endpoints.split(",")
    async with (
        AsyncClient(endpoints, timeout=1.0) as producing,
        AsyncClient(endpoints, timeout=1.0) as consuming,
    ):
        shared = consuming.queue(NAME)  # the consumers of a process take turns on it
        await asyncio.gather(
            produce(f"{args.tag}.put", producing.queue(NAME), stop),
            *(consume(f"{args.tag}.get{i}", shared, stop) for i in range(args.count)),
        )


# -- the run --------------------------------------------------------------------------------------


async def run_queue_chaos(
    seed: int,
    duration: float,
    *,
    config_: LockChaosConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> QueueChaosReport:
    """Run the queue checker for ``duration`` seconds of faults; never raises for a violated
    guarantee: read ``report.violations``."""
    cfg = config_ or config()
    report = QueueChaosReport(seed=seed, duration=duration)
    argv = worker_argv("bench.chaos.queues", cfg)
    return await run_contenders(report, cfg, argv, _verify, no_holder, progress)


async def _verify(direct: AsyncClient, run: _Run) -> None:
    report = run.report
    assert isinstance(report, QueueChaosReport)
    puts: dict[str, tuple[bool | None, str | None]] = {}
    taken: list[str] = []
    documented: set[str] = set()
    by_consumer: Counter[str] = Counter()
    for e in run.events:
        ev: dict[str, Any] = e
        if ev["ev"] == "put":
            puts[ev["item"]] = (ev["ok"], ev.get("key"))
        elif ev["ev"] == "write":
            taken.append(ev["item"])
            by_consumer[ev["who"]] += 1
        elif ev["ev"] == "take_unknown":
            report.takes_unknown += 1
            if ev["key"]:
                documented.add(ev["key"])
        elif ev["ev"] == "log":
            keys = _KEY.findall(ev["msg"])
            if "putting the item back failed" in ev["msg"] or "outcome is unknown" in ev["msg"]:
                report.putbacks_failed += 1
                documented.update(keys)
    left = await _retry(direct.range, NAME + "/", prefix=True)
    remaining = [kv.value.decode() for kv in left.kvs]
    outcome = check_deliveries(puts, taken, remaining, documented)
    report.violations.extend(outcome.violations)
    report.puts_added = sum(1 for a, _ in puts.values() if a)
    report.puts_unknown = sum(1 for a, _ in puts.values() if a is None)
    report.puts_failed = sum(1 for a, _ in puts.values() if a is False)
    report.taken = len(taken)
    report.remaining = len(remaining)
    report.lost_as_documented = outcome.lost_as_documented
    report.unknown_puts_delivered = outcome.unknown_puts_delivered
    report.by_consumer = dict(by_consumer)
    if report.taken < 50:
        report.violations.append(f"only {report.taken} items were taken: too few to tell")


def main(argv: list[str] | None = None) -> int:
    return main_of("python -m bench.chaos.queues", work, run_queue_chaos, argv)


if __name__ == "__main__":
    sys.exit(main())
