"""Scenario ``peers``: etcdkit side by side with the other Python etcd clients, on one etcd.

Clients: etcdkit and aetcd (installed with etcdkit, for its protobuf stubs), etcd3aio
(``pip install --target`` into a cache directory when it is not importable: it needs nothing
our venv lacks) and python-etcd3 (``etcd3`` 0.12, which needs protobuf <= 3.20: it runs from a
venv of its own, made once in the cache directory, with our grpcio version; on Python 3.11
that protobuf is the pure-Python one, as for any user of it there). A client that cannot be
installed is left out with a note. ``$ETCDKIT_BENCH_PEERS`` (comma-separated) picks clients;
``$ETCDKIT_BENCH_CACHE`` is the cache directory (default ``~/.cache/etcdkit-bench``);
``--quick`` installs nothing.

One job per case, each with its etcd; in it every client runs in a process of its own
(``bench._peer_client``), in ROUNDS rounds, the order of the clients rotating each round;
figures are medians over rounds. After each client's turn the job compacts etcd's history
(``physical=True``: done before the next turn starts), so that no client pays for another's
writes. Every figure is also given as a ratio of etcdkit's to the best peer's of the same run
(``*_vs_best``) and, where the issue's goal names aetcd, to aetcd's (``*_vs_aetcd``).

- ``put_get``: OPS sequential puts, then OPS sequential gets of those keys: p50/p99 each.
- ``range``: one unpaged read of 100k keys, then a pass over every key and value: seconds,
  and the client process's peak RSS (and its growth over the RSS before the read). etcdkit
  also with ``get_prefix_pages`` (no object per key) and ``get_prefix`` (the typed result of
  ``range()``, read in pages at one revision); no peer has either.
- ``watch``: the library's own prefix watch while a writer process (``bench._writer``, the
  same for all, 64 puts in flight) puts UPDATES new values to 1,000 keys: CPU seconds of
  the watching process, and the lag of the last event behind the writer's last ack. etcdkit
  also with ``watch_prefix`` (an exact snapshot of the prefix; no peer has one, so it is
  compared with the peers' raw streams).
- ``lock``: two processes of one client take turns on one lock (hold HOLD_MS, release,
  pause GAP_MS, queue again: the releaser never races the hand-off, so an unfair lock hands
  off too): p50/p99 from ``release()`` called to the other's ``acquire()`` returned; and the
  leases left in etcd afterwards (each client's are then revoked).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bench._common import (
    REPO_ROOT,
    Env,
    Goal,
    Job,
    child_env,
    key_of,
    ms,
    percentile,
    preload,
    progress,
    result,
    run_probe,
)
from etcdkit import AsyncClient, CompactedError

CLIENTS = ("etcdkit", "aetcd", "etcd3aio", "python-etcd3")
ETCD3AIO = "etcd3aio==0.3.0"
# tenacity 7 dropped the wait-callback signature etcd3 0.12's lock uses (a TypeError in acquire)
PYTHON_ETCD3 = ("etcd3==0.12.0", "protobuf==3.20.3", "tenacity<7")
PREFIX = "/bench/peers/"
WATCH_KEYS = 1_000
IN_FLIGHT = 64  # the writer's puts in flight (as in the watch scenario)
HOLD_MS = 10.0
GAP_MS = 5.0
CHILD_TIMEOUT = 300.0

FULL = {
    "rounds": 3, "ops": 2_000, "n": 100_000, "updates": 20_000, "handoffs": 500, "events": 50_000
}  # fmt: skip
QUICK = {"rounds": 1, "ops": 200, "n": 10_000, "updates": 2_000, "handoffs": 40, "events": 5_000}
REPLAYED = ("etcdkit", "aetcd")  # the libraries whose stream handler the replay case reaches


def jobs(quick: bool) -> list[Job]:
    sizes = QUICK if quick else FULL
    keep = {
        "put_get": ("rounds", "ops"),
        "range": ("rounds", "n"),
        "watch": ("rounds", "updates"),
        "lock": ("rounds", "handoffs"),
        "replay": ("rounds", "events"),
    }
    return [
        Job("peers", {"case": case, **{k: sizes[k] for k in names}}) for case, names in keep.items()
    ]


# -- the clients' processes -----------------------------------------------------------------------


@dataclass
class Runtime:
    """How to start one client's process."""

    name: str
    python: str
    env: dict[str, str]
    version: str = ""


@dataclass
class Lineup:
    clients: list[Runtime] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _cache_dir() -> Path:
    default = Path.home() / ".cache" / "etcdkit-bench"
    return Path(os.environ.get("ETCDKIT_BENCH_CACHE") or default)


def _pip(python: str, *args: str) -> None:
    cmd = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *args]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300, text=True)


def _version(python: str, env: dict[str, str], dist: str) -> str:
    code = f"from importlib.metadata import version; print(version({dist!r}))"
    proc = subprocess.run(
        [python, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    return proc.stdout.strip()


def _etcd3aio(install: bool) -> Runtime:
    env = child_env()
    if importlib.util.find_spec("etcd3aio") is None:
        target = _cache_dir() / ETCD3AIO.replace("==", "-")
        if not (target / "etcd3aio").is_dir():
            if not install:
                raise RuntimeError("not installed (--quick installs nothing)")
            # It needs grpcio and protobuf, which our venv has: only its own files go here.
            _pip(sys.executable, "--no-deps", "--target", str(target), ETCD3AIO)
        env["PYTHONPATH"] = env["PYTHONPATH"] + os.pathsep + str(target)
    rt = Runtime("etcd3aio", sys.executable, env)
    rt.version = _version(rt.python, env, "etcd3aio")
    return rt


def _python_etcd3(install: bool) -> Runtime:
    venv = _cache_dir() / f"python-etcd3-0.12.0-tenacity6-grpcio-{grpc.__version__}"
    python = str(venv / "bin" / "python")
    done = venv / ".complete"
    if not done.exists():
        if not install:
            raise RuntimeError("no venv of its own yet (--quick installs nothing)")
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True,
                       capture_output=True, timeout=300)  # fmt: skip
        _pip(python, *PYTHON_ETCD3, f"grpcio=={grpc.__version__}")
        done.write_text("ok\n")
    env = dict(os.environ)
    env.pop("PYTHONASYNCIODEBUG", None)
    env["PYTHONPATH"] = str(REPO_ROOT)  # bench._peer_client only: none of our venv
    rt = Runtime("python-etcd3", python, env)
    rt.version = _version(python, env, "etcd3")
    return rt


def lineup(quick: bool) -> Lineup:
    wanted = [
        c.strip() for c in os.environ.get("ETCDKIT_BENCH_PEERS", ",".join(CLIENTS)).split(",")
    ]
    unknown = sorted(set(wanted) - set(CLIENTS))
    if unknown:
        raise ValueError(f"$ETCDKIT_BENCH_PEERS: unknown client(s) {unknown}; from {CLIENTS}")
    if "etcdkit" not in wanted or "aetcd" not in wanted:
        raise ValueError("$ETCDKIT_BENCH_PEERS must name etcdkit and aetcd (the goals' baseline)")
    up = Lineup()
    for name in CLIENTS:
        if name not in wanted:
            continue
        try:
            if name in ("etcdkit", "aetcd"):
                rt = Runtime(name, sys.executable, child_env())
                rt.version = _version(rt.python, rt.env, name)
            elif name == "etcd3aio":
                rt = _etcd3aio(install=not quick)
            else:
                rt = _python_etcd3(install=not quick)
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", None) or exc
            up.notes.append(f"{name} left out: {str(detail).strip()[-300:]}")
            progress(f"peers: {up.notes[-1]}")
            continue
        up.clients.append(rt)
    return up


class Child:
    """One client process running one case; its JSON lines read as they come."""

    def __init__(self, proc: asyncio.subprocess.Process, label: str) -> None:
        self.proc = proc
        self.label = label

    @classmethod
    async def start(cls, rt: Runtime, case: str, endpoint: str, params: dict[str, Any]) -> Child:
        proc = await asyncio.create_subprocess_exec(
            rt.python,
            "-m",
            "bench._peer_client",
            rt.name,
            case,
            endpoint,
            json.dumps(params),
            stdout=asyncio.subprocess.PIPE,
            env=rt.env,
            cwd=str(REPO_ROOT),
        )
        return cls(proc, f"{rt.name} {case}")

    async def line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        async with asyncio.timeout(CHILD_TIMEOUT):
            raw = await self.proc.stdout.readline()
        if not raw:
            await self.proc.wait()
            raise RuntimeError(f"{self.label}: exited ({self.proc.returncode}) early")
        return json.loads(raw)  # type: ignore[no-any-return]

    async def lines(self) -> list[dict[str, Any]]:
        assert self.proc.stdout is not None
        async with asyncio.timeout(CHILD_TIMEOUT):
            out = await self.proc.stdout.read()
            status = await self.proc.wait()
        if status != 0:
            raise RuntimeError(f"{self.label}: exit status {status}")
        return [json.loads(line) for line in out.decode().splitlines() if line.strip()]

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


def _slow_disk_writes(metrics_port: int) -> int:
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5.0) as resp:
        text = resp.read().decode()
    slow = 0
    for what in ("wal_fsync", "backend_commit"):
        name = f"etcd_disk_{what}_duration_seconds"
        total = re.search(rf"^{name}_count (\S+)$", text, re.MULTILINE)
        fast = re.search(rf'^{name}_bucket{{le="0.032"}} (\S+)$', text, re.MULTILINE)
        if total and fast:
            slow += int(float(total.group(1)) - float(fast.group(1)))
    return slow


async def slow_disk_writes(env: Env) -> int:
    """etcd's WAL fsyncs and backend commits so far that took over 32 ms (its histograms):
    a hand-off waits for one of them when its delete is committed."""
    return await asyncio.to_thread(_slow_disk_writes, env.server.metrics_port)


async def settle(client: AsyncClient) -> None:
    """Compact away the history a turn wrote, and wait until etcd has applied it."""
    with contextlib.suppress(CompactedError):  # nothing written since the last compaction
        await client.compact(await client.get_revision(), physical=True)
    await asyncio.sleep(0.2)


# -- cases ----------------------------------------------------------------------------------------


async def put_get_turn(rt: Runtime, env: Env, params: dict[str, Any]) -> dict[str, float]:
    child = await Child.start(rt, "put_get", env.endpoint, params)
    try:
        (res,) = await child.lines()
    finally:
        child.kill()
    return {
        "put_p50_ms": ms(percentile(res["put_s"], 50)),
        "put_p99_ms": ms(percentile(res["put_s"], 99)),
        "get_p50_ms": ms(percentile(res["get_s"], 50)),
        "get_p99_ms": ms(percentile(res["get_s"], 99)),
    }


async def range_turn(
    rt: Runtime, env: Env, params: dict[str, Any], case: str = "range"
) -> dict[str, float]:
    child = await Child.start(rt, case, env.endpoint, params)
    try:
        (res,) = await child.lines()
    finally:
        child.kill()
    return {
        "seconds": round(res["seconds"], 4),
        "call_s": round(res["call_s"], 4),
        "peak_rss_mb": res["peak_rss_mb"],
        "rss_growth_mb": round(res["peak_rss_mb"] - res["rss_before_mb"], 1),
    }


async def watch_turn(
    rt: Runtime, env: Env, params: dict[str, Any], case: str = "watch"
) -> dict[str, float]:
    updates = int(params["updates"])
    child = await Child.start(rt, case, env.endpoint, params)
    try:
        ready = await child.line()
        w = await run_probe(
            "bench._writer",
            [env.endpoint, params["prefix"], str(WATCH_KEYS), str(updates), str(IN_FLIGHT)],
            timeout=CHILD_TIMEOUT,
        )
        (res,) = await child.lines()
    finally:
        child.kill()
    if w["last_revision"] != ready["revision"] + updates:
        raise RuntimeError(f"someone else wrote: writer ended at {w['last_revision']}")
    return {
        "cpu_s": round(res["cpu_s"], 4),
        "cpu_us_per_event": round(res["cpu_s"] / updates * 1e6, 2),
        "lag_ms": ms(res["t_done"] - w["t_end"]),
        "writer_puts_per_s": round(updates / (w["t_end"] - w["t_start"]), 1),
    }


async def replay_turn(rt: Runtime, env: Env, params: dict[str, Any]) -> dict[str, float]:
    child = await Child.start(rt, "replay", env.endpoint, params)
    try:
        (res,) = await child.lines()
    finally:
        child.kill()
    return {name: round(us, 3) for name, us in res.items()}


async def lock_turn(
    rt: Runtime, env: Env, params: dict[str, Any], client: AsyncClient
) -> dict[str, float]:
    handoffs = int(params["handoffs"])
    spec = {
        "name": f"{PREFIX}lock/{rt.name}",
        "ttl": 10,
        "hold_ms": HOLD_MS,
        "gap_ms": GAP_MS,
        "rounds": handoffs // 2 + 3,
        "seconds": 120.0,
    }
    leases0 = len(await client.leases())
    slow0 = await slow_disk_writes(env)
    children = [await Child.start(rt, "lock", env.endpoint, spec) for _ in range(2)]
    try:
        outs = await asyncio.gather(*(c.lines() for c in children))
    finally:
        for c in children:
            c.kill()
    events: list[tuple[float, str, int]] = []
    for i, lines in enumerate(outs):
        for ev in lines:
            if "acquired" in ev:
                events.append((ev["acquired"], "acquired", i))
            elif "released" in ev:
                events.append((ev["released"], "released", i))
    events.sort()
    lat = [
        cur[0] - prev[0]
        for prev, cur in itertools.pairwise(events)
        if prev[1] == "released" and cur[1] == "acquired" and prev[2] != cur[2]
    ][:handoffs]
    slow = await slow_disk_writes(env) - slow0
    leases = await client.leases()
    for lease in leases:  # what the client left behind: gone before the next client's turn
        await client.revoke(lease)
    if not lat:
        raise RuntimeError(f"{rt.name}: no hand-off between the two processes")
    return {
        "handoffs": len(lat),
        "p50_ms": ms(percentile(lat, 50)),
        "p99_ms": ms(percentile(lat, 99)),
        "max_ms": ms(max(lat)),
        "leases_left": len(leases) - leases0,
        "hand_offs_over_10ms": sum(1 for x in lat if x > 0.010),
        "etcd_disk_writes_over_32ms": slow,
    }


async def turn(
    rt: Runtime, which: str, env: Env, spec: dict[str, Any], client: AsyncClient
) -> dict[str, float]:
    if which == "put_get":
        return await put_get_turn(rt, env, spec)
    if which in ("range", "range_pages", "range_get_prefix"):
        return await range_turn(rt, env, spec, which)
    if which in ("watch", "watch_prefix"):
        return await watch_turn(rt, env, spec, which)
    if which == "lock":
        return await lock_turn(rt, env, spec, client)
    if which == "replay":
        return await replay_turn(rt, env, spec)
    raise ValueError(f"unknown peers case {which!r}")


# -- the job --------------------------------------------------------------------------------------


def _median(rounds: list[dict[str, float]], key: str) -> float:
    return round(statistics.median(r[key] for r in rounds), 4)


def _flat(per: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for variant, rounds in per.items():
        for key in rounds[0]:
            figures[f"{variant.replace('-', '_')}_{key}"] = _median(rounds, key)
    return figures


def _ratios(
    figures: dict[str, Any], peers: list[str], figure: str, ours: str = "etcdkit"
) -> dict[str, float]:
    """``<ours>_<figure>`` over aetcd's and over the best (smallest) peer's."""
    mine = figures[f"{ours}_{figure}"]
    theirs = {p: figures[f"{p.replace('-', '_')}_{figure}"] for p in peers}
    best = min(theirs.values())
    name = figure if ours == "etcdkit" else f"{ours.removeprefix('etcdkit_')}_{figure}"
    return {
        f"{name}_vs_aetcd": round(mine / theirs["aetcd"], 3) if theirs["aetcd"] else 0.0,
        f"{name}_vs_best": round(mine / best, 3) if best else 0.0,
    }


async def run(env: Env, params: dict[str, Any]) -> None:
    case, rounds = params["case"], int(params["rounds"])
    up = lineup(env.quick)
    peers = [rt.name for rt in up.clients if rt.name != "etcdkit"]
    prefix = f"{PREFIX}{case}/"
    spec: dict[str, Any] = {**params, "prefix": prefix}
    per: dict[str, list[dict[str, float]]] = {}
    async with AsyncClient(env.endpoint, timeout=120.0) as client:
        if case == "put_get":
            spec.update(warmup=50, value_bytes=16)
        elif case == "range":
            n = int(params["n"])
            await preload(client, ((key_of(prefix.encode(), i), b"%016d" % i) for i in range(n)))
        elif case == "watch":
            await preload(client, ((key_of(prefix.encode(), i), b"0") for i in range(WATCH_KEYS)))
        await settle(client)
        variants = [(rt, case) for rt in up.clients if case != "replay" or rt.name in REPLAYED]
        if case == "watch":
            variants.append((up.clients[0], "watch_prefix"))  # etcdkit's, which no peer has
        if case == "range":
            variants.append((up.clients[0], "range_pages"))  # etcdkit's, which no peer has
            variants.append((up.clients[0], "range_get_prefix"))  # ditto
        failed: set[str] = set()
        for r in range(rounds):
            k = r % len(variants)
            for rt, which in variants[k:] + variants[:k]:
                label = rt.name if which == case else f"etcdkit_{which}"
                if label in failed:
                    continue
                t0 = time.monotonic()
                try:
                    figs = await turn(rt, which, env, spec, client)
                except (RuntimeError, TimeoutError, ValueError) as exc:
                    if rt.name in ("etcdkit", "aetcd"):
                        raise
                    failed.add(label)  # an optional peer's failure leaves it out, not the job
                    up.notes.append(f"{label} left out of {case}: {exc}")
                    progress(f"peers: {up.notes[-1]}")
                    await settle(client)
                    continue
                per.setdefault(label, []).append(figs)
                progress(f"peers {case} round {r + 1}: {label} {figs} "
                         f"({time.monotonic() - t0:.1f} s)")  # fmt: skip
                await settle(client)
    ran = [rt.name for rt in up.clients if case != "replay" or rt.name in REPLAYED]
    figures = _flat(per)
    peers = [p for p in peers if p in per]
    goals: list[Goal] = []
    if case == "put_get":
        for f in ("put_p50_ms", "put_p99_ms", "get_p50_ms", "get_p99_ms"):
            figures.update(_ratios(figures, peers, f))
        goals = [Goal("put_p50_ms_vs_aetcd", "<=", 1.0), Goal("get_p50_ms_vs_aetcd", "<=", 1.0)]
    elif case == "range":
        for f in ("seconds", "call_s", "peak_rss_mb", "rss_growth_mb"):
            figures.update(_ratios(figures, peers, f))
            # No goal on these: the goal is on range(), which makes a KeyValue per key.
            figures.update(_ratios(figures, peers, f, ours="etcdkit_range_pages"))
            figures.update(_ratios(figures, peers, f, ours="etcdkit_range_get_prefix"))
        goals = [Goal("seconds_vs_best", "<=", 1.0), Goal("peak_rss_mb_vs_best", "<=", 1.0)]
    elif case == "watch":
        # (no ratio for the lag: near zero, and negative when the last event arrives before
        # the writer's last ack; its goal is in ms)
        figures.update(_ratios(figures, peers, "cpu_us_per_event"))
        figures.update(_ratios(figures, peers, "cpu_us_per_event", ours="etcdkit_watch_prefix"))
        goals = [
            Goal("cpu_us_per_event_vs_aetcd", "<=", 1.0),
            Goal("watch_prefix_cpu_us_per_event_vs_aetcd", "<=", 1.15),
            Goal("etcdkit_lag_ms", "<=", 10.0),
            Goal("etcdkit_watch_prefix_lag_ms", "<=", 10.0),
        ]
    elif case == "lock":
        for f in ("p50_ms", "p99_ms"):
            figures.update(_ratios(figures, peers, f))
        goals = [Goal("etcdkit_p99_ms", "<=", 10.0)]
    elif case == "replay":
        # No goal of the is on this figure: it explains the watch case's (see there).
        theirs = figures["aetcd_watch_us"]
        for kind in ("watch", "watch_prefix"):
            figures[f"{kind}_us_vs_aetcd"] = round(figures[f"etcdkit_{kind}_us"] / theirs, 3)
    notes = [
        "medians over rounds, clients alternating; etcd compacted after each turn; "
        "*_vs_best: etcdkit's figure over the best peer's of this run (lower is better)",
        "clients: " + ", ".join(f"{rt.name} {rt.version}" for rt in up.clients),
        *up.notes,
    ]
    env.emit(
        result(
            "peers",
            case,
            {**params, "clients": ran},
            figures,
            goals,
            notes="; ".join(notes),
        )
    )
