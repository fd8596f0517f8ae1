"""examples/cluster_routing.py, run as the README says: 3 server processes and a client that
routes by user id, against a real etcd; one server killed, one stopped gracefully."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from etcdkit.server import EtcdServer

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "cluster_routing.py"
TTL = 2
WAIT = 20.0


class Proc:
    """A process of the example whose stdout lines can be waited for."""

    def __init__(self, *args: str, endpoint: str) -> None:
        env = dict(os.environ, ETCDKIT_ENDPOINTS=endpoint)
        env.pop("PYTHONASYNCIODEBUG", None)
        self.proc = subprocess.Popen(
            [sys.executable, str(EXAMPLE), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        self._threads = [
            threading.Thread(target=self._pump_out, daemon=True),
            threading.Thread(target=self._pump_err, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _pump_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        self.stderr.extend(line.rstrip("\n") for line in self.proc.stderr)

    def line(self, deadline: float) -> str:
        try:
            got = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"no output in time; stderr: {self.stderr[-20:]}") from None
        if got is None:
            raise AssertionError(f"exited ({self.proc.poll()}); stderr: {self.stderr[-20:]}")
        return got

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(WAIT)
        for t in self._threads:
            t.join(WAIT)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    made: list[Proc] = []
    try:
        yield made
    finally:
        for p in made:
            p.close()


def until(client: Proc, what: str, cond: Any, within: float) -> dict[str, Any]:
    """The first round line of *client* for which ``cond(line)`` holds, within *within* s;
    every round on the way must have answered every user (no errors)."""
    deadline = time.monotonic() + within
    while True:
        line: dict[str, Any] = json.loads(client.line(deadline))
        errors = {u: a for u, a in line["answered"].items() if not isinstance(a, str)}
        assert not errors, f"calls failed in round {line['round']}: {errors}"
        if cond(line):
            return line
        assert time.monotonic() < deadline, f"not {what} within {within} s: {line}"


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_example_moves_users_when_servers_die_or_leave(
    etcd_server: EtcdServer, etcd_prefix: str, procs: list[Proc]
) -> None:
    root = etcd_prefix + "users"
    common = ["--root", root]
    servers = {}
    for name in "abc":
        p = Proc(
            *common, "server", "--name", name, "--ttl", str(TTL), endpoint=etcd_server.endpoint
        )
        procs.append(p)
        servers[name] = p
    for name, p in servers.items():
        assert p.line(time.monotonic() + WAIT).startswith(f"ready {name} 127.0.0.1:")
    client = Proc(
        *common, "client", "--users", "30", "--interval", "0.1", endpoint=etcd_server.endpoint
    )
    procs.append(client)

    def routed(line: dict[str, Any]) -> bool:
        return bool(line["answered"] == line["owners"])

    first = until(client, "all three", lambda x: x["nodes"] == ["a", "b", "c"], WAIT)
    line = until(client, "routed to owners", routed, 5.0)
    assert set(line["answered"].values()) == {"a", "b", "c"}, first
    users_of_a = {u for u, s in line["answered"].items() if s == "a"}

    # SIGKILL: a's users are answered elsewhere at once (retried on the next ring node) and
    # a leaves the view once its lease expires.
    servers["a"].proc.kill()
    killed_at = time.monotonic()
    until(client, "a answered by others", lambda x: "a" not in x["answered"].values(), 5.0)
    until(client, "a gone from the view", lambda x: x["nodes"] == ["b", "c"], TTL + 5.0)
    assert time.monotonic() - killed_at < TTL + 3.0
    line = until(client, "routed to owners", routed, 5.0)
    assert {line["answered"][u] for u in users_of_a} <= {"b", "c"}

    # SIGTERM: b deregisters before it stops serving: it leaves the view at once.
    servers["b"].proc.send_signal(signal.SIGTERM)
    stopped_at = time.monotonic()
    until(client, "b gone from the view", lambda x: x["nodes"] == ["c"], 5.0)
    assert time.monotonic() - stopped_at < 1.5
    line = until(client, "routed to owners", routed, 5.0)
    assert set(line["answered"].values()) == {"c"}
    assert servers["b"].line(time.monotonic() + WAIT) == "left b"
    assert servers["b"].proc.wait(WAIT) == 0
