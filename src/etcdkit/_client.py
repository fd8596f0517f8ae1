"""AsyncClient: the public face that wires the core (connection, KV, watch hub, sessions) and
the recipes (wait_for, watch_prefix, persistent_lease)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from etcdkit._core import Core, CoreState
from etcdkit._errors import CompactedError
from etcdkit._metrics import ClientStats
from etcdkit._retry import RetryPolicy
from etcdkit._snapshot import Transform, default_transform
from etcdkit._types import (
    DEFAULT_OPEN_TIMEOUT,
    Compare,
    DeleteResult,
    KeyValue,
    KeyValueLike,
    LeaseGrant,
    LeaseInfo,
    Op,
    PutResult,
    RangeResult,
    ResponseHeader,
    SortOrder,
    SortTarget,
    TxnResult,
    WatchFilter,
    check_int64,
    key_bytes,
    range_end_of,
    to_bytes,
)
from etcdkit._watch import Watch
from etcdkit._wire.conn import Connection, Stubs
from etcdkit._wire.keepalive import KeepAlive
from etcdkit.recipes.election import Election
from etcdkit.recipes.lock import Lock
from etcdkit.recipes.persistent_lease import PersistentLease
from etcdkit.recipes.prefix_watch import PrefixWatch
from etcdkit.recipes.session import Session, SessionPool, SessionState
from etcdkit.recipes.stm import DEFAULT_ATTEMPTS as DEFAULT_STM_ATTEMPTS
from etcdkit.recipes.stm import Isolation, Stm, run_stm
from etcdkit.recipes.wait import wait_for

if TYPE_CHECKING:  # imported where used: an asyncio program that never asks pays nothing
    from etcdkit._wire.admin import Auth, Maintenance, Members
    from etcdkit.cluster import EtcdBackedCluster
    from etcdkit.naming.endpoints import EndpointManager
    from etcdkit.recipes.barrier import Barrier
    from etcdkit.recipes.counter import Counter
    from etcdkit.recipes.double_barrier import DoubleBarrier
    from etcdkit.recipes.priority_queue import PriorityQueue
    from etcdkit.recipes.queue import Queue
    from etcdkit.recipes.rwlock import RWLock
    from etcdkit.recipes.semaphore import Semaphore

__all__ = ["DEFAULT_TIMEOUT", "AsyncClient"]

K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")

DEFAULT_TIMEOUT = 5.0
_NO_INTS = (0, 0, 0, 0, 0, 0)  # range()'s int options, all unset
_INT_TYPES = (int, int, int, int, int, int)


class AsyncClient:
    """An etcd v3 client on asyncio, with the etcdkit recipes.

    ``endpoints``: "host:port" or "http(s)://host:port", a list or a comma-separated string;
    default ``$ETCDKIT_ENDPOINTS``, else ``127.0.0.1:2379``. ``username``/``password`` enable
    etcd auth (a token is fetched on first use and refreshed when etcd says it is invalid).
    ``ca_cert``/``cert``/``key`` are PEM file paths for TLS. ``timeout`` is the per-request
    deadline in seconds for unary calls (``None``: no deadline). ``retry`` is the
    :class:`RetryPolicy` every call and recipe follows.

    Use it as ``async with AsyncClient(...) as etcd:`` in one event loop; the constructor
    validates its arguments and does no I/O. Within its timeout a call waits for a ready
    endpoint and retries what is safe (reads, and writes that provably never left), failing
    over between endpoints; then it raises :class:`ConnectionUnavailableError` naming them.
    One Watch stream and one LeaseKeepAlive stream are shared by everything this client
    watches or keeps alive. ``close()`` ends everything in flight with :class:`ClosedError`.
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
        retry: RetryPolicy | None = None,
    ) -> None:
        conn = Connection(
            endpoints,
            username=username,
            password=password,
            ca_cert=ca_cert,
            cert=cert,
            key=key,
            timeout=timeout,
            retry=RetryPolicy() if retry is None else retry,
        )
        self._core = Core(conn)
        # one session per TTL shared by its users; closed after what the client adopted
        self._sessions = SessionPool(self)
        self._core.after_children.append(self._sessions.close)

    def __repr__(self) -> str:
        return f"<AsyncClient endpoints={self._core.where!r} state={self._core.state.value}>"

    # -- lifecycle --------------------------------------------------------------------------------

    async def __aenter__(self) -> AsyncClient:
        await self.connect()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the channels (no network round trip; gRPC connects on first use)."""
        self._core.open()

    async def close(self) -> None:
        """Close every watch, lease and session opened through this client, then the channels.

        Idempotent. Leases are revoked (bounded) when etcd is reachable. Every call, wait,
        watch and lease still in flight ends promptly with :class:`ClosedError`.
        """
        await self._core.close()

    aclose = close

    @property
    def core(self) -> Core:
        """The core the recipes run on (for etcdkit's own recipe classes)."""
        return self._core

    @property
    def endpoints(self) -> list[str]:
        """The etcd endpoints this client talks to, as URLs."""
        return [str(e) for e in self._core.conn.endpoints]

    @property
    def retry(self) -> RetryPolicy:
        """The :class:`RetryPolicy` every call and recipe of this client follows (recipes use
        it for their own backoff)."""
        return self._core.retry

    @property
    def stats(self) -> ClientStats:
        """Calls made, errors by class, failovers, and reconnects of the shared Watch and
        LeaseKeepAlive streams, so far: a :class:`ClientStats` snapshot (no I/O)."""
        return self._core.stats()

    @property
    def raw(self) -> Stubs:
        """Escape hatch: ``.channel`` (grpc.aio) and the generated stubs ``.kv``, ``.watch``,
        ``.lease``, ``.cluster``, ``.maintenance``, ``.auth`` (messages in ``aetcd.rpc``) of the
        preferred endpoint. Pass ``metadata=await client.auth_metadata()`` when auth is on."""
        return self._core.conn.stubs

    def adopt(self, child: object, close: Callable[[], Awaitable[None]]) -> None:
        """For recipes that own background work: when this client closes, it ends ``child`` by
        awaiting ``close()`` (before its streams and channels close, so ``close`` may still
        call etcd, bounded). Raises :class:`ClosedError` on a closed client."""
        self._core.adopt(child, close)

    def disown(self, child: object) -> None:
        """Forget a child adopted with :meth:`adopt` (it closed by itself). Idempotent."""
        self._core.disown(child)

    async def auth_metadata(self) -> list[tuple[str, str]]:
        """The call metadata (auth token) for raw stub calls; empty without auth."""
        self._core.check_open()
        return await self._core.conn.metadata()

    # -- administration: one object per etcd service, made on first use (no I/O) ---------------

    _members: Members | None = None
    _maintenance: Maintenance | None = None
    _auth: Auth | None = None

    @property
    def members(self) -> Members:
        """The cluster's members (:class:`Members`: ``list``, ``add``, ``remove``, ``update``,
        ``promote``). No I/O here; the same object every time."""
        if self._members is None:
            from etcdkit._wire.admin import Members

            self._members = Members(self._core)
        return self._members

    @property
    def maintenance(self) -> Maintenance:
        """Per-member maintenance (:class:`Maintenance`: ``status``, ``alarms``, ``disarm``,
        ``defragment``, ``hash``, ``hash_kv``, ``move_leader``, ``snapshot``). No I/O here."""
        if self._maintenance is None:
            from etcdkit._wire.admin import Maintenance

            self._maintenance = Maintenance(self._core)
        return self._maintenance

    @property
    def auth(self) -> Auth:
        """Users, roles, permissions, and auth on or off (:class:`Auth`). No I/O here."""
        if self._auth is None:
            from etcdkit._wire.admin import Auth

            self._auth = Auth(self._core)
        return self._auth

    # -- KV ---------------------------------------------------------------------------------------

    async def get(
        self, key: str | bytes, *, revision: int = 0, serializable: bool = False
    ) -> KeyValue | None:
        """The key's current entry (or at ``revision``), ``None`` when absent."""
        self._core.check_open()
        kv, _rev = await self._core.kv.get(key, revision=revision, serializable=serializable)
        return kv

    async def get_revision(self) -> int:
        """The store's current revision (one cheap linearizable read, of the key ``"\\0"``:
        with etcd's auth on, a user whose roles do not let it read that key gets
        :class:`PermissionDeniedError`; the header of any read it may make, e.g.
        ``(await etcd.range(key, count_only=True)).header.revision``, says the same)."""
        self._core.check_open()
        return await self._core.kv.revision()

    async def get_prefix(
        self,
        prefix: str | bytes,
        *,
        revision: int = 0,
        page_size: int | None = None,
        keys_only: bool = False,
    ) -> RangeResult:
        """Every key starting with ``prefix`` (a byte prefix), read page by page at one revision.

        With ``revision=0`` the first page fixes the revision; later pages are read at it, so
        the result is one consistent cut even for millions of keys. ``page_size``: keys per
        page, or ``None`` (default) for a first page of 10,000 keys (their size is not known
        before), then pages of a few MB each. Raises :class:`CompactedError`
        if that revision is compacted while paging.
        """
        self._core.check_open()
        kvs: list[KeyValue] = []
        read_at = revision
        header: ResponseHeader | None = None
        pages = self._core.kv.pages(
            prefix, revision=revision, page_size=page_size, keys_only=keys_only
        )
        async with contextlib.aclosing(pages):
            async for page, rev, page_header in pages:
                kvs.extend(page)
                read_at, header = rev, page_header
        return RangeResult(kvs, read_at, len(kvs), False, header)

    def get_prefix_pages(
        self,
        prefix: str | bytes,
        *,
        revision: int = 0,
        page_size: int | None = None,
        keys_only: bool = False,
    ) -> AsyncGenerator[tuple[Sequence[KeyValueLike], int], None]:
        """Every key starting with ``prefix``, page by page, all pages at one revision: an async
        iterator of ``(kvs, revision)``. What :meth:`get_prefix` reads, without holding it all
        at once and without an object made per key: each entry is read straight from etcd's
        answer (a :class:`KeyValueLike`, read-only). The next page is requested while you
        handle this one. Use ``async with contextlib.aclosing(etcd.get_prefix_pages(p)) as
        pages:`` when you may stop early. Raises :class:`CompactedError` if ``revision`` is
        compacted while paging. Its arguments are checked at the call."""
        self._core.check_open()
        self._core.kv.check_pages(prefix, revision, page_size, keys_only)
        return self._prefix_pages(prefix, revision, page_size, keys_only)

    async def _prefix_pages(
        self, prefix: str | bytes, revision: int, page_size: int | None, keys_only: bool
    ) -> AsyncGenerator[tuple[Sequence[KeyValueLike], int], None]:
        async with contextlib.aclosing(
            self._core.kv.record_pages(
                prefix, revision=revision, page_size=page_size, keys_only=keys_only
            )
        ) as pages:
            async for page in pages:
                yield page

    async def range(
        self,
        key: str | bytes,
        range_end: str | bytes | None = None,
        *,
        prefix: bool = False,
        revision: int = 0,
        limit: int = 0,
        sort_order: SortOrder | None = None,
        sort_target: SortTarget = "key",
        serializable: bool = False,
        keys_only: bool = False,
        count_only: bool = False,
        min_mod_revision: int = 0,
        max_mod_revision: int = 0,
        min_create_revision: int = 0,
        max_create_revision: int = 0,
    ) -> RangeResult:
        """etcd's Range, with every option: one key, the keys in ``[key, range_end)``, or with
        ``prefix=True`` every key starting with ``key`` (``range_end=b"\\0"``: every key from
        ``key`` on; from ``""`` on, every key). A whole prefix (no ``limit``, sort, filter,
        ``serializable`` or ``count_only``) is read as :meth:`get_prefix` reads it, in pages
        at one revision: the same result as one Range at that revision, sooner and in less
        memory for a big prefix.

        ``revision``: read at that revision (0: the latest). ``limit``: at most that many keys
        (0: all; ``more`` says whether some were left out, ``count`` how many the range holds).
        ``sort_order`` ``"ascend"``/``"descend"`` by ``sort_target`` ``"key"``, ``"version"``,
        ``"create"``, ``"mod"`` or ``"value"``. ``serializable``: the member's own state, not
        the leader's (faster, possibly behind). ``keys_only``: no values; ``count_only``: no
        keys. ``min_/max_mod_revision`` and ``min_/max_create_revision`` filter (0: no bound).
        One request: use :meth:`get_prefix` for a big prefix read page by page. (Plain reads
        of one key asked for while another is in flight go out together, in read-only
        transactions of up to 128, each read still answered as it would be alone; not on
        etcd 3.5.0-3.5.4, which panics when such a transaction is cut short: etcd-io/etcd#14110;
        the versions are asked again whenever a connection changed.)
        Returns :class:`RangeResult` ``(kvs, revision, count, more, header)``. Raises
        :class:`CompactedError` for a compacted ``revision``; ``TypeError``/``ValueError`` for
        bad arguments, before any I/O.
        """
        ints = (
            revision,
            limit,
            min_mod_revision,
            max_mod_revision,
            min_create_revision,
            max_create_revision,
        )
        if (
            range_end is None
            and prefix is False
            and sort_order is None
            and sort_target == "key"
            and serializable is False
            and keys_only is False
            and count_only is False
            and ints == _NO_INTS
            and tuple(map(type, ints)) == _INT_TYPES  # (not False, nor 0.0)
        ):
            # A plain read of one key: reads of many keys asked for together go out in
            # transactions of up to 128 (wait_for in bulk; see KV.get_coalesced). Its
            # arguments are checked here, and no Op is made (ten thousand of them add up).
            raw = key_bytes(key)
            self._core.check_open()
            return await self._core.kv.get_coalesced(raw)
        op = Op.range(
            key,
            range_end,
            prefix=prefix,
            revision=revision,
            limit=limit,
            sort_order=sort_order,
            sort_target=sort_target,
            serializable=serializable,
            keys_only=keys_only,
            count_only=count_only,
            min_mod_revision=min_mod_revision,
            max_mod_revision=max_mod_revision,
            min_create_revision=min_create_revision,
            max_create_revision=max_create_revision,
        )
        self._core.check_open()
        if (
            prefix
            and op.limit == 0
            and op.sort_order is None
            and op.sort_target == "key"
            and not (op.serializable or op.count_only)
            and op.min_mod_revision == op.max_mod_revision == 0
            and op.min_create_revision == op.max_create_revision == 0
        ):
            return await self._whole_prefix(op)
        return await self._core.kv.range(op)

    async def _whole_prefix(self, op: Op) -> RangeResult:
        """A whole prefix read as :meth:`get_prefix` reads it: in pages at one revision, each
        page made into ``KeyValue``s while etcd reads the next (a big listing is then faster,
        and never held twice at once), the result as one Range's. A compaction of the
        revision it chose, between two pages, and it is read as one Range."""
        kvs: list[KeyValue] = []
        read_at, header = op.revision, None
        every = (op.key, op.range_end) == (b"\0", b"\0")  # (prefix "": etcd's key is b"\0")
        pages = self._core.kv.pages(
            b"" if every else op.key, revision=op.revision, keys_only=op.keys_only, what="range"
        )
        try:
            async with contextlib.aclosing(pages):
                async for page, rev, page_header in pages:
                    kvs.extend(page)
                    if header is None:
                        read_at, header = rev, page_header
        except CompactedError:
            if op.revision:
                raise
            return await self._core.kv.range(op)
        return RangeResult(kvs, read_at, len(kvs), False, header)

    @overload
    async def put(
        self,
        key: str | bytes,
        value: str | bytes,
        *,
        lease: int = 0,
        prev_kv: Literal[False] = False,
        ignore_value: bool = False,
        ignore_lease: bool = False,
    ) -> int: ...
    @overload
    async def put(
        self,
        key: str | bytes,
        value: str | bytes,
        *,
        lease: int = 0,
        prev_kv: Literal[True],
        ignore_value: bool = False,
        ignore_lease: bool = False,
    ) -> PutResult: ...
    async def put(
        self,
        key: str | bytes,
        value: str | bytes,
        *,
        lease: int = 0,
        prev_kv: bool = False,
        ignore_value: bool = False,
        ignore_lease: bool = False,
    ) -> int | PutResult:
        """Store ``key=value``, attached to ``lease`` if non-zero. Returns the new revision; with
        ``prev_kv=True``, a :class:`PutResult` ``(revision, prev_kv, header)`` whose
        ``prev_kv`` is the entry before the put (``None`` if the key was new).

        ``ignore_value=True`` (with ``value=b""``) keeps the key's value and changes only its
        lease; ``ignore_lease=True`` (with ``lease=0``) keeps its lease and changes only its
        value. Both need the key to exist: etcd refuses them otherwise
        (:class:`InvalidArgumentError`).
        """
        if prev_kv is False and ignore_value is False and ignore_lease is False:
            # The common write, checked as Op.put checks it, with no Op and no PutResult
            lid = check_int64(lease, "lease", hint=" (a lease id, 0 = none)")
            raw, data = key_bytes(key), to_bytes(value, "value")
            self._core.check_open()
            return await self._core.kv.put_plain(raw, data, lid)
        op = Op.put(
            key,
            value,
            lease=lease,
            prev_kv=prev_kv,
            ignore_value=ignore_value,
            ignore_lease=ignore_lease,
        )
        self._core.check_open()
        result = await self._core.kv.put(op)
        return result if prev_kv else result.revision

    async def delete(self, key: str | bytes) -> bool:
        """Delete one key; ``True`` if it existed."""
        self._core.check_open()
        return bool(await self._core.kv.delete(key))

    async def delete_prefix(self, prefix: str | bytes) -> int:
        """Delete every key starting with ``prefix``; returns how many were deleted."""
        self._core.check_open()
        return await self._core.kv.delete(prefix, prefix=True)

    async def delete_range(
        self,
        key: str | bytes,
        range_end: str | bytes | None = None,
        *,
        prefix: bool = False,
        prev_kv: bool = False,
    ) -> DeleteResult:
        """etcd's DeleteRange: one key, the keys in ``[key, range_end)``, or with
        ``prefix=True`` every key starting with ``key``. Returns :class:`DeleteResult`
        ``(deleted, prev_kvs, header)``; ``prev_kvs`` holds the deleted entries when asked for
        with ``prev_kv=True``."""
        op = Op.delete_range(key, range_end, prefix=prefix, prev_kv=prev_kv)
        self._core.check_open()
        return await self._core.kv.delete_range(op)

    async def compact(self, revision: int, *, physical: bool = False) -> None:
        """Compact the history up to ``revision`` (watches from older revisions must relist)."""
        self._core.check_open()
        await self._core.kv.compact(revision, physical=physical)

    async def txn(
        self,
        compare: Sequence[Compare] = (),
        success: Sequence[Op] = (),
        failure: Sequence[Op] = (),
    ) -> TxnResult:
        """One atomic transaction: if every :class:`Compare` holds, run the ``success``
        operations, else the ``failure`` ones (each an :class:`Op`). Returns
        :class:`TxnResult` ``(succeeded, revision, responses)``, one response per operation
        run: :class:`RangeResult` for get/range, :class:`PutResult`, :class:`DeleteResult`.
        """
        self._core.check_open()
        return await self._core.kv.txn(compare, success, failure)

    # -- leases -----------------------------------------------------------------------------------

    async def grant(self, ttl: int, *, lease_id: int = 0) -> LeaseGrant:
        """Grant a lease of ``ttl`` seconds; returns its id and the TTL the server granted.
        ``lease_id`` asks for that id (0: etcd chooses); etcd refuses an id in use
        (:class:`ServerError`)."""
        self._core.check_open()
        return await self._core.kv.grant(ttl, lease_id)

    async def revoke(self, lease_id: int) -> None:
        """Revoke a lease: every key attached to it is deleted at once. Also while the client
        closes (what it closes, sessions first, revokes its leases then). Raises
        :class:`LeaseNotFoundError` when etcd has no such lease (expired, revoked), also when
        it was this call's own first attempt that revoked it: a revoke whose answer was lost
        (the connection ended) is sent again, as Go's client does, and the second finds it
        gone."""
        self._core.check_open(closing_ok=True)
        await self._core.kv.revoke(lease_id)

    async def time_to_live(self, lease_id: int) -> int:
        """Remaining TTL of a lease in seconds; -1 when it does not exist."""
        self._core.check_open()
        return await self._core.kv.time_to_live(lease_id)

    async def leases(self) -> list[int]:
        """The ids of every lease etcd holds (granted by anyone, not yet expired or revoked)."""
        self._core.check_open()
        return await self._core.kv.leases()

    async def lease_info(self, lease_id: int, *, keys: bool = False) -> LeaseInfo:
        """A lease as etcd sees it: :class:`LeaseInfo` ``(id, ttl, granted_ttl, keys)``, the
        keys attached to it listed when ``keys=True``. Raises :class:`LeaseNotFoundError` when
        the lease does not exist (expired or revoked)."""
        self._core.check_open()
        return await self._core.kv.lease_info(lease_id, keys=keys)

    async def keep_alive_once(self, lease_id: int) -> int:
        """Renew a lease once (one keepalive on a stream of its own); returns the TTL it was
        renewed to. Raises :class:`LeaseNotFoundError` when the lease does not exist. To keep a
        lease alive, use :meth:`keep_alive` or :meth:`session`."""
        self._core.check_open()
        return await self._core.kv.keep_alive_once(lease_id)

    def keep_alive(self, lease_id: int, *, ttl: int | None = None) -> KeepAlive:
        """Keep a lease alive until cancelled (Go's ``Lease.KeepAlive``): ``async with
        etcd.keep_alive(lease_id) as ka: async for status in ka:``, each status a
        :class:`KeepAliveStatus` ``(ttl, suspended)``. Every lease of a client is renewed on
        one shared LeaseKeepAlive stream, about every third of its TTL. ``ttl``: the TTL it
        was granted with (its first renewal is then due a third of it later; ``None``: renew
        at once and learn it from etcd's answer). The iteration raises
        :class:`LeaseNotFoundError` once the lease is gone, :class:`ClosedError` when the
        client closes; ``cancel()`` stops renewing (the lease is not revoked). One keepalive
        per lease and client (a second raises ``ValueError`` while the first runs). See
        :class:`KeepAlive`."""
        self._core.check_open()
        return KeepAlive(self._core.keepalives, lease_id, ttl)

    def session(self, ttl: int = 60) -> Session:
        """A lease session (Go's ``concurrency.Session``): ``await client.session(10)`` or
        ``async with client.session(10) as s`` grants one etcd lease and keeps it alive on the
        client's shared keepalive stream until closed. See :class:`Session`."""
        self._core.check_open()
        session = self._sessions.new(ttl)
        core = self._core
        core.adopt(session, session.close)  # closing the client closes (revokes) it

        def forget(state: SessionState) -> None:
            if state is SessionState.LOST:  # (a closed one disowns itself once its close ended)
                core.disown(session)

        session.add_listener(forget)
        return session

    async def shared_session(self, user: object, ttl: int) -> Session:
        """The client's shared session of ``ttl`` seconds, open and alive: one etcd lease and
        one keepalive for every ``user`` that asks for that TTL (a thousand registrations cost
        one keepalive per ttl/3, as the keys of one Go ``concurrency.Session`` do). Do not
        close it: hand it back with :meth:`release_session` when ``user`` is done. If it was
        LOST, ask again: the next user gets a new one."""
        self._core.check_open()
        return await self._sessions.acquire(user, ttl)

    def release_session(self, user: object, session: Session) -> bool:
        """``user`` leaves ``session`` (from :meth:`shared_session`, or its own): ``True``
        when no user is left on it, and the caller should then close it (which revokes its
        lease); ``False`` while others still hang on it. Idempotent."""
        return self._sessions.release(user, session)

    @property
    def closed(self) -> bool:
        """``True`` once :meth:`close` has finished (while it runs, what the client
        :meth:`adopt`-ed is being closed and may still call etcd)."""
        return self._core.state is CoreState.CLOSED

    # -- recipes ----------------------------------------------------------------------------------

    def watch(
        self,
        key: str | bytes,
        range_end: str | bytes | None = None,
        *,
        prefix: bool = False,
        start_revision: int = 0,
        prev_kv: bool = False,
        filters: Sequence[WatchFilter] = (),
        progress_notify: bool = False,
    ) -> Watch:
        """etcd's event stream on one key, the keys in ``[key, range_end)``, or with
        ``prefix=True`` every key starting with ``key``: ``async with etcd.watch(...) as w:
        async for batch in w:``, each batch a :class:`WatchBatch` ``(revision, events)`` of
        :class:`WatchEvent` ``(type, kv, prev_kv)``.

        ``start_revision``: the first revision to deliver (0: changes after the block is
        entered). ``prev_kv``: each event carries the entry before it. ``filters``:
        ``"noput"`` and/or ``"nodelete"`` leave those events out. ``progress_notify``: etcd's
        progress notifications arrive as batches with no events. Resumes after faults with no
        event lost or repeated; see :class:`Watch` for the errors it ends with. Every watch of
        a client shares one Watch stream.
        """
        if range_end is None and prefix is False:
            raw, end = key_bytes(key), b""  # (one key: what wait_for asks, by the thousand)
        else:
            raw, end = range_end_of(key, range_end, prefix)
            if end != b"\0" and raw >= end:  # (etcd would end it: "watcher range is empty")
                raise ValueError(
                    f"range_end {end!r:.60} must be greater than key {raw!r:.60}: the watch "
                    "would cover no key (b'\\0': every key from key on)"
                )
        self._core.check_loop()
        return Watch(
            self._core,
            raw,
            end,
            start_revision=start_revision,
            prev_kv=prev_kv,
            filters=filters,
            progress_notify=progress_notify,
        )

    async def wait_for(
        self, key: str | bytes, exists: bool = True, timeout: float | None = None
    ) -> int:
        """Wait until ``key`` exists (or, with ``exists=False``, is absent).

        Returns the revision at which the condition was seen to hold. Returns at once if it
        already holds; else watches from the read's revision + 1 (no gap), through reconnects.
        Raises :class:`EtcdTimeoutError` (a ``TimeoutError``) after ``timeout`` seconds,
        :class:`ClosedError` if the client closes meanwhile, and :class:`WatchEndedError` /
        :class:`PermissionDeniedError` if the watch ends otherwise. ``timeout=0`` makes one
        read and answers from it: :class:`EtcdTimeoutError` at once if the condition does not
        hold; with etcd unreachable, that read raises the client's own error (e.g.
        :class:`ConnectionUnavailableError`) within the client's timeout, as ``lock(name,
        timeout=0)`` does.
        """
        return await wait_for(self, key, exists=exists, timeout=timeout)  # (its read checks)

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
        self._core.check_loop()
        return PrefixWatch(self, prefix, transform or default_transform)

    def persistent_lease(
        self, key: str | bytes, value: str | bytes, ttl: int = 10, *, own_lease: bool = False
    ) -> PersistentLease:
        """Keep ``key=value`` in etcd under a lease while open (see :class:`PersistentLease`).

        Use as ``async with client.persistent_lease(key, value, ttl=10) as lease``. The
        client's PersistentLeases of one TTL share one etcd lease (one keepalive for all);
        ``own_lease=True`` gives this one an etcd lease of its own.
        """
        self._core.check_loop()
        return PersistentLease(self, key, value, ttl, own_lease=own_lease)

    def election(self, name: str | bytes) -> Election:
        """The leader election on the keys under ``name + "/"``, with Go's and ``etcdctl
        elect``'s layout: ``async with election.campaign(value) as leadership``, ``await
        election.leader()``, ``async for leader in election.observe()`` (see :class:`Election`).
        """
        self._core.check_loop()
        return Election(self, name)

    def lock(self, name: str | bytes, ttl: int = 10, timeout: float | None = 30) -> Lock:
        """The lock on the keys under ``name + "/"``, with Go's and ``etcdctl lock``'s layout:
        ``async with client.lock(name) as lock`` waits up to ``timeout`` seconds; guard the
        writes it protects with ``lock.guard()`` in a txn (see :class:`Lock`)."""
        self._core.check_loop()
        return Lock(self, name, ttl, timeout)

    # -- recipes of etcdkit.recipes and etcdkit.naming (factories: no I/O) ----------------------

    def endpoint_manager(self, target: str) -> EndpointManager:
        """The endpoints of the gRPC target *target*, as Go's ``endpoints.NewManager(client,
        target)`` keeps them: ``add`` / ``delete`` / ``list``, ``watch()`` and
        ``register(addr)`` (see :class:`etcdkit.naming.EndpointManager`). Go's ``etcd:///``
        resolver finds what it registers. Raises TypeError / ValueError for a bad target."""
        self._core.check_loop()
        from etcdkit.naming.endpoints import EndpointManager

        return EndpointManager(self, target)

    def queue(self, name: str | bytes) -> Queue:
        """The FIFO queue on the keys under ``name + "/"``, with Go's ``recipe.Queue`` layout:
        ``await q.put(value)``, ``await q.get(timeout=None)``; each item goes to exactly one
        consumer, at most once (see :class:`Queue`)."""
        self._core.check_loop()
        from etcdkit.recipes.queue import Queue

        return Queue(self, name)

    def priority_queue(self, name: str | bytes) -> PriorityQueue:
        """The priority queue on the keys under ``name + "/"``, with Go's
        ``recipe.PriorityQueue`` layout: ``await pq.put(value, priority)`` (0..65535, lower
        first), ``await pq.get(timeout=None)`` (see :class:`PriorityQueue`)."""
        self._core.check_loop()
        from etcdkit.recipes.priority_queue import PriorityQueue

        return PriorityQueue(self, name)

    def counter(self, key: str | bytes) -> Counter:
        """The integer in ``key`` (decimal ASCII): ``await c.add(n)`` returns the new value,
        ``await c.value()`` reads it; no update is lost under contention (see
        :class:`Counter`)."""
        self._core.check_loop()
        from etcdkit.recipes.counter import Counter

        return Counter(self, key)

    async def stm(
        self,
        fn: Callable[[Stm], Awaitable[T]],
        isolation: Isolation = "serializable_snapshot",
        *,
        prefetch: Sequence[str | bytes] = (),
        attempts: int = DEFAULT_STM_ATTEMPTS,
    ) -> T:
        """Run ``async def fn(stm)`` as one transaction (Go's ``concurrency.NewSTM``) and
        return its result.

        ``fn`` reads with ``await stm.get(key)`` (``None``: no such key) and writes with
        ``stm.put(key, value)`` / ``stm.delete(key)``, buffered until the commit: one
        transaction that applies the writes only if the reads still hold by the rules of
        ``isolation`` (``"serializable_snapshot"``, ``"serializable"``,
        ``"repeatable_reads"`` or ``"read_committed"``: see :mod:`etcdkit.recipes.stm`). On a
        conflict ``fn`` runs again on fresh reads (so keep it free of other side effects), up
        to ``attempts`` times in all, then :class:`ConflictError`. ``prefetch`` keys are read
        before ``fn`` runs, in one round trip.

        An exception of ``fn`` propagates and nothing is written. A read that fails with a
        retryable error runs ``fn`` again. A commit that goes unanswered is sent again (its
        compares let one copy apply at most); if that cannot settle it,
        :class:`OutcomeUnknownError` (the writes may or may not have been applied; ``fn`` is
        not run again)."""
        self._core.check_loop()
        return await run_stm(self, fn, isolation, prefetch=prefetch, attempts=attempts)

    def semaphore(
        self, name: str | bytes, permits: int, ttl: int = 10, timeout: float | None = 30
    ) -> Semaphore:
        """A counting semaphore on the keys under ``name + "/"``: at most ``permits`` holders
        at once, first come, first served. ``async with etcd.semaphore(name, 3) as permit:``
        waits up to ``timeout`` seconds (``0``: only a free permit) for a :class:`Permit` of its
        own; guard the writes it protects with ``permit.guard()`` (see :class:`Semaphore`)."""
        self._core.check_loop()
        from etcdkit.recipes.semaphore import Semaphore

        return Semaphore(self, name, permits, ttl=ttl, timeout=timeout)

    def rwlock(self, name: str | bytes, ttl: int = 10, timeout: float | None = 30) -> RWLock:
        """The read-write lock on the keys under ``name + "/"``, with Go's ``RWMutex`` layout:
        ``async with rw.read():`` shares it with other readers, ``async with rw.write():``
        holds it alone (see :class:`RWLock`)."""
        self._core.check_loop()
        from etcdkit.recipes.rwlock import RWLock

        return RWLock(self, name, ttl=ttl, timeout=timeout)

    def barrier(self, name: str | bytes) -> Barrier:
        """The barrier on the key ``name``, with Go's ``Barrier`` layout: ``hold()``,
        ``release()``, and ``wait()`` until it is released (see :class:`Barrier`)."""
        self._core.check_loop()
        from etcdkit.recipes.barrier import Barrier

        return Barrier(self, name)

    def double_barrier(self, name: str | bytes, count: int, ttl: int = 10) -> DoubleBarrier:
        """One participant of the double barrier of ``count`` under ``name + "/"``, with Go's
        ``DoubleBarrier`` layout: ``enter()`` returns once ``count`` are in, ``leave()`` once
        all are out (see :class:`DoubleBarrier`)."""
        self._core.check_loop()
        from etcdkit.recipes.double_barrier import DoubleBarrier

        return DoubleBarrier(self, name, count, ttl=ttl)

    def cluster(
        self, root: str, ttl: int = 10, *, timeout: float | None = DEFAULT_OPEN_TIMEOUT
    ) -> EtcdBackedCluster:
        """The members of the cluster under ``root``, and the means to join it.

        Use as ``async with client.cluster("/services/api", ttl=10) as cluster``: it returns
        once the first view of the members is loaded, or raises :class:`EtcdTimeoutError`
        after ``timeout`` seconds. Members are kept by PersistentLeases of ``ttl`` seconds.
        See :class:`etcdkit.cluster.EtcdBackedCluster`.
        """
        self._core.check_loop()
        from etcdkit.cluster import EtcdBackedCluster

        return EtcdBackedCluster(self, root, ttl, timeout=timeout)
