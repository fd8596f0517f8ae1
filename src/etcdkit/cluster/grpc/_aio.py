"""The ``grpc.aio`` routed channel and its calls (see :mod:`etcdkit.cluster.grpc`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import grpc
import grpc.aio

from etcdkit._errors import ClosedError
from etcdkit.cluster._api import Cluster
from etcdkit.cluster._registry import Registry, RegistryView
from etcdkit.cluster.grpc._calls import RoutedCall, RoutedUnaryStreamCall, RoutedUnaryUnaryCall
from etcdkit.cluster.grpc._channel import ChannelMethods, MultiCallable, Router, check_cluster
from etcdkit.cluster.grpc._routing import (
    DEFAULT_ATTEMPTS,
    DEFAULT_GRACE,
    DEFAULT_OPTIONS,
    Attempts,
    KeyFunction,
    Targets,
)

__all__ = ["RoutedChannel"]

log = logging.getLogger("etcdkit.cluster.grpc")

_AioMultiCallable = MultiCallable[grpc.aio.Channel]
R = TypeVar("R", bound=RoutedCall)


def _rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


class _AioUnary(_AioMultiCallable, Generic[R]):
    """Calls with one request: a routed call, which moves to the next node on UNAVAILABLE."""

    _routed: Callable[[Targets, Attempts, Any, dict[str, Any]], R]

    def __call__(
        self,
        request: Any,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> R:
        attempts = self.router.attempts(request, timeout)
        options = {
            "metadata": metadata,
            "credentials": credentials,
            "wait_for_ready": wait_for_ready,
            "compression": compression,
        }
        return self._routed(self.targets, attempts, request, options)


class _AioUnaryUnary(_AioUnary[RoutedUnaryUnaryCall], grpc.aio.UnaryUnaryMultiCallable):  # type: ignore[misc]
    _routed = RoutedUnaryUnaryCall


class _AioUnaryStream(_AioUnary[RoutedUnaryStreamCall], grpc.aio.UnaryStreamMultiCallable):  # type: ignore[misc]
    _routed = RoutedUnaryStreamCall


class _AioStreamAny(_AioMultiCallable):
    """Client- and bidi-streaming calls: to the owner (or a weighted random node), no retry."""

    def __call__(
        self,
        request_iterator: Any = None,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        _, channel, left = self.router.first_of_stream(timeout)
        return self.target(channel)(
            request_iterator,
            timeout=left,
            metadata=metadata,
            credentials=credentials,
            wait_for_ready=wait_for_ready,
            compression=compression,
        )


grpc.aio.StreamUnaryMultiCallable.register(_AioStreamAny)
grpc.aio.StreamStreamMultiCallable.register(_AioStreamAny)

_AioMethods = ChannelMethods[grpc.aio.Channel, _AioUnaryUnary, _AioUnaryStream, _AioStreamAny]


class RoutedChannel(_AioMethods, grpc.aio.Channel):  # type: ignore[misc]
    """A ``grpc.aio`` channel over the nodes of a cluster; see the module docstring.

    ``RoutedChannel(cluster, key=None, attempts=3, channel_factory=None, grace=5.0)``:

    - *cluster*: an open asyncio cluster (etcd-backed or :class:`MemoryCluster`); its members
      whose data is a :class:`NodeDescriptor` are the nodes. Anything else (a blocking
      cluster: use :class:`RoutedSyncChannel`) raises TypeError.
    - *key*: ``key(request) -> str | bytes | None``, the routing key of a unary or
      server-streaming call's request when no :func:`route_key` block sets one. Calls whose
      requests are a stream (client-streaming, bidi) have no request to ask it about: they go
      to the owner of their ``route_key`` block's key, else to a random node.
    - *attempts*: how many distinct nodes a unary call may try.
    - *channel_factory*: ``factory(address) -> grpc.aio.Channel`` (TLS, options, interceptors);
      default: an insecure channel with keepalive pings (:data:`DEFAULT_OPTIONS`).
    - *grace*: seconds the calls on a node that left may still take before its channel is
      closed (they are then retried elsewhere, as on ``UNAVAILABLE``).
    - *first_view*: for a cluster whose first view may still be loading, ``first_view()``
      waits for it (e.g. ``lambda: cluster.synced(timeout)``). Until it returns (or fails),
      unary and server-streaming calls wait, within their own deadline, as grpc's calls wait
      for a new channel's first name resolution; then they are routed on the view.

    Create it inside the event loop of the cluster; it follows the cluster's view in a task
    until :meth:`close` (or ``async with``). Once the cluster closes (its members leave with
    it), calls raise ``grpc.aio.UsageError`` saying so, and the node channels close after
    *grace*; close the channel then. ``view`` is the :class:`RegistryView` it routes
    on; ``owner(key)`` the node a key goes to.
    """

    _unary_unary_type = _AioUnaryUnary
    _unary_stream_type = _AioUnaryStream
    _stream_type = _AioStreamAny

    def __init__(
        self,
        cluster: Cluster,
        *,
        key: KeyFunction | None = None,
        attempts: int = DEFAULT_ATTEMPTS,
        channel_factory: Callable[[str], grpc.aio.Channel] | None = None,
        grace: float = DEFAULT_GRACE,
        first_view: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        check_cluster(cluster, "RoutedChannel", blocking=False)
        self._router: Router[grpc.aio.Channel] = Router(
            "RoutedChannel",
            key=key,
            attempts=attempts,
            grace=grace,
            factory=channel_factory or _insecure_aio,
            error=_rpc_error,
            closed_error=grpc.aio.UsageError,
        )
        self._registry = Registry(cluster)
        self._leaving: dict[asyncio.Task[None], grpc.aio.Channel] = {}  # closing after grace
        self._changed = asyncio.Event()  # replaced (after being set) on every view change
        self._router.nodes.update(self._registry.view)
        self._task = asyncio.get_running_loop().create_task(
            self._follow(), name="etcdkit-routed-channel"
        )
        self._first_view: asyncio.Task[None] | None = None
        if first_view is not None:
            gate = self._router.nodes.first_view = asyncio.get_running_loop().create_future()
            self._first_view = asyncio.get_running_loop().create_task(
                self._see_first_view(first_view, gate), name="etcdkit-routed-channel-first-view"
            )

    # -- grpc.aio.Channel (and the methods of ChannelMethods) -----------------------------------

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        """The best state of the node channels (READY if one is ready); SHUTDOWN once closed
        (or its cluster is), TRANSIENT_FAILURE while there is no node."""
        if self._router.closed or self._router.ended is not None:
            return grpc.ChannelConnectivity.SHUTDOWN
        channels = self._router.nodes.channels.values()
        states = {ch.get_state(try_to_connect) for _, ch in channels}
        for state in _STATE_ORDER:
            if state in states:
                return state
        return grpc.ChannelConnectivity.TRANSIENT_FAILURE

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        """Return once :meth:`get_state` differs from *last_observed_state*."""
        while self.get_state() == last_observed_state:
            channels = [ch for _, ch in self._router.nodes.channels.values()]
            waits = [
                asyncio.ensure_future(ch.wait_for_state_change(ch.get_state())) for ch in channels
            ]
            waits.append(asyncio.ensure_future(self._changed.wait()))
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
                await asyncio.gather(*waits, return_exceptions=True)

    async def channel_ready(self) -> None:
        """Wait until a node channel is READY (use with a timeout)."""
        while (state := self.get_state(try_to_connect=True)) != grpc.ChannelConnectivity.READY:
            if state is grpc.ChannelConnectivity.SHUTDOWN:
                raise self._router.closed_error()
            await self.wait_for_state_change(state)

    async def close(self, grace: float | None = None) -> None:
        """Stop following the cluster and close every node channel (calls in flight get
        *grace* seconds, then end with CANCELLED). Idempotent."""
        if not self._router.mark_closed():
            return
        self._view_changed()
        for task in (self._first_view, self._task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        gate, self._router.nodes.first_view = self._router.nodes.first_view, None
        if gate is not None and not gate.done():  # (its task was cancelled before it ran)
            gate.set_result(None)
        channels = [*self._router.nodes.take_all(), *self._leaving.values()]
        await asyncio.gather(*(ch.close(grace) for ch in channels), *list(self._leaving))

    async def __aenter__(self) -> RoutedChannel:
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        await self.close()

    # -- internals -------------------------------------------------------------------------------

    async def _follow(self) -> None:
        try:
            async for view in self._registry.watch():
                self._route_on(view)
        except ClosedError as exc:  # the client's close closed the cluster: an orderly end
            why: str | None = str(exc)
        except Exception as exc:  # the cluster's view ended on a failure: keep the last view
            log.error("routed channel: the cluster view ended (%s); keeping the last one", exc)
            return
        else:
            why = None
        # (our own close cancels this task first: this is the cluster's close)
        self._router.end(why)
        log.info("routed channel: %s", self._router.ended)
        self._route_on(RegistryView.from_members((), self._router.nodes.view.revision))

    async def _see_first_view(
        self, first_view: Callable[[], Awaitable[object]], gate: asyncio.Future[None]
    ) -> None:
        """Wait for the first view; route on it (if the view task did not yet); open the
        gate that calls made meanwhile wait at. A failure opens it too: they go on without."""
        try:
            await first_view()
            view = self._registry.view
            if self._router.nodes.view.revision < view.revision:
                self._route_on(view)
        except Exception as exc:
            log.info("routed channel: no first view (%s); calls go on without one", exc)
        finally:
            self._router.nodes.first_view = None
            if not gate.done():
                gate.set_result(None)

    def _route_on(self, view: RegistryView) -> None:
        """Route on *view* from now on; the channels of nodes that left close after grace."""
        for channel in self._router.nodes.update(view):
            task = asyncio.get_running_loop().create_task(
                channel.close(self._router.grace), name="etcdkit-routed-channel-close"
            )
            self._leaving[task] = channel
            task.add_done_callback(self._leaving.pop)
        self._view_changed()

    def _view_changed(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()


_STATE_ORDER = (
    grpc.ChannelConnectivity.READY,
    grpc.ChannelConnectivity.CONNECTING,
    grpc.ChannelConnectivity.IDLE,
    grpc.ChannelConnectivity.TRANSIENT_FAILURE,
    grpc.ChannelConnectivity.SHUTDOWN,
)


def _insecure_aio(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, options=list(DEFAULT_OPTIONS))
