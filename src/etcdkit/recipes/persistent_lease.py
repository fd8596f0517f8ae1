"""PersistentLease: a key that stays registered under a lease, and comes back by itself.

Written on the public client only (:class:`etcdkit._surface.Etcd`), as a user could write it:
the client's shared session (:meth:`~etcdkit.AsyncClient.shared_session`), ``put`` with
``prev_kv``, ``txn``, and a ``watch`` of the key from the revision of our own put.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

from etcdkit._errors import (
    ClosedError,
    CompactedError,
    EtcdkitError,
    EtcdTimeoutError,
    InvalidArgumentError,
    LeaseNotFoundError,
)
from etcdkit._logs import CALLBACK_ERRORS, RateLimitedLog
from etcdkit._metrics import LeaseMeter, LeaseStats
from etcdkit._retry import Backoff
from etcdkit._surface import Etcd
from etcdkit._types import Compare, EventType, Op, SessionState, WatchEvent, key_bytes, to_bytes
from etcdkit.recipes._hold import check_timeout
from etcdkit.recipes.session import CloseOnce, Late, abandon

if TYPE_CHECKING:
    from etcdkit import Session, Watch

__all__ = ["LeaseState", "PersistentLease"]

log = logging.getLogger("etcdkit.lease")
limited = RateLimitedLog(log)  # a fight over the key, or a refused watch: one line per interval

T = TypeVar("T")

REVOKE_TIMEOUT = 2.0  # bound on the delete a close sends when others share the lease


class LeaseState(enum.Enum):
    """Health of a :class:`PersistentLease`, as its owner should read it.

    - ``CONNECTING``: not registered yet (first grant/put in flight, or etcd unreachable since
      the start). Nobody sees the key yet.
    - ``REGISTERED``: the key holds our value under a lease that etcd confirmed alive. Others
      see us.
    - ``SUSPENDED``: etcd is unreachable; our lease may still be alive until its TTL runs out,
      so others may or may not see us. Do not assume you are registered; keep going.
    - ``LOST``: the key is known to be gone or not ours (deleted, lease revoked or expired,
      overwritten by another writer). Another process may already see you gone and act on it
      (e.g. take over your work). Re-registration is under way; it becomes REGISTERED again
      with a new ``lease_id`` / ``create_revision``.
    - ``FAILED``: stopped on a permanent error that retrying cannot fix (wrong credentials,
      no permission for the key, a TTL etcd refuses); :attr:`PersistentLease.error` says which,
      and the waiting methods raise it. The key is not held. Close the lease (or, failed on
      a value etcd refuses, such as one larger than its request limit, give a new value).
    - ``CLOSED``: closed; the lease was revoked or the key deleted (etcd down: the key expires
      with its lease, or goes once etcd answers when other keys keep a shared lease alive).
    """

    CONNECTING = "connecting"
    REGISTERED = "registered"
    SUSPENDED = "suspended"
    LOST = "lost"
    FAILED = "failed"
    CLOSED = "closed"


class PersistentLease:
    """Keeps ``key=value`` in etcd under a lease of ``ttl`` seconds while open.

    Create with :meth:`AsyncClient.persistent_lease` (or ``PersistentLease(client, key, value,
    ttl)``) and use as an async context manager, or call :meth:`aclose` when done. Created
    inside a running event loop it starts at once; otherwise on :meth:`start`, ``async with``
    or the first wait. The key is put back, immediately on detection,
    after an external delete, a revoke, an expiry, an outage, a leader change or a cut
    connection; detection watches the key from the revision of our own put, so no delete is
    missed. Backoff applies only while etcd is unreachable.

    Another writer: if someone else overwrites the key (other value or lease), the lease goes
    LOST, logs a warning and re-asserts its value at backoff pace: 0.5 s, doubling with each of
    its own re-asserts that is overwritten again, up to the retry policy's cap (2 s by default);
    never in a hot loop, and never later than that cap after the other writer stops. With
    ``yield_to``, a function of the other writer's value: when it says ``True`` (another
    registration of the same thing, say), that writer keeps the key (the last writer wins, as
    with Go's ``endpoints.Manager``) and this lease stands by, LOST, putting nothing, until the
    key is deleted (or its lease ends): then it puts its value back at once.

    One etcd lease per TTL is shared by all PersistentLeases of a client (a session, as in
    etcd's Go ``concurrency`` package or ZooKeeper): one keepalive message per ttl/3 for all of
    them. Revoking that lease deletes all their keys; each puts its key back at once.
    ``own_lease=True`` gives this PersistentLease an etcd lease of its own instead.

    Fencing: ``create_revision`` identifies this registration (with ``lease_id``, which is
    shared unless ``own_lease``); guard writes with a txn comparing them. ``close()`` removes
    the key at once (it revokes the lease when no other key of the client hangs on it, else
    deletes the key if its last write is still ours, sent again until etcd answers); it is
    idempotent, bounded in time when etcd is down, and safe after the client closed.
    """

    def __init__(
        self,
        etcd: Etcd,
        key: str | bytes,
        value: str | bytes,
        ttl: int = 10,
        *,
        own_lease: bool = False,
        yield_to: Callable[[bytes], bool] | None = None,
    ) -> None:
        self._raw_key = key_bytes(key)
        self._key = key
        self._value = to_bytes(value, "value")
        if not isinstance(ttl, int) or isinstance(ttl, bool):
            raise TypeError(f"ttl must be a whole number of seconds (int), got {ttl!r}")
        if not 1 <= ttl < 2**63:
            raise ValueError(f"ttl must be >= 1 second (and fit etcd's int64), got {ttl}")
        if not isinstance(own_lease, bool):
            raise TypeError(f"own_lease must be True or False, got {own_lease!r}")
        if yield_to is not None and not callable(yield_to):
            raise TypeError(f"yield_to must be a function of a value, or None; got {yield_to!r}")
        self._yield_to = yield_to
        self._standing_by = False  # another writer's value we yield to holds the key
        self._etcd = etcd
        self._ttl = ttl
        self._own_lease = own_lease
        self._state = LeaseState.CONNECTING
        self._session: Session | None = None
        self._unlisten: Callable[[], None] | None = None
        self._create_revision = 0
        self._put_revision = 0  # revision of our newest own put
        self._written: bytes | None = None  # value of that put
        self._putting: bytes | None = None  # value of our put in flight (its event may come first)
        # A put of ours had no answer (cancelled, failed): etcd may have applied it, at a
        # revision we do not know. Until the next put's answer, the close's delete cannot
        # tell our write by its revision (see _close).
        self._unsure = False
        self._need_put = True
        # monotonic time our next put may go: after another writer's put over ours, or a key
        # watch etcd ended (say, refused), re-asserts are paced by this backoff
        self._reassert_at = 0.0
        policy = etcd.retry
        self._reasserts = Backoff(
            initial=min(0.5, policy.cap), cap=policy.cap, multiplier=policy.multiplier
        )
        self._sub: Watch | None = None  # follows the key from our put
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self._listeners: list[Callable[[LeaseState], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._close_once = CloseOnce()
        self._error: EtcdkitError | None = None
        self._meter = LeaseMeter()  # lease.stats, and OpenTelemetry when installed
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass  # no loop yet: starts on start(), ``async with`` or the first wait
        else:
            self.start()  # starts at once, as the seed's constructor did

    def __repr__(self) -> str:
        return (
            f"<PersistentLease key={self._key!r} state={self._state.name} "
            f"lease={self.lease_id:#x} ttl={self._ttl}>"
        )

    # -- public -----------------------------------------------------------------------------------

    @property
    def key(self) -> str | bytes:
        """The key this lease keeps in etcd."""
        return self._key

    @property
    def value(self) -> bytes:
        """The value to keep (the newest passed to ``set_value``)."""
        return self._value

    @property
    def ttl(self) -> int:
        """The TTL etcd granted (may be above the requested one); the requested before that."""
        return self._session.ttl if self._session is not None else self._ttl

    @property
    def state(self) -> LeaseState:
        """Where the key stands (a :class:`LeaseState`: what each means)."""
        return self._state

    @property
    def lease_id(self) -> int:
        """The current lease id (0 while none is granted)."""
        session = self._session
        return session.lease_id if session is not None else 0

    @property
    def create_revision(self) -> int:
        """The key's create_revision of the current registration (0 while unregistered)."""
        return self._create_revision

    @property
    def error(self) -> EtcdkitError | None:
        """The permanent error that stopped this lease (state FAILED), else ``None``."""
        return self._error

    @property
    def stats(self) -> LeaseStats:
        """Registrations, recoveries after a loss and how long the newest took, state changes:
        a :class:`LeaseStats` snapshot (no I/O)."""
        return self._meter.stats

    def add_listener(self, callback: Callable[[LeaseState], None]) -> Callable[[], None]:
        """Call ``callback(state)`` on every state change (on the event loop); returns a
        function that removes it. Callback errors are logged, not raised."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    async def wait_state(self, *states: LeaseState, timeout: float | None = None) -> LeaseState:
        """Wait until the state is one of ``states``; returns it."""
        if not states:
            raise ValueError("pass at least one LeaseState to wait for")
        for state in states:
            if not isinstance(state, LeaseState):
                raise TypeError(f"wait_state takes LeaseState values, got {state!r:.40}")
        return await self._until(
            lambda: self._state if self._state in states else None,
            timeout,
            f"state {'/'.join(s.name for s in states)}",
        )

    async def registered(self, timeout: float | None = None) -> int:
        """Wait until the key is in etcd under a live lease; returns the revision of that put."""
        return await self._until(
            lambda: self._put_revision if self._state is LeaseState.REGISTERED else None,
            timeout,
            "registration",
        )

    async def synced(self, timeout: float | None = None) -> int:
        """Wait until the *current* value is in etcd under a live lease; returns the revision."""
        return await self._until(
            lambda: (
                self._put_revision
                if self._state is LeaseState.REGISTERED
                and self._written == self._value
                and not self._need_put
                else None
            ),
            timeout,
            "the current value to be stored",
        )

    def set_value(self, value: str | bytes) -> None:
        """Change the value; non-blocking, the latest value wins. A lease FAILED on its value
        (one etcd refuses: larger than its request limit) goes on with this one."""
        if self._closing:
            raise ClosedError(f"set_value on a closed PersistentLease for {self._key!r}")
        self._value = to_bytes(value, "value")
        self._need_put = True
        if self._state is LeaseState.FAILED and isinstance(self._error, InvalidArgumentError):
            self._error, self._task = None, None
            self._set_state(LeaseState.CONNECTING)
            self.start()
        self._wake.set()

    async def __aenter__(self) -> PersistentLease:
        self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def start(self) -> None:
        """Start keeping the key (idempotent); needs a running event loop."""
        if self._closing:
            raise ClosedError("this PersistentLease is closed; create a new one")
        if self._task is None:
            self._etcd.adopt(self, self._close_by_client)
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"etcdkit-lease {self._key!r}"
            )

    async def aclose(self) -> None:
        """Remove the key at once and stop; idempotent, bounded when etcd is down. A close
        while another is under way waits for it, and a close whose caller is cancelled goes
        on to its end (the key is removed, not left in etcd for the lease's TTL)."""
        if not self._close_once.began:
            self._closing = True
            self._changed.set()  # waiters end with ClosedError now
        await self._close_once.close(
            self._etcd, self, self._close, f"etcdkit-lease-close {self._key!r}"
        )

    async def _close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._stop_following()
        session, self._session = self._session, None
        if self._unlisten is not None:
            self._unlisten()
        if session is not None and not self._etcd.closed:
            last = self._etcd.release_session(self, session)
            if last:
                await session.close()  # revokes: our key goes with the lease
            elif session.state is not SessionState.LOST and (self._put_revision or self._unsure):
                # Others still hang on this lease: delete our key, if it still holds our
                # write. The lease alone does not say so: another PersistentLease of this
                # client on the same key (a new registration opened before the old one
                # closes) puts it under the same shared lease.
                guard = [Compare.lease(self._raw_key, "==", session.lease_id)]
                if not self._unsure:
                    guard.append(Compare.mod_revision(self._raw_key, "==", self._put_revision))
                try:
                    async with asyncio.timeout(REVOKE_TIMEOUT):
                        await self._etcd.txn(guard, [Op.delete(self._raw_key)])
                except ClosedError:
                    # the client is closing: it revokes the shared lease, and our key with it
                    log.debug("lease %r: the client closes; its lease takes the key", self._key)
                except (EtcdkitError, TimeoutError) as exc:
                    # The others keep the lease alive, and with it our key, for as long as
                    # they stay: the delete is sent again until etcd answers it.
                    try:
                        self._delete_later(guard, session)
                    except ClosedError:  # the client began closing meanwhile: as above
                        log.debug("lease %r: the client closes; its lease takes the key", self._key)
                    else:
                        log.warning(
                            "lease %r: could not remove the key on close (%s); sending the "
                            "delete again until etcd answers (lease %#x, shared, keeps it "
                            "meanwhile)",
                            self._key,
                            str(exc) or f"no answer within {REVOKE_TIMEOUT:g} s",
                            session.lease_id,
                        )
        self._set_state(LeaseState.CLOSED)

    close = aclose

    def _delete_later(self, guard: list[Compare], session: Session) -> None:
        """Send the delete of our key again until etcd answers it (:class:`Late`): our close
        could not, and others keep the shared lease, and with it the key, alive. Moot once
        the shared lease ended (its end takes the key); the client's close revokes it."""
        delete = [Op.delete(self._raw_key)]

        async def remove() -> None:
            await self._etcd.txn(guard, delete)

        Late.send(
            self._etcd,
            remove,
            what=f"lease {self._key!r}: the delete after close",
            moot=lambda: session.state in (SessionState.LOST, SessionState.CLOSED),
        )

    async def _close_by_client(self) -> None:
        await self.aclose()

    # -- internals --------------------------------------------------------------------------------

    async def _until(self, pick: Callable[[], T | None], timeout: float | None, what: str) -> T:
        check_timeout(timeout)
        if not self._closing:
            self.start()
        try:
            async with asyncio.timeout(timeout):
                while True:
                    got = pick()
                    if got is not None:
                        return got
                    if self._error is not None:
                        raise self._error
                    if self._state is LeaseState.CLOSED or self._closing:
                        raise ClosedError(f"PersistentLease for {self._key!r} is closed")
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError as exc:
            if isinstance(exc, EtcdkitError):
                raise
            raise EtcdTimeoutError(
                f"PersistentLease {self._key!r}: no {what} within {timeout} s "
                f"(state {self._state.name}; endpoints {', '.join(self._etcd.endpoints)})"
            ) from None

    def _set_state(self, state: LeaseState) -> None:
        if state is self._state:
            self._changed.set()
            return
        log.info("lease %r: %s -> %s", self._key, self._state.name, state.name)
        self._meter.transition(self._state.value, state.value)
        self._state = state
        self._changed.set()
        for cb in list(self._listeners):
            try:
                cb(state)
            except CALLBACK_ERRORS:
                log.exception("lease %r: state listener failed", self._key)

    def _yields(self, value: bytes) -> bool:
        """``yield_to(value)``; one that raises does not yield (logged)."""
        if self._yield_to is None:
            return False
        try:
            return bool(self._yield_to(value))
        except Exception:
            log.exception("lease %r: yield_to failed on %r; not yielding", self._key, value[:80])
            return False

    def _stand_by(self, lease: int) -> None:
        """Another writer we yield to (``yield_to``) holds the key: put nothing until the key
        is deleted (the key watch goes on: its delete brings our value back at once)."""
        if self._closing:
            return
        if not self._standing_by:
            log.info(
                "lease %r: another writer (lease %#x) took the key over; standing by until it goes",
                self._key,
                lease,
            )
        self._standing_by = True
        self._need_put = False
        self._create_revision = 0
        self._set_state(LeaseState.LOST)

    def _lost(self, why: str) -> None:
        if self._closing:
            return
        log.info("lease %r: %s; re-registering", self._key, why)
        self._standing_by = False
        self._need_put = True
        self._create_revision = 0
        self._set_state(LeaseState.LOST)
        self._wake.set()

    # session callbacks
    def _on_session(self, session: Session, state: SessionState) -> None:
        if session is not self._session:
            return  # an older session of ours, already replaced
        if state is SessionState.ALIVE:
            if self._state is LeaseState.SUSPENDED and not self._need_put:
                self._set_state(LeaseState.REGISTERED)
        elif state is SessionState.SUSPENDED:
            if self._state is LeaseState.REGISTERED:
                self._set_state(LeaseState.SUSPENDED)
            self._wake.set()
        elif state is SessionState.LOST:
            self._drop_session()
            if not self._standing_by:  # (standing by, the key is not on our lease)
                self._lost("lease expired or was revoked")

    def _drop_session(self) -> None:
        session, self._session = self._session, None
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None
        if session is not None:
            self._etcd.release_session(self, session)

    # key watch callbacks
    def _on_key_events(self, events: list[WatchEvent]) -> None:
        for ev in events:
            kv = ev.kv
            if kv.mod_revision <= self._put_revision:
                continue
            if ev.type is EventType.DELETE:
                self._lost("key was deleted (externally, or its lease revoked or expired)")
            elif kv.lease != self.lease_id or kv.value not in (self._written, self._putting):
                # Another writer: another lease, or another value on ours (the leases of one
                # TTL of a client share one: another PersistentLease on this key, say).
                if self._yields(kv.value):
                    self._stand_by(kv.lease)
                    continue
                limited.warning(
                    ("conflict", self._raw_key),
                    "lease %r: another writer put value %r with lease %#x over ours; "
                    "re-asserting at backoff pace",
                    self._key,
                    kv.value[:80],
                    kv.lease,
                )
                self._pace()
                self._lost("key overwritten by another writer")

    async def _follow(self, start_revision: int) -> None:
        """Watch the key from ``start_revision`` (the revision after our put), read in the turn
        each change arrives (a listener), with no task of our own; starting from a given
        revision does no I/O. When the watch ends, the loop re-puts and watches again from the
        new put's revision: after a compaction the history since our put is gone, so only a
        fresh put knows the key."""
        w = self._etcd.watch(self._raw_key, start_revision=start_revision)
        self._sub = w
        w.add_listener(functools.partial(self._on_watch, w))
        try:
            await w.start()
        except EtcdkitError:  # the client closed meanwhile: the loop learns it from its put
            self._unfollow(w)

    def _on_watch(self, w: Watch) -> None:
        if self._sub is not w:
            return
        try:
            batches = w.take()
        except (CompactedError, ClosedError):
            self._unfollow(w)
            return
        except EtcdkitError as exc:
            limited.warning(
                ("watch", self._raw_key),
                "lease %r: key watch ended: %s; putting again at backoff pace",
                self._key,
                exc,
            )
            self._pace()
            self._unfollow(w)
            return
        for batch in batches:
            self._on_key_events(batch.events)

    def _pace(self) -> None:
        """Pace our own re-asserts, not what causes them (another writer's events, a watch
        etcd keeps refusing): one more delay per re-assert, never pushed further out."""
        now = time.monotonic()
        if self._reassert_at <= now:
            self._reassert_at = now + (self._reasserts.next_delay() or 0.0)

    def _unfollow(self, w: Watch) -> None:
        """The watch ended: the loop puts again and follows from there."""
        w.cancel()
        if self._sub is w:
            self._sub = None
        self._wake.set()

    def _stop_following(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            sub.cancel()

    async def _run(self) -> None:
        try:
            await self._keep()
        except ClosedError as exc:  # the client closed under us
            self._error = exc
            self._changed.set()
        except EtcdkitError as exc:  # permanent (auth, permission, a refused TTL): give up
            log.error("lease %r: giving up: %s", self._key, exc)
            self._error = exc
            self._set_state(LeaseState.FAILED)

    async def _keep(self) -> None:
        backoff = self._etcd.retry.backoff()
        while True:
            try:
                if self._need_put:
                    wait = self._reassert_at - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    await self._register()
                    backoff.reset()
                elif self._sub is None:
                    self._need_put = True
                    continue
                self._wake.clear()
                if not self._need_put and self._sub is not None:
                    await self._wake.wait()
            except LeaseNotFoundError:
                if self._session is not None:
                    self._session.mark_lost("etcd said lease not found")
                self._drop_session()
                self._lost("lease not found (revoked or expired)")
            except EtcdkitError as exc:
                if not self._etcd.retry.is_retryable(exc):
                    raise
                log.info("lease %r: etcd unreachable (%s); retrying", self._key, exc)
                if self._state is LeaseState.REGISTERED:
                    self._set_state(LeaseState.SUSPENDED)
                await backoff.wait()

    async def _register(self) -> None:
        session = self._session
        if session is None or session.state in (SessionState.LOST, SessionState.CLOSED):
            self._drop_session()
            session = await self._new_session()
            self._session = session
            self._unlisten = session.add_listener(functools.partial(self._on_session, session))
        value = self._putting = self._value
        self._need_put = False
        self._unsure = True
        try:
            put = await self._etcd.put(self._raw_key, value, lease=session.lease_id, prev_kv=True)
        except BaseException:
            self._need_put = True
            raise
        finally:
            self._putting = None
        self._standing_by = False
        prev = put.prev_kv
        ours_before = prev is not None and prev.lease == session.lease_id
        if not ours_before or not self._create_revision:
            self._create_revision = (
                prev.create_revision if ours_before and prev is not None else put.revision
            )
        self._put_revision = put.revision
        self._written = value
        self._unsure = False
        if self._sub is None:
            await self._follow(put.revision + 1)
        if not self._need_put:
            if time.monotonic() > self._reassert_at + 60:
                self._reasserts.reset()
            self._set_state(LeaseState.REGISTERED)

    async def _new_session(self) -> Session:
        if not self._own_lease:
            return await self._etcd.shared_session(self, self._ttl)
        session = self._etcd.session(self._ttl)
        try:
            return await session.open()
        except BaseException:
            # (closed, or the open failed): a grant in flight goes on; its lease is revoked,
            # not kept alive for a session nobody holds
            await abandon(session, f"lease {self._key!r}")
            raise
