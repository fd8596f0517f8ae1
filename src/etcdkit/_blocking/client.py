"""The threaded face: the asyncio core run on one private event-loop thread.

Nothing here re-implements behaviour: every call is forwarded to the asyncio object through a
:class:`Portal` (the model is anyio's ``BlockingPortal``) and blocks until it finishes. A
``KeyboardInterrupt`` (or any exception) in the waiting thread cancels the coroutine. Values
are read either as one immutable object the loop publishes in one assignment (snapshots) or
through the portal (states, stats), so a reader never sees a half-applied change.

``tests/test_sync_parity.py`` compares every public name and signature here with its asyncio
twin, so the two faces cannot drift.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from types import TracebackType
from typing import Any, ClassVar, Generic, Literal, Protocol, TypeVar, cast, overload

from etcdkit._blocking.admin import SyncAuth, SyncMaintenance, SyncMembers
from etcdkit._blocking.locks import SyncElection, SyncLock
from etcdkit._blocking.portal import Portal
from etcdkit._blocking.twin import SetOn, SyncIterator, Twin, blocking, blocking_read, mirror
from etcdkit._client import DEFAULT_TIMEOUT, AsyncClient
from etcdkit._errors import ClosedError, EtcdkitError, EtcdTimeoutError
from etcdkit._metrics import ClientStats, LeaseStats
from etcdkit._retry import RetryPolicy
from etcdkit._snapshot import Snapshot, Transform
from etcdkit._types import (
    KeepAliveStatus,
    KeyValueLike,
    PutResult,
    WatchBatch,
    WatchFilter,
    check_timeout,
)
from etcdkit._watch import Watch
from etcdkit._wire.conn import Stubs
from etcdkit._wire.keepalive import KeepAlive
from etcdkit.cluster import DEFAULT_OPEN_TIMEOUT, SyncCluster
from etcdkit.naming.endpoints import SyncEndpointManager
from etcdkit.recipes.barrier import SyncBarrier
from etcdkit.recipes.counter import SyncCounter
from etcdkit.recipes.double_barrier import SyncDoubleBarrier
from etcdkit.recipes.persistent_lease import LeaseState, PersistentLease
from etcdkit.recipes.prefix_watch import PrefixWatch, WatchState, WatchStats
from etcdkit.recipes.priority_queue import SyncPriorityQueue
from etcdkit.recipes.queue import SyncQueue
from etcdkit.recipes.rwlock import SyncRWLock
from etcdkit.recipes.semaphore import SyncSemaphore
from etcdkit.recipes.session import Session, SessionState
from etcdkit.recipes.stm import DEFAULT_ATTEMPTS as DEFAULT_STM_ATTEMPTS
from etcdkit.recipes.stm import Isolation, SyncStm, run_stm_blocking

__all__ = [
    "Client",
    "SyncPersistentLease",
    "SyncPrefixWatch",
    "SyncSession",
    "SyncWatch",
]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
K = TypeVar("K")
V = TypeVar("V")


class Client(Twin[AsyncClient]):
    """The blocking twin of :class:`AsyncClient`: same arguments, same methods, same errors.

    Runs one :class:`AsyncClient` on a private event-loop thread, which ``close()`` stops.
    Use as ``with Client(...) as etcd:``. Safe to call from any number of threads; a call
    made inside a running event loop raises :class:`WrongContextError` (use AsyncClient there;
    or see :attr:`blocks_running_loops`).
    ``close()`` ends every call in flight in other threads with :class:`ClosedError`.
    """

    blocks_running_loops: ClassVar[bool] = False
    """``True`` in a subclass (``class Blocking(etcdkit.Client): blocks_running_loops =
    True``): a call made inside a running asyncio event loop blocks that loop until it
    returns, as a plain blocking library's does, instead of raising
    :class:`WrongContextError`; every other coroutine of that loop waits meanwhile. For code
    written for a blocking library that calls it from ``async def`` functions (and so
    ``etcdkit.compat.etcd3``'s client); new code should use :class:`AsyncClient` there. A
    call from the client's own loop thread (a listener) is refused all the same."""

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
        self.aio = AsyncClient(
            endpoints,
            username=username,
            password=password,
            ca_cert=ca_cert,
            cert=cert,
            key=key,
            timeout=timeout,
            retry=retry,
        )
        self.portal: Portal = Portal(blocks_running_loops=self.blocks_running_loops)
        try:
            self.portal.call(self.aio.connect())
        except BaseException:
            self.portal.stop()
            raise
        # Dropped open (the client and everything made from it), it is closed, with a
        # ResourceWarning: else its loop thread and sockets stay for good.
        self.portal.close_when_dropped(
            self.aio.close, f"etcdkit.Client({', '.join(self.aio.endpoints)})"
        )

    def __repr__(self) -> str:
        text = repr(self.aio).replace("<AsyncClient", "<Client", 1)
        if self.portal.forked:  # (the state there is the parent's: unusable here)
            text = text.replace("state=open", "state=forked", 1)
        return text

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close watches, leases and the connection, then stop the loop thread. Idempotent;
        calls in flight in other threads end with :class:`ClosedError`; a close() while
        another is under way waits for it. Interrupted (Ctrl-C), it raises at once and the
        close goes on to its end on the loop thread, as a cancelled :meth:`AsyncClient.close`
        does. In a process forked from the one that made the client, it does nothing, and at
        interpreter exit (a close from a ``__del__``) too: the loop thread, a daemon, can run
        no more (what the client kept alive expires by its TTL)."""
        if sys.is_finalizing():
            return
        if self.portal.closed:
            self.portal.stop()  # (waits for a close under way)
            return
        # Refused where it would block its loop (or deadlock on it) before anything changes:
        # a close refused half-way left the client closed to callers, its leases not revoked.
        self.portal.check_caller()
        try:
            self.portal.call(self.aio.close())
        except ClosedError:
            pass  # another thread is closing it: stop() below waits for it
        except BaseException:
            self.portal.stop(after=self.aio.close())  # (waits for the interrupted one)
            raise
        self.portal.stop()

    @property
    def endpoints(self) -> list[str]:
        """The endpoints the client was given, in order."""
        return self.aio.endpoints

    @property
    def retry(self) -> RetryPolicy:
        """See :attr:`AsyncClient.retry`."""
        return self.aio.retry

    @property
    def stats(self) -> ClientStats:
        """The client's call and failover counters (:class:`ClientStats`, read on the loop
        thread)."""
        return self.portal.read(lambda: self.aio.stats)

    @property
    def closed(self) -> bool:
        """``True`` once :meth:`close` has finished (or, in a process forked from the one
        that made the client, where it cannot be used)."""
        return self.portal.stopped or self.portal.read(lambda: self.aio.closed)

    @property
    def raw(self) -> Stubs:
        """The async stubs (see :attr:`AsyncClient.raw`); run them with :meth:`run`."""
        return self.portal.read(lambda: self.aio.raw)

    def run(self, coro: Awaitable[T]) -> T:
        """Run a coroutine (e.g. a raw stub call) on the client's loop and return its result."""

        if inspect.iscoroutine(coro):  # (the portal closes one it refuses, on the right side)
            return self.portal.call(cast("Coroutine[Any, Any, T]", coro))

        async def wrap() -> T:
            return await coro

        return self.portal.call(wrap())

    # -- administration: blocking twins, made on first use (no I/O) ---------------------------

    _members: SyncMembers | None = None
    _maintenance: SyncMaintenance | None = None
    _auth: SyncAuth | None = None

    @property
    def members(self) -> SyncMembers:
        """The cluster's members, blocking (see :attr:`AsyncClient.members`)."""
        if self._members is None:
            self._members = SyncMembers(self.portal, self.aio.members)
        return self._members

    @property
    def maintenance(self) -> SyncMaintenance:
        """Per-member maintenance, blocking (see :attr:`AsyncClient.maintenance`)."""
        if self._maintenance is None:
            self._maintenance = SyncMaintenance(self.portal, self.aio.maintenance)
        return self._maintenance

    @property
    def auth(self) -> SyncAuth:
        """Users, roles and permissions, blocking (see :attr:`AsyncClient.auth`)."""
        if self._auth is None:
            self._auth = SyncAuth(self.portal, self.aio.auth)
        return self._auth

    auth_metadata = blocking(AsyncClient.auth_metadata)
    get = blocking(AsyncClient.get)
    get_revision = blocking(AsyncClient.get_revision)
    get_prefix = blocking(AsyncClient.get_prefix)
    range = blocking(AsyncClient.range)

    def get_prefix_pages(
        self,
        prefix: str | bytes,
        *,
        revision: int = 0,
        page_size: int | None = None,
        keys_only: bool = False,
    ) -> SyncIterator[tuple[Sequence[KeyValueLike], int]]:
        """See :meth:`AsyncClient.get_prefix_pages`: a plain iterator of ``(kvs, revision)``;
        stopping early (``close()``, from any thread, or ``with`` it) stops the reading."""
        pages = self.portal.run_sync(
            functools.partial(
                self.aio.get_prefix_pages,
                prefix,
                revision=revision,
                page_size=page_size,
                keys_only=keys_only,
            )
        )
        return SyncIterator(self.portal, pages)

    @overload
    def put(
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
    def put(
        self,
        key: str | bytes,
        value: str | bytes,
        *,
        lease: int = 0,
        prev_kv: Literal[True],
        ignore_value: bool = False,
        ignore_lease: bool = False,
    ) -> PutResult: ...
    def put(
        self,
        key: str | bytes,
        value: str | bytes,
        *,
        lease: int = 0,
        prev_kv: bool = False,
        ignore_value: bool = False,
        ignore_lease: bool = False,
    ) -> int | PutResult:
        put = functools.partial(
            self.aio.put,
            key,
            value,
            lease=lease,
            ignore_value=ignore_value,
            ignore_lease=ignore_lease,
        )
        if prev_kv is True:
            return self.portal.call(put(prev_kv=True))
        return self.portal.call(put(prev_kv=prev_kv))

    put.__doc__ = AsyncClient.put.__doc__
    delete = blocking(AsyncClient.delete)
    delete_prefix = blocking(AsyncClient.delete_prefix)
    delete_range = blocking(AsyncClient.delete_range)
    compact = blocking(AsyncClient.compact)
    txn = blocking(AsyncClient.txn)
    grant = blocking(AsyncClient.grant)
    revoke = blocking(AsyncClient.revoke)
    time_to_live = blocking(AsyncClient.time_to_live)
    leases = blocking(AsyncClient.leases)
    lease_info = blocking(AsyncClient.lease_info)
    keep_alive_once = blocking(AsyncClient.keep_alive_once)
    wait_for = blocking(AsyncClient.wait_for)

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
    ) -> SyncWatch:
        """See :meth:`AsyncClient.watch`: ``with client.watch(...) as w: for batch in w:``."""
        watch = self.portal.run_sync(
            functools.partial(
                self.aio.watch,
                prefix=prefix,
                start_revision=start_revision,
                prev_kv=prev_kv,
                filters=filters,
                progress_notify=progress_notify,
            ),
            key,
            range_end,
        )
        return SyncWatch(self.portal, watch)

    def keep_alive(self, lease_id: int, *, ttl: int | None = None) -> SyncKeepAlive:
        """See :meth:`AsyncClient.keep_alive`: ``with client.keep_alive(lease_id) as ka: for
        status in ka:``."""
        kept = self.portal.run_sync(functools.partial(self.aio.keep_alive, ttl=ttl), lease_id)
        return SyncKeepAlive(self.portal, kept)

    def session(self, ttl: int = 60) -> SyncSession:
        """See :meth:`AsyncClient.session`: grants the lease (blocking) and returns the open
        session; use with ``with`` to close it."""
        session = self.portal.run_sync(self.aio.session, ttl)

        async def opened() -> Session:
            return await session  # (as the asyncio face's ``await``: given up on, it revokes)

        # (and given up on once granted, a Ctrl-C as it returned: nobody has it, close it)
        self.portal.call(opened(), abandon=Session.close)
        return SyncSession(self.portal, session)

    @overload
    def watch_prefix(self, prefix: str | bytes) -> SyncPrefixWatch[str, bytes]: ...
    @overload
    def watch_prefix(
        self, prefix: str | bytes, transform: Transform[K, V]
    ) -> SyncPrefixWatch[K, V]: ...
    def watch_prefix(
        self, prefix: str | bytes, transform: Transform[Any, Any] | None = None
    ) -> SyncPrefixWatch[Any, Any]:
        """See :meth:`AsyncClient.watch_prefix`; iterate the result with a plain ``for``."""
        watch = self.portal.run_sync(self.aio.watch_prefix, prefix, transform)
        return SyncPrefixWatch(self.portal, watch)

    def persistent_lease(
        self, key: str | bytes, value: str | bytes, ttl: int = 10, *, own_lease: bool = False
    ) -> SyncPersistentLease:
        """See :meth:`AsyncClient.persistent_lease`; use with ``with``."""
        lease = self.portal.run_sync(
            functools.partial(self.aio.persistent_lease, own_lease=own_lease), key, value, ttl
        )
        return SyncPersistentLease(self.portal, lease)

    # -- recipes of etcdkit.recipes and etcdkit.naming (their blocking twins) -------------------

    def endpoint_manager(self, target: str) -> SyncEndpointManager:
        """See :meth:`AsyncClient.endpoint_manager`: ``add`` / ``delete`` / ``list`` block,
        ``with eps.watch() as w: for view in w:``, ``with eps.register(addr):``."""
        eps = self.portal.run_sync(self.aio.endpoint_manager, target)
        return SyncEndpointManager(
            self.portal, eps, watch_twin=SyncPrefixWatch, lease_twin=SyncPersistentLease
        )

    def queue(self, name: str | bytes) -> SyncQueue:
        """See :meth:`AsyncClient.queue`: ``q.put(value)``, ``q.get(timeout=None)``."""
        return SyncQueue(self.portal, self.portal.run_sync(self.aio.queue, name))

    def priority_queue(self, name: str | bytes) -> SyncPriorityQueue:
        """See :meth:`AsyncClient.priority_queue`: ``pq.put(value, priority)``, ``pq.get()``."""
        pq = self.portal.run_sync(self.aio.priority_queue, name)
        return SyncPriorityQueue(self.portal, pq)

    def counter(self, key: str | bytes) -> SyncCounter:
        """See :meth:`AsyncClient.counter`: ``c.add(n)``, ``c.value()``."""
        return SyncCounter(self.portal, self.portal.run_sync(self.aio.counter, key))

    def stm(
        self,
        fn: Callable[[SyncStm], T],
        isolation: Isolation = "serializable_snapshot",
        *,
        prefetch: Sequence[str | bytes] = (),
        attempts: int = DEFAULT_STM_ATTEMPTS,
    ) -> T:
        """See :meth:`AsyncClient.stm`; ``fn`` is a plain ``def fn(stm)``, run in the calling
        thread (its ``stm.get`` calls block), again on each conflict."""
        return run_stm_blocking(
            self.portal, self.aio, fn, isolation, prefetch=prefetch, attempts=attempts
        )

    def semaphore(
        self, name: str | bytes, permits: int, ttl: int = 10, timeout: float | None = 30
    ) -> SyncSemaphore:
        """See :meth:`AsyncClient.semaphore`: ``with client.semaphore(name, 3) as permit:``."""
        sem = self.portal.run_sync(
            functools.partial(self.aio.semaphore, ttl=ttl, timeout=timeout), name, permits
        )
        return SyncSemaphore(self.portal, sem)

    def rwlock(self, name: str | bytes, ttl: int = 10, timeout: float | None = 30) -> SyncRWLock:
        """See :meth:`AsyncClient.rwlock`: ``with client.rwlock(name).write() as hold:``."""
        rw = self.portal.run_sync(
            functools.partial(self.aio.rwlock, ttl=ttl, timeout=timeout), name
        )
        return SyncRWLock(self.portal, rw)

    def barrier(self, name: str | bytes) -> SyncBarrier:
        """See :meth:`AsyncClient.barrier`."""
        return SyncBarrier(self.portal, self.portal.run_sync(self.aio.barrier, name))

    def double_barrier(self, name: str | bytes, count: int, ttl: int = 10) -> SyncDoubleBarrier:
        """See :meth:`AsyncClient.double_barrier`."""
        db = self.portal.run_sync(functools.partial(self.aio.double_barrier, ttl=ttl), name, count)
        return SyncDoubleBarrier(self.portal, db)

    def cluster(
        self, root: str, ttl: int = 10, *, timeout: float | None = DEFAULT_OPEN_TIMEOUT
    ) -> SyncCluster:
        """See :meth:`AsyncClient.cluster`: returns it open (blocking until the first view, or
        EtcdTimeoutError after ``timeout``); use with ``with`` to close it."""
        cluster = self.portal.run_sync(
            functools.partial(self.aio.cluster, timeout=timeout), root, ttl
        )
        return SyncCluster(self.portal, cluster).open()

    def election(self, name: str | bytes) -> SyncElection:
        """See :meth:`AsyncClient.election`; ``with election.campaign(value) as leadership``."""
        return SyncElection(self.portal, self.portal.run_sync(self.aio.election, name))

    def lock(self, name: str | bytes, ttl: int = 10, timeout: float | None = 30) -> SyncLock:
        """See :meth:`AsyncClient.lock`; use with ``with``."""
        return SyncLock(self.portal, self.portal.run_sync(self.aio.lock, name, ttl, timeout))


class _Stream(Protocol[T_co]):
    def start(self) -> object: ...
    def cancel(self) -> None: ...
    def add_listener(self, callback: Callable[[], None]) -> Callable[[], None]: ...
    def __anext__(self) -> Awaitable[T_co]: ...


S = TypeVar("S", bound=_Stream[Any])


class _StreamTwin(Twin[S], Generic[S, T]):
    """What the blocking views of the client's streams share (SyncWatch, SyncKeepAlive): a
    ``with`` block that cancels on leaving, and blocking iteration."""

    def start(self) -> None:
        """Start (``with`` does it; the first ``next()`` too)."""
        started = self.portal.run_sync(self.aio.start)
        if inspect.isawaitable(started):
            try:
                self.portal.call(_awaited(lambda: started))
            except BaseException:
                if (
                    inspect.iscoroutine(started)
                    and inspect.getcoroutinestate(started) == inspect.CORO_CREATED
                ):
                    started.close()  # (refused before it ran: not left un-awaited)
                raise

    def cancel(self) -> None:
        """End it (idempotent, from any thread, or a listener): the iteration stops (one
        stream has one reader at a time: a second thread's ``next()`` while another waits
        raises RuntimeError)."""
        if not self.portal.closed:
            self.portal.run_sync(self.aio.cancel)

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cancel()

    def add_listener(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback()`` as news arrives (see the asyncio object's ``add_listener``);
        it runs on the client's loop thread: keep it quick. Returns a function that removes
        it."""
        remove = self.portal.run_sync(self.aio.add_listener, callback)
        return lambda: self.portal.run_sync(remove) if not self.portal.closed else None

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        try:
            item: T = self.portal.call(_awaited(self.aio.__anext__))
        except StopAsyncIteration:
            raise StopIteration from None
        return item


async def _awaited(make: Callable[[], Awaitable[T]]) -> T:
    """``await make()``, made on the loop: a call the portal refuses (the client closed) leaves
    no awaitable made and never awaited."""
    return await make()


class SyncWatch(_StreamTwin[Watch, WatchBatch]):
    """Blocking view of a :class:`Watch`: ``with client.watch(...) as w: for batch in w:``.
    ``cancel()`` from any thread ends the iteration of the thread that waits on it (one
    reader at a time)."""

    def __enter__(self) -> SyncWatch:
        self.start()
        return self

    @property
    def revision(self) -> int:
        """See :attr:`Watch.revision`."""
        return self.portal.read(lambda: self.aio.revision)

    @property
    def key(self) -> bytes:
        """The watched key (the range's start)."""
        return self.aio.key

    @property
    def range_end(self) -> bytes:
        """The watched range's end (``b""``: the one key)."""
        return self.aio.range_end

    connected: mirror[bool] = mirror(Watch.connected)
    confirmed_at: mirror[float] = mirror(Watch.confirmed_at)
    disconnects: mirror[int] = mirror(Watch.disconnects)
    take = blocking_read(Watch.take)


class SyncKeepAlive(_StreamTwin[KeepAlive, KeepAliveStatus]):
    """Blocking view of a :class:`KeepAlive`: ``with client.keep_alive(lease_id) as ka: for
    status in ka:``. ``cancel()`` from any thread ends the iteration (renewals stop; the lease
    is not revoked)."""

    def __enter__(self) -> SyncKeepAlive:
        self.start()
        return self

    take = blocking_read(KeepAlive.take)
    lease_id: mirror[int] = mirror(KeepAlive.lease_id, direct=True)
    ttl: mirror[int] = mirror(KeepAlive.ttl)
    expires: mirror[float | None] = mirror(KeepAlive.expires)


class SyncPrefixWatch(Twin[PrefixWatch[K, V]], Generic[K, V]):
    """Blocking view of a :class:`PrefixWatch`: ``with``, ``synced()``, ``for snap in watch``."""

    def __enter__(self) -> SyncPrefixWatch[K, V]:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(self) -> None:
        """See :meth:`PrefixWatch.start`."""
        self.portal.run_sync(self.aio.start)

    def close(self) -> None:
        """See :meth:`PrefixWatch.aclose`: stop watching (idempotent)."""
        if not self.portal.closed:
            self.portal.call(self.aio.aclose())

    def synced(self, timeout: float | None = None) -> Snapshot[K, V]:
        """See :meth:`PrefixWatch.synced`."""
        return self.portal.call(self.aio.synced(timeout))

    def __iter__(self) -> Iterator[Snapshot[K, V]]:
        return self

    def __next__(self) -> Snapshot[K, V]:
        try:
            return self.portal.call(self.aio.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    # Immutable objects the loop publishes in one assignment: read from any thread.
    prefix: mirror[bytes] = mirror(PrefixWatch.prefix, direct=True)
    snapshot: mirror[Snapshot[K, V] | None] = mirror(PrefixWatch.snapshot, direct=True)
    revision: mirror[int] = mirror(PrefixWatch.revision, direct=True)
    state: mirror[WatchState] = mirror(PrefixWatch.state)
    age: mirror[float] = mirror(PrefixWatch.age)

    @property
    def stats(self) -> WatchStats:
        """See :attr:`PrefixWatch.stats` (a copy, taken on the loop thread)."""
        return self.portal.read(lambda: WatchStats(**vars(self.aio.stats)))


class SyncPersistentLease(Twin[PersistentLease]):
    """Blocking view of a :class:`PersistentLease`."""

    def __repr__(self) -> str:
        return self.portal.read(lambda: repr(self.aio))

    def __enter__(self) -> SyncPersistentLease:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    start = blocking_read(PersistentLease.start)

    def close(self) -> None:
        """See :meth:`PersistentLease.aclose`: delete the key and stop (idempotent)."""
        if not self.portal.closed:
            self.portal.call(self.aio.aclose())

    registered = blocking(PersistentLease.registered)
    synced = blocking(PersistentLease.synced)
    wait_state = blocking(PersistentLease.wait_state)
    set_value = blocking_read(PersistentLease.set_value)

    def add_listener(self, callback: Callable[[LeaseState], None]) -> Callable[[], None]:
        """See :meth:`PersistentLease.add_listener`; ``callback`` runs on the client's loop
        thread: keep it quick."""
        return self.portal.run_sync(self.aio.add_listener, callback)

    key: mirror[str | bytes] = mirror(PersistentLease.key, direct=True)
    value: mirror[bytes] = mirror(PersistentLease.value)
    state: mirror[LeaseState] = mirror(PersistentLease.state)
    lease_id: mirror[int] = mirror(PersistentLease.lease_id)
    create_revision: mirror[int] = mirror(PersistentLease.create_revision)
    ttl: mirror[int] = mirror(PersistentLease.ttl)
    error: mirror[EtcdkitError | None] = mirror(PersistentLease.error)
    stats: mirror[LeaseStats] = mirror(
        PersistentLease.stats, direct=True
    )  # immutable, published in one assignment


_SESSION_OVER = (SessionState.LOST, SessionState.CLOSED)


class SyncSession(Twin[Session]):
    """Blocking view of a :class:`Session`; ``lost`` is a :class:`threading.Event` here."""

    def __init__(self, portal: Portal, session: Session) -> None:
        super().__init__(portal, session)
        self.lost = threading.Event()
        portal.read(self._follow)  # (directly once the client is closed: its loop is gone)

    def _follow(self) -> None:
        """On the loop thread, as are the listener's calls: a loss cannot fall between the
        look and the listener."""
        if self.aio.lost.is_set() or self.aio.state in _SESSION_OVER:
            self.lost.set()
        self.aio.add_listener(SetOn(self.lost, _SESSION_OVER))

    def __enter__(self) -> SyncSession:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def open(self) -> SyncSession:
        """See :meth:`Session.open`: grant the lease (blocking); returns this session."""
        self.portal.call(self.aio.open())
        return self

    def close(self) -> None:
        """See :meth:`Session.close`: revoke the lease (bounded; idempotent)."""
        if not self.portal.closed:
            self.portal.call(self.aio.close())

    def wait_lost(self, timeout: float | None = None) -> SessionState:
        """See :meth:`Session.wait_lost`; raises :class:`EtcdTimeoutError` after ``timeout``."""
        self.portal.check_caller()  # (a wait here would block the loop that sets ``lost``)
        limit = check_timeout(timeout)
        if not self.lost.wait(None if limit == float("inf") else limit):
            raise EtcdTimeoutError(
                f"session {self.aio.lease_id:#x} was not lost within {timeout} s"
            )
        return self.state

    mark_lost = blocking_read(Session.mark_lost)

    def add_listener(self, callback: Callable[[SessionState], None]) -> Callable[[], None]:
        """See :meth:`Session.add_listener`; ``callback`` runs on the client's loop thread:
        keep it quick."""
        return self.portal.run_sync(self.aio.add_listener, callback)

    lease_id: mirror[int] = mirror(Session.lease_id, direct=True)  # fixed once open
    ttl: mirror[int] = mirror(Session.ttl, direct=True)
    state: mirror[SessionState] = mirror(Session.state)
    expires: mirror[float | None] = mirror(Session.expires)
