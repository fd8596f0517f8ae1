"""Logging: one ``etcdkit.*`` logger tree, and rate-limited warnings (pure, then a real flapping
connection that must not flood the log)."""

from __future__ import annotations

import ast
import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

import etcdkit._wire.conn
from etcdkit import AsyncClient
from etcdkit._logs import MAX_KEYS, RateLimitedLog
from etcdkit.testing import EtcdServer, Proxy

SRC = Path(__file__).resolve().parent.parent / "src" / "etcdkit"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def limited(
    caplog: pytest.LogCaptureFixture, interval: float = 10.0
) -> tuple[RateLimitedLog, Clock]:
    caplog.set_level(logging.INFO, logger="etcdkit.test")
    clock = Clock()
    return RateLimitedLog(logging.getLogger("etcdkit.test"), interval, clock=clock), clock


def test_same_key_once_per_interval_then_the_count(caplog: pytest.LogCaptureFixture) -> None:
    log, clock = limited(caplog)
    assert log.warning("ep", "endpoint %s failed", "a")
    for _ in range(5):
        clock.now += 1.0
        assert not log.warning("ep", "endpoint %s failed", "a")
    assert log.suppressed("ep") == 5
    clock.now += 5.0  # 10 s after the first line
    assert log.warning("ep", "endpoint %s failed", "a")
    assert [r.getMessage() for r in caplog.records] == [
        "endpoint a failed",
        "endpoint a failed (5 more suppressed)",
    ]
    assert all(r.levelno == logging.WARNING and r.name == "etcdkit.test" for r in caplog.records)
    assert log.suppressed("ep") == 0


def test_keys_are_independent(caplog: pytest.LogCaptureFixture) -> None:
    log, _clock = limited(caplog)
    assert log.warning(("failover", "a"), "a failed")
    assert log.warning(("failover", "b"), "b failed")
    assert not log.warning(("failover", "a"), "a failed")
    assert [r.getMessage() for r in caplog.records] == ["a failed", "b failed"]


def test_a_disabled_level_counts_nothing(caplog: pytest.LogCaptureFixture) -> None:
    log, _clock = limited(caplog)
    caplog.set_level(logging.ERROR, logger="etcdkit.test")
    assert not log.warning("k", "quiet")
    assert log.suppressed("k") == 0
    assert caplog.records == []


def test_memory_is_bounded(caplog: pytest.LogCaptureFixture) -> None:
    log, clock = limited(caplog, interval=1.0)
    caplog.set_level(logging.ERROR, logger="etcdkit.test")
    log.logger.setLevel(logging.WARNING)
    try:
        for i in range(3 * MAX_KEYS):
            clock.now += 0.01
            log.warning(i, "lease %d", i)
        assert len(log._last) <= MAX_KEYS
    finally:
        log.logger.setLevel(logging.NOTSET)


def test_bad_interval() -> None:
    with pytest.raises(ValueError, match="interval"):
        RateLimitedLog(logging.getLogger("etcdkit.test"), -1.0)


def test_every_logger_is_under_etcdkit() -> None:
    names = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "getLogger"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                names.append((path.name, node.args[0].value))
    assert names
    assert [n for n in names if not str(n[1]).startswith("etcdkit")] == []


async def test_a_flapping_connection_logs_one_failover_line_per_endpoint(
    etcd_server_factory: Callable[..., EtcdServer],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = etcd_server_factory()
    caplog.set_level(logging.INFO, logger="etcdkit")
    fresh = RateLimitedLog(logging.getLogger("etcdkit.client"), 30.0)
    monkeypatch.setattr(etcdkit._wire.conn, "limited", fresh)
    with Proxy(server.endpoint) as p1, Proxy(server.endpoint) as p2:
        async with AsyncClient([p1.endpoint, p2.endpoint]) as client:
            async with client.watch_prefix("/flap/") as watch:
                await watch.synced(timeout=20)
                async with asyncio.timeout(30):
                    while client.stats.failovers < 8:  # reset both paths, again and again
                        p1.drop_connections()
                        p2.drop_connections()
                        await asyncio.sleep(0.1)
                lines = [
                    r.getMessage()
                    for r in caplog.records
                    if r.name == "etcdkit.client" and r.levelno >= logging.WARNING
                ]
                assert 1 <= len(lines) <= 2, lines  # one per endpoint, not one per failover
                assert all("127.0.0.1" in line for line in lines)  # says which endpoint

                # Once the interval has passed, the next line says how many were left out.
                fresh.interval = 0.0
                failovers = client.stats.failovers
                async with asyncio.timeout(30):
                    while client.stats.failovers == failovers:
                        p1.drop_connections()
                        p2.drop_connections()
                        await asyncio.sleep(0.1)
                last = [
                    r.getMessage()
                    for r in caplog.records
                    if r.name == "etcdkit.client" and r.levelno >= logging.WARNING
                ]
                assert any("more suppressed)" in line for line in last[len(lines) :]), last
                await watch.synced(timeout=20)  # and the watch is still fine
