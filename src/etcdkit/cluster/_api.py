"""The cluster API every implementation offers (in memory now, on etcd later), as Protocols.

Code that takes a :class:`Cluster` runs unchanged on :class:`MemoryCluster` in unit tests and
on the etcd-backed cluster in production.
"""

from __future__ import annotations

from types import TracebackType
from typing import Protocol, Self

from etcdkit.cluster._member import Member
from etcdkit.cluster._views import MemberWatch

__all__ = ["Cluster", "Membership"]


class Membership(Protocol):
    """This process's own entry in a cluster: registered, updated and removed by its owner.

    Registration is idempotent, and so is deregistration. ``register``, ``deregister`` and
    ``synced`` return the revision of the view that shows the change; they raise
    EtcdTimeoutError when that view does not come within *timeout* seconds (None: wait as long
    as it takes) and ClosedError once the cluster is closed.
    """

    @property
    def id(self) -> str: ...

    @property
    def data(self) -> str:
        """The data as last set (published while registered)."""
        ...

    @property
    def registered(self) -> bool:
        """Whether the owner asked to be registered (True from register() to deregister())."""
        ...

    @property
    def member(self) -> Member:
        """``Member(id, data)``: how the cluster will see this membership."""
        ...

    async def register(self, timeout: float | None = None) -> int:
        """Join the cluster; return once the cluster's view contains this member."""
        ...

    def set_data(self, data: str) -> None:
        """Publish new data without waiting (latest wins); ``synced()`` awaits it."""
        ...

    async def synced(self, timeout: float | None = None) -> int:
        """Return once the view matches this membership: present with its latest data while
        registered, absent otherwise."""
        ...

    async def deregister(self, timeout: float | None = None) -> int:
        """Leave the cluster; return once the member is gone from the view."""
        ...


class Cluster(Protocol):
    """A view of the members under one root, and the means to join it.

    ``members`` and ``revision`` read the current view without I/O; ``watch_members()`` follows
    it. Closing the cluster deregisters the memberships it created and ends every watch.
    """

    @property
    def members(self) -> tuple[Member, ...]:
        """The current members, sorted by id."""
        ...

    @property
    def revision(self) -> int:
        """The revision of the current view; it grows with every change."""
        ...

    def watch_members(self) -> MemberWatch:
        """Follow the view: the current members first, then the newest after each change."""
        ...

    def membership(self, data: str = "", *, id: str | None = None) -> Membership:
        """A new, unregistered membership (id: a UUID4 unless given)."""
        ...

    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
