"""The threaded face of locks and elections: blocking twins of :class:`Lock` and its
:class:`LockHold`, of :class:`Election`, its :class:`Campaign` and :class:`Leadership`, run
through the client's loop thread (``etcdkit._blocking.portal.Portal``). ``lost`` is a
:class:`threading.Event` here; ``observe()`` is a plain iterator. Nothing is re-implemented:
every call is forwarded.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import TypeVar

from etcdkit._blocking.twin import (
    PortalLike,
    SetOn,
    SyncIterator,
    Twin,
    blocking,
    blocking_read,
    mirror,
)
from etcdkit._errors import ClosedError, NotHeldError
from etcdkit._types import Compare, HoldState
from etcdkit.recipes.election import Campaign, Election, Leader, Leadership
from etcdkit.recipes.lock import ACTIVE, Lock, LockHold

__all__ = [
    "PortalLike",
    "SyncCampaign",
    "SyncElection",
    "SyncLeadership",
    "SyncLock",
    "SyncLockHold",
]

T = TypeVar("T")
H = TypeVar("H", bound=LockHold | Leadership)

_OVER = (HoldState.LOST, HoldState.RELEASED)


class _Held(Twin[H]):
    """What the twins of a :class:`LockHold` and of a :class:`Leadership` share: the guard,
    the listeners, and ``lost``, a :class:`threading.Event` of this acquisition."""

    def __init__(self, portal: PortalLike, aio: H) -> None:
        super().__init__(portal, aio)
        self._lost = threading.Event()
        portal.read(self._follow)  # (directly once the client is closed: its loop is gone)

    def _follow(self) -> None:  # on the loop thread, as are the listener's calls
        if self.aio.state in _OVER:
            self._lost.set()
        self.aio.add_listener(SetOn(self._lost, _OVER))

    def guard(self) -> Compare:
        """A :class:`Compare` that holds only while this acquisition holds: put it in the
        ``compare`` of every protected write (see the asyncio face)."""
        return self.portal.read(self.aio.guard)

    def add_listener(self, callback: Callable[[HoldState], None]) -> Callable[[], None]:
        """``callback(state)`` on each state change; it runs on the client's loop thread:
        keep it quick. Returns a function that removes it."""
        return self.portal.run_sync(self.aio.add_listener, callback)

    @property
    def lost(self) -> threading.Event:
        """Set when this acquisition ended: LOST or RELEASED."""
        return self._lost


class SyncLockHold(_Held[LockHold]):
    """Blocking twin of a :class:`LockHold`: one acquisition, from ``with client.lock(name) as
    held:`` or ``held = lock.acquire()``. Its release releases it alone."""

    name: mirror[str | bytes] = mirror(LockHold.name, direct=True)
    key: mirror[bytes] = mirror(LockHold.key)
    fencing_token: mirror[int] = mirror(LockHold.fencing_token)
    lease_id: mirror[int] = mirror(LockHold.lease_id)
    state: mirror[HoldState] = mirror(LockHold.state)
    wakeups: mirror[int] = mirror(LockHold.wakeups)
    requeues: mirror[int] = mirror(LockHold.requeues)

    def release(self) -> None:
        """See :meth:`LockHold.release` (a no-op once the client is closed)."""
        if not self.portal.closed:
            self.portal.call(self.aio.release())


class SyncLock(Twin[Lock]):
    """Blocking twin of a :class:`Lock`: ``with client.lock(name) as held:``.

    Each acquisition is a :class:`SyncLockHold` of its own. The Lock's own attributes answer
    for the acquisition made by the *current thread*, else (a thread that made none) for the
    one in progress as :class:`Lock` says; :meth:`release` (and leaving ``with``) releases
    the current thread's acquisition, else that one (``RuntimeError`` rather than a guess
    between two in progress): a thread's late release never releases another thread's newer
    acquisition. Threads sharing one SyncLock exclude each other.
    """

    def __init__(self, portal: PortalLike, lock: Lock) -> None:
        super().__init__(portal, lock)
        self._maps = threading.Lock()  # the maps below are used from many threads
        self._mine: weakref.WeakKeyDictionary[threading.Thread, SyncLockHold] = (
            weakref.WeakKeyDictionary()
        )
        self._last_twin: SyncLockHold | None = None  # the twin of the latest acquisition
        self._never = threading.Event()

    def __repr__(self) -> str:
        hold = self._current()
        if hold is None:
            return super().__repr__()
        return repr(hold).replace("<SyncLockHold", "<SyncLock", 1)

    def __enter__(self) -> SyncLockHold:
        return self.acquire()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()  # this thread's acquisition: the one __enter__ made

    def acquire(self) -> SyncLockHold:
        """See :meth:`Lock.acquire`; not re-entrant per thread."""
        self._check_reentry()

        async def acquired() -> SyncLockHold:
            # (its twin made on the loop: no second trip there that an interrupt could cut)
            return self._twin(await self.aio.acquire())

        # (a KeyboardInterrupt after the acquisition was made releases it: nobody holds it)
        return self._mine_now(self.portal.call(acquired(), abandon=_release))

    def try_acquire(self) -> bool:
        """See :meth:`Lock.try_acquire`."""
        self._check_reentry()

        async def attempt() -> tuple[bool, SyncLockHold | None]:
            ok = await self.aio.try_acquire()
            hold = self.aio.hold  # (this task's: the one try_acquire made)
            return ok, None if hold is None else self._twin(hold)

        ok, twin = self.portal.call(attempt())
        if twin is not None:
            self._mine_now(twin)
        return ok

    def release(self) -> None:
        """Release the current thread's acquisition (else, as :meth:`Lock.release` says, the
        one in progress); see :meth:`Lock.release`. A no-op once the client is closed."""
        hold = self._current(releasing=True)
        if hold is not None:
            hold.release()

    def guard(self) -> Compare:
        """:meth:`LockHold.guard` of the current thread's acquisition (else see :attr:`hold`)."""
        hold = self._current()
        if hold is None:
            raise NotHeldError(f"lock {self.aio.name!r} was never acquired: nothing to guard with")
        return hold.guard()

    def add_listener(self, callback: Callable[[HoldState], None]) -> Callable[[], None]:
        """See :meth:`Lock.add_listener`; ``callback`` runs on the client's loop thread."""
        return self.portal.run_sync(self.aio.add_listener, callback)

    @property
    def hold(self) -> SyncLockHold | None:
        """The acquisition made through this Lock by the current thread, else the one in
        progress (see :class:`Lock`), else the latest; ``None`` before the first."""
        return self._current()

    @property
    def name(self) -> str | bytes:
        """The lock's name."""
        return self.aio.name

    @property
    def ttl(self) -> int:
        """The TTL (seconds) of each acquisition's lease."""
        return self.aio.ttl

    @property
    def timeout(self) -> float | None:
        """How long an acquisition waits by default (``None``: as long as it takes)."""
        return self.aio.timeout

    @property
    def key(self) -> bytes:
        """Our key in etcd of the current thread's acquisition (else the latest), once it has
        one, else ``b""`` (see :attr:`Lock.key`)."""
        hold = self._current()
        return hold.key if hold is not None else b""

    @property
    def fencing_token(self) -> int:
        """The fencing token of the current thread's acquisition (else the latest); 0 before
        one held (see :attr:`LockHold.fencing_token`)."""
        hold = self._current()
        return hold.fencing_token if hold is not None else 0

    @property
    def lease_id(self) -> int:
        """The lease of the current thread's acquisition (else the latest); 0 when none."""
        hold = self._current()
        return hold.lease_id if hold is not None else 0

    @property
    def state(self) -> HoldState:
        """Where the current thread's acquisition (else the latest) stands: a
        :class:`HoldState` (``IDLE`` before the first)."""
        hold = self._current()
        return hold.state if hold is not None else HoldState.IDLE

    @property
    def lost(self) -> threading.Event:
        """The ``lost`` event of the current thread's acquisition (else see :attr:`hold`)."""
        hold = self._current()
        return hold.lost if hold is not None else self._never

    @property
    def wakeups(self) -> int:
        """How many times the key just before the acquisition's woke it (see
        :attr:`LockHold.wakeups`)."""
        hold = self._current()
        return hold.wakeups if hold is not None else 0

    @property
    def requeues(self) -> int:
        """How many times the acquisition lost its place in line and queued again (see
        :attr:`LockHold.requeues`)."""
        hold = self._current()
        return hold.requeues if hold is not None else 0

    def _current(self, *, releasing: bool = False) -> SyncLockHold | None:
        with self._maps:
            mine = self._mine.get(threading.current_thread())
        if mine is not None:
            return mine
        # (read in a task of the portal's, which made no acquisition: the Lock's answer for
        # such a task; ``releasing`` raises where it could be the wrong acquisition)
        hold = self.portal.read(lambda: self.aio._current(releasing=releasing))
        return self._twin(hold) if hold is not None else None

    def _twin(self, hold: LockHold) -> SyncLockHold:
        """The one twin of ``hold`` (one ``lost`` event per acquisition) if it is a thread's
        own or the latest (older ones are not kept: no acquisition is kept for ever)."""
        with self._maps:
            for twin in (self._last_twin, *self._mine.values()):
                if twin is not None and twin.aio is hold:
                    return twin
        made = SyncLockHold(self.portal, hold)
        with self._maps:
            last = self._last_twin
            if last is not None and last.aio is hold:
                return last  # (made meanwhile by another thread)
            self._last_twin = made
        return made

    def _mine_now(self, twin: SyncLockHold) -> SyncLockHold:
        """``twin`` is the current thread's acquisition from now on."""
        with self._maps:
            self._mine[threading.current_thread()] = twin
        return twin

    def _check_reentry(self) -> None:
        if self.portal.closed:  # (first: a close cut short may have left a hold HELD)
            raise ClosedError("this etcdkit Client is closed; create a new one")
        with self._maps:
            mine = self._mine.get(threading.current_thread())
        state = mine.state if mine is not None else HoldState.IDLE  # (read once: it moves)
        if state in ACTIVE:
            raise RuntimeError(
                f"lock {self.aio.name!r} is already {state.name.lower()} by this thread "
                "through this Lock object (Locks are not re-entrant); release() it first"
            )


class SyncElection(Twin[Election]):
    """Blocking twin of an :class:`Election`."""

    @property
    def name(self) -> str | bytes:
        """The election's name."""
        return self.aio.name

    @property
    def prefix(self) -> bytes:
        """The key prefix the candidates' keys go under (``name/``)."""
        return self.aio.prefix

    def campaign(
        self, value: str | bytes, ttl: int = 10, timeout: float | None = None
    ) -> SyncCampaign:
        """``with election.campaign(value) as leadership:`` (see :meth:`Election.campaign`)."""
        return SyncCampaign(self.portal, self.aio.campaign(value, ttl, timeout))

    leader = blocking(Election.leader)

    def observe(self) -> SyncIterator[Leader]:
        """A plain iterator over the leaders (see :meth:`Election.observe`); its watch ends
        when the iterator is closed (from any thread: a ``for`` loop over it in another ends)
        or garbage-collected."""
        return SyncIterator(self.portal, self.portal.run_sync(self.aio.observe))


class SyncCampaign(Twin[Campaign]):
    """Blocking twin of a :class:`Campaign`: ``with`` it to lead."""

    state: mirror[HoldState] = mirror(Campaign.state)
    add_listener = blocking_read(Campaign.add_listener)

    def __enter__(self) -> SyncLeadership:
        async def entered() -> SyncLeadership:
            # (its twin made on the loop: no second trip there that an interrupt could cut)
            return SyncLeadership(self.portal, await self.aio.__aenter__())

        # (leading for an enter interrupted in this thread: it resigns, nobody leads for it)
        return self.portal.call(entered(), abandon=lambda _: self.aio.__aexit__(None, None, None))

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self.portal.closed:
            self.portal.call(self.aio.__aexit__(et, e, tb))


class SyncLeadership(_Held[Leadership]):
    """Blocking twin of a :class:`Leadership`; ``lost`` is a :class:`threading.Event` here."""

    state: mirror[HoldState] = mirror(Leadership.state)
    value: mirror[bytes] = mirror(Leadership.value)
    requeues: mirror[int] = mirror(Leadership.requeues)

    def proclaim(self, value: str | bytes) -> None:
        """See :meth:`Leadership.proclaim`."""
        self.portal.call(self.aio.proclaim(value))

    def resign(self) -> None:
        """See :meth:`Leadership.resign` (a no-op once the client is closed)."""
        if not self.portal.closed:
            self.portal.call(self.aio.resign())

    @property
    def key(self) -> bytes:
        """Our candidate key in etcd."""
        return self.aio.key

    @property
    def revision(self) -> int:
        """The create revision of our candidate key: the fencing token of this leadership."""
        return self.aio.revision

    @property
    def lease_id(self) -> int:
        """The lease our candidate key is on."""
        return self.aio.lease_id


async def _release(twin: SyncLockHold) -> None:
    await twin.aio.release()
