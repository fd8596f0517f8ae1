"""The benchmark suite runs and speaks JSON (its figures are not checked: no timing asserts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
