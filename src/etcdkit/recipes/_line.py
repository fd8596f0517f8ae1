"""The line of contenders under a name: etcd's Go ``concurrency`` key layout and waiting rules,
shared by :class:`~etcdkit.Lock` and :class:`~etcdkit.Election` (the analogue of Go's
``key.go`` and of what ``mutex.go`` and ``election.go`` have in common).

The layout is Go's, so ``etcdctl lock``, ``etcdctl elect`` and Go programs contend with us:

- a contender's key is ``name + "/" + format(lease_id, "x")``, on a lease of its own (a
  :class:`Session`), created by one transaction ``if create_revision(key) == 0 then put else
  get``: an attempt retried after an unknown outcome finds its key instead of queuing twice;
- keys are ordered by create revision and the oldest holds. The holder's create revision is its
  fencing token: each new holder's is higher than every earlier holder's;
- a waiter watches only the newest key created before its own (no herd: one hand-off wakes one
  waiter) and looks again when that key is deleted.

After that, a :class:`Contender` that holds keeps watching its own key and its session, and
says ``LOST`` as soon as either tells it that etcd may give the lock to another.

A waiter whose own key or lease vanishes (deleted or revoked by someone else, or expired while
etcd was unreachable) has lost its place: it queues again at the back with a new lease, as
Go's ``Mutex`` (etcd 3.5 on; 3.4's returns as holder all the same) would make its caller do
after ``ErrSessionExpired``. That is never silent: the
state says ``REQUEUED``, ``requeues`` counts it, so does the ``etcdkit.lock.requeues`` metric,
and one WARNING line says why.

Written on the public client only (:class:`etcdkit._surface.Etcd`), as Go's ``concurrency`` is on
``clientv3``: a :class:`~etcdkit.Session` per acquisition, ``txn`` built from ``Op``s, ``range``
with Go's sort and limit options, and ``watch`` iterators.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from etcdkit import _metrics
from etcdkit._errors import (
    ClosedError,
    CompactedError,
    EtcdkitError,
    LeaseNotFoundError,
)
from etcdkit._logs import CALLBACK_ERRORS
from etcdkit._types import (
    Compare,
    EventType,
    HoldState,
    KeyValue,
    Op,
    RangeResult,
    SessionState,
)
from etcdkit.recipes._hold import (
    UNCONFIRMED,
    check_timeout,
    check_ttl,
    confirmed,
    lost_margin,
)
from etcdkit.recipes._hold import name_prefix as prefix_of
from etcdkit.recipes.session import abandon

if TYPE_CHECKING:
    from etcdkit import Session, Watch
    from etcdkit._retry import Backoff
    from etcdkit._surface import Etcd

__all__ = [
    "Contender",
    "HoldState",
    "check_timeout",
    "check_ttl",
    "prefix_of",
]


@functools.lru_cache(maxsize=256)
def _line_read(prefix: bytes) -> Op:
    """The read of the line under ``prefix`` that the entry transaction makes: the two newest
    keys by create revision, ours and the one just before it (Go's ``WithLastCreate``). An
    ``Op`` is immutable: made once per name (checking its options costs more than the
    rest of the transaction's building), sent with every entry."""
    return Op.range(prefix, prefix=True, sort_target="create", sort_order="descend", limit=2)


class _Gone(Exception):
    """Our key or our session is gone while acquiring: start again with a new session."""


class Contender:
    """One acquisition: a session, our key in the line under ``prefix``, and (once we hold)
    the watches that say when we no longer do.

    ``on_state(state)`` is called on every state change (on the event loop). The client owns
    a contender from :meth:`acquire` to :meth:`release` (``adopt``): closing it releases it.
    ``kind`` ("lock" or "election") labels the metrics.
    """

    def __init__(
        self,
        etcd: Etcd,
        prefix: bytes,
        value: bytes,
        ttl: int,
        *,
        what: str,
        kind: str,
        on_state: Callable[[HoldState], None],
    ) -> None:
        self.etcd = etcd
        self.prefix = prefix
        self.value = value
        self.ttl = ttl
        self.what = what  # "lock '/locks/x'", for messages
        self.kind = kind
        self.log = logging.getLogger(f"etcdkit.{kind}")  # (an election's lines are its own)
        self.state = HoldState.IDLE
        self.lost = asyncio.Event()
        self.session: Session | None = None
        self.key = b""
        self.revision = 0  # our key's create revision (0 while we have none)
        self.token = 0  # ... when we came to hold: the fencing token; kept after release/loss
        self.ahead: KeyValue | None = None  # the key just before ours, last seen while waiting
        self.wakeups = 0  # times our predecessor's deletion woke us
        self.requeues = 0  # times our key or lease vanished while we waited (we queued again)
        self._on_state = on_state
        self._own: Watch | None = None  # watches our key while we hold
        self._unlisten: Callable[[], None] | None = None
        self._expiry: asyncio.TimerHandle | None = None
        # the task that starts our key's watch once we hold, or restarts it after a compaction
        self._recheck: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None  # the revoke started by lose()
        self._acquiring: asyncio.Task[object] | None = None
        # set once the acquire() under way has ended (held, left, or raised): what release()
        # waits for (not the acquiring task, which goes on with its caller's own work)
        self._acquired = asyncio.Event()
        self._leaving = False
        self._aborted = False

    def __repr__(self) -> str:
        lease = self.session.lease_id if self.session is not None else 0
        return f"key={self.key!r} state={self.state.name} token={self.token} lease={lease:#x}"

    @property
    def lease_id(self) -> int:
        return self.session.lease_id if self.session is not None else 0

    # -- acquiring --------------------------------------------------------------------------------

    async def acquire(self, *, wait: bool) -> bool:
        """Take a place in line and wait for our turn; with ``wait=False`` look only once and,
        if another holds, leave the line again and return ``False``.

        Transient errors are retried (the place is kept: same session, same key), except with
        ``wait=False``, which raises them (it must not wait); a lost session or key starts
        again with a new one (``REQUEUED``). Any other error, a cancellation or a timeout around
        this call leaves the line (our key goes with its lease, a lease being granted is
        revoked once granted) before it propagates.
        """
        self.etcd.adopt(self, self.release)  # (ClosedError on a closed client)
        self._acquiring = asyncio.current_task()
        self._acquired.clear()
        try:
            return await self._acquire_or_leave(wait)
        finally:
            self._acquired.set()

    async def _acquire_or_leave(self, wait: bool) -> bool:
        self._set(HoldState.WAITING)
        try:
            try:
                held_at = await self._acquire(wait)
            finally:
                self._leaving = True  # from here on, release() waits instead of cancelling
        except asyncio.CancelledError:
            await self._leave(promptly=True)
            task = asyncio.current_task()
            if self._aborted and task is not None and task.uncancel() == 0:
                raise ClosedError(
                    f"{self.what} was released (or its client closed) while being acquired"
                ) from None
            raise
        except BaseException:
            await self._leave()
            raise
        finally:
            self._acquiring = None
        if held_at is None:
            await self._leave()
            return False
        self._hold(held_at)
        return True

    async def _acquire(self, wait: bool) -> int | None:
        backoff: Backoff | None = None  # made at the first retry (most acquisitions need none)
        while True:
            try:
                session = await self._session()
                look = None
                if not self.revision:
                    look = await self._enter(session)
                if self.state is HoldState.REQUEUED:
                    self._set(HoldState.WAITING)  # in line again, with the new key
                held_at = await self._turn(session, wait, look)
                if held_at is not None and not await confirmed(session, self.ttl):
                    raise _Gone(UNCONFIRMED)
                return held_at
            except _Gone as gone:
                self._requeue(str(gone))
                await self._drop_session()
                backoff = backoff or self.etcd.retry.backoff()
                await self._pause(backoff.next_delay() or 0.0)
            except EtcdkitError as exc:
                if not wait or not self.etcd.retry.is_retryable(exc):
                    raise
                self.log.info("%s: etcd unreachable (%s); retrying", self.what, exc)
                backoff = backoff or self.etcd.retry.backoff()
                await self._pause(backoff.next_delay() or 0.0)

    async def _pause(self, delay: float) -> None:
        """Sleep ``delay`` seconds before trying again (closing the client releases us, which
        cancels this)."""
        await asyncio.sleep(delay)
        if self.etcd.closed:
            raise ClosedError(f"{self.what}: the etcdkit client was closed")

    def _requeue(self, why: str) -> None:
        """Our key or lease vanished while we waited: we lose our place. Said once, loudly."""
        self.requeues += 1
        _metrics.lock_requeued(self.kind)
        self.log.warning(
            "%s: %s while waiting; our place in line is lost: queuing again at the back with a "
            "new lease (state REQUEUED; %d time(s) for this acquisition)",
            self.what,
            why,
            self.requeues,
        )
        self._set(HoldState.REQUEUED)

    async def _session(self) -> Session:
        session = self.session
        if session is not None and not session.lost.is_set():
            return session
        if session is not None and self.revision:
            # (seen here after a transient error: e.g. the lease expired while etcd was down)
            self._requeue("our lease expired or was revoked")
        await self._drop_session()
        session = self.etcd.session(self.ttl)
        self.session = session
        # The grant runs in the session's own task: a cancellation (or timeout) of ours does
        # not cancel a grant in flight, which etcd may apply all the same and leave a lease
        # that nobody knows of (for its TTL). Given up on, the session is closed in a task of
        # its own, which waits for the grant's answer (bounded) and revokes what it granted.
        try:
            await session.open()
        except BaseException:
            self.session = None
            await abandon(session, repr(self.prefix))
            raise
        self.key = self.prefix + format(session.lease_id, "x").encode()
        self.revision = 0
        return session

    async def _drop_session(self, promptly: bool = False) -> None:
        session, self.session = self.session, None
        self.revision = 0
        if session is not None:
            if promptly:
                await abandon(session, repr(self.prefix))
            else:
                await asyncio.shield(session.close())

    async def _enter(self, session: Session) -> tuple[list[KeyValue], int] | None:
        """Put our key (or find it, when an earlier attempt of ours landed) and set
        :attr:`revision` to its create revision. When the put ran, the same transaction read
        the line as :meth:`_turn` would: that look, ``(kvs, revision)``."""
        key = self.key
        try:
            # Go's Mutex does the same: if our key is absent, put it and read the line (ours
            # and the key just before it) in one transaction; else get the key as it is.
            res = await self.etcd.txn(
                [Compare.create_revision(key, "==", 0)],
                [Op.put(key, self.value, lease=session.lease_id), _line_read(self.prefix)],
                [Op.get(key)],
            )
        except LeaseNotFoundError as exc:
            session.mark_lost("etcd said lease not found")
            raise _Gone("our lease expired before our key was put") from exc
        line = res.responses[-1]
        assert isinstance(line, RangeResult)
        if res.succeeded:
            self.revision = res.revision
            return line.kvs, res.revision
        kv = line.kvs[0]
        if kv.value != self.value:  # ours from an earlier attempt: say what we say now
            await self.etcd.txn(
                [Compare.create_revision(key, "==", kv.create_revision)],
                [Op.put(key, self.value, lease=session.lease_id)],
            )
        self.revision = kv.create_revision
        return None

    async def _turn(
        self, session: Session, wait: bool, look: tuple[list[KeyValue], int] | None
    ) -> int | None:
        """Go's ``waitDeletes``: the revision at which our key was the oldest, or ``None``
        (``wait=False`` and another holds). ``look``: the line as :meth:`_enter` read it."""
        floor = self.revision
        while True:
            # One read answers "is our key still there?" and "which key is just before it?"
            kvs, rev = look if look is not None else await self._look(floor)
            look = None
            if not kvs or kvs[0].create_revision != self.revision:
                raise _Gone("our key is gone (its lease expired or was revoked, or it was deleted)")
            if len(kvs) == 1:
                return rev  # nobody before us
            self.ahead = kvs[1]
            if not wait:
                return None
            floor = await self._wait_deleted(self.ahead.key, rev, session)

    async def _look(self, floor: int) -> tuple[list[KeyValue], int]:
        """Our key and the one just before it, read from a state at revision ``floor`` or
        later. Any such state tells the truth about the keys before ours: none can be created
        after ours was (a new key gets a newer create revision), and a deleted one never comes
        back. So the member's own state will do (a serializable read: no round to the
        leader), unless it is behind ``floor``; then the leader's (a linearizable read)."""

        async def read(serializable: bool) -> tuple[list[KeyValue], int]:
            res = await self.etcd.range(
                self.prefix,
                prefix=True,
                sort_target="create",
                sort_order="descend",
                limit=2,
                max_create_revision=self.revision,
                serializable=serializable,
            )
            return res.kvs, res.revision

        if floor:
            kvs, rev = await read(serializable=True)
            if rev >= floor:
                return kvs, rev
        return await read(serializable=False)

    async def _wait_deleted(self, key: bytes, rev: int, session: Session) -> int:
        """Wait until ``key`` is deleted after ``rev``; the revision of its deletion (0 when
        compaction took the history: it was deleted at some revision we cannot know).

        The watch and the session tell a listener each, in the turn they learn it, which
        settles one future: the hand-off costs no task and no extra turn of the loop."""
        if session.lost.is_set():
            raise _Gone("our lease expired or was revoked")
        loop = asyncio.get_running_loop()
        done: asyncio.Future[int] = loop.create_future()
        w = self.etcd.watch(key, start_revision=rev + 1)

        def on_batches() -> None:
            if done.done():
                return
            try:
                batches = w.take()
            except CompactedError:
                done.set_result(0)  # history gone: look again, at the leader
                return
            except EtcdkitError as exc:
                done.set_exception(exc)
                return
            for batch in batches:
                for ev in batch.events:
                    if ev.type is EventType.DELETE:
                        self.wakeups += 1
                        done.set_result(ev.kv.mod_revision)
                        return

        def on_session(state: SessionState) -> None:
            if state in (SessionState.LOST, SessionState.CLOSED) and not done.done():
                done.set_exception(_Gone("our lease expired or was revoked"))

        async def check() -> None:
            # A watch created when etcd is already past ``rev`` (the key ahead may have been
            # deleted between our read and the create) starts in etcd's "unsynced" group,
            # which its mvcc syncWatchersLoop catches up only every 100 ms: hand-offs then
            # took 0-100 ms more (the p99 tails of issue 25). So one read, beside the watch,
            # tells at once whether the key is gone already; the watch decides otherwise.
            at = await self._gone_yet(key, rev)
            if at and not done.done():
                self.wakeups += 1
                done.set_result(at)

        unlisten_watch = w.add_listener(on_batches)
        unlisten_session = session.add_listener(on_session)
        checking = loop.create_task(check(), name=f"etcdkit-lock-gone {key!r}")
        try:
            await w.start()  # (a given start revision: no I/O)
            return await done
        finally:
            unlisten_watch()
            unlisten_session()
            w.cancel()
            if not checking.done():  # (rare: the read is long answered when a hand-off comes)
                checking.cancel()
                await asyncio.wait({checking})

    async def _gone_yet(self, key: bytes, rev: int) -> int:
        """The revision of a read that no longer finds ``key`` (it existed at ``rev``: deleted
        since), else 0."""
        try:
            res = await self.etcd.range(key, serializable=True)
        except EtcdkitError:
            return 0
        return res.revision if not res.kvs and res.revision > rev else 0

    async def _leave(self, promptly: bool = False) -> None:
        """Leave the line without having held (our key goes with its lease). ``promptly``
        (given up on: a timeout or a cancellation): the revoke runs in a task of its own,
        waited for at most ``ABANDON_WAIT`` (an unreachable etcd does not add the revoke's
        bound to the caller's timeout; the client's close still waits for it)."""
        self.etcd.disown(self)
        await self._drop_session(promptly)
        if self.state in (HoldState.WAITING, HoldState.REQUEUED):
            self._set(HoldState.IDLE)

    # -- holding ----------------------------------------------------------------------------------

    def _hold(self, rev: int) -> None:
        """We hold at ``rev`` (our key was the oldest then): watch our key and our session.
        Nothing is awaited: the watch of our key starts in a task of its own, once acquire()
        returned, from ``rev + 1`` (whenever it starts, it misses nothing); a hold released
        in the turn it began never needs it."""
        session = self.session
        assert session is not None
        self.token = self.revision
        suspended = session.state is SessionState.SUSPENDED
        self._set(HoldState.SUSPENDED if suspended else HoldState.HELD)
        # (creating that watch was most of what acquire() did after its last read)
        self._recheck = asyncio.get_running_loop().create_task(
            self._watch_own(rev), name=f"etcdkit-lock-own {self.key!r}"
        )
        self._unlisten = session.add_listener(self._on_session)
        if session.lost.is_set():
            self.lose("our lease expired or was revoked")
        elif session.state is SessionState.SUSPENDED:
            self._start_expiry()

    async def _watch_own(self, rev: int) -> None:
        """Watch our key from ``rev + 1`` while we hold: its deletion, or a key of the same
        name created again by someone else, loses the hold. Read in the turn each change
        arrives (a listener): starting from a given revision does no I/O, so this returns at
        once."""
        w = self.etcd.watch(self.key, start_revision=rev + 1)
        self._own = w
        w.add_listener(self._on_own)
        try:
            await w.start()
        except ClosedError:
            self._closed_with_client()

    def _on_own(self) -> None:
        w = self._own
        if w is None:
            return
        try:
            batches = w.take()
        except CompactedError:
            self._stop_own()
            if self.state in (HoldState.HELD, HoldState.SUSPENDED):
                self._recheck = asyncio.get_running_loop().create_task(
                    self._check_own(), name=f"etcdkit-lock-recheck {self.key!r}"
                )
            return
        except ClosedError:
            self._closed_with_client()
            return
        except EtcdkitError as exc:
            self.lose(f"cannot watch our key any more ({exc})")
            return
        for batch in batches:
            for ev in batch.events:
                if ev.type is EventType.DELETE:
                    self.lose(
                        "our key was deleted (its lease revoked or expired, or deleted by hand)"
                    )
                    return
                if ev.kv.create_revision != self.revision:
                    self.lose("our key was deleted and created again by someone else")
                    return

    def _stop_own(self) -> None:
        own, self._own = self._own, None
        if own is not None:
            own.cancel()

    async def _check_own(self) -> None:
        """After a compaction: is our key still ours? Then watch on from the read."""
        backoff = self.etcd.retry.backoff()
        while self.state in (HoldState.HELD, HoldState.SUSPENDED):
            try:
                res = await self.etcd.range(self.key)
            except EtcdkitError as exc:
                if not self.etcd.retry.is_retryable(exc):
                    self.lose(f"cannot read our key ({exc})")
                    return
                with contextlib.suppress(ClosedError):
                    await self._pause(backoff.next_delay() or 0.0)
                continue
            kv, rev = (res.kvs[0] if res.kvs else None), res.revision
            if kv is None or kv.create_revision != self.revision:
                self.lose("our key is gone")
            else:
                await self._watch_own(rev)
            return

    def _on_session(self, state: SessionState) -> None:
        if self.state not in (HoldState.HELD, HoldState.SUSPENDED):
            return
        if state is SessionState.ALIVE:
            self._stop_expiry()
            self._set(HoldState.HELD)
        elif state is SessionState.SUSPENDED:
            self._set(HoldState.SUSPENDED)
            self._start_expiry()
        elif state is SessionState.LOST:
            self.lose("our lease expired or was revoked")
        elif state is SessionState.CLOSED:  # (ours is closed here only by the client's close)
            self._closed_with_client()

    def _start_expiry(self) -> None:
        if self._expiry is not None:
            return
        expires = self.session.expires if self.session is not None else None
        if expires is None:
            self.lose("our lease is no longer kept alive")
            return
        loop = asyncio.get_running_loop()
        # expires is on time.monotonic(), the loop's clock
        delay = max(0.0, expires - loop.time() - lost_margin(self.ttl))
        self._expiry = loop.call_later(
            delay,
            self.lose,
            f"etcd did not confirm our lease for its TTL ({self.ttl} s) minus a margin",
        )

    def _stop_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    def _closed_with_client(self) -> None:
        """The client is closing (our key's watch, or our session, ended with it): its close
        releases this hold, which it adopted. So RELEASED, as a release says, not LOST with a
        warning (the client's close revokes our lease next)."""
        if self.state not in (HoldState.HELD, HoldState.SUSPENDED):
            return
        self.log.info("%s released: the client is closing", self.what)
        self._stop_watching()
        self._set(HoldState.RELEASED)
        self.lost.set()

    def lose(self, why: str) -> None:
        """We can no longer trust that we hold (final for this acquisition). Our lease is
        revoked at once, in the background: if our key is still there (we gave up early, a
        margin before etcd would have), the next in line need not wait for our release."""
        if self.state not in (HoldState.HELD, HoldState.SUSPENDED):
            return
        self.log.warning("%s lost: %s", self.what, why)
        self._stop_watching()
        self._set(HoldState.LOST)
        self.lost.set()
        session = self.session
        if session is not None and not self.etcd.closed:
            self._closing = asyncio.get_running_loop().create_task(
                session.close(), name=f"etcdkit-lock-lost {self.key!r}"
            )

    def _stop_watching(self) -> None:
        self._stop_expiry()
        self._stop_own()
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None
        if self._recheck is not None:
            self._recheck.cancel()
            self._recheck = None

    # -- releasing --------------------------------------------------------------------------------

    async def release(self) -> None:
        """Give it up: revoke our lease, which deletes our key at once (the next in line
        takes over). Idempotent; bounded when etcd is down (the key then goes when the lease
        expires). While acquiring, the acquisition ends with :class:`ClosedError`."""
        acquiring = self._acquiring
        if acquiring is not None and acquiring is not asyncio.current_task():
            if not self._leaving:
                self._aborted = True
                acquiring.cancel()
            await self._acquired.wait()  # (then release what it may have got)
        if self.state in (HoldState.IDLE, HoldState.RELEASED) and self.session is None:
            return
        self.etcd.disown(self)
        self._stop_watching()
        if self.state in (HoldState.HELD, HoldState.SUSPENDED):
            self._set(HoldState.RELEASED)  # (LOST stays LOST: what happened is what it says)
        self.lost.set()
        if self._closing is not None:
            await asyncio.wait({self._closing})
        await self._drop_session()

    def _set(self, state: HoldState) -> None:
        if state is self.state:
            return
        if self.log.isEnabledFor(logging.DEBUG):  # (an enum's name is a property: 0.2 us each)
            self.log.debug("%s: %s -> %s", self.what, self.state.name, state.name)
        self.state = state
        try:
            self._on_state(state)
        except CALLBACK_ERRORS:
            self.log.exception("%s: state listener failed", self.what)
