"""Connection plumbing: endpoint parsing, the grpc.aio channel, auth tokens, error mapping.

The generated etcd v3 messages and stubs come from ``aetcd.rpc`` (public there); everything
that decides behaviour (retries, streams, recovery) is ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import re
import ssl
import time
import weakref
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from aetcd import rpc

from etcdkit import _metrics
from etcdkit._errors import (
    AuthError,
    ClosedError,
    CompactedError,
    ConnectionUnavailableError,
    EtcdkitError,
    EtcdTimeoutError,
    InvalidArgumentError,
    LeaseNotFoundError,
    PermissionDeniedError,
    ServerError,
    WrongContextError,
)
from etcdkit._logs import RateLimitedLog
from etcdkit._retry import Backoff, RetryPolicy

__all__ = ["Connection", "Endpoint", "Stubs", "map_rpc_error", "parse_endpoints"]

log = logging.getLogger("etcdkit.client")
limited = RateLimitedLog(log)  # failovers of a flapping endpoint: one line per interval

_NO_METADATA: tuple[tuple[str, str], ...] = ()  # a call's metadata when no user is configured

DEFAULT_ENDPOINT = "127.0.0.1:2379"

# The process whose connections started grpc's core. Its threads and poller do not survive a
# fork: in a child forked from a process that used it, a channel's calls never answer, and no
# deadline ends them (a client there waited for ever, past its timeout).
_grpc_started_in: int | None = None


def _check_grpc_usable() -> None:
    global _grpc_started_in
    pid = os.getpid()
    if _grpc_started_in is None:
        _grpc_started_in = pid
    elif _grpc_started_in != pid:
        raise WrongContextError(
            f"this process was forked from one that used grpc (pid {_grpc_started_in}), and "
            "grpc does not work in such a child: its calls never answer. Start worker "
            "processes with multiprocessing's 'spawn' or 'forkserver' method (or exec a "
            "program), or fork before the first client, and make a client in each"
        )


ENV_ENDPOINTS = "ETCDKIT_ENDPOINTS"
# The longest client timeout: each call's gRPC deadline (grpc fails every call at once past
# about 1e10 s); None is no timeout at all.
MAX_TIMEOUT = 1e9
# A member that hangs (SIGSTOP, a full disk) answers nothing, and HTTP/2 keepalive notices
# only after 5-8 s (etcd refuses pings more often than every 5 s), past the default 5 s
# timeout. So on a client of several endpoints, a read (a call safe to repeat) with no answer
# after READ_PROBE_AFTER, and more than that and READ_PROBE_TIMEOUT left, has its member asked
# for its status: no answer to that either within READ_PROBE_TIMEOUT, and the client fails over
# (the read goes to the next endpoint). A read that is only slow goes on where it is.
READ_PROBE_AFTER = 1.0
READ_PROBE_TIMEOUT = 1.0
_STATUS = rpc.StatusRequest()

_CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.max_send_message_length", 2**31 - 1),
    # Detect dead peers (black-holed connections) within ~keepalive_time + timeout.
    ("grpc.keepalive_time_ms", 5_000),
    ("grpc.keepalive_timeout_ms", 3_000),
    # Without this a hung peer (SIGSTOP) is noticed only after ~65 s (issue 17); with it, ~3 s.
    ("grpc.http2.ping_timeout_ms", 3_000),
    # etcd's server policy rejects pings without active streams (GOAWAY too_many_pings).
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
    # Come back quickly after a restart; the default maximum is two minutes.
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 1_000),
    # One endpoint per channel, but round_robin all the same: under pick_first a call queued
    # behind another could reach etcd after a later one (a wait_for's read after the put it
    # was started before: 2 in 100 vs 0 in 100 measured).
    ("grpc.lb_policy_name", "round_robin"),
    ("grpc.enable_retries", 0),
]


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    tls: bool

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"


_HOST = re.compile(r"[A-Za-z0-9_.-]+")  # a host name, or an IPv4 address


def parse_endpoints(endpoints: str | Sequence[str] | None) -> list[Endpoint]:
    """Parse "host:port", "http(s)://host:port", a list of them or a comma-separated string.

    ``None`` means ``$ETCDKIT_ENDPOINTS``, else 127.0.0.1:2379.
    """
    if endpoints is None:
        endpoints = os.environ.get(ENV_ENDPOINTS, "").strip() or DEFAULT_ENDPOINT
    if isinstance(endpoints, str):
        items = [e.strip() for e in endpoints.split(",")]
    elif isinstance(endpoints, Sequence) and all(isinstance(e, str) for e in endpoints):
        items = [e.strip() for e in endpoints]
    else:
        raise TypeError(
            "endpoints must be a string like '127.0.0.1:2379' or a list of such strings, "
            f"got {endpoints!r:.80}"
        )
    items = [i for i in items if i]
    if not items:
        raise ValueError("endpoints is empty: pass at least one 'host:port'")
    parsed: list[Endpoint] = []
    for item in items:
        tls = False
        rest = item
        if "://" in item:
            scheme, rest = item.split("://", 1)
            scheme = scheme.lower()  # (a URL's scheme is case-insensitive)
            if scheme not in ("http", "https"):
                raise ValueError(f"endpoint {item!r}: scheme must be http or https")
            tls = scheme == "https"
        rest = rest.rstrip("/")
        if rest.startswith("["):  # [v6]:port or [v6]
            host, sep, port_s = rest[1:].partition("]")
            if not sep or (port_s and not port_s.startswith(":")):
                host = ""
            port_s = port_s[1:] if port_s else "2379"  # ("[::1]:" has no port: refused below)
            if host and not _is_ip(host):
                raise ValueError(f"endpoint {item!r}: {host!r} in brackets is not an IPv6 address")
        else:
            host, sep, port_s = rest.rpartition(":")
            if not sep:
                host, port_s = rest, "2379"
            if ":" in host:
                raise ValueError(
                    f"endpoint {item!r}: write an IPv6 address in brackets ('[::1]:2379'), "
                    "and one port after the host"
                )
            if host and not _HOST.fullmatch(host):
                raise ValueError(
                    f"endpoint {item!r}: {host!r} is not a host name or an IP address "
                    "(no spaces, user names or paths)"
                )
        if not host or not (port_s.isascii() and port_s.isdigit()) or not 0 < int(port_s) < 65536:
            raise ValueError(f"endpoint {item!r} is not 'host:port' or 'http(s)://host:port'")
        parsed.append(Endpoint(host, int(port_s), tls))
    if len({e.tls for e in parsed}) > 1:
        raise ValueError(f"endpoints mix http and https: {items}")
    return parsed


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


CLOSE_SETTLE = 0.02  # seconds a closing connection gives grpc to hand back its last events


def _grpc_target(e: Endpoint) -> str:
    if not _is_ip(e.host):
        return f"dns:///{e.host}:{e.port}"
    if ipaddress.ip_address(e.host).version == 6:
        return f"ipv6:[{e.host}]:{e.port}"
    return f"ipv4:{e.host}:{e.port}"


_PEM_CERT = (b"-----BEGIN CERTIFICATE-----", "certificate")
_PEM_KEY = (b"PRIVATE KEY-----", "private key")  # (PKCS#8, RSA or EC)


def _read(path: str | os.PathLike[str] | None, what: str) -> bytes | None:
    """A PEM file's bytes; ValueError when it cannot be read or holds no PEM block of its
    kind (grpc would only fail every handshake, a timeout naming nothing)."""
    if path is None:
        return None
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {what} file {os.fspath(path)!r}: {exc}") from exc
    marker, kind = _PEM_KEY if what == "key" else _PEM_CERT
    if marker not in data:
        raise ValueError(
            f"{what} file {os.fspath(path)!r} is not a PEM {kind} (no "
            f"'{marker.decode().strip('-')}' block): give the PEM file"
        )
    return data


def _check_tls_files(
    ca_cert: str | os.PathLike[str] | None,
    ca: bytes | None,
    cert: str | os.PathLike[str] | None,
    key: str | os.PathLike[str] | None,
) -> None:
    """ValueError unless TLS can use the files: CA certificates that load, a certificate and
    the key that goes with it (grpc takes any PEM, then fails every handshake: a timeout
    naming nothing, the cause only in its own lines on stderr)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca_cert is not None and ca is not None:
        try:
            context.load_verify_locations(cadata=ca.decode("ascii", "replace"))
        except (ssl.SSLError, ValueError) as exc:
            raise ValueError(
                f"ca_cert file {os.fspath(ca_cert)!r} holds no certificate TLS can load: {exc}"
            ) from None
    if cert is not None and key is not None:
        try:  # (an encrypted key gets no password: grpc takes none either)
            context.load_cert_chain(cert, key, password=lambda: b"")
        except (ssl.SSLError, ValueError) as exc:
            raise ValueError(
                f"cert {os.fspath(cert)!r} and key {os.fspath(key)!r} are not a certificate "
                f"and its private key TLS can use: {exc}"
            ) from None


# -- error mapping -------------------------------------------------------------------------------


# Calls whose answer is at the revision the cluster has reached (the write's own): see
# Connection.revision.
_WRITES = frozenset({"Put", "DeleteRange"})
MESSAGE_WHAT = 300  # characters of a call's description in an error message (a key can be MBs)


def short(what: str) -> str:
    """``what`` (a call, with its key) as an error message shows it: its first MESSAGE_WHAT
    characters."""
    return what if len(what) <= MESSAGE_WHAT else what[:MESSAGE_WHAT] + "...(cut)"


def status_code(exc: grpc.aio.AioRpcError) -> grpc.StatusCode:
    """``exc``'s code, where etcd's own "context deadline exceeded" counts as DEADLINE_EXCEEDED.
    etcd gets the call's deadline with it; when its context runs out first (a linearizable read
    or a proposal waiting for a leader), Go's grpc sends that error back as UNKNOWN, a moment
    before this side's own deadline would have fired. It is the same event: no answer in time."""
    code = exc.code()
    if code == grpc.StatusCode.UNKNOWN and (exc.details() or "").strip() == _GO_DEADLINE:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return code


_GO_DEADLINE = "context deadline exceeded"  # Go's context.DeadlineExceeded.Error()


def map_rpc_error(exc: BaseException, where: str, what: str) -> EtcdkitError:
    """Convert a grpc error into the etcdkit hierarchy (callers ``raise ... from exc``); an
    etcdkit error is itself."""
    what = short(what)
    if isinstance(exc, EtcdkitError):
        return exc  # (already says what failed where: a stream's stall, a refused login)
    if not isinstance(exc, grpc.aio.AioRpcError):
        return ConnectionUnavailableError(f"{what} at {where} failed: {exc!r}")
    code = status_code(exc)
    details = exc.details() or ""
    msg = f"{what} at {where} failed: {code.name}: {details}"
    low = details.lower()
    if code == grpc.StatusCode.UNAVAILABLE and "unhealthy cluster" in low:
        return ConnectionUnavailableError(
            msg + " (etcd changes membership only once every member has been connected for 5 s, "
            "and never at the cost of the quorum: try again shortly)"
        )
    if code == grpc.StatusCode.UNAVAILABLE:
        return ConnectionUnavailableError(msg + " (is etcd running and reachable?)")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return EtcdTimeoutError(
            msg + " (no answer in time: etcd may be stopped, overloaded or cut off; if it is "
            "only slow, give the call more time: the client's timeout=)"
        )
    if code == grpc.StatusCode.UNIMPLEMENTED:  # before the "auth" in the details below
        return ServerError(
            msg + " (this etcd, or a proxy in between, does not have that call: a later etcd "
            "version has it)"
        )
    if "compacted" in low:
        return CompactedError(msg)
    if code == grpc.StatusCode.PERMISSION_DENIED or "permission denied" in low:
        return PermissionDeniedError(msg)
    if (
        code == grpc.StatusCode.UNAUTHENTICATED
        or "authentication failed" in low
        or "auth" in low
        or "user name is empty" in low  # an auth-enabled etcd called without credentials
    ):
        return AuthError(msg + (" (pass username and password)" if "name is empty" in low else ""))
    if "lease not found" in low:
        return LeaseNotFoundError(msg)
    if code == grpc.StatusCode.INVALID_ARGUMENT or code == grpc.StatusCode.OUT_OF_RANGE:
        return InvalidArgumentError(msg)
    if code == grpc.StatusCode.CANCELLED and "channel closed" in low:
        return ClosedError(msg)
    if "database space exceeded" in low:  # RESOURCE_EXHAUSTED too, but not the request's fault
        return ServerError(
            msg + " (etcd's NOSPACE alarm is on: only reads and deletes work until you delete or "
            "compact, defragment every member, then disarm the alarm; see maintenance.alarms())"
        )
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return InvalidArgumentError(msg + " (request or response too large)")
    return ServerError(msg)


def _details(exc: BaseException) -> str:
    return (exc.details() or "") if isinstance(exc, grpc.aio.AioRpcError) else ""


# What etcd says of a token it no longer takes: expired or forgotten (a restart forgets simple
# tokens), or a JWT older than the last change to users and roles (3.5.1 says it as the auth
# package's error; later releases as etcdserver's). A new login fixes each.
_STALE_TOKEN = (
    "invalid auth token",
    "revision in header is old",
    "revision of auth store is old",
)


def _pick_failed(exc: grpc.aio.AioRpcError) -> bool:
    """The RPC never left this process: no connection could be made for it (so even a write
    is safe to send again). grpc says so in the details of a fail-fast pick failure."""
    details = (exc.details() or "").lower()
    return exc.code() == grpc.StatusCode.UNAVAILABLE and (
        "failed to connect" in details  # pick_first's pick failure
        or "connections to all backends failing" in details  # round_robin's
        or "no address" in details
        or "no connection" in details
    )


def _maybe_applied(exc: grpc.aio.AioRpcError) -> bool:
    """A write that failed this way may still have been applied: its answer was lost (the
    connection ended, or the deadline passed) after the request may have left this process."""
    code = status_code(exc)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return True
    details = (exc.details() or "").lower()
    return (
        code == grpc.StatusCode.UNAVAILABLE
        and not _pick_failed(exc)
        # etcd's own refusals, made before anything was proposed
        and "unhealthy cluster" not in details
        and "no leader" not in details
    )


async def _final_status(call: Any) -> None:
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await call.code()


def _cancelled_from_outside() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class Stubs:
    """The raw escape hatch: the grpc.aio channel and the generated etcd v3 stubs."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.kv = rpc.KVStub(channel)
        self.watch = rpc.WatchStub(channel)
        self.lease = rpc.LeaseStub(channel)
        self.cluster = rpc.ClusterStub(channel)
        self.maintenance = rpc.MaintenanceStub(channel)
        self.auth = rpc.AuthStub(channel)


class Channel:
    """One grpc.aio channel to one endpoint, and the calls in flight on it."""

    __slots__ = ("calls", "ended", "endpoint", "finals", "kicked", "live", "probe", "stubs")

    def __init__(self, endpoint: Endpoint, stubs: Stubs) -> None:
        self.endpoint = endpoint
        self.stubs = stubs
        self.calls: set[Any] = set()  # unary calls in flight (awaited by their caller)
        self.kicked: set[Any] = set()  # calls cancelled by a failover (to be sent elsewhere)
        self.ended: set[Any] = set()  # calls cancelled because the client is closing
        self.finals: set[Any] = set()  # calls the client's closing does not cut (revokes)
        # the streams, and the unary calls whose caller stopped awaiting them before grpc
        # finished them: close() waits for each one's end
        self.live: weakref.WeakSet[Any] = weakref.WeakSet()
        self.probe: asyncio.Task[None] | None = None  # asking the member if it hangs

    def stream(self, service: str, method: str, metadata: list[tuple[str, str]]) -> Any:
        """Open a bidirectional stream call (its owner reads, writes and cancels it)."""
        call = getattr(getattr(self.stubs, service), method)(metadata=metadata)
        self.live.add(call)
        return call

    def __repr__(self) -> str:
        return f"<Channel {self.endpoint}>"


class Connection:
    """One grpc.aio channel per endpoint, the auth token, and every unary call.

    The connection prefers one endpoint at a time (like a sticky client). When that endpoint
    fails (unavailable, no answer in time, or a stream owner reports it hung), it fails over to
    the next: new calls and re-opened streams go there, and unary calls in flight on the failed
    one are sent again there when that is safe. A single endpoint (or a DNS name, which grpc
    resolves and balances itself) is simply always the preferred one.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str] | None,
        *,
        username: str | None,
        password: str | None,
        ca_cert: str | os.PathLike[str] | None,
        cert: str | os.PathLike[str] | None,
        key: str | os.PathLike[str] | None,
        timeout: float | None,
        retry: RetryPolicy,
    ) -> None:
        self.endpoints = parse_endpoints(endpoints)
        self.where = ",".join(str(e) for e in self.endpoints)
        if (username is None) != (password is None):
            raise ValueError("pass both username and password, or neither")
        if username is not None and not isinstance(username, str):
            raise TypeError(f"username must be str, got {type(username).__name__}")
        if password is not None and not isinstance(password, str):
            raise TypeError(f"password must be str, got {type(password).__name__}")
        if (cert is None) != (key is None):
            raise ValueError("pass both cert and key (client certificate), or neither")
        if timeout is not None and (
            not isinstance(timeout, int | float) or isinstance(timeout, bool)
        ):
            raise TypeError(
                f"timeout must be a positive number of seconds or None, not {timeout!r:.40}"
            )
        if timeout is not None and not 0 < timeout <= MAX_TIMEOUT:
            raise ValueError(
                f"timeout must be a positive number of seconds up to {MAX_TIMEOUT:.0e} or None "
                f"(no timeout), not {timeout!r}"
            )
        if not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be an etcdkit.RetryPolicy, got {retry!r:.80}")
        self.timeout = None if timeout is None else float(timeout)
        self.retry = retry
        self._username = username
        self._password = password
        self._tls = self.endpoints[0].tls or ca_cert is not None or cert is not None
        self._ca = _read(ca_cert, "ca_cert")
        self._cert = _read(cert, "cert")
        self._key = _read(key, "key")
        _check_tls_files(ca_cert, self._ca, cert, key)
        self._token: str | None = None
        # when the token was got (monotonic; 0.0 before the first): see WatchHub._token_refused
        self.token_time = 0.0
        self._token_lock: asyncio.Lock | None = None
        self._channels: list[Channel] = []
        self._current = 0
        self._closed_event: asyncio.Event | None = None
        self.closing = False  # the owner is closing: calls in flight end, its own may still run
        self.closed = False
        self.failovers = 0
        self.meter = _metrics.CallMeter()  # unary calls and their errors, by method
        self.last_error: str | None = None  # the newest connection-level failure, for messages
        self.answered = False  # etcd answered at least one call or stream
        # The newest store revision an answer showed: the cluster had reached it then (a
        # member applies only what the cluster committed). A member answering below it later
        # is behind (the watch hub's progress answers: see WatchHub._progress_answered).
        self.revision = 0
        self.answered_at = 0.0  # when a unary call (not a check) last had its answer (monotonic)

    # -- lifecycle --------------------------------------------------------------------------------

    def open(self) -> None:
        """Create the channels (no network I/O: grpc connects lazily)."""
        if self._channels:
            return
        _check_grpc_usable()
        for endpoint in self.endpoints:
            options = list(_CHANNEL_OPTIONS)
            target = _grpc_target(endpoint)
            if self._tls:
                creds = grpc.ssl_channel_credentials(
                    root_certificates=self._ca, private_key=self._key, certificate_chain=self._cert
                )
                options.append(("grpc.ssl_target_name_override", endpoint.host))
                channel = grpc.aio.secure_channel(target, creds, options=options)
            else:
                channel = grpc.aio.insecure_channel(target, options=options)
            self._channels.append(Channel(endpoint, Stubs(channel)))
        self._token_lock = asyncio.Lock()
        self._closed_event = asyncio.Event()

    async def close(self) -> None:
        """Cancel every call in flight (their callers get :class:`ClosedError`) and close the
        channels, then give grpc's completion callbacks the loop turns they need to finish."""
        if self.closed:
            return
        self.end_calls()
        self.closed = True
        # Cancel every call and wait (bounded) until grpc has delivered each one's final status:
        # grpc.aio finishes calls in callbacks on this loop, and one still pending when the loop
        # closes logs "Event loop is closed" from its poller, or "Task was destroyed".
        probes = [ch.probe for ch in self._channels if ch.probe is not None]
        for probe in probes:
            probe.cancel()
        if probes:
            await asyncio.wait(probes)
        calls = [call for ch in self._channels for call in {*ch.calls, *ch.live} if not call.done()]
        for call in calls:
            call.cancel()
        if calls:
            await asyncio.wait(
                [asyncio.ensure_future(_final_status(c)) for c in calls], timeout=1.0
            )
        await asyncio.gather(*(ch.stubs.channel.close(grace=None) for ch in self._channels))
        # Closing a channel still completes a few operations on grpc's poller thread; they are
        # handed to this loop within a millisecond or two. Without this pause they may reach
        # it after it closed ("Event loop is closed"): 19 such errors in 20 sequential loops.
        await asyncio.sleep(CLOSE_SETTLE)

    def end_calls(self) -> None:
        """The client is closing: every call in flight now, and every retry pause, ends with
        :class:`ClosedError` at once. Calls made from here on (the owner's last revokes) run,
        and so do the ``final`` calls in flight (a revoke a session's own close sent)."""
        self.closing = True
        if self._closed_event is not None:
            self._closed_event.set()
        for ch in self._channels:
            for call in ch.calls - ch.finals:
                ch.ended.add(call)
                call.cancel()

    def check_open(self) -> None:
        if self.closed:
            raise ClosedError("the etcdkit client is closed; create a new one")
        if not self._channels:
            raise ClosedError("the etcdkit client is not open; use 'async with AsyncClient()'")

    @property
    def channel(self) -> Channel:
        """The preferred endpoint's channel."""
        self.check_open()
        return self._channels[self._current]

    @property
    def stubs(self) -> Stubs:
        return self.channel.stubs

    @property
    def channels(self) -> tuple[Channel, ...]:
        """Every endpoint's channel, in the order the client was given them."""
        self.check_open()
        return tuple(self._channels)

    def channel_at(self, endpoint: str) -> Channel:
        """The channel of ``endpoint``: one of the client's endpoints, as "host:port" or a URL
        (matched on host and port as the client was given them; no DNS lookup). Another
        endpoint is a ValueError, checked before the open state (:class:`ClosedError`)."""
        if not isinstance(endpoint, str):
            raise TypeError(
                "endpoint must be a str, one of the client's endpoints such as "
                f"{str(self.endpoints[0])!r}, got {type(endpoint).__name__}: {endpoint!r:.80}"
            )
        wanted = parse_endpoints([endpoint])
        at = [
            i
            for i, e in enumerate(self.endpoints)
            if (e.host, e.port) == (wanted[0].host, wanted[0].port)
        ]
        if not at:
            raise ValueError(
                f"endpoint {endpoint!r} is not one of this client's endpoints ({self.where}); "
                "pass one of those, or create a client with it"
            )
        self.check_open()
        return self._channels[at[0]]

    def failover(self, failed: Channel, why: str) -> None:
        """``failed`` misbehaved: prefer the next endpoint, and send the unary calls in flight
        on ``failed`` again there (their callers decide whether that is safe)."""
        if self.closed or len(self._channels) < 2 or self._channels[self._current] is not failed:
            return
        self._current = (self._current + 1) % len(self._channels)
        self.failovers += 1
        _metrics.failover(str(failed.endpoint))
        limited.warning(
            ("failover", failed.endpoint),
            "etcd endpoint %s failed (%s); using %s",
            failed.endpoint,
            why,
            self.channel.endpoint,
        )
        for call in list(failed.calls):
            failed.kicked.add(call)
            call.cancel()

    def _probe(self, ch: Channel, call: Any) -> None:
        """(A timer's) ``call``, a read on ``ch``, has had no answer for READ_PROBE_AFTER: ask
        the member for its status, once for every read waiting there."""
        if call.done() or call not in ch.calls or self.closing or ch.probe is not None:
            return
        ch.probe = asyncio.create_task(
            self._status_or_failover(ch), name=f"etcdkit-probe-{ch.endpoint}"
        )

    async def _status_or_failover(self, ch: Channel) -> None:
        """No answer from ``ch``'s member to a status request either (an error is an answer):
        it hangs; fail over, which sends the reads waiting there to the next endpoint."""
        try:
            await ch.stubs.maintenance.Status(_STATUS, timeout=READ_PROBE_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            code = status_code(exc)
            if code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
                self.note_failure(map_rpc_error(exc, str(ch.endpoint), "status (a read waits)"))
                self.failover(ch, f"a read and a status request unanswered ({code.name})")
        finally:
            ch.probe = None

    async def pause(self, delay: float, *, last: bool = False) -> None:
        """Sleep ``delay`` seconds; :class:`ClosedError` at once if the client starts closing.
        ``last``: a call made while it closes (the owner's last revokes, each bounded by its
        caller): it sleeps its delay and is retried, until the channels close."""
        assert self._closed_event is not None
        if last:
            await asyncio.sleep(delay)
        elif not self._closed_event.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._closed_event.wait()
        if self.closed or (self.closing and not last):
            raise ClosedError("the etcdkit client was closed")

    async def pause_to_retry(
        self, backoff: Backoff | None, deadline: float | None, *, last: bool = False
    ) -> Backoff:
        """Sleep before a call's next attempt: the next delay of ``backoff`` (the policy's,
        capped at ``call_cap``, made at a call's first retry when ``None``), at most until
        ``deadline`` (on the loop's clock); see :meth:`pause`. Returns the backoff."""
        if backoff is None:
            backoff = self.retry.backoff(cap=self.retry.call_cap)
        delay = backoff.next_delay() or 0.0
        if deadline is not None:
            delay = min(delay, max(0.0, deadline - asyncio.get_running_loop().time()))
        await self.pause(delay, last=last)
        return backoff

    def note_failure(self, err: BaseException) -> None:
        self.last_error = str(err)

    # -- auth -------------------------------------------------------------------------------------

    async def metadata(self, *, refresh: bool = False) -> list[tuple[str, str]]:
        """Call metadata: the auth token when a user is configured."""
        if self._username is None:
            return []
        assert self._token_lock is not None
        async with self._token_lock:
            if self._token is None or refresh:
                ch = self.channel
                req = rpc.AuthenticateRequest(name=self._username, password=self._password)
                try:
                    resp = await ch.stubs.auth.Authenticate(req, timeout=self.timeout)
                except grpc.aio.AioRpcError as exc:
                    auth_off = "authentication is not enabled" in _details(exc)
                    if self._token is not None and auth_off:
                        # auth was turned off since we logged in: go on without a token, as
                        # Go's client does (a refusal for want of a user logs in again)
                        log.info(
                            "etcd at %s: auth is disabled; calls go without a token", ch.endpoint
                        )
                        self._token = ""
                        return []
                    err = map_rpc_error(
                        exc, str(ch.endpoint), f"authenticate as {self._username!r}"
                    )
                    if not isinstance(err, ConnectionUnavailableError | EtcdTimeoutError):
                        hint = (
                            "etcd's auth is off: connect without a username and password, or "
                            "turn auth on"
                            if auth_off
                            else "check username and password"
                        )
                        err = AuthError(
                            f"authentication as {self._username!r} at {ch.endpoint} failed: "
                            f"{exc.details()} ({hint})"
                        )
                    raise err from exc
                self._token = resp.token
                self.token_time = time.monotonic()
        return [("token", self._token)] if self._token else []

    @property
    def has_credentials(self) -> bool:
        """A username and password were given: calls carry a token."""
        return self._username is not None

    def token_refused(self, exc: BaseException) -> bool:
        """etcd refused a call for its token (see :meth:`refused_for_token`)."""
        return self.refused_for_token(_details(exc))

    def refused_for_token(self, reason: str) -> bool:
        """etcd's error or cancel ``reason`` says it refused the token: a stale one (see
        ``_STALE_TOKEN``), or none while auth is on again after it was turned off (``user
        name is empty``). A new login may fix it."""
        if any(what in reason for what in _STALE_TOKEN):
            return True
        return self._token == "" and "user name is empty" in reason

    # -- unary calls ------------------------------------------------------------------------------

    async def call(
        self,
        what: str,
        service: str,
        method: str,
        request: Any,
        *,
        idempotent: bool,
        channel: Channel | None = None,
        final: bool = False,
        check: bool = False,
        again: Callable[[], bool] | None = None,
        deadline: float | None = None,
    ) -> Any:
        """One unary RPC with the client's timeout, auth metadata and error mapping.

        Within the timeout it waits for a ready endpoint and retries what is safe to retry:
        any read (``idempotent``), and a write only when it provably never left this process.
        A call cancelled because the client closed raises :class:`ClosedError`. Its duration
        and outcome are counted by ``method`` (:mod:`etcdkit._metrics`). ``channel`` (from
        :meth:`channel_at`) pins the call to that endpoint: it is retried there, never
        elsewhere (maintenance calls address one member). ``final``: one of an owner's last
        calls (a revoke), which the client's closing does not cut: it runs on, within its
        bounds, until the channels close. ``check``: the client's own check of an endpoint
        (pinned with ``channel``): in no call figure (``ClientStats.calls``, the call
        metrics), and its failure moves nothing (no failover: that would cancel the calls in
        flight there). ``again``: asked before each retry; ``False`` raises the last error
        instead (the caller sends what it asked for another way). ``deadline``: a bound of the
        caller's own, on the loop's clock (the client's timeout still holds).
        """
        # One coroutine for the call, its retries and its meter: each more frame costs every
        # call of the client (put, get, txn) a little.
        started = time.monotonic()
        if len(what) > MESSAGE_WHAT:
            what = short(what)
        loop = asyncio.get_running_loop()
        if self.timeout is not None:
            own = loop.time() + self.timeout
            deadline = own if deadline is None else min(deadline, own)
        backoff = None  # made at the first retry (most calls never need one)
        last: EtcdkitError | None = None
        # made while the client closes (one of its last revokes), or such a call made before
        closing = self.closing or final
        refreshed = False
        try:
            while True:
                ch = self.channel  # raises ClosedError once closed
                if channel is not None:
                    ch = channel
                left = None if deadline is None else deadline - loop.time()
                if left is not None and left <= 0:
                    raise self.gave_up(what, last)
                call: Any = None
                hang_check = None  # (a timer: see READ_PROBE_AFTER)
                try:
                    # (no coroutine per call without a user: nothing to await)
                    md: Sequence[tuple[str, str]] = (
                        _NO_METADATA if self._username is None else await self.metadata()
                    )
                    fn = getattr(getattr(ch.stubs, service), method)
                    call = fn(request, timeout=left, metadata=md)
                    ch.calls.add(call)
                    if final:
                        ch.finals.add(call)
                    if (
                        idempotent
                        and channel is None
                        and len(self._channels) > 1
                        and (left is None or left > READ_PROBE_AFTER + READ_PROBE_TIMEOUT)
                    ):
                        hang_check = loop.call_later(READ_PROBE_AFTER, self._probe, ch, call)
                    try:
                        resp = await call
                    finally:
                        if hang_check is not None:
                            hang_check.cancel()
                        ch.calls.discard(call)
                        if final:
                            ch.finals.discard(call)
                        if not call.done():  # (cancelled: grpc has yet to finish it)
                            ch.live.add(call)
                    self.answered = True
                    rev = resp.header.revision  # (every etcd answer has the store's revision)
                    if rev > self.revision or method in _WRITES:
                        # (a write is at the cluster's newest revision: below what the
                        # client saw, etcd's went back, restored from an older backup)
                        self.revision = rev
                    break
                except asyncio.CancelledError:
                    if _cancelled_from_outside():
                        raise
                    if self.closed or (call is not None and call in ch.ended):
                        ch.ended.discard(call)
                        raise ClosedError(f"{what}: the etcdkit client was closed") from None
                    if call is None or call not in ch.kicked:
                        raise
                    ch.kicked.discard(call)
                    last = ConnectionUnavailableError(
                        f"{what} at {ch.endpoint}: the endpoint stopped answering"
                    )
                    if not idempotent:
                        raise ConnectionUnavailableError(
                            f"{what} at {ch.endpoint}: the endpoint stopped answering while the "
                            "request was in flight; it may or may not have been applied"
                        ) from None
                except grpc.aio.AioRpcError as exc:
                    if self.closed:
                        raise ClosedError(f"{what}: the etcdkit client was closed") from exc
                    if self.token_refused(exc) and not refreshed:
                        refreshed = True
                        await self.metadata(refresh=True)
                        continue
                    err = map_rpc_error(exc, str(ch.endpoint), what)
                    err.__cause__ = exc  # (kept as ``last``, it is raised later, as a cause)
                    code = status_code(exc)
                    if not check and code in (
                        grpc.StatusCode.UNAVAILABLE,
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                    ):
                        self.note_failure(err)
                        self.failover(ch, f"{code.name}: {exc.details()}")
                    if code != grpc.StatusCode.UNAVAILABLE or not (idempotent or _pick_failed(exc)):
                        if not idempotent and _maybe_applied(exc):
                            err = type(err)(
                                f"{err}; the request may have reached etcd: it may or may not "
                                "have been applied"
                            )
                        raise err from exc
                    last = err
                except (ConnectionUnavailableError, EtcdTimeoutError) as exc:  # from authenticate
                    self.note_failure(exc)
                    last = exc
                if last is not None and not self.retry.is_retryable(last):
                    raise last  # (the policy's allow-list: not worth another attempt)
                if again is not None and last is not None and not again():
                    check = True  # (in no figure: the caller sends it again another way)
                    raise last
                backoff = await self.pause_to_retry(backoff, deadline, last=closing)
        except asyncio.CancelledError:
            raise  # the caller gave up: neither a latency nor an error of etcd's
        except BaseException as exc:
            if not check:
                self.meter.record(method, time.monotonic() - started, exc)
            raise
        if not check:
            self.answered_at = now = time.monotonic()
            self.meter.record(method, now - started, None)
        return resp

    async def server_stream(
        self, what: str, service: str, method: str, request: Any, *, channel: Channel | None = None
    ) -> AsyncGenerator[Any, None]:
        """The responses of one server-streaming RPC (e.g. ``Maintenance.Snapshot``), on
        ``channel`` or the preferred endpoint, with auth metadata and error mapping.

        No deadline once it answered (a stream takes as long as it takes; keepalive notices a
        dead peer within seconds) and no retry once a response arrived. Before that, as a unary
        call: within the client's timeout it waits for a ready endpoint (an unavailable one is
        left for the next, unless ``channel`` pins it) and refreshes an invalid auth token once.
        The call ends when the iteration does (use ``contextlib.aclosing``), and with
        :class:`ClosedError` when the client closes.
        """
        refreshed = False
        loop = asyncio.get_running_loop()
        deadline = None if self.timeout is None else loop.time() + self.timeout
        backoff = None
        while True:
            ch = self.channel  # raises ClosedError once closed
            if channel is not None:
                ch = channel
            md = await self.metadata(refresh=refreshed)
            call = getattr(getattr(ch.stubs, service), method)(request, metadata=md)
            ch.live.add(call)
            started = False
            try:
                async for resp in call:
                    started = self.answered = True
                    yield resp
                return
            except asyncio.CancelledError:
                if self.closing and not _cancelled_from_outside():
                    raise ClosedError(f"{what}: the etcdkit client was closed") from None
                raise
            except grpc.aio.AioRpcError as exc:
                if self.closed or self.closing:
                    raise ClosedError(f"{what}: the etcdkit client was closed") from exc
                if self.token_refused(exc) and not refreshed and not started:
                    refreshed = True
                    continue
                err = map_rpc_error(exc, str(ch.endpoint), what)
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise err from exc
                self.note_failure(err)
                if started:
                    raise err from exc
                if channel is None:
                    self.failover(ch, f"UNAVAILABLE: {exc.details()}")
                err.__cause__ = exc
                if not self.retry.is_retryable(err):
                    raise err from exc
                left = None if deadline is None else deadline - loop.time()
                if left is not None and left <= 0:
                    raise self.gave_up(what, err) from exc
            finally:
                call.cancel()
            backoff = await self.pause_to_retry(backoff, deadline)

    def gave_up(self, what: str, last: EtcdkitError | None) -> EtcdkitError:
        if last is None:
            return EtcdTimeoutError(f"{what}: no answer from {self.where} within {self.timeout} s")
        err = type(last)(
            f"{what}: no etcd endpoint answered within {self.timeout} s ({self.where}; is etcd "
            f"running and reachable?); last error: {last}"
        )
        err.__cause__ = last
        return err
