"""Same-run before/after: ``python -m bench`` at a git revision and at the working tree, in turn.

``python -m bench.ab --before REV [--rounds 2] [--only SCENARIO[,..]] [--out DIR]``
from the repository root. ``REV`` is exported (``git archive``) to a temporary directory and
its own ``bench`` runs there on its own library; the working tree runs as it is. Rounds
alternate the order (before, after; then after, before; ...) so drift on the machine does not
favour one side. Each run's JSON lines are kept in ``DIR`` (``<round>-before.jsonl``,
``<round>-after.jsonl``); then one JSON object per figure goes to stdout: ``scenario``,
``case``, ``figure``, ``before`` and ``after`` (every round's value), ``ratio`` (median
after / median before) and ``every_round`` (see :func:`every_round`); stderr ends with the
figures worse / better in every round. Progress goes to stderr. Issue 22's check, "nothing
gets slower", is this against the revision before it (``--before 6f3a1a7``).
``--from DIR`` compares the runs kept in ``DIR`` again, running nothing.
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
MARGIN = 0.05  # a ratio of medians within 5% of 1 is no verdict (see every_round)


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
                "every_round": every_round(name, before, after, ratio),
            }


def every_round(name: str, before: list[float], after: list[float], ratio: float | None) -> str:
    """``"worse"`` / ``"better"`` when the after side lost / won against the before side in
    every round (round by round: the two sides of a round ran back to back) and the ratio of
    medians is more than :data:`MARGIN` off 1; else ``""``. Lower is better, except for rates
    (``*_per_s``). A figure of pure noise is one or the other in a quarter of 3-round runs
    (half of them past the margin): read the control figures (``raw_*``) alongside."""
    if ratio is None or abs(ratio - 1) <= MARGIN:
        return ""
    higher_better = name.endswith("per_s")
    lost = [(a < b) if higher_better else (a > b) for b, a in zip(before, after, strict=True)]
    won = [(a > b) if higher_better else (a < b) for b, a in zip(before, after, strict=True)]
    return "worse" if all(lost) else "better" if all(won) else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__)
    parser.add_argument("--before", help="git revision to compare against (required to run)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", default=BASELINE_SCENARIOS)
    parser.add_argument("--out", help="directory for each run's JSON lines (default: a new one)")
    parser.add_argument("--from", dest="kept", help="compare the runs kept in this directory")
    args = parser.parse_args(argv)
    if args.kept:
        return report(Path(args.kept))
    unknown = sorted(set(args.only.split(",")) - set(SCENARIOS))
    if unknown or args.rounds < 1:
        parser.error(f"unknown scenario(s) {unknown} or rounds < 1")
    if not args.before:
        parser.error("--before REV is required (or --from DIR, to compare kept runs)")
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
    return report(out)


def report(out: Path) -> int:
    """Print the comparison of the runs kept in ``out`` (stdout), and the verdicts (stderr)."""
    rounds = len(list(out.glob("*-before.jsonl")))
    if not rounds:
        raise SystemExit(f"ab: no runs (N-before.jsonl, N-after.jsonl) in {out}")
    befores = [load(out / f"{r}-before.jsonl") for r in range(1, rounds + 1)]
    afters = [load(out / f"{r}-after.jsonl") for r in range(1, rounds + 1)]
    verdicts: dict[str, list[str]] = {"worse": [], "better": []}
    rows = 0
    for row in compare(befores, afters):
        print(json.dumps(row), flush=True)
        rows += 1
        if row["every_round"]:
            verdicts[row["every_round"]].append(
                f"{row['scenario']} {row['case']} {row['figure']} x{row['ratio']}"
            )
    progress(
        f"ab: {rows} figures; after worse in every round (ratio off by > {MARGIN:.0%}): "
        f"{len(verdicts['worse'])}; better: {len(verdicts['better'])}"
    )
    for verdict, names in verdicts.items():
        for name in names:
            progress(f"ab:   {verdict}: {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
