"""What the fault checkers of the queue, the counter and the STM share (``bench.chaos.queues``,
``bench.chaos.counter``, ``bench.chaos.stm``): the lock checker's machinery
(:func:`bench.chaos.locks.run_contenders`: a 3-member cluster, worker processes behind proxies
of their own, kills, pauses and cuts one at a time, each healed and followed by a recovery
check) with workers that use a recipe instead of a lock.

A worker process runs ``count`` workers on clients of its own (timeout 1 s) that reach the
members through its process's proxies. Every worker reports what
happened as JSON lines (:func:`bench.chaos.locks.emit`) with ``time.monotonic()``; an
operation that succeeded is reported with ``ev="write", ok=True`` so that the recovery check
("someone succeeded within ``ttl`` + 6 s after each heal") applies unchanged. SIGTERM ends the
workers between operations. WARNING lines of ``etcdkit.*`` loggers are reported too (``ev
="log"``): the recipes name there what they could not settle (an item that may be lost).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from bench.chaos.locks import LockChaosConfig, emit
from etcdkit import KeyValue
from etcdkit.server import Proxy

__all__ = [
    "RECIPE_FAULTS",
    "config",
    "main_of",
    "no_holder",
    "serve",
    "worker_argv",
    "worker_parser",
]

# No lease to revoke: these recipes hold none.
RECIPE_FAULTS = ("kill_member", "kill_leader", "pause_member", "pause_leader", "cut_process")

Body = Callable[[argparse.Namespace, asyncio.Event], Awaitable[None]]


def config(**kwargs: object) -> LockChaosConfig:
    """The lock checker's knobs with the faults these recipes can take."""
    return LockChaosConfig(faults=RECIPE_FAULTS, **kwargs)  # type: ignore[arg-type]


async def no_holder(direct: object) -> KeyValue | None:
    return None


def worker_argv(
    module: str, cfg: LockChaosConfig, *extra: str
) -> Callable[[int, list[Proxy]], list[str]]:
    """The command line of worker process ``i``: ``python -m module work ...``."""

    def argv(i: int, group: list[Proxy]) -> list[str]:
        return [
            "-m", module, "work",
            "--endpoints", ",".join(p.endpoint for p in group),
            "--count", str(cfg.per_process), "--tag", f"p{i}", *extra,
        ]  # fmt: skip

    return argv


def worker_parser(prog: str) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """``prog work --endpoints ... --count N --tag pI`` (a worker process) or ``prog
    --seconds S --seed N`` (a run); returns the parser and the ``work`` subparser."""
    parser = argparse.ArgumentParser(prog=prog)
    sub = parser.add_subparsers(dest="mode")
    w = sub.add_parser("work")
    w.add_argument("--endpoints", required=True)
    w.add_argument("--count", type=int, default=2)
    w.add_argument("--tag", default="p")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=20261126)
    return parser, w


class _ReportWarnings(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        emit(ev="log", logger=record.name, msg=record.getMessage(), t=time.monotonic())


async def serve(args: argparse.Namespace, body: Body) -> None:
    """A worker process: ``body(args, stop)``, where ``stop`` is set on SIGTERM."""
    logging.basicConfig(level=logging.ERROR)  # faults make etcdkit warn a lot; that is expected
    recipes = logging.getLogger("etcdkit.queue")
    recipes.setLevel(logging.WARNING)
    recipes.propagate = False
    recipes.addHandler(_ReportWarnings(logging.WARNING))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await body(args, stop)


class _Report(Protocol):
    violations: list[str]

    def summary(self) -> str: ...

    def to_json(self) -> str: ...


def main_of(
    prog: str,
    body: Body,
    run: Callable[..., Coroutine[Any, Any, Any]],
    argv: list[str] | None = None,
) -> int:
    """The command line of a recipe checker: ``--mode work`` is a worker process running
    ``body``; otherwise ``run(seed, seconds, progress=...)`` checks, prints the summary on
    stderr and the report as JSON; exit status 1 on a violation."""
    parser, _ = worker_parser(prog)
    args = parser.parse_args(argv)
    if args.mode == "work":
        asyncio.run(serve(args, body))
        return 0

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    report: _Report = asyncio.run(run(args.seed, args.seconds, progress=say))
    say(report.summary())
    print(report.to_json())
    return 1 if report.violations else 0
