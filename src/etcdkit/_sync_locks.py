"""The threaded face of locks and elections: blocking views of :class:`Lock`,
:class:`Election`, its :class:`Campaign` and :class:`Leadership`, run through the client's
loop thread (``etcdkit._sync.Portal``). ``lost`` is a :class:`threading.Event` here;
``observe()`` is a plain iterator. Nothing is re-implemented: every call is forwarded.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Generator
from types import TracebackType
from typing import Generic, TypeVar

from etcdkit._election import Campaign, Election, Leader, Leadership
from etcdkit._errors import ClosedError
from etcdkit._lock import Lock
from etcdkit._queue import HoldState
from etcdkit._types import Compare
from etcdkit.cluster._blocking import PortalLike

__all__ = ["PortalLike", "SyncCampaign", "SyncElection", "SyncLeadership", "SyncLock"]

T = TypeVar("T")
H = TypeVar("H", Lock, Leadership)

_OVER = (HoldState.LOST, HoldState.RELEASED)


class _Held(Generic[H]):
    """What the twins of a :class:`Lock` and of a :class:`Leadership` share: the state of the
    hold, its guard and listeners, and ``lost``, a :class:`threading.Event` per acquisition."""

    def __init__(self, portal: PortalLike, aio: H) -> None:
        self._portal = portal
        self.aio: H = aio
        self._lost = threading.Event()
        portal.run_sync(self._follow)

    def _follow(self) -> None:  # on the loop thread, as are the listener's calls
        if self.aio.state in _OVER:
            self._lost.set()
        self.aio.add_listener(self._on_state)

    def _on_state(self, state: HoldState) -> None:
        if state is HoldState.WAITING and self._lost.is_set():
            self._lost = threading.Event()  # a new acquisition
        elif state in _OVER:
            self._lost.set()

    def guard(self) -> Compare:
        return self._portal.read(self.aio.guard)

    def add_listener(self, callback: Callable[[HoldState], None]) -> Callable[[], None]:
        """``callback`` runs on the client's loop thread; keep it quick."""
        return self._portal.run_sync(self.aio.add_listener, callback)

    @property
    def state(self) -> HoldState:
        return self._portal.read(lambda: self.aio.state)

    @property
    def lost(self) -> threading.Event:
        """Set when the current (or last) acquisition ended: LOST or RELEASED."""
        return self._lost


class SyncLock(_Held[Lock]):
    """Blocking view of a :class:`Lock`: ``with client.lock(name) as lock:``."""

    def __init__(self, portal: PortalLike, lock: Lock) -> None:
        super().__init__(portal, lock)

    def __repr__(self) -> str:
        return self._portal.read(lambda: repr(self.aio)).replace("<Lock", "<SyncLock", 1)

    def __enter__(self) -> SyncLock:
        self.acquire()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def acquire(self) -> None:
        self._portal.call(self.aio.acquire())

    def try_acquire(self) -> bool:
        return self._portal.call(self.aio.try_acquire())

    def release(self) -> None:
        if not self._portal.closed:
            self._portal.call(self.aio.release())

    @property
    def name(self) -> str | bytes:
        return self.aio.name

    @property
    def ttl(self) -> int:
        return self.aio.ttl

    @property
    def timeout(self) -> float | None:
        return self.aio.timeout

    @property
    def key(self) -> bytes:
        return self._portal.read(lambda: self.aio.key)

    @property
    def fencing_token(self) -> int:
        return self._portal.read(lambda: self.aio.fencing_token)

    @property
    def lease_id(self) -> int:
        return self._portal.read(lambda: self.aio.lease_id)

    @property
    def wakeups(self) -> int:
        return self._portal.read(lambda: self.aio.wakeups)


class SyncElection:
    """Blocking view of an :class:`Election`."""

    def __init__(self, portal: PortalLike, election: Election) -> None:
        self._portal = portal
        self.aio = election

    def __repr__(self) -> str:
        return repr(self.aio).replace("<Election", "<SyncElection", 1)

    @property
    def name(self) -> str | bytes:
        return self.aio.name

    @property
    def prefix(self) -> bytes:
        return self.aio.prefix

    def campaign(
        self, value: str | bytes, ttl: int = 10, timeout: float | None = None
    ) -> SyncCampaign:
        """``with election.campaign(value) as leadership:`` (see :meth:`Election.campaign`)."""
        return SyncCampaign(self._portal, self.aio.campaign(value, ttl, timeout))

    def leader(self) -> Leader | None:
        return self._portal.call(self.aio.leader())

    def observe(self) -> Generator[Leader, None, None]:
        """A plain iterator over the leaders (see :meth:`Election.observe`); its watch ends
        when the iterator is closed or garbage-collected."""
        agen = self._portal.run_sync(self.aio.observe)
        try:
            while True:
                try:
                    yield self._portal.call(_next(agen))
                except StopAsyncIteration:
                    return
        finally:
            if not self._portal.closed:
                with contextlib.suppress(ClosedError):
                    self._portal.call(agen.aclose())


async def _next(agen: AsyncIterator[T]) -> T:
    return await agen.__anext__()


class SyncCampaign:
    """Blocking view of a :class:`Campaign`: ``with`` it to lead."""

    def __init__(self, portal: PortalLike, campaign: Campaign) -> None:
        self._portal = portal
        self.aio = campaign

    def __enter__(self) -> SyncLeadership:
        leadership = self._portal.call(self.aio.__aenter__())
        return SyncLeadership(self._portal, leadership)

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._portal.closed:
            self._portal.call(self.aio.__aexit__(et, e, tb))


class SyncLeadership(_Held[Leadership]):
    """Blocking view of a :class:`Leadership`; ``lost`` is a :class:`threading.Event` here."""

    def __init__(self, portal: PortalLike, leadership: Leadership) -> None:
        super().__init__(portal, leadership)

    def __repr__(self) -> str:
        return self._portal.read(lambda: repr(self.aio)).replace(
            "<Leadership", "<SyncLeadership", 1
        )

    def proclaim(self, value: str | bytes) -> None:
        self._portal.call(self.aio.proclaim(value))

    def resign(self) -> None:
        if not self._portal.closed:
            self._portal.call(self.aio.resign())

    @property
    def key(self) -> bytes:
        return self.aio.key

    @property
    def revision(self) -> int:
        return self.aio.revision

    @property
    def lease_id(self) -> int:
        return self.aio.lease_id

    @property
    def value(self) -> bytes:
        return self._portal.read(lambda: self.aio.value)
