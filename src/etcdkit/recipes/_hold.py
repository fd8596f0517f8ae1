"""What the recipes that hold something share: one acquisition, from its wait to its release
(a semaphore's :class:`~etcdkit.Permit`, a read or write hold of an :class:`~etcdkit.RWLock`).

Written on the public client only (:class:`etcdkit._surface.Etcd`):

- Every acquisition has a lease of its own (an :class:`~etcdkit.Session`), so that a release
  and a state belong to the acquisition that made them: never to another that shares its
  object (the first finding of issue 23, about ``Lock``).
- A cancellation or a timeout while acquiring revokes that lease, which takes every key of the
  acquisition with it; a cancellation that lands while the lease is being granted waits (a
  bounded time) for the grant's answer and revokes the lease it names.
- A waiter whose key or lease vanishes (revoked, expired, deleted by hand) queues again at the
  back with a new lease; that is visible: the state ``REQUEUED`` (then ``WAITING`` again), one
  WARNING line, and :attr:`Hold.requeues`.
- Once it holds, :class:`Hold` watches its own key and its session and says ``LOST`` as soon
  as either tells it that etcd may give what it holds to another: the key deleted or replaced,
  the lease revoked or expired, or unconfirmed (``SUSPENDED``) until a margin before its TTL.
  It then revokes the lease at once, so that the next in line need not wait for the TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar

from etcdkit._blocking.twin import PortalLike, SetOn, Twin
from etcdkit._errors import (
    ClosedError,
    CompactedError,
    EtcdkitError,
    EtcdTimeoutError,
    NotHeldError,
)
from etcdkit._logs import CALLBACK_ERRORS, RateLimitedLog
from etcdkit._surface import Etcd
from etcdkit._types import (
    Compare,
    EventType,
    HoldState,
    OpResult,
    RangeResult,
    SessionState,
    WatchEvent,
    WatchFilter,
    check_timeout,
    to_bytes,
)
from etcdkit.recipes.session import abandon

if TYPE_CHECKING:
    from etcdkit.recipes.session import Session

__all__ = [
    "UNCONFIRMED",
    "Gone",
    "Hold",
    "Holds",
    "SyncHold",
    "absent",
    "check_count",
    "check_timeout",
    "check_ttl",
    "confirmed",
    "deleted",
    "lost_margin",
    "name_prefix",
    "open_session",
    "ranges",
    "watch_until",
]

log = logging.getLogger("etcdkit.recipes")
_SHORT_TTL = RateLimitedLog(log, math.inf)  # the ttl=1 warning: once per process


class Holds(Protocol):
    """What :class:`SyncHold` follows: a ``lost`` event and state listeners."""

    @property
    def lost(self) -> asyncio.Event: ...

    def add_listener(self, callback: Callable[[HoldState], None]) -> Callable[[], None]: ...

    def guard(self) -> Compare: ...


H = TypeVar("H", bound=Holds)


# -- fencing --------------------------------------------------------------------------------------


def fence(key: bytes, token: int, state: HoldState) -> Compare:
    """The ``guard()`` of a hold of ``key`` at create revision ``token``: true while the key is
    in etcd at that revision, and never true once the hold knows it is over (``LOST``,
    ``RELEASED``): between a hold found lost here (its lease unconfirmed for its TTL, etcd
    unreachable) and etcd expiring or revoking the lease, the key is still there, and a write
    guarded by the plain compare would land (a guard asked for before that keeps comparing the
    key alone). Revisions are never negative: ``create_revision < 0`` holds for no key."""
    if state is HoldState.LOST or state is HoldState.RELEASED:
        return Compare.create_revision(key, "<", 0)
    return Compare.create_revision(key, "==", token)


# -- argument checks (before any I/O) -------------------------------------------------------------


def name_prefix(name: str | bytes) -> bytes:
    """``name + "/"``: the prefix of a recipe's keys (so that "/a" and "/ab" share none)."""
    raw = to_bytes(name, "name")
    if not raw:
        raise ValueError('name must not be empty: pass e.g. "/jobs/exports"')
    return raw + b"/"


def check_ttl(ttl: object) -> int:
    if not isinstance(ttl, int) or isinstance(ttl, bool):
        raise TypeError(f"ttl must be a whole number of seconds (int), got {ttl!r:.40}")
    if not 1 <= ttl < 2**63:
        raise ValueError(f"ttl must be >= 1 second, got {ttl!r}")
    if ttl == 1:
        # A refresh goes out every half second and a stall is noticed a second after one went
        # unanswered: with a 1 s lease, etcd may expire it (and hand the hold to another)
        # before LOST is set. Allowed, as in Go, but said once per process.
        _SHORT_TTL.warning(
            ("ttl", 1),
            "ttl=1: etcd may expire the lease, and give the hold to another, before a cut-off "
            "holder is told LOST; use ttl >= 2 for a hold that relies on lost/guard()",
        )
    return ttl


def check_count(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{what} must be an int >= 1, got {type(value).__name__}: {value!r:.40}")
    if not 1 <= value < 2**31:
        raise ValueError(f"{what} must be an int >= 1, got {value!r}")
    return value


def lost_margin(ttl: int) -> float:
    """How long before the lease's expiry (as last confirmed) a SUSPENDED holder says LOST: we
    learn of a refresh when its answer arrives, etcd counts the TTL from a little earlier."""
    return min(1.0, ttl / 10.0)


UNCONFIRMED = "our lease went unconfirmed for nearly its TTL as our turn came"


async def confirmed(session: Session, ttl: int) -> bool:
    """Whether a hold may begin now on ``session``: not when its lease is lost, nor when its
    keep-alive has gone unanswered for so long that the hold would be LOST at once (etcd back
    from an outage, our keep-alive stream not yet: the turn came through a read). Then this
    waits for the keep-alive's next word first: ALIVE (the hold begins HELD) or not (the
    caller queues again with a new lease), bounded by the lease's expiry (as the session
    knows it: it gives the lease up then)."""
    if session.lost.is_set() or session.state is SessionState.CLOSED:
        return False
    if session.state is not SessionState.SUSPENDED:
        return True
    loop = asyncio.get_running_loop()
    expires = session.expires
    if expires is None:
        return False
    left = expires - loop.time()  # (time.monotonic(), the loop's clock)
    if left > lost_margin(ttl):
        return True  # begins SUSPENDED, as any hold whose keep-alive is not answered
    changed: asyncio.Future[SessionState] = loop.create_future()

    def on_state(state: SessionState) -> None:
        if state is not SessionState.SUSPENDED and not changed.done():
            changed.set_result(state)

    unlisten = session.add_listener(on_state)
    try:
        async with asyncio.timeout(max(0.0, left) + 1.0):
            return await changed is SessionState.ALIVE
    except TimeoutError:
        return False
    finally:
        unlisten()


# -- waiting --------------------------------------------------------------------------------------


class Gone(Exception):
    """Our key or our lease vanished while we waited: queue again with a new lease."""


async def open_session(etcd: Etcd, ttl: int) -> Session:
    """A new session (a lease of its own), open. Cancelled (or timed out) while the lease is
    being granted, it hands the session to :func:`~etcdkit.recipes.session.abandon`, which
    lets the grant answer (at most ``GRANT_WAIT`` seconds, in a task of its own) and revokes
    that lease: a cancellation leaves no lease behind, and returns within ``ABANDON_WAIT``."""
    session = etcd.session(ttl)
    try:
        await session.open()
    except asyncio.CancelledError:
        await abandon(session, f"ttl {ttl}")
        raise
    except BaseException:
        await session.close()
        raise
    return session


async def watch_until(
    etcd: Etcd,
    key: bytes,
    rev: int,
    session: Session | None,
    done: Callable[[list[WatchEvent]], bool],
    *,
    prefix: bool = False,
    filters: Sequence[WatchFilter] = ("noput",),
    settled: Callable[[RangeResult], bool] | None = None,
) -> None:
    """Watch ``key`` (or every key under it, ``prefix=True``) from revision ``rev + 1`` until
    ``done(events)`` says so. Returns too when etcd compacted that history (look again).
    Raises :class:`Gone` as soon as ``session`` (if any) is lost: our own keys went with its
    lease.

    ``settled(read)``, if given, is asked once about a read of the same key(s) made beside the
    watch (a serializable read, newer than ``rev``): ``True`` returns at once. A watch created
    when etcd is already past ``rev`` (what we wait for may have happened between the
    caller's read and the create) starts in etcd's "unsynced" group, which its mvcc
    ``syncWatchersLoop`` catches up only every 100 ms: a hand-off took 0-100 ms more, one in
    fifteen. The read tells at once; the watch decides otherwise. Every caller reads again
    after this returns, so a read that says "settled" too early costs one read, no more."""
    if session is not None and session.lost.is_set():
        raise Gone("our lease expired or was revoked")
    watch = etcd.watch(key, prefix=prefix, start_revision=rev + 1, filters=filters)
    seen = False

    def on_session(state: SessionState) -> None:
        if state in (SessionState.LOST, SessionState.CLOSED):
            watch.cancel()  # ends the iteration below

    async def look() -> None:
        nonlocal seen
        assert settled is not None
        with contextlib.suppress(EtcdkitError):
            now = await etcd.range(key, prefix=prefix, keys_only=True, serializable=True)
            if now.revision > rev and settled(now):
                seen = True
                watch.cancel()  # ends the iteration below

    unlisten = session.add_listener(on_session) if session is not None else _nothing
    check: asyncio.Task[None] | None = None
    try:
        async with watch:
            if settled is not None:
                check = asyncio.get_running_loop().create_task(look(), name="etcdkit-settled")
            async for batch in watch:
                if done(batch.events):
                    return
    except CompactedError:
        return
    finally:
        unlisten()
        if check is not None:
            check.cancel()
            await asyncio.gather(check, return_exceptions=True)
    if seen:
        return
    raise Gone("our lease expired or was revoked")


def ranges(responses: Sequence[OpResult]) -> list[RangeResult]:
    """The responses of a transaction's reads (every one a :class:`RangeResult`)."""
    out = [r for r in responses if isinstance(r, RangeResult)]
    if len(out) != len(responses):
        raise TypeError(f"expected only reads' results, got {responses!r:.200}")
    return out


def _nothing() -> None:
    return None


def deleted(events: list[WatchEvent]) -> bool:
    return any(ev.type is EventType.DELETE for ev in events)


def absent(now: RangeResult) -> bool:
    """A read that no longer finds the key (for ``watch_until(..., deleted, settled=absent)``)."""
    return not now.kvs


# -- one acquisition ------------------------------------------------------------------------------


class Hold:
    """One acquisition: its session, its key once it holds, its state, and the watches that
    say when it no longer holds. The recipe gives :meth:`_run` the way to take its turn."""

    def __init__(
        self,
        etcd: Etcd,
        what: str,
        ttl: int,
        shared: list[Callable[[HoldState], None]] | None = None,
    ) -> None:
        self._etcd = etcd
        self.what = what  # "semaphore '/jobs' (3 permits)", for messages
        self._verb = "acquired"  # ... "not acquired within 2 s"
        self._ttl = ttl
        self._state = HoldState.IDLE
        self._lost = asyncio.Event()
        self._session: Session | None = None
        self._key = b""
        self._token = 0
        self._wakeups = 0
        self._requeues = 0
        self._behind = ""  # what we wait for, for a timeout's message
        self._listeners: list[Callable[[HoldState], None]] = []
        self._shared = shared if shared is not None else []  # the listeners of its maker
        self._watching: asyncio.Task[None] | None = None
        self._unlisten: Callable[[], None] | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._closing: asyncio.Task[None] | None = None
        self._acquiring: asyncio.Task[object] | None = None
        # set once the acquire() under way has ended (held, left, or raised): what release()
        # waits for (not the acquiring task, which goes on with its caller's own work)
        self._acquired = asyncio.Event()
        self._aborted = False

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.what} key={self._key!r} state={self._state.name} "
            f"token={self._token} lease={self.lease_id:#x}>"
        )

    # -- facts (no I/O) ---------------------------------------------------------------------------

    @property
    def key(self) -> bytes:
        """The key that stands for this acquisition in etcd while it holds (``b""`` before)."""
        return self._key

    @property
    def lease_id(self) -> int:
        """The lease this acquisition's keys are on (0 when there is none)."""
        return self._session.lease_id if self._session is not None else 0

    @property
    def fencing_token(self) -> int:
        """The create revision of :attr:`key` (0 before it held): higher for every later
        acquisition. It stays after a release or a loss."""
        return self._token

    @property
    def state(self) -> HoldState:
        """IDLE, WAITING, HELD, SUSPENDED, LOST or RELEASED (see :class:`HoldState`)."""
        return self._state

    @property
    def lost(self) -> asyncio.Event:
        """Set once this acquisition can no longer be trusted (LOST) or was released."""
        return self._lost

    @property
    def wakeups(self) -> int:
        """How many times a watched key's deletion woke this acquisition while it waited."""
        return self._wakeups

    @property
    def requeues(self) -> int:
        """How many times this acquisition lost its place in line while it waited (its key or
        lease vanished) and queued again at the back with a new lease (state ``REQUEUED``, each
        logged once as a WARNING)."""
        return self._requeues

    def guard(self) -> Compare:
        """A :class:`Compare` that holds only while this acquisition holds: its key exists with
        the create revision it held at. Put it in the ``compare`` of every write it protects
        (``etcd.txn(compare=[hold.guard()], success=[...])``): etcd refuses the write once the
        hold is lost, even if this process has not heard of it yet (asked for once it is
        ``LOST`` or ``RELEASED``, it holds for no key, also while the key outlives the hold in
        etcd). Raises :class:`NotHeldError` if it never held."""
        if not self._token:
            raise NotHeldError(f"{self.what} was never acquired here: nothing to guard with")
        return fence(self._key, self._token, self._state)

    def add_listener(self, callback: Callable[[HoldState], None]) -> Callable[[], None]:
        """Call ``callback(state)`` on every later state change (on the event loop); returns a
        function that removes it. Errors in it are logged."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    # -- acquiring: what the recipes built on Hold call (public to them, not for applications) --

    async def acquire_with(
        self,
        take: Callable[[bool], Awaitable[tuple[bytes, int, int] | None]],
        timeout: float | None,
    ) -> bool:
        """Acquire with ``take(wait)``, which returns ``(key, token, revision)`` once it holds,
        or ``None`` when ``wait`` is false and it cannot hold at once. ``timeout=0``: no wait
        (``False`` then). Every failure, timeout or cancellation leaves nothing behind."""
        if self._state is not HoldState.IDLE:
            raise RuntimeError(
                f"{self.what}: this acquisition is already {self._state.name.lower()}; each "
                "acquisition is its own handle: acquire anew for another"
            )
        self._acquiring = asyncio.current_task()
        self._acquired.clear()
        try:
            return await self._acquire_or_leave(take, timeout)
        finally:
            self._acquired.set()

    async def _acquire_or_leave(
        self,
        take: Callable[[bool], Awaitable[tuple[bytes, int, int] | None]],
        timeout: float | None,
    ) -> bool:
        self._set(HoldState.WAITING)
        wait = timeout != 0
        try:
            try:
                async with asyncio.timeout(timeout if wait else None):
                    while True:
                        got = await take(wait)
                        if got is None or await self._confirmed():
                            break
                        await self.requeue(UNCONFIRMED)
            except TimeoutError as exc:
                await self._leave(promptly=True)
                if isinstance(exc, EtcdkitError):
                    raise
                raise EtcdTimeoutError(
                    f"{self.what} not {self._verb} within {timeout} s"
                    f"{self._behind and '; ' + self._behind} "
                    f"(endpoints {', '.join(self._etcd.endpoints)})"
                ) from None
            except asyncio.CancelledError:
                await self._leave(promptly=True)
                task = asyncio.current_task()
                if self._aborted and task is not None and task.uncancel() == 0:
                    raise ClosedError(f"{self.what} was released while being acquired") from None
                raise
            except BaseException:
                await self._leave()
                raise
        finally:
            self._acquiring = None
        if got is None:
            await self._leave()
            return False
        self._hold(*got)
        return True

    async def _confirmed(self) -> bool:
        """Our turn came: may the hold begin (see :func:`confirmed`)?"""
        session = self._session
        return session is not None and await confirmed(session, self._ttl)

    async def session_now(self) -> Session:
        """Our session; a new one (a new lease) when there is none or it was lost."""
        session = self._session
        if session is not None and not session.lost.is_set():
            return session
        await self._drop_session()
        self._session = await open_session(self._etcd, self._ttl)
        return self._session

    async def requeue(self, why: str) -> None:
        """Our place in line is gone: say so (state REQUEUED, one WARNING line, the count),
        and drop the lease (a new one follows)."""
        self._requeues += 1
        self._set(HoldState.REQUEUED)
        log.warning(
            "%s: %s while waiting; our place in line is lost: queuing again at the back with a "
            "new lease (state REQUEUED; %d time(s) for this acquisition)",
            self.what,
            why,
            self._requeues,
        )
        await self._drop_session()

    def in_line(self) -> None:
        """Our (new) key is in line: REQUEUED is over."""
        if self._state is HoldState.REQUEUED:
            self._set(HoldState.WAITING)

    async def _drop_session(self, promptly: bool = False) -> None:
        session, self._session = self._session, None
        if session is not None:
            if promptly:
                await abandon(session, self.what)
            else:
                await asyncio.shield(session.close())

    async def _leave(self, promptly: bool = False) -> None:
        """Leave the line without having held: our keys go with our lease. ``promptly`` (given
        up on: a timeout or a cancellation): the revoke runs in a task of its own, waited for
        at most ``ABANDON_WAIT`` (an unreachable etcd does not add the revoke's bound to the
        caller's timeout; the client's close still waits for it)."""
        await self._drop_session(promptly)
        if self._state in (HoldState.WAITING, HoldState.REQUEUED):
            self._set(HoldState.IDLE)

    # -- holding ----------------------------------------------------------------------------------

    def _hold(self, key: bytes, token: int, rev: int) -> None:
        session = self._session
        assert session is not None
        self._key, self._token = key, token
        suspended = session.state is SessionState.SUSPENDED
        self._set(HoldState.SUSPENDED if suspended else HoldState.HELD)
        self._unlisten = session.add_listener(self._on_session)
        self._watching = asyncio.get_running_loop().create_task(
            self._watch_own(rev), name=f"etcdkit-hold {key!r}"
        )
        if session.lost.is_set():
            self._lose("our lease expired or was revoked")
        elif suspended:
            self._start_expiry()

    async def _watch_own(self, rev: int) -> None:
        """Our key, from ``rev + 1``: deleted (or created anew by another) means LOST."""
        backoff = self._etcd.retry.backoff()
        start = rev + 1
        while self._state in (HoldState.HELD, HoldState.SUSPENDED):
            watch = self._etcd.watch(self._key, start_revision=start)
            try:
                async with watch:
                    async for batch in watch:
                        for ev in batch.events:
                            if ev.type is EventType.DELETE:
                                self._lose(
                                    "our key was deleted (its lease revoked or expired, or "
                                    "deleted by hand)"
                                )
                                return
                            if ev.kv.create_revision != self._token:
                                self._lose("our key was deleted and created again by another")
                                return
                return
            except CompactedError:
                try:  # is our key still ours? then watch on from that read
                    now = await self._etcd.range(self._key)
                except EtcdkitError as exc:
                    if not self._etcd.retry.is_retryable(exc):
                        self._lose(f"cannot read our key ({exc})")
                        return
                    await backoff.wait()
                    continue
                if not now.kvs or now.kvs[0].create_revision != self._token:
                    self._lose("our key is gone")
                    return
                start = now.revision + 1
            except ClosedError:
                self._closed_with_client()
                return
            except EtcdkitError as exc:
                if not self._etcd.retry.is_retryable(exc):
                    self._lose(f"cannot watch our key any more ({exc})")
                    return
                start = max(start, watch.revision + 1)
                await backoff.wait()

    def _on_session(self, state: SessionState) -> None:
        if self._state not in (HoldState.HELD, HoldState.SUSPENDED):
            return
        if state is SessionState.ALIVE:
            self._stop_expiry()
            self._set(HoldState.HELD)
        elif state is SessionState.SUSPENDED:
            self._set(HoldState.SUSPENDED)
            self._start_expiry()
        elif state is SessionState.LOST:
            self._lose("our lease expired or was revoked")
        elif state is SessionState.CLOSED:  # (ours is closed here only by the client's close)
            self._closed_with_client()

    def _start_expiry(self) -> None:
        if self._expiry is not None:
            return
        session = self._session
        expires = session.expires if session is not None else None
        if expires is None:
            self._lose("our lease is no longer kept alive")
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, expires - loop.time() - lost_margin(self._ttl))  # (same clock)
        self._expiry = loop.call_later(
            delay, self._lose, f"etcd did not confirm our lease for its TTL ({self._ttl} s)"
        )

    def _stop_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    def _closed_with_client(self) -> None:
        """The client is closing (our key's watch, or our session, ended with it): its close
        releases this hold, which it adopted. So RELEASED, as a release says, not LOST with a
        warning (the client's close revokes our lease next)."""
        if self._state not in (HoldState.HELD, HoldState.SUSPENDED):
            return
        log.info("%s released: the client is closing", self.what)
        self.stop_watching()
        self._set(HoldState.RELEASED)
        self._lost.set()

    def _lose(self, why: str) -> None:
        """We can no longer trust that we hold: final for this acquisition. Our lease is revoked
        at once (in the background, awaited by :meth:`release`)."""
        if self._state not in (HoldState.HELD, HoldState.SUSPENDED):
            return
        log.warning("%s lost: %s", self.what, why)
        self.stop_watching()
        self._set(HoldState.LOST)
        self._lost.set()
        session = self._session
        if session is not None and not session.lost.is_set():
            self._closing = asyncio.get_running_loop().create_task(
                session.close(), name=f"etcdkit-hold-lost {self._key!r}"
            )

    def stop_watching(self) -> None:
        """Stop following our key and lease (a recipe about to delete its own key)."""
        self._stop_expiry()
        watching, self._watching = self._watching, None
        if watching is not None and watching is not asyncio.current_task():
            watching.cancel()
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None

    # -- releasing --------------------------------------------------------------------------------

    async def release(self) -> None:
        """Give it up: the lease is revoked, which deletes this acquisition's keys at once (the
        next in line takes over). Idempotent; bounded when etcd is down (the keys then go when
        the lease expires). Called while another task still acquires it, that acquisition ends
        with :class:`ClosedError`."""
        acquiring = self._acquiring
        if acquiring is not None and acquiring is not asyncio.current_task():
            self._aborted = True
            acquiring.cancel()
            await self._acquired.wait()  # (then release what it may have got)
        if self._state in (HoldState.IDLE, HoldState.RELEASED) and self._session is None:
            return
        self.stop_watching()
        if self._state in (HoldState.HELD, HoldState.SUSPENDED):
            self._set(HoldState.RELEASED)  # (LOST stays LOST: what happened is what it says)
        self._lost.set()
        if self._closing is not None:
            await asyncio.wait({self._closing})
        await self._drop_session()

    def _set(self, state: HoldState) -> None:
        if state is self._state:
            return
        if log.isEnabledFor(logging.DEBUG):  # (an enum's name is a property: 0.2 us each)
            log.debug("%s: %s -> %s", self.what, self._state.name, state.name)
        self._state = state
        for cb in [*self._shared, *self._listeners]:
            try:
                cb(state)
            except CALLBACK_ERRORS:
                log.exception("%s: state listener failed", self.what)


class SyncHold(Twin[H]):
    """The threaded face of a :class:`Hold`: the same facts, read on the loop thread, and
    ``lost`` as a :class:`threading.Event`."""

    def __init__(self, portal: PortalLike, aio: H) -> None:
        super().__init__(portal, aio)
        self._lost = threading.Event()
        portal.run_sync(self._follow)

    def _follow(self) -> None:  # on the loop thread, as are the listener's calls
        if self.aio.lost.is_set():
            self._lost.set()
        self.aio.add_listener(SetOn(self._lost, (HoldState.LOST, HoldState.RELEASED)))

    @property
    def lost(self) -> threading.Event:
        """Set once this acquisition can no longer be trusted (LOST) or was released."""
        return self._lost

    def guard(self) -> Compare:
        return self.portal.read(self.aio.guard)

    def add_listener(self, callback: Callable[[HoldState], None]) -> Callable[[], None]:
        """``callback`` runs on the client's loop thread; keep it quick."""
        return self.portal.read(lambda: self.aio.add_listener(callback))

    guard.__doc__ = Hold.guard.__doc__
