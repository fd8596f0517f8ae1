"""The benchmark suite runs and speaks JSON (its figures are not checked: no timing asserts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
KEYS = {"scenario", "case", "params", "figures", "goal", "met", "etcd_version", "date"}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_quick_subset_prints_json_lines() -> None:
    env = dict(os.environ)
    env.pop("PYTHONASYNCIODEBUG", None)  # conftest turns it on for the tests, not for this
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "lease,wait"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    cases = {(line["scenario"], line["case"]) for line in lines}
    assert cases == {
        ("lease", "delete_recovery"),
        ("lease", "revoke_recovery"),
        ("lease", "restart_recovery"),
        ("lease", "idle_cpu"),
        ("wait", "wakeup"),
        ("wait", "concurrent"),
        ("wait", "watches"),
    }
    for line in lines:
        assert line.keys() >= KEYS, line
        assert line["figures"], line
        assert all(isinstance(v, int | float | list) for v in line["figures"].values()), line
        for verdict in line["goal"].values():
            assert isinstance(verdict["met"], bool)


def _peers_job(params: dict[str, object]) -> dict[str, Any]:
    """One quick peers job in a worker process of its own: its one JSON line."""
    env = dict(os.environ)
    env.pop("PYTHONASYNCIODEBUG", None)
    worker = ["-m", "bench.run", "--worker", "peers", "--quick"]
    proc = subprocess.run(
        [sys.executable, *worker, "--params", json.dumps(params)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    (line,) = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert isinstance(line, dict)
    return line


@pytest.mark.timeout(120)
def test_peers_replay_reaches_both_libraries_stream_handlers() -> None:
    """The peers scenario's replay case reaches inside etcdkit and aetcd (their watch stream
    handlers): it must keep running as either changes."""
    line = _peers_job({"case": "replay", "rounds": 1, "events": 200})
    assert line["params"]["clients"] == ["etcdkit", "aetcd"]
    figures = line["figures"]
    assert figures.keys() == {
        "etcdkit_watch_us",
        "etcdkit_watch_prefix_us",
        "aetcd_watch_us",
        "watch_us_vs_aetcd",
        "watch_prefix_us_vs_aetcd",
    }
    assert all(v > 0 for v in figures.values())


def test_micro_prints_each_case_beside_its_baseline(capsys: pytest.CaptureFixture[str]) -> None:
    from bench.micro import main

    assert main(["--keys", "200", "--repeat", "1", "--before", "HEAD"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(line["scenario"], line["case"]) for line in lines] == [
        ("micro", "kv"),
        ("micro", "listing"),
        ("micro", "events"),
    ]
    assert set(lines[0]["figures"]) == {
        "iterate_ms",
        "pairs_ms",
        "six_fields_ms",
        "kv_of_ms",
        "tuple_kv_ms",
        "kv_of_vs_pairs",
        "pairs_mb",
        "kv_of_mb",
    }
    assert set(lines[1]["figures"]) == {"seed_dict_ms", "listing_ms", "listing_vs_seed_dict"}
    assert set(lines[2]["figures"]) == {
        f"{side}apply_take{read}_us" for side in ("", "before_") for read in ("", "_read_changes")
    }
    assert all(v > 0 for line in lines for v in line["figures"].values())


@pytest.mark.timeout(120)
def test_peers_range_reads_every_key_both_ways() -> None:
    """The peers scenario's range case times etcdkit's range(), its get_prefix_pages (no
    object per key) and its get_prefix (typed, paged), each beside the peers; every library's
    child checks it read every key."""
    line = _peers_job({"case": "range", "rounds": 1, "n": 2000})
    figures = line["figures"]
    for name in ("etcdkit", "etcdkit_range_pages", "etcdkit_range_get_prefix", "aetcd"):
        assert figures[f"{name}_seconds"] > 0, figures
        assert figures[f"{name}_peak_rss_mb"] > 0, figures
    for ratio in (
        "seconds_vs_best",
        "range_pages_seconds_vs_best",
        "range_pages_peak_rss_mb_vs_aetcd",
        "range_get_prefix_seconds_vs_best",
        "range_get_prefix_peak_rss_mb_vs_best",
    ):
        assert figures[ratio] > 0, figures
    assert set(line["goal"]) == {"seconds_vs_best", "peak_rss_mb_vs_best"}
