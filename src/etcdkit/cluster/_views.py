"""The newest membership view, watches on it where the latest view wins, and the bookkeeping
every cluster implementation shares about its memberships.

A cluster implementation feeds :class:`ViewHub` with each new view; every :class:`MemberWatch`
then hands its reader the newest view it has not seen. Publishing never waits for readers and
queues nothing: a slow reader skips the views it missed, and blocks nobody.

What a membership asks of the view (:class:`MemberIntent`), who holds each member id
(:class:`Owners`) and how a new membership's id is chosen (:func:`new_member_id`) do not depend
on where the members are kept; the etcd-backed and in-memory clusters both use them, and keep
to themselves only how a member gets into the view and out of it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import Generic, TypeVar

from etcdkit._errors import ClosedError
from etcdkit.cluster._member import Member, check_id, encode_member

__all__ = ["MemberIntent", "MemberWatch", "Owners", "ViewHub", "data_preview", "new_member_id"]

View = tuple[Member, ...]
M = TypeVar("M")


def new_member_id(data: str, id: str | None) -> str:
    """The id of a new membership: *id* if it can name a member, else a fresh UUID4. Refuses
    (TypeError/ValueError) an id or *data* that could not travel, at once rather than later."""
    member_id = str(uuid.uuid4()) if id is None else check_id(id)
    encode_member(Member(member_id, data))
    return member_id


def data_preview(data: str, limit: int = 60) -> str:
    """*data* as a membership's repr shows it: its repr, or for longer data its first *limit*
    characters and its size (a repr lands in logs and tracebacks: it stays one short line)."""
    if len(data) <= limit:
        return repr(data)
    return f"{data[:limit]!r}... ({len(data)} chars)"


class MemberIntent:
    """What one membership asks the view to show: its member while ``registered``, nothing
    otherwise; and the tests of a view against that, for the waits of ``register()``,
    ``synced()`` and ``deregister()``."""

    __slots__ = ("data", "id", "registered")

    def __init__(self, id: str, data: str) -> None:
        self.id = id
        self.data = data
        self.registered = False  # register() called, deregister() not since

    @property
    def member(self) -> Member:
        return Member(self.id, self.data)

    def set_data(self, data: str) -> bytes:
        """Take *data* and return the member's record with it; refuses data that cannot
        travel (TypeError/ValueError) and then keeps the old data."""
        value = encode_member(Member(self.id, data))
        self.data = data
        return value

    def present(self, view: View) -> bool:
        return any(m.id == self.id for m in view)

    def absent(self, view: View) -> bool:
        return not self.present(view)

    def in_sync(self, view: View) -> bool:
        """Present with the current data while registered, absent otherwise."""
        if self.registered:
            return self.member in view
        return self.absent(view)


class Owners(Generic[M]):
    """Which membership holds each member id, so that an id is registered by one membership
    at a time within a *scope* (a cluster, or every cluster of a store)."""

    def __init__(self, scope: str = "") -> None:
        self._scope = scope  # how the ValueError names where the id is taken, e.g. " of ..."
        self._held: dict[str, M] = {}

    def claim(self, id: str, membership: M) -> None:
        """Record *membership* as the holder of *id*; ValueError if another one holds it."""
        holder = self._held.get(id)
        if holder is not None and holder is not membership:
            raise ValueError(
                f"member id {id!r} is already registered by another membership{self._scope}; "
                f"deregister that one or pick another id"
            )
        self._held[id] = membership

    def release(self, id: str, membership: M) -> bool:
        """Forget *membership* as the holder of *id*; whether it was the holder."""
        if self._held.get(id) is membership:
            del self._held[id]
            return True
        return False

    def take_all(self) -> list[M]:
        """Forget every holder; the memberships that held an id."""
        held = list(self._held.values())
        self._held.clear()
        return held


class ViewHub:
    """Holds a cluster's current view (members sorted by id, and its revision)."""

    def __init__(self) -> None:
        # (members, revision) in one assignment: a reader in another thread never pairs the
        # members of one view with the revision of another.
        self._view: tuple[View, int] = ((), 0)
        self._version = 0  # counts distinct views, so an unchanged view wakes no watch
        self._wakeup = asyncio.Event()
        self._closed = False
        self._error: BaseException | None = None

    @property
    def members(self) -> View:
        return self._view[0]

    @property
    def revision(self) -> int:
        return self._view[1]

    @property
    def view(self) -> tuple[View, int]:
        """The current (members, revision), read together."""
        return self._view

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def error(self) -> BaseException | None:
        """Why the view ended, when it ended on a failure rather than a close."""
        return self._error

    def publish(self, members: View, revision: int) -> None:
        """Make (*members*, *revision*) the current view; wake watches if the members changed."""
        if self._closed:
            return
        old_members, old_revision = self._view
        if members != old_members:
            self._view = (members, max(old_revision, revision))
            self._version += 1
            self.wake()
        elif revision > old_revision:
            self._view = (old_members, revision)

    def watch(self) -> MemberWatch:
        if self._closed:
            raise ClosedError("the cluster is closed; create a new one to watch its members")
        return MemberWatch(self)

    async def wait_until(self, done: Callable[[View], bool]) -> int:
        """Return the revision once ``done(members)`` holds; ClosedError (or the failure that
        ended the view) if the hub closes first."""
        while True:
            if self._closed:
                if self._error is not None:
                    raise self._error
                raise ClosedError("the cluster was closed")
            members, revision = self._view
            if done(members):
                return revision
            await self._wakeup.wait()

    def close(self, error: BaseException | None = None) -> None:
        """End every watch and wake every waiter: they raise *error* if given (the failure
        that ended the view), else watches stop and waiters raise ClosedError. Idempotent."""
        if not self._closed:
            self._closed = True
            self._error = error
        self.wake()

    def wake(self) -> None:
        # A fresh event per round: every waiter of this round wakes, nobody misses the next one.
        event, self._wakeup = self._wakeup, asyncio.Event()
        event.set()


class MemberWatch:
    """An async iterator of membership views: the current one first, then each newer one.

    Each ``__anext__`` returns the newest view this watch has not returned yet, waiting for a
    change if there is none: views you were too slow for are skipped, never queued. Iteration
    ends (StopAsyncIteration) when the watch or its cluster is closed; if the cluster's view
    ended on a failure (e.g. no permission to read the root), that error is raised instead,
    and :class:`ClosedError` when the cluster closed with its client.
    Use it as ``async for members in cluster.watch_members(): ...`` or ``async with`` it to
    close it. ``revision`` is the revision of the view returned last.
    """

    def __init__(self, hub: ViewHub) -> None:
        self._hub = hub
        self._seen = -1
        self._closed = False
        self._revision = 0

    @property
    def revision(self) -> int:
        """The revision of the view this watch returned last (0 before the first)."""
        return self._revision

    def __repr__(self) -> str:
        state = "closed" if self._closed or self._hub.closed else "open"
        return f"<MemberWatch {state} members={len(self._hub.members)}>"

    def __aiter__(self) -> MemberWatch:
        return self

    async def __anext__(self) -> View:
        hub = self._hub
        while True:
            if self._closed:
                raise StopAsyncIteration
            if hub.closed:
                if hub.error is not None:
                    raise hub.error
                raise StopAsyncIteration
            if hub._version != self._seen:
                self._seen = hub._version
                members, self._revision = hub.view
                return members
            await hub._wakeup.wait()

    async def aclose(self) -> None:
        """Stop the watch: a pending or later ``__anext__`` ends the iteration. Idempotent."""
        if not self._closed:
            self._closed = True
            self._hub.wake()

    close = aclose

    async def __aenter__(self) -> MemberWatch:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
