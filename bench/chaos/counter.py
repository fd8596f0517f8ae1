"""The counter fault checker: the final value is the sum of the acknowledged adds (plus some of
the adds whose outcome was unknown, never any other), through real faults on a real 3-member
cluster.

``await run_counter_chaos(seed, duration)`` returns a :class:`CounterChaosReport`;
``tests/test_counter.py`` runs it briefly (``pytest -m chaos``). By hand: ``python -m
bench.chaos.counter --seconds 30`` prints the report as JSON (exit status 1 on a violation).

The machinery is the lock checker's (see :mod:`bench.chaos.workers`). Each worker process runs
``count`` adders, each on a client of its own. An adder adds 1, 2 or 3 at random and reports
the add: acknowledged (with the value it returned), unknown (:class:`OutcomeUnknownError`) or
failed (any other error: not applied).

Checks, once the workers stopped, on etcd's own history of the key (nothing is compacted):

- every version of the key is the one before plus 1, 2 or 3 (no lost update, no stray write);
- every acknowledged add's value is a version of the key, made by a step of its ``n`` (it was
  applied exactly there), and no two acknowledged adds returned the same value;
- the final value minus the acknowledged adds is a sum of some of the unknown adds, and the
  number of steps is the acknowledged adds plus at most the unknown ones.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import sys
import time
from collections import Counter as Multiset
from collections.abc import Callable
from dataclasses import dataclass

from bench.chaos.locks import LockChaosConfig, LockChaosReport, _retry, _Run, emit, run_contenders
from bench.chaos.workers import config, main_of, no_holder, worker_argv
from etcdkit import AsyncClient, EtcdkitError, OutcomeUnknownError

KEY = "/chaos/counter/n"


@dataclass
class CounterChaosReport(LockChaosReport):
    adds_acked: int = 0
    adds_unknown: int = 0
    adds_failed: int = 0
    acked_sum: int = 0
    final_value: int = 0
    versions: int = 0  # steps in the key's history
    unknown_applied: int = 0  # steps not matched by an acknowledged add

    def summary(self) -> str:
        rec = max(self.recoveries, default=0.0)
        return (
            f"counter chaos seed={self.seed} {self.duration:.0f}s etcd {self.etcd_version} "
            f"(kill={self.kill_signal}): {self.contenders} adders, adds {self.adds_acked} "
            f"acknowledged (sum {self.acked_sum}) / {self.adds_unknown} unknown / "
            f"{self.adds_failed} failed; final value {self.final_value} in {self.versions} "
            f"steps ({self.unknown_applied} of them unknown adds that landed); faults "
            f"{sum(self.faults.values())} {self.faults}, recovery max {rec:.2f}s; "
            f"server panics {self.server_panics}, "
            f"violations {len(self.violations)}, took {self.elapsed:.0f}s"
        )


# -- the checks, free of I/O ----------------------------------------------------------------------


def subset_sums(values: list[int], limit: int) -> set[int]:
    """Every sum of a sub-multiset of ``values`` up to ``limit``."""
    sums = {0}
    for v in values:
        sums |= {s + v for s in sums if s + v <= limit}
    return sums


def check_history(
    history: list[int], acked: list[tuple[int, int]], unknown: list[int]
) -> tuple[list[str], int]:
    """``history``: the key's values in order (the first the value before any add);
    ``acked``: (n, value returned) per acknowledged add; ``unknown``: the n of each add whose
    outcome was unknown. Returns the violations and how many steps no acknowledged add made."""
    bad: list[str] = []
    steps: dict[int, int] = {}  # value made -> the step that made it
    for before, after in itertools.pairwise(history):
        step = after - before
        if step not in (1, 2, 3):
            bad.append(f"the value went from {before} to {after}: no add makes that")
        steps[after] = step
    values = Multiset(v for _, v in acked)
    for value, times in values.items():
        if times > 1:
            bad.append(f"{times} acknowledged adds returned {value}")
    for n, value in acked:
        if steps.get(value) != n:
            bad.append(f"an add of {n} returned {value}, which no step of {n} made")
    final = history[-1] if history else 0
    extra = final - (history[0] if history else 0) - sum(n for n, _ in acked)
    if extra not in subset_sums(unknown, max(extra, 0)):
        bad.append(
            f"the final value {final} is {extra} more than the acknowledged adds, which no "
            f"subset of the {len(unknown)} unknown adds makes"
        )
    stray = len(history) - 1 - len(acked)
    if not 0 <= stray <= len(unknown):
        bad.append(f"{stray} steps no acknowledged add made, but {len(unknown)} adds unknown")
    return bad, stray


# -- a worker process -----------------------------------------------------------------------------


async def adder(who: str, endpoints: list[str], stop: asyncio.Event) -> None:
    rng = random.Random(who)
    async with AsyncClient(endpoints, timeout=1.0) as client:
        c = client.counter(KEY)
        while not stop.is_set():
            n = rng.randint(1, 3)
            try:
                value = await c.add(n)
            except OutcomeUnknownError:
                emit(ev="add", who=who, n=n, ok=None, t=time.monotonic())
            except (EtcdkitError, TimeoutError) as exc:
                emit(ev="add", who=who, n=n, ok=False, error=str(exc), t=time.monotonic())
                await asyncio.sleep(0.05)
            else:
                emit(ev="write", who=who, n=n, ok=True, value=value, t=time.monotonic())
            await asyncio.sleep(rng.uniform(0.002, 0.02))  # leave the members some CPU


async def work(args: argparse.Namespace, stop: asyncio.Event) -> None:
    endpoints = args.endpoints.split(",")
    await asyncio.gather(*(adder(f"{args.tag}.{i}", endpoints, stop) for i in range(args.count)))


# -- the run --------------------------------------------------------------------------------------


async def run_counter_chaos(
    seed: int,
    duration: float,
    *,
    config_: LockChaosConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> CounterChaosReport:
    """Run the counter checker for ``duration`` seconds of faults; never raises for a violated
    guarantee: read ``report.violations``."""
    cfg = config_ or config()
    report = CounterChaosReport(seed=seed, duration=duration)
    argv = worker_argv("bench.chaos.counter", cfg)
    return await run_contenders(report, cfg, argv, _verify, no_holder, progress)


async def history_of(direct: AsyncClient, key: str) -> list[int]:
    """Every value ``key`` had, oldest first, with 0 before its first version."""
    values: list[int] = []
    kv = await _retry(direct.get, key)
    while kv is not None:
        values.append(int(kv.value))
        if kv.version == 1:
            break
        kv = await _retry(direct.get, key, revision=kv.mod_revision - 1)
    values.append(0)
    return values[::-1]


async def _verify(direct: AsyncClient, run: _Run) -> None:
    report = run.report
    assert isinstance(report, CounterChaosReport)
    acked = [(e["n"], e["value"]) for e in run.events if e["ev"] == "write"]
    unknown = [e["n"] for e in run.events if e["ev"] == "add" and e["ok"] is None]
    report.adds_acked = len(acked)
    report.adds_unknown = len(unknown)
    report.adds_failed = sum(1 for e in run.events if e["ev"] == "add" and e["ok"] is False)
    report.acked_sum = sum(n for n, _ in acked)
    history = await history_of(direct, KEY)
    report.final_value = history[-1]
    report.versions = len(history) - 1
    bad, report.unknown_applied = check_history(history, acked, unknown)
    report.violations.extend(bad)
    if report.adds_acked < 50:
        report.violations.append(f"only {report.adds_acked} adds acknowledged: too few to tell")


def main(argv: list[str] | None = None) -> int:
    return main_of("python -m bench.chaos.counter", work, run_counter_chaos, argv)


if __name__ == "__main__":
    sys.exit(main())
