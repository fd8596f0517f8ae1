"""What every benchmark scenario shares: result lines, goals, percentiles, preloading, memory.

A scenario module exposes ``jobs(quick) -> list[Job]`` (what :mod:`bench.run` schedules, one
process each) and ``async run(env, params)``, which measures and hands result lines to
``env.emit``. Progress goes to stderr through :func:`progress`; stdout carries JSON only.
"""

from __future__ import annotations

import asyncio
import cProfile
import itertools
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil
from aetcd import rpc

from etcdkit import AsyncClient

__all__ = [
    "REPO_ROOT",
    "Env",
    "Goal",
    "Job",
    "bytecode_env",
    "child_env",
    "compile_tree",
    "key_of",
    "peak_rss_mb",
    "percentile",
    "preload",
    "progress",
    "result",
    "rss_mb",
    "run_async",
    "run_probe",
    "transform",
]

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parent.parent
PROFILE_ENV = "ETCDKIT_BENCH_PROFILE"  # a directory: every bench process writes NAME.pstats
TXN_OPS = 128  # etcd's default --max-txn-ops
_T0 = time.monotonic()

Params = dict[str, Any]
Figures = dict[str, Any]


def progress(msg: str) -> None:
    """One progress line on stderr (never stdout: that is for the JSON lines)."""
    print(f"[bench {time.monotonic() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def key_of(prefix: bytes, i: int) -> bytes:
    """The i-th key of a preloaded tree (fixed width, so listing order is numeric order)."""
    return prefix + b"k%07d" % i


def transform(key: bytes, value: bytes) -> tuple[str, int]:
    """The transform of the watch scenarios: the key's last path segment, the value as an int."""
    return key.rsplit(b"/", 1)[-1].decode(), int(value)


@dataclass(frozen=True)
class Job:
    """One unit the runner starts in its own process, with its own etcd."""

    scenario: str
    params: Params

    @property
    def label(self) -> str:
        args = ",".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.scenario}({args})"


@dataclass(frozen=True)
class Goal:
    """A target some issue set for one figure: ``figures[figure] <op> target``."""

    figure: str
    op: str  # ">=" or "<="
    target: float

    def met_by(self, value: float) -> bool:
        return value >= self.target if self.op == ">=" else value <= self.target


@dataclass
class Env:
    """What a scenario gets from the worker: the server, its client URL, the output."""

    server: Any  # etcdkit.server.EtcdServer (restart/kill for the lease scenario)
    endpoint: str
    quick: bool
    emit: Callable[[dict[str, Any]], None]
    profile_dir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def result(
    scenario: str,
    case: str,
    params: Mapping[str, Any],
    figures: Figures,
    goals: Sequence[Goal] = (),
    notes: str | None = None,
) -> dict[str, Any]:
    """One output line. ``goal`` maps each goal's figure to its target, value and verdict;
    ``met`` is the verdict over all of them (``None`` when this case has no goal)."""
    goal: dict[str, Any] = {}
    for g in goals:
        value = figures[g.figure]
        goal[g.figure] = {"target": f"{g.op} {g.target:g}", "value": value, "met": g.met_by(value)}
    line: dict[str, Any] = {
        "scenario": scenario,
        "case": case,
        "params": dict(params),
        "figures": figures,
        "goal": goal,
        "met": all(v["met"] for v in goal.values()) if goal else None,
    }
    if notes:
        line["notes"] = notes
    return line


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sample."""
    if not values:
        raise ValueError("percentile of an empty sample")
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def rss_mb() -> float:
    """The current resident set size of this process, MiB."""
    return round(float(psutil.Process().memory_info().rss) / 2**20, 1)


def peak_rss_mb() -> float:
    """The peak resident set size of this process so far (``getrusage``), MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def _batches(items: Iterable[tuple[bytes, bytes]], size: int) -> Iterator[list[Any]]:
    it = iter(items)
    while batch := list(itertools.islice(it, size)):
        yield [rpc.RequestOp(request_put=rpc.PutRequest(key=k, value=v)) for k, v in batch]


async def preload(
    client: AsyncClient,
    items: Iterable[tuple[bytes, bytes]],
    *,
    in_flight: int = 8,
    what: str = "keys",
) -> int:
    """Write ``items`` fast: transactions of 128 puts, ``in_flight`` of them at a time.

    Returns the revision of the last transaction. Uses the raw KV stub (a bulk load is not
    something the library's API is for).
    """
    batches = _batches(items, TXN_OPS)
    last = 0
    done = 0
    t0 = time.monotonic()
    next_report = t0 + 5.0

    async def worker() -> None:
        nonlocal last, done, next_report
        for ops in batches:  # one shared iterator: each batch is taken by one worker
            resp = await client.raw.kv.Txn(rpc.TxnRequest(success=ops), timeout=60.0)
            last = max(last, int(resp.header.revision))
            done += len(ops)
            if time.monotonic() > next_report:
                next_report += 5.0
                progress(f"  preloaded {done:,} {what}")

    await asyncio.gather(*(worker() for _ in range(in_flight)))
    progress(f"  preloaded {done:,} {what} in {time.monotonic() - t0:.1f} s")
    return last


def bytecode_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` with Python's bytecode cached (outside the tree: ``PYTHONPYCACHEPREFIX``), as
    for an installed package, whose ``.pyc`` files pip writes. Without it, where
    ``PYTHONDONTWRITEBYTECODE`` is set (CI, this machine), every process the bench starts
    compiles etcdkit from source first: a cost no user pays, and one that grows with the size
    of the library rather than with what it does."""
    env = dict(env)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.setdefault(
        "PYTHONPYCACHEPREFIX",
        os.path.join(tempfile.gettempdir(), f"etcdkit-bench-pycache-{os.getuid()}"),
    )
    return env


def compile_tree(tree: Path, env: dict[str, str]) -> None:
    """Compile ``tree``'s ``src`` and ``bench`` into ``env``'s bytecode cache (before timing)."""
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(tree / "src"), str(tree / "bench")],
        env=env,
        check=False,
        stdout=subprocess.DEVNULL,
    )


def child_env() -> dict[str, str]:
    """The environment for our child processes: the repo importable, asyncio debug off,
    bytecode cached (:func:`bytecode_env`)."""
    env = bytecode_env(dict(os.environ))
    env.pop("PYTHONASYNCIODEBUG", None)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + path if path else "")
    return env


class Observer:
    """An observer process (``python -m MODULE observe ENDPOINT NAME``) that prints ``ready``,
    then ``+ID T`` / ``-ID T`` (``T``: its ``time.monotonic()``, one clock per machine) as
    what it follows appears and leaves: what the ``visible`` cases measure against."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        self.proc = proc
        self.stdout = proc.stdout

    @classmethod
    async def start(cls, module: str, endpoint: str, name: str) -> Observer:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            module,
            "observe",
            endpoint,
            name,
            stdout=asyncio.subprocess.PIPE,
            env=child_env(),
            cwd=str(REPO_ROOT),
        )
        observer = cls(proc)
        await observer.expect("ready")
        return observer

    async def expect(self, prefix: str, timeout: float = 10.0) -> float:
        """The time on the next line that starts with ``prefix`` (0.0 if it has none)."""
        async with asyncio.timeout(timeout):
            while True:
                line = (await self.stdout.readline()).decode()
                if not line:
                    raise RuntimeError("the observer process ended")
                if line.startswith(prefix):
                    parts = line.split()
                    return float(parts[1]) if len(parts) > 1 else 0.0

    @staticmethod
    def report(seen: set[str], now: set[str]) -> set[str]:
        """The observer process's side: print ``+ID T`` / ``-ID T`` for what appeared / left
        between ``seen`` and ``now``; returns ``now`` (what is seen next)."""
        t = time.monotonic()
        for new in sorted(now - seen):
            print(f"+{new} {t:.9f}", flush=True)
        for gone in sorted(seen - now):
            print(f"-{gone} {t:.9f}", flush=True)
        return now

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()


async def run_probe(module: str, args: Sequence[str], *, timeout: float = 900.0) -> Any:
    """Run ``python -m module *args`` in a fresh process; returns the JSON of its last stdout
    line. Used where a figure must not include this process's history (peak RSS) or CPU."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        *args,
        stdout=asyncio.subprocess.PIPE,
        env=child_env(),
        cwd=str(REPO_ROOT),
    )
    try:
        async with asyncio.timeout(timeout):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise RuntimeError(f"{module} {' '.join(args)} did not finish within {timeout} s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} exited with {proc.returncode}")
    lines = [line for line in out.decode().splitlines() if line.strip()]
    if not lines:
        raise RuntimeError(f"{module} {' '.join(args)} printed nothing")
    return json.loads(lines[-1])


def run_async(name: str, main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` with debug mode off; under cProfile when ``$ETCDKIT_BENCH_PROFILE``
    names a directory (``bench/run.py --profile DIR``), writing ``DIR/<name>.pstats``."""
    prof_dir = os.environ.get(PROFILE_ENV)
    if not prof_dir:
        return asyncio.run(main, debug=False)
    prof = cProfile.Profile()
    prof.enable()
    try:
        return asyncio.run(main, debug=False)
    finally:
        prof.disable()
        Path(prof_dir).mkdir(parents=True, exist_ok=True)
        out = Path(prof_dir) / f"{name}.pstats"
        prof.dump_stats(out)
        progress(f"profile written to {out}")
