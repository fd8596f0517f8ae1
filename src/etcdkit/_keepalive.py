"""One shared LeaseKeepAlive stream per client, for every lease the client keeps alive.

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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc.aio
from aetcd import rpc

from etcdkit._conn import Connection, map_rpc_error
from etcdkit._errors import ConnectionUnavailableError
from etcdkit._retry import Backoff

__all__ = ["KeepAliveHub"]

log = logging.getLogger("etcdkit.lease")


def _noop(*_args: object) -> None:
    return None


def stall_after(ttl: int) -> float:
    """Seconds without an answer to a refresh after which the stream counts as broken."""
    return min(max(ttl / 3.0, 1.0), 3.0)


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
        self.connected = False

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

    def expires(self, lease_id: int) -> float | None:
        entry = self._entries.get(lease_id)
        return None if entry is None else entry.expires

    def __len__(self) -> int:
        return len(self._entries)

    async def close(self) -> None:
        self._closed = True
        self._entries.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        backoff = Backoff(initial=0.05, cap=2.0)
        while not self._closed:
            if not self._entries:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                await self._stream_once(backoff)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                err = map_rpc_error(exc, self._conn.where, "lease keepalive stream")
                log.info("keepalive stream down: %s", err)
            self.connected = False
            for entry in list(self._entries.values()):
                entry.on_suspended()
            await backoff.wait()

    async def _stream_once(self, backoff: Backoff) -> None:
        md = await self._conn.metadata()
        call = self._conn.stubs.lease.LeaseKeepAlive(metadata=md)
        reader = asyncio.get_running_loop().create_task(self._reader(call, backoff))
        try:
            # After a reconnect every lease is refreshed at once: that answers whether it
            # survived the outage as early as possible.
            for entry in self._entries.values():
                entry.due = 0.0
            self._heap = [(0.0, lid) for lid in self._entries]
            self._unanswered = {}
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
                stalled = min(self._unanswered.values(), default=now + 3600.0)
                if stalled <= now:
                    raise ConnectionUnavailableError(
                        f"lease keepalive stream at {self._conn.where}: no answer to a refresh "
                        "in time (connection black-holed or etcd stuck)"
                    )
                next_due = self._heap[0][0] if self._heap else now + 3600.0
                delay = min(next_due, stalled) - now
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

    async def _reader(self, call: Any, backoff: Backoff) -> None:
        while True:
            resp = await call.read()
            if resp is grpc.aio.EOF:
                return
            if not self.connected:
                self.connected = True
                backoff.reset()
            self._unanswered.pop(resp.ID, None)
            entry = self._entries.get(resp.ID)
            if entry is None:
                continue
            if resp.TTL <= 0:
                del self._entries[resp.ID]
                entry.on_lost()
            else:
                entry.expires = time.monotonic() + resp.TTL
                entry.on_alive(resp.TTL)
