"""The ``etcdkit`` command, run as a subprocess (``python -m etcdkit``) against real etcd."""

from __future__ import annotations

import asyncio
import base64
import fcntl
import functools
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil
import pytest

from etcdkit import AsyncClient, Client
from etcdkit.server import EtcdServer

WAIT = 20.0  # generous: an expectation that holds comes true long before
CLI = [sys.executable, "-m", "etcdkit"]


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("ETCDKIT_ENDPOINTS", None)  # every test says where etcd is
    env.pop("ETCDKIT_PASSWORD", None)
    # rich takes COLUMNS/LINES over the terminal's size: a runner's (pytest-xdist's workers
    # have COLUMNS=80) would override the size a pty test gives its terminal
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    # the CLI as a user runs it: asyncio's debug mode (conftest turns it on for the tests'
    # own loops) logs every callback over 100 ms, a line on stderr of a loaded machine
    env.pop("PYTHONASYNCIODEBUG", None)
    env.update(extra)
    return env


def run(
    *args: str | bytes, env: dict[str, str] | None = None, stdout: Any = subprocess.PIPE
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
        env=env if env is not None else cli_env(),
        stdin=subprocess.DEVNULL,
        check=False,
    )


class Cli:
    """A running ``etcdkit`` process whose output lines can be waited for."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.proc = subprocess.Popen(
            [*CLI, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env if env is not None else cli_env(),
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._threads = [
            threading.Thread(target=self._read, args=(self.proc.stdout, True), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, False), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _read(self, stream: Any, is_stdout: bool) -> None:
        for line in stream:
            line = line.rstrip("\n")
            if is_stdout:
                self.stdout.append(line)
                self._lines.put(line)
            else:
                self.stderr.append(line)
        if is_stdout:
            self._lines.put(None)

    def __enter__(self) -> Cli:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(WAIT)
        for t in self._threads:
            t.join(WAIT)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def expect(self, pattern: str, timeout: float = WAIT) -> re.Match[str]:
        """The next stdout line matching ``pattern`` (earlier lines are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self._lines.get(timeout=max(0.0, left))
            except queue.Empty:
                msg = self._why(f"no line matching {pattern!r} in {timeout} s")
                raise AssertionError(msg) from None
            if line is None:
                raise AssertionError(self._why(f"exited before a line matching {pattern!r}"))
            m = re.search(pattern, line)
            if m is not None:
                return m

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = WAIT) -> int:
        code = self.proc.wait(timeout)
        for t in self._threads:
            t.join(WAIT)
        return code

    def _why(self, what: str) -> str:
        return (
            f"etcdkit {' '.join(self.args)}: {what} (exit {self.proc.poll()})\n"
            f"stdout:\n"
            + "\n".join(self.stdout[-30:])
            + "\nstderr:\n"
            + "\n".join(self.stderr[-30:])
        )


def wait_until(cond: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# -- usage ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [None, "dev", "watch", "register", "wait", "demo"])
def test_help_shows_examples(command: str | None) -> None:
    args = [command, "--help"] if command else ["--help"]
    res = run(*args)
    assert res.returncode == 0, res.stderr
    assert "examples:" in res.stdout
    assert "etcdkit " + (command or "") in res.stdout


def test_a_user_without_a_password_and_stdin_closed_is_a_usage_error() -> None:
    """No password to ask for from a closed stdin (``<&-``: ``sys.stdin`` is None): the same
    one-line usage error as from a stdin that is not a terminal (it was a traceback)."""
    command = [*CLI, "--endpoints", "127.0.0.1:1", "--user", "u", "wait", "/k"]
    res = subprocess.run(  # (through sh: no fork of this process, which grpc's handlers run in)
        ["sh", "-c", 'exec "$@" <&-', "sh", *command],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(),
        check=False,
    )
    assert res.returncode == 2, res.stderr
    assert "--user u needs a password" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ([], "missing COMMAND"),
        (["frobnicate"], "invalid choice"),
        (["wait"], "required: KEY"),
        (["wait", "/k", "--timeout", "-1"], "--timeout"),
        (["wait", "/k", "--timeout", "soon"], "--timeout"),
        (["register", "/k", "v", "--ttl", "0"], "--ttl"),
        (["register", "/k"], "required: VALUE"),
        (["dev", "--members", "2"], "--members"),
        (["dev", "--members", "3", "--data-dir", "/tmp/x"], "--data-dir"),
        (["watch", "/p/", "--transform", "yaml"], "--transform"),
        (["--endpoints", "foo:bar", "wait", "/k"], "foo:bar"),
        (["--endpoints", "ftp://h:1", "wait", "/k"], "scheme"),
        (["--timeout", "0", "wait", "/k"], "--timeout"),
        (["--password", "pw", "wait", "/k"], "--password needs --user"),
        (["--cert", "/nonexistent.pem", "wait", "/k"], "--key"),
        (["--cacert", "/nonexistent.pem", "wait", "/k"], "no such file"),
        (["--log-level", "loud", "wait", "/k"], "--log-level"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args: list[str], needle: str) -> None:
    res = run(*args)
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert needle in lines[0]
    assert "Traceback" not in res.stderr


def test_global_options_also_after_the_command(
    etcd_server: EtcdServer, etcd_sync: Client, etcd_prefix: str
) -> None:
    etcd_sync.put(etcd_prefix + "k", "v")
    res = run("wait", etcd_prefix + "k", "--endpoints", etcd_server.endpoint, "--timeout", "5")
    assert res.returncode == 0, res.stderr
    # given before the command, not overwritten by the command's own defaults
    res = run(
        "--endpoints",
        etcd_server.endpoint,
        "--log-level",
        "debug",
        "wait",
        etcd_prefix + "k",
        "--timeout",
        "5",
    )
    assert res.returncode == 0, res.stderr


# -- unreachable etcd, auth ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [["wait", "/k", "--timeout", "30"], ["watch", "/p/"], ["register", "/k", "v"]],
    ids=["wait", "watch", "register"],
)
def test_unreachable_endpoint_fails_with_a_hint(args: list[str]) -> None:
    res = run("--endpoints", "127.0.0.1:1", *args)
    assert res.returncode == 1, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "cannot reach etcd at http://127.0.0.1:1" in lines[0]
    assert "etcdkit dev" in lines[0]


def test_unreachable_endpoint_says_why() -> None:
    """The client's own reason (here a refused connection), not "no answer in time"; and
    --log-level debug shows etcdkit's lines, not other libraries' (asyncio, grpc)."""
    res = run("--endpoints", "127.0.0.1:1", "--timeout", "1", "--log-level", "debug", "wait", "/k")
    assert res.returncode == 1, (res.stdout, res.stderr)
    last = res.stderr.strip().splitlines()[-1]
    assert "refused" in last.lower(), res.stderr
    assert "no answer in time" not in last
    debug = [line for line in res.stderr.splitlines() if " DEBUG " in line]
    assert debug, res.stderr
    assert all(" DEBUG etcdkit" in line for line in debug), res.stderr


def test_default_endpoint_unreachable_says_so() -> None:
    # Through the environment, like a user's shell would (a closed port stands for "nothing").
    res = run("wait", "/k", env=cli_env(ETCDKIT_ENDPOINTS="127.0.0.1:1"))
    assert res.returncode == 1
    assert "etcdkit dev" in res.stderr


ROOT_PW = "root-pw"
APP_PW = "app-pw"


async def _enable_auth(endpoint: str) -> None:
    from aetcd import rpc

    async with AsyncClient(endpoint) as admin:
        auth = admin.raw.auth
        await auth.UserAdd(rpc.AuthUserAddRequest(name="root", password=ROOT_PW), timeout=5)
        await auth.RoleAdd(rpc.AuthRoleAddRequest(name="root"), timeout=5)
        await auth.UserGrantRole(rpc.AuthUserGrantRoleRequest(user="root", role="root"), timeout=5)
        # "app" may read and write /app/ only
        await auth.UserAdd(rpc.AuthUserAddRequest(name="app", password=APP_PW), timeout=5)
        await auth.RoleAdd(rpc.AuthRoleAddRequest(name="app"), timeout=5)
        perm = rpc.Permission(permType=rpc.Permission.READWRITE, key=b"/app/", range_end=b"/app0")
        await auth.RoleGrantPermission(
            rpc.AuthRoleGrantPermissionRequest(name="app", perm=perm), timeout=5
        )
        await auth.UserGrantRole(rpc.AuthUserGrantRoleRequest(user="app", role="app"), timeout=5)
        await auth.AuthEnable(rpc.AuthEnableRequest(), timeout=5)


def test_auth_failures_are_one_line(etcd_server_factory: Callable[..., EtcdServer]) -> None:
    server = etcd_server_factory()
    asyncio.run(_enable_auth(server.endpoint))
    ep = ["--endpoints", server.endpoint]
    wrong = run(*ep, "--user", "root:wrong", "wait", "/k", "--timeout", "0")
    assert wrong.returncode == 1
    assert len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr
    assert "password" in wrong.stderr
    anonymous = run(*ep, "wait", "/k", "--timeout", "0")
    assert anonymous.returncode == 1
    assert "--user" in anonymous.stderr
    # (one hint: the library's "(pass username and password)" was printed before ours)
    assert "pass username and password" not in anonymous.stderr
    right = run(
        *ep,
        "--user",
        "root",
        "wait",
        "/k",
        "--absent",
        "--timeout",
        "5",
        env=cli_env(ETCDKIT_PASSWORD=ROOT_PW),
    )
    assert right.returncode == 0, right.stderr
    # A user limited to /app/: reaching etcd works (the first contact needs no permission) ...
    app = [*ep, "--user", f"app:{APP_PW}"]
    assert run(*app, "wait", "/app/k", "--absent", "--timeout", "0").returncode == 0
    # ... and a registration outside its range fails at once, in one line.
    denied = run(*app, "register", "/other/k", "v")
    assert denied.returncode == 1, denied.stderr
    assert "permission denied" in denied.stderr.lower()
    assert "Traceback" not in denied.stderr
    assert len(denied.stderr.strip().splitlines()) == 1, denied.stderr


# -- wait -----------------------------------------------------------------------------------------


def test_wait_for_an_existing_key(
    etcd_server: EtcdServer, etcd_sync: Client, etcd_prefix: str
) -> None:
    etcd_sync.put(etcd_prefix + "ready", "1")
    res = run("--endpoints", etcd_server.endpoint, "wait", etcd_prefix + "ready", "--timeout", "10")
    assert res.returncode == 0, res.stderr
    assert res.stdout == ""


def test_wait_times_out_with_exit_3(etcd_server: EtcdServer, etcd_prefix: str) -> None:
    res = run(
        "--endpoints", etcd_server.endpoint, "wait", etcd_prefix + "never", "--timeout", "0.5"
    )
    assert res.returncode == 3, res.stderr
    assert "timed out" in res.stderr
    once = run("--endpoints", etcd_server.endpoint, "wait", etcd_prefix + "never", "--timeout", "0")
    assert once.returncode == 3, once.stderr


def test_wait_returns_when_the_key_appears(
    etcd_server: EtcdServer, etcd_sync: Client, etcd_prefix: str
) -> None:
    key = etcd_prefix + "later"
    with Cli("--endpoints", etcd_server.endpoint, "wait", key, "--timeout", "60") as cli:
        time.sleep(1.0)
        assert cli.proc.poll() is None, cli._why("exited before the key existed")
        etcd_sync.put(key, "here")
        assert cli.wait() == 0, cli._why("wrong exit status")


def test_wait_absent(etcd_server: EtcdServer, etcd_sync: Client, etcd_prefix: str) -> None:
    key = etcd_prefix + "lock"
    ep = ["--endpoints", etcd_server.endpoint]
    assert run(*ep, "wait", key, "--absent", "--timeout", "5").returncode == 0
    assert run(*ep, "wait", key, "--absent", "--timeout", "0").returncode == 0
    etcd_sync.put(key, "held")
    assert run(*ep, "wait", key, "--absent", "--timeout", "0.5").returncode == 3
    with Cli(*ep, "wait", key, "--absent", "--timeout", "60") as cli:
        time.sleep(1.0)
        assert cli.proc.poll() is None, cli._why("exited while the key existed")
        etcd_sync.delete(key)
        assert cli.wait() == 0, cli._why("wrong exit status")


# -- register -------------------------------------------------------------------------------------


def test_register_then_sigterm_removes_the_key(
    etcd_server: EtcdServer, etcd_sync: Client, etcd_prefix: str
) -> None:
    key = etcd_prefix + "node"
    with Cli("--endpoints", etcd_server.endpoint, "register", key, "10.0.0.5:8080") as cli:
        cli.expect(r"\bregistered: ")
        kv = etcd_sync.get(key)
        assert kv is not None
        assert kv.value == b"10.0.0.5:8080"
        assert kv.lease != 0
        # an outside delete: the registration comes back by itself
        etcd_sync.delete(key)
        cli.expect(r"\blost: ")
        cli.expect(r"\bre-registered: ")
        etcd_sync.wait_for(key, timeout=WAIT)
        cli.signal(signal.SIGTERM)
        assert cli.wait() == 0, cli._why("wrong exit status")
        assert etcd_sync.get(key) is None  # the lease was revoked before the process exited
        assert any("removed" in line for line in cli.stdout), cli._why("no closing line")
        assert "Traceback" not in "\n".join(cli.stderr)


def test_register_then_sigkill_key_expires_with_the_ttl(
    etcd_server: EtcdServer, etcd_sync: Client, etcd_prefix: str
) -> None:
    key = etcd_prefix + "node"
    with Cli("--endpoints", etcd_server.endpoint, "register", key, "v", "--ttl", "2") as cli:
        cli.expect(r"\bregistered: ")
        assert etcd_sync.get(key) is not None
        cli.signal(signal.SIGKILL)
        cli.wait()
        etcd_sync.wait_for(key, exists=False, timeout=WAIT)


def test_register_through_an_etcd_restart(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    server = etcd_server_factory()
    with Cli("--endpoints", server.endpoint, "register", "/svc/a", "v", "--ttl", "10") as cli:
        cli.expect(r"\bregistered: ")
        server.kill()
        cli.expect(r"\bsuspended: ")
        server.restart()
        cli.expect(r"\b(resumed|re-registered): ")
        cli.signal(signal.SIGINT)
        assert cli.wait() == 0, cli._why("wrong exit status")
    with Client(server.endpoint) as client:
        assert client.get("/svc/a") is None


# -- watch ----------------------------------------------------------------------------------------


class JsonLines:
    def __init__(self, cli: Cli) -> None:
        self.cli = cli

    def next(self) -> dict[str, Any]:
        doc = json.loads(self.cli.expect(r"^\{").string)
        assert isinstance(doc, dict)
        return doc


def test_watch_json_lines(etcd_server: EtcdServer, etcd_sync: Client, etcd_prefix: str) -> None:
    etcd_sync.put(etcd_prefix + "a", "1")
    with Cli("--endpoints", etcd_server.endpoint, "watch", etcd_prefix, "--json") as cli:
        lines = JsonLines(cli)
        first = lines.next()
        assert first["tree"] == {etcd_prefix + "a": "1"}
        assert first["keys"] == 1
        assert first["state"] in ("live", "stale")
        rev = first["revision"]

        etcd_sync.put(etcd_prefix + "b", "2")
        doc = lines.next()
        assert "tree" not in doc
        assert doc["revision"] > rev
        assert doc["keys"] == 2
        assert doc["changes"] == [
            {"kind": "added", "key": etcd_prefix + "b", "old": None, "new": "2"}
        ]

        etcd_sync.put(etcd_prefix + "a", "1b")
        doc = lines.next()
        assert doc["changes"] == [
            {"kind": "updated", "key": etcd_prefix + "a", "old": "1", "new": "1b"}
        ]

        etcd_sync.delete(etcd_prefix + "b")
        doc = lines.next()
        assert doc["keys"] == 1
        assert doc["changes"] == [
            {"kind": "removed", "key": etcd_prefix + "b", "old": "2", "new": None}
        ]

        cli.signal(signal.SIGINT)
        assert cli.wait() == 0, cli._why("wrong exit status")


def test_watch_transforms(etcd_server: EtcdServer, etcd_sync: Client, etcd_prefix: str) -> None:
    etcd_sync.put(etcd_prefix + "good", '{"port": 80}')
    etcd_sync.put(etcd_prefix + "bad", "not json")
    etcd_sync.put(etcd_prefix + "bin", b"\xff\x00")
    ep = ["--endpoints", etcd_server.endpoint]
    with Cli(*ep, "watch", etcd_prefix, "--json", "--transform", "json") as cli:
        first = JsonLines(cli).next()
        assert first["tree"] == {etcd_prefix + "good": {"port": 80}}
        cli.signal(signal.SIGTERM)
        assert cli.wait() == 0
        assert any("dropping invalid record" in line for line in cli.stderr), cli.stderr
    with Cli(*ep, "watch", etcd_prefix, "--json", "--transform", "raw") as cli:
        tree = JsonLines(cli).next()["tree"]
        assert base64.b64decode(tree[etcd_prefix + "bin"]) == b"\xff\x00"
        assert base64.b64decode(tree[etcd_prefix + "bad"]) == b"not json"
        cli.signal(signal.SIGTERM)
        assert cli.wait() == 0
    with Cli(*ep, "watch", etcd_prefix, "--json", "--transform", "text") as cli:
        tree = JsonLines(cli).next()["tree"]
        assert tree == {
            etcd_prefix + "good": '{"port": 80}',
            etcd_prefix + "bad": "not json",
            etcd_prefix + "bin": "\\xff\x00",  # (not UTF-8: escaped, kept)
        }
        cli.signal(signal.SIGTERM)
        assert cli.wait() == 0


def test_watch_text_keeps_a_key_whose_value_stops_being_utf8(
    etcd_server: EtcdServer, etcd_sync: Client, etcd_prefix: str
) -> None:
    """With the default text transform, a value that became bytes that are not UTF-8 was
    rejected by the transform: the key left the view, reported as removed, though it still
    existed. It is updated now, its value with a \\xNN escape (etcdctl prints it raw)."""
    key = etcd_prefix + "a"
    etcd_sync.put(key, "hello")
    with Cli("--endpoints", etcd_server.endpoint, "watch", etcd_prefix, "--json") as cli:
        lines = JsonLines(cli)
        assert lines.next()["tree"] == {key: "hello"}
        etcd_sync.put(key, b"\xffok")
        doc = lines.next()
        assert doc["changes"] == [{"kind": "updated", "key": key, "old": "hello", "new": "\\xffok"}]
        assert doc["keys"] == 1
        cli.signal(signal.SIGTERM)
        assert cli.wait() == 0
    assert not any("dropping invalid record" in line for line in cli.stderr), cli.stderr


def test_watch_live_view_in_a_terminal(
    etcd_server: EtcdServer, etcd_sync: Client, etcd_prefix: str
) -> None:
    pexpect = pytest.importorskip("pexpect")
    pytest.importorskip("rich")
    env = cli_env(TERM="xterm-256color", ETCDKIT_ENDPOINTS=etcd_server.endpoint)
    env.pop("NO_COLOR", None)
    from _terminal import Terminal  # (pexpect's spawn forks: see tests/_terminal.py)

    child = Terminal(
        [sys.executable, "-m", "etcdkit", "watch", etcd_prefix],
        env=env,
        dimensions=(40, 120),
        timeout=WAIT,
    )
    try:
        child.expect("LIVE")  # the header: the watch is up and confirmed
        child.expect("Ctrl-C to quit")
        etcd_sync.put(etcd_prefix + "alpha", "first-value")
        child.expect("alpha")
        child.expect("first-value")
        etcd_sync.put(etcd_prefix + "beta", "second-value")
        child.expect("second-value")
        child.sendintr()
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0, child.before
    finally:
        if child.isalive():
            child.terminate(force=True)


# -- dev and demo ---------------------------------------------------------------------------------


async def _put_get(endpoints: str) -> bytes | None:
    async with AsyncClient(endpoints, timeout=5) as client:
        await client.put("/etcdkit-test/cli-dev", "ok")
        kv = await client.get("/etcdkit-test/cli-dev")
        return kv.value if kv is not None else None


def test_dev_serves_until_sigint() -> None:
    with Cli("dev", "--port", "0") as cli:
        endpoints = cli.expect(r"^export ETCDKIT_ENDPOINTS=(\S+)$", timeout=60).group(1)
        assert asyncio.run(_put_get(endpoints)) == b"ok"
        cli.signal(signal.SIGINT)
        assert cli.wait() == 0, cli._why("wrong exit status")
        assert cli.stdout[-1] == "etcd stopped"
    res = run("--endpoints", endpoints, "--timeout", "2", "wait", "/k", "--timeout", "0")
    assert res.returncode == 1  # it is gone


def test_dev_stops_etcd_when_its_terminal_closes() -> None:
    """SIGHUP (the terminal closed) stops etcd as Ctrl-C does: it once killed `etcdkit dev`
    at once, and its etcd ran on, holding the port, with PID 1 for a parent."""
    with Cli("dev", "--port", "0") as cli:
        endpoints = cli.expect(r"^export ETCDKIT_ENDPOINTS=(\S+)$", timeout=60).group(1)
        children = psutil.Process(cli.proc.pid).children(recursive=True)
        assert children
        cli.signal(signal.SIGHUP)
        assert cli.wait() == 0, cli._why("wrong exit status")
    _, alive = psutil.wait_procs(children, timeout=WAIT)
    assert alive == []
    res = run("--endpoints", endpoints, "--timeout", "2", "wait", "/k", "--timeout", "0")
    assert res.returncode == 1  # it is gone


def test_dev_stops_etcd_when_its_reader_is_gone() -> None:
    """`etcdkit dev | grep ...` then Ctrl-C: the pipe is gone when dev says it stops etcd;
    etcd is stopped all the same (it was left running)."""
    proc = subprocess.Popen(
        [*CLI, "dev", "--port", "0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=cli_env(),
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        for line in proc.stdout:  # (until etcd is up)
            if line.startswith("export ETCDKIT_ENDPOINTS="):
                break
            assert time.monotonic() < deadline, "etcdkit dev did not start"
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children
        proc.stdout.close()  # the reader is gone
        proc.send_signal(signal.SIGINT)
        proc.wait(WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT)
    _, alive = psutil.wait_procs(children, timeout=WAIT)
    for left in alive:  # (a failure leaves none behind either)
        left.kill()
    assert alive == [], f"etcd left running: {alive}"


def test_dev_keeps_data_in_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "etcd-data"
    for run_no in range(2):
        with Cli("dev", "--port", "0", "--data-dir", str(data)) as cli:
            log = Path(cli.expect(r"\(log: (\S+)\)$", timeout=60).group(1))
            # EtcdServer leaves its log's temporary directory behind when given a data_dir
            request_cleanup = functools.partial(shutil.rmtree, log.parent, ignore_errors=True)
            endpoints = cli.expect(r"^export ETCDKIT_ENDPOINTS=(\S+)$", timeout=60).group(1)
            if run_no == 0:
                assert asyncio.run(_put_get(endpoints)) == b"ok"
            else:
                assert (
                    run(
                        "--endpoints", endpoints, "wait", "/etcdkit-test/cli-dev", "--timeout", "0"
                    ).returncode
                    == 0
                )
            cli.signal(signal.SIGTERM)
            try:
                assert cli.wait() == 0, cli._why("wrong exit status")
            finally:
                request_cleanup()
    assert (data / "member").is_dir()


@pytest.mark.cluster
@pytest.mark.slow
def test_dev_three_members() -> None:
    with Cli("dev", "--members", "3") as cli:
        endpoints = cli.expect(r"^export ETCDKIT_ENDPOINTS=(\S+)$", timeout=90).group(1)
        assert len(endpoints.split(",")) == 3
        assert asyncio.run(_put_get(endpoints)) == b"ok"
        cli.signal(signal.SIGTERM)
        assert cli.wait(60) == 0, cli._why("wrong exit status")


def test_demo_with_its_own_etcd() -> None:
    t0 = time.monotonic()
    with Cli("demo") as cli:
        code = cli.wait(timeout=60)
        out = "\n".join(cli.stdout)
        assert code == 0, cli._why("wrong exit status")
    assert time.monotonic() - t0 < 30, out
    for what in ("registration", "an outside delete", "a lease revoke", "an etcd restart"):
        assert re.search(rf"recovered from {what} in \d+ ms", out), out
    assert "Traceback" not in "\n".join(cli.stderr)


def test_demo_against_a_given_etcd(etcd_server: EtcdServer, etcd_sync: Client) -> None:
    with Cli("--endpoints", etcd_server.endpoint, "demo", "--workers", "2") as cli:
        assert cli.wait(timeout=60) == 0, cli._why("wrong exit status")
    out = "\n".join(cli.stdout)
    assert "skipping the etcd restart" in out
    assert re.search(r"recovered from a lease revoke in \d+ ms", out), out
    assert etcd_sync.get_prefix("/demo/workers/").kvs == []


def test_watch_json_keys_are_unambiguous(
    etcd_server: EtcdServer, etcd_sync: Client, etcd_prefix: str
) -> None:
    # Issue 17: a non-UTF-8 key byte and a literal backslash must not print the same.
    etcd_sync.put(etcd_prefix.encode() + b"\xff", "bin")
    etcd_sync.put(etcd_prefix + "\\xff", "text")
    ep = ["--endpoints", etcd_server.endpoint]
    with Cli(*ep, "watch", etcd_prefix, "--json", "--transform", "raw") as cli:
        tree = JsonLines(cli).next()["tree"]
        cli.signal(signal.SIGTERM)
        assert cli.wait() == 0
    raw = {k.encode("utf-8", "surrogateescape"): base64.b64decode(v) for k, v in tree.items()}
    assert raw == {
        etcd_prefix.encode() + b"\xff": b"bin",
        etcd_prefix.encode() + b"\\xff": b"text",
    }


def test_watch_json_escapes_keys_for_every_transform(
    etcd_server: EtcdServer, etcd_sync: Client, etcd_prefix: str
) -> None:
    """A key that is not UTF-8 is escaped (surrogateescape) with the text and json
    transforms too, never dropped."""
    etcd_sync.put(etcd_prefix.encode() + b"\xff", '"v"')
    ep = ["--endpoints", etcd_server.endpoint]
    for transform, value in (("text", '"v"'), ("json", "v")):
        with Cli(*ep, "watch", etcd_prefix, "--json", "--transform", transform) as cli:
            tree = JsonLines(cli).next()["tree"]
            cli.signal(signal.SIGTERM)
            assert cli.wait() == 0
        assert tree == {etcd_prefix + "\udcff": value}, transform


def test_wait_once_says_what_holds(
    etcd_server: EtcdServer, etcd_sync: Client, etcd_prefix: str
) -> None:
    key = etcd_prefix + "present"
    etcd_sync.put(key, "v")
    ep = ["--endpoints", etcd_server.endpoint]
    absent = run(*ep, "wait", key, "--absent", "--timeout", "0")
    assert absent.returncode == 3
    assert f"{key} still exists" in absent.stderr
    missing = run(*ep, "wait", etcd_prefix + "nope", "--timeout", "0")
    assert missing.returncode == 3
    assert "does not exist" in missing.stderr


def test_keys_and_values_that_are_not_utf8_are_taken_as_given(
    etcd_server: EtcdServer, etcd_sync: Client, etcd_prefix: str
) -> None:
    """Arguments are bytes to etcd, as etcdctl takes them (Python hands them over decoded
    with surrogateescape). They failed with exit 2 and a codec message; a key printed by
    ``watch --json`` could not be waited for."""
    key = etcd_prefix.encode() + b"nu/\xff"
    etcd_sync.put(key, "v")
    wait = run("--endpoints", etcd_server.endpoint, "wait", key, "--timeout", "0")
    assert wait.returncode == 0, wait.stderr
    reg = etcd_prefix.encode() + b"nu/reg\xfe"
    with Cli("--endpoints", etcd_server.endpoint, "register", reg, b"v\xfe") as cli:  # type: ignore[arg-type]
        cli.expect("registered")
        kv = etcd_sync.get(reg)
        assert kv is not None
        assert kv.value == b"v\xfe"
        cli.signal(signal.SIGTERM)
        assert cli.wait() == 0, cli._why("wrong exit status")
    assert etcd_sync.get(reg) is None


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_output_that_cannot_be_written_is_one_line_and_exit_1(
    etcd_server: EtcdServer, etcd_sync: Client, etcd_prefix: str
) -> None:
    """``watch --json > /dev/full`` (a full disk): ENOSPC once ended in a traceback."""
    etcd_sync.put(etcd_prefix + "k", "v")
    with open("/dev/full", "w") as full:
        r = run("--endpoints", etcd_server.endpoint, "watch", "--json", etcd_prefix, stdout=full)
    assert r.returncode == 1, r.stderr
    assert "No space left on device" in r.stderr
    assert "Traceback" not in r.stderr


# -- output whose reader is gone ------------------------------------------------------------------


def test_register_stays_registered_when_its_reader_leaves(
    etcd_server: EtcdServer, etcd_sync: Client, etcd_prefix: str
) -> None:
    """`etcdkit register ... | head -2`: the next status line (here: the key deleted from
    outside) found no reader, the lease was revoked and the command exited 0, so that nobody
    restarted it. Status lines are best effort now: the key is put back, until SIGTERM."""
    key = etcd_prefix + "svc"
    r, w = os.pipe()
    proc = subprocess.Popen(
        [*CLI, "--endpoints", etcd_server.endpoint, "register", key, "v", "--ttl", "5"],
        stdout=w, stderr=subprocess.PIPE, text=True, env=cli_env(), stdin=subprocess.DEVNULL,
    )  # fmt: skip
    os.close(w)
    try:
        with os.fdopen(r, "r") as status:
            for line in status:
                if "registered: " in line:
                    break
        # the reader is gone now
        etcd_sync.delete(key)
        wait_until(lambda: etcd_sync.get(key) is not None, "the key put back")
        time.sleep(0.5)
        assert proc.poll() is None, "register exited"
        assert etcd_sync.get(key) is not None
        proc.send_signal(signal.SIGTERM)
        _, errs = proc.communicate(timeout=WAIT)
        assert proc.returncode == 0, errs
        assert "Traceback" not in errs
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT)
    assert etcd_sync.get(key) is None


DATA_COMMANDS = [["watch", "--json"], ["members", "--json"], ["endpoints", "--json"]]


@pytest.mark.parametrize("command", DATA_COMMANDS, ids=lambda c: c[0])
def test_data_output_whose_reader_is_gone_ends_quietly(
    etcd_server: EtcdServer, etcd_prefix: str, command: list[str]
) -> None:
    """The JSON lines are the command's output: with no reader left it stops, exit 0."""
    r, w = os.pipe()
    os.close(r)
    try:
        res = subprocess.run(
            [*CLI, "--endpoints", etcd_server.endpoint, command[0], etcd_prefix + "x",
             *command[1:]],
            stdout=w, stderr=subprocess.PIPE, text=True, timeout=60, env=cli_env(),
            stdin=subprocess.DEVNULL, check=False,
        )  # fmt: skip
    finally:
        os.close(w)
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""


@pytest.mark.parametrize("command", DATA_COMMANDS, ids=lambda c: c[0])
def test_data_output_to_a_closed_stdout_is_one_line_and_exit_1(
    etcd_server: EtcdServer, etcd_prefix: str, command: list[str]
) -> None:
    """``watch --json >&-``: no stdout at all (``sys.stdout`` is None) ended in a traceback."""
    res = subprocess.run(
        ["sh", "-c", 'exec "$@" >&-', "sh", *CLI, "--endpoints", etcd_server.endpoint,
         command[0], etcd_prefix + "x", *command[1:]],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=60, env=cli_env(),
        stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert res.returncode == 1, res.stderr
    assert "stdout is closed" in res.stderr
    assert "Traceback" not in res.stderr
    assert len(res.stderr.splitlines()) == 1, res.stderr


def test_watch_json_line_is_written_whole_when_a_signal_cuts_its_write(
    etcd_server: EtcdServer, etcd_sync: Client, etcd_prefix: str
) -> None:
    """Unbuffered (``PYTHONUNBUFFERED=1``), a JSON line longer than the pipe holds was cut
    where a SIGINT interrupted its write (the text layer drops what a short write left): the
    reader got a line without its end. Each line is written whole now."""
    for i in range(8):
        etcd_sync.put(f"{etcd_prefix}k{i}", "v" * 40_000)  # (one line of ~320 kB)
    r, w = os.pipe()
    proc = subprocess.Popen(
        [*CLI, "--endpoints", etcd_server.endpoint, "watch", etcd_prefix, "--json"],
        stdout=w, stderr=subprocess.PIPE, env=cli_env(PYTHONUNBUFFERED="1"),
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    os.close(w)

    def queued() -> int:
        buf = fcntl.ioctl(r, termios.FIONREAD, b"\0\0\0\0")
        return int.from_bytes(buf, sys.byteorder)

    try:
        # the pipe is full: the writer waits in its write
        wait_until(lambda: queued() >= 65536, "a full pipe")
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        with os.fdopen(r, "rb") as reader:
            data = reader.read()
        assert proc.wait(WAIT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT)
        assert proc.stderr is not None
        proc.stderr.close()
    assert data.endswith(b"\n"), f"cut at {len(data)} bytes: ...{data[-60:]!r}"
    doc = json.loads(data.splitlines()[0])
    assert len(doc["tree"]) == 8


@pytest.mark.parametrize("command", DATA_COMMANDS, ids=lambda c: c[0])
def test_json_lines_say_when_the_state_changes(
    etcd_server_factory: Callable[..., EtcdServer], command: list[str]
) -> None:
    """A JSON line was written per snapshot only: with etcd unreachable, a reader was left
    with "live" for data nobody confirmed any more. A change of state is a line too (no
    changes), as the terminal view re-renders its state line."""
    server = etcd_server_factory()
    with Cli("--endpoints", server.endpoint, command[0], "/st/x", *command[1:]) as cli:
        lines = JsonLines(cli)
        first = lines.next()
        while first["state"] != "live":
            first = lines.next()
        server.pause()
        try:
            stale = lines.next()
        finally:
            server.resume()
        assert stale["state"] == "stale", stale
        assert stale["revision"] >= first["revision"]
        empty = ["changes"] if command[0] == "watch" else ["added", "updated", "removed"]
        assert all(stale[k] == [] for k in empty), stale
        live = lines.next()
        assert live["state"] == "live", live
        cli.signal(signal.SIGTERM)
        assert cli.wait() == 0, cli._why("wrong exit status")
