"""Run the benchmark suite and print one JSON object per line.

``python -m bench [--quick] [--only SCENARIO[,..]] [--etcd-bin PATH] [--profile DIR]``
(or ``python bench/run.py ...``) from the repository root.

Scenarios: watch, latency, wait, lease, initial, hung (see bench/README.md). Every job (a scenario
at one set of parameters) runs in a process of its own with an etcd of its own (single
member, loopback, the packaged binary unless ``--etcd-bin``), so peak memory and CPU figures
belong to that job and no job sees another's data. JSON lines go to stdout, progress to
stderr. Each line: ``scenario``, ``case``, ``params``, ``figures``, ``goal`` (figure ->
target, value, met), ``met`` (all goals met; null without a goal), ``etcd_version``, ``date``.
The exit status is 1 if a job failed (its error is on stderr), else 0: a missed goal is a
figure, not a failure.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import datetime
import importlib
import json
import os
import platform
import subprocess
import threading
import time
from typing import Any

from bench._common import (
    PROFILE_ENV,
    REPO_ROOT,
    Env,
    Job,
    child_env,
    compile_tree,
    progress,
    run_async,
)

SCENARIOS = (
    "watch",
    "latency",
    "wait",
    "lease",
    "initial",
    "hung",
    "cluster",
    "lock",
    "proxy",
    "semaphore",
    "recipes",
    "naming",
    "peers",
)
JOB_TIMEOUT = 900.0


def plan(quick: bool, only: list[str]) -> list[Job]:
    jobs: list[Job] = []
    for name in only:
        jobs.extend(importlib.import_module(f"bench.{name}").jobs(quick))
    return jobs


def run_job(job: Job, args: argparse.Namespace) -> tuple[int, int]:
    """Run one job in a child process; relay its JSON lines. Returns (exit status, lines)."""
    env = child_env()
    if args.etcd_bin:
        env["ETCDKIT_ETCD_BIN"] = os.path.abspath(args.etcd_bin)
    if args.profile:
        env[PROFILE_ENV] = os.path.abspath(args.profile)
    cmd = [sys.executable, "-m", "bench.run", "--worker", job.scenario]
    cmd += ["--params", json.dumps(job.params)] + (["--quick"] if args.quick else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, cwd=str(REPO_ROOT), text=True)
    timer = threading.Timer(args.job_timeout, proc.kill)
    timer.start()
    lines = 0
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.strip()
            if not line:
                continue
            try:
                json.loads(line)
            except ValueError:
                progress(f"{job.label}: not JSON on stdout: {line[:200]}")
                continue
            print(line, flush=True)
            lines += 1
        status = proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if status != 0 and not timer.is_alive() and status < 0:
        progress(f"{job.label}: killed (timeout {args.job_timeout:g} s?)")
    return status, lines


def worker(scenario: str, params: dict[str, Any], quick: bool) -> int:
    """The child side: start an etcd, run the scenario's job, stamp and print its lines."""
    from etcdkit.server import EtcdServer

    module = importlib.import_module(f"bench.{scenario}")
    with EtcdServer() as server:
        version = str(server.version)

        def emit(line: dict[str, Any]) -> None:
            line["etcd_version"] = version
            line["date"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
            line["python"] = platform.python_version()
            line["cpus"] = os.cpu_count()
            line["quick"] = quick
            print(json.dumps(line), flush=True)

        env = Env(server=server, endpoint=server.endpoint, quick=quick, emit=emit)
        label = Job(scenario, params).label
        safe = "".join(c if c.isalnum() or c in "=-_" else "_" for c in label)
        run_async(f"job-{safe}", module.run(env, params))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="etcdkit benchmarks: JSON lines on stdout."
    )
    parser.add_argument("--quick", action="store_true", help="small sizes; < 2 min on 2 cores")
    parser.add_argument(
        "--only", default=",".join(SCENARIOS), help=f"comma-separated subset of {SCENARIOS}"
    )
    parser.add_argument("--etcd-bin", default=None, help="etcd binary (default: the packaged one)")
    parser.add_argument("--profile", default=None, metavar="DIR", help="write cProfile stats here")
    parser.add_argument("--job-timeout", type=float, default=JOB_TIMEOUT, help=argparse.SUPPRESS)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--params", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker, json.loads(args.params), args.quick)

    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SCENARIOS))
    if unknown or not only:
        parser.error(f"unknown scenario(s) {unknown}; choose from {','.join(SCENARIOS)}")
    if args.etcd_bin and not os.access(args.etcd_bin, os.X_OK):
        parser.error(f"--etcd-bin {args.etcd_bin!r} is not an executable file")
    jobs = plan(args.quick, only)
    compile_tree(REPO_ROOT, child_env())  # no job's process compiles the library first
    progress(f"{len(jobs)} jobs ({'quick' if args.quick else 'full'}): {', '.join(only)}")
    t0 = time.monotonic()
    failed: list[str] = []
    for job in jobs:
        progress(f"== {job.label}")
        status, lines = run_job(job, args)
        if status != 0 or lines == 0:
            failed.append(job.label)
            progress(f"{job.label}: FAILED (exit status {status}, {lines} lines)")
    progress(f"done in {time.monotonic() - t0:.0f} s" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
