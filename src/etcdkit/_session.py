"""Lease sessions: one etcd lease kept alive, the analogue of Go's ``concurrency.Session``.

:class:`Session` is the public object (``client.session(ttl)``); :class:`SessionPool` shares one
session per TTL among a client's PersistentLeases; :class:`KeepAliveHub` keeps every session's
lease alive over one shared LeaseKeepAlive stream per client.

The keepalive hub:

Each registered lease is refreshed at about a third of its granted TTL. One task schedules all
refreshes from a heap (no task, timer or stream per lease), so a thousand idle leases cost a
few hundred small messages a minute and nothing else. Outcomes reach the lease's owner
through callbacks, called on the hub's task:

- ``on_alive(ttl)``: etcd confirmed the lease with this remaining TTL;
- ``on_lost()``: etcd answered TTL 0 (the lease expired or was revoked); the lease is dropped
  from the hub, its owner must grant a new one;
- ``on_suspended()``: the stream broke, or stalled (a refresh got no answer within
  :func:`stall_after` its TTL, e.g. a black-holed connection that TCP has not noticed yet);
  the stream is re-opened and refreshes resume as soon as etcd answers. Whether the lease
  survived is known from the first answer after that.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import math
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import grpc.aio
from aetcd import rpc

from etcdkit import _metrics
from etcdkit._conn import Channel, Connection, map_rpc_error
from etcdkit._errors import (
    ClosedError,
    ConnectionUnavailableError,
    EtcdkitError,
    EtcdTimeoutError,
    LeaseNotFoundError,
)
from etcdkit._kv import KV
from etcdkit._retry import Backoff
from etcdkit._types import SessionState

__all__ = ["KeepAliveHub", "Session", "SessionPool", "SessionState"]

log = logging.getLogger("etcdkit.lease")


def _noop(*_args: object) -> None:
    return None


def stall_after(ttl: int) -> float:
    """Seconds without an answer to a refresh after which the stream counts as broken, unless
    a probe read halfway there was answered (see :meth:`KeepAliveHub._probe`)."""
    return min(max(ttl / 3.0, 1.0), 3.0)


def held_for(ttl: int) -> float:
    """How much longer a refresh may go unanswered, once, while its member answers reads:
    etcd's gRPC proxy holds a refresh until its own next one (its client's TTL/3, on a 0.5 s
    tick; tests/test_grpc_proxy.py pins this)."""
    return ttl / 3.0 + 0.5


@dataclass(eq=False)
class _Entry:
    lease_id: int
    ttl: int
    on_alive: Callable[[int], None]
    on_lost: Callable[[], None]
    on_suspended: Callable[[], None]
    due: float = field(default=0.0)
    expires: float = field(default=0.0)  # monotonic time etcd forgets the lease, as we know it


class KeepAliveHub:
    """Keeps leases alive over one LeaseKeepAlive stream (started lazily)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._entries: dict[int, _Entry] = {}
        self._heap: list[tuple[float, int]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._unanswered: dict[int, float] = {}  # lease id -> deadline for an answer
        self._held: set[int] = set()  # ... of those, the ones given more time (once)
        self.connected = False
        self.reconnects = 0

    def add(
        self,
        lease_id: int,
        ttl: int,
        *,
        on_alive: Callable[[int], None] = _noop,
        on_lost: Callable[[], None] = _noop,
        on_suspended: Callable[[], None] = _noop,
    ) -> None:
        """Keep ``lease_id`` (just granted with ``ttl``) alive until :meth:`remove`."""
        now = time.monotonic()
        entry = _Entry(lease_id, ttl, on_alive, on_lost, on_suspended)
        entry.expires = now + ttl
        entry.due = now + max(ttl / 3.0, 0.2)
        self._entries[lease_id] = entry
        heapq.heappush(self._heap, (entry.due, lease_id))
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="etcdkit-lease-keepalive"
            )
        self._wake.set()

    def remove(self, lease_id: int) -> None:
        self._entries.pop(lease_id, None)  # its heap item is skipped lazily
        self._unanswered.pop(lease_id, None)
        self._held.discard(lease_id)

    def expires(self, lease_id: int) -> float | None:
        entry = self._entries.get(lease_id)
        return None if entry is None else entry.expires

    def __len__(self) -> int:
        return len(self._entries)

    async def close(self) -> None:
        self._closed = True
        self._entries.clear()
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        backoff = self._conn.retry.backoff()
        while not self._closed:
            if not self._entries:
                self._wake.clear()
                await self._wake.wait()
                continue
            ch = self._conn.channel
            try:
                await self._stream_once(ch, backoff)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                err = map_rpc_error(exc, str(ch.endpoint), "lease keepalive stream")
                log.info("keepalive stream down: %s", err)
                self._conn.note_failure(err)
                if isinstance(err, ConnectionUnavailableError):
                    self._conn.failover(ch, str(err))
            self.connected = False
            self.reconnects += 1
            _metrics.stream_reconnected("keepalive")
            for entry in list(self._entries.values()):
                entry.on_suspended()
            await backoff.wait()

    async def _stream_once(self, ch: Channel, backoff: Backoff) -> None:
        md = await self._conn.metadata()
        call = ch.stream("lease", "LeaseKeepAlive", md)
        reader = asyncio.get_running_loop().create_task(
            self._reader(call, backoff), name="etcdkit-lease-reader"
        )
        try:
            # After a reconnect every lease is refreshed at once: that answers whether it
            # survived the outage as early as possible.
            for entry in self._entries.values():
                entry.due = 0.0
            self._heap = [(0.0, lid) for lid in self._entries]
            self._unanswered = {}
            self._held = set()
            loop = asyncio.get_running_loop()
            while not reader.done():
                # Leases due within the next half second are refreshed together (early is
                # harmless), so a thousand leases wake this task a few times a second at most.
                horizon = time.monotonic() + 0.5
                while self._heap and self._heap[0][0] <= horizon:
                    due, lid = heapq.heappop(self._heap)
                    found = self._entries.get(lid)
                    if found is None or found.due != due:
                        continue  # removed or rescheduled
                    entry = found
                    entry.due = time.monotonic() + max(entry.ttl / 3.0, 0.2)
                    heapq.heappush(self._heap, (entry.due, lid))
                    self._unanswered.setdefault(lid, time.monotonic() + stall_after(entry.ttl))
                    await call.write(rpc.LeaseKeepAliveRequest(ID=lid))
                now = time.monotonic()
                probe_at, give_up = self._checks()
                if give_up <= now:
                    raise self._stalled(ch)
                if probe_at <= now:
                    await self._probe(ch, md, now)
                    continue
                next_due = self._heap[0][0] if self._heap else now + 3600.0
                delay = min(next_due, probe_at, give_up) - now
                self._wake.clear()
                waiter = loop.create_task(self._wake.wait())
                try:
                    await asyncio.wait(
                        {waiter, reader}, timeout=max(delay, 0.0), return_when="FIRST_COMPLETED"
                    )
                finally:
                    waiter.cancel()
            reader.result()
        finally:
            reader.cancel()
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await reader

    def _checks(self) -> tuple[float, float]:
        """``(probe_at, give_up)``: when the earliest unanswered refresh not yet given more
        time is halfway to its deadline, and the earliest deadline of one that was."""
        probe_at = give_up = math.inf
        for lid, deadline in self._unanswered.items():
            if lid in self._held:
                give_up = min(give_up, deadline)
            else:
                probe_at = min(probe_at, self._halfway(lid, deadline))
        return probe_at, give_up

    def _halfway(self, lid: int, deadline: float) -> float:
        """When an unanswered refresh of ``lid`` is halfway to ``deadline`` (never, for a
        lease no longer kept)."""
        entry = self._entries.get(lid)
        return math.inf if entry is None else deadline - stall_after(entry.ttl) / 2.0

    async def _probe(self, ch: Channel, md: list[tuple[str, str]], now: float) -> None:
        """Refreshes are halfway to their :func:`stall_after` deadline unanswered. Ask the
        member a linearizable read (it needs the leader, as a refresh does), bounded by the
        earliest of those deadlines: no answer by then and the stream counts as broken (a
        black-holed connection, a hung member or leader), exactly when it would without the
        probe. An answer means the refreshes are held, not lost (etcd's gRPC proxy answers
        them on its own schedule): each gets :func:`held_for` more, once."""
        late = [
            (lid, due)
            for lid, due in self._unanswered.items()
            if lid not in self._held and self._halfway(lid, due) <= now
        ]
        if not late:
            return
        deadline = min(due for _, due in late)
        probe = rpc.RangeRequest(key=b"\0", count_only=True)
        try:
            await ch.stubs.kv.Range(probe, timeout=max(deadline - now, 0.01), metadata=md)
        except grpc.aio.AioRpcError:
            raise self._stalled(ch) from None
        for lid, _ in late:
            entry = self._entries.get(lid)
            if lid in self._unanswered and entry is not None:  # (not answered meanwhile)
                self._unanswered[lid] += held_for(entry.ttl)
                self._held.add(lid)

    @staticmethod
    def _stalled(ch: Channel) -> ConnectionUnavailableError:
        return ConnectionUnavailableError(
            f"lease keepalive stream at {ch.endpoint}: no answer to a refresh in time "
            "(connection black-holed or etcd stuck)"
        )

    async def _reader(self, call: Any, backoff: Backoff) -> None:
        while True:
            resp = await call.read()
            if resp is grpc.aio.EOF:
                return
            if not self.connected:
                self.connected = True
                backoff.reset()
            self._conn.answered = True
            held = resp.ID in self._held
            self._held.discard(resp.ID)
            answer_due = self._unanswered.pop(resp.ID, None)
            entry = self._entries.get(resp.ID)
            if entry is None:
                continue
            if answer_due is not None:  # due stall_after(ttl) (+ held_for) after it was sent
                budget = stall_after(entry.ttl) + (held_for(entry.ttl) if held else 0.0)
                _metrics.keepalive_rtt(time.monotonic() - answer_due + budget)
            if resp.TTL <= 0:
                del self._entries[resp.ID]
                entry.on_lost()
            else:
                entry.expires = time.monotonic() + resp.TTL
                entry.on_alive(resp.TTL)


REVOKE_TIMEOUT = 2.0  # bound on the revoke a close sends (etcd may be down)


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

    def __init__(self, kv: KV, hub: KeepAliveHub, ttl: int) -> None:
        if not isinstance(ttl, int) or isinstance(ttl, bool):
            raise TypeError(f"ttl must be a whole number of seconds (int), got {ttl!r}")
        if not 1 <= ttl < 2**63:
            raise ValueError(f"ttl must be >= 1 second (and fit etcd's int64), got {ttl!r}")
        self._kv = kv
        self._hub = hub
        self._requested_ttl = ttl
        self._ttl = 0
        self._lease_id = 0
        self._state = SessionState.OPENING
        self._opening: asyncio.Task[None] | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._listeners: list[Callable[[SessionState], None]] = []
        self.lost = asyncio.Event()

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
        return self._state

    @property
    def expires(self) -> float | None:
        """When the lease runs out if etcd confirms it no more, on ``time.monotonic()`` (the
        event loop's clock): its last confirmed TTL, counted from that answer. ``None`` while
        it is not kept alive (opening, lost, closed). Recipes that hold something say LOST a
        margin before it, while SUSPENDED."""
        return self._hub.expires(self._lease_id) if self._lease_id else None

    def add_listener(self, callback: Callable[[SessionState], None]) -> Callable[[], None]:
        """Call ``callback(state)`` on every state change (on the event loop); returns a
        function that removes it. Callback errors are logged, not raised."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    async def open(self) -> Session:
        """Grant the lease and start keeping it alive (idempotent); returns the session."""
        if self._state in (SessionState.LOST, SessionState.CLOSED) and not self._lease_id:
            raise ClosedError(f"this session is {self._state.name.lower()}; open a new one")
        opening = self._opening
        if opening is None or (opening.done() and (opening.cancelled() or opening.exception())):
            # first open, or the last grant failed (etcd unreachable...): grant anew
            opening = self._opening = asyncio.get_running_loop().create_task(
                self._grant(), name="etcdkit-session-grant"
            )
        await asyncio.shield(opening)
        return self

    def __await__(self) -> Generator[Any, None, Session]:
        return self.open().__await__()

    async def __aenter__(self) -> Session:
        return await self.open()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def wait_lost(self, timeout: float | None = None) -> SessionState:
        """Wait until the lease can no longer be trusted; returns LOST or CLOSED."""
        try:
            async with asyncio.timeout(timeout):
                await self.lost.wait()
        except TimeoutError:
            raise EtcdTimeoutError(
                f"session {self._lease_id:#x} was not lost within {timeout} s"
            ) from None
        return self._state

    async def close(self) -> None:
        """Revoke the lease (every key on it goes at once) and stop; idempotent, bounded when
        etcd is down (the lease then expires by itself after its TTL)."""
        if self._state is SessionState.CLOSED:
            return
        was_lost = self._state is SessionState.LOST
        if self._opening is not None and not self._opening.done():
            self._opening.cancel()
            with contextlib.suppress(asyncio.CancelledError, EtcdkitError):
                await self._opening
        self._stop(SessionState.CLOSED)
        if self._lease_id and not was_lost:
            try:
                async with asyncio.timeout(REVOKE_TIMEOUT):
                    await self._kv.revoke(self._lease_id)
            except LeaseNotFoundError:
                # Revoked or expired already (e.g. by someone else): gone, as closing wants.
                log.debug("session %#x: the lease was already gone on close", self._lease_id)
            except (EtcdkitError, TimeoutError) as exc:
                log.warning(
                    "session %#x: could not revoke on close (%s); it expires %d s after its "
                    "last refresh",
                    self._lease_id,
                    exc,
                    self.ttl,
                )

    def mark_lost(self, why: str) -> None:
        """The lease is known gone (e.g. etcd said "lease not found")."""
        if self._state not in (SessionState.LOST, SessionState.CLOSED):
            log.info("session %#x lost: %s", self._lease_id, why)
            self._stop(SessionState.LOST)

    # -- internals --------------------------------------------------------------------------------

    async def _grant(self) -> None:
        grant = await self._kv.grant(self._requested_ttl)
        if grant.ttl != self._requested_ttl:
            log.warning(
                "session %#x: etcd granted ttl %d s instead of the requested %d s (its minimum "
                "lease TTL)",
                grant.id,
                grant.ttl,
                self._requested_ttl,
            )
        self._lease_id, self._ttl = grant.id, grant.ttl
        self._hub.add(
            grant.id,
            grant.ttl,
            on_alive=self._on_alive,
            on_lost=lambda: self.mark_lost("etcd says the lease expired or was revoked"),
            on_suspended=self._on_suspended,
        )
        self._set(SessionState.ALIVE)

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
        expires = self._hub.expires(self._lease_id)
        if expires is not None and self._expiry is None:
            loop = asyncio.get_running_loop()
            delay = max(0.0, expires - time.monotonic())
            self._expiry = loop.call_later(delay, self._expired)

    def _expired(self) -> None:
        self._expiry = None
        if self._state is SessionState.SUSPENDED:
            self.mark_lost(f"no keepalive answer for the lease's TTL ({self.ttl} s)")

    def _stop(self, state: SessionState) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self._hub.remove(self._lease_id)
        self._set(state)
        self.lost.set()

    def _set(self, state: SessionState) -> None:
        if state is self._state:
            return
        self._state = state
        for cb in list(self._listeners):
            try:
                cb(state)
            except Exception:
                log.exception("session %#x: state listener failed", self._lease_id)


class SessionPool:
    """Hands out sessions to one client's PersistentLeases: one live session per TTL, shared by
    every PersistentLease asking for that TTL (like the keys of a Go ``concurrency.Session`` or
    a ZooKeeper session's ephemeral nodes), so a thousand registrations cost one keepalive per
    ttl/3. A session nobody uses any more is closed (its lease revoked)."""

    def __init__(self, kv: KV, hub: KeepAliveHub) -> None:
        self._kv = kv
        self._hub = hub
        self._by_ttl: dict[int, Session] = {}
        self._users: dict[Session, set[object]] = {}
        self._locks: dict[int, asyncio.Lock] = {}

    def new(self, ttl: int) -> Session:
        """A session of its own (not shared), not yet open."""
        return Session(self._kv, self._hub, ttl)

    async def acquire(self, user: object, ttl: int, *, shared: bool = True) -> Session:
        """An open, live session for ``user``."""
        if not shared:
            session = await self.new(ttl).open()
        else:
            async with self._locks.setdefault(ttl, asyncio.Lock()):
                session = self._by_ttl.get(ttl) or self.new(ttl)
                if session.state in (SessionState.LOST, SessionState.CLOSED):
                    session = self.new(ttl)
                self._by_ttl[ttl] = session
                await session.open()
        self._users.setdefault(session, set()).add(user)
        return session

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
        sessions = list(self._users)
        self._users.clear()
        self._by_ttl.clear()
        await asyncio.gather(*(s.close() for s in sessions))
