"""Leases kept alive: :class:`KeepAlive`, the public iterator (``etcd.keep_alive(lease_id)``,
Go's ``Lease.KeepAlive``), on :class:`KeepAliveHub`, which keeps every lease of a client alive
over one shared LeaseKeepAlive stream. Sessions (``etcdkit.recipes.session``) are built on
:class:`KeepAlive`, as Go's ``concurrency.Session`` is on ``Lease.KeepAlive``.

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
  survived is known from the first answer after that;
- ``on_closed()``: the client closed (the lease is no longer kept alive; it is not revoked).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import grpc.aio
from aetcd import rpc

from etcdkit import _metrics
from etcdkit._errors import (
    ClosedError,
    ConnectionUnavailableError,
    EtcdkitError,
    EtcdTimeoutError,
    LeaseNotFoundError,
)
from etcdkit._logs import Listeners
from etcdkit._retry import Backoff
from etcdkit._types import KeepAliveStatus, check_int64, second_reader
from etcdkit._wire.conn import Channel, Connection, map_rpc_error

__all__ = ["KeepAlive", "KeepAliveHub"]

log = logging.getLogger("etcdkit.lease")
PASS_GAP = 0.05  # a refreshed lease is due again this long after the window it was sent in


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
    on_closed: Callable[[], None]
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
        self._failing = False  # a stream ended since the last one answered

    def add(
        self,
        lease_id: int,
        ttl: int,
        *,
        on_alive: Callable[[int], None] = _noop,
        on_lost: Callable[[], None] = _noop,
        on_suspended: Callable[[], None] = _noop,
        on_closed: Callable[[], None] = _noop,
        refresh_now: bool = False,
    ) -> None:
        """Keep ``lease_id`` (granted with ``ttl``) alive until :meth:`remove`; with
        ``refresh_now`` its first refresh goes out at once (its TTL is then learned from the
        answer)."""
        if self._closed:
            raise ClosedError("the etcdkit client was closed; its leases are no longer kept")
        if lease_id in self._entries:
            raise ValueError(f"lease {lease_id:#x} is already kept alive by this client")
        now = time.monotonic()
        entry = _Entry(lease_id, ttl, on_alive, on_lost, on_suspended, on_closed)
        entry.expires = now + ttl
        entry.due = now if refresh_now else now + max(ttl / 3.0, 0.2)
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
        entries = list(self._entries.values())
        self._entries.clear()
        for entry in entries:
            entry.on_closed()
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
                if isinstance(err, ConnectionUnavailableError | EtcdTimeoutError):
                    self._conn.failover(ch, str(err))
            # Once per outage: the first stream to end after one had answered (a stream may
            # end before its first answer: refreshes go out every TTL/3); the retries that fail
            # while the outage lasts are not news.
            if not self._failing:
                self._failing = True
                self.reconnects += 1
                _metrics.stream_reconnected("keepalive")
            self.connected = False
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
                    # next at a third of the TTL, and never inside this pass's window (a TTL
                    # of 1 s, or the 1 s placed before the first answer, fell back inside it:
                    # thousands of requests a second): at most one refresh per lease per pass
                    entry.due = max(time.monotonic() + entry.ttl / 3.0, horizon + PASS_GAP)
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
                self._failing = False
                backoff.reset()
            conn = self._conn
            conn.answered = True
            rev = resp.header.revision
            if rev > conn.revision:
                conn.revision = rev
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
                entry.ttl = int(resp.TTL)  # (a renewal is to the whole granted TTL)
                entry.expires = time.monotonic() + resp.TTL
                entry.on_alive(resp.TTL)


class KeepAlive:
    """etcd renewing one lease on the client's shared LeaseKeepAlive stream, until cancelled
    (Go's ``Lease.KeepAlive``). Create with :meth:`AsyncClient.keep_alive`; use as
    ``async with etcd.keep_alive(lease_id) as ka: async for status in ka:``.

    - The lease is renewed about every third of its TTL, with every other lease of the client
      on one stream; after a disconnect, at once.
    - Each :class:`KeepAliveStatus` says how it stands: ``suspended=False`` with the ``ttl``
      etcd renewed it to, or ``suspended=True`` when the stream broke or an answer is late
      (the lease then runs out at :attr:`expires` unless etcd answers again). A reader that
      falls behind gets the newest status only (the older ones are replaced: bounded).
    - The iteration raises :class:`LeaseNotFoundError` once etcd says the lease is gone
      (expired or revoked), and :class:`ClosedError` when the client closes. ``cancel()`` or
      leaving the block stops renewing (without revoking) and ends the iteration.
    """

    __slots__ = (
        "_cancelled",
        "_error",
        "_hub",
        "_id",
        "_kept",
        "_listeners",
        "_status",
        "_ttl",
        "_waiter",
    )

    def __init__(self, hub: KeepAliveHub, lease_id: int, ttl: int | None = None) -> None:
        self._hub = hub
        self._id = check_int64(lease_id, "lease_id", low=1)
        if ttl is not None:
            check_int64(ttl, "ttl", low=1, hint=" (seconds; None: ask etcd)")
        self._ttl = ttl or 0
        self._status: KeepAliveStatus | None = None  # the newest one not yet read
        self._error: EtcdkitError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._kept = False
        self._cancelled = False
        self._listeners = Listeners(self, log)

    def __repr__(self) -> str:
        state = "cancelled" if self._cancelled else "ended" if self._error else "kept"
        return f"<KeepAlive lease={self._id:#x} ttl={self._ttl} {state}>"

    @property
    def lease_id(self) -> int:
        """The lease kept alive."""
        return self._id

    @property
    def ttl(self) -> int:
        """The lease's TTL as etcd last renewed it (the one given before the first answer; 0
        when neither is known yet)."""
        return self._ttl

    @property
    def expires(self) -> float | None:
        """When the lease runs out if etcd renews it no more, on ``time.monotonic()``: its last
        renewed TTL counted from that answer. ``None`` while not kept (not started, ended)."""
        return self._hub.expires(self._id) if self._kept else None

    def start(self) -> None:
        """Start renewing (idempotent; ``__aenter__`` and the first ``__anext__`` do it)."""
        if self._kept or self._cancelled or self._error is not None:
            return
        self._hub.add(
            self._id,
            self._ttl or 1,
            on_alive=self._on_alive,
            on_lost=self._on_lost,
            on_suspended=self._on_suspended,
            on_closed=self._on_closed,
            refresh_now=not self._ttl,
        )
        self._kept = True

    def cancel(self) -> None:
        """Stop renewing (idempotent; the lease is not revoked): the iteration ends."""
        self._cancelled = True
        self._stop()
        waiter = self._waiter  # (a listener is not told: whoever cancels knows)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def __aenter__(self) -> KeepAlive:
        self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cancel()

    def take(self) -> KeepAliveStatus | None:
        """The newest status not yet read, without waiting (``None`` when there is none). Once
        the keepalive ended and its last status was taken, raises how it ended
        (:class:`LeaseNotFoundError`, :class:`ClosedError`), as the iteration does; after
        ``cancel()``, ``None``."""
        if self._cancelled:
            return None
        status = self._status
        if status is not None:
            self._status = None
            return status
        if self._error is not None:
            raise self._error
        return None

    def add_listener(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback()`` on the event loop whenever a status arrives or the keepalive
        ends, in that turn: a reader that needs no task of its own (as a session) reads it
        there with :meth:`take`. Returns a function that removes it. Callback errors are
        logged, not raised."""
        return self._listeners.add(callback)

    def __aiter__(self) -> KeepAlive:
        return self

    async def __anext__(self) -> KeepAliveStatus:
        self.start()
        while True:
            if self._cancelled:
                raise StopAsyncIteration
            status = self._status
            if status is not None:
                self._status = None
                return status
            if self._error is not None:
                raise self._error
            if self._waiter is not None:
                raise second_reader("keep-alive stream")
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    # -- on the hub's task ------------------------------------------------------------------------

    def _stop(self) -> None:
        if self._kept:
            self._kept = False
            self._hub.remove(self._id)

    def _wake(self) -> None:
        self._listeners.call()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _push(self, status: KeepAliveStatus) -> None:
        if not self._cancelled:
            self._status = status
            self._wake()

    def _on_alive(self, ttl: int) -> None:
        self._ttl = ttl
        self._push(KeepAliveStatus(ttl, False))

    def _on_suspended(self) -> None:
        self._push(KeepAliveStatus(self._ttl, True))

    def _on_lost(self) -> None:
        self._kept = False  # (the hub dropped it)
        self._error = LeaseNotFoundError(
            f"lease {self._id:#x} is gone: etcd says it expired or was revoked"
        )
        self._wake()

    def _on_closed(self) -> None:
        self._kept = False
        self._error = ClosedError("the etcdkit client was closed; this lease is no longer kept")
        self._wake()
