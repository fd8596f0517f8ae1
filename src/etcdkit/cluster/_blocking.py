"""The blocking twins of the etcd-backed cluster, for ``etcdkit.Client`` (threads).

Each forwards to its asyncio object through the client's portal (its private event-loop
thread) and blocks until that finishes; nothing is re-implemented. Views are immutable tuples
published in one assignment, so reading ``members`` from any thread needs no lock.
``tests/test_sync_parity.py`` checks that the names and signatures match the asyncio ones.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine, Iterator
from types import TracebackType
from typing import Any, Protocol, TypeVar

from etcdkit._prefix_watch import WatchState
from etcdkit.cluster._etcd import EtcdBackedCluster, EtcdMembership
from etcdkit.cluster._member import Member
from etcdkit.cluster._views import MemberWatch

__all__ = ["PortalLike", "SyncCluster", "SyncMemberWatch", "SyncMembership"]

T = TypeVar("T")


class PortalLike(Protocol):
    """What the blocking twins need of ``etcdkit._sync.Portal`` (the client's loop thread);
    those of locks and elections (``etcdkit._sync_locks``) use it too."""

    @property
    def closed(self) -> bool: ...

    def call(self, coro: Coroutine[Any, Any, T]) -> T: ...

    def run_sync(self, fn: Callable[..., T], *args: Any) -> T: ...

    def read(self, fn: Callable[[], T]) -> T: ...


class SyncCluster:
    """Blocking view of an :class:`EtcdBackedCluster`: ``with client.cluster(root) as c:``.

    ``etcdkit.Client.cluster()`` returns it open (it blocks until the first view, or raises
    EtcdTimeoutError). ``members`` and ``revision`` may be read from any thread;
    ``watch_members()`` is a plain iterator (``for members in cluster.watch_members():``).
    """

    def __init__(self, portal: PortalLike, cluster: EtcdBackedCluster) -> None:
        self._portal = portal
        self.aio = cluster

    def __repr__(self) -> str:
        return self._portal.read(lambda: repr(self.aio)).replace(
            "<EtcdBackedCluster", "<SyncCluster", 1
        )

    def __enter__(self) -> SyncCluster:
        return self.open()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def open(self) -> SyncCluster:
        self._portal.call(self.aio.open())
        return self

    def close(self) -> None:
        if not self._portal.closed:
            self._portal.call(self.aio.aclose())

    @property
    def root(self) -> str:
        return self.aio.root

    @property
    def ttl(self) -> int:
        return self.aio.ttl

    @property
    def members(self) -> tuple[Member, ...]:
        return self.aio.members  # an immutable tuple, published in one assignment

    @property
    def revision(self) -> int:
        return self.aio.revision

    @property
    def closed(self) -> bool:
        return self.aio.closed

    @property
    def state(self) -> WatchState:
        return self._portal.read(lambda: self.aio.state)

    @property
    def invalid_records(self) -> int:
        return self._portal.read(lambda: self.aio.invalid_records)

    def watch_members(self) -> SyncMemberWatch:
        return SyncMemberWatch(self._portal, self._portal.run_sync(self.aio.watch_members))

    def membership(self, data: str = "", *, id: str | None = None) -> SyncMembership:
        made = self._portal.run_sync(functools.partial(self.aio.membership, data, id=id))
        return SyncMembership(self._portal, made)


class SyncMembership:
    """Blocking view of an :class:`EtcdMembership`; ``set_data`` never blocks on etcd."""

    def __init__(self, portal: PortalLike, membership: EtcdMembership) -> None:
        self._portal = portal
        self.aio = membership

    def __repr__(self) -> str:
        return self._portal.read(lambda: repr(self.aio)).replace(
            "<EtcdMembership", "<SyncMembership", 1
        )

    @property
    def id(self) -> str:
        return self.aio.id

    @property
    def data(self) -> str:
        return self._portal.read(lambda: self.aio.data)

    @property
    def registered(self) -> bool:
        return self._portal.read(lambda: self.aio.registered)

    @property
    def member(self) -> Member:
        return self._portal.read(lambda: self.aio.member)

    def register(self, timeout: float | None = None) -> int:
        return self._portal.call(self.aio.register(timeout))

    def set_data(self, data: str) -> None:
        self._portal.run_sync(self.aio.set_data, data)

    def synced(self, timeout: float | None = None) -> int:
        return self._portal.call(self.aio.synced(timeout))

    def deregister(self, timeout: float | None = None) -> int:
        return self._portal.call(self.aio.deregister(timeout))


class SyncMemberWatch:
    """Blocking view of a :class:`MemberWatch`: ``for members in watch:`` (latest wins)."""

    def __init__(self, portal: PortalLike, watch: MemberWatch) -> None:
        self._portal = portal
        self.aio = watch

    def __repr__(self) -> str:
        return self._portal.read(lambda: repr(self.aio)).replace(
            "<MemberWatch", "<SyncMemberWatch", 1
        )

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
            return self._portal.call(self.aio.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    @property
    def revision(self) -> int:
        return self.aio.revision

    def close(self) -> None:
        """Stop the watch; a ``for`` loop over it in another thread ends. Idempotent."""
        if not self._portal.closed:
            self._portal.call(self.aio.aclose())
