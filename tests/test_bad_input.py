"""Bad input: every public call with wrong arguments fails fast with a clear, typed error.

Each case must raise within ``BOUND`` seconds (never hang), with the documented error type and
a message that says what was wrong, and must leave no etcdkit task running once its client is
closed. Secured servers (wrong password, TLS mismatches) are covered in test_security.py.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest

import etcdkit
from _helpers import BOUND, etcdkit_tasks, fresh_client, quickly
from etcdkit import AsyncClient, Client, WatchState
from etcdkit.server import EtcdServer

ErrorType = type[BaseException] | tuple[type[BaseException], ...]


def free_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- constructors ---------------------------------------------------------------------------------

CTOR_CASES = [
    pytest.param({"endpoints": 42}, TypeError, "endpoints must be", id="endpoints-int"),
    pytest.param({"endpoints": [b"127.0.0.1:2379"]}, TypeError, "endpoints", id="endpoints-bytes"),
    pytest.param({"endpoints": ""}, ValueError, "empty", id="endpoints-empty"),
    pytest.param({"endpoints": []}, ValueError, "empty", id="endpoints-empty-list"),
    pytest.param({"endpoints": " , "}, ValueError, "empty", id="endpoints-blank"),
    pytest.param({"endpoints": "ftp://127.0.0.1:2379"}, ValueError, "scheme", id="scheme"),
    pytest.param({"endpoints": "127.0.0.1:http"}, ValueError, "host:port", id="port-name"),
    pytest.param({"endpoints": "127.0.0.1:0"}, ValueError, "host:port", id="port-0"),
    pytest.param({"endpoints": "127.0.0.1:65536"}, ValueError, "host:port", id="port-big"),
    pytest.param({"endpoints": ":2379"}, ValueError, "host:port", id="no-host"),
    # (each of these was taken, then failed every call only at the timeout)
    pytest.param({"endpoints": "127.0.0.1 :2379"}, ValueError, "no spaces", id="host-space"),
    pytest.param({"endpoints": "h:2379:2380"}, ValueError, "brackets", id="two-ports"),
    pytest.param({"endpoints": "::1:2379"}, ValueError, "brackets", id="v6-bare"),
    pytest.param({"endpoints": "http://u@h:2379"}, ValueError, "user names", id="user"),
    pytest.param({"endpoints": "[h]:2379"}, ValueError, "IPv6", id="v6-not"),
    pytest.param({"endpoints": "[::1]:"}, ValueError, "host:port", id="v6-colon-no-port"),
    pytest.param({"endpoints": "127.0.0.1:"}, ValueError, "host:port", id="colon-no-port"),
    pytest.param({"endpoints": "h:\u00b2"}, ValueError, "host:port", id="port-superscript"),
    pytest.param(
        {"endpoints": "http://127.0.0.1:1,https://127.0.0.1:2"}, ValueError, "mix", id="mixed-tls"
    ),
    # (grpc took them, then failed every handshake: a timeout naming no file)
    pytest.param({"ca_cert": __file__}, ValueError, "not a PEM certificate", id="ca-not-pem"),
    pytest.param(
        {"cert": __file__, "key": __file__}, ValueError, "not a PEM", id="cert-key-not-pem"
    ),
    pytest.param({"username": "u"}, ValueError, "both username and password", id="user-only"),
    pytest.param({"password": "p"}, ValueError, "both username and password", id="password-only"),
    pytest.param({"username": 5, "password": "p"}, TypeError, "username", id="user-int"),
    pytest.param({"username": "u", "password": b"p"}, TypeError, "password", id="password-bytes"),
    pytest.param({"cert": "c.pem"}, ValueError, "cert and key", id="cert-without-key"),
    pytest.param({"key": "k.pem"}, ValueError, "cert and key", id="key-without-cert"),
    pytest.param({"ca_cert": "/nonexistent/ca.pem"}, ValueError, "cannot read", id="ca-missing"),
    pytest.param({"timeout": 0}, ValueError, "timeout", id="timeout-0"),
    pytest.param({"timeout": -1}, ValueError, "timeout", id="timeout-negative"),
    pytest.param({"timeout": "5"}, TypeError, "timeout", id="timeout-str"),
    pytest.param(
        {"timeout": float("nan")},
        ValueError,
        "timeout",
        id="timeout-nan",
    ),
    pytest.param({"timeout": True}, TypeError, "timeout", id="timeout-bool"),
    # (a gRPC deadline that far out failed every call at once, as a timeout)
    pytest.param({"timeout": 1e10}, ValueError, "up to 1e", id="timeout-past-grpc"),
    pytest.param({"timeout": float("inf")}, ValueError, "None", id="timeout-inf"),
]


def test_several_hostnames_are_accepted() -> None:
    # One channel per endpoint (issue 12/17): host names need not be IP addresses any more.
    assert AsyncClient("a.invalid:1,b.invalid:2").endpoints == [
        "http://a.invalid:1",
        "http://b.invalid:2",
    ]
    # IPv6 in brackets, with or without a port; shown in brackets
    assert AsyncClient("[::1]:1,http://[::1]").endpoints == ["http://[::1]:1", "http://[::1]:2379"]
    assert AsyncClient("HTTPS://h:1").endpoints == ["https://h:1"]  # (schemes: any case)


@pytest.mark.parametrize(("kwargs", "exc", "match"), CTOR_CASES)
async def test_async_client_constructor(kwargs: dict[str, Any], exc: ErrorType, match: str) -> None:
    with quickly(), pytest.raises(exc, match=match):
        AsyncClient(**kwargs)
    assert etcdkit_tasks() == []


@pytest.mark.parametrize(("kwargs", "exc", "match"), CTOR_CASES)
def test_sync_client_constructor(
    kwargs: dict[str, Any], exc: ErrorType, match: str, no_leaked_threads: None
) -> None:
    with quickly(), pytest.raises(exc, match=match):
        Client(**kwargs)


# -- calls on an open client ----------------------------------------------------------------------

NO_LEASE = 0x5EED_DEAD_BEEF  # a lease id nobody granted
BIG = b"x" * (3 * 1024 * 1024)  # above etcd's default request limit (1.5 MiB)

CALL_CASES = [
    # (method, args, kwargs, error, message)
    ("get", ("",), {}, ValueError, "key must not be empty"),
    ("get", (b"",), {}, ValueError, "key must not be empty"),
    ("get", (None,), {}, TypeError, "key must be str or bytes"),
    ("get", (42,), {}, TypeError, "key must be str or bytes"),
    ("get", ("/k",), {"revision": -1}, ValueError, "revision"),
    ("get", ("/k",), {"revision": "1"}, (TypeError, ValueError), "revision"),
    ("get", ("/k",), {"revision": 10**12}, etcdkit.InvalidArgumentError, "future revision"),
    # (once a TypeError naming nothing, and 1 taken for True)
    ("get", ("/k",), {"serializable": "yes"}, TypeError, "serializable must be a bool"),
    ("get", ("/k",), {"serializable": 1}, TypeError, "serializable must be a bool"),
    ("compact", (1,), {"physical": "yes"}, TypeError, "physical must be a bool"),
    # (once taken, then ended by etcd at the first event read: "watcher range is empty")
    ("watch", ("/b",), {"range_end": "/a"}, ValueError, "range_end .* must be greater than key"),
    ("watch", ("/a",), {"range_end": "/a"}, ValueError, "range_end .* must be greater than key"),
    ("get_prefix", (None,), {}, TypeError, "prefix must be str or bytes"),
    # (a lone surrogate: a bare UnicodeEncodeError naming neither the key nor what to pass)
    ("get", ("/k\udcff",), {}, ValueError, "key must be str that UTF-8 can encode"),
    ("put", ("/k", "v\udcff"), {}, ValueError, "value must be str that UTF-8 can encode"),
    ("get_prefix", ("/p/",), {"page_size": 0}, ValueError, "page_size"),
    ("get_prefix", ("/p/",), {"page_size": "10"}, (TypeError, ValueError), "page_size"),
    ("get_prefix", ("/p/",), {"revision": -5}, ValueError, "revision"),
    ("put", ("", "v"), {}, ValueError, "key must not be empty"),
    ("put", ("/k", None), {}, TypeError, "value must be str or bytes"),
    ("put", ("/k", 5), {}, TypeError, "value must be str or bytes"),
    ("put", ("/k", "v"), {"lease": -1}, ValueError, "lease"),
    ("put", ("/k", "v"), {"lease": True}, (TypeError, ValueError), "lease"),
    ("put", ("/k", "v"), {"lease": NO_LEASE}, etcdkit.LeaseNotFoundError, "lease not found"),
    ("put", ("/k", BIG), {}, etcdkit.InvalidArgumentError, "too large"),
    ("delete", ("",), {}, ValueError, "key must not be empty"),
    ("delete", (3.5,), {}, TypeError, "key must be str or bytes"),
    ("delete_prefix", ("",), {}, ValueError, "prefix must not be empty"),
    ("delete_prefix", (None,), {}, TypeError, "prefix must be str or bytes"),
    ("compact", (0,), {}, ValueError, "revision"),
    ("compact", (-1,), {}, ValueError, "revision"),
    ("compact", ("1",), {}, (TypeError, ValueError), "revision"),
    ("compact", (10**12,), {}, etcdkit.InvalidArgumentError, "future revision"),
    ("grant", (0,), {}, ValueError, "ttl"),
    ("grant", (-5,), {}, ValueError, "ttl"),
    ("grant", (1.5,), {}, (TypeError, ValueError), "ttl"),
    ("grant", ("10",), {}, (TypeError, ValueError), "ttl"),
    ("grant", (True,), {}, (TypeError, ValueError), "ttl"),
    ("grant", (10**10,), {}, etcdkit.InvalidArgumentError, "too large"),
    ("grant", (2**63,), {}, (ValueError, etcdkit.InvalidArgumentError), "ttl"),
    ("revoke", (-1,), {}, ValueError, "lease"),
    ("revoke", ("1",), {}, (TypeError, ValueError), "lease"),
    ("revoke", (NO_LEASE,), {}, etcdkit.LeaseNotFoundError, "lease not found"),
    ("revoke", (2**64,), {}, (ValueError, etcdkit.InvalidArgumentError), "lease"),
    ("time_to_live", (-1,), {}, ValueError, "lease"),
    ("wait_for", ("",), {}, ValueError, "key must not be empty"),
    ("wait_for", (None,), {}, TypeError, "key must be str or bytes"),
    ("wait_for", ("/k",), {"exists": "yes"}, TypeError, "exists"),
    ("wait_for", ("/k",), {"timeout": -1}, ValueError, "timeout"),
    ("wait_for", ("/k",), {"timeout": "1"}, TypeError, "timeout"),
    ("wait_for", ("/bad-input/absent",), {"timeout": 0}, etcdkit.EtcdTimeoutError, "within 0"),
    ("wait_for", ("/bad-input/absent",), {"timeout": 0.2}, etcdkit.EtcdTimeoutError, "within"),
    ("watch_prefix", (None,), {}, TypeError, "prefix must be str or bytes"),
    ("watch_prefix", ("/p/", "nope"), {}, TypeError, "transform must be a callable"),
    ("watch_prefix", ("/p/", 5), {}, TypeError, "transform must be a callable"),
    ("persistent_lease", ("", "v"), {}, ValueError, "key must not be empty"),
    ("persistent_lease", (None, "v"), {}, TypeError, "key must be str or bytes"),
    ("persistent_lease", ("/k", None), {}, TypeError, "value must be str or bytes"),
    ("persistent_lease", ("/k", "v", 0), {}, ValueError, "ttl"),
    ("persistent_lease", ("/k", "v", -1), {}, ValueError, "ttl"),
    ("persistent_lease", ("/k", "v", 1.5), {}, TypeError, "ttl"),
    ("persistent_lease", ("/k", "v", "10"), {}, TypeError, "ttl"),
    ("persistent_lease", ("/k", "v", True), {}, TypeError, "ttl"),
    ("persistent_lease", ("/k", "v", 2**63), {}, ValueError, "int64"),
    ("persistent_lease", ("/k", "v", 10**30), {}, ValueError, "int64"),
]


def _case_id(case: tuple[Any, ...]) -> str:
    method, args, kwargs, _exc, _match = case
    shown = [repr(a)[:12] for a in args] + [f"{k}={v!r:.12}" for k, v in kwargs.items()]
    return f"{method}({','.join(shown)})"


@pytest.mark.parametrize(
    ("method", "args", "kwargs", "exc", "match"), CALL_CASES, ids=[_case_id(c) for c in CALL_CASES]
)
async def test_async_call(
    etcd_server: EtcdServer,
    method: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    exc: ErrorType,
    match: str,
) -> None:
    async with fresh_client(etcd_server.endpoint) as client:
        with quickly(), pytest.raises(exc, match=match):  # noqa: PT012
            async with asyncio.timeout(BOUND):
                result = getattr(client, method)(*args, **kwargs)
                if inspect.isawaitable(result):
                    await result
        assert await client.get("/bad-input/absent") is None  # still usable


@pytest.mark.parametrize(
    ("method", "args", "kwargs", "exc", "match"), CALL_CASES, ids=[_case_id(c) for c in CALL_CASES]
)
def test_sync_call(
    etcd_server: EtcdServer,
    method: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    exc: ErrorType,
    match: str,
    no_leaked_threads: None,
) -> None:
    with Client(etcd_server.endpoint) as client:
        with quickly(), pytest.raises(exc, match=match):
            getattr(client, method)(*args, **kwargs)
        assert client.get("/bad-input/absent") is None


BAD_WAIT_TIMEOUTS: list[tuple[Any, type[Exception]]] = [
    ("5", TypeError),
    (True, TypeError),
    (float("nan"), ValueError),
    (-1, ValueError),
    (10**400, ValueError),  # (past a float: an OverflowError naming nothing)
]


async def test_a_huge_key_is_cut_short_in_error_messages(etcd_server: EtcdServer) -> None:
    # The message says which call failed and where, with the key's first characters: a 3 MB
    # key made a 3 MB message (and a log line of it).
    async with fresh_client(etcd_server.endpoint) as client:
        with pytest.raises(etcdkit.InvalidArgumentError, match="too large") as caught:
            await client.put(BIG, "v")
    message = str(caught.value)
    assert "put b'xxxx" in message
    assert etcd_server.endpoint in message
    assert len(message) < 1000


async def test_the_waits_check_their_timeouts(etcd_server: EtcdServer) -> None:
    """``synced``, ``registered`` and ``wait_state`` refuse a timeout that is not None or a
    number of seconds >= 0, and ``wait_state`` anything but LeaseStates, before waiting."""
    async with fresh_client(etcd_server.endpoint) as client:
        async with (
            client.watch_prefix("/bad-input/waits/") as watch,
            client.persistent_lease("/bad-input/waits/k", "v", ttl=5) as lease,
            client.session(ttl=5) as session,
        ):
            for timeout, exc in BAD_WAIT_TIMEOUTS:
                for wait in (
                    lambda t: watch.synced(timeout=t),
                    lambda t: lease.registered(timeout=t),
                    lambda t: lease.synced(timeout=t),
                    lambda t: lease.wait_state(etcdkit.LeaseState.FAILED, timeout=t),
                    # (a NaN once went into the loop's timers: other sleeps overslept by s)
                    lambda t: session.wait_lost(timeout=t),
                ):
                    with quickly(), pytest.raises(exc, match="timeout"):
                        await wait(timeout)
            with quickly(), pytest.raises(TypeError, match="LeaseState"):
                await lease.wait_state("registered")  # type: ignore[arg-type]
            assert await lease.registered(timeout=BOUND) > 0  # still fine


def test_the_threaded_waits_check_their_timeouts(
    etcd_server: EtcdServer, no_leaked_threads: None
) -> None:
    with (
        Client(etcd_server.endpoint) as client,
        client.watch_prefix("/bad-input/waits-sync/") as watch,
        client.persistent_lease("/bad-input/waits-sync/k", "v", ttl=5) as lease,
        client.session(ttl=5) as session,
    ):
        for timeout, exc in BAD_WAIT_TIMEOUTS:
            for wait in (
                lambda t: watch.synced(timeout=t),
                lambda t: lease.registered(timeout=t),
                lambda t: lease.wait_state(etcdkit.LeaseState.FAILED, timeout=t),
                lambda t: session.wait_lost(timeout=t),
            ):
                with quickly(), pytest.raises(exc, match="timeout"):
                    wait(timeout)
        assert lease.registered(timeout=BOUND) > 0
        with pytest.raises(etcdkit.EtcdTimeoutError):
            session.wait_lost(timeout=0.01)
    with Client(etcd_server.endpoint) as client, client.session(ttl=5) as session:
        threading.Timer(0.2, session.close).start()
        assert session.wait_lost(timeout=float("inf")) is etcdkit.SessionState.CLOSED


async def test_calls_on_closed_and_unopened_clients(etcd_server: EtcdServer) -> None:
    unopened = AsyncClient(etcd_server.endpoint)
    with pytest.raises(etcdkit.ClosedError, match="not open"):
        await unopened.get("/k")
    with pytest.raises(etcdkit.ClosedError, match="not open"):
        unopened.watch_prefix("/p/").start()
    async with AsyncClient(etcd_server.endpoint) as client:
        pass
    for call in (
        lambda: client.get("/k"),
        lambda: client.put("/k", "v"),
        lambda: client.grant(5),
        lambda: client.wait_for("/k", timeout=1),
    ):
        with quickly(1.0), pytest.raises(etcdkit.ClosedError, match="closed"):
            await call()
    with pytest.raises(etcdkit.ClosedError):
        client.watch_prefix("/p/").start()
    with pytest.raises(etcdkit.ClosedError):
        client.persistent_lease("/k", "v", ttl=5).start()
    with pytest.raises(etcdkit.ClosedError):
        await client.connect()
    await client.close()  # idempotent
    await asyncio.sleep(0)
    assert etcdkit_tasks() == []


def test_sync_calls_on_closed_client(etcd_server: EtcdServer, no_leaked_threads: None) -> None:
    client = Client(etcd_server.endpoint)
    client.close()
    client.close()  # idempotent
    with quickly(1.0), pytest.raises(etcdkit.ClosedError, match="closed"):
        client.get("/k")
    with pytest.raises(etcdkit.ClosedError):
        client.watch_prefix("/p/")


# -- transforms that raise or return the wrong shape ----------------------------------------------


def raises_value_error(key: bytes, value: bytes) -> tuple[str, int]:
    return key.decode(), int(value)


def raises_runtime_error(key: bytes, value: bytes) -> tuple[str, bytes]:
    if value == b"bad":
        raise RuntimeError("transform bug")
    return key.decode(), value


def returns_none(key: bytes, value: bytes) -> Any:
    return None if value == b"bad" else (key.decode(), value)


def returns_triple(key: bytes, value: bytes) -> Any:
    return (key.decode(), value, 1) if value == b"bad" else (key.decode(), value)


def returns_unhashable_key(key: bytes, value: bytes) -> Any:
    return ([key], value) if value == b"bad" else (key.decode(), value)


def returns_a_string(key: bytes, value: bytes) -> Any:
    return "ab" if value == b"bad" else (key.decode(), value)  # unpacks, but means nothing


@pytest.mark.parametrize(
    "transform",
    [
        raises_value_error,
        raises_runtime_error,
        returns_none,
        returns_triple,
        returns_unhashable_key,
        returns_a_string,
    ],
)
async def test_transform_that_rejects_is_counted_never_hangs(
    etcd_server: EtcdServer, etcd_prefix: str, transform: Callable[[bytes, bytes], Any]
) -> None:
    async with fresh_client(etcd_server.endpoint) as client:
        await client.put(etcd_prefix + "good", "1")
        await client.put(etcd_prefix + "bad", "bad")
        async with client.watch_prefix(etcd_prefix, transform) as watch:
            with quickly():
                snap = await watch.synced(timeout=BOUND)
            assert len(snap.tree) == 1
            assert watch.stats.invalid_records == 1
            rev = await client.put(etcd_prefix + "bad2", "bad")
            rev = await client.put(etcd_prefix + "good2", "2")
            async with asyncio.timeout(BOUND):
                async for snap in watch:
                    if snap.revision >= rev:
                        break
            assert len(snap.tree) == 2
            assert watch.stats.invalid_records == 2
            assert watch.state in (WatchState.LIVE, WatchState.STALE)


async def test_async_transform_is_refused_at_the_call(etcd_server: EtcdServer) -> None:
    async def transform(key: bytes, value: bytes) -> tuple[str, bytes]:
        return key.decode(), value

    async with fresh_client(etcd_server.endpoint) as client:
        with pytest.raises(TypeError, match="transform"):
            client.watch_prefix("/p/", transform)  # type: ignore[arg-type]


# -- unreachable, black-holed and misnamed endpoints ----------------------------------------------


async def test_unreachable_endpoint_fails_fast_everywhere() -> None:
    async with fresh_client(f"127.0.0.1:{free_port()}", timeout=1) as client:
        for call in (
            lambda: client.get("/k"),
            lambda: client.put("/k", "v"),
            lambda: client.get_prefix("/p/"),
            lambda: client.grant(5),
            lambda: client.get_revision(),
        ):
            with quickly(2.0), pytest.raises(etcdkit.ConnectionUnavailableError, match="reach"):
                await call()
        with quickly(2.0), pytest.raises(etcdkit.EtcdTimeoutError):
            await client.wait_for("/k", timeout=1)
        async with client.watch_prefix("/p/") as watch:
            with quickly(2.0), pytest.raises(etcdkit.EtcdTimeoutError, match="did not sync"):
                await watch.synced(timeout=1)
        lease = client.persistent_lease("/k", "v", ttl=5)
        async with lease:
            with quickly(2.0), pytest.raises(etcdkit.EtcdTimeoutError, match="registration"):
                await lease.registered(timeout=1)
        assert lease.state is etcdkit.LeaseState.CLOSED


def test_unreachable_endpoint_sync(no_leaked_threads: None) -> None:
    with Client(f"127.0.0.1:{free_port()}", timeout=1) as client:
        with quickly(2.0), pytest.raises(etcdkit.ConnectionUnavailableError):
            client.get("/k")
        with quickly(2.0), pytest.raises(etcdkit.EtcdTimeoutError):
            client.wait_for("/k", timeout=1)


async def test_black_holed_endpoint_times_out() -> None:
    # A listener that never accepts: the TCP handshake completes, nothing answers.
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(16)
        port = hole.getsockname()[1]
        async with fresh_client(f"127.0.0.1:{port}", timeout=1) as client:
            with (
                quickly(3.0),
                pytest.raises((etcdkit.EtcdTimeoutError, etcdkit.ConnectionUnavailableError)),
            ):
                await client.get("/k")
            with quickly(3.0), pytest.raises(etcdkit.EtcdTimeoutError):
                await client.wait_for("/k", timeout=1)


async def test_unresolvable_host() -> None:
    async with fresh_client("etcd.does-not-exist.invalid:2379", timeout=2) as client:
        with (
            quickly(),
            pytest.raises((etcdkit.ConnectionUnavailableError, etcdkit.EtcdTimeoutError)),
        ):
            await client.get("/k")


async def test_tls_client_to_plain_server(etcd_server: EtcdServer) -> None:
    host_port = etcd_server.endpoint.split("://")[-1]
    async with fresh_client(f"https://{host_port}", timeout=2) as client:
        with (
            quickly(),
            pytest.raises((etcdkit.ConnectionUnavailableError, etcdkit.EtcdTimeoutError)),
        ):
            await client.get("/k")


async def test_credentials_for_a_server_without_auth(etcd_server: EtcdServer) -> None:
    async with fresh_client(etcd_server.endpoint, username="u", password="p") as client:
        with quickly(), pytest.raises(etcdkit.AuthError, match="not enabled") as info:
            await client.get("/k")
        assert "connect without a username and password" in str(info.value)
        assert "check username and password" not in str(info.value)


async def test_huge_ttl_persistent_lease_reports_the_refusal(etcd_server: EtcdServer) -> None:
    async with fresh_client(etcd_server.endpoint) as client:
        async with client.persistent_lease("/bad-input/huge-ttl", "v", ttl=10**10) as lease:
            with quickly(), pytest.raises(etcdkit.InvalidArgumentError, match="too large"):
                await lease.registered(timeout=BOUND)
            assert lease.state is etcdkit.LeaseState.FAILED
            assert isinstance(lease.error, etcdkit.InvalidArgumentError)


def test_a_compare_prefix_must_be_a_bool() -> None:
    """Any truthy value once made a range compare silently (flipping a transaction's
    outcome), where ``Op.range`` refused it."""
    bad: Any = "no"
    with pytest.raises(TypeError, match="prefix must be a bool"):
        etcdkit.Compare.version("/t/", ">", 0, prefix=bad)
    with pytest.raises(TypeError, match="prefix must be a bool"):
        etcdkit.Compare.value("/t/", "==", "v", prefix=1)  # type: ignore[arg-type]
