"""``etcdkit endpoints TARGET``, run as a subprocess against real etcd (JSON lines, --add, and
the live table)."""

from __future__ import annotations

import json
import signal
import sys
from typing import Any

import pytest

from etcdkit import Client
from etcdkit.server import EtcdServer
from test_cli import WAIT, Cli, cli_env, run


def next_doc(cli: Cli) -> dict[str, Any]:
    doc = json.loads(cli.expect(r"^\{").string)
    assert isinstance(doc, dict)
    return doc


def test_help_shows_examples() -> None:
    res = run("endpoints", "--help")
    assert res.returncode == 0, res.stderr
    assert "examples:" in res.stdout
    assert "etcdkit endpoints svc/api" in res.stdout
    assert "endpoints" in run("--help").stdout


def test_missing_or_bad_target_is_a_usage_error(etcd_server: EtcdServer) -> None:
    res = run("endpoints")
    assert res.returncode == 2
    assert "TARGET" in res.stderr
    res = run("--endpoints", etcd_server.endpoint, "endpoints", "svc/")
    assert res.returncode == 2
    assert "trailing" in res.stderr
    # (--metadata without --add was taken, and ignored)
    res = run("--endpoints", etcd_server.endpoint, "endpoints", "svc/api", "--metadata", "m")
    assert res.returncode == 2
    assert "--add" in res.stderr


def test_endpoints_json_lines(etcd_server: EtcdServer, etcd_sync: Client, etcd_prefix: str) -> None:
    target = etcd_prefix + "svc"
    eps = etcd_sync.endpoint_manager(target)
    eps.add(f"{target}/a", "10.0.0.1:80", "zone-a")
    with Cli("--endpoints", etcd_server.endpoint, "endpoints", target, "--json") as cli:
        first = next_doc(cli)
        assert first["endpoints"] == {f"{target}/a": {"Addr": "10.0.0.1:80", "Metadata": "zone-a"}}
        assert first["state"] in ("live", "stale")
        eps.add(f"{target}/b", "10.0.0.2:80")
        doc = next_doc(cli)
        assert doc["added"] == [f"{target}/b"]
        assert doc["revision"] > first["revision"]
        eps.delete(f"{target}/a")
        doc = next_doc(cli)
        assert doc["removed"] == [f"{target}/a"]
        assert list(doc["endpoints"]) == [f"{target}/b"]
        cli.signal(signal.SIGINT)
        assert cli.wait() == 0, cli._why("wrong exit status")


def test_add_registers_until_ctrl_c(
    etcd_server: EtcdServer, etcd_sync: Client, etcd_prefix: str
) -> None:
    target = etcd_prefix + "reg"
    eps = etcd_sync.endpoint_manager(target)
    args = ("--add", "10.0.0.9:9000", "--metadata", '{"w": 1}', "--ttl", "5", "--json")
    with Cli("--endpoints", etcd_server.endpoint, "endpoints", target, *args) as cli:
        while True:
            doc = next_doc(cli)
            if doc["endpoints"]:
                break
        key = f"{target}/10.0.0.9:9000"
        assert doc["endpoints"] == {key: {"Addr": "10.0.0.9:9000", "Metadata": {"w": 1}}}
        etcd_sync.delete(key)  # comes back by itself
        while key not in next_doc(cli)["endpoints"]:
            pass
        cli.signal(signal.SIGINT)
        assert cli.wait() == 0, cli._why("wrong exit status")
    assert eps.list() == {}


def test_endpoints_live_view_in_a_terminal(
    etcd_server: EtcdServer, etcd_sync: Client, etcd_prefix: str
) -> None:
    pexpect = pytest.importorskip("pexpect")
    pytest.importorskip("rich")
    target = etcd_prefix + "live"
    env = cli_env(TERM="xterm-256color", ETCDKIT_ENDPOINTS=etcd_server.endpoint)
    env.pop("NO_COLOR", None)
    from _terminal import Terminal  # (pexpect's spawn forks: see tests/_terminal.py)

    child = Terminal(
        [sys.executable, "-m", "etcdkit", "endpoints", target],
        env=env,
        dimensions=(40, 140),
        timeout=WAIT,
    )
    try:
        try:
            child.expect("LIVE")
        except (pexpect.TIMEOUT, pexpect.EOF) as exc:
            raise AssertionError(f"no live view: {child.before!r}") from exc
        child.expect("Ctrl-C to quit")
        etcd_sync.endpoint_manager(target).add(f"{target}/x", "10.9.8.7:8080", "meta-x")
        child.expect("10.9.8.7:8080")
        child.expect("meta-x")
        child.sendintr()
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0, child.before
    finally:
        if child.isalive():
            child.terminate(force=True)
