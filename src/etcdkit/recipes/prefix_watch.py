"""PrefixWatch: exact, resumable snapshots of every key under a prefix.

Written on the public client only. Lifecycle: list the prefix page by page at one revision
(``etcd.get_prefix_pages``), then watch from that revision + 1 (``etcd.watch``, on the client's
shared Watch stream). A disconnect or server restart resumes from the last seen
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
from typing import TYPE_CHECKING, Generic, TypeVar

from etcdkit._errors import ClosedError, CompactedError, EtcdkitError, EtcdTimeoutError
from etcdkit._logs import RateLimitedLog
from etcdkit._metrics import WatchMeter
from etcdkit._snapshot import Snapshot, SnapshotEngine, Transform, Tree
from etcdkit._surface import Etcd
from etcdkit._types import EventType, WatchBatch, to_bytes
from etcdkit.recipes._hold import check_timeout

if TYPE_CHECKING:
    from etcdkit._pmap import PMap
    from etcdkit._watch import Watch

__all__ = ["PrefixWatch", "WatchState", "WatchStats"]

log = logging.getLogger("etcdkit.watch")
UNPAGED_AFTER = 2  # listings compacted while paging, in a row, before one unpaged read
limited = RateLimitedLog(log)  # restarts of a watch that etcd keeps ending

K = TypeVar("K")
V = TypeVar("V")

# Seconds without a confirmation from etcd after which the data is STALE: the client confirms
# a healthy watch about every second (Watch.confirmed_at), so three missed ones.
STALE_AFTER = 3.0


class WatchState(enum.Enum):
    """What a :class:`PrefixWatch` knows about the freshness of its data.

    - ``SYNCING``: the first complete listing is not loaded yet (there is no snapshot), or it is
      and etcd has not yet confirmed the watch that follows it.
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
    relists: int = 0  # full listings after the first (compacted history, or the watch ended)
    disconnects: int = 0  # stream losses survived (resumed, or relisted when compacted meanwhile)


class PrefixWatch(Generic[K, V]):
    """A stream of :class:`Snapshot` of every key under a prefix, until closed.

    Create with :meth:`AsyncClient.watch_prefix`; use as an async context manager.

    Guarantees: every delivered ``snap.tree`` equals the transformed prefix as etcd had it at
    ``snap.revision`` (records the transform rejects left out); revisions never go back; all
    events of one etcd revision (a transaction, a lease revoke) appear together; a slow
    consumer gets the newest snapshot next, with ``snap.changes`` merged since the one it got
    before, and memory stays bounded by the tree's size.
    """

    def __init__(self, etcd: Etcd, prefix: str | bytes, transform: Transform[K, V]) -> None:
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
        self._etcd = etcd
        self._prefix = raw
        self._engine: SnapshotEngine[K, V] = SnapshotEngine(
            transform, logger=log, name=raw.decode(errors="replace")
        )
        self._stats = WatchStats()
        self._meter = WatchMeter(raw)  # the same figures for OpenTelemetry, when installed
        self._task: asyncio.Task[None] | None = None
        self._w: Watch | None = None
        # The consumers waiting for news (usually one), each on a future of its own: woken
        # straight by _wake, without an asyncio.Event's clear/set bookkeeping per event.
        self._waiters: list[asyncio.Future[None]] = []
        self._synced = False
        self._listing = False
        self._error: BaseException | None = None
        self._closed = False
        self._last: Snapshot[K, V] | None = None  # the newest delivered snapshot
        # The newest state, (tree, revision) published in one assignment after every change
        # (other threads read it: a tree is never paired with another revision), made a
        # Snapshot only when .snapshot is read (most states never are), and kept in _now.
        self._view: tuple[PMap[K, V], int] | None = None
        self._now: tuple[tuple[PMap[K, V], int], Snapshot[K, V]] | None = None
        self._watching = False  # etcd confirmed the watch after the newest listing
        self._disconnects = 0  # of the watches before the current one
        # etcd confirmed a watch after a listing once: a relist is STALE from then on (a
        # snapshot exists), not SYNCING
        self._been_live = False
        self._started_at = 0.0  # when start() ran (monotonic)
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
            self._etcd.adopt(self, self._close_by_client)
            self._started_at = time.monotonic()
            self._meter.track(self)
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"etcdkit-watch-prefix {self.prefix!r}"
            )

    async def aclose(self) -> None:
        """Stop watching and wake the consumer (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._etcd.disown(self)
        self._meter.untrack(self)
        if self._w is not None:
            self._w.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._wake()

    close = aclose

    async def _close_by_client(self) -> None:
        if self._error is None:
            self._error = ClosedError(f"the watch on {self.prefix!r} ended: its client closed")
        await self.aclose()

    # -- consumer side ----------------------------------------------------------------------------

    async def synced(self, timeout: float | None = None) -> Snapshot[K, V]:
        """Wait for the first complete snapshot and for etcd to confirm the watch that follows
        it (the state is then LIVE); return the newest snapshot (delivering it)."""
        check_timeout(timeout)
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
                f"(endpoints {', '.join(self._etcd.endpoints)}; is etcd reachable?)"
            ) from None
        snap = self._take()
        return snap if snap is not None else self._current()

    def __aiter__(self) -> AsyncIterator[Snapshot[K, V]]:
        return self

    async def __anext__(self) -> Snapshot[K, V]:
        """The next snapshot. Closing the watch ends the iteration; closing its client raises
        :class:`ClosedError`; a fatal error (e.g. permission denied) is raised."""
        if self._task is None and not self._closed:
            self.start()
        while True:
            if self._error is not None:
                raise self._error
            if self._closed:  # closing ends the iteration, also for a later loop
                raise StopAsyncIteration
            # the first snapshot comes once synced() would return (_engine_ready, inline)
            if self._synced and (self._watching or self._been_live):
                snap = self._take()
                if snap is not None:
                    return snap
            await self._wait_update()

    @property
    def snapshot(self) -> Snapshot[K, V] | None:
        """The newest state (tree and revision) without I/O; ``None`` before the first sync.

        When the newest state is the last snapshot delivered, it is that snapshot (with its
        ``changes``); when a newer state has not been delivered yet, its ``changes`` are empty
        (the changes since the last delivered snapshot go to the next one the iterator
        delivers). Reading this property does not consume changes from the iterator.
        """
        last, view = self._last, self._view
        if view is None:
            return None
        if last is not None and last.revision == view[1]:
            return last
        now = self._now
        if now is None or now[0] is not view:
            now = self._now = (view, Snapshot(Tree(view[0]), view[1], {}))
        return now[1]

    @property
    def state(self) -> WatchState:
        """Where the watch stands (a :class:`WatchState`: ``SYNCING``, ``LIVE``, ``STALE``,
        ``CLOSED``: what each means)."""
        if self._closed or self._error is not None:  # (the error is the consumer's to see)
            return WatchState.CLOSED
        if not self._synced or not (self._watching or self._been_live):
            return WatchState.SYNCING
        w = self._w
        if self._listing or w is None or not w.connected:
            return WatchState.STALE
        if time.monotonic() - w.confirmed_at > STALE_AFTER:
            return WatchState.STALE
        return WatchState.LIVE

    @property
    def age(self) -> float:
        """Seconds since etcd last confirmed this watch's data was current (0.0 when LIVE);
        before the first snapshot, seconds since the watch started (it has no data etcd
        confirmed: an alert on age fires for a watch that cannot sync, too)."""
        if not self._synced:
            started = self._started_at
            return 0.0 if not started or self._closed else time.monotonic() - started
        w = self._w
        confirmed = max(self._confirmed_at, w.confirmed_at if w is not None else 0.0)
        return 0.0 if self.state is WatchState.LIVE else max(0.0, time.monotonic() - confirmed)

    @property
    def stats(self) -> WatchStats:
        """This watch's counters (see :class:`WatchStats`)."""
        self._stats.invalid_records = self._engine.invalid_records
        w = self._w
        self._stats.disconnects = self._disconnects + (0 if w is None else w.disconnects)
        return self._stats

    @property
    def prefix(self) -> bytes:
        """The watched byte prefix."""
        return self._prefix

    @property
    def revision(self) -> int:
        """The revision of the newest state (0 before the first listing)."""
        view = self._view
        return 0 if view is None else view[1]

    # -- internals --------------------------------------------------------------------------------

    def _engine_ready(self) -> bool:
        if self._error is not None:
            raise self._error
        if self._closed:
            raise ClosedError(f"the watch on {self.prefix!r} was closed")
        return self._synced and (self._watching or self._been_live)

    async def _wait_update(self) -> None:
        """Wait for the next change of state (news published after this call)."""
        waiter = asyncio.get_running_loop().create_future()
        waiters = self._waiters
        waiters.append(waiter)
        try:
            await waiter
        finally:
            waiters.remove(waiter)

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _take(self) -> Snapshot[K, V] | None:
        snap = self._engine.take()
        if snap is not None:
            self._last = snap
            self._stats.snapshots += 1
            self._meter.snapshot()
        return snap

    def _current(self) -> Snapshot[K, V]:
        snap = self.snapshot
        assert snap is not None
        return snap

    def _publish(self) -> None:
        self._view = self._engine.view
        self._meter.invalid_total(self._engine.invalid_records)
        self._wake()

    async def _run(self) -> None:
        retry = self._etcd.retry
        backoff = retry.backoff()
        first = True
        reason = ""  # why the next listing is a relist
        compacted = 0  # listings in a row whose revision was compacted while paging
        try:
            while True:
                try:
                    await self._list(unpaged=compacted >= UNPAGED_AFTER)
                except CompactedError as exc:  # the revision went while paging: list again
                    compacted += 1
                    log.info("watch %r: %s; listing again", self.prefix, exc)
                    continue
                except EtcdkitError as exc:
                    if not retry.is_retryable(exc):
                        raise
                    log.info("watch %r: listing failed, retrying: %s", self.prefix, exc)
                    await backoff.wait()
                    continue
                if not first:
                    self._stats.relists += 1
                    self._meter.relist(reason)
                first = False
                compacted = 0
                backoff.reset()
                err = await self._watch()
                if isinstance(err, CompactedError):
                    log.info("watch %r: %s; relisting", self.prefix, err)
                    reason = "compacted"
                    continue
                if not retry.is_retryable(err):
                    raise err
                limited.warning(
                    ("restart", self.prefix),
                    "watch %r ended (%s); restarting after backoff",
                    self.prefix,
                    err,
                )
                reason = "ended"
                await backoff.wait()
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if self._closed or task is None or task.cancelling():
                raise
            self._fail(exc)  # (raised by the transform, say: nobody cancelled the watch)
        except BaseException as exc:
            self._fail(exc)
        self._wake()
        if not isinstance(self._error, ClosedError):
            log.error("watch %r failed: %s", self.prefix, self._error)

    def _fail(self, exc: BaseException) -> None:
        """End with ``exc`` (the first error wins; re-raised to the consumer). A CancelledError
        nobody asked for (the transform raised it) becomes a RuntimeError: the consumer was
        not cancelled."""
        if isinstance(exc, asyncio.CancelledError):
            err = RuntimeError(
                f"watch {self.prefix!r} failed: CancelledError raised inside it"
                f" while nobody cancelled it (by the transform?): {exc}"
            )
            err.__cause__ = exc
            exc = err
        if self._error is None:
            self._error = exc

    async def _list(self, *, unpaged: bool = False) -> None:
        """List the prefix into a new tree, in pages at one revision; ``unpaged``: in one read
        (when compactions keep overtaking the pages: one read cannot be compacted half-way)."""
        self._listing = True
        self._watching = False
        # Each page goes into the new tree as it arrives (while etcd reads the next one):
        # a million keys never sit in memory twice, once as a listing and once as a tree.
        listing = self._engine.begin_reset()
        revision = 0
        if unpaged:
            log.info("watch %r: compacted while paging again: listing in one read", self.prefix)
            whole = await self._etcd.range(self.prefix, prefix=True)
            listing.add(whole.kvs)
            revision = whole.revision
        else:
            async with contextlib.aclosing(self._etcd.get_prefix_pages(self.prefix)) as pages:
                async for page, rev in pages:
                    listing.add(page)
                    revision = rev
        self._engine.finish_reset(listing, revision)
        self._confirmed_at = time.monotonic()
        self._listing = False
        self._synced = True
        self._publish()

    async def _watch(self) -> EtcdkitError:
        """Apply every change from the listing's revision + 1 on, until the watch ends; the
        error it ended with.

        Batches are applied in the turn they arrive (a listener takes them, as many as came
        together, and publishes once): the consumer is woken straight from the stream, with no
        turn of this task in between. The iteration below gets what the listener left (none)
        and how the watch ends."""
        w = self._etcd.watch(
            self.prefix, prefix=True, start_revision=self._engine.revision + 1, progress_notify=True
        )
        self._w = w

        def take() -> None:
            try:
                batches = w.take()
            except EtcdkitError:
                return  # the watch ended: the iteration below says how
            if batches:
                self._apply(batches)

        try:
            async with w:
                unlisten = w.add_listener(take)
                try:
                    async for batch in w:
                        self._apply([batch])
                finally:
                    unlisten()
        except EtcdkitError as exc:
            return exc
        finally:
            self._disconnects += w.disconnects
            # (what it confirmed stays the data's last confirmation while a relist runs)
            self._confirmed_at = max(self._confirmed_at, w.confirmed_at)
            self._w = None
        if self._error is not None:
            raise self._error
        raise ClosedError(f"the watch on {self.prefix!r} was cancelled")

    def _apply(self, batches: list[WatchBatch]) -> None:
        engine = self._engine
        before = engine.revision
        changed = False  # events applied (or an error): publish
        try:
            for batch in batches:
                events = batch.events
                if not events:  # progress, or etcd confirmed the watch
                    engine.advance(batch.revision)
                    if not self._watching:
                        self._watching = self._been_live = True
                        self._wake()
                    continue
                changed = True
                engine.apply(
                    events[-1].kv.mod_revision,
                    [
                        (ev.kv.key, None if ev.type is EventType.DELETE else ev.kv.value)
                        for ev in events
                    ],
                )
                self._stats.events += len(events)
                self._meter.events(len(events))
        except BaseException as exc:  # (a bug, not a record the transform rejected): end here
            self._fail(exc)
            w = self._w
            if w is not None:
                w.cancel()
            changed = True
        if changed or engine.revision != before:  # (a confirmation alone changes nothing)
            self._publish()
