"""What the asyncio and the blocking routed channel share, whatever their grpc flavour: the
router (node table, routing key, attempts, open or closed), grpc's four channel methods and
the start of a multicallable. Each face adds its own node channels, follower and calls."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from etcdkit.cluster._descriptor import NodeDescriptor
from etcdkit.cluster._registry import RegistryView
from etcdkit.cluster.grpc._routing import (
    Attempts,
    Balancer,
    ErrorFactory,
    KeyFunction,
    Nodes,
    Targets,
    check_args,
    check_cluster,
    check_factory,
    route_of,
)

__all__ = ["ChannelMethods", "MultiCallable", "Router", "check_cluster"]

C = TypeVar("C")  # a node channel: grpc.aio.Channel or grpc.Channel
# a face's multicallables: unary-unary, unary-stream, and both kinds with a request stream
UU = TypeVar("UU")
US = TypeVar("US")
SA = TypeVar("SA")

Serializer = Callable[[Any], bytes] | None
Deserializer = Callable[[bytes], Any] | None


class Router(Generic[C]):
    """The routing state of one routed channel: its checked arguments, one channel per node
    (opened by *factory* from the node's address), and whether it is closed.

    *error* makes the routing's own failures (no node, deadline), *closed_error* the error of
    a call on a closed channel: each face raises grpc's errors of its flavour. A *key* that is
    a :class:`Balancer` balances the calls by its policy instead of routing them by key.
    """

    def __init__(
        self,
        name: str,
        *,
        key: KeyFunction | None,
        attempts: int,
        grace: float,
        factory: Callable[[str], C],
        error: ErrorFactory,
        closed_error: Callable[[str], Exception],
    ) -> None:
        check_args(key, attempts, grace)
        check_factory(factory)
        self.name = name
        balancer = key if isinstance(key, Balancer) else None
        self.key = None if balancer is not None else key
        self.max_attempts = attempts
        self.grace = grace
        self.nodes: Nodes[C] = Nodes(lambda node: factory(node.address), balancer)
        self.closed = False
        # Why calls fail now that the cluster followed has closed (None: it is open). Its
        # members were deregistered with it: routing on its last view would reach nodes gone.
        self.ended: str | None = None
        self._error = error
        self._closed_error = closed_error

    def describe(self) -> str:
        """The channel's repr: ``<RoutedChannel open 3 nodes, 3 with weight, rev 7>``."""
        state = "closed" if self.closed else "open (its cluster closed)" if self.ended else "open"
        return f"<{self.name} {state} {self.nodes.describe()}>"

    def closed_error(self) -> Exception:
        if not self.closed and self.ended is not None:
            return self._closed_error(self.ended)
        return self._closed_error(f"the {self.name} is closed")

    def end(self, why: str | None) -> None:
        """The cluster followed closed (*why*: how, if known): from now on every call fails
        with :meth:`closed_error`, which says so."""
        how = "" if why is None else f" ({why})"
        self.ended = (
            f"the cluster of this {self.name} was closed{how}; its calls fail from now on: "
            f"close the {self.name} (and route on an open cluster)"
        )

    def mark_closed(self) -> bool:
        """Mark the channel closed: True the first time, False if it already was."""
        if self.closed:
            return False
        self.closed = True
        return True

    def attempts(
        self, request: Any, timeout: float | None, attempts: int | None = None
    ) -> Attempts:
        """The attempts of a new call (at most *attempts* nodes, default the channel's);
        raises :meth:`closed_error` once the channel, or the cluster it follows, is closed."""
        if self.closed or self.ended is not None:
            raise self.closed_error()
        limit = self.max_attempts if attempts is None else attempts
        key = None if self.nodes.balancer is not None else route_of(self.key, request)
        return Attempts(self.nodes, key, timeout, limit, self._error)

    def first(self, request: Any, timeout: float | None) -> tuple[str, C, float | None]:
        """(node id, node channel, timeout) of a call that is not retried."""
        return self.attempts(request, timeout, 1).next()

    def first_of_stream(self, timeout: float | None) -> tuple[str, C, float | None]:
        """(node id, node channel, timeout) of a call whose requests are a stream: routed by
        its :func:`route_key` block, else at random. The key function is not asked: it takes
        a request, and such a call has none when it starts (reading the first one from the
        iterator first would block a call whose server speaks first, and the asyncio call
        must start before anything is awaited)."""
        if self.closed or self.ended is not None:
            raise self.closed_error()
        key = None if self.nodes.balancer is not None else route_of(None, None)
        return Attempts(self.nodes, key, timeout, 1, self._error).next()


class ChannelMethods(Generic[C, UU, US, SA]):
    """The channel methods both faces answer alike: the repr, ``view``, ``owner`` and grpc's
    four multicallable factories.

    The face sets ``_router`` and names its multicallable types: ``_unary_unary_type``,
    ``_unary_stream_type`` and ``_stream_type`` (both kinds whose requests are a stream);
    each is made as ``type(router, kind, method, serializer, deserializer)``.
    """

    _router: Router[C]
    _unary_unary_type: Callable[[Router[C], str, str, Serializer, Deserializer], UU]
    _unary_stream_type: Callable[[Router[C], str, str, Serializer, Deserializer], US]
    _stream_type: Callable[[Router[C], str, str, Serializer, Deserializer], SA]

    def __repr__(self) -> str:
        return self._router.describe()

    @property
    def view(self) -> RegistryView:
        """The registry view calls are routed on now."""
        return self._router.nodes.view

    def owner(self, key: str | bytes) -> NodeDescriptor | None:
        """The node a call with routing key *key* goes to first (None: no node has weight)."""
        return self._router.nodes.view.owner(key)

    def unary_unary(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        _registered_method: bool | None = False,
    ) -> UU:
        return self._unary_unary_type(
            self._router, "unary_unary", method, request_serializer, response_deserializer
        )

    def unary_stream(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        _registered_method: bool | None = False,
    ) -> US:
        return self._unary_stream_type(
            self._router, "unary_stream", method, request_serializer, response_deserializer
        )

    def stream_unary(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        _registered_method: bool | None = False,
    ) -> SA:
        return self._stream_type(
            self._router, "stream_unary", method, request_serializer, response_deserializer
        )

    def stream_stream(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        _registered_method: bool | None = False,
    ) -> SA:
        return self._stream_type(
            self._router, "stream_stream", method, request_serializer, response_deserializer
        )


class MultiCallable(Generic[C]):
    """What a face's multicallable starts from: the router of its channel, its call kind
    ("unary_unary", ...) and the node channels' multicallables of its method."""

    def __init__(
        self,
        router: Router[C],
        kind: str,
        method: str,
        serializer: Serializer,
        deserializer: Deserializer,
    ) -> None:
        self.router = router
        self.kind = kind
        self.targets = Targets(method, serializer, deserializer)

    def target(self, channel: C) -> Any:
        """The multicallable of this method and kind on node channel *channel*."""
        return self.targets.get(self.kind, channel)
