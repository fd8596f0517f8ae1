"""One multiplexed etcd Watch stream per client, resumed after every fault.

Every watcher (prefix watch, wait_for, a persistent lease's key watch) is a :class:`WatchSub`
on the client's single bidirectional Watch stream. The hub owns the stream:

- it (re)creates every registered watcher from its own ``next_rev`` after a disconnect, so no
  event is lost and none is delivered twice; ``next_rev`` advances only by delivered events
  (last event's mod_revision + 1) or by progress notifications (header revision + 1), never by
  an events response's header revision, which may run ahead of undelivered events;
- it retries with exponential backoff (jitter, cap) while etcd is unreachable, forever;
- it asks for ``hasleader`` so a member cut off from its cluster ends the stream instead of
  serving silence, and it sends progress requests so idle watchers can tell they are current
  (where none is answered, as by etcd's gRPC proxy, a probe watch created on
  :data:`PROBE_KEY` and cancelled at once does that instead);
- a stream that hears nothing for :data:`STALL_AFTER` seconds although a progress request is
  out (a hung member: SIGSTOP, a stuck disk) is abandoned: the connection fails over to the
  next endpoint and every watcher is re-created there from its own ``next_rev``;
- a watcher whose resume revision was compacted, or that etcd canceled, is ended with
  :class:`CompactedError` / :class:`WatchEndedError` through its ``on_end`` callback; its owner
  decides (a prefix watch relists, wait_for re-reads). Closing the hub ends every watcher with
  :class:`ClosedError`.

Watchers receive typed :class:`WatchEvent` lists, never wire messages. Callbacks run on the
hub's reader task and must be quick and must not raise.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio
from aetcd import rpc

from etcdkit import _metrics
from etcdkit._errors import (
    AuthError,
    ClosedError,
    CompactedError,
    ConnectionUnavailableError,
    EtcdkitError,
    EtcdTimeoutError,
    InvalidArgumentError,
    WatchEndedError,
)
from etcdkit._retry import Backoff
from etcdkit._types import EventType, WatchEvent
from etcdkit._wire.conn import Channel, Connection, map_rpc_error
from etcdkit._wire.kv import kv_of

__all__ = ["WatchHub", "WatchSub"]

log = logging.getLogger("etcdkit.watch")

EventsCallback = Callable[[list[WatchEvent]], None]  # the events of one response (non-empty)
ProgressCallback = Callable[[int], None]
StatusCallback = Callable[[bool, "EtcdkitError | None"], None]
EndCallback = Callable[[EtcdkitError], None]

PROGRESS_INTERVAL = 1.0  # seconds between progress requests on an otherwise quiet stream
STALL_AFTER = 2.0  # seconds of silence, with a progress request out, that make a stream hung
# A watch on this key (from "now", cancelled at once) is the liveness probe for servers that do
# not answer progress requests (etcd's gRPC proxy): see WatchHub._stream_once.
PROBE_KEY = b"\0etcdkit/liveness-probe"
# Every FRESH_EVERY seconds a stream's member is asked for a linearizable read (of PROBE_KEY):
# a member behind its cluster cannot answer one (it waits to apply what the leader committed)
# while it answers progress requests at its own old revision, heartbeats reaching it. No
# answer within FRESH_WAIT seconds: the stream moves. Only when the client has several
# endpoints (else there is nowhere to move) and no call of its own had an answer meanwhile
# (a client that makes calls tells it by their revisions: see WatchHub._progress_answered).
FRESH_EVERY = 10.0
FRESH_WAIT = 4.0
# A watcher refused for its stream's token (see WatchHub._token_refused) is asked for again on
# a new stream with a new token, unless the stream's token is the client's newest, got after
# the last stream failure and younger than this many seconds: then the refusal stands (so at
# most one new login per this many seconds, whatever a user without the permission asks for).
TOKEN_TRUSTED = 10.0
# The most key and range end bytes a watch may have: etcd's gRPC server takes requests of up
# to --max-request-bytes (1.5 MiB by default) + 512 KiB, and one larger ends the whole stream,
# every watch of the client with it (again at each reconnect, the create sent again).
MAX_RANGE_BYTES = 2 * 1024 * 1024 - 1024
ECHO_ID = 1 << 62  # the watch id a stream's first create asks for: see WatchHub._send_create
_DELETE = 1  # mvccpb.Event.EventType.DELETE
_FILTERS = {
    "noput": rpc.WatchCreateRequest.FilterType.NOPUT,
    "nodelete": rpc.WatchCreateRequest.FilterType.NODELETE,
}


def _noop(*_args: object) -> None:
    return None


def _end_each(subs: list[WatchSub], err: EtcdkitError) -> None:
    """End every watcher of ``subs`` not ended yet with ``err`` (each told once)."""
    for sub in subs:
        if not sub.ended:
            sub.ended = True
            sub.connected = False
            sub.on_end(err)


class _TokenRefused(Exception):
    """etcd refused a watcher for the stream's token: the stream goes again with a new one."""


class _Behind(ConnectionUnavailableError):
    """The stream's member stayed behind the cluster: the stream goes to the next endpoint.
    The client's calls stay where they are (a member behind cannot answer a linearizable
    call: those move by themselves; kicked, a write in flight would fail "maybe applied")."""


class WatchSub:
    """One watcher on the shared stream. Create with :meth:`WatchHub.watch`."""

    __slots__ = (
        "_hub",
        "asked_id",
        "confirmed_at",
        "connected",
        "disconnects",
        "ended",
        "filters",
        "header_revision",
        "key",
        "next_rev",
        "on_end",
        "on_events",
        "on_progress",
        "on_status",
        "prev_kv",
        "range_end",
        "watch_id",
    )

    def __init__(
        self,
        hub: WatchHub,
        key: bytes,
        range_end: bytes,
        start_revision: int,
        *,
        prev_kv: bool,
        on_events: EventsCallback,
        on_progress: ProgressCallback,
        on_status: StatusCallback,
        on_end: EndCallback,
        filters: tuple[int, ...] = (),
    ) -> None:
        self._hub = hub
        self.key = key
        self.range_end = range_end
        self.next_rev = start_revision  # 0 = "from now"; fixed on creation
        self.prev_kv = prev_kv
        self.filters = filters
        self.header_revision = 0  # of the response being delivered (events or progress)
        self.on_events = on_events
        self.on_progress = on_progress
        self.on_status = on_status
        self.on_end = on_end
        self.watch_id: int | None = None
        self.asked_id = 0  # the watch id its pending create asked for (0: any)
        self.connected = False
        self.disconnects = 0  # times the stream broke under it while it was confirmed
        self.ended = False
        self.confirmed_at = 0.0  # monotonic time the data was last confirmed current

    def cancel(self) -> None:
        """Stop watching; idempotent, no callback is called afterwards."""
        if not self.ended:
            self.ended = True
            self._hub._remove(self)

    def create_request(self, watch_id: int = 0) -> Any:
        self.asked_id = watch_id
        return rpc.WatchRequest(
            create_request=rpc.WatchCreateRequest(
                key=self.key,
                range_end=self.range_end,
                start_revision=self.next_rev,
                prev_kv=self.prev_kv,
                progress_notify=True,
                filters=self.filters,
                watch_id=watch_id,
            )
        )


# WatchEvent's slots, set directly through their descriptors (as kv.py sets RangeResult's; kv_of
# now fills an unfrozen twin of KeyValue instead): the frozen dataclass's __init__ goes through
# object.__setattr__ per field, 0.52 us an event against 0.33 us this way. Same type, fields,
# equality and hash; still frozen. (bench/peers.py: the watch CPU per event.)
_new_object = object.__new__
_SET_TYPE, _SET_KV, _SET_PREV = (
    WatchEvent.__dict__[name].__set__ for name in ("type", "kv", "prev_kv")
)


def _events(pb_events: Any, prev_kv: bool) -> list[WatchEvent]:
    # etcd sends prev_kv only to a watch that asked for it: the others skip HasField per event.
    out = []
    for ev in pb_events:
        we: WatchEvent = _new_object(WatchEvent)
        _SET_TYPE(we, EventType.DELETE if ev.type == _DELETE else EventType.PUT)
        _SET_KV(we, kv_of(ev.kv))
        _SET_PREV(we, kv_of(ev.prev_kv) if prev_kv and ev.HasField("prev_kv") else None)
        out.append(we)
    return out


class WatchHub:
    """Owns the client's Watch stream and its reconnect loop (started lazily, on first watch)."""

    def __init__(self, conn: Connection, *, require_leader: bool = True) -> None:
        self._conn = conn
        self._require_leader = require_leader
        self._subs: set[WatchSub] = set()
        self._by_id: dict[int, WatchSub] = {}
        self._pending: collections.deque[WatchSub] = collections.deque()
        self._call: Any = None
        self._outbox: asyncio.Queue[Any] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._heard = 0.0  # monotonic time of the newest response on the current stream
        self._probe: WatchSub | None = None  # the liveness probe awaiting its "created"
        self._probe_floor = 0  # the revision the client knew of when it was sent
        self._progress_out = 0.0  # when the oldest unanswered progress request was sent
        self._progress_floor = 0  # the revision the client knew of when it was sent
        # Since when (monotonic) progress answers say a revision below what the cluster had
        # reached when they were asked for (0.0: not behind); and the last such pair.
        self._behind_since = 0.0
        self._behind = (0, 0)
        self._stream_floor = 0  # the revision the client knew of when this stream opened
        self.lags = 0  # streams given up on because their member stayed behind
        self._fresh: asyncio.Task[bool] | None = None  # the member's linearizable read
        self._fresh_sent = 0.0
        self._lags_in_a_row = 0  # ... with no member answering current since
        self._lag_offset = 0  # endpoints past the client's preferred one the stream goes to
        self._deaf = False  # this stream's server does not answer progress requests
        self._deaf_checked = False  # this stream's first progress request went with a probe
        self._ids_granted: bool | None = None  # the server grants asked ids (None: unknown)
        self._next_id = ECHO_ID
        self._token_time = 0.0  # when the current stream's token was got (Connection.token_time)
        self._failed_at = 0.0  # when a stream last ended with an error (monotonic)
        self.reconnects = 0
        self._failing = False  # a stream ended since the last one answered
        self.stalls = 0

    # -- public -----------------------------------------------------------------------------------

    def counts(self) -> tuple[int, int]:
        """``(watches, unconfirmed)``: the watches asked for and not ended, and how many of
        them etcd has not confirmed yet (creates in flight, or no stream at the moment)."""
        subs = self._subs
        return len(subs), sum(1 for s in subs if not s.connected)

    def watch(
        self,
        key: bytes,
        range_end: bytes = b"",
        start_revision: int = 0,
        *,
        prev_kv: bool = False,
        on_events: EventsCallback,
        on_progress: ProgressCallback = _noop,
        on_status: StatusCallback = _noop,
        on_end: EndCallback,
        filters: tuple[str, ...] = (),
    ) -> WatchSub:
        """Watch ``[key, range_end)`` from ``start_revision`` (0: from now) until cancelled.
        ``filters``: ``"noput"`` and/or ``"nodelete"`` (etcd leaves those events out)."""
        if self._closed:
            raise ClosedError("the etcdkit client is closed; create a new one")
        if len(key) + len(range_end) > MAX_RANGE_BYTES:
            raise InvalidArgumentError(
                f"watch on {key[:40]!r}...: its key and range end are "
                f"{len(key) + len(range_end)} bytes, more than etcd takes in one request (2 MiB "
                "by default: --max-request-bytes + 512 KiB)"
            )
        sub = WatchSub(
            self,
            key,
            range_end,
            start_revision,
            prev_kv=prev_kv,
            on_events=on_events,
            on_progress=on_progress,
            on_status=on_status,
            on_end=on_end,
            filters=tuple(_FILTERS[f] for f in filters),
        )
        self._subs.add(sub)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="etcdkit-watch-stream"
            )
        elif self._call is not None:
            self._send_create(sub)
        self._wake.set()
        return sub

    async def close(self) -> None:
        """Stop the stream; every watcher still open ends with :class:`ClosedError`."""
        self._closed = True
        subs = list(self._subs)
        self._subs.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        _end_each(subs, ClosedError("the etcdkit client was closed"))

    # -- internals --------------------------------------------------------------------------------

    def _remove(self, sub: WatchSub) -> None:
        self._subs.discard(sub)
        wid = sub.watch_id
        if wid is not None and self._by_id.get(wid) is sub:
            del self._by_id[wid]
            self._queue_write(rpc.WatchRequest(cancel_request=rpc.WatchCancelRequest(watch_id=wid)))

    def _send_create(self, sub: WatchSub) -> None:
        # A "created" answer does not say which create it answers. etcd answers creates in
        # order, but its gRPC proxy does not (a create it joins to a watch it already serves
        # overtakes one that waits for etcd; a new watch's "created" reaches its joiners in map
        # order), so pipelined creates could swap ids and deliver one range's events to another
        # watcher (tests/test_grpc_proxy.py). So a stream's first create goes alone and asks for
        # watch id ECHO_ID. etcd (>= 3.4) grants asked ids: the rest are pipelined, each asking
        # for its own id, and answers are matched by id. The proxy ignores them
        # (etcd-io/etcd#12819): creates go one at a time, as Go's client sends them.
        self._pending.append(sub)
        if self._ids_granted or (self._ids_granted is None and len(self._pending) == 1):
            self._write_create(sub)
        elif len(self._pending) == 1:
            self._queue_write(sub.create_request())

    def _write_create(self, sub: WatchSub) -> None:
        self._queue_write(sub.create_request(self._next_id))
        self._next_id += 1

    def _answered(self, wid: int) -> WatchSub | None:
        """The pending watcher a "created" answer with this watch id is for (see above)."""
        pending = self._pending
        if not pending or wid in self._by_id:
            return None  # a second "created" for a live watch (etcd-io/etcd#21881): not ours
        if self._ids_granted is None:
            self._ids_granted = wid == ECHO_ID
            if self._ids_granted:
                for sub in list(pending)[1:]:
                    self._write_create(sub)
        if self._ids_granted:
            for sub in pending:  # nearly always the first
                if sub.asked_id == wid:
                    pending.remove(sub)
                    return sub
            if wid == -1:
                return pending.popleft()  # a refusal: etcd answers those in order
            return None  # an id nobody asked for: never pin it on another watcher
        sub = pending.popleft()
        self._send_next_create()
        return sub

    def _send_next_create(self) -> None:
        while self._pending and self._pending[0].ended and self._pending[0] is not self._probe:
            self._pending.popleft()  # cancelled before its create was sent
        if self._pending:
            self._queue_write(self._pending[0].create_request())  # any id: not granted here

    def _send_probe(self) -> None:
        if self._probe is None:
            self._probe = WatchSub(
                self, PROBE_KEY, b"", 0, prev_kv=False, on_events=_noop, on_progress=_noop,
                on_status=_noop, on_end=_noop,
            )  # fmt: skip
            self._probe.confirmed_at = time.monotonic()  # when it was sent
            self._probe_floor = self._conn.revision  # what the client knew when it was sent
            self._send_create(self._probe)

    def _queue_write(self, request: Any) -> None:
        # Queued for the stream's writer task, which keeps requests in order; dropped with
        # the stream on a disconnect (every watcher is re-created on the next stream anyway).
        if self._call is not None:
            self._outbox.put_nowait(request)

    async def _writer(self, call: Any, outbox: asyncio.Queue[Any]) -> None:
        while True:
            request = await outbox.get()
            await call.write(request)

    async def _run(self) -> None:
        backoff = self._conn.retry.backoff()
        try:
            while not self._closed:
                if not self._subs:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                ch = self._conn.channel
                if self._lag_offset:
                    chans = self._conn.channels
                    ch = chans[(chans.index(ch) + self._lag_offset) % len(chans)]
                try:
                    await self._stream_once(ch, backoff)
                except asyncio.CancelledError:
                    raise
                except _Behind as exc:
                    log.info("watch stream moves: %s", exc)
                    self._disconnected(None)
                    self.lags += 1
                    self._lags_in_a_row += 1
                    self._lag_offset += 1
                except _TokenRefused as exc:
                    log.info("watch stream at %s: %s; logging in again", ch.endpoint, exc)
                    self._disconnected(None)
                    with contextlib.suppress(EtcdkitError):  # (unreachable: the stream says)
                        await self._login(refresh=True)
                    continue
                except Exception as exc:
                    self._lag_offset = 0  # (back to the client's endpoint, which fails over)
                    err = map_rpc_error(exc, str(ch.endpoint), "watch stream")
                    log.info("watch stream down: %s", err)
                    self._failed_at = time.monotonic()
                    self._conn.note_failure(err)
                    self._disconnected(err)
                    if isinstance(err, ConnectionUnavailableError | EtcdTimeoutError):
                        self._conn.failover(ch, str(err))
                    if isinstance(exc, grpc.aio.AioRpcError) and (
                        exc.code() == grpc.StatusCode.UNAUTHENTICATED
                        or self._conn.token_refused(exc)
                    ):
                        with contextlib.suppress(EtcdkitError):
                            await self._login(refresh=True)
                else:
                    self._disconnected(None)
                if not self._subs:
                    continue  # (every watcher ended: nothing to reconnect for)
                if not self._failing:  # (once per outage: the retries that fail are not news)
                    self._failing = True
                    self.reconnects += 1
                    _metrics.stream_reconnected("watch")
                await backoff.wait()
        finally:
            self._disconnected(None)

    async def _login(self, *, refresh: bool = False) -> list[tuple[str, str]] | None:
        """The call metadata for a stream (after a new login if ``refresh``), or ``None`` when
        etcd refused the login (wrong password, user gone): that :class:`AuthError` then ends
        every watcher, as it fails every other call (retried forever, it would be hidden).
        Raises what keeps etcd from answering."""
        try:
            return await self._conn.metadata(refresh=refresh)
        except AuthError as exc:
            subs = list(self._subs)
            self._subs.clear()
            self._disconnected(None)
            _end_each(subs, exc)
            return None

    def _token_refused(self, reason: str) -> bool:
        """etcd canceled a watcher for what a new login may fix: a stale token by name, or
        "permission denied" (all etcd 3.5.0-3.5.4 say of a token a restart forgot), or none
        while auth is on again. Taken so only when this stream's token may be the cause: got
        before the last stream failure, or older than the client's, or TOKEN_TRUSTED seconds
        ago or more; else the refusal stands."""
        if not self._conn.has_credentials:
            return False
        if not (
            self._conn.refused_for_token(reason)
            or "permission denied" in reason
            or "name is empty" in reason  # (whatever token the client has got since)
        ):
            return False
        got = self._token_time
        return (
            got < self._failed_at  # (a restart forgets every simple token)
            or got < self._conn.token_time  # (a call found it stale and logged in again)
            or time.monotonic() - got >= TOKEN_TRUSTED
        )

    def _disconnected(self, err: EtcdkitError | None) -> None:
        call, self._call = self._call, None
        if call is not None:
            call.cancel()
        self._by_id.clear()
        self._pending.clear()
        self._probe = None
        for sub in list(self._subs):
            sub.watch_id = None
            if sub.connected:
                sub.connected = False
                sub.disconnects += 1
                sub.on_status(False, err)

    async def _stream_once(self, ch: Channel, backoff: Backoff) -> None:
        login = await self._login()
        if login is None:
            return  # a refused login ended every watcher
        md = list(login)
        self._token_time = self._conn.token_time
        if self._require_leader:
            md.append(("hasleader", "true"))
        call = ch.stream("watch", "Watch", md)
        self._call = call
        self._heard = time.monotonic()
        self._outbox = asyncio.Queue()
        self._progress_out = 0.0
        self._behind_since = 0.0
        self._fresh_sent = time.monotonic()
        self._stream_floor = self._conn.revision
        self._deaf = self._deaf_checked = False
        self._ids_granted = None
        self._next_id = ECHO_ID
        for sub in list(self._subs):
            self._send_create(sub)
        loop = asyncio.get_running_loop()
        reader = loop.create_task(self._reader(call, backoff), name="etcdkit-watch-reader")
        writer = loop.create_task(self._writer(call, self._outbox), name="etcdkit-watch-writer")
        try:
            # Every PROGRESS_INTERVAL: ask for progress (idle watchers learn they are current),
            # and give up on a stream that has said nothing since the last ask.
            asked = False
            while True:
                done, _ = await asyncio.wait(
                    {reader, writer}, timeout=PROGRESS_INTERVAL, return_when="FIRST_COMPLETED"
                )
                if done:
                    for t in done:
                        t.result()  # a failed read or write ends this stream
                    return  # EOF
                silent = time.monotonic() - self._heard
                if asked and silent > STALL_AFTER:
                    self.stalls += 1
                    raise ConnectionUnavailableError(
                        f"watch stream at {ch.endpoint}: no answer for {silent:.1f} s "
                        "(member hung or connection black-holed)"
                    )
                self._check_behind(ch)
                asked = bool(self._by_id or self._pending)
                self._check_fresh(ch, asked)
                if asked and self._deaf:
                    self._send_probe()
                elif asked:
                    self._queue_write(rpc.WatchRequest(progress_request=rpc.WatchProgressRequest()))
                    if not self._progress_out:
                        self._progress_out = time.monotonic()
                        self._progress_floor = self._conn.revision
                    if not self._deaf_checked:
                        self._deaf_checked = True
                        # The first time, also a probe: etcd answers requests in order, so if
                        # the probe's "created" comes back while the progress request sent
                        # before it is unanswered, this server ignores progress requests
                        # (etcd's gRPC proxy: etcd-io/etcd#19710); from then on, on this
                        # stream, probes replace progress requests (no error log per request).
                        self._send_probe()
        finally:
            fresh, self._fresh = self._fresh, None
            tasks: list[asyncio.Task[Any]] = [reader, writer]
            if fresh is not None:
                tasks.append(fresh)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _check_behind(self, ch: Channel) -> None:
        """Raise :class:`_Behind` when the member's answers said a revision below what the
        client knew for STALL_AFTER seconds (unless every endpoint did: see
        :meth:`_lagged_past_every_endpoint`)."""
        since = self._behind_since
        if not since or time.monotonic() - since <= STALL_AFTER:
            return
        if self._lagged_past_every_endpoint():
            self._behind_since = 0.0
            return
        at, known = self._behind
        raise _Behind(
            f"watch stream at {ch.endpoint}: the member is behind the cluster for "
            f"{time.monotonic() - since:.1f} s (it says revision {at}; the cluster had reached "
            f"{known}): its leader's log does not reach it, or it is catching up"
        )

    def _check_fresh(self, ch: Channel, asked: bool) -> None:
        """Ask the stream's member for a linearizable read every FRESH_EVERY seconds (while
        there are watchers, see FRESH_EVERY); raise :class:`_Behind` when the last one had no
        answer within FRESH_WAIT seconds."""
        fresh = self._fresh
        if fresh is not None:
            if not fresh.done():
                return
            self._fresh = None
            if not fresh.cancelled() and fresh.result() is False:
                raise _Behind(
                    f"watch stream at {ch.endpoint}: a linearizable read there had no answer "
                    f"within {FRESH_WAIT:g} s: the member cannot catch up with its cluster "
                    "(its leader's log does not reach it?)"
                )
        now = time.monotonic()
        if (
            asked
            and now - self._fresh_sent >= FRESH_EVERY
            and now - self._conn.answered_at >= FRESH_EVERY
            and len(self._conn.endpoints) > 1
        ):
            self._fresh_sent = now
            self._fresh = asyncio.get_running_loop().create_task(
                self._read_fresh(ch), name="etcdkit-watch-freshness"
            )

    async def _read_fresh(self, ch: Channel) -> bool:
        """Whether the member behind ``ch`` answered a linearizable read within FRESH_WAIT
        (an answer raises ``conn.revision`` to the cluster's; an error answers too)."""
        try:
            async with asyncio.timeout(FRESH_WAIT):
                await self._conn.call(
                    "watch stream freshness read",
                    "kv",
                    "Range",
                    rpc.RangeRequest(key=PROBE_KEY, count_only=True),
                    idempotent=True,
                    channel=ch,
                    check=True,
                )
        except (TimeoutError, ConnectionUnavailableError):
            return False
        except EtcdkitError:
            pass  # (no permission to read it, say: the member answered)
        return True

    async def _reader(self, call: Any, backoff: Backoff) -> None:
        while True:
            resp = await call.read()
            if resp is grpc.aio.EOF:
                return
            self._heard = time.monotonic()
            self._conn.answered = True
            self._failing = False
            self._dispatch(resp, backoff)

    def _dispatch(self, resp: Any, backoff: Backoff) -> None:
        now = self._heard
        wid = resp.watch_id
        if resp.created:
            sub = self._answered(wid)
            if sub is None:
                log.warning(
                    "watch stream at %s: unexpected created response for id %d",
                    self._conn.where,
                    wid,
                )
                return
            if sub is self._probe:
                self._probe_answered(resp, sub.confirmed_at, now)
                return
            if sub.ended:
                self._queue_write(
                    rpc.WatchRequest(cancel_request=rpc.WatchCancelRequest(watch_id=wid))
                )
                return
            if resp.canceled:
                if self._token_refused(resp.cancel_reason):
                    raise _TokenRefused(f"watch on {sub.key!r} refused: {resp.cancel_reason}")
                self._end(sub, resp)
                return
            backoff.reset()
            sub.watch_id = wid
            self._by_id[wid] = sub
            if sub.next_rev == 0:
                sub.next_rev = resp.header.revision + 1
            # Tells on_status whether etcd had already reached next_rev: such a watch starts in
            # etcd's "unsynced" group, caught up every 100 ms (see _queue's _wait_deleted).
            sub.header_revision = resp.header.revision
            sub.connected = True
            if resp.header.revision >= self._stream_floor:  # (else: a member behind, see below)
                sub.confirmed_at = now
            sub.on_status(True, None)
            return
        if resp.canceled:
            sub_c = self._by_id.pop(wid, None)
            if sub_c is not None:
                if self._token_refused(resp.cancel_reason):
                    raise _TokenRefused(f"watch on {sub_c.key!r} canceled: {resp.cancel_reason}")
                # etcd ended it on its own (its start revision compacted, say) but keeps the
                # watcher on this stream until the client cancels it, as Go's client does.
                # (etcd confirms with one more "canceled", for an id no longer known here.)
                self._queue_write(
                    rpc.WatchRequest(cancel_request=rpc.WatchCancelRequest(watch_id=wid))
                )
                self._end(sub_c, resp)
            return
        events = resp.events  # (each access of a message's field builds a new wrapper)
        if events:
            sub_e = self._by_id.get(wid)
            if sub_e is None or sub_e.ended:
                return
            delivered = _events(events, sub_e.prev_kv)
            sub_e.next_rev = delivered[-1].kv.mod_revision + 1
            sub_e.header_revision = resp.header.revision
            sub_e.confirmed_at = now
            sub_e.on_events(delivered)
            return
        # A progress notification.
        rev = resp.header.revision
        if wid == -1:
            self._progress_answered(rev, now)
            return
        # A per-watch progress notification (progress_notify=True) travels on the watcher's own
        # channel, after every event it covers: everything up to header.revision was delivered.
        one = self._by_id.get(wid)
        if one is None or one.ended:
            return
        if rev >= self._stream_floor:  # (else: from a member behind, see _progress_answered)
            one.confirmed_at = now
        if rev + 1 >= one.next_rev:  # (each one, as Go's client hands them out, moved on or not)
            if rev + 1 > one.next_rev:
                one.next_rev = rev + 1
                one.header_revision = rev
            one.on_progress(rev)

    def _progress_answered(self, rev: int, now: float) -> None:
        """The answer to a progress *request*: the stream is alive, and every watcher is as
        current as the member. Its revision is not delivered: etcd < 3.5.8 / 3.4.24 sends it
        on a control channel that can overtake events still queued for the watchers
        (etcd-io/etcd#15220), so advancing to it could skip those events.

        But it tells whether the member is current. Below the revision the client knew the
        cluster had reached when it asked, the member is behind: cut off from its leader's
        log (a black hole that lets heartbeats through keeps it a follower with a leader) or
        catching up. Its silence about newer changes then proves nothing: the watchers are
        not confirmed, and a member behind for STALL_AFTER seconds loses the stream, which
        moves to the next endpoint. (A follower applies what the leader committed a few ms
        later: one answer behind, followed by a current one, moves nothing.)"""
        self._progress_out = 0.0
        self._member_says(rev, self._progress_floor, now)

    def _member_says(self, rev: int, floor: int, now: float) -> None:
        """The member answered a progress request or a probe with its revision ``rev``; the
        client knew the cluster had reached ``floor`` when it asked. Confirm every watcher,
        unless the member is behind."""
        if rev < floor:
            if not self._behind_since:
                log.debug("watch stream: the member says revision %d, below %d", rev, floor)
                self._behind_since = now
            self._behind = (rev, floor)
            return
        self._behind_since = 0.0
        self._lags_in_a_row = 0
        self._confirm_all(now)

    def _lagged_past_every_endpoint(self) -> bool:
        """Every endpoint had its turn and each stayed behind the revision the client saw:
        etcd's revision went back (restored from an older backup, or another cluster behind
        the same addresses), not a member behind its cluster. The client then takes the
        revision etcd says now (and says so): else its watches would hop between members,
        unconfirmed, for good."""
        if self._lags_in_a_row < len(self._conn.endpoints):
            return False
        at, known = self._behind
        log.warning(
            "watch stream: every etcd endpoint says revision %d or less, below %d that the "
            "client saw: etcd's revision went back (restored from an older backup?); taking "
            "its revision as it is now. Watches resumed past it wait for revisions past their "
            "own: reopen them",
            at,
            known,
        )
        self._conn.revision = self._stream_floor = at
        self._lags_in_a_row = 0
        return True

    def _confirm_all(self, now: float) -> None:
        for sub in self._by_id.values():
            if not sub.ended:
                sub.confirmed_at = now

    def _probe_answered(self, resp: Any, sent: float, now: float) -> None:
        # A watch created from "now" came back through the stream, from etcd (etcd's gRPC
        # proxy joins such a watch to no running one, so etcd itself answers): the stream and
        # the path to etcd are alive. Like a progress answer, it is liveness only.
        self._probe = None
        if not resp.canceled:
            self._queue_write(
                rpc.WatchRequest(cancel_request=rpc.WatchCancelRequest(watch_id=resp.watch_id))
            )
        if self._progress_out and self._progress_out <= sent:
            if not self._deaf:
                log.info(
                    "watch stream: %s does not answer progress requests (etcd's gRPC "
                    "proxy?); probing with watch creates instead",
                    self._conn.where,
                )
            self._deaf = True
        self._member_says(resp.header.revision, self._probe_floor, now)

    def _end(self, sub: WatchSub, resp: Any) -> None:
        self._subs.discard(sub)
        sub.ended = True
        sub.connected = False
        if resp.compact_revision:
            err: EtcdkitError = CompactedError(
                f"watch on {sub.key!r} from revision {sub.next_rev} at {self._conn.where}: "
                f"history was compacted up to revision {resp.compact_revision} (read the keys "
                "again, then watch from that read's revision + 1)",
                compact_revision=resp.compact_revision,
            )
        else:
            err = WatchEndedError(
                f"etcd at {self._conn.where} canceled the watch on {sub.key!r}: "
                f"{resp.cancel_reason or 'no reason given'}"
            )
        sub.on_end(err)
