"""The pytest plugin as users load it: by itself once etcdkit is installed, or named (as
``etcdkit.pytest_plugin``, or the module that defines its fixtures), once whatever the names
given; and a failing test gets the logs of the etcd it used. Each case runs pytest in a
process of its own on a test file of its own (each starting its own etcd)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
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


HANGS = """
import os, pathlib, time

def test_hangs(etcd_server, etcd_server_factory):
    made = etcd_server_factory()
    said = f"{etcd_server.pid} {etcd_server._work} {made.pid} {made._work}"
    pathlib.Path(os.environ["ETCDKIT_TEST_SAID"]).write_text(said)
    time.sleep(120)
"""


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2 :].startswith("Z")  # (not yet reaped by init)


@pytest.mark.parametrize("workers", ["0", "2"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_killed_test_run_leaves_no_etcd_running(
    tmp_path: Path, signum: int, workers: str
) -> None:
    """The test etcds run in sessions of their own, so a run killed by a signal would leave
    them running; the plugin kills them (and removes their dirs) before the run dies. Under
    pytest-xdist too, where the signal reaches the run's main process, not its workers."""
    (tmp_path / "test_it.py").write_text(HANGS)
    said = tmp_path / "said"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["ETCDKIT_TEST_SAID"] = str(said)
    run = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", workers],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not said.exists() or len(said.read_text().split()) < 4:
            assert run.poll() is None, "the test run ended before its test started"
            assert time.monotonic() < deadline, "the test never started"
            time.sleep(0.05)
        pid1, work1, pid2, work2 = said.read_text().split()
        run.send_signal(signum)
        assert run.wait(30) == -signum
    finally:
        run.kill()
        run.wait()

    # (at once: under xdist the workers went on with their test, their etcds with them,
    # until xdist's own teardown ended them 5 s later, or for as long as the test hung)
    # (under xdist a worker, not the process waited for, removes its etcds' dirs)
    def ended() -> list[bool]:
        return [_gone(int(pid1)), _gone(int(pid2)), not Path(work1).exists(),
                not Path(work2).exists()]  # fmt: skip

    deadline = time.monotonic() + 3
    while not all(ended()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ended() == [True] * 4


FORKS = """
import atexit, multiprocessing, os, time

def test_forks(etcd_server_factory):
    server = etcd_server_factory()
    ctx = multiprocessing.get_context("fork")
    worker = ctx.Process(target=time.sleep, args=(30,))  # (say, a crashed lock holder's)
    worker.start()
    time.sleep(0.5)
    worker.terminate()  # SIGTERM: the child has the plugin's handler too
    worker.join()
    assert worker.exitcode == -15
    pid = os.fork()
    if pid == 0:
        atexit._run_exitfuncs()  # (a child's normal exit: the finalizers run)
        os._exit(0)
    os.waitpid(pid, 0)
    assert server.data_dir.exists()
    assert server.logs().strip()
    assert server.running
    server.restart()
"""


def test_a_forked_child_leaves_its_parents_etcd_alone(tmp_path: Path) -> None:
    """A test's forked child (a multiprocessing worker, terminated; or one that exits) once
    ran the parent's cleanup: the running test etcd lost its data dir and logs, and came back
    empty from a restart."""
    (tmp_path / "test_it.py").write_text(FORKS)
    out = run_pytest(tmp_path, "-n", "0")
    assert out.returncode == 0, out.stdout + out.stderr
