"""Paired before/after of two latency paths, op by op: ``python -m bench.paired --before REV``.

``python -m bench`` and ``bench.ab`` compare whole runs, taken one after the other; on this
2-core machine two runs of the same code differ by several percent, so a 0.1 ms gap on a
1.5 ms path stays a guess. Here both sides run at once against one etcd and take turns op by
op, so drift on the machine hits both alike:

- **visible**: one process per side serves commands (``bench._paired_probe serve``), and one
  observer per side follows the same cluster root (``bench._paired_probe observe``). Each op,
  one side registers a member, both observers report when their view showed it, and it
  deregisters (the sides alternate, in both orders). Figures: register -> view, by who
  registered and who observed; ``register()``'s own time per side; and, since both observers
  see the same registrations, the per-registration difference of their times (a paired
  comparison of the view side alone).
- **lock**: an uncontended ``acquire`` and ``release`` (a fresh lock each time, held for 2 ms
  in between), the sides alternating op by op.
- **kv**: a plain ``put`` (16-byte value, over 1,000 keys) and a plain ``get`` of it, the
  sides alternating op by op (issue 25's first row, as a before/after).
- **watch**: a ``watch_prefix`` of each side follows the same prefix while a writer process
  (``bench._writer``, 64 puts in flight over 1,000 keys) puts ``ops`` updates: each side's CPU
  microseconds per event, from the same events at the same time. Rounds (``--rounds``) repeat
  it; the figure is over rounds (``after_faster``: the share of rounds the after side used
  less CPU).
- **live**: ``ops`` ``watch_prefix`` on one client (distinct prefixes of one key each), until
  every one is synced (``bench.wait``'s ``watches``): one side, then the other (a burst each,
  not at once: they would compete for etcd), ``--rounds`` times, the order swapped each
  round; seconds per side, paired by round.
- **replay** (``--only replay --ops 50000``): the client's own CPU per watch event, with no
  etcd, grpc or writer in the measured part (their costs, the same for both sides, are most of
  the ``watch`` figure, and so is its noise): ``ops`` single-event watch responses, made
  beforehand, are handed to the client's watch stream reader one per loop turn, for a
  ``watch_prefix`` and for a ``watch()``; one side, then the other, ``--rounds`` times, the
  order swapped each round; microseconds per event, paired by round.

Each figure is a JSON line on stdout: ``case``, ``figure``, ``before``, ``after`` (ms),
``ratio`` (after / before), and for paired figures ``median_diff_ms`` (after - before, over
the pairs) and ``after_faster`` (the share of pairs the after side won; with no difference it
is 0.5 give or take ``1/sqrt(pairs)``). ``REV`` is exported (``git archive``) to a temporary
directory; the working tree is the after side. Both run from cached bytecode.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import json
import os
import statistics
import tempfile
from typing import Any

from bench._common import (
    REPO_ROOT,
    bytecode_env,
    child_env,
    compile_tree,
    percentile,
    preload,
    progress,
)
from bench.ab import export
from etcdkit import AsyncClient
from etcdkit.testing import EtcdServer

SIDES = ("before", "after")
ROOT = "/bench/paired"
TIMEOUT = 30.0
WATCH_KEYS = 1_000
WATCH_IN_FLIGHT = 64


class Probe:
    """One ``bench._paired_probe`` process of one side."""

    def __init__(self, side: str, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        assert proc.stdin is not None
        self.side, self.proc = side, proc
        self.stdout, self.stdin = proc.stdout, proc.stdin
        self.seen: dict[str, float] = {}  # observer: "+ID" / "-ID" -> when
        self.changed = asyncio.Event()

    @classmethod
    async def start(
        cls, side: str, tree: Path, role: str, endpoint: str, root: str = ROOT, stdin: str = ""
    ) -> Probe:
        env = bytecode_env(dict(os.environ, PYTHONPATH=f"{tree / 'src'}{os.pathsep}{REPO_ROOT}"))
        env.pop("PYTHONASYNCIODEBUG", None)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench._paired_probe", role, endpoint, root,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env,
            cwd=str(REPO_ROOT),
        )  # fmt: skip
        probe = cls(side, proc)
        if stdin:
            probe.stdin.write(stdin.encode())
            await probe.stdin.drain()
        async with asyncio.timeout(TIMEOUT):
            line = await probe.stdout.readline()
        if line.strip() != b"ready":
            raise RuntimeError(f"paired: the {side} {role} process did not start ({line!r})")
        return probe

    async def ask(self, command: str) -> dict[str, float]:
        self.stdin.write(f"{command}\n".encode())
        await self.stdin.drain()
        async with asyncio.timeout(TIMEOUT):
            line = await self.stdout.readline()
        if not line:
            raise RuntimeError(f"paired: the {self.side} process ended at {command!r}")
        answer: dict[str, float] = json.loads(line)
        return answer

    async def follow(self) -> None:
        """Observer: record every ``+ID T`` / ``-ID T`` line."""
        while line := (await self.stdout.readline()).decode():
            what, t = line.split()
            self.seen[what] = float(t)
            self.changed.set()

    async def saw(self, what: str) -> float:
        async with asyncio.timeout(TIMEOUT):
            while what not in self.seen:
                self.changed.clear()
                await self.changed.wait()
        return self.seen[what]

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()


def _orders(ops: int) -> list[tuple[str, str]]:
    """Op i's order of the sides: before first, after first, after first, before first, ...
    (each side leads as often, and follows itself as often)."""
    return [SIDES if (i % 4) in (0, 3) else SIDES[::-1] for i in range(ops)]


def figure(
    case: str, name: str, values: dict[str, list[float]], paired: bool, scale: float = 1000.0
) -> dict[str, Any]:
    """One figure: the p50 (or p99, by ``name``) of each side, in ms (seconds times
    ``scale``), and for paired values (``values[side][i]`` of the same op) the median
    difference and the after side's wins."""
    q = 99 if "p99" in name else 50
    before = percentile(values["before"], q) * scale
    after = percentile(values["after"], q) * scale
    out: dict[str, Any] = {
        "case": case,
        "figure": name,
        "before": round(before, 4),
        "after": round(after, 4),
        "ratio": round(after / before, 3) if before else None,
        "n": len(values["after"]),
    }
    if paired:
        diffs = [a - b for b, a in zip(values["before"], values["after"], strict=True)]
        out["median_diff_ms" if scale == 1000.0 else "median_diff"] = round(
            statistics.median(diffs) * scale, 4
        )
        out["after_faster"] = round(sum(d < 0 for d in diffs) / len(diffs), 3)
    return out


async def visible(
    trees: dict[str, Path], endpoint: str, ops: int, rounds: int
) -> list[dict[str, Any]]:
    observers = {s: await Probe.start(s, trees[s], "observe", endpoint) for s in SIDES}
    servers = {s: await Probe.start(s, trees[s], "serve", endpoint) for s in SIDES}
    following = [asyncio.create_task(o.follow()) for o in observers.values()]
    seen: dict[tuple[str, str], list[float]] = {(r, o): [] for r in SIDES for o in SIDES}
    own: dict[str, list[float]] = {s: [] for s in SIDES}
    try:
        for i, order in enumerate(_orders(ops)):
            for side in order:
                member = f"{side}-{i}"
                times = await servers[side].ask(f"register {member}")
                for o in SIDES:
                    seen[(side, o)].append(await observers[o].saw(f"+{member}") - times["t0"])
                own[side].append(times["t1"] - times["t0"])
                await servers[side].ask(f"deregister {member}")
                for o in SIDES:
                    await observers[o].saw(f"-{member}")
    finally:
        for task in following:
            task.cancel()
        for probe in (*servers.values(), *observers.values()):
            await probe.stop()
    figures = []
    for reg in SIDES:  # the observers compared on the same registrations: paired
        pairs = {o: seen[(reg, o)] for o in SIDES}
        figures.append(figure("visible", f"registered_by_{reg}_seen_p50_ms", pairs, True))
        figures.append(figure("visible", f"registered_by_{reg}_seen_p99_ms", pairs, True))
    for o in SIDES:  # the registering sides, op by op: paired by op
        pairs = {r: seen[(r, o)] for r in SIDES}
        figures.append(figure("visible", f"seen_by_{o}_visible_p50_ms", pairs, True))
        figures.append(figure("visible", f"seen_by_{o}_visible_p99_ms", pairs, True))
    figures.append(figure("visible", "register_p50_ms", own, True))
    figures.append(figure("visible", "register_p99_ms", own, True))
    return figures


async def lock(
    trees: dict[str, Path], endpoint: str, ops: int, rounds: int
) -> list[dict[str, Any]]:
    servers = {s: await Probe.start(s, trees[s], "serve", endpoint) for s in SIDES}
    acquire: dict[str, list[float]] = {s: [] for s in SIDES}
    release: dict[str, list[float]] = {s: [] for s in SIDES}
    try:
        for i, order in enumerate(_orders(ops)):
            for side in order:
                times = await servers[side].ask(f"lock /bench/paired-lock/{side}-{i}")
                acquire[side].append(times["acquire_s"])
                release[side].append(times["release_s"])
    finally:
        for probe in servers.values():
            await probe.stop()
    return [
        figure("lock", "acquire_p50_ms", acquire, True),
        figure("lock", "acquire_p99_ms", acquire, True),
        figure("lock", "release_p50_ms", release, True),
    ]


async def kv(trees: dict[str, Path], endpoint: str, ops: int, rounds: int) -> list[dict[str, Any]]:
    servers = {s: await Probe.start(s, trees[s], "serve", endpoint) for s in SIDES}
    put: dict[str, list[float]] = {s: [] for s in SIDES}
    get: dict[str, list[float]] = {s: [] for s in SIDES}
    try:
        for i, order in enumerate(_orders(ops)):
            for side in order:
                times = await servers[side].ask(f"kv /bench/paired-kv/{side}-{i % 1000}")
                put[side].append(times["put_s"])
                get[side].append(times["get_s"])
    finally:
        for probe in servers.values():
            await probe.stop()
    return [
        figure("kv", "put_p50_ms", put, True),
        figure("kv", "put_p99_ms", put, True),
        figure("kv", "get_p50_ms", get, True),
        figure("kv", "get_p99_ms", get, True),
    ]


async def watch(
    trees: dict[str, Path], endpoint: str, updates: int, rounds: int
) -> list[dict[str, Any]]:
    cpu: dict[str, list[float]] = {s: [] for s in SIDES}
    for r in range(rounds):
        prefix = f"/bench/paired-watch/{r}/"
        followers = {s: await Probe.start(s, trees[s], "follow", endpoint, prefix) for s in SIDES}
        try:
            writer = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench._writer", endpoint, prefix, str(WATCH_KEYS),
                str(updates), str(WATCH_IN_FLIGHT),
                stdout=asyncio.subprocess.DEVNULL, env=child_env(), cwd=str(REPO_ROOT),
            )  # fmt: skip
            if await writer.wait():
                raise RuntimeError(f"paired: the writer exited {writer.returncode}")
            async with AsyncClient(endpoint) as etcd:
                await etcd.put(prefix + "~done", "1")
            for side, probe in followers.items():
                async with asyncio.timeout(TIMEOUT):
                    line = await probe.stdout.readline()
                got = json.loads(line)
                if got["events"] < updates:
                    raise RuntimeError(f"paired: the {side} watch saw {got['events']} events")
                cpu[side].append(got["cpu_s"] / updates)
        finally:
            for probe in followers.values():
                await probe.stop()
    return [figure("watch", "cpu_us_per_event_p50", cpu, True, scale=1e6)]


async def live(
    trees: dict[str, Path], endpoint: str, count: int, rounds: int
) -> list[dict[str, Any]]:
    prefix = "/bench/paired-live/"
    async with AsyncClient(endpoint, timeout=60.0) as etcd:
        await preload(etcd, ((f"{prefix}w{i:05d}/k".encode(), b"1") for i in range(count)))
    seconds: dict[str, list[float]] = {s: [] for s in SIDES}
    for r in range(rounds):
        for side in SIDES if r % 2 == 0 else SIDES[::-1]:
            probe = await Probe.start(
                side, trees[side], "live", endpoint, prefix, stdin=f"{count}\n"
            )
            try:
                async with asyncio.timeout(TIMEOUT * 4):
                    line = await probe.stdout.readline()
                seconds[side].append(json.loads(line)["seconds"])
            finally:
                await probe.stop()
    return [figure("live", "all_live_s_p50", seconds, True, scale=1.0)]


async def replay(
    trees: dict[str, Path], endpoint: str, count: int, rounds: int
) -> list[dict[str, Any]]:
    us: dict[str, dict[str, list[float]]] = {}
    for r in range(rounds):
        for side in SIDES if r % 2 == 0 else SIDES[::-1]:
            probe = await Probe.start(
                side, trees[side], "replay", endpoint, f"/bench/paired-replay/{side}/{r}/",
                stdin=f"{count}\n",
            )  # fmt: skip
            try:
                async with asyncio.timeout(TIMEOUT * 4):
                    line = await probe.stdout.readline()
            finally:
                await probe.stop()
            for name, value in json.loads(line).items():
                us.setdefault(name, {s: [] for s in SIDES})[side].append(value)
    return [
        figure("replay", f"{name}_per_event_p50", values, True, scale=1.0)
        for name, values in us.items()
        if all(len(values[s]) == rounds for s in SIDES)  # (a revision with no raw watch)
    ]


# Each case: (trees, endpoint, ops, rounds) -> figures (visible and lock take turns op by op,
# with no rounds).
CASES = {
    "visible": visible,
    "lock": lock,
    "kv": kv,
    "watch": watch,
    "live": live,
    "replay": replay,
}


async def run(
    trees: dict[str, Path], cases: list[str], ops: int, rounds: int
) -> list[dict[str, Any]]:
    figures: list[dict[str, Any]] = []
    with EtcdServer() as server:
        for case in cases:
            progress(f"paired: {case}, {ops} ops per side")
            figures += await CASES[case](trees, server.endpoint, ops, rounds)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.paired", description=__doc__)
    parser.add_argument("--before", required=True, help="git revision to compare against")
    parser.add_argument(
        "--ops",
        type=int,
        default=300,
        help="ops per side and case (watch: updates a round; live: watches; replay: events)",
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds of watch and live")
    parser.add_argument(
        "--only", default="visible,lock", help="visible, lock, kv, watch, live, replay"
    )
    args = parser.parse_args(argv)
    cases = args.only.split(",")
    if set(cases) - set(CASES) or args.ops < 4 or args.rounds < 1:
        parser.error(f"--only takes {', '.join(CASES)}; --ops >= 4, --rounds >= 1")
    with tempfile.TemporaryDirectory(prefix="etcdkit-paired-before-") as tmp:
        trees = {"before": Path(tmp), "after": REPO_ROOT}
        export(args.before, trees["before"])
        for tree in trees.values():
            compile_tree(tree, bytecode_env(dict(os.environ)))
        figures = asyncio.run(run(trees, cases, args.ops, args.rounds))
    for f in figures:
        print(json.dumps(f), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
