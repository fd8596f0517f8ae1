"""python-etcd3's watches, on etcdkit's resumable watch (:meth:`etcdkit.Client.watch`).

Each watch is one etcdkit watch on the client's shared Watch stream: after a disconnect, a
restart or a hung member it resumes from the revision after the last one delivered, so no
event is lost or repeated (python-etcd3 dropped its watches on a stream error and passed the
error to the callbacks). A callback watch is read by a thread of its own; the callbacks of one
client are called one at a time, as python-etcd3's single callback thread called them.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

from etcdkit import ClosedError, EtcdkitError, ResponseHeader, WatchBatch
from etcdkit.compat.etcd3.events import Event, new_event
from etcdkit.compat.etcd3.exceptions import Etcd3Exception, WatchTimedOut, translate
from etcdkit.compat.etcd3.transactions import end_of, to_bytes

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
    ends it, ``close`` ends them all (and waits for their threads)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._ids = itertools.count(1)
        self._mutex = threading.Lock()
        self._calling = threading.Lock()  # one callback at a time, as python-etcd3 did
        self._local = threading.local()  # .in_callback: this thread is running a callback
        # every callback watch until its thread ends (cancelled ones too, so that each
        # canceller, not only the first, can wait for the thread and a failed cancel be retried)
        self._watches: dict[int, tuple[SyncWatch, threading.Thread]] = {}
        self._live: set[int] = set()  # the ids not cancelled: only their callbacks are called
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
        ``callback(error)`` once, when it ends with an error); returns its id. Its thread holds
        ``keep`` (the compat client) until it ends: a client whose callback watch is not
        cancelled is not collected (and closed) while its program holds no reference to it."""
        if not callable(callback):
            raise TypeError(f"callback must be callable, got {callback!r:.80}")
        watch = self.open(
            key, range_end, start_revision, progress_notify, filters, prev_kv, prefix=prefix
        )
        watch_id = next(self._ids)
        thread = threading.Thread(
            target=self._run,
            args=(watch_id, watch, callback, keep),
            name=f"etcdkit-compat-watch-{watch_id}",
            daemon=True,
        )
        with self._mutex:
            self._watches[watch_id] = (watch, thread)
            self._live.add(watch_id)
        thread.start()
        return watch_id

    def _run(self, watch_id: int, watch: SyncWatch, callback: WatchCallback, keep: object) -> None:
        try:
            for batch in watch:
                self._call(watch_id, callback, WatchResponse.of(batch))
        except EtcdkitError as exc:
            self._call(watch_id, callback, translate(exc))
        else:
            if self._closed:  # (python-etcd3's callbacks had their stream's error then)
                closed = ClosedError("the client was closed: the watch ended")
                self._call(watch_id, callback, translate(closed))
        finally:
            with self._mutex:
                self._watches.pop(watch_id, None)
                self._live.discard(watch_id)

    def _call(
        self, watch_id: int, callback: WatchCallback, arg: WatchResponse | Etcd3Exception
    ) -> None:
        with self._calling:
            with self._mutex:
                if watch_id not in self._live:
                    return  # cancelled (e.g. by another watch's callback) while this waited
            self._local.in_callback = True
            try:
                callback(arg)
            except (Exception, asyncio.CancelledError):  # (a plain function raising it: its own)
                log.exception("watch callback %r failed", callback)
            finally:
                self._local.in_callback = False

    def cancel(self, watch_id: int) -> None:
        """End the watch ``watch_id`` (idempotent; unknown ids are ignored). Once it returns,
        its callback is not called again (unless this runs inside a callback, which cannot
        wait for the others); so too when several threads cancel it at once."""
        with self._mutex:
            self._live.discard(watch_id)  # no callback of it starts from here on
            entry = self._watches.get(watch_id)  # (its thread removes it when it ends)
        if entry is not None:
            watch, thread = entry
            watch.cancel()
            self._join(thread)

    def _join(self, thread: threading.Thread) -> None:
        if thread is not threading.current_thread() and not getattr(
            self._local, "in_callback", False
        ):
            thread.join()

    def close(self) -> None:
        """End every callback watch and wait for its thread (not the calling one): each
        callback not cancelled is handed one last :class:`Etcd3Exception` (the client
        closed), as python-etcd3's were handed their stream's error, and none after it."""
        with self._mutex:
            entries = list(self._watches.values())
            self._closed = True
        for watch, _ in entries:
            watch.cancel()
        for _, thread in entries:
            self._join(thread)  # (not from a callback: those threads end on their own)


def once_timeout(timeout: object) -> float | None:
    """``watch_once``'s ``timeout`` (``None``: no limit), checked before any watch is opened,
    with the errors python-etcd3's ``queue.Queue.get(timeout=...)`` raised: ``TypeError`` for
    what is not a number, ``ValueError`` for a negative one (and NaN, on which it waited for
    ever), ``OverflowError`` for one past what a thread can wait (``None`` waits with no
    limit)."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(
            f"timeout must be a number of seconds or None, got {type(timeout).__name__}: "
            f"{timeout!r:.40}"
        )
    if isinstance(timeout, float) and math.isnan(timeout):
        raise ValueError("'timeout' must be a non-negative number, got nan")
    if timeout < 0:
        raise ValueError(f"'timeout' must be a non-negative number, got {timeout!r}")
    if timeout > threading.TIMEOUT_MAX:
        raise OverflowError(
            f"timeout {timeout!r:.40} is more than a thread can wait "
            f"({threading.TIMEOUT_MAX:g} s); None waits with no limit"
        )
    return float(timeout)


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
