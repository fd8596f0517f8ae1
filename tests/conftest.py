"""Test-suite settings; the fixtures come from etcdkit.pytest_plugin (pytest11 entry point)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest

import etcdkit.compat.etcd3 as etcd3
from _helpers import compat
from etcdkit.testing import EtcdServer

# asyncio debug mode for every loop the tests create (slow callbacks, never-awaited coroutines).
os.environ.setdefault("PYTHONASYNCIODEBUG", "1")


@pytest.fixture
def no_leaked_threads() -> Iterator[None]:
    """Fails the test if an etcdkit thread outlives it."""
    before = {t.ident for t in threading.enumerate()}
    yield
    leaked = [
        t.name
        for t in threading.enumerate()
        if t.ident not in before and t.name.startswith("etcdkit") and t.is_alive()
    ]
    assert not leaked, f"threads left running: {leaked}"


@pytest.fixture
def e3(etcd_server: EtcdServer, etcd_prefix: str) -> Iterator[etcd3.Etcd3Client]:
    """A python-etcd3 compat client of the session's etcd (``etcd_prefix`` cleans up)."""
    with compat(etcd_server) as client:
        yield client


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The figures the fault checkers and timing tests record (``record_property("report",
    ...)``) for the tests that passed: the CI log keeps them (a failing test's own message has
    its report), and they come back from pytest-xdist's workers, which drop what tests print."""
    lines = [
        f"{rep.nodeid}: {value}"
        for rep in terminalreporter.stats.get("passed", [])
        if rep.when == "call"
        for name, value in rep.user_properties
        if name == "report"
    ]
    if lines:
        terminalreporter.section("reports")
        for line in lines:
            terminalreporter.write_line(line)
