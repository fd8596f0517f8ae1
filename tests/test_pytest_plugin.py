"""The pytest plugin as users load it: by itself once etcdkit is installed, or named (as
``etcdkit.pytest_plugin``, or the module that defines its fixtures), once whatever the names
given; and a failing test gets the logs of the etcd it used. Each case runs pytest in a
process of its own on a test file of its own (each starting its own etcd)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

USES = """
def test_uses_a_prefix(etcd_sync, etcd_prefix):
    etcd_sync.put(etcd_prefix + "k", "v")
    assert etcd_sync.get(etcd_prefix + "k").value == b"v"
"""


def run_pytest(path: Path, *args: str, autoload: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    if not autoload:
        env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("named", "args", "autoload"),
    [
        ("", (), True),
        ("etcdkit.pytest_plugin", (), True),
        ("etcdkit.testing.pytest_plugin", (), True),
        ("", ("-p", "etcdkit.pytest_plugin"), True),
        ("", ("-p", "etcdkit.pytest_plugin"), False),
        ("etcdkit.pytest_plugin", (), False),
    ],
)
def test_the_plugin_loads_once_however_it_is_named(
    tmp_path: Path, named: str, args: tuple[str, ...], autoload: bool
) -> None:
    (tmp_path / "test_it.py").write_text(USES)
    if named:
        (tmp_path / "conftest.py").write_text(f"pytest_plugins = [{named!r}]\n")
    out = run_pytest(tmp_path, *args, autoload=autoload)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 passed" in out.stdout


def test_the_plugin_can_be_turned_off(tmp_path: Path) -> None:
    (tmp_path / "test_it.py").write_text(USES)
    out = run_pytest(tmp_path, "-p", "no:etcdkit.pytest_plugin")
    assert out.returncode != 0
    assert "fixture 'etcd_sync' not found" in out.stdout


def test_a_failing_test_shows_the_logs_of_the_etcd_it_used(tmp_path: Path) -> None:
    (tmp_path / "test_it.py").write_text(
        "def test_server_alone(etcd_server):\n    assert False\n\n"
        "def test_server_and_prefix(etcd_server, etcd_prefix):\n    assert False\n"
    )
    out = run_pytest(tmp_path)
    assert "2 failed" in out.stdout, out.stdout + out.stderr
    sections = [line for line in out.stdout.splitlines() if " etcd logs (http://" in line]
    assert len(sections) == 2, out.stdout  # one per test: its server, once
