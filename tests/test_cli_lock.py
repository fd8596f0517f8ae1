"""``etcdkit lock`` and ``etcdkit elect``, run as subprocesses against real etcd."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from etcdkit import Client, Leader
from etcdkit.server import EtcdServer

WAIT = 20.0
CLI = [sys.executable, "-m", "etcdkit"]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.pop("ETCDKIT_ENDPOINTS", None)
    e.pop("PYTHONASYNCIODEBUG", None)
    return e


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env(),
        stdin=subprocess.DEVNULL,
        check=False,
    )


class Proc:
    """A running ``etcdkit`` whose stdout and stderr lines can be waited for."""

    def __init__(self, *args: str) -> None:
        self.args = args
        self.proc = subprocess.Popen(
            [*CLI, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env(),
        )
        self.lines: list[str] = []
        self._q: queue.Queue[str | None] = queue.Queue()
        self._threads = [
            threading.Thread(target=self._read, args=(s,), daemon=True)
            for s in (self.proc.stdout, self.proc.stderr)
        ]
        for t in self._threads:
            t.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))
            self._q.put(line)
        self._q.put(None)

    def expect(self, pattern: str, timeout: float = WAIT) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        ended = 0
        while True:
            try:
                line = self._q.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r}: {self.lines}") from None
            if line is None:
                ended += 1
                if ended == 2:
                    raise AssertionError(f"exited before {pattern!r}: {self.lines}")
                continue
            m = re.search(pattern, line)
            if m is not None:
                return m

    def wait(self, timeout: float = WAIT) -> int:
        code = self.proc.wait(timeout)
        for t in self._threads:
            t.join(WAIT)
        return code

    def __enter__(self) -> Proc:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait()
        for s in (self.proc.stdout, self.proc.stderr):
            if s is not None:
                s.close()


def test_lock_runs_the_command_and_exits_with_its_status(
    etcd_server: EtcdServer, etcd_sync: Client, etcd_prefix: str
) -> None:
    name = etcd_prefix + "job"
    script = 'echo "token=$ETCDKIT_FENCING_TOKEN key=$ETCDKIT_LOCK_KEY go=$ETCD_LOCK_KEY"; exit 7'
    r = run(
        "--endpoints", etcd_server.endpoint, "lock", name, "--ttl", "5", "--", "sh", "-c", script
    )
    assert r.returncode == 7, r.stderr
    m = re.search(r"token=(\d+) key=(\S+) go=(\S+)", r.stdout)
    assert m is not None, r.stdout
    assert int(m.group(1)) > 0
    assert m.group(2) == m.group(3)
    assert m.group(2).startswith(name + "/")
    assert etcd_sync.get_prefix(name + "/").kvs == []  # released
    r = run("--endpoints", etcd_server.endpoint, "lock", name, "true")  # etcdctl's form, no --
    assert r.returncode == 0, r.stderr
    r = run("--endpoints", etcd_server.endpoint, "lock", name, "--", "no-such-command-xyz")
    assert r.returncode == 127
    assert "not found" in r.stderr
    assert etcd_sync.get_prefix(name + "/").kvs == []


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["lock", "/x"], "command to run"),
        (["lock", "", "--", "true"], "NAME"),
        (["lock", "/x", "--bogus", "--", "true"], "only --ttl"),
        (["lock", "/x", "--ttl", "0", "--", "true"], "--ttl"),
        # (it once took the lock, then ran "--ttl": command not found)
        (["lock", "/x", "--ttl", "5", "echo", "hi"], "put -- before the command"),
        (["elect", "/x"], "VALUE"),
        (["elect", "/x", "v", "--listen"], "--listen"),
    ],
)
def test_usage_errors_exit_2(etcd_server: EtcdServer, args: list[str], needle: str) -> None:
    r = run("--endpoints", etcd_server.endpoint, *args)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr
    assert "Traceback" not in r.stderr


def test_a_name_with_a_newline_or_undecodable_bytes_stays_on_one_status_line(
    etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    """A newline in a name split the status lines; its undecodable bytes were shown two ways
    in one line (\\xff as the name, U+FFFD in the key)."""
    name = etcd_prefix + "a\nb\udcff"  # (an argument's byte 0xff, as Python hands it over)
    r = run("--endpoints", etcd_server.endpoint, "lock", name, "--", "true")
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    holding = [line for line in lines if "holding lock" in line]
    assert len(holding) == 1, lines
    assert holding[0].count("a\\nb\\xff") == 2, holding  # the name and the key, alike
    assert "\ufffd" not in r.stderr
    assert not any(line.startswith("b") for line in lines), lines


def test_lock_waits_for_the_holder(
    etcd_server: EtcdServer, etcd_sync: Client, etcd_prefix: str, tmp_path: Path
) -> None:
    name = etcd_prefix + "wait"
    marker = tmp_path / "ran"
    with etcd_sync.lock(name) as lock:
        with Proc(
            "--endpoints", etcd_server.endpoint, "lock", name, "--", "touch", str(marker)
        ) as p:
            p.expect("waiting for lock")
            deadline = time.monotonic() + WAIT
            while len(etcd_sync.get_prefix(name + "/").kvs) < 2:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            time.sleep(0.3)
            assert not marker.exists()
            token = lock.fencing_token
            lock.release()
            assert p.wait() == 0
            assert marker.exists()
            assert f"fencing token {token}" not in "\n".join(p.lines)


def test_lock_lost_stops_the_command(
    etcd_server: EtcdServer, etcd_sync: Client, etcd_prefix: str
) -> None:
    name = etcd_prefix + "lost"
    with Proc("--endpoints", etcd_server.endpoint, "lock", name, "--", "sleep", "60") as p:
        p.expect("holding lock")
        (kv,) = etcd_sync.get_prefix(name + "/").kvs
        t0 = time.monotonic()
        etcd_sync.revoke(kv.lease)
        assert p.wait() == 1
        assert time.monotonic() - t0 < 5.0  # sleep got SIGTERM at once
        assert any("was lost" in line for line in p.lines), p.lines


def test_lock_keeps_the_commands_own_double_dash(
    etcd_server: EtcdServer, etcd_sync: Client, etcd_prefix: str
) -> None:
    """``git diff -- f``, ``kubectl exec pod -- sh``: CMD's own ``--`` is CMD's. (argparse
    drops the ``--`` after NAME, and the command's own was taken for ours: a usage error.)"""
    script = 'echo "args: $*"'
    for ours in ([], ["--ttl", "5"]):
        r = run(
            "--endpoints", etcd_server.endpoint, "lock", etcd_prefix + "dd", *ours, "--",
            "sh", "-c", script, "x", "--", "y",
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert "args: -- y" in r.stdout
    assert etcd_sync.get_prefix(etcd_prefix + "dd/").kvs == []


def test_a_command_that_cannot_be_run_exits_126_in_one_line(
    etcd_server: EtcdServer, etcd_sync: Client, etcd_prefix: str, tmp_path: Path
) -> None:
    """An executable file with no ``#!`` line (ENOEXEC) once gave a traceback and exit 1."""
    script = tmp_path / "no-shebang"
    script.write_bytes(b"\x7fELF not really\n")
    script.chmod(0o755)
    r = run("--endpoints", etcd_server.endpoint, "lock", etcd_prefix + "nx", "--", str(script))
    assert r.returncode == 126, r.stderr
    assert "cannot run it" in r.stderr
    assert "Traceback" not in r.stderr
    assert etcd_sync.get_prefix(etcd_prefix + "nx/").kvs == []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"  # (a zombie has ended; its parent may not reap it here)


def test_lock_lost_stops_the_commands_children_too(
    etcd_server: EtcdServer, etcd_sync: Client, etcd_prefix: str, tmp_path: Path
) -> None:
    """Not from a terminal, CMD runs in a process group of its own, which the signal goes to:
    a job's children stop with it when the lock is lost. (Only CMD itself did: a backup
    script's child went on while another process held the lock.)"""
    name = etcd_prefix + "lostkids"
    pidfile = tmp_path / "child.pid"
    job = f"sleep 60 & echo $! > {pidfile}; wait"
    with Proc("--endpoints", etcd_server.endpoint, "lock", name, "--", "sh", "-c", job) as p:
        p.expect("holding lock")
        deadline = time.monotonic() + WAIT
        while not pidfile.exists() or not pidfile.read_text().strip():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        child = int(pidfile.read_text())
        assert _alive(child)
        (kv,) = etcd_sync.get_prefix(name + "/").kvs
        etcd_sync.revoke(kv.lease)
        deadline = time.monotonic() + 5
        while _alive(child):
            assert time.monotonic() < deadline, "the command's child outlived the lost lock"
            time.sleep(0.02)
        assert p.wait() == 1


def test_ctrl_c_in_a_terminal_exits_130(
    etcd_server: EtcdServer, etcd_sync: Client, etcd_prefix: str
) -> None:
    """Ctrl-C in a terminal reaches CMD (same process group) and etcdkit together. CMD often
    died before etcdkit passed the signal on, and passing it on reaped CMD behind asyncio's
    back: exit 255 ("Unknown child process"), in 3 of 6 tries, where the docs say 130."""
    pytest.importorskip("pexpect")
    from _terminal import Terminal  # (pexpect's spawn forks: see tests/_terminal.py)

    for i in range(3):
        name = f"{etcd_prefix}intr{i}"
        child = Terminal(
            [*CLI, "--endpoints", etcd_server.endpoint, "lock", name, "--", "sleep", "60"],
            env=env(),
            dimensions=(24, 100),
            timeout=WAIT,
        )
        try:
            child.expect("holding lock")
            child.sendintr()
            child.close(timeout=WAIT)
            assert child.exitstatus == 130, child.before
        finally:
            if child.isalive():
                child.terminate(force=True)
        assert etcd_sync.get_prefix(name + "/").kvs == []


def test_lock_sigterm_stops_the_command_and_releases(
    etcd_server: EtcdServer, etcd_sync: Client, etcd_prefix: str
) -> None:
    name = etcd_prefix + "term"
    with Proc("--endpoints", etcd_server.endpoint, "lock", name, "--", "sleep", "60") as p:
        p.expect("holding lock")
        p.proc.send_signal(signal.SIGTERM)
        assert p.wait() == 128 + signal.SIGTERM
        assert etcd_sync.get_prefix(name + "/").kvs == []


def test_elect_and_listen(etcd_server: EtcdServer, etcd_sync: Client, etcd_prefix: str) -> None:
    name = etcd_prefix + "e"
    ep = ("--endpoints", etcd_server.endpoint)
    with Proc(*ep, "elect", name, "--listen") as listener:
        with Proc(*ep, "elect", name, "node-a", "--ttl", "5") as a:
            m = a.expect(r"elected: .* revision (\d+)")
            leader = etcd_sync.election(name).leader()
            assert leader is not None
            assert leader.value == b"node-a"
            assert leader.revision == int(m.group(1))
            listener.expect(r"leader: node-a \(key ")
            with Proc(*ep, "elect", name, "node-b") as b:
                b.expect("campaigning")
                a.proc.send_signal(signal.SIGINT)
                assert a.wait() == 0
                assert any("resigned" in line for line in a.lines)
                b.expect("elected")
                listener.expect(r"leader: node-b \(key ")
                # leadership lost (lease revoked): it says so and exits 1
                now = etcd_sync.election(name).leader()
                assert isinstance(now, Leader)
                (kv,) = [kv for kv in etcd_sync.get_prefix(name + "/").kvs if kv.key == now.key]
                etcd_sync.revoke(kv.lease)
                assert b.wait() == 1
                assert any("lost" in line for line in b.lines), b.lines
        listener.proc.send_signal(signal.SIGTERM)
        assert listener.wait() == 0


@pytest.mark.parametrize("command", ["lock", "elect"])
def test_an_unanswered_revoke_is_not_reported_as_released(
    etcd_server_factory: Callable[..., EtcdServer], command: str
) -> None:
    """Releasing the lock or resigning revokes the lease; when etcd does not answer (paused),
    the key stays until the TTL runs out, and the command says so instead of "released" or
    "resigned": elect exits 1, lock with its command's status."""
    server = etcd_server_factory()
    name = "/unanswered"
    ep = ("--endpoints", server.endpoint)
    args: tuple[str, ...] = ("lock", name, "--ttl", "30", "--", "sleep", "60")
    if command == "elect":
        args = ("elect", name, "node-a", "--ttl", "30")
    with Proc(*ep, *args) as p:
        p.expect("holding lock" if command == "lock" else "elected: ")
        server.pause()
        try:
            p.proc.send_signal(signal.SIGINT)
            code = p.wait(60)
        finally:
            server.resume()
    said = "\n".join(p.lines)
    assert "not confirmed" in said, said
    assert "released lock" not in said
    assert "resigned: " not in said
    assert code == (1 if command == "elect" else 128 + signal.SIGINT), said
    # (whether the key is still there after resume() is etcd's business: a revoke it had read
    # from the socket before the pause may still be applied)


@pytest.mark.parametrize("command", ["lock", "elect"])
def test_help_shows_examples(command: str) -> None:
    r = run(command, "--help")
    assert r.returncode == 0
    assert "examples:" in r.stdout
    assert "etcdctl" in r.stdout  # says whose lock / election it shares
    main = run("--help")
    assert f"etcdkit {command} " in main.stdout


def test_lock_hands_a_key_that_is_not_utf8_to_the_command_exactly(
    etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    """The lock's key went into the environment with U+FFFD for each byte UTF-8 cannot
    decode: the command got a key that is not the one in etcd."""
    name = etcd_prefix + "job-\udcff"  # (the byte 0xff, as Python decodes an argument)
    script = 'printf %s "$ETCD_LOCK_KEY"; printf "|%s" "$ETCDKIT_LOCK_KEY"'
    r = subprocess.run(
        [*CLI, "--endpoints", etcd_server.endpoint, "lock", name, "--", "sh", "-c", script],
        capture_output=True,
        timeout=60,
        env=env(),
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    go, ours = r.stdout.split(b"|")
    assert go == ours
    assert go.startswith(etcd_prefix.encode() + b"job-\xff/")


def _reader_gone() -> int:
    """The write end of a pipe whose reader has exited (as under `| head -1` once head is
    done): each write to it fails with EPIPE."""
    r, w = os.pipe()
    os.close(r)
    return w


def test_lock_runs_the_command_when_its_status_lines_have_no_reader(
    etcd_server: EtcdServer, etcd_sync: Client, etcd_prefix: str
) -> None:
    """`etcdkit lock NAME -- CMD 2>&1 | head -1`: the status lines on stderr find no reader.
    The first one ended the command with exit 0: CMD never ran, and a pipeline said it went
    well. Status lines are best effort now: CMD runs, and its status is ours."""
    name = etcd_prefix + "nostatus"
    w = _reader_gone()
    try:
        r = subprocess.run(
            [*CLI, "--endpoints", etcd_server.endpoint, "lock", name, "--", "sh", "-c",
             "echo ran; exit 3"],
            stdout=subprocess.PIPE, stderr=w, text=True, timeout=60, env=env(),
            stdin=subprocess.DEVNULL, check=False,
        )  # fmt: skip
    finally:
        os.close(w)
    assert r.stdout == "ran\n"
    assert r.returncode == 3
    assert etcd_sync.get_prefix(name + "/").kvs == []


def test_lock_exits_with_the_commands_status_when_the_status_reader_leaves(
    etcd_server: EtcdServer, etcd_sync: Client, etcd_prefix: str, tmp_path: Path
) -> None:
    """The reader of the status lines leaves while CMD runs (`2>&1 | head -2`): CMD's
    failure was reported as exit 0 (the "released" line failed)."""
    name = etcd_prefix + "statusgone"
    go = tmp_path / "go"
    job = f"while [ ! -e {go} ]; do sleep 0.02; done; exit 3"
    r, w = os.pipe()
    proc = subprocess.Popen(
        [*CLI, "--endpoints", etcd_server.endpoint, "lock", name, "--", "sh", "-c", job],
        stdout=subprocess.DEVNULL, stderr=w, env=env(), stdin=subprocess.DEVNULL,
    )  # fmt: skip
    os.close(w)
    try:
        with os.fdopen(r, "r") as status:
            for line in status:
                if "holding lock" in line:
                    break
        # the reader is gone now
        go.touch()
        assert proc.wait(WAIT) == 3
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT)
    assert etcd_sync.get_prefix(name + "/").kvs == []


def test_elect_keeps_leading_when_its_status_lines_have_no_reader(
    etcd_server: EtcdServer, etcd_sync: Client, etcd_prefix: str
) -> None:
    """`etcdkit elect NAME VALUE | head -1`: the "elected" line found no reader, and the
    leadership was given up at once (exit 0). It leads until SIGTERM now."""
    name = etcd_prefix + "el"
    w = _reader_gone()
    proc = subprocess.Popen(
        [*CLI, "--endpoints", etcd_server.endpoint, "elect", name, "node-a"],
        stdout=w, stderr=subprocess.PIPE, text=True, env=env(), stdin=subprocess.DEVNULL,
    )  # fmt: skip
    os.close(w)
    try:
        deadline = time.monotonic() + WAIT
        while (leader := etcd_sync.election(name).leader()) is None:
            assert proc.poll() is None, "elect exited"
            assert time.monotonic() < deadline, "not elected"
            time.sleep(0.05)
        assert leader.value == b"node-a"
        time.sleep(0.5)  # (the "elected" line has been written by now)
        assert proc.poll() is None, "elect gave up its leadership"
        assert etcd_sync.election(name).leader() == leader
        proc.send_signal(signal.SIGTERM)
        _, errs = proc.communicate(timeout=WAIT)
        assert proc.returncode == 0, errs
        assert "Traceback" not in errs
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT)
    assert etcd_sync.election(name).leader() is None


def test_lock_does_not_run_the_command_when_the_hold_is_lost_as_it_comes(
    etcd_server: EtcdServer, etcd_sync: Client, etcd_prefix: str, tmp_path: Path
) -> None:
    """A hold lost as ``acquire()`` hands it out (its session expiring after an outage, in
    the audit): the command said "holding lock", started CMD and stopped it a moment later.
    It says the lock was lost and does not start CMD (``tests/_lock_lost_probe.py`` deletes
    the hold's key before ``acquire()`` returns)."""
    name = etcd_prefix + "lostfirst"
    marker = tmp_path / "ran"
    probe = Path(__file__).resolve().parent / "_lock_lost_probe.py"
    r = subprocess.run(
        [sys.executable, str(probe), "--endpoints", etcd_server.endpoint, "lock", name, "--",
         "touch", str(marker)],
        capture_output=True, text=True, timeout=60, env=env(), stdin=subprocess.DEVNULL,
        check=False,
    )  # fmt: skip
    assert r.returncode == 1, r.stderr
    assert not marker.exists()
    assert "holding lock" not in r.stderr
    assert "was lost before touch started" in r.stderr
    assert "touch was not run" in r.stderr
    assert etcd_sync.get_prefix(name + "/").kvs == []


def test_sighup_while_waiting_exits_129_as_documented(
    etcd_server: EtcdServer, etcd_sync: Client, etcd_prefix: str
) -> None:
    """SIGHUP (the terminal closed) cleans up as SIGTERM does and exits 129, the shells'
    128 + signal number. The docs said it "counts as SIGTERM" (143)."""
    name = etcd_prefix + "hup"
    with etcd_sync.lock(name):
        with Proc("--endpoints", etcd_server.endpoint, "lock", name, "--", "true") as p:
            p.expect("waiting for lock")
            p.proc.send_signal(signal.SIGHUP)
            assert p.wait() == 129, p.lines
    assert etcd_sync.get_prefix(name + "/").kvs == []
    docs = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    assert "counts as SIGTERM" not in docs
    assert "exits 129" in docs
    assert "129 hung up (SIGHUP)" in run("--help").stdout
