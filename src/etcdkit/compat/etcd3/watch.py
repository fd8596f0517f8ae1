"""python-etcd3's watches, on etcdkit's resumable watch (:meth:`etcdkit.Client.watch`).

Each watch is one etcdkit watch on the client's shared Watch stream: after a disconnect, a
restart or a hung member it resumes from the revision after the last one delivered, so no
event is lost or repeated (python-etcd3 dropped its watches on a stream error and passed the
error to the callbacks). The callbacks of one client are called on one thread, one at a time,
in the order their responses arrived (revision order across watches), as python-etcd3's
single callback thread called them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

from etcdkit import ClosedError, EtcdkitError, ResponseHeader, WatchBatch
from etcdkit.compat.etcd3.events import Event, new_event
from etcdkit.compat.etcd3.exceptions import Etcd3Exception, WatchTimedOut, translate
from etcdkit.compat.etcd3.transactions import end_of, seconds_or_none, to_bytes

if TYPE_CHECKING:
    from etcdkit import Client, SyncWatch

__all__ = [
    "WatchResponse",
    "WatchTimedOut",
    "Watcher",
    "first_response",
    "once_timeout",
    "watch_filters",
]

log = logging.getLogger("etcdkit.compat.etcd3")

WatchCallback = Callable[["WatchResponse | Etcd3Exception"], object]

# python-etcd3 passed etcd's WatchCreateRequest.FilterType numbers: NOPUT = 0, NODELETE = 1.
_FILTERS = {0: "noput", 1: "nodelete", "noput": "noput", "nodelete": "nodelete"}


class WatchResponse(NamedTuple):
    """One answer of etcd on a watch: ``events`` (:class:`PutEvent` / :class:`DeleteEvent`)
    and a ``header`` whose ``revision`` is one etcd had reached, at least the last event's
    (etcdkit's ``WatchBatch.revision``; its batches carry no other header field:
    ``cluster_id``, ``member_id`` and ``raft_term`` are 0)."""

    header: ResponseHeader
    events: list[Event]

    @classmethod
    def of(cls, batch: WatchBatch) -> WatchResponse:
        return cls(ResponseHeader(0, 0, batch.revision, 0), [new_event(e) for e in batch.events])


def watch_filters(filters: Sequence[object] | None) -> tuple[str, ...]:
    """etcdkit's filter names for python-etcd3's (etcd's numbers, or "noput"/"nodelete")."""
    if filters is None:
        return ()
    if isinstance(filters, str | bytes) or not isinstance(filters, Sequence):
        raise TypeError(f"filters must be a list such as [0] (NOPUT), got {filters!r:.80}")
    out = []
    for f in filters:
        name = _FILTERS.get(f) if isinstance(f, int | str) else None
        if name is None:
            raise ValueError(f"watch filters are 0 / 'noput' and 1 / 'nodelete', got {f!r:.40}")
        out.append(name)
    return tuple(out)


class Watcher:
    """The callback watches of one compat client: ``add_callback`` starts one, ``cancel``
    ends it, ``close`` ends them all.

    Their callbacks run on one thread, in the order their responses arrived on the client's
    Watch stream (revision order), as python-etcd3's one thread read its stream and called
    them: a slow callback delays the others. Each watch's responses are taken on the loop as
    they arrive (a listener, in arrival order) and queued for that thread; a watch with
    ``QUEUED_PER_WATCH`` responses queued is left to buffer (and so, past etcdkit's bound,
    to step off the stream) until its callback catches up. The thread runs while a callback
    watch is on (it holds the client meanwhile) and ends when none is, or at ``close``.
    """

    QUEUED_PER_WATCH = 1024

    def __init__(self, client: Client) -> None:
        self.client = client
        self._ids = itertools.count(1)
        # guards everything below; notified when the queue grows or a callback ends
        self._cond = threading.Condition(threading.Lock())
        self._local = threading.local()  # .in_callback: this thread is running a callback
        # every callback watch until it ended or was cancelled (kept until its cancel is
        # done, so that a failed cancel can be retried)
        self._watches: dict[int, _Entry] = {}
        self._live: set[int] = set()  # the ids not cancelled: only their callbacks are called
        self._queue: collections.deque[tuple[int, WatchBatch | EtcdkitError | None]] = (
            collections.deque()
        )  # (watch id, a response, the error that ended it, or None: the client closed)
        self._running = 0  # the id whose callback runs now (0: none)
        self._thread: threading.Thread | None = None  # the callbacks' thread, while it runs
        self._closed = False  # close() ended the watches: each live one's callback hears it

    def open(
        self,
        key: str | bytes,
        range_end: str | bytes | None = None,
        start_revision: int | None = None,
        progress_notify: bool = False,
        filters: Sequence[object] | None = None,
        prev_kv: bool = False,
        *,
        prefix: bool = False,
    ) -> SyncWatch:
        """An etcdkit watch with python-etcd3's arguments, started (its start revision fixed:
        nothing written after this returns is missed)."""
        end = end_of(range_end)
        try:
            watch = self.client.watch(
                to_bytes(key),
                None if end is None else to_bytes(end, "range_end"),
                prefix=prefix,
                start_revision=0 if start_revision is None else start_revision,
                prev_kv=prev_kv,
                filters=watch_filters(filters),  # type: ignore[arg-type]
                progress_notify=progress_notify,
            )
        except EtcdkitError as exc:  # (the client is closed)
            raise translate(exc) from exc
        try:
            watch.start()
        except EtcdkitError as exc:
            watch.cancel()
            raise translate(exc) from exc
        return watch

    def add_callback(
        self,
        key: str | bytes,
        callback: WatchCallback,
        range_end: str | bytes | None = None,
        start_revision: int | None = None,
        progress_notify: bool = False,
        filters: Sequence[object] | None = None,
        prev_kv: bool = False,
        *,
        prefix: bool = False,
        keep: object = None,
    ) -> int:
        """Start a watch calling ``callback(response)`` for each :class:`WatchResponse` (or
        ``callback(error)`` once, when it ends with an error); returns its id. The callbacks'
        thread holds ``keep`` (the compat client) while a callback watch is on: a client whose
        callback watch is not cancelled is not collected (and closed) while its program holds
        no reference to it."""
        if not callable(callback):
            raise TypeError(f"callback must be callable, got {callback!r:.80}")
        watch = self.open(
            key, range_end, start_revision, progress_notify, filters, prev_kv, prefix=prefix
        )
        entry = _Entry(next(self._ids), watch, callback)

        def on_news() -> None:  # (on the loop, as responses arrive: in the stream's order)
            self._take(entry)

        async def attach() -> None:  # (one turn of the loop: no response comes in between)
            watch.add_listener(on_news)  # (it ends with the watch: cancel() ends both)
            on_news()  # what came since the start

        with self._cond:
            closed = self._closed
            if not closed:
                self._watches[entry.id] = entry
                self._live.add(entry.id)
        try:
            if closed:
                raise ClosedError("the client was closed")
            self.client.run(attach())
        except BaseException as exc:
            with self._cond:
                self._watches.pop(entry.id, None)
                self._live.discard(entry.id)
            watch.cancel()
            if isinstance(exc, EtcdkitError):
                raise translate(exc) from exc
            raise
        with self._cond:
            # (also when close() came meanwhile: the thread hands the callback its end)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run,
                    args=(keep,),
                    name="etcdkit-compat-callbacks",
                    daemon=True,
                )
                self._thread.start()
        return entry.id

    def _take(self, entry: _Entry) -> None:
        """On the loop: queue what ``entry``'s watch received (its end too), unless its
        callback is that far behind (then its watch keeps it: see :meth:`_called`)."""
        with self._cond:
            if entry.queued >= self.QUEUED_PER_WATCH or entry.ended or self._closed:
                entry.held = not entry.ended
                return
        try:
            items: list[WatchBatch | EtcdkitError] = list(entry.watch.take())
        except EtcdkitError as exc:
            items = [exc]
        if not items:
            return
        with self._cond:
            if self._closed:
                return
            entry.queued += len(items)
            entry.ended = isinstance(items[-1], EtcdkitError)
            self._queue.extend((entry.id, item) for item in items)
            self._cond.notify_all()

    def _run(self, keep: object) -> None:
        """The callbacks' thread: each queued item in turn, until no watch is on (or the
        client closed and each live callback heard it)."""
        while True:
            with self._cond:
                while not self._queue:
                    if not self._watches:
                        self._thread = None
                        return
                    self._cond.wait()
                watch_id, item = self._queue.popleft()
                if item is None:  # the client closed
                    live = sorted(self._live)
                    entries = [self._watches[i] for i in live]
                else:
                    entry = self._watches.get(watch_id)
                    live = [watch_id] if entry is not None and watch_id in self._live else []
                    entries = [entry] if entry is not None else []
            if item is None:
                closed = translate(ClosedError("the client was closed: the watch ended"))
                for wid, entry in zip(live, entries):  # (python-etcd3's had the stream's error)
                    self._call(wid, entry.callback, closed)
                with self._cond:
                    self._watches.clear()
                    self._live.clear()
                    self._queue.clear()
                    self._thread = None
                    self._cond.notify_all()
                return
            if not entries:
                continue  # cancelled meanwhile
            (entry,) = entries
            if isinstance(item, EtcdkitError):
                self._call(watch_id, entry.callback, translate(item))
                with self._cond:  # (its watch ended: nothing more comes of it)
                    self._watches.pop(watch_id, None)
                    self._live.discard(watch_id)
                continue
            self._call(watch_id, entry.callback, WatchResponse.of(item))
            self._called(entry)

    def _called(self, entry: _Entry) -> None:
        """One of ``entry``'s queued responses was handed over: once its callback caught up,
        take again what its watch kept meanwhile."""
        with self._cond:
            entry.queued -= 1
            resume = entry.held and entry.queued == 0
            if resume:
                entry.held = False
        if resume:

            async def again() -> None:
                self._take(entry)

            with contextlib.suppress(EtcdkitError):  # (the client closed: nothing comes)
                self.client.run(again())

    def _call(
        self, watch_id: int, callback: WatchCallback, arg: WatchResponse | Etcd3Exception
    ) -> None:
        with self._cond:
            if watch_id not in self._live:
                return  # cancelled (e.g. by another watch's callback) while this waited
            self._running = watch_id
        try:
            self._local.in_callback = True
            try:
                callback(arg)
            except (Exception, asyncio.CancelledError):  # (a plain function raising it: its own)
                log.exception("watch callback %r failed", callback)
            finally:
                self._local.in_callback = False
        finally:
            with self._cond:
                self._running = 0
                self._cond.notify_all()

    def cancel(self, watch_id: int) -> None:
        """End the watch ``watch_id`` (idempotent; unknown ids are ignored). Once it returns,
        its callback is not called again (unless this runs inside a callback, which cannot
        wait for the others); so too when several threads cancel it at once."""
        with self._cond:
            self._live.discard(watch_id)  # no callback of it starts from here on
            entry = self._watches.get(watch_id)
        if entry is not None:
            entry.watch.cancel()
        with self._cond:
            if entry is not None and self._watches.get(watch_id) is entry:
                del self._watches[watch_id]
                self._cond.notify_all()  # (the callbacks' thread ends with the last watch)
            if not self._in_callback():  # (another canceller's too: each waits for it)
                while self._running == watch_id:
                    self._cond.wait()

    def _in_callback(self) -> bool:
        return getattr(self._local, "in_callback", False) or (
            self._thread is threading.current_thread()
        )

    def close(self) -> None:
        """End every callback watch and wait for the callbacks' thread (not from a
        callback): each callback not cancelled is handed one last :class:`Etcd3Exception`
        (the client closed), as python-etcd3's were handed their stream's error, and none
        after the responses that arrived before."""
        with self._cond:
            if self._closed:
                thread = self._thread
                entries = []
            else:
                self._closed = True
                entries = list(self._watches.values())
                self._queue.append((0, None))
                self._cond.notify_all()
                thread = self._thread
        for entry in entries:
            entry.watch.cancel()
        if thread is not None and not self._in_callback():
            thread.join()


class _Entry:
    """A callback watch: its etcdkit watch, its callback, and its responses in the queue."""

    __slots__ = ("callback", "ended", "held", "id", "queued", "watch")

    def __init__(self, watch_id: int, watch: SyncWatch, callback: WatchCallback) -> None:
        self.id = watch_id
        self.watch = watch
        self.callback = callback
        self.queued = 0  # its responses in the queue, not handed over yet
        self.held = False  # it has more, which its watch keeps until the callback catches up
        self.ended = False  # its end (an error) is queued: nothing more comes of it


def once_timeout(timeout: object) -> float | None:
    """``watch_once``'s ``timeout`` (``None``: no limit), checked before any watch is opened,
    with the errors python-etcd3's ``queue.Queue.get(timeout=...)`` raised: ``TypeError`` for
    what is not a number, ``ValueError`` for a negative one (and NaN, on which it waited for
    ever), ``OverflowError`` for one past what a thread can wait (``None`` waits with no
    limit)."""
    seconds = seconds_or_none(timeout)
    if seconds is None:
        return None
    if seconds < 0:
        raise ValueError(f"'timeout' must be a non-negative number, got {timeout!r}")
    if seconds > threading.TIMEOUT_MAX:
        raise OverflowError(
            f"timeout {timeout!r:.40} is more than a thread can wait "
            f"({threading.TIMEOUT_MAX:g} s); None waits with no limit"
        )
    return float(seconds)


def first_response(watch: SyncWatch, timeout: float | None) -> WatchResponse:
    """The first batch with events of the started ``watch``, as a :class:`WatchResponse`;
    :class:`WatchTimedOut` when none came within ``timeout`` seconds (``None``: no limit;
    checked already, see :func:`once_timeout`). The watch is cancelled in every case."""
    timer: threading.Timer | None = None
    if timeout is not None:
        timer = threading.Timer(timeout, watch.cancel)
        timer.name = "etcdkit-compat-watch-once"
        timer.daemon = True
        timer.start()
    try:
        for batch in watch:
            if batch.events:
                return WatchResponse.of(batch)
        raise WatchTimedOut(f"no event within {timeout} s")
    except EtcdkitError as exc:
        raise translate(exc) from exc
    finally:
        if timer is not None:
            timer.cancel()
            timer.join()
        watch.cancel()
