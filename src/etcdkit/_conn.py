"""Connection plumbing: endpoint parsing, the grpc.aio channel, auth tokens, error mapping.

The generated etcd v3 messages and stubs come from ``aetcd.rpc`` (public there); everything
that decides behaviour (retries, streams, recovery) is ours.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio
from aetcd import rpc

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
)

__all__ = ["Connection", "Endpoint", "map_rpc_error", "parse_endpoints", "to_bytes"]

log = logging.getLogger("etcdkit.client")

T = TypeVar("T")
DEFAULT_ENDPOINT = "127.0.0.1:2379"
ENV_ENDPOINTS = "ETCDKIT_ENDPOINTS"

_CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.max_send_message_length", 2**31 - 1),
    # Detect dead peers (black-holed connections) within ~keepalive_time + timeout.
    ("grpc.keepalive_time_ms", 5_000),
    ("grpc.keepalive_timeout_ms", 3_000),
    # etcd's server policy rejects pings without active streams (GOAWAY too_many_pings).
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
    # Come back quickly after a restart; the default maximum is two minutes.
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 1_000),
    ("grpc.lb_policy_name", "round_robin"),
    ("grpc.enable_retries", 0),
]


def to_bytes(value: str | bytes, what: str) -> bytes:
    """Accept ``str`` (UTF-8 encoded) or ``bytes``; anything else is a TypeError."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise TypeError(f"{what} must be str or bytes, got {type(value).__name__}: {value!r:.80}")


def key_bytes(key: str | bytes, what: str = "key") -> bytes:
    raw = to_bytes(key, what)
    if not raw:
        raise ValueError(f"{what} must not be empty")
    return raw


def prefix_range_end(prefix: bytes) -> bytes:
    """The etcd range end that covers every key starting with ``prefix`` (byte-wise)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"  # all keys


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    tls: bool

    def __str__(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"


def parse_endpoints(endpoints: str | Sequence[str] | None) -> list[Endpoint]:
    """Parse "host:port", "http(s)://host:port", a list of them or a comma-separated string.

    ``None`` means ``$ETCDKIT_ENDPOINTS``, else 127.0.0.1:2379.
    """
    if endpoints is None:
        endpoints = os.environ.get(ENV_ENDPOINTS) or DEFAULT_ENDPOINT
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
            if scheme not in ("http", "https"):
                raise ValueError(f"endpoint {item!r}: scheme must be http or https")
            tls = scheme == "https"
        rest = rest.rstrip("/")
        if rest.startswith("["):  # [v6]:port
            host, _, port_s = rest[1:].partition("]:")
        else:
            host, sep, port_s = rest.rpartition(":")
            if not sep:
                host, port_s = rest, "2379"
        if not host or not port_s.isdigit() or not 0 < int(port_s) < 65536:
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


def _grpc_target(endpoints: list[Endpoint]) -> str:
    if len(endpoints) == 1 and not _is_ip(endpoints[0].host):
        return f"dns:///{endpoints[0].host}:{endpoints[0].port}"
    if all(_is_ip(e.host) for e in endpoints):
        v6 = [ipaddress.ip_address(e.host).version == 6 for e in endpoints]
        if all(v6):
            return "ipv6:" + ",".join(f"[{e.host}]:{e.port}" for e in endpoints)
        if not any(v6):
            return "ipv4:" + ",".join(f"{e.host}:{e.port}" for e in endpoints)
    raise ValueError(
        "several endpoints must all be IP addresses of one family (e.g. 127.0.0.1:2379,"
        f"127.0.0.1:22379); got {[str(e) for e in endpoints]}"
    )


def _read(path: str | os.PathLike[str] | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {what} file {os.fspath(path)!r}: {exc}") from exc


# -- error mapping -------------------------------------------------------------------------------


def map_rpc_error(exc: BaseException, where: str, what: str) -> EtcdkitError:
    """Convert a grpc error into the etcdkit hierarchy (callers ``raise ... from exc``)."""
    if not isinstance(exc, grpc.aio.AioRpcError):
        return ConnectionUnavailableError(f"{what} at {where} failed: {exc!r}")
    code = exc.code()
    details = exc.details() or ""
    msg = f"{what} at {where} failed: {code.name}: {details}"
    low = details.lower()
    if code == grpc.StatusCode.UNAVAILABLE:
        return ConnectionUnavailableError(msg + " (is etcd running and reachable?)")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return EtcdTimeoutError(msg)
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
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return InvalidArgumentError(msg + " (request or response too large)")
    return ServerError(msg)


def is_invalid_token(exc: BaseException) -> bool:
    return isinstance(exc, grpc.aio.AioRpcError) and "invalid auth token" in (exc.details() or "")


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


class Connection:
    """One grpc.aio channel over all endpoints, plus the auth token (fetched lazily)."""

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
            not isinstance(timeout, int | float)
            or isinstance(timeout, bool)
            or not 0 < timeout < math.inf
        ):
            raise ValueError(
                f"timeout must be a positive number of seconds or None, not {timeout!r}"
            )
        self.timeout = None if timeout is None else float(timeout)
        self._username = username
        self._password = password
        self._target = _grpc_target(self.endpoints)
        self._tls = self.endpoints[0].tls or ca_cert is not None or cert is not None
        self._ca = _read(ca_cert, "ca_cert")
        self._cert = _read(cert, "cert")
        self._key = _read(key, "key")
        self._token: str | None = None
        self._token_lock: asyncio.Lock | None = None
        self._channel: grpc.aio.Channel | None = None
        self._stubs: Stubs | None = None
        self.closed = False

    # -- lifecycle --------------------------------------------------------------------------------

    def open(self) -> None:
        """Create the channel (no network I/O: grpc connects lazily)."""
        if self._channel is not None:
            return
        options = list(_CHANNEL_OPTIONS)
        host = self.endpoints[0].host
        if self._tls:
            creds = grpc.ssl_channel_credentials(
                root_certificates=self._ca, private_key=self._key, certificate_chain=self._cert
            )
            options.append(("grpc.ssl_target_name_override", host))
            self._channel = grpc.aio.secure_channel(self._target, creds, options=options)
        else:
            self._channel = grpc.aio.insecure_channel(self._target, options=options)
        self._stubs = Stubs(self._channel)
        self._token_lock = asyncio.Lock()

    async def close(self) -> None:
        self.closed = True
        if self._channel is not None:
            await self._channel.close(grace=None)

    @property
    def stubs(self) -> Stubs:
        if self.closed:
            raise ClosedError("the etcdkit client is closed; create a new one")
        if self._stubs is None:
            raise ClosedError("the etcdkit client is not open; use 'async with AsyncClient()'")
        return self._stubs

    # -- auth -------------------------------------------------------------------------------------

    async def metadata(self, *, refresh: bool = False) -> list[tuple[str, str]]:
        """Call metadata: the auth token when a user is configured."""
        if self._username is None:
            return []
        assert self._token_lock is not None
        async with self._token_lock:
            if self._token is None or refresh:
                req = rpc.AuthenticateRequest(name=self._username, password=self._password)
                try:
                    resp = await self.stubs.auth.Authenticate(req, timeout=self.timeout)
                except grpc.aio.AioRpcError as exc:
                    err = map_rpc_error(exc, self.where, f"authenticate as {self._username!r}")
                    if not isinstance(err, ConnectionUnavailableError | EtcdTimeoutError):
                        err = AuthError(
                            f"authentication as {self._username!r} at {self.where} failed: "
                            f"{exc.details()} (check username and password)"
                        )
                    raise err from exc
                self._token = resp.token
        return [("token", self._token)]

    async def call(
        self,
        what: str,
        fn: Callable[..., Awaitable[T]],
        request: Any,
    ) -> T:
        """One unary RPC with the client's timeout, auth metadata and error mapping."""
        t = self.timeout
        md = await self.metadata()
        try:
            try:
                return await fn(request, timeout=t, metadata=md)
            except grpc.aio.AioRpcError as exc:
                if not is_invalid_token(exc):
                    raise
                md = await self.metadata(refresh=True)
                return await fn(request, timeout=t, metadata=md)
        except grpc.aio.AioRpcError as exc:
            raise map_rpc_error(exc, self.where, what) from exc
