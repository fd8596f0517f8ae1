"""The core a client gives its recipes: typed KV, the shared watch hub, lease sessions, the retry
policy, and the client's lifecycle (open/closed, which event loop, what it owns).

Recipes (wait, prefix watch, persistent lease, election, lock, cluster) are handed a
:class:`Core` and use nothing else: never the client object, never a wire message.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import logging
from asyncio.events import _get_running_loop
from collections.abc import Awaitable, Callable
from typing import Protocol

from etcdkit._errors import ClosedError, WrongContextError, mark_retrieved
from etcdkit._key_watches import KeyWatches
from etcdkit._metrics import ClientStats
from etcdkit._retry import RetryPolicy
from etcdkit._wire.conn import Connection
from etcdkit._wire.keepalive import KeepAliveHub
from etcdkit._wire.kv import KV
from etcdkit._wire.watch_hub import WatchHub

__all__ = ["Core", "CoreState", "SupportsCore", "core_of"]


class SupportsCore(Protocol):
    """An object that carries a core: :class:`AsyncClient` does."""

    @property
    def core(self) -> Core: ...


def core_of(owner: Core | SupportsCore) -> Core:
    """The core of ``owner`` (an :class:`AsyncClient`, or a core itself)."""
    if isinstance(owner, Core):
        return owner
    core = getattr(owner, "core", None)
    if not isinstance(core, Core):
        raise TypeError(f"expected an etcdkit.AsyncClient, got {owner!r:.80}")
    return core


log = logging.getLogger("etcdkit.client")

# True in the close's own task (and the tasks it starts) while it closes what the client
# adopted: their close() may still call etcd (a recipe deleting its key), while every other
# call is refused from the moment the close begins.
_closing_children: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "etcdkit_closing_children", default=False
)


class CoreState(enum.Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class Core:
    """See the module docstring. Made unopened (no I/O); :meth:`open` in the loop that will
    use it; :meth:`close` ends everything it owns."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.kv = KV(conn)
        self._watches: WatchHub | None = None
        self._key_watches: KeyWatches | None = None
        self._keepalives: KeepAliveHub | None = None
        # closed after the children, before the streams (the client's pool of shared sessions)
        self.after_children: list[Callable[[], Awaitable[None]]] = []
        # what the client owns (watches, leases...) -> how the client closes it
        self._children: dict[object, Callable[[], Awaitable[None]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.state = CoreState.UNOPENED
        self._closed = asyncio.Event()  # set once a close() has ended: what another waits for
        self._closing: asyncio.Future[None] | None = None  # the close under way (a task)

    @property
    def where(self) -> str:
        return self.conn.where

    @property
    def retry(self) -> RetryPolicy:
        return self.conn.retry

    @property
    def watches(self) -> WatchHub:
        self._check_usable()
        assert self._watches is not None
        return self._watches

    @property
    def key_watches(self) -> KeyWatches:
        """Watches of single keys, sharing etcd watches when many start together."""
        if self.state is not CoreState.OPEN:
            self._check_usable()
        assert self._key_watches is not None
        return self._key_watches

    @property
    def keepalives(self) -> KeepAliveHub:
        self._check_usable()
        assert self._keepalives is not None
        return self._keepalives

    def stats(self) -> ClientStats:
        """The client's figures so far (a :class:`ClientStats` snapshot); no I/O, also after
        close."""
        meter = self.conn.meter
        watches, keepalives = self._watches, self._keepalives
        live, unconfirmed = (0, 0) if watches is None else watches.counts()
        return ClientStats(
            calls=meter.calls,
            errors=dict(meter.errors),
            failovers=self.conn.failovers,
            watch_reconnects=0 if watches is None else watches.reconnects,
            keepalive_reconnects=0 if keepalives is None else keepalives.reconnects,
            watches=live,
            watches_unconfirmed=unconfirmed,
            waiting=0 if self._key_watches is None else self._key_watches.waiting(),
            answered=self.conn.answered,
            last_error=self.conn.last_error,
        )

    # -- lifecycle --------------------------------------------------------------------------------

    def open(self) -> None:
        if self.state is CoreState.CLOSED or self.state is CoreState.CLOSING:
            raise ClosedError("this etcdkit client was closed; create a new one")
        if self.state is CoreState.UNOPENED:
            self._loop = asyncio.get_running_loop()
            self.conn.open()
            self._watches = WatchHub(self.conn)
            self._key_watches = KeyWatches(self._watches)
            self._keepalives = KeepAliveHub(self.conn)
            self.state = CoreState.OPEN

    def check_loop(self) -> None:
        """Raise :class:`WrongContextError` when called from another event loop than the one
        the client was opened in (grpc.aio objects belong to one loop)."""
        loop = self._loop
        if loop is None or _get_running_loop() is loop:
            return  # (the common case: one call, on every entry point)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            raise WrongContextError(
                "this etcdkit AsyncClient was used outside its event loop; call it from "
                "coroutines running in the loop that opened it (or use etcdkit.Client from "
                "threads)"
            ) from None
        if running is not self._loop:
            raise WrongContextError(
                "this etcdkit AsyncClient belongs to another event loop (it was opened in "
                f"{self._loop!r}); open one AsyncClient per event loop, or use etcdkit.Client, "
                "which runs its own loop thread and may be called from any thread"
            )

    def check_open(self, *, closing_ok: bool = False) -> None:
        """For every entry point: the client is open (or, with ``closing_ok``, closing: what
        it closes still revokes its leases), and this is its event loop."""
        if self.state is CoreState.OPEN and _get_running_loop() is self._loop:
            return  # (the common case)
        if self.state is not CoreState.OPEN and not (
            (closing_ok or _closing_children.get()) and self.state is CoreState.CLOSING
        ):
            self._check_usable()
            raise ClosedError("this etcdkit client is closing; create a new one")
        self.check_loop()

    def _check_usable(self) -> None:
        # While closing, the children still use the core to remove their keys.
        if self.state is CoreState.UNOPENED:
            raise ClosedError("the client is not open: use 'async with AsyncClient(...)'")
        if self.state is CoreState.CLOSED:
            raise ClosedError("this etcdkit client is closed; create a new one")

    def adopt(self, child: object, close: Callable[[], Awaitable[None]]) -> None:
        """``child`` closes with the client, through ``close()``. Not once the close began,
        not even from what it closes (which may call etcd): the close would never close it."""
        if self.state is CoreState.CLOSING:
            raise ClosedError("this etcdkit client is closing; create a new one")
        self.check_open()
        self._children[child] = close

    def disown(self, child: object) -> None:
        self._children.pop(child, None)

    async def close(self) -> None:
        """Close every child at once (bounded: each revoke/delete has its own bound), then the
        streams, the pooled sessions and the channels. Everything in flight ends with
        :class:`ClosedError`. Idempotent: a close while another is under way waits for it."""
        if self.state is CoreState.CLOSED:
            return
        if self.state is CoreState.CLOSING:
            await self._closed.wait()
            return
        was_open = self.state is CoreState.OPEN
        if was_open:
            self.check_loop()
        self.state = CoreState.CLOSING
        self.conn.end_calls()  # what callers wait for ends now, not after the revokes
        # The close runs to its end in a task of its own: a caller cancelled meanwhile (a
        # timeout around close(), a task cancelled at shutdown) leaves it revoking what the
        # client held, and a close() after that waits for it, as any close under way.
        closing = self._closing = asyncio.ensure_future(self._close(was_open))
        closing.add_done_callback(mark_retrieved)
        await asyncio.shield(closing)

    async def _close(self, was_open: bool) -> None:
        try:
            # The streams end now too: watches and keepalives in flight end with ClosedError
            # at once, not after the children's revokes (each bounded, 2 s with etcd hung).
            # The children need neither to close (a session is not lost by it: it revokes).
            if self._watches is not None:
                await self._watches.close()
            if self._keepalives is not None:
                await self._keepalives.close()
            _closing_children.set(True)  # (this task's own context: see its definition)
            children = list(self._children.items())
            done = await asyncio.gather(*(close() for _, close in children), return_exceptions=True)
            for (child, _), result in zip(children, done, strict=True):
                if isinstance(result, Exception):  # (the others closed all the same)
                    log.error("closing %r with its client failed", child, exc_info=result)
                elif isinstance(result, BaseException):
                    raise result
            for close in self.after_children:
                await close()
            if self._watches is not None:
                await self._watches.close()
            if self._keepalives is not None:
                await self._keepalives.close()
        finally:
            self.state = CoreState.CLOSED
            self.kv.end()
            try:
                if was_open:
                    await self.conn.close()
            finally:
                self._closed.set()
