"""bench.ab's verdicts (pure logic) and its --from report over kept runs (no etcd, no timing)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench.ab import every_round, main


def test_worse_only_when_every_round_lost_and_past_the_margin() -> None:
    assert every_round("p50_ms", [1.0, 1.1, 1.0], [1.2, 1.2, 1.3], 1.2) == "worse"
    assert every_round("p50_ms", [1.0, 1.1, 1.0], [0.8, 0.9, 0.8], 0.8) == "better"
    # one round the other way: no verdict, however far the medians are
    assert every_round("p50_ms", [1.0, 1.3, 1.0], [1.2, 1.2, 1.3], 1.2) == ""
    # every round lost, but the medians within 5%: no verdict
    assert every_round("p50_ms", [1.0, 1.0, 1.0], [1.01, 1.02, 1.04], 1.02) == ""
    assert every_round("p50_ms", [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], None) == ""


def test_rates_are_better_higher() -> None:
    assert every_round("events_per_s", [100.0, 100.0], [80.0, 85.0], 0.825) == "worse"
    assert every_round("events_per_s", [100.0, 100.0], [120.0, 125.0], 1.225) == "better"


def _run(path: Path, p50: float, rate: float) -> None:
    row = {"scenario": "s", "case": "c", "params": {}, "figures": {"p50_ms": p50, "x_per_s": rate}}
    path.write_text("progress noise\n" + json.dumps(row) + "\n")


def test_from_kept_runs_prints_rows_and_verdicts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for r, (b, a) in enumerate([(1.0, 1.5), (1.1, 1.4)], start=1):
        _run(tmp_path / f"{r}-before.jsonl", b, 100.0)
        _run(tmp_path / f"{r}-after.jsonl", a, 100.0 + r)
    assert main(["--from", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    rows = {row["figure"]: row for row in map(json.loads, out.splitlines())}
    assert rows["p50_ms"]["before"] == [1.0, 1.1]
    assert rows["p50_ms"]["after"] == [1.5, 1.4]
    assert rows["p50_ms"]["ratio"] == 1.381
    assert rows["p50_ms"]["every_round"] == "worse"
    assert rows["x_per_s"]["every_round"] == ""  # better in each round, but by < 5%
    assert "2 figures" in err
    assert "worse: s c p50_ms x1.381" in err


def test_from_an_empty_directory_says_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no runs"):
        main(["--from", str(tmp_path)])


def test_running_needs_a_revision() -> None:
    with pytest.raises(SystemExit):
        main([])
