"""The blocking routed channel (``grpc.Channel``; see :mod:`etcdkit.cluster.grpc`)."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

import grpc

from etcdkit._errors import ClosedError
from etcdkit.cluster._member import Member
from etcdkit.cluster._registry import RegistryView
from etcdkit.cluster.grpc._channel import ChannelMethods, MultiCallable, Router, check_cluster
from etcdkit.cluster.grpc._routing import (
    DEFAULT_ATTEMPTS,
    DEFAULT_GRACE,
    DEFAULT_OPTIONS,
    KeyFunction,
)

__all__ = ["RoutedSyncChannel", "RoutingError"]

log = logging.getLogger("etcdkit.cluster.grpc")


class _SyncAny(MultiCallable[grpc.Channel]):
    """A blocking multicallable: the first attempt's node; no retry (streams, futures)."""

    def _first(self, request: Any, timeout: float | None) -> tuple[Any, float | None]:
        if self.kind.startswith("stream"):  # (a request iterator: route_key alone routes it)
            _, channel, left = self.router.first_of_stream(timeout)
        else:
            _, channel, left = self.router.first(request, timeout)
        return self.target(channel), left

    def __call__(self, request: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        target, left = self._first(request, timeout)
        return target(request, timeout=left, **kwargs)

    def with_call(self, request: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        target, left = self._first(request, timeout)
        return target.with_call(request, timeout=left, **kwargs)

    def future(self, request: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        target, left = self._first(request, timeout)
        return target.future(request, timeout=left, **kwargs)


class _SyncUnaryUnary(_SyncAny):
    """Blocking unary calls with the retry of the module docstring."""

    def __call__(self, request: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        return self._retrying(request, timeout, kwargs, with_call=False)

    def with_call(self, request: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        return self._retrying(request, timeout, kwargs, with_call=True)

    def _retrying(
        self, request: Any, timeout: float | None, kwargs: dict[str, Any], *, with_call: bool
    ) -> Any:
        attempts = self.router.attempts(request, timeout)
        while True:
            node, channel, left = attempts.next()
            target = self.target(channel)
            try:
                if with_call:
                    return target.with_call(request, timeout=left, **kwargs)
                return target(request, timeout=left, **kwargs)
            except ValueError:  # "Cannot invoke RPC on closed channel!": the node left
                attempts.node_left(node)
            except grpc.RpcError as exc:
                code = exc.code() if isinstance(exc, grpc.Call) else None
                if code is grpc.StatusCode.UNAVAILABLE:
                    attempts.failed(exc)
                elif code is grpc.StatusCode.CANCELLED and self.router.nodes.left(node, channel):
                    attempts.node_left(node)
                else:
                    raise


_SyncMethods = ChannelMethods[grpc.Channel, _SyncUnaryUnary, _SyncAny, _SyncAny]


class RoutedSyncChannel(_SyncMethods, grpc.Channel):  # type: ignore[misc]
    """The blocking twin of :class:`RoutedChannel` (a ``grpc.Channel``) over a
    :class:`etcdkit.cluster.SyncCluster` (``etcdkit.Client.cluster()``); an asyncio cluster
    (``MemoryCluster`` too: it has no blocking face) raises TypeError.

    Same arguments and routing. It follows the cluster in a thread of its own
    (``etcdkit-routed-channel``) until :meth:`close` (or ``with``), which joins it. Once the
    cluster closes, calls raise ``ValueError`` (as grpc's on a closed channel) saying so. Unary
    calls (``stub.Method(req)``, ``.with_call``) retry on the next node on UNAVAILABLE;
    ``.future()``, streaming calls go to the first node picked, without retry.
    ``subscribe()`` reports READY while the view has a node with weight, else
    TRANSIENT_FAILURE (not the nodes' connection states).
    """

    _unary_unary_type = _SyncUnaryUnary
    _unary_stream_type = _SyncAny
    _stream_type = _SyncAny

    def __init__(
        self,
        cluster: Any,
        *,
        key: KeyFunction | None = None,
        attempts: int = DEFAULT_ATTEMPTS,
        channel_factory: Callable[[str], grpc.Channel] | None = None,
        grace: float = DEFAULT_GRACE,
    ) -> None:
        check_cluster(cluster, "RoutedSyncChannel", blocking=True)
        self._router: Router[grpc.Channel] = Router(
            "RoutedSyncChannel",
            key=key,
            attempts=attempts,
            grace=grace,
            factory=channel_factory or _insecure_sync,
            error=RoutingError,
            closed_error=ValueError,
        )
        self._cluster = cluster
        self._lock = threading.Lock()
        self._timers: set[threading.Timer] = set()
        self._subscribers: list[Callable[[grpc.ChannelConnectivity], None]] = []
        self._warned: set[Member] = set()
        self._reported: grpc.ChannelConnectivity | None = None  # told to subscribers last
        self._update(cluster.members, cluster.revision)
        self._watch = cluster.watch_members()
        self._thread = threading.Thread(
            target=self._follow, name="etcdkit-routed-channel", daemon=True
        )
        self._thread.start()

    # -- grpc.Channel (and the methods of ChannelMethods) -----------------------------------------

    def subscribe(
        self, callback: Callable[[grpc.ChannelConnectivity], None], try_to_connect: bool = False
    ) -> None:
        with self._lock:
            self._subscribers.append(callback)
        callback(self._connectivity())

    def unsubscribe(self, callback: Callable[[grpc.ChannelConnectivity], None]) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._subscribers.remove(callback)

    def close(self) -> None:
        """Stop following the cluster (joins the thread) and close every node channel at once.
        Idempotent."""
        with self._lock:
            if not self._router.mark_closed():
                return
            timers, self._timers = list(self._timers), set()
        with contextlib.suppress(Exception):
            self._watch.close()
        if self._thread is not threading.current_thread():
            self._thread.join()
        for timer in timers:
            timer.cancel()
            timer.join()  # (a cancelled timer's thread still has to wake and end: no leak)
            timer.function()
        for channel in self._router.nodes.take_all():
            channel.close()

    def __enter__(self) -> RoutedSyncChannel:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------------

    def _follow(self) -> None:
        try:
            for members in self._watch:
                self._update(members, self._watch.revision)
        except ClosedError as exc:  # the client's close closed the cluster: an orderly end
            why: str | None = str(exc)
        except Exception as exc:
            if not self._router.closed:
                log.error("routed channel: the cluster view ended (%s); keeping the last", exc)
            return
        else:
            why = None
        with self._lock:
            if self._router.closed:  # (our own close ended the watch)
                return
            self._router.end(why)
        log.info("routed channel: %s", self._router.ended)
        self._update((), self._router.nodes.view.revision)

    def _update(self, members: tuple[Member, ...], revision: int) -> None:
        view = RegistryView.from_members(members, revision, previous=self._router.nodes.view)
        for member in view.invalid:
            if member not in self._warned:
                log.warning(
                    "cluster member %r left out of the registry: its data %r is no node descriptor",
                    member.id,
                    member.data[:200],
                )
        self._warned = set(view.invalid)
        with self._lock:
            if self._router.closed:
                return
            for channel in self._router.nodes.update(view):
                timer = threading.Timer(self._router.grace, channel.close)
                timer.name = "etcdkit-routed-channel-close"
                timer.daemon = True
                self._timers.add(timer)
                timer.start()
            self._timers = {t for t in self._timers if t.is_alive()}
            state = self._connectivity()
            if state is self._reported:
                return
            self._reported = state
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback(state)
            except Exception:
                log.exception("routed channel: connectivity callback failed")

    def _connectivity(self) -> grpc.ChannelConnectivity:
        if self._router.closed or self._router.ended is not None:
            return grpc.ChannelConnectivity.SHUTDOWN
        if any(n.weight for n in self._router.nodes.view.nodes.values()):
            return grpc.ChannelConnectivity.READY
        return grpc.ChannelConnectivity.TRANSIENT_FAILURE


def _insecure_sync(address: str) -> grpc.Channel:
    return grpc.insecure_channel(address, options=list(DEFAULT_OPTIONS))


class RoutingError(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    """A failure of the routing itself (no node, node left, deadline), shaped like grpc's own
    errors: ``code()`` and ``details()``."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def initial_metadata(self) -> tuple[()]:
        return ()

    def trailing_metadata(self) -> tuple[()]:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> None:
        return None

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False
