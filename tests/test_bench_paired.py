"""bench.paired: its op order and figures (pure logic), and one short run of every case against
the committed HEAD (real etcd, processes of both sides; no timing asserted)."""

from __future__ import annotations

import itertools
import json
import shutil

import pytest
from bench.paired import SIDES, _orders, figure, main


def test_each_side_leads_and_follows_itself_as_often() -> None:
    orders = _orders(8)
    assert all(sorted(o) == sorted(SIDES) for o in orders)
    assert sum(o[0] == "after" for o in orders) == 4
    assert sum(a[1] == b[0] for a, b in itertools.pairwise(orders)) == 4


def test_paired_figure() -> None:
    values = {"before": [0.001, 0.002, 0.003], "after": [0.0015, 0.0015, 0.004]}
    f = figure("c", "x_p50_ms", values, True)
    assert (f["before"], f["after"], f["ratio"], f["n"]) == (2.0, 1.5, 0.75, 3)
    assert f["median_diff_ms"] == 0.5  # +0.5, -0.5, +1.0 ms
    assert f["after_faster"] == pytest.approx(1 / 3, abs=1e-3)
    assert "median_diff_ms" not in figure("c", "x_p99_ms", values, False)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git (to export HEAD)")
def test_a_short_run_against_head(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--before", "HEAD", "--ops", "4", "--rounds", "1"]
    assert main([*argv, "--only", "visible,lock,kv,watch,live,replay"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["case"] for r in rows} == {"visible", "lock", "kv", "watch", "live", "replay"}
    assert all(r["before"] > 0 and r["after"] > 0 for r in rows)
    assert {r["n"] for r in rows if r["case"] in ("visible", "lock", "kv")} == {4}
    kv = {r["figure"] for r in rows if r["case"] == "kv"}
    assert kv == {"put_p50_ms", "put_p99_ms", "get_p50_ms", "get_p99_ms"}
    (watch,) = [r for r in rows if r["case"] == "watch"]
    assert watch["n"] == 1
    assert "median_diff" in watch
    replayed = {r["figure"] for r in rows if r["case"] == "replay"}
    assert replayed == {"watch_prefix_us_per_event_p50", "watch_us_per_event_p50"}
