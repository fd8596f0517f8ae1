"""AsyncClient: the connection, basic KV and leases, and the recipes as methods."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, overload

from aetcd import rpc

from etcdkit._conn import Connection, Stubs, key_bytes, prefix_range_end, to_bytes
from etcdkit._errors import ClosedError, InvalidArgumentError
from etcdkit._keepalive import KeepAliveHub
from etcdkit._snapshot import Transform, default_transform
from etcdkit._watchstream import WatchHub

if TYPE_CHECKING:
    from etcdkit._lease import PersistentLease
    from etcdkit._watch import PrefixWatch

__all__ = ["AsyncClient", "KeyValue", "LeaseGrant", "RangeResult"]

log = logging.getLogger("etcdkit.client")

K = TypeVar("K")
V = TypeVar("V")

DEFAULT_TIMEOUT = 5.0
DEFAULT_PAGE_SIZE = 1000


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key as stored in etcd."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    @classmethod
    def _from_pb(cls, kv: Any) -> KeyValue:
        return cls(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)


class RangeResult(NamedTuple):
    """What :meth:`AsyncClient.get_prefix` returns: the keys, and the revision they were read at."""

    kvs: list[KeyValue]
    revision: int


class LeaseGrant(NamedTuple):
    """A granted lease: its id and the TTL the server actually granted (seconds)."""

    id: int
    ttl: int


_PAGE_BYTES = 16 * 1024 * 1024


def _revision_arg(revision: int, what: str = "revision") -> int:
    if not isinstance(revision, int) or isinstance(revision, bool) or not 0 <= revision < 2**63:
        raise ValueError(f"{what} must be an int64 >= 0 (0 = latest), got {revision!r}")
    return revision


class AsyncClient:
    """An etcd v3 client on asyncio, with the etcdkit recipes.

    ``endpoints``: "host:port" or "http(s)://host:port", a list or a comma-separated string;
    default ``$ETCDKIT_ENDPOINTS``, else ``127.0.0.1:2379``. ``username``/``password`` enable
    etcd auth (a token is fetched on first use and refreshed when etcd says it is invalid).
    ``ca_cert``/``cert``/``key`` are PEM file paths for TLS. ``timeout`` is the per-request
    deadline in seconds for unary calls (``None``: no deadline).

    Use it as ``async with AsyncClient(...) as etcd:``; the constructor validates its arguments
    and does no I/O; gRPC connects lazily and reconnects by itself. Requests made while no
    endpoint answers raise :class:`ConnectionUnavailableError` at once; the recipes retry.
    One Watch stream and one LeaseKeepAlive stream are shared by everything this client watches
    or keeps alive.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str] | None = None,
        *,
        username: str | None = None,
        password: str | None = None,
        ca_cert: str | os.PathLike[str] | None = None,
        cert: str | os.PathLike[str] | None = None,
        key: str | os.PathLike[str] | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> None:
        self._conn = Connection(
            endpoints,
            username=username,
            password=password,
            ca_cert=ca_cert,
            cert=cert,
            key=key,
            timeout=timeout,
        )
        self._watch_hub: WatchHub | None = None
        self._keepalive_hub: KeepAliveHub | None = None
        self._lease_pool: Any = None  # etcdkit._lease.LeasePool, made by the first lease
        self._children: set[Any] = set()  # open watches and leases, closed with the client
        self._state = "unopened"

    def __repr__(self) -> str:
        return f"<AsyncClient endpoints={self._conn.where!r} state={self._state}>"

    # -- lifecycle --------------------------------------------------------------------------------

    async def __aenter__(self) -> AsyncClient:
        await self.connect()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the channel (no network round trip; gRPC connects on first use)."""
        if self._state == "closed":
            raise ClosedError("this AsyncClient was closed; create a new one")
        if self._state == "unopened":
            self._conn.open()
            self._watch_hub = WatchHub(self._conn)
            self._keepalive_hub = KeepAliveHub(self._conn)
            self._state = "open"

    async def close(self) -> None:
        """Close every watch and lease opened through this client, then the channel.

        Idempotent. Leases are revoked (bounded by the client timeout) when etcd is reachable.
        """
        if self._state == "closed":
            return
        was_open = self._state == "open"
        self._state = "closing"
        # All at once: during an outage each waits its bounded revoke/delete in parallel.
        await asyncio.gather(*(child.aclose() for child in list(self._children)))
        if self._watch_hub is not None:
            await self._watch_hub.close()
        if self._keepalive_hub is not None:
            await self._keepalive_hub.close()
        if was_open:
            await self._conn.close()
        self._state = "closed"

    aclose = close

    @property
    def endpoints(self) -> list[str]:
        return [str(e) for e in self._conn.endpoints]

    @property
    def raw(self) -> Stubs:
        """Escape hatch: ``.channel`` (grpc.aio) and the generated stubs ``.kv``, ``.watch``,
        ``.lease``, ``.cluster``, ``.maintenance``, ``.auth`` (messages in ``aetcd.rpc``).
        Pass ``metadata=await client.auth_metadata()`` when etcd auth is on."""
        return self._conn.stubs

    async def auth_metadata(self) -> list[tuple[str, str]]:
        return await self._conn.metadata()

    # internal accessors for the recipes
    @property
    def _watches(self) -> WatchHub:
        self._check_open()
        assert self._watch_hub is not None
        return self._watch_hub

    @property
    def _keepalives(self) -> KeepAliveHub:
        self._check_open()
        assert self._keepalive_hub is not None
        return self._keepalive_hub

    def _check_open(self) -> None:
        # "closing": children (leases) still revoke while the client closes them.
        if self._state not in ("open", "closing"):
            if self._state == "unopened":
                raise ClosedError("the client is not open: use 'async with AsyncClient(...)'")
            raise ClosedError("this AsyncClient is closed; create a new one")

    async def _call(self, what: str, method: str, stub: str, request: Any) -> Any:
        self._check_open()
        fn = getattr(getattr(self._conn.stubs, stub), method)
        return await self._conn.call(what, fn, request)

    # -- KV ---------------------------------------------------------------------------------------

    async def get(
        self, key: str | bytes, *, revision: int = 0, serializable: bool = False
    ) -> KeyValue | None:
        """The key's current entry (or at ``revision``), ``None`` when absent."""
        raw = key_bytes(key)
        req = rpc.RangeRequest(
            key=raw, revision=_revision_arg(revision), serializable=bool(serializable)
        )
        resp = await self._call(f"get {raw!r}", "Range", "kv", req)
        return KeyValue._from_pb(resp.kvs[0]) if resp.kvs else None

    async def get_revision(self) -> int:
        """The store's current revision (one cheap linearizable read)."""
        req = rpc.RangeRequest(key=b"\0", count_only=True)
        resp = await self._call("get revision", "Range", "kv", req)
        return int(resp.header.revision)

    async def get_prefix(
        self,
        prefix: str | bytes,
        *,
        revision: int = 0,
        page_size: int = DEFAULT_PAGE_SIZE,
        keys_only: bool = False,
    ) -> RangeResult:
        """Every key starting with ``prefix`` (a byte prefix), read page by page at one revision.

        With ``revision=0`` the first page fixes the revision; later pages are read at it, so
        the result is one consistent cut even for millions of keys. Raises
        :class:`CompactedError` if that revision is compacted while paging.
        """
        kvs: list[KeyValue] = []
        read_at = revision
        async for page, rev in self._pages(prefix, revision, page_size, keys_only=keys_only):
            kvs.extend(KeyValue._from_pb(kv) for kv in page)
            read_at = rev
        return RangeResult(kvs, read_at)

    async def _pages(
        self, prefix: str | bytes, revision: int, page_size: int, *, keys_only: bool = False
    ) -> AsyncIterator[tuple[Any, int]]:
        """Yield (protobuf kvs of one page, revision). Halves the page on a size error."""
        raw = to_bytes(prefix, "prefix")
        rev = _revision_arg(revision)
        if not isinstance(page_size, int) or page_size < 1:
            raise ValueError(f"page_size must be a positive int, got {page_size!r}")
        end = prefix_range_end(raw)
        start = raw if raw else b"\0"
        while True:
            req = rpc.RangeRequest(
                key=start, range_end=end, limit=page_size, revision=rev, keys_only=keys_only
            )
            try:
                resp = await self._call(f"get_prefix {raw!r}", "Range", "kv", req)
            except InvalidArgumentError as exc:
                if "too large" in str(exc) and page_size > 1:
                    page_size = max(1, page_size // 2)
                    continue
                raise
            if rev == 0:
                rev = resp.header.revision
            if page_size > 100 and resp.ByteSize() > _PAGE_BYTES:
                page_size //= 2  # big values: keep each message well below gRPC/etcd limits
            yield resp.kvs, rev
            if not resp.more or not resp.kvs:
                return
            start = resp.kvs[-1].key + b"\0"

    async def put(self, key: str | bytes, value: str | bytes, *, lease: int = 0) -> int:
        """Store ``key=value`` (attached to ``lease`` if non-zero); returns the new revision."""
        raw = key_bytes(key)
        req = rpc.PutRequest(key=raw, value=to_bytes(value, "value"), lease=_lease_arg(lease))
        resp = await self._call(f"put {raw!r}", "Put", "kv", req)
        return int(resp.header.revision)

    async def delete(self, key: str | bytes) -> bool:
        """Delete one key; ``True`` if it existed."""
        raw = key_bytes(key)
        resp = await self._call(
            f"delete {raw!r}", "DeleteRange", "kv", rpc.DeleteRangeRequest(key=raw)
        )
        return bool(resp.deleted)

    async def delete_prefix(self, prefix: str | bytes) -> int:
        """Delete every key starting with ``prefix``; returns how many were deleted."""
        raw = key_bytes(prefix, "prefix")
        req = rpc.DeleteRangeRequest(key=raw, range_end=prefix_range_end(raw))
        resp = await self._call(f"delete_prefix {raw!r}", "DeleteRange", "kv", req)
        return int(resp.deleted)

    async def compact(self, revision: int, *, physical: bool = False) -> None:
        """Compact the history up to ``revision`` (watches from older revisions must relist)."""
        if not isinstance(revision, int) or revision < 1:
            raise ValueError(f"revision must be a positive int, got {revision!r}")
        req = rpc.CompactionRequest(revision=revision, physical=physical)
        await self._call(f"compact to {revision}", "Compact", "kv", req)

    # -- leases -----------------------------------------------------------------------------------

    async def grant(self, ttl: int) -> LeaseGrant:
        """Grant a lease of ``ttl`` seconds; returns its id and the TTL the server granted."""
        if not isinstance(ttl, int) or isinstance(ttl, bool) or not 1 <= ttl < 2**63:
            raise ValueError(
                f"ttl must be a whole number of seconds >= 1 (and fit etcd's int64), got {ttl!r}"
            )
        resp = await self._call(
            f"grant lease ttl={ttl}", "LeaseGrant", "lease", rpc.LeaseGrantRequest(TTL=ttl)
        )
        if resp.error:
            raise InvalidArgumentError(f"lease grant refused by etcd: {resp.error}")
        return LeaseGrant(int(resp.ID), int(resp.TTL))

    async def revoke(self, lease_id: int) -> None:
        """Revoke a lease: every key attached to it is deleted at once."""
        req = rpc.LeaseRevokeRequest(ID=_lease_arg(lease_id))
        await self._call(f"revoke lease {lease_id:#x}", "LeaseRevoke", "lease", req)

    async def time_to_live(self, lease_id: int) -> int:
        """Remaining TTL of a lease in seconds; -1 when it does not exist."""
        req = rpc.LeaseTimeToLiveRequest(ID=_lease_arg(lease_id))
        resp = await self._call(f"ttl of lease {lease_id:#x}", "LeaseTimeToLive", "lease", req)
        return int(resp.TTL)

    # -- recipes ----------------------------------------------------------------------------------

    async def wait_for(
        self, key: str | bytes, exists: bool = True, timeout: float | None = None
    ) -> int:
        """Wait until ``key`` exists (or, with ``exists=False``, is absent).

        Returns the revision at which the condition was seen to hold. Returns at once if it
        already holds; else watches from the read's revision + 1 (no gap), through reconnects.
        Raises :class:`EtcdTimeoutError` (a ``TimeoutError``) after ``timeout`` seconds, and
        :class:`WatchEndedError` / :class:`PermissionDeniedError` if the watch ends otherwise.
        """
        from etcdkit._wait import wait_for

        return await wait_for(self, key, exists=exists, timeout=timeout)

    @overload
    def watch_prefix(self, prefix: str | bytes) -> PrefixWatch[str, bytes]: ...
    @overload
    def watch_prefix(
        self, prefix: str | bytes, transform: Transform[K, V]
    ) -> PrefixWatch[K, V]: ...
    def watch_prefix(
        self, prefix: str | bytes, transform: Transform[Any, Any] | None = None
    ) -> PrefixWatch[Any, Any]:
        """A live, exact view of every key under ``prefix`` (see :class:`PrefixWatch`).

        ``prefix`` is a *byte* prefix: "/a" also matches "/ab"; end it with "/" to mean a
        directory. ``transform(key, value) -> (K, V)``; records it rejects are dropped with a
        warning. Use as ``async with client.watch_prefix(...) as watch``.
        """
        from etcdkit._watch import PrefixWatch

        return PrefixWatch(self, prefix, transform or default_transform)

    def persistent_lease(
        self, key: str | bytes, value: str | bytes, ttl: int = 10, *, own_lease: bool = False
    ) -> PersistentLease:
        """Keep ``key=value`` in etcd under a lease while open (see :class:`PersistentLease`).

        Use as ``async with client.persistent_lease(key, value, ttl=10) as lease``. The
        client's PersistentLeases of one TTL share one etcd lease (one keepalive for all);
        ``own_lease=True`` gives this one an etcd lease of its own.
        """
        from etcdkit._lease import PersistentLease

        return PersistentLease(self, key, value, ttl, own_lease=own_lease)


def _lease_arg(lease: int) -> int:
    if not isinstance(lease, int) or isinstance(lease, bool) or not 0 <= lease < 2**63:
        raise ValueError(f"lease must be a lease id (int64 >= 0, 0 = none), got {lease!r}")
    return lease
