"""pytest fixtures backed by real etcd processes: the plugin :mod:`etcdkit.pytest_plugin` (the
``pytest11`` entry point) loads this module.

Fixtures:

- ``etcd_server`` (session): one real etcd on free loopback ports, shared by the session.
  Do not kill it; use ``etcd_server_factory`` for fault tests.
- ``etcd_cluster`` (session): a real 3-member cluster on loopback.
- ``etcd_server_factory`` (function): ``factory(**kwargs) -> EtcdServer``, started; every
  server it made is closed after the test.
- ``etcd_grpc_proxy`` (function): etcd's own gRPC proxy (:class:`GrpcProxy`) in front of
  ``etcd_server``, started for the test and killed after it (so a test may kill or restart it).
- ``etcd_prefix`` (function): a unique key prefix for the test (``/etcdkit-test/<name>-<hex>/``);
  everything under it is deleted after the test. Tests are isolated by writing under it: the
  clients below can reach every key, and what a test writes elsewhere stays.
- ``etcd`` (function, async, needs pytest-asyncio): a connected :class:`AsyncClient` on
  ``etcd_server``.
- ``etcd_sync`` (function): a connected :class:`Client` on ``etcd_server``.

When a test fails, the logs of the etcd processes it used are attached to its report. When the
test run is killed by SIGTERM or SIGHUP (and nothing else handles those), the etcd processes it
started are killed and their directories removed before it exits.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from etcdkit import AsyncClient, Client
from etcdkit.testing.grpc_proxy import GrpcProxy
from etcdkit.testing.process import end_all, stat_fields
from etcdkit.testing.server import EtcdCluster, EtcdServer

_SERVERS_KEY = pytest.StashKey[list[Any]]()
_ENDING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _track(request: pytest.FixtureRequest, server: Any) -> None:
    node = request.node
    if _SERVERS_KEY not in node.stash:
        node.stash[_SERVERS_KEY] = []
    node.stash[_SERVERS_KEY].append(server)


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdServer]:
    """One real etcd on free loopback ports, shared by the session (do not kill it; fault
    tests use ``etcd_server_factory``)."""
    with EtcdServer() as server:
        yield server


@pytest.fixture(scope="session")
def etcd_cluster() -> Iterator[EtcdCluster]:
    """A real 3-member etcd cluster on loopback, shared by the session."""
    with EtcdCluster(size=3) as cluster:
        yield cluster


@pytest.fixture
def etcd_server_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., EtcdServer]]:
    """``factory(**kwargs) -> EtcdServer`` (:class:`EtcdServer`'s arguments), started; every
    server it made is closed after the test."""
    made: list[EtcdServer] = []

    def factory(**kwargs: Any) -> EtcdServer:
        server = EtcdServer(**kwargs)
        made.append(server)
        _track(request, server)
        server.start()
        return server

    try:
        yield factory
    finally:
        for server in made:
            server.close()


@pytest.fixture
def etcd_grpc_proxy(request: pytest.FixtureRequest, etcd_server: EtcdServer) -> Iterator[GrpcProxy]:
    """etcd's own gRPC proxy in front of ``etcd_server``, started for the test and killed
    after it."""
    with GrpcProxy(etcd_server) as proxy:
        _track(request, proxy)
        yield proxy


@pytest.fixture
def etcd_prefix(request: pytest.FixtureRequest, etcd_server: EtcdServer) -> Iterator[str]:
    """A key prefix of the test's own (``/etcdkit-test/<name>-<hex>/``); everything under it
    is deleted after the test."""
    _track(request, etcd_server)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)[:60]
    prefix = f"/etcdkit-test/{name}-{uuid.uuid4().hex[:8]}/"
    try:
        yield prefix
    finally:
        if etcd_server.running:
            try:
                with Client(etcd_server.endpoint, timeout=5.0) as client:
                    client.delete_prefix(prefix)
            except Exception:  # cleanup must not mask the test's own outcome
                pass


@pytest.fixture
def etcd_sync(etcd_server: EtcdServer, etcd_prefix: str) -> Iterator[Client]:
    """A connected threaded :class:`Client` on ``etcd_server``, closed after the test."""
    with Client(etcd_server.endpoint) as client:
        yield client


try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - the async fixture needs pytest-asyncio
    pass
else:

    @pytest_asyncio.fixture
    async def etcd(etcd_server: EtcdServer, etcd_prefix: str) -> AsyncIterator[AsyncClient]:
        """A connected :class:`AsyncClient` on ``etcd_server``, closed after the test."""
        async with AsyncClient(etcd_server.endpoint) as client:
            yield client


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed:
        servers: list[Any] = []
        if _SERVERS_KEY in item.stash:
            tracked = item.stash[_SERVERS_KEY]
            servers.extend(tracked)
        # (the session's server and cluster are made once, for every test that asks)
        funcargs = getattr(item, "funcargs", {})
        if isinstance(funcargs.get("etcd_server"), EtcdServer):
            servers.append(funcargs["etcd_server"])
        if isinstance(funcargs.get("etcd_cluster"), EtcdCluster):
            servers.extend(funcargs["etcd_cluster"].members)
        for server in dict.fromkeys(servers):  # each once, in order
            try:
                logs = server.logs()
            except Exception as exc:  # a broken server must not hide the failure
                logs = f"(logs unavailable: {exc})"
            report.sections.append((f"etcd logs ({getattr(server, 'endpoint', '?')})", logs))
    return report


def _end_then_die(signum: int, frame: object) -> None:
    """A signal that ends the test run: its etcd processes end first (they run in sessions of
    their own, and the run's own cleanup will not run), then the signal's default action.
    The process's children have the signal too: pytest-xdist's workers, whose etcds would
    else outlive the run (the signal reaches the run's main process only)."""
    end_all()
    for child in _children():
        with contextlib.suppress(OSError):
            os.kill(child, signum)
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _children() -> list[int]:
    """The pids of this process's children (from ``/proc``; none where there is none)."""
    me, found = str(os.getpid()), []
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                fields = stat_fields(entry.name)
                if fields is not None and len(fields) > 1 and fields[1] == me:
                    found.append(int(entry.name))
    return found


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "etcd: the test talks to a real etcd server")
    if threading.current_thread() is threading.main_thread():
        for signum in _ENDING_SIGNALS:
            if signal.getsignal(signum) is signal.SIG_DFL:  # (a handler of the user's wins)
                signal.signal(signum, _end_then_die)


def pytest_unconfigure(config: pytest.Config) -> None:
    if threading.current_thread() is threading.main_thread():
        for signum in _ENDING_SIGNALS:
            if signal.getsignal(signum) is _end_then_die:
                signal.signal(signum, signal.SIG_DFL)
