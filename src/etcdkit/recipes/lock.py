"""Lock: mutual exclusion with a fencing token, interoperable with Go's ``concurrency.Mutex``
and ``etcdctl lock``. Each acquisition is a :class:`LockHold` of its own. Written on the public
client only (:class:`etcdkit._surface.Etcd`), as Go's ``concurrency.Mutex`` is on ``clientv3``."""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable
from types import TracebackType

from etcdkit._errors import EtcdkitError, EtcdTimeoutError, NotHeldError
from etcdkit._logs import CALLBACK_ERRORS
from etcdkit._surface import Etcd
from etcdkit._types import Compare
from etcdkit.recipes._hold import fence
from etcdkit.recipes._line import Contender, HoldState, check_timeout, check_ttl, prefix_of

__all__ = ["Lock", "LockHold"]

log = logging.getLogger("etcdkit.lock")

# An acquisition in progress or in force: the same task (thread) may not acquire again.
ACTIVE = (HoldState.WAITING, HoldState.REQUEUED, HoldState.HELD, HoldState.SUSPENDED)


class LockHold:
    """One acquisition of a :class:`Lock`: what ``async with etcd.lock(name) as held:`` and
    ``held = await lock.acquire()`` give.

    Its :attr:`key`, :attr:`fencing_token`, :attr:`state`, :attr:`lost` event, :meth:`guard`
    and listeners belong to this acquisition alone, and :meth:`release` releases this
    acquisition alone: never a later one made through the same :class:`Lock` (after this one
    was lost, say). A hold is single-use: once ``LOST`` or ``RELEASED`` it stays so; acquire
    again through the Lock for a new one.
    """

    def __init__(self, lock: Lock) -> None:
        self._lock = lock
        self._listeners: list[Callable[[HoldState], None]] = []
        self._released = False  # release() was called (a LOST hold stays LOST after it)
        self._c = Contender(
            lock._etcd,
            lock._prefix,
            b"",  # Go's Mutex stores an empty value
            lock._ttl,
            what=f"lock {lock.name!r}",
            kind="lock",
            on_state=self._on_state,
        )

    def __repr__(self) -> str:
        return f"<LockHold name={self._lock.name!r} {self._c!r}>"

    @property
    def name(self) -> str | bytes:
        """The lock's name."""
        return self._lock.name

    @property
    def key(self) -> bytes:
        """Our key in etcd (``name/<lease id hex>``) once we have one, else ``b""``. It stays
        after a release or a loss."""
        return self._c.key

    @property
    def fencing_token(self) -> int:
        """The create revision of our key when this acquisition came to hold the lock (0
        before): strictly higher for each later holder. It stays after a release or a loss."""
        return self._c.token

    @property
    def lease_id(self) -> int:
        """The lease our key is on (0 when there is none: before, and after a release)."""
        return self._c.lease_id

    @property
    def state(self) -> HoldState:
        """Where this acquisition stands (a :class:`HoldState`)."""
        return self._c.state

    @property
    def lost(self) -> asyncio.Event:
        """Set when this acquisition can no longer be trusted (``LOST``) or was released."""
        return self._c.lost

    @property
    def wakeups(self) -> int:
        """How many times the deletion of the key just before ours woke this acquisition (one,
        if it waited, unless waiters ahead gave up): no herd."""
        return self._c.wakeups

    @property
    def requeues(self) -> int:
        """How many times this acquisition lost its place in line while waiting (its key or
        lease vanished) and queued again at the back (state ``REQUEUED``)."""
        return self._c.requeues

    def guard(self) -> Compare:
        """A :class:`Compare` that holds only while this acquisition holds the lock: our key
        exists with the create revision we acquired it at. Put it in the ``compare`` of every
        write the lock protects (it keeps failing in etcd after a release or a loss; asked for
        once this acquisition is ``LOST`` or ``RELEASED``, it holds for no key, also while our
        key outlives the hold in etcd). Raises :class:`NotHeldError` if this acquisition never
        held the lock."""
        if not self._c.token:
            raise NotHeldError(
                f"lock {self.name!r} was never acquired by this acquisition (state "
                f"{self.state.name}): nothing to guard with"
            )
        return fence(self._c.key, self._c.token, self._c.state)

    def add_listener(self, callback: Callable[[HoldState], None]) -> Callable[[], None]:
        """Call ``callback(state)`` on each state change of this acquisition (on the event
        loop); returns a function that removes it. Errors are logged."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    async def release(self) -> None:
        """Release this acquisition: our key goes with its lease, the next waiter takes over
        at once. Idempotent; bounded when etcd is down (the key then expires with its TTL).
        Never touches another acquisition. While this acquisition is still being acquired
        (by another task), that ends with :class:`ClosedError`."""
        self._released = True
        await self._c.release()

    def _on_state(self, state: HoldState) -> None:
        for cb in [*self._listeners, *self._lock._listeners]:
            try:
                cb(state)
            except CALLBACK_ERRORS:
                log.exception("lock %r: state listener failed", self._lock.name)


class Lock:
    """A distributed lock (Go's ``concurrency.Mutex``) on the keys under ``name + "/"``.

    Create with :meth:`AsyncClient.lock` (no I/O), then ``async with lock as held:`` (or
    ``held = await lock.acquire()`` / :meth:`release`, or :meth:`try_acquire`, which does not
    wait). Each acquisition is a :class:`LockHold` of its own and puts our key
    ``name/<lease id in hex>`` on an etcd lease of its own (``ttl`` seconds, kept alive
    meanwhile); the oldest key holds, as in Go, so ``etcdctl lock name`` and Go programs
    exclude us and we them. Waiters queue in order and each watches only the key just before
    its own: a release wakes one waiter. :meth:`acquire` waits up to ``timeout`` seconds
    (``None``: for ever; ``0``: not at all, it acquires only a free lock), then raises
    :class:`EtcdTimeoutError`; a timeout, a cancellation or an error while waiting removes our
    key and revokes our lease (no orphan). Acquire again after a release; a Lock is not
    re-entrant.

    **One Lock, many tasks.** Acquisitions made through one Lock object by different tasks
    exclude each other, as acquisitions through different Locks do (each has its own key).
    The Lock's own :attr:`key`, :attr:`fencing_token`, :attr:`lease_id`, :attr:`state`,
    :attr:`lost`, :attr:`wakeups`, :attr:`requeues` and :meth:`guard` answer for the
    acquisition made by the *current task*. A task that made none (a cleanup task; on Python
    3.11 the task ``asyncio.wait_for(lock.acquire(), t)`` runs ``acquire`` in) gets the one
    acquisition that holds (or held, and is not yet released), else the one still waiting,
    else the latest; :meth:`release` (and leaving ``async with``) releases the current task's
    acquisition, else that one, and raises ``RuntimeError`` rather than guess between two in
    progress. So a task's late release never releases another task's newer acquisition, and
    never a waiter's in place of the holder's. Hold on to the :class:`LockHold` to be
    explicit.

    **Why fence.** Holding a lock in etcd does not stop the holder's own writes elsewhere from
    being late: a process paused (GC, swap, SIGSTOP) or cut off past the TTL can wake up still
    "holding" while etcd has given the lock to the next one. So guard every write the lock
    protects with the fencing token: in etcd, put :meth:`LockHold.guard` in the write's
    transaction (``etcd.txn(compare=[held.guard()], success=[...])`` lands only while our key
    exists, that is, while we hold); elsewhere, pass :attr:`LockHold.fencing_token` along and
    have the resource refuse tokens lower than the highest it has seen (tokens strictly
    increase from holder to holder).

    **Faults.** ``state`` (a :class:`HoldState`) is ``SUSPENDED`` while etcd does not confirm
    our lease; ``lost`` (an :class:`asyncio.Event`) is set, and ``state`` is ``LOST``, as soon
    as etcd may give the lock to another: our key deleted, its lease revoked or expired, or
    unconfirmed for the TTL (less a margin). A waiter whose key or lease vanishes queues again
    at the back (``REQUEUED``, logged once as a WARNING). Closing the client releases the lock.
    """

    def __init__(
        self,
        client: Etcd,
        name: str | bytes,
        ttl: int = 10,
        timeout: float | None = 30,
    ) -> None:
        self._prefix = prefix_of(name)
        self._name = name
        self._ttl = check_ttl(ttl)
        self._timeout = check_timeout(timeout)
        self._etcd = client
        self._listeners: list[Callable[[HoldState], None]] = []
        self._mine: weakref.WeakKeyDictionary[asyncio.Task[object], LockHold] = (
            weakref.WeakKeyDictionary()
        )
        self._latest: LockHold | None = None
        # every acquisition still referenced (a task's, a returned LockHold, one in force):
        # a task that made none is answered for the one in progress, when there is one
        self._holds: weakref.WeakSet[LockHold] = weakref.WeakSet()
        self._never = asyncio.Event()  # ``lost`` before any acquisition: never set

    def __repr__(self) -> str:
        hold = self._current()
        what = repr(hold._c) if hold is not None else "state=IDLE"
        return f"<Lock name={self._name!r} {what}>"

    # -- facts (no I/O) ---------------------------------------------------------------------------

    @property
    def name(self) -> str | bytes:
        return self._name

    @property
    def ttl(self) -> int:
        return self._ttl

    @property
    def timeout(self) -> float | None:
        return self._timeout

    @property
    def hold(self) -> LockHold | None:
        """The acquisition made through this Lock by the current task, else (see the class
        notes) the one in progress, else the latest; ``None`` before the first. The
        attributes below answer for it."""
        return self._current()

    @property
    def key(self) -> bytes:
        """Our key in etcd (``name/<lease id hex>``) of the current task's acquisition (else
        the latest), once it has one, else ``b""``."""
        hold = self._current()
        return hold.key if hold is not None else b""

    @property
    def fencing_token(self) -> int:
        """The fencing token of the current task's acquisition (else see :attr:`hold`): see
        :attr:`LockHold.fencing_token` (0 before one held)."""
        hold = self._current()
        return hold.fencing_token if hold is not None else 0

    @property
    def lease_id(self) -> int:
        """The lease of the current task's acquisition (else see :attr:`hold`); 0 when none."""
        hold = self._current()
        return hold.lease_id if hold is not None else 0

    @property
    def state(self) -> HoldState:
        """The state of the current task's acquisition (else see :attr:`hold`); ``IDLE`` before."""
        hold = self._current()
        return hold.state if hold is not None else HoldState.IDLE

    @property
    def lost(self) -> asyncio.Event:
        """The ``lost`` event of the current task's acquisition (else see :attr:`hold`): set when it
        can no longer be trusted (LOST) or was released."""
        hold = self._current()
        return hold.lost if hold is not None else self._never

    @property
    def wakeups(self) -> int:
        """:attr:`LockHold.wakeups` of the current task's acquisition (else see :attr:`hold`)."""
        hold = self._current()
        return hold.wakeups if hold is not None else 0

    @property
    def requeues(self) -> int:
        """:attr:`LockHold.requeues` of the current task's acquisition (else see :attr:`hold`)."""
        hold = self._current()
        return hold.requeues if hold is not None else 0

    def guard(self) -> Compare:
        """:meth:`LockHold.guard` of the current task's acquisition (else see :attr:`hold`). Raises
        :class:`NotHeldError` if the lock was never acquired (by that acquisition)."""
        hold = self._current()
        if hold is None:
            raise NotHeldError(f"lock {self._name!r} was never acquired: nothing to guard with")
        return hold.guard()

    def add_listener(self, callback: Callable[[HoldState], None]) -> Callable[[], None]:
        """Call ``callback(state)`` on every state change (on the event loop) of every
        acquisition made through this Lock, from now on; returns a function that removes it.
        Errors are logged. (:meth:`LockHold.add_listener` follows one acquisition.)"""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    # -- acquiring and releasing ------------------------------------------------------------------

    async def acquire(self) -> LockHold:
        """Wait until we hold the lock (up to ``timeout`` seconds; with ``timeout=0``, take it
        only if it is free) and return this acquisition. Raises :class:`EtcdTimeoutError` on
        timeout (at once if ``timeout=0`` and another holds), :class:`ClosedError` if the
        client closes or the acquisition is released meanwhile; our key is removed, and our
        lease revoked, on every failure. Raises ``RuntimeError`` if this task's previous
        acquisition through this Lock is still waiting or holding (not re-entrant)."""
        hold = self._begin()
        await self._run(hold, try_once=False)
        return hold

    async def try_acquire(self) -> bool:
        """Take the lock if nobody holds it, without waiting: ``True`` if we hold it now
        (release it with :meth:`release`), ``False`` if another holds it (our key is removed
        again, as Go's ``TryLock`` does). Raises the client's error (e.g.
        :class:`ConnectionUnavailableError`) when etcd does not answer within the client's
        timeout."""
        return await self._run(self._begin(), try_once=True)

    async def release(self) -> None:
        """Release the current task's acquisition (else the one in progress through this
        Lock: see the class notes): its key goes with its lease; the next waiter takes over at
        once. Idempotent; bounded when etcd is down (the key then expires with its TTL).
        Called while another task waits in :meth:`acquire` (and this task made none, and no
        other acquisition is in progress), that acquisition ends with :class:`ClosedError`.
        Raises ``RuntimeError`` when this task made none and two or more are in progress
        without exactly one of them holding. Use :meth:`LockHold.release` to release one
        acquisition."""
        hold = self._current(releasing=True)
        if hold is not None:
            await hold.release()

    async def __aenter__(self) -> LockHold:
        return await self.acquire()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.release()  # this task's acquisition: the one __aenter__ made

    # -- internals ---------------------------------------------------------------------------------

    def _current(self, *, releasing: bool = False) -> LockHold | None:
        """The current task's acquisition; for a task that made none (a cleanup task, the
        task ``asyncio.wait_for`` ran ``acquire()`` in on Python 3.11, a thread's read through
        the portal): the one acquisition that holds or held the lock and is not released,
        else the one still waiting, else the latest. ``releasing``: where that guess could
        end the wrong acquisition (two or more in progress, none or several of them having
        held), raise ``RuntimeError`` instead."""
        try:
            task = asyncio.current_task()
        except RuntimeError:  # no running loop: read from outside it
            task = None
        hold = self._mine.get(task) if task is not None else None
        if hold is not None:
            return hold
        going = [
            h
            for h in self._holds
            if not h._released and (h.state in ACTIVE or h.state is HoldState.LOST)
        ]
        held = [h for h in going if h.fencing_token]
        if len(held) == 1:
            return held[0]
        if not held and len(going) == 1:
            return going[0]
        if releasing and going:
            raise RuntimeError(
                f"lock {self._name!r}: this task made no acquisition through this Lock and "
                f"{len(going)} are in progress ({len(held)} of them acquired): which one to "
                "release is not known; call release() on the LockHold that acquire() returned"
            )
        return self._latest

    def _begin(self) -> LockHold:
        """A new acquisition of the current task (not yet started)."""
        task = asyncio.current_task()
        mine = self._mine.get(task) if task is not None else None
        if mine is not None and mine.state in ACTIVE:
            raise RuntimeError(
                f"lock {self._name!r} is already {mine.state.name.lower()} by this task through "
                "this Lock object (Locks are not re-entrant); release() it first"
            )
        hold = self._latest = LockHold(self)
        self._holds.add(hold)
        if task is not None:
            self._mine[task] = hold
        return hold

    async def _run(self, hold: LockHold, *, try_once: bool) -> bool:
        """Acquire ``hold``: wait up to ``timeout`` (``try_once``: look once, ``False`` if
        another holds; ``timeout=0``: look once, raise if another holds)."""
        c = hold._c
        if try_once or self._timeout == 0:
            if await c.acquire(wait=False):
                return True
            if try_once:
                return False
            raise EtcdTimeoutError(
                f"lock {self._name!r} not acquired: another holds it and timeout=0 does not "
                f"wait{self._behind(hold, 'queued')} (endpoints {', '.join(self._etcd.endpoints)})"
            )
        try:
            async with asyncio.timeout(self._timeout):
                await c.acquire(wait=True)
        except TimeoutError as exc:
            if isinstance(exc, EtcdkitError):
                raise
            raise EtcdTimeoutError(
                f"lock {self._name!r} not acquired within {self._timeout:g} s"
                f"{self._behind(hold, 'waiting')} (endpoints {', '.join(self._etcd.endpoints)})"
            ) from None
        return True

    @staticmethod
    def _behind(hold: LockHold, how: str) -> str:
        ahead = hold._c.ahead
        return f"; {how} behind {ahead.key!r} (lease {ahead.lease:#x})" if ahead else ""
