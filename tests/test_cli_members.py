"""``etcdkit members ROOT``, run as a subprocess against real etcd (JSON lines and live table)."""

from __future__ import annotations

import json
import signal
import sys
from typing import Any

import pytest

from cluster_conformance import BOUND
from etcdkit import Client
from etcdkit.cluster import NodeDescriptor
from etcdkit.server import EtcdServer
from test_cli import WAIT, Cli, cli_env, run


def next_doc(cli: Cli) -> dict[str, Any]:
    doc = json.loads(cli.expect(r"^\{").string)
    assert isinstance(doc, dict)
    return doc


def test_help_shows_examples() -> None:
    res = run("members", "--help")
    assert res.returncode == 0, res.stderr
    assert "examples:" in res.stdout
    assert "etcdkit members /services/api" in res.stdout
    res = run("--help")
    assert "members" in res.stdout


def test_missing_root_is_a_usage_error() -> None:
    res = run("members")
    assert res.returncode == 2
    assert "ROOT" in res.stderr


def test_unreachable_endpoint_fails_with_a_hint() -> None:
    res = run("--endpoints", "127.0.0.1:1", "members", "/svc")
    assert res.returncode == 1, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "cannot reach etcd" in lines[0]


def test_members_json_lines(etcd_server: EtcdServer, etcd_sync: Client, etcd_prefix: str) -> None:
    root = etcd_prefix + "svc"
    with etcd_sync.cluster(root, ttl=5) as cluster:
        early = cluster.membership("early", id="e")
        early.register(timeout=BOUND)
        with Cli("--endpoints", etcd_server.endpoint, "members", root, "--json") as cli:
            first = next_doc(cli)
            assert first["members"] == [{"id": "e", "data": "early"}]
            assert first["added"] == ["e"]
            assert first["state"] in ("live", "stale")
            rev = first["revision"]

            m = cluster.membership(id="n1")
            m.set_data(NodeDescriptor("n1", "10.0.0.1:80", 100).encode())
            m.register(timeout=BOUND)
            doc = next_doc(cli)
            assert doc["revision"] > rev
            assert [x["id"] for x in doc["members"]] == ["e", "n1"]
            assert doc["added"] == ["n1"]
            assert doc["updated"] == doc["removed"] == []

            early.set_data("later")
            early.synced(timeout=BOUND)
            doc = next_doc(cli)
            assert doc["updated"] == ["e"]

            early.deregister(timeout=BOUND)
            doc = next_doc(cli)
            assert doc["removed"] == ["e"]
            assert [x["id"] for x in doc["members"]] == ["n1"]

            # another writer's record in Go's format shows; an invalid one does not
            etcd_sync.put(f"{root}/go", '{"id":"go","data":"x"}')
            etcd_sync.put(f"{root}/bad", "not json")
            doc = next_doc(cli)
            assert doc["added"] == ["go"]
            cli.signal(signal.SIGINT)
            assert cli.wait() == 0, cli._why("wrong exit status")


def test_members_live_view_in_a_terminal(
    etcd_server: EtcdServer, etcd_sync: Client, etcd_prefix: str
) -> None:
    pexpect = pytest.importorskip("pexpect")
    pytest.importorskip("rich")
    root = etcd_prefix + "svc"
    env = cli_env(TERM="xterm-256color", ETCDKIT_ENDPOINTS=etcd_server.endpoint)
    env.pop("NO_COLOR", None)
    from _terminal import Terminal  # (pexpect's spawn forks: see tests/_terminal.py)

    child = Terminal(
        [sys.executable, "-m", "etcdkit", "members", root],
        env=env,
        dimensions=(40, 120),
        timeout=WAIT,
    )
    try:
        try:
            child.expect("LIVE")
        except (pexpect.TIMEOUT, pexpect.EOF) as exc:
            raise AssertionError(f"no live view: {child.before!r}") from exc
        child.expect("Ctrl-C to quit")
        with etcd_sync.cluster(root, ttl=5) as cluster:
            m = cluster.membership(NodeDescriptor("node-a", "10.9.8.7:8080", 100).encode())
            m.register(timeout=BOUND)
            child.expect("10.9.8.7:8080")
            child.expect("100.0%")  # the only node owns every key
            other = cluster.membership("plain data", id="zz")
            other.register(timeout=BOUND)
            child.expect("plain data")
        child.sendintr()
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0, child.before
    finally:
        if child.isalive():
            child.terminate(force=True)
