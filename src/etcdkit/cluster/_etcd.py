"""The cluster API on etcd: members are PersistentLeases, the view is a PrefixWatch.

Member ``id`` of the cluster rooted at ``/services/api`` is the key ``/services/api/id`` holding
``{"id":"id","data":"..."}`` under a lease (the wire format of Go's ``pkg/cluster``, see
:mod:`etcdkit.cluster._member`). The view is an exact snapshot of every such key, decoded by
:func:`decode_member`: a record that is not a valid member is left out, counted in
``invalid_records`` and logged once. Open it with ``async with etcd.cluster(root) as cluster``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from etcdkit._errors import ClosedError, EtcdkitError, EtcdTimeoutError
from etcdkit._snapshot import Snapshot
from etcdkit._surface import Etcd
from etcdkit._types import DEFAULT_OPEN_TIMEOUT, check_timeout
from etcdkit.cluster._member import (
    Member,
    check_root,
    decode_member,
    encode_member,
    member_key,
    member_prefix,
)
from etcdkit.cluster._views import (
    MemberIntent,
    MemberWatch,
    Owners,
    ViewHub,
    data_preview,
    new_member_id,
)
from etcdkit.recipes.prefix_watch import PrefixWatch, WatchState

if TYPE_CHECKING:
    from etcdkit.recipes.persistent_lease import PersistentLease

__all__ = ["DEFAULT_OPEN_TIMEOUT", "EtcdBackedCluster", "EtcdMembership"]

log = logging.getLogger("etcdkit.cluster")

T = TypeVar("T")
View = tuple[Member, ...]


class EtcdBackedCluster:
    """A cluster on etcd: ``async with etcd.cluster("/services/api", ttl=10) as cluster``.

    Opening (``async with`` or :meth:`open`) lists the members and returns once the first
    view is loaded and etcd confirmed the watch that follows it; it raises
    :class:`EtcdTimeoutError` when that takes more than *timeout* seconds (etcd unreachable),
    and leaves nothing running then. Then, without I/O:

    - ``members``: the current view, a tuple of :class:`Member` sorted by id; ``revision``:
      the etcd revision of that view; ``state``: how fresh it is (a :class:`WatchState`:
      LIVE, or STALE while etcd is unreachable — the view is then the last one known).
    - ``watch_members()``: a :class:`MemberWatch`, the current view first, then the newest
      after each change; a slow or absent reader skips views and blocks nobody.
    - ``membership(data, id=None)``: this process's own entry (see :class:`EtcdMembership`),
      kept by a :class:`PersistentLease` of *ttl* seconds; all memberships of a client with
      the same ttl share one etcd lease, so a process that dies leaves the view ttl seconds
      later, all its members in one revision.

    Closing deregisters the memberships made here (at once, bounded when etcd is down), ends
    every watch and leaves no task behind; so does closing the client. Methods of an unopened
    or closed cluster raise :class:`ClosedError`. Use it from the client's event loop.
    """

    def __init__(
        self,
        etcd: Etcd,
        root: str,
        ttl: int = 10,
        *,
        timeout: float | None = DEFAULT_OPEN_TIMEOUT,
    ) -> None:
        check_root(root)
        if isinstance(ttl, bool) or not isinstance(ttl, int):
            raise TypeError(f"ttl must be a whole number of seconds (int), got {ttl!r}")
        if ttl < 1:
            raise ValueError(f"ttl must be >= 1 second, got {ttl}")
        check_timeout(timeout)
        self._etcd = etcd
        self._root = root
        self._prefix = member_prefix(root)
        self._ttl = ttl
        self._timeout = timeout
        self._hub = ViewHub()
        self._watch: PrefixWatch[str, Member] | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._closed = False
        self._owners: Owners[EtcdMembership] = Owners(" of this cluster")  # the registered ones
        self._leases: set[PersistentLease] = set()  # every lease not closed yet
        self._tasks: set[asyncio.Task[None]] = set()  # lease starts and closes in flight

    def __repr__(self) -> str:
        return (
            f"<EtcdBackedCluster root={self._root!r} state={self.state.name} "
            f"members={len(self.members)} revision={self.revision}>"
        )

    # -- the view ---------------------------------------------------------------------------------

    @property
    def root(self) -> str:
        return self._root

    @property
    def client(self) -> Etcd:
        """The client this cluster runs on."""
        return self._etcd

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def ttl(self) -> int:
        """The TTL in seconds of the leases that keep this cluster's memberships."""
        return self._ttl

    @property
    def members(self) -> tuple[Member, ...]:
        """The current members, sorted by id (empty before the cluster is open)."""
        return self._hub.members

    @property
    def revision(self) -> int:
        """The etcd revision of the current view (0 before the cluster is open)."""
        return self._hub.revision

    @property
    def state(self) -> WatchState:
        """How fresh the view is: SYNCING until open, LIVE, STALE (etcd unreachable), CLOSED."""
        if self._closed:
            return WatchState.CLOSED
        watch = self._watch
        return WatchState.SYNCING if watch is None else watch.state

    @property
    def invalid_records(self) -> int:
        """How many records under the root were not valid members (each left out of the view)."""
        watch = self._watch
        return 0 if watch is None else watch.stats.invalid_records

    def watch_members(self) -> MemberWatch:
        """Follow the view: the current members first, then the newest after each change."""
        self._check_open()
        return self._hub.watch()

    def membership(self, data: str = "", *, id: str | None = None) -> EtcdMembership:
        """A new, unregistered membership publishing *data*; its id is a UUID4 unless given."""
        self._check_open()
        return EtcdMembership(self, new_member_id(data, id), data)

    # -- lifecycle --------------------------------------------------------------------------------

    async def open(self) -> EtcdBackedCluster:
        """Load the first view and start following it (idempotent); see the class docstring."""
        if self._closed:
            raise ClosedError(f"the cluster {self._root!r} is closed; open a new one")
        if self._watch is not None:
            await self._ready.wait()
            self._check_open()
            return self
        watch = PrefixWatch(self._etcd, self._prefix, self._transform)
        self._etcd.adopt(self, self._closed_with_client)
        self._watch = watch
        try:
            snap = await watch.synced(self._timeout)
        except EtcdTimeoutError as exc:
            await self.aclose()
            raise EtcdTimeoutError(
                f"cluster {self._root!r}: no view of its members within {self._timeout} s "
                f"(endpoints {', '.join(self._etcd.endpoints)}; is etcd reachable?)"
            ) from exc
        except BaseException:
            await self.aclose()
            raise
        if self._closed:  # closed while opening
            raise ClosedError(f"the cluster {self._root!r} was closed while opening")
        self._publish(snap)
        self._task = asyncio.get_running_loop().create_task(
            self._follow(watch), name=f"etcdkit-cluster {self._root!r}"
        )
        self._ready.set()
        return self

    async def aclose(self) -> None:
        """Deregister this cluster's memberships, end its watches and stop. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._ready.set()
        self._etcd.disown(self)
        self._hub.close()  # (its watches end: StopAsyncIteration; see _closed_with_client)
        for membership in self._owners.take_all():
            membership._drop()
        for lease in list(self._leases):
            self._close_lease(lease)
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._watch is not None:
            await self._watch.aclose()

    close = aclose

    async def _closed_with_client(self) -> None:
        """The client's close closes the cluster: its member watches raise ClosedError, as
        every watch of a closing client does (closed alone, the cluster ends them)."""
        self._hub.close(
            ClosedError(f"the etcdkit client was closed; the cluster {self._root!r} with it")
        )
        await self.aclose()

    async def __aenter__(self) -> EtcdBackedCluster:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- internals --------------------------------------------------------------------------------

    def _transform(self, key: bytes, value: bytes) -> tuple[str, Member]:
        member = decode_member(self._root, key, value)
        return member.id, member

    def _publish(self, snap: Snapshot[str, Member]) -> None:
        self._hub.publish(tuple(sorted(snap.tree.values())), snap.revision)

    async def _follow(self, watch: PrefixWatch[str, Member]) -> None:
        try:
            async for snap in watch:
                self._publish(snap)
        except ClosedError:
            pass  # the client is closing; it closes this cluster too (_closed_with_client)
        except EtcdkitError as exc:  # permanent (permission denied): every reader learns it
            log.error("cluster %r: the view of its members ended: %s", self._root, exc)
            self._hub.close(exc)

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"the cluster {self._root!r} is closed; open a new one")
        if not self._ready.is_set():
            raise ClosedError(
                f"the cluster {self._root!r} is not open: use "
                f"'async with etcd.cluster({self._root!r}) as cluster'"
            )

    def _spawn(self, coro: Coroutine[Any, Any, None], what: str) -> asyncio.Task[None]:
        """Run *coro* in a task of the cluster's own, so that cancelling a waiting caller never
        leaves a key half-written or half-removed; closing the cluster waits for these."""
        task = asyncio.get_running_loop().create_task(
            coro, name=f"etcdkit-cluster {self._root!r} {what}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _close_lease(self, lease: PersistentLease) -> asyncio.Task[None]:
        self._leases.discard(lease)
        return self._spawn(lease.aclose(), f"release {lease.key!r}")

    async def _bounded(self, aw: Awaitable[T], timeout: float | None, what: str) -> T:
        try:
            async with asyncio.timeout(timeout):
                return await aw
        except TimeoutError as exc:
            if isinstance(exc, EtcdkitError):
                raise
            raise EtcdTimeoutError(
                f"cluster {self._root!r}: {what} within {timeout} s (view {self.state.name}; "
                f"endpoints {', '.join(self._etcd.endpoints)})"
            ) from None

    async def _wait(self, done: Callable[[View], bool]) -> int:
        self._check_open()
        return await self._hub.wait_until(done)


class EtcdMembership:
    """This process's entry in an :class:`EtcdBackedCluster` (see
    :class:`etcdkit.cluster.Membership`).

    - ``register(timeout)`` starts a PersistentLease on ``root/id`` and returns once this
      process's view contains the member (the revision of that view). The lease then keeps
      the key through deletes, revokes, expiries and outages.
    - ``set_data(data)`` never blocks, not even while etcd is down; the latest data wins.
      ``synced(timeout)`` returns once the view shows it.
    - ``deregister(timeout)`` removes the key (revoking the lease when no other key of the
      client uses it) and returns once the member is gone from this process's view.

    The waits raise :class:`EtcdTimeoutError` after *timeout* seconds (None: no limit) and
    :class:`ClosedError` once the cluster is closed. Cancelling or timing out a wait undoes
    nothing: the member stays registered (or deregistered) as asked. An id is registered by
    one membership of a cluster at a time (ValueError otherwise).
    """

    def __init__(self, cluster: EtcdBackedCluster, id: str, data: str) -> None:
        self._cluster = cluster
        self._want = MemberIntent(id, data)
        self._lease: PersistentLease | None = None
        self._release: asyncio.Task[None] | None = None  # removal of our previous key
        self._starting: asyncio.Task[None] | None = None  # start once that removal is done
        self._key = member_key(cluster.root, id)

    def __repr__(self) -> str:
        lease, want = self._lease, self._want
        state = lease.state.name.lower() if lease is not None else "unregistered"
        if lease is None and want.registered:
            state = "starting"
        return f"<EtcdMembership id={want.id!r} {state} data={data_preview(want.data)}>"

    @property
    def id(self) -> str:
        return self._want.id

    @property
    def data(self) -> str:
        return self._want.data

    @property
    def registered(self) -> bool:
        """Whether the owner asked to be registered (True from register() to deregister())."""
        return self._want.registered

    @property
    def member(self) -> Member:
        return self._want.member

    async def register(self, timeout: float | None = None) -> int:
        """Join the cluster; return the revision of a view of this process that contains it."""
        check_timeout(timeout)
        cluster, want = self._cluster, self._want
        cluster._check_open()
        if not want.registered:
            cluster._owners.claim(want.id, self)
            want.registered = True
            if self._release is None or self._release.done():
                self._start()
            elif self._starting is None:
                self._starting = cluster._spawn(self._start_later(), f"start {want.id}")

        async def run() -> int:
            lease = await self._current_lease()
            if lease is None:
                raise ClosedError(f"member {want.id!r} was deregistered while registering")
            await lease.registered()
            return await cluster._wait(want.present)

        return await cluster._bounded(run(), timeout, f"member {want.id!r} not in the view")

    def set_data(self, data: str) -> None:
        """Set the data to publish (at once if registered); latest wins, never blocks."""
        self._cluster._check_open()
        value = self._want.set_data(data)
        if self._lease is not None:
            self._lease.set_value(value)

    async def synced(self, timeout: float | None = None) -> int:
        """Return the revision once the view shows this membership as it is now: present with
        its current data while registered, absent otherwise."""
        check_timeout(timeout)
        cluster = self._cluster
        cluster._check_open()

        async def run() -> int:
            lease = await self._current_lease()
            if lease is not None:
                await lease.synced()
            elif self._release is not None:
                await asyncio.shield(self._release)
            return await cluster._wait(self._want.in_sync)

        return await cluster._bounded(run(), timeout, f"member {self.id!r} not up to date")

    async def deregister(self, timeout: float | None = None) -> int:
        """Leave the cluster; return the revision once the member is gone from the view."""
        check_timeout(timeout)
        cluster = self._cluster
        cluster._check_open()
        self._drop()

        async def run() -> int:
            if self._release is not None:
                await asyncio.shield(self._release)
            return await cluster._wait(self._want.absent)

        return await cluster._bounded(run(), timeout, f"member {self.id!r} still in the view")

    # -- internals --------------------------------------------------------------------------------

    def _start(self) -> None:
        cluster = self._cluster
        if self._want.registered and self._lease is None and not cluster.closed:
            # Created in the running loop, the lease starts at once.
            value = encode_member(self.member)
            lease = cluster.client.persistent_lease(self._key, value, cluster.ttl)
            self._lease = lease
            cluster._leases.add(lease)

    async def _start_later(self) -> None:
        # The removal of our previous key must not remove the key we are about to write (both
        # may use the client's shared lease).
        try:
            if self._release is not None:
                await asyncio.wait([self._release])
            self._start()
        finally:
            self._starting = None

    async def _current_lease(self) -> PersistentLease | None:
        if self._starting is not None:
            await asyncio.shield(self._starting)
        return self._lease

    def _drop(self) -> None:
        """Stop keeping the key: its removal runs in a task of the cluster."""
        cluster = self._cluster
        self._want.registered = False
        cluster._owners.release(self.id, self)
        lease, self._lease = self._lease, None
        if lease is not None:
            self._release = cluster._close_lease(lease)
