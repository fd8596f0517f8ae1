"""The blocking twins of the etcd-backed cluster, for ``etcdkit.Client`` (threads).

Each forwards to its asyncio object through the client's portal (its private event-loop
thread) and blocks until that finishes; nothing is re-implemented. Views are immutable tuples
published in one assignment, so reading ``members`` from any thread needs no lock.
``tests/test_sync_parity.py`` checks that the names and signatures match the asyncio ones.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from types import TracebackType

from etcdkit._blocking.twin import PortalLike, Twin, blocking, blocking_read, mirror
from etcdkit.cluster._etcd import EtcdBackedCluster, EtcdMembership
from etcdkit.cluster._member import Member
from etcdkit.cluster._views import MemberWatch
from etcdkit.recipes.prefix_watch import WatchState

__all__ = ["PortalLike", "SyncCluster", "SyncMemberWatch", "SyncMembership"]


class SyncCluster(Twin[EtcdBackedCluster]):
    """Blocking view of an :class:`EtcdBackedCluster`: ``with client.cluster(root) as c:``.

    ``etcdkit.Client.cluster()`` returns it open (it blocks until the first view, or raises
    EtcdTimeoutError). ``members`` and ``revision`` may be read from any thread;
    ``watch_members()`` is a plain iterator (``for members in cluster.watch_members():``).
    """

    def __enter__(self) -> SyncCluster:
        return self.open()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def open(self) -> SyncCluster:
        """See :meth:`EtcdBackedCluster.open`; returns this cluster, open."""
        self.portal.call(self.aio.open())
        return self

    def close(self) -> None:
        """See :meth:`EtcdBackedCluster.aclose` (idempotent)."""
        if not self.portal.closed:
            self.portal.call(self.aio.aclose())

    # Immutable values published in one assignment: read from any thread.
    root: mirror[str] = mirror(EtcdBackedCluster.root, direct=True)
    ttl: mirror[int] = mirror(EtcdBackedCluster.ttl, direct=True)
    members: mirror[tuple[Member, ...]] = mirror(EtcdBackedCluster.members, direct=True)
    revision: mirror[int] = mirror(EtcdBackedCluster.revision, direct=True)
    closed: mirror[bool] = mirror(EtcdBackedCluster.closed, direct=True)
    state: mirror[WatchState] = mirror(EtcdBackedCluster.state)
    invalid_records: mirror[int] = mirror(EtcdBackedCluster.invalid_records)

    def watch_members(self) -> SyncMemberWatch:
        """See :meth:`EtcdBackedCluster.watch_members`: iterate with a plain ``for``."""
        return SyncMemberWatch(self.portal, self.portal.run_sync(self.aio.watch_members))

    def membership(self, data: str = "", *, id: str | None = None) -> SyncMembership:
        """See :meth:`EtcdBackedCluster.membership`."""
        made = self.portal.run_sync(functools.partial(self.aio.membership, data, id=id))
        return SyncMembership(self.portal, made)


class SyncMembership(Twin[EtcdMembership]):
    """Blocking view of an :class:`EtcdMembership`; ``set_data`` never blocks on etcd."""

    id: mirror[str] = mirror(EtcdMembership.id, direct=True)
    data: mirror[str] = mirror(EtcdMembership.data)
    registered: mirror[bool] = mirror(EtcdMembership.registered)
    member: mirror[Member] = mirror(EtcdMembership.member)
    register = blocking(EtcdMembership.register)
    set_data = blocking_read(EtcdMembership.set_data)
    synced = blocking(EtcdMembership.synced)
    deregister = blocking(EtcdMembership.deregister)


class SyncMemberWatch(Twin[MemberWatch]):
    """Blocking view of a :class:`MemberWatch`: ``for members in watch:`` (latest wins)."""

    def __enter__(self) -> SyncMemberWatch:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __iter__(self) -> Iterator[tuple[Member, ...]]:
        return self

    def __next__(self) -> tuple[Member, ...]:
        try:
            return self.portal.call(self.aio.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    revision: mirror[int] = mirror(MemberWatch.revision, direct=True)

    def close(self) -> None:
        """Stop the watch; a ``for`` loop over it in another thread ends. Idempotent."""
        if not self.portal.closed:
            self.portal.call(self.aio.aclose())
