"""PrefixWatch: exact, resumable snapshots of every key under a prefix.

Lifecycle: list the prefix page by page at one revision, then watch from that revision + 1 on
the client's shared Watch stream. A disconnect or server restart resumes from the last seen
revision + 1 (the stream hub does it; no relist while the history exists). If that revision
was compacted meanwhile, the prefix is listed again and the difference to the old tree is
delivered as ordinary changes (synthesized deletes included). Listing retries with backoff
while etcd is unreachable; the watch ends only when closed, or on an error retrying cannot
fix (permission denied), which the consumer then receives.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from etcdkit._conn import prefix_range_end, to_bytes
from etcdkit._errors import (
    AuthError,
    ClosedError,
    CompactedError,
    EtcdkitError,
    EtcdTimeoutError,
)
from etcdkit._retry import Backoff
from etcdkit._snapshot import Snapshot, SnapshotEngine, Transform, Tree
from etcdkit._watchstream import PROGRESS_INTERVAL, WatchSub

if TYPE_CHECKING:
    from etcdkit._client import AsyncClient

__all__ = ["PrefixWatch", "WatchState", "WatchStats"]

log = logging.getLogger("etcdkit.watch")

K = TypeVar("K")
V = TypeVar("V")

_DELETE = 1  # mvccpb.Event.EventType.DELETE
STALE_AFTER = 2 * PROGRESS_INTERVAL + 1.0
# Keys per listing page. etcd 3.5 counts every key of the range for each page, so a page costs
# O(prefix size): few large pages beat many small ones (1M keys: 52.9 s at 2,000 per page).
# Pages of big values shrink by themselves (see AsyncClient._pages).
LIST_PAGE_SIZE = 10_000


class WatchState(enum.Enum):
    """What a :class:`PrefixWatch` knows about the freshness of its data.

    - ``SYNCING``: the first complete listing is not loaded yet; there is no snapshot.
    - ``LIVE``: the stream is up and etcd confirmed within the last few seconds that every
      change was delivered. The snapshot is current (up to network latency).
    - ``STALE``: the stream is down, the member lost its leader, or a relist is in progress.
      The snapshot is exact for its revision but newer changes may exist. It becomes LIVE by
      itself once etcd answers again; ``watch.age`` tells since when the data is unconfirmed.
    - ``CLOSED``: closed by the user (or by a fatal error, re-raised to the consumer).
    """

    SYNCING = "syncing"
    LIVE = "live"
    STALE = "stale"
    CLOSED = "closed"


@dataclass
class WatchStats:
    """Counters of one PrefixWatch (read-only for users)."""

    events: int = 0  # watch events applied
    snapshots: int = 0  # snapshots delivered to the consumer
    invalid_records: int = 0  # records the transform rejected (each logged once)
    relists: int = 0  # full listings after compaction (the first listing not counted)
    disconnects: int = 0  # stream losses survived (resumed without relisting)


class PrefixWatch(Generic[K, V]):
    """A stream of :class:`Snapshot` of every key under a prefix, until closed.

    Create with :meth:`AsyncClient.watch_prefix`; use as an async context manager.

    Guarantees: every delivered ``snap.tree`` equals the transformed prefix as etcd had it at
    ``snap.revision`` (records the transform rejects left out); revisions never go back; all
    events of one etcd revision (a transaction, a lease revoke) appear together; a slow
    consumer gets the newest snapshot next, with ``snap.changes`` merged since the one it got
    before, and memory stays bounded by the tree's size.
    """

    def __init__(
        self, client: AsyncClient, prefix: str | bytes, transform: Transform[K, V]
    ) -> None:
        raw = to_bytes(prefix, "prefix")
        if not callable(transform):
            raise TypeError(
                f"transform must be a callable (key: bytes, value: bytes) -> (K, V), "
                f"got {transform!r:.80}"
            )
        if inspect.iscoroutinefunction(transform) or inspect.iscoroutinefunction(
            getattr(transform, "__call__", None)  # noqa: B004
        ):
            raise TypeError(
                "transform must be a plain (synchronous) function returning (K, V); "
                f"{transform!r:.80} is async. Do I/O outside the transform."
            )
        self._client = client
        self.prefix = raw
        self._engine: SnapshotEngine[K, V] = SnapshotEngine(
            transform, logger=log, name=raw.decode(errors="replace")
        )
        self._stats = WatchStats()
        self._task: asyncio.Task[None] | None = None
        self._sub: WatchSub | None = None
        self._updated = asyncio.Event()
        self._synced = False
        self._listing = False
        self._error: BaseException | None = None
        self._closed = False
        self._last: Snapshot[K, V] | None = None
        self._confirmed_at = 0.0

    def __repr__(self) -> str:
        return (
            f"<PrefixWatch prefix={self.prefix!r} state={self.state.name} "
            f"revision={self._engine.revision}>"
        )

    # -- lifecycle --------------------------------------------------------------------------------

    async def __aenter__(self) -> PrefixWatch[K, V]:
        self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def start(self) -> None:
        """Start listing and watching in the background (idempotent)."""
        if self._closed:
            raise ClosedError("this PrefixWatch is closed; open a new one")
        if self._task is None:
            self._client._check_open()
            self._client._children.add(self)
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"etcdkit-watch-prefix {self.prefix!r}"
            )

    async def aclose(self) -> None:
        """Stop watching and wake the consumer (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._client._children.discard(self)
        if self._sub is not None:
            self._sub.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._updated.set()

    close = aclose

    # -- consumer side ----------------------------------------------------------------------------

    async def synced(self, timeout: float | None = None) -> Snapshot[K, V]:
        """Wait for the first complete snapshot and return the newest one (delivering it)."""
        self.start()
        try:
            async with asyncio.timeout(timeout):
                while not self._engine_ready():
                    await self._wait_update()
        except TimeoutError as exc:
            if isinstance(exc, EtcdkitError):
                raise
            raise EtcdTimeoutError(
                f"watch on {self.prefix!r} did not sync within {timeout} s "
                f"(endpoints {self._client._conn.where}; is etcd reachable?)"
            ) from None
        snap = self._take()
        return snap if snap is not None else self._current()

    def __aiter__(self) -> AsyncIterator[Snapshot[K, V]]:
        return self

    async def __anext__(self) -> Snapshot[K, V]:
        if self._closed:  # closing ends the iteration, also for a later loop
            raise StopAsyncIteration
        self.start()
        while True:
            if self._error is not None:
                raise self._error
            if self._closed:
                raise StopAsyncIteration
            snap = self._take()
            if snap is not None:
                return snap
            await self._wait_update()

    @property
    def snapshot(self) -> Snapshot[K, V] | None:
        """The newest state (tree and revision) without I/O; ``None`` before the first sync.

        Its ``changes`` are those of the last delivered snapshot; reading this property does
        not consume changes from the iterator.
        """
        return self._current() if self._synced else None

    @property
    def state(self) -> WatchState:
        if self._closed:
            return WatchState.CLOSED
        if not self._synced:
            return WatchState.SYNCING
        sub = self._sub
        if self._listing or sub is None or not sub.connected:
            return WatchState.STALE
        if time.monotonic() - sub.confirmed_at > STALE_AFTER:
            return WatchState.STALE
        return WatchState.LIVE

    @property
    def age(self) -> float:
        """Seconds since etcd last confirmed this watch's data was current (0.0 when LIVE)."""
        if not self._synced:
            return 0.0
        sub = self._sub
        confirmed = max(self._confirmed_at, sub.confirmed_at if sub is not None else 0.0)
        return 0.0 if self.state is WatchState.LIVE else max(0.0, time.monotonic() - confirmed)

    @property
    def stats(self) -> WatchStats:
        self._stats.invalid_records = self._engine.invalid_records
        return self._stats

    @property
    def revision(self) -> int:
        return int(self._engine.revision)

    # -- internals --------------------------------------------------------------------------------

    def _engine_ready(self) -> bool:
        if self._error is not None:
            raise self._error
        if self._closed:
            raise ClosedError(f"the watch on {self.prefix!r} was closed")
        return self._synced

    async def _wait_update(self) -> None:
        self._updated.clear()
        await self._updated.wait()

    def _take(self) -> Snapshot[K, V] | None:
        snap = self._engine.take()
        if snap is not None:
            self._last = snap
            self._stats.snapshots += 1
        return snap

    def _current(self) -> Snapshot[K, V]:
        last = self._last
        changes = (
            last.changes if last is not None and last.revision == self._engine.revision else {}
        )
        return Snapshot(Tree(self._engine.tree), self._engine.revision, changes)

    async def _run(self) -> None:
        backoff = Backoff(initial=0.05, cap=2.0)
        first = True
        try:
            while True:
                try:
                    await self._list()
                except (AuthError, ClosedError):
                    raise
                except EtcdkitError as exc:
                    log.info("watch %r: listing failed, retrying: %s", self.prefix, exc)
                    await backoff.wait()
                    continue
                if not first:
                    self._stats.relists += 1
                first = False
                backoff.reset()
                err = await self._watch()
                if isinstance(err, CompactedError):
                    log.info("watch %r: %s; relisting", self.prefix, err)
                    continue
                if isinstance(err, AuthError):
                    raise err
                log.warning("watch %r ended (%s); restarting after backoff", self.prefix, err)
                await backoff.wait()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._error = exc
            self._updated.set()
            log.error("watch %r failed: %s", self.prefix, exc)

    async def _list(self) -> None:
        self._listing = True
        kvs: list[tuple[bytes, bytes]] = []
        revision = 0
        async for page, rev in self._client._pages(self.prefix, 0, LIST_PAGE_SIZE):
            kvs.extend((kv.key, kv.value) for kv in page)
            revision = rev
        self._engine.reset(kvs, revision)
        self._confirmed_at = time.monotonic()
        self._listing = False
        self._synced = True
        self._updated.set()

    async def _watch(self) -> EtcdkitError:
        ended: asyncio.Future[EtcdkitError] = asyncio.get_running_loop().create_future()
        engine = self._engine
        stats = self._stats
        updated = self._updated

        def on_events(resp: Any) -> None:
            events = resp.events
            engine.apply(
                events[-1].kv.mod_revision,
                [(ev.kv.key, None if ev.type == _DELETE else ev.kv.value) for ev in events],
            )
            stats.events += len(events)
            updated.set()

        def on_status(connected: bool, err: EtcdkitError | None) -> None:
            if not connected:
                stats.disconnects += 1
                log.info("watch %r: stream lost (%s); resuming", self.prefix, err)

        def on_end(err: EtcdkitError) -> None:
            if not ended.done():
                ended.set_result(err)

        self._sub = self._client._watches.watch(
            self.prefix or b"\0",
            prefix_range_end(self.prefix),
            engine.revision + 1,
            on_events=on_events,
            on_progress=engine.advance,
            on_status=on_status,
            on_end=on_end,
        )
        try:
            return await ended
        finally:
            self._sub.cancel()
