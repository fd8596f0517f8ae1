"""MemoryCluster: the cluster API on an in-memory keyspace, for unit tests without etcd.

Several MemoryClusters on one :class:`MemoryStore` behave like several processes on one etcd:
each sees the others' members, and closing one removes its members from every view, in one
revision (as revoking a process's lease would). Members are stored as the same keys and JSON
values a real cluster writes, so records from other writers (``store.put_raw``) are read, or
refused, exactly as on etcd.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable, Iterable
from types import TracebackType

from etcdkit._errors import ClosedError, EtcdTimeoutError
from etcdkit._types import check_timeout
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
from etcdkit.recipes.prefix_watch import WatchState

__all__ = ["MemoryCluster", "MemoryMembership", "MemoryStore"]

log = logging.getLogger("etcdkit.cluster")


class MemoryStore:
    """An in-memory stand-in for the etcd keys under one cluster root, shared by clusters.

    ``MemoryCluster(store)`` attaches a cluster (a "process") to it. ``revision`` starts at 1
    and grows by one with every change, as etcd's does. ``put_raw`` / ``delete_raw`` write as
    another client would (a Go process, an operator with etcdctl): valid member records join
    the view, invalid ones are logged and left out of it. Use it from one event loop.
    """

    def __init__(self, root: str = "/cluster") -> None:
        check_root(root)
        self._root = root
        self._prefix = member_prefix(root)
        self._kvs: dict[bytes, bytes] = {}
        self._members: dict[bytes, Member] = {}
        self._view: tuple[Member, ...] = ()
        self._revision = 1
        self._owners: Owners[MemoryMembership] = Owners()  # ids are unique store-wide
        self._clusters: weakref.WeakSet[MemoryCluster] = weakref.WeakSet()
        self._invalid_records = 0

    def __repr__(self) -> str:
        return f"<MemoryStore root={self._root!r} members={len(self._view)} rev={self._revision}>"

    @property
    def root(self) -> str:
        return self._root

    @property
    def revision(self) -> int:
        return self._revision

    @property
    def members(self) -> tuple[Member, ...]:
        """Every valid member record in the store, sorted by id."""
        return self._view

    @property
    def invalid_records(self) -> int:
        """How many records written to the store were not valid members (each left out)."""
        return self._invalid_records

    def put_raw(self, key: str | bytes, value: str | bytes) -> int:
        """Write *value* at *key* (under the root) as another etcd client would; the revision."""
        raw_key, raw_value = self._key(key), _to_bytes(value, "value")
        self._put(raw_key, raw_value)
        return self._revision

    def delete_raw(self, key: str | bytes) -> int:
        """Delete *key* (under the root) as another etcd client would; the revision after."""
        self._delete([self._key(key)])
        return self._revision

    # -- used by MemoryCluster -------------------------------------------------------------------

    def _put(self, key: bytes, value: bytes) -> None:
        if self._kvs.get(key) == value:
            return
        self._kvs[key] = value
        try:
            self._members[key] = decode_member(self._root, key, value)
        except ValueError as exc:
            log.warning("member record left out of the view: %s", exc)
            self._invalid_records += 1
            self._members.pop(key, None)
        self._commit()

    def _delete(self, keys: Iterable[bytes]) -> None:
        gone = [key for key in keys if self._kvs.pop(key, None) is not None]
        for key in gone:
            self._members.pop(key, None)
        if gone:  # one revision for them all, like a lease revoke
            self._commit()

    def _commit(self) -> None:
        self._revision += 1
        self._view = tuple(sorted(self._members.values()))
        for cluster in list(self._clusters):
            cluster._refresh()

    def _key(self, key: str | bytes) -> bytes:
        raw = _to_bytes(key, "key")
        if not raw.startswith(self._prefix) or raw == self._prefix:
            raise ValueError(f"key {raw!r} is not under this store's root {self._prefix!r}")
        return raw


class MemoryCluster:
    """The cluster API in memory: ``async with MemoryCluster() as cluster: ...``.

    Same contract as the etcd-backed cluster (see :class:`etcdkit.cluster.Cluster`): ``members``
    and ``revision`` read the view, ``watch_members()`` follows it (latest wins), and
    ``membership(...)`` joins it. Changes show at once, so ``register()`` and friends return
    without waiting, unless the cluster is :meth:`disconnect`-ed: then its view freezes and its
    memberships' changes wait (and time out with EtcdTimeoutError) until :meth:`reconnect`,
    while other clusters keep seeing its members as they were (a lease outliving an outage).

    Pass a :class:`MemoryStore` to share one keyspace between clusters ("processes"). Closing
    deregisters this cluster's memberships (one revision) and ends its watches; it starts no
    tasks, so nothing is left running. Methods of a closed cluster raise ClosedError.

    It has the etcd-backed cluster's API (``root``, ``members``, ``revision``, ``state``,
    ``invalid_records``, ``closed``, ``watch_members()``, ``membership()``, ``open()``,
    ``aclose()`` / ``close()``), but no ``client`` and no ``ttl``: it has neither, and a
    member leaves when its cluster closes or disconnects for good, not when a lease expires.
    It is open once made (``open()`` returns it at once).
    """

    def __init__(self, store: MemoryStore | None = None) -> None:
        if store is None:
            store = MemoryStore()
        elif not isinstance(store, MemoryStore):
            raise TypeError(f"MemoryCluster takes a MemoryStore or None, got {store!r}")
        self._store = store
        self._hub = ViewHub()
        self._connected = True
        self._closed = False
        # Memberships whose key this cluster may hold in the store (registered, or deregistered
        # while disconnected and not yet deleted).
        self._tracked: dict[str, MemoryMembership] = {}
        store._clusters.add(self)
        self._refresh()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "connected" if self._connected else "disconnected"
        return (
            f"<MemoryCluster root={self._store.root!r} {state} members={len(self.members)} "
            f"revision={self.revision}>"
        )

    @property
    def root(self) -> str:
        """The root its members live under (its store's)."""
        return self._store.root

    @property
    def store(self) -> MemoryStore:
        """The keyspace this cluster lives in; ``MemoryCluster(cluster.store)`` joins it."""
        return self._store

    @property
    def members(self) -> tuple[Member, ...]:
        return self._hub.members

    @property
    def revision(self) -> int:
        return self._hub.revision

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def state(self) -> WatchState:
        """How fresh the view is, as an etcd-backed cluster says it: LIVE, STALE while
        :meth:`disconnect`-ed (the view is the last one seen), CLOSED."""
        if self._closed:
            return WatchState.CLOSED
        return WatchState.LIVE if self._connected else WatchState.STALE

    @property
    def invalid_records(self) -> int:
        """How many records under the root were not valid members (each left out of the
        view; its store's count: a record another writer put there counts too)."""
        return self._store.invalid_records

    @property
    def closed(self) -> bool:
        return self._closed

    def watch_members(self) -> MemberWatch:
        """Follow the view: the current members first, then the newest after each change."""
        return self._hub.watch()

    def membership(self, data: str = "", *, id: str | None = None) -> MemoryMembership:
        """A new, unregistered membership publishing *data*; its id is a UUID4 unless given."""
        self._check_open()
        return MemoryMembership(self, new_member_id(data, id), data)

    # -- faults, for tests ------------------------------------------------------------------------

    def disconnect(self) -> None:
        """Act as if etcd became unreachable: the view freezes and writes wait."""
        self._check_open()
        self._connected = False

    def reconnect(self) -> None:
        """End a :meth:`disconnect`: pending writes land, the view catches up."""
        self._check_open()
        if not self._connected:
            self._connected = True
            for membership in list(self._tracked.values()):
                self._apply(membership)
            self._refresh()

    # -- lifecycle --------------------------------------------------------------------------------

    async def open(self) -> MemoryCluster:
        """This cluster: it is open once made (the etcd-backed one's ``open()`` loads its
        first view). Raises ClosedError once it is closed."""
        self._check_open()
        return self

    async def aclose(self) -> None:
        """Deregister this cluster's memberships and end its watches. Idempotent."""
        if self._closed:
            return
        self._closed = True
        store = self._store
        store._clusters.discard(self)
        tracked, self._tracked = list(self._tracked.values()), {}
        for membership in tracked:
            membership._want.registered = False
            store._owners.release(membership.id, membership)
        store._delete(m._key for m in tracked)
        self._hub.close()

    close = aclose

    async def __aenter__(self) -> MemoryCluster:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- internals --------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("this MemoryCluster is closed; create a new one")

    def _refresh(self) -> None:
        if self._connected and not self._closed:
            self._hub.publish(self._store.members, self._store.revision)

    def _apply(self, membership: MemoryMembership) -> None:
        """Make the store hold what *membership* wants, if this cluster can reach it."""
        if not self._connected or self._closed:
            return
        store = self._store
        if membership.registered:
            store._put(membership._key, encode_member(membership.member))
        elif store._owners.release(membership.id, membership):
            del self._tracked[membership.id]
            store._delete([membership._key])

    async def _wait(
        self, done: Callable[[tuple[Member, ...]], bool], timeout: float | None, what: str
    ) -> int:
        self._check_open()
        try:
            async with asyncio.timeout(timeout):
                return await self._hub.wait_until(done)
        except TimeoutError as exc:
            hint = "" if self._connected else " (the MemoryCluster is disconnected)"
            raise EtcdTimeoutError(f"{what} not in the view after {timeout} s{hint}") from exc


class MemoryMembership:
    """A membership of a :class:`MemoryCluster` (see :class:`etcdkit.cluster.Membership`).

    Cancelling a waiting ``register()`` / ``deregister()`` does not undo it; the member stays
    as asked.
    """

    def __init__(self, cluster: MemoryCluster, id: str, data: str) -> None:
        self._cluster = cluster
        self._want = MemberIntent(id, data)
        self._key = member_key(cluster.store.root, id)

    def __repr__(self) -> str:
        state = "registered" if self.registered else "unregistered"
        return f"<MemoryMembership id={self.id!r} {state} data={data_preview(self.data)}>"

    @property
    def id(self) -> str:
        return self._want.id

    @property
    def data(self) -> str:
        return self._want.data

    @property
    def registered(self) -> bool:
        return self._want.registered

    @property
    def member(self) -> Member:
        return self._want.member

    async def register(self, timeout: float | None = None) -> int:
        """Join the cluster; return the revision once the view contains this member.

        Raises ValueError if another live membership registered the same id.
        """
        check_timeout(timeout)
        cluster, want = self._cluster, self._want
        cluster._check_open()
        if not want.registered:
            cluster.store._owners.claim(want.id, self)
            cluster._tracked[want.id] = self
            want.registered = True
            cluster._apply(self)
        return await cluster._wait(want.present, timeout, f"member {want.id!r}")

    def set_data(self, data: str) -> None:
        """Set the data to publish (at once if registered); latest wins, never blocks."""
        self._cluster._check_open()
        self._want.set_data(data)
        if self.registered:
            self._cluster._apply(self)

    async def synced(self, timeout: float | None = None) -> int:
        """Return the revision once the view shows this membership as it is now."""
        check_timeout(timeout)
        return await self._cluster._wait(self._want.in_sync, timeout, f"member {self.id!r} update")

    async def deregister(self, timeout: float | None = None) -> int:
        """Leave the cluster; return the revision once the member is gone from the view."""
        check_timeout(timeout)
        cluster, want = self._cluster, self._want
        cluster._check_open()
        if want.registered:
            want.registered = False
            cluster._apply(self)
        return await cluster._wait(want.absent, timeout, f"removal of member {want.id!r}")


def _to_bytes(value: str | bytes, what: str) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes):
        return value
    raise TypeError(f"the {what} must be str or bytes, got {type(value).__name__}")
