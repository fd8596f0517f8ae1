"""The raw watch: etcd's event stream as an async iterator of :class:`WatchBatch`, resumed
after every fault without losing or repeating an event.

A :class:`Watch` is one watcher on the client's shared Watch stream (``_watch_hub``), which
re-creates it from the revision after the last event handed over whenever the stream breaks
(a disconnect, a restart, a hung member). What the iterator has not yet yielded waits in a
buffer of at most :data:`MAX_BUFFERED` batches; a reader that falls that far behind makes the
watch step off the stream (its etcd watch is cancelled) and step back on from the next revision
once the reader has caught up (:data:`RESUME_BELOW`), so a slow reader costs no memory beyond
the bound and loses nothing (unless etcd compacts that history meanwhile:
:class:`CompactedError`, as for any start revision).

A watch of one key with no options goes through the client's key watches (``_key_watches``):
many of them started together under one parent share etcd watches (``wait_for`` in bulk),
each still handed exactly its own key's events from its own start revision.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Sequence
from types import TracebackType

from etcdkit._core import Core
from etcdkit._errors import ClosedError, EtcdkitError
from etcdkit._key_watches import KeyWatch
from etcdkit._logs import Listeners
from etcdkit._types import (
    WATCH_FILTERS,
    WatchBatch,
    WatchEvent,
    WatchFilter,
    check_int64,
    second_reader,
)
from etcdkit._wire.watch_hub import WatchSub

__all__ = ["MAX_BUFFERED", "RESUME_BELOW", "Watch", "check_filters"]

log = logging.getLogger("etcdkit.watch")

MAX_BUFFERED = 1024  # batches waiting for the reader before the watch steps off the stream
RESUME_BELOW = MAX_BUFFERED // 4  # ... and back on once the reader is down to this many


def check_filters(filters: Sequence[WatchFilter]) -> tuple[WatchFilter, ...]:
    if isinstance(filters, str | bytes) or not isinstance(filters, Sequence):
        raise TypeError(f"filters must be a sequence such as ('noput',), got {filters!r:.80}")
    for f in filters:
        if f not in WATCH_FILTERS:
            raise ValueError(f"watch filters are 'noput' and 'nodelete'; got {f!r:.40}")
    return tuple(filters)


class Watch:
    """Every change to ``[key, range_end)`` from ``start_revision`` on, one etcd answer per
    :class:`WatchBatch`. Use as ``async with etcd.watch(...) as w: async for batch in w:``.

    - Entering the block fixes the start: with ``start_revision=0`` it reads the current
      revision, and every change after it is delivered (none made after ``__aenter__``
      returned is missed).
    - Batches hold one etcd response each, so a transaction's events arrive together, in
      revision order. With ``progress_notify=True``, etcd's progress notifications arrive as
      batches with no events (every change up to ``batch.revision`` was delivered), and so
      does each confirmation of the watch by etcd (on creation, and after every resume,
      unless an earlier batch's revision already says more).
    - Through disconnects, restarts and hung members it resumes from the last delivered
      revision + 1: no event lost, none repeated.
    - A start revision etcd has compacted raises :class:`CompactedError` (with
      ``.compact_revision``) from the iterator; a watch etcd cancels raises
      :class:`WatchEndedError`; closing the client raises :class:`ClosedError`.
    - ``cancel()`` or leaving the block ends it: the iterator stops.
    """

    # One per waiting wait_for in bulk (10,000 at once): slots, and no buffer or waiter made
    # until one is needed.
    __slots__ = (
        "_buffer",
        "_cancelled",
        "_confirmed",
        "_core",
        "_disconnects",
        "_error",
        "_filters",
        "_key",
        "_last",
        "_listeners",
        "_next",
        "_paused",
        "_prev_kv",
        "_progress",
        "_range_end",
        "_single",
        "_start",
        "_started",
        "_sub",
        "_waiter",
    )

    def __init__(
        self,
        core: Core,
        key: bytes,
        range_end: bytes,
        *,
        start_revision: int = 0,
        prev_kv: bool = False,
        filters: Sequence[WatchFilter] = (),
        progress_notify: bool = False,
    ) -> None:
        self._core = core
        self._key = key
        self._range_end = range_end
        if type(start_revision) is int and 0 <= start_revision < 2**63:
            self._start = start_revision
        else:  # (the check says what is wrong)
            self._start = check_int64(start_revision, "start_revision", hint=" (0 = from now)")
        if type(prev_kv) is not bool or type(progress_notify) is not bool:
            raise TypeError("prev_kv and progress_notify must be bools")
        self._prev_kv = prev_kv
        self._filters = () if filters == () else check_filters(filters)
        self._progress = progress_notify
        self._buffer: collections.deque[WatchBatch] | None = None  # made at the first batch
        self._error: EtcdkitError | None = None
        self._waiter: asyncio.Future[None] | None = None  # the reader, waiting for a batch
        self._listeners: Listeners | None = None  # made at the first add_listener()
        self._sub: WatchSub | KeyWatch | None = None
        # one key, no options: the key watches may carry it on a shared etcd watch
        self._single = not range_end and not prev_kv and not self._filters and not progress_notify
        self._next = 0  # the revision the next batch starts at (once started)
        self._started = False
        self._cancelled = False
        self._paused = False
        self._disconnects = 0
        self._confirmed = 0.0  # kept across pauses (a paused watch has no stream sub)
        self._last = 0  # the newest batch revision handed over

    def __repr__(self) -> str:
        where = f"{self.key!r}" + (f"..{self.range_end!r}" if self.range_end else "")
        state = "cancelled" if self._cancelled else "paused" if self._paused else "live"
        return f"<Watch {where} next_revision={self._next} {state}>"

    @property
    def key(self) -> bytes:
        """The watched key (the range's start)."""
        return self._key

    @property
    def range_end(self) -> bytes:
        """The watched range's end (``b""``: the one key)."""
        return self._range_end

    @property
    def connected(self) -> bool:
        """etcd has confirmed this watch on the client's current Watch stream (False while
        the stream is down and the watch waits to be resumed)."""
        sub = self._sub
        if isinstance(sub, WatchSub):
            return sub.connected
        carrier = sub.carrier() if sub is not None and not sub.ended else None
        return carrier is not None and carrier.connected  # (a single key's shared watch)

    @property
    def confirmed_at(self) -> float:
        """When etcd last confirmed that every change up to now was delivered to this watch
        (``time.monotonic()``; refreshed about every second while the stream is healthy, by
        progress requests); 0.0 before the first confirmation."""
        sub = self._sub
        if isinstance(sub, WatchSub):
            return sub.confirmed_at
        carrier = sub.carrier() if sub is not None else None
        return carrier.confirmed_at if carrier is not None else self._confirmed

    @property
    def disconnects(self) -> int:
        """Times the stream under this watch broke and the watch was resumed."""
        sub = self._sub
        keyed = sub.disconnects if isinstance(sub, KeyWatch) else 0
        return self._disconnects + keyed

    @property
    def revision(self) -> int:
        """The revision this watch has reached: every change up to it was received (the
        reader may not have read it all yet); 0 before it started."""
        return max(0, self._next - 1) if self._started else 0

    async def __aenter__(self) -> Watch:
        if self._start and not self._started and not self._cancelled:
            self._begin(self._start)  # a given start: no read, no second coroutine
        else:
            await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cancel()

    async def start(self) -> None:
        """Fix the start revision and join the client's Watch stream (``__aenter__`` does
        this; the first ``__anext__`` too, if nobody did)."""
        if self._started:
            return
        start = self._start
        if start == 0:
            self._core.check_open()
            # (read on the watch's own first key: a user that etcd's auth lets watch this
            # range may read it, where it may read no other key)
            start = await self._core.kv.revision(self._key) + 1
        if self._cancelled:
            return
        self._begin(start)

    def _begin(self, start: int) -> None:
        self._core.check_open()
        self._started = True
        self._next = start
        self._subscribe()

    def cancel(self) -> None:
        """End the watch (idempotent): the iterator stops, etcd's watch is cancelled."""
        self._cancelled = True
        self._unsubscribe()
        self._buffer = None
        self._wake()

    def take(self) -> list[WatchBatch]:
        """Every batch received and not yet read, oldest first, without waiting (``[]`` when
        none). For a reader that applies batches in bulk, typically from a listener (see
        :meth:`add_listener`), with no task of its own. Once the watch ended and every batch
        before its end was taken, raises how it ended (:class:`CompactedError`,
        :class:`WatchEndedError`, :class:`ClosedError`...), as the iteration does (which
        still raises it too); after :meth:`cancel`, ``[]``."""
        buffer = self._buffer
        if not buffer:
            if self._error is not None and not self._cancelled:
                raise self._error
            return []
        batches = list(buffer)
        buffer.clear()
        if self._paused:
            self._resume_if_paused()
        return batches

    def add_listener(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback()`` on the event loop whenever batches arrive or the watch ends, in
        that turn (a reader that must react at once, as ``watch_prefix`` keeping its snapshot
        current, takes them there with :meth:`take`; what it leaves stays for the iteration).
        Returns a function that removes it. Callback errors are logged, not raised."""
        if self._listeners is None:
            self._listeners = Listeners(self, log)
        return self._listeners.add(callback)

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> WatchBatch:
        if not self._started and not self._cancelled:
            await self.start()
        while True:
            if self._cancelled:
                raise StopAsyncIteration
            buffer = self._buffer
            if buffer:
                batch = buffer.popleft()
                if self._paused and len(buffer) <= RESUME_BELOW:
                    self._resume_if_paused()
                return batch
            if self._error is not None:
                err, self._error = self._error, None
                self.cancel()
                raise err
            if self._waiter is not None:
                raise second_reader("watch")
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    def _resume_if_paused(self) -> None:
        if self._paused and self._error is None and not self._cancelled:
            self._paused = False
            try:
                self._subscribe()
            except EtcdkitError as exc:  # the client closed while this watch was off
                self._on_end(exc)  # (the hub's close could not tell it): end after the
                # buffered batches, as a watch on the stream does

    # -- on the hub's reader task ------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _subscribe(self) -> None:
        if self._single:
            self._sub = self._core.key_watches.watch(
                self._key, self._next, on_events=self._on_events, on_end=self._on_end
            )
            return
        self._sub = self._core.watches.watch(
            self._key,
            self._range_end,
            self._next,
            prev_kv=self._prev_kv,
            on_events=self._on_events,
            on_progress=self._on_progress,
            on_status=self._on_status,
            on_end=self._on_end,
            filters=self._filters,
        )

    def _unsubscribe(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            if isinstance(sub, KeyWatch):
                self._disconnects += sub.disconnects  # (a new one counts from 0)
            sub.cancel()

    def _push(self, batch: WatchBatch, next_rev: int) -> None:
        self._last = batch.revision
        buffer = self._buffer
        if buffer is None:
            buffer = self._buffer = collections.deque()
        buffer.append(batch)
        self._next = next_rev
        if self._listeners is not None:
            self._listeners.call()
        if not buffer:
            return  # a listener took it all
        self._wake()
        if len(buffer) >= MAX_BUFFERED and not self._paused:
            self._paused = True  # the reader is behind: step off until it catches up
            self._unsubscribe()

    def _on_events(self, events: list[WatchEvent]) -> None:
        sub = self._sub
        if sub is None:
            return
        last = events[-1].kv.mod_revision
        if isinstance(sub, KeyWatch):  # (a shared etcd watch's header says other keys' news)
            self._push(WatchBatch(last, events), last + 1)
        else:
            self._push(WatchBatch(max(sub.header_revision, last), events), sub.next_rev)

    def _on_progress(self, revision: int) -> None:
        sub = self._sub
        if sub is None or isinstance(sub, KeyWatch):
            return
        if self._progress:
            self._push(WatchBatch(revision, []), sub.next_rev)
        else:
            self._next = sub.next_rev

    def _on_status(self, connected: bool, err: EtcdkitError | None) -> None:
        sub = self._sub
        if not isinstance(sub, WatchSub):
            return
        if not connected:
            self._disconnects += 1
            return
        self._confirmed = sub.confirmed_at
        rev = sub.next_rev - 1  # confirmed: every change up to it was delivered
        # (not self._last: an events batch's header revision may run ahead of events etcd has
        # yet to send, as when it replays history 1000 revisions per response)
        if self._progress and rev >= self._last:
            self._push(WatchBatch(rev, []), sub.next_rev)

    def _on_end(self, err: EtcdkitError) -> None:
        sub, self._sub = self._sub, None
        if isinstance(sub, KeyWatch):
            self._disconnects += sub.disconnects
        if self._cancelled:
            return
        if isinstance(err, ClosedError):
            # (named by its key: a recipe's caller, waiting on a lock or a queue, never made
            # the watch it waited through)
            err = ClosedError(f"the etcdkit client was closed; the watch of {self._key!r} ended")
        self._error = err
        if self._listeners is not None:
            self._listeners.call()
        self._wake()
