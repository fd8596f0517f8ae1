"""Same-run before/after: ``python -m bench`` at a git revision and at the working tree, in turn.

``python -m bench.ab --before REV [--rounds 2] [--only SCENARIO[,..]] [--out DIR]``
from the repository root. ``REV`` is exported (``git archive``) to a temporary directory and
its own ``bench`` runs there on its own library; the working tree runs as it is. Rounds
alternate the order (before, after; then after, before; ...) so drift on the machine does not
favour one side. Each run's JSON lines are kept in ``DIR`` (``<round>-before.jsonl``,
``<round>-after.jsonl``); then one JSON object per figure goes to stdout: ``scenario``,
``case``, ``figure``, ``before`` and ``after`` (every round's value) and ``ratio`` (median
after / median before). Progress goes to stderr. Issue 22's check, "nothing gets slower", is
this against the revision before it (``--before 6f3a1a7``).
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import json
import os
import statistics
import subprocess
import tempfile
from collections.abc import Iterator
from typing import Any

from bench._common import REPO_ROOT, bytecode_env, compile_tree, progress
from bench.run import SCENARIOS

Key = tuple[str, str, str]
# what bench/results-2026-11-26.jsonl holds (the revision before issue 22 knows no others)
BASELINE_SCENARIOS = "watch,latency,wait,lease,initial,hung,cluster,lock,proxy"


def export(rev: str, into: Path) -> None:
    """``git archive rev`` unpacked into ``into``."""
    archive = subprocess.run(
        ["git", "archive", rev], cwd=REPO_ROOT, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)


def run_side(tree: Path, only: str, out: Path) -> None:
    # Bytecode cached on both sides, whatever their bench does (bench._common.bytecode_env):
    # otherwise each process compiles its library first, and the bigger library pays more.
    env = bytecode_env(dict(os.environ, PYTHONPATH=f"{tree / 'src'}{os.pathsep}{tree}"))
    compile_tree(tree, env)
    with out.open("wb") as stdout:
        done = subprocess.run(
            [sys.executable, "-m", "bench", "--only", only], cwd=tree, env=env, stdout=stdout
        )
    if done.returncode:
        progress(f"ab: {out.name}: bench exited {done.returncode} (its figures are kept)")


def load(path: Path) -> dict[Key, dict[str, Any]]:
    found: dict[Key, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "scenario" in row:
            key = (row["scenario"], str(row.get("case")), json.dumps(row.get("params")))
            found[key] = row.get("figures") or {}
    return found


Runs = list[dict[Key, dict[str, Any]]]


def _figure(run: dict[Key, dict[str, Any]], key: Key, name: str) -> float | None:
    value = run.get(key, {}).get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def compare(befores: Runs, afters: Runs) -> Iterator[dict[str, Any]]:
    """One row per numeric figure found in every run of both sides."""
    for key, figures in befores[0].items():
        for name, value in figures.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            before = [f for run in befores if (f := _figure(run, key, name)) is not None]
            after = [f for run in afters if (f := _figure(run, key, name)) is not None]
            if len(before) != len(befores) or len(after) != len(afters):
                continue  # not in every run
            low = statistics.median(before)
            ratio = round(statistics.median(after) / low, 3) if low else None
            yield {
                "scenario": key[0],
                "case": key[1],
                "figure": name,
                "before": before,
                "after": after,
                "ratio": ratio,
            }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__)
    parser.add_argument("--before", required=True, help="git revision to compare against")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", default=BASELINE_SCENARIOS)
    parser.add_argument("--out", help="directory for each run's JSON lines (default: a new one)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.only.split(",")) - set(SCENARIOS))
    if unknown or args.rounds < 1:
        parser.error(f"unknown scenario(s) {unknown} or rounds < 1")
    out = Path(args.out or tempfile.mkdtemp(prefix="etcdkit-ab-"))
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="etcdkit-ab-before-") as tmp:
        before_tree = Path(tmp)
        export(args.before, before_tree)
        trees = {"before": before_tree, "after": REPO_ROOT}
        for round_ in range(1, args.rounds + 1):
            order = ("before", "after") if round_ % 2 else ("after", "before")
            for side in order:
                progress(f"ab: round {round_}, {side}")
                run_side(trees[side], args.only, out / f"{round_}-{side}.jsonl")
    progress(f"ab: runs kept in {out}")
    befores = [load(out / f"{r}-before.jsonl") for r in range(1, args.rounds + 1)]
    afters = [load(out / f"{r}-after.jsonl") for r in range(1, args.rounds + 1)]
    for row in compare(befores, afters):
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
