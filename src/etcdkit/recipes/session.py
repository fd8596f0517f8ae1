"""Session: one etcd lease kept alive, Go's ``concurrency.Session``, on the public client.

Written on public names only, as Go's is on ``clientv3``: ``etcd.grant(ttl)`` makes the lease,
``etcd.keep_alive(lease_id, ttl=...)`` renews it on the client's shared keepalive stream (the
session reads its statuses as they arrive, with no task), ``etcd.revoke`` ends it on close.
:class:`SessionPool` shares one session per TTL among a client's users
(``etcd.shared_session``), as the keys of one Go session or a ZooKeeper session's ephemeral
nodes share one lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Generator
from types import TracebackType
from typing import TYPE_CHECKING, Any

from etcdkit._errors import (
    ClosedError,
    EtcdkitError,
    EtcdTimeoutError,
    LeaseNotFoundError,
    mark_retrieved,
)
from etcdkit._logs import CALLBACK_ERRORS
from etcdkit._surface import Etcd
from etcdkit._types import SessionState, check_timeout

if TYPE_CHECKING:
    from etcdkit._wire.keepalive import KeepAlive

__all__ = ["Late", "Session", "SessionPool", "SessionState"]

log = logging.getLogger("etcdkit.lease")


REVOKE_TIMEOUT = 2.0  # bound on the revoke a close sends (etcd may be down)
GRANT_WAIT = 2.0  # how long a close waits for the answer to a grant in flight
ABANDON_WAIT = 0.2  # how long a recipe that gave up on a grant waits for its close to end

# Closes under way, each in a task of its own (the loop keeps only weak references to tasks):
# a close whose caller is cancelled half-way goes on to its end, so what it holds is revoked,
# not left in etcd for its TTL. A session's close waits (GRANT_WAIT) for a grant in flight
# and revokes what etcd granted; at once when the client closes (its calls fail).
_running: set[asyncio.Task[None]] = set()


def run_to_end(close: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    """A task that runs ``close`` to its end whatever becomes of those who wait for it (with
    ``asyncio.shield``); its error, if nobody waits any more, is not "never retrieved"."""
    task = asyncio.get_running_loop().create_task(close, name=name)
    _running.add(task)
    task.add_done_callback(_running.discard)
    task.add_done_callback(mark_retrieved)
    return task


class CloseOnce:
    """An owner's close, run once, in a task of its own, to its end (:func:`run_to_end`);
    every ``close()`` waits for it. Once it ended the client that made the owner no longer
    closes it (``disown``): the client's close waits for this close until then."""

    __slots__ = ("_task",)

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None

    @property
    def began(self) -> bool:
        return self._task is not None

    async def close(
        self, etcd: Etcd, owner: object, close: Callable[[], Awaitable[None]], name: str
    ) -> None:
        task = self._task
        if task is None:
            task = self._task = run_to_end(self._to_end(etcd, owner, close), name)
        await asyncio.shield(task)

    @staticmethod
    async def _to_end(etcd: Etcd, owner: object, close: Callable[[], Awaitable[None]]) -> None:
        try:
            await close()
        finally:
            etcd.disown(owner)


async def abandon(session: Session, what: str) -> None:
    """Close ``session``, given up on while its lease grant may still be in flight, without
    holding the caller up for long: its close runs in a task of its own (so a lease etcd
    granted is revoked, not left unknown for its TTL), which the caller waits for at most
    ``ABANDON_WAIT`` seconds (a grant etcd answers at once is revoked before it returns; one
    an unreachable etcd never answers no longer adds ``GRANT_WAIT`` to the caller's timeout).
    Cancelled meanwhile, the close still runs to its end."""
    closer = run_to_end(session.close(), f"etcdkit-session-abandon {what}")
    await asyncio.wait({closer}, timeout=ABANDON_WAIT)


class _LateCall:
    __slots__ = ("call", "moot", "what")

    def __init__(
        self, call: Callable[[], Awaitable[object]], what: str, moot: Callable[[], bool] | None
    ) -> None:
        self.call = call
        self.what = what
        self.moot = moot

    def due(self) -> bool:
        """Whether it still matters (not made moot)."""
        return self.moot is None or not self.moot()


class Late:
    """The calls of one client that etcd could not be reached for (a revoke, a delete), sent
    again until etcd answers: else what they undo would stay in etcd (a lease that an etcd
    restart or a leader change gives a fresh TTL, a key a shared lease keeps). One task a
    client, owned by it (``adopt``): it tries the oldest call at the pace of a call's own
    retries and, once etcd answered it, the others at once. A call ends once etcd answered
    it, once its ``moot()`` says it no longer matters, or on an error a retry cannot mend
    (logged). The client's close sends each call left once more (bounded), then ends it."""

    @staticmethod
    def send(
        etcd: Etcd,
        call: Callable[[], Awaitable[object]],
        *,
        what: str,
        moot: Callable[[], bool] | None = None,
    ) -> None:
        """Queue ``call``; :class:`ClosedError` once the client closes."""
        late = _late.get(etcd)
        if late is None or late.ended:
            late = _late[etcd] = Late(etcd)
        late._calls.append(_LateCall(call, what, moot))
        late._wake.set()

    def __init__(self, etcd: Etcd) -> None:
        self._etcd = etcd
        self._calls: list[_LateCall] = []
        self._wake = asyncio.Event()
        self.ended = False
        etcd.adopt(self, self._stop)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="etcdkit-late-calls")

    async def _run(self) -> None:
        # (paced as a call's own retries: the sooner it lands once etcd is back, the sooner
        # the next in line goes on; a refused connection fails at once)
        backoff = self._etcd.retry.backoff(cap=self._etcd.retry.call_cap)
        try:
            while True:
                self._calls = [c for c in self._calls if c.due()]
                if not self._calls:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                first = self._calls[0]
                if not await self._send(first):
                    await backoff.wait()
                    continue
                backoff.reset()
                self._calls.remove(first)
                # (each stays queued until answered: the close, cancelling this meanwhile,
                # sends what is left once more)
                rest = list(self._calls)
                done = await asyncio.gather(*(self._send(c) for c in rest), return_exceptions=True)
                answered = {id(c) for c, ok in zip(rest, done, strict=True) if ok is True}
                self._calls = [c for c in self._calls if id(c) not in answered]
                if any(isinstance(ok, ClosedError) for ok in done):
                    raise ClosedError("the client closes")
        except ClosedError:
            # The client closes (its close cut the call in flight): what is left waits here
            # for the close, which sends it once more (_stop), as a close's own calls.
            await asyncio.get_running_loop().create_future()
        finally:
            self._end()

    def _end(self) -> None:
        self.ended = True
        self._etcd.disown(self)
        if _late.get(self._etcd) is self:
            del _late[self._etcd]  # (it refers to the client: else kept for ever)

    async def _send(self, c: _LateCall) -> bool:
        """Send ``c`` once: ``True`` once it needs sending no more."""
        try:
            async with asyncio.timeout(REVOKE_TIMEOUT):
                await c.call()
        except ClosedError:
            raise
        except (EtcdkitError, TimeoutError) as exc:
            if isinstance(exc, EtcdkitError) and not self._etcd.retry.is_retryable(exc):
                log.warning("%s failed: %s", c.what, exc)
                return True
            return False
        log.info("%s: done (etcd answered it)", c.what)
        return True

    async def _stop(self) -> None:
        """The client closes: each call left is sent once more, then this ends."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._end()  # (also when the task was cancelled before it ran)
        calls, self._calls = self._calls, []
        await asyncio.gather(*(self._send(c) for c in calls if c.due()), return_exceptions=True)


_late: weakref.WeakKeyDictionary[Etcd, Late] = weakref.WeakKeyDictionary()


class Session:
    """One etcd lease kept alive on the client's shared keepalive stream (Go's
    ``concurrency.Session``). Create with :meth:`AsyncClient.session`, then ``await`` it or use
    ``async with``: either grants the lease and returns the open session.

    ``lease_id`` and ``ttl`` (as granted) are known once open; ``state`` is a
    :class:`SessionState`; ``lost`` is an :class:`asyncio.Event` set once the lease can no
    longer be trusted (LOST or CLOSED); ``await session.wait_lost()`` waits for it. ``close()``
    revokes the lease (bounded when etcd is down) and is idempotent. Elections, locks and
    PersistentLeases attach their keys to a session's lease.
    """

    def __init__(self, etcd: Etcd, ttl: int) -> None:
        if not isinstance(ttl, int) or isinstance(ttl, bool):
            raise TypeError(f"ttl must be a whole number of seconds (int), got {ttl!r}")
        if not 1 <= ttl < 2**63:
            raise ValueError(f"ttl must be >= 1 second (and fit etcd's int64), got {ttl!r}")
        self._etcd = etcd
        self._requested_ttl = ttl
        self._ttl = 0
        self._lease_id = 0
        self._state = SessionState.OPENING
        self._opening: asyncio.Task[None] | None = None
        self._closing = CloseOnce()
        self._callers = 0  # awaiting it (``await session``, ``async with``) now
        self._kept: KeepAlive | None = None  # etcd renewing the lease
        self._expiry: asyncio.TimerHandle | None = None
        self._listeners: list[Callable[[SessionState], None]] = []
        self.lost = asyncio.Event()
        self._late = False  # the revoke is sent again until etcd answers it

    def __repr__(self) -> str:
        return f"<Session lease={self._lease_id:#x} ttl={self.ttl} state={self._state.name}>"

    @property
    def lease_id(self) -> int:
        """The lease id (0 until open)."""
        return self._lease_id

    @property
    def ttl(self) -> int:
        """The TTL etcd granted (may be above the requested one); the requested before that."""
        return self._ttl or self._requested_ttl

    @property
    def state(self) -> SessionState:
        """Where the session stands (a :class:`SessionState`: what each means)."""
        return self._state

    @property
    def expires(self) -> float | None:
        """When the lease runs out if etcd confirms it no more, on ``time.monotonic()`` (the
        event loop's clock): its last confirmed TTL, counted from that answer. ``None`` while
        it is not kept alive (opening, lost, closed). Recipes that hold something say LOST a
        margin before it, while SUSPENDED."""
        kept = self._kept
        return None if kept is None else kept.expires

    def add_listener(self, callback: Callable[[SessionState], None]) -> Callable[[], None]:
        """Call ``callback(state)`` on every state change (on the event loop); returns a
        function that removes it. Callback errors are logged, not raised."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    async def open(self) -> Session:
        """Grant the lease and start keeping it alive (idempotent); returns the session.
        Raises :class:`ClosedError` when the session is closed before etcd answers, or was
        closed before this call. (A close while the grant is in flight waits for etcd's
        answer and revokes the lease: an open waiting meanwhile returns the session once the
        grant is answered, CLOSED by then.)"""
        if self._state in (SessionState.LOST, SessionState.CLOSED) and not self._lease_id:
            raise ClosedError(f"this session is {self._state.name.lower()}; open a new one")
        opening = self._opening
        if self._closing.began and (opening is None or opening.done()):
            # (closing before a grant was sent: send none; or closed after its grant: an open
            # while the grant is in flight returns once it is answered, CLOSED by then)
            raise ClosedError("this session is closed; open a new one")
        if opening is None or (opening.done() and (opening.cancelled() or opening.exception())):
            # first open, or the last grant failed (etcd unreachable...): grant anew
            opening = self._opening = asyncio.get_running_loop().create_task(
                self._grant(), name="etcdkit-session-grant"
            )
            # Its error is read by whoever awaits it; one that fails once every opener gave up
            # (the shield below lets it go on) is nobody's: not "never retrieved".
            opening.add_done_callback(mark_retrieved)
        try:
            await asyncio.shield(opening)
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if opening.cancelled() and me is not None and not me.cancelling():
                # not us cancelled: close() gave up on the grant (etcd never answered it)
                raise ClosedError(
                    "the session was closed before etcd answered its lease grant"
                ) from None
            raise
        return self

    def __await__(self) -> Generator[Any, None, Session]:
        return self._open_for_caller(entering=False).__await__()

    async def __aenter__(self) -> Session:
        return await self._open_for_caller(entering=True)

    async def _open_for_caller(self, *, entering: bool) -> Session:
        self._callers += 1
        try:
            return await self.open()
        except BaseException as exc:
            # Nobody gets the session to close (the block never runs; ``await`` was
            # cancelled): a grant still in flight is revoked, not kept alive for nobody until
            # the client closes. Not while another caller still waits for the same open; and
            # an ``await`` that failed otherwise (etcd unreachable: no lease) may be retried.
            if self._callers == 1 and (entering or isinstance(exc, asyncio.CancelledError)):
                await abandon(self, f"ttl {self._requested_ttl}")
            raise
        finally:
            self._callers -= 1

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def wait_lost(self, timeout: float | None = None) -> SessionState:
        """Wait until the lease can no longer be trusted; returns LOST or CLOSED. Raises
        :class:`EtcdTimeoutError` after ``timeout`` seconds (``None``: no bound)."""
        limit = check_timeout(timeout)
        try:
            async with asyncio.timeout(limit):
                await self.lost.wait()
        except TimeoutError:
            raise EtcdTimeoutError(
                f"session {self._lease_id:#x} was not lost within {timeout} s"
            ) from None
        return self._state

    async def close(self) -> None:
        """Revoke the lease (every key on it goes at once) and stop; idempotent, bounded when
        etcd is down (the lease then expires by itself after its TTL). A close while another
        is under way waits for it, and a close whose caller is cancelled goes on to its end
        (its revoke is not cut short, by that or by the client closing after)."""
        await self._closing.close(
            self._etcd, self, self._close, f"etcdkit-session-close ttl {self._requested_ttl}"
        )

    async def _close(self) -> None:
        was_lost = self._state is SessionState.LOST
        opening = self._opening
        if opening is not None and not opening.done():
            # A grant in flight: wait (bounded) for its answer, so that a lease etcd granted
            # is revoked below, not left to expire unknown (as a cancelled grant would).
            await asyncio.wait({opening}, timeout=GRANT_WAIT)
            opening.cancel()
            with contextlib.suppress(asyncio.CancelledError, EtcdkitError):
                await opening
        self._stop(SessionState.CLOSED)
        if self._lease_id and not was_lost:
            try:
                async with asyncio.timeout(REVOKE_TIMEOUT):
                    await self._revoke()
            except ClosedError:
                pass  # (the client closed meanwhile: what it held goes with its TTL)
            except (EtcdkitError, TimeoutError) as exc:
                why = str(exc) or f"no answer within {REVOKE_TIMEOUT:g} s"
                try:
                    self._revoke_later()
                except ClosedError:
                    log.warning(
                        "session %#x: could not revoke on close (%s); it expires %d s after "
                        "its last refresh (the client closed)",
                        self._lease_id,
                        why,
                        self.ttl,
                    )
                else:
                    log.warning(
                        "session %#x: could not revoke on close (%s); sending the revoke "
                        "again until etcd answers, while this client is open (once it "
                        "closes, the lease expires %d s after its last refresh)",
                        self._lease_id,
                        why,
                        self.ttl,
                    )

    async def _revoke(self) -> None:
        try:
            await self._etcd.revoke(self._lease_id)
        except LeaseNotFoundError:
            # Revoked or expired already (e.g. by someone else): gone, as closing wants.
            log.debug("session %#x: the lease was already gone", self._lease_id)

    def _revoke_later(self) -> None:
        """Revoke the lease once etcd answers (see :class:`Late`): an etcd that restarts, or
        whose leader changes, gives every lease a fresh TTL, and the keys on ours would keep
        a line or a leadership from others for one more TTL. :class:`ClosedError` once the
        client closes (its close revokes what it can)."""
        if self._late or not self._lease_id:
            return
        Late.send(self._etcd, self._revoke, what=f"session {self._lease_id:#x}: revoke")
        self._late = True

    def mark_lost(self, why: str) -> None:
        """The lease is known gone (e.g. etcd said "lease not found")."""
        if self._state not in (SessionState.LOST, SessionState.CLOSED):
            log.info("session %#x lost: %s", self._lease_id, why)
            self._stop(SessionState.LOST)

    # -- internals --------------------------------------------------------------------------------

    async def _grant(self) -> None:
        grant = await self._etcd.grant(self._requested_ttl)
        if grant.ttl != self._requested_ttl:
            log.warning(
                "session %#x: etcd granted ttl %d s instead of the requested %d s (its minimum "
                "lease TTL)",
                grant.id,
                grant.ttl,
                self._requested_ttl,
            )
        self._lease_id, self._ttl = grant.id, grant.ttl
        kept = self._kept = self._etcd.keep_alive(grant.id, ttl=grant.ttl)
        kept.add_listener(self._on_keepalive)  # (in the turn each status arrives: no task)
        kept.start()
        self._set(SessionState.ALIVE)

    def _on_keepalive(self) -> None:
        """How etcd renews the lease, each time it says."""
        kept = self._kept
        if kept is None:
            return
        try:
            status = kept.take()
        except LeaseNotFoundError:
            self.mark_lost("etcd says the lease expired or was revoked")
            return
        except ClosedError:
            return  # the client closed: it closes this session too (or closed it)
        if status is None:
            return
        if status.suspended:
            self._on_suspended()
        else:
            self._on_alive(status.ttl)

    def _on_alive(self, _remaining: int) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self._state is SessionState.SUSPENDED:
            self._set(SessionState.ALIVE)

    def _on_suspended(self) -> None:
        if self._state is not SessionState.ALIVE:
            return
        self._set(SessionState.SUSPENDED)
        expires = self.expires
        if expires is not None and self._expiry is None:
            loop = asyncio.get_running_loop()
            delay = max(0.0, expires - time.monotonic())
            self._expiry = loop.call_later(delay, self._expired)

    def _expired(self) -> None:
        self._expiry = None
        if self._state is SessionState.SUSPENDED:
            self.mark_lost(f"no keepalive answer for the lease's TTL ({self.ttl} s)")
            # Given up on, unconfirmed: the lease may live on (etcd restarted, or its leader
            # changed: either gives every lease a fresh TTL); ours is revoked once etcd answers.
            with contextlib.suppress(ClosedError):  # (the client closes: it revokes what it can)
                self._revoke_later()

    def _stop(self, state: SessionState) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        kept, self._kept = self._kept, None
        if kept is not None:
            kept.cancel()
        self._set(state)
        self.lost.set()

    def _set(self, state: SessionState) -> None:
        if state is self._state:
            return
        self._state = state
        for cb in list(self._listeners):
            try:
                cb(state)
            except CALLBACK_ERRORS:
                log.exception("session %#x: state listener failed", self._lease_id)


class SessionPool:
    """Hands out sessions to one client's PersistentLeases: one live session per TTL, shared by
    every PersistentLease asking for that TTL (like the keys of a Go ``concurrency.Session`` or
    a ZooKeeper session's ephemeral nodes), so a thousand registrations cost one keepalive per
    ttl/3. A session nobody uses any more is closed (its lease revoked)."""

    def __init__(self, etcd: Etcd) -> None:
        self._etcd = etcd
        self._by_ttl: dict[int, Session] = {}
        self._users: dict[Session, set[object]] = {}
        # per TTL, while someone opens a session of it: a lock, and how many hold or await it
        self._locks: dict[int, tuple[asyncio.Lock, int]] = {}

    def new(self, ttl: int) -> Session:
        """A session of its own (not shared), not yet open."""
        return Session(self._etcd, ttl)

    async def acquire(self, user: object, ttl: int, *, shared: bool = True) -> Session:
        """An open, live session for ``user``."""
        if not shared:
            session = self.new(ttl)
            await self._open(session, ttl)
        else:
            lock, n = self._locks.get(ttl) or (asyncio.Lock(), 0)
            self._locks[ttl] = (lock, n + 1)
            try:
                async with lock:
                    session = self._by_ttl.get(ttl) or self.new(ttl)
                    if session.state in (SessionState.LOST, SessionState.CLOSED):
                        session = self.new(ttl)
                    self._by_ttl[ttl] = session
                    await self._open(session, ttl)
            finally:
                lock, n = self._locks[ttl]
                if n > 1:
                    self._locks[ttl] = (lock, n - 1)
                else:  # (kept for TTLs in use only: a client may see many TTLs come and go)
                    del self._locks[ttl]
        self._users.setdefault(session, set()).add(user)
        return session

    async def _open(self, session: Session, ttl: int) -> None:
        """Open ``session``; given up on (the user closed, a cancel) while nobody uses it
        yet, it is abandoned: never left to come alive later with nobody to close it."""
        try:
            await session.open()
        except BaseException:
            if not self._users.get(session):
                if self._by_ttl.get(ttl) is session:
                    del self._by_ttl[ttl]
                await abandon(session, f"pool ttl {ttl}")
            raise

    def release(self, user: object, session: Session) -> bool:
        """``user`` leaves ``session``; ``True`` when nobody is left on it (close it then)."""
        users = self._users.get(session)
        if users is not None:
            users.discard(user)
            if users:
                return False
            del self._users[session]
        for ttl, s in list(self._by_ttl.items()):
            if s is session:
                del self._by_ttl[ttl]
        return True

    async def close(self) -> None:
        """Close every pooled session (their leases are revoked, bounded)."""
        sessions = list({*self._users, *self._by_ttl.values()})
        self._users.clear()
        self._by_ttl.clear()
        await asyncio.gather(*(s.close() for s in sessions))
