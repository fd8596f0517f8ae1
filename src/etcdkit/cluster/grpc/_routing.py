"""Routing decisions shared by the asyncio and the blocking channel: the routing key of a call,
the node table of the current registry view, and the attempts of one call."""

from __future__ import annotations

import bisect
import contextvars
import inspect
import itertools
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import grpc

from etcdkit.cluster._descriptor import NodeDescriptor
from etcdkit.cluster._registry import RegistryView

__all__ = [
    "DEFAULT_ATTEMPTS",
    "DEFAULT_GRACE",
    "DEFAULT_OPTIONS",
    "Attempts",
    "Balancer",
    "ErrorFactory",
    "KeyFunction",
    "Nodes",
    "Targets",
    "check_args",
    "check_cluster",
    "current_route_key",
    "route_key",
    "route_of",
]

log = logging.getLogger("etcdkit.cluster.grpc")

C = TypeVar("C")

DEFAULT_ATTEMPTS = 3  # nodes a unary call may try: the owner and two failovers
DEFAULT_GRACE = 5.0  # seconds the calls on a node that left may take to finish
# Detect dead peers (black-holed connections) by HTTP/2 pings, so that no call waits forever
# on a node that vanished without closing its connections (one that vanished from etcd too
# leaves the view once its lease expires: its calls then fail over after DEFAULT_GRACE). No
# more often than a gRPC server allows by default (C-core's and Go's: a ping per 5 minutes,
# and none without a call in flight): it answers more with GOAWAY "too_many_pings", which
# ends every call on the connection (a call ended so after it ran was then run again on the
# next node). To a server that allows more, give faster pings through channel_factory.
DEFAULT_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 330_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
)

KeyFunction = Callable[[Any], "str | bytes | None"]
ErrorFactory = Callable[[grpc.StatusCode, str], Exception]

_route: contextvars.ContextVar[bytes | None] = contextvars.ContextVar(
    "etcdkit_route_key", default=None
)


class route_key:  # lower case: used like a function, ``with route_key(key):``
    """Route the calls made inside the block to the owner of *key* (str as UTF-8, or bytes).

    ``with route_key(b"user-42"): await stub.Get(request)``. A contextvar: it holds for this
    task or thread (and tasks started inside the block). ``None`` routes at random again. It
    wins over a channel's ``key`` function. (A class, not a generator: it is on every call's
    path.)
    """

    __slots__ = ("_key", "_token")

    def __init__(self, key: str | bytes | None) -> None:
        self._key = None if key is None else _key_bytes(key)
        self._token: contextvars.Token[bytes | None] | None = None

    def __enter__(self) -> None:
        self._token = _route.set(self._key)

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _route.reset(self._token)
            self._token = None


def current_route_key() -> bytes | None:
    """The routing key set by the innermost :func:`route_key` block, if any."""
    return _route.get()


def route_of(key_function: KeyFunction | None, request: Any) -> bytes | None:
    """The routing key of a call: the :func:`route_key` block's, else ``key_function(request)``."""
    key = _route.get()
    if key is None and key_function is not None:
        got = key_function(request)
        key = None if got is None else _key_bytes(got)
    return key


def _key_bytes(key: object) -> bytes:
    if isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode()
    raise TypeError(f"a routing key must be str or bytes, got {type(key).__name__}")


class Balancer:
    """A balancing policy, passed to a routed channel in place of its ``key`` function.

    Calls then carry no routing key (``route_key`` blocks are ignored): each attempt goes to
    the node ``pick(ids, tried)`` names, given the ids of the nodes with weight (in id order)
    and those this call already tried (never name one of them), or None when none is left.
    etcdkit.naming.grpc balances the endpoints of a target this way (round robin, pick first).
    """

    def __call__(self, request: Any) -> None:
        return None  # as a key function: no routing key

    def pick(self, ids: Sequence[str], tried: Sequence[str]) -> str | None:
        raise NotImplementedError


def check_args(key: object, attempts: object, grace: object) -> None:
    """Refuse bad channel arguments (TypeError / ValueError) before anything is opened."""
    if key is not None and not callable(key):
        raise TypeError(f"key must be a function request -> str | bytes | None, got {key!r}")
    if isinstance(attempts, bool) or not isinstance(attempts, int):
        raise TypeError(f"attempts must be an int >= 1, got {attempts!r}")
    if attempts < 1:
        raise ValueError(f"attempts must be an int >= 1, got {attempts}")
    if isinstance(grace, bool) or not isinstance(grace, int | float):
        raise TypeError(f"grace must be a number of seconds >= 0, got {grace!r}")
    if not grace >= 0:
        raise ValueError(f"grace must be a number of seconds >= 0, got {grace!r}")


def check_cluster(cluster: object, channel: str, *, blocking: bool) -> None:
    """Refuse (TypeError) what is not a cluster of the channel's face, before anything is
    opened: the blocking channel iterates a blocking cluster's watch in a thread, the asyncio
    channel awaits an asyncio cluster's in its loop; given the other face, either stopped
    following the cluster at once and went on routing on its first view."""
    aio_hint = "an asyncio cluster (etcd.cluster(root), MemoryCluster(...))"
    sync_hint = "a blocking cluster (etcdkit.Client(...).cluster(root))"
    want = sync_hint if blocking else aio_hint
    if not all(hasattr(cluster, name) for name in ("members", "revision", "watch_members")):
        raise TypeError(f"{channel} takes {want}, got {type(cluster).__name__} {cluster!r:.80}")
    is_aio = inspect.iscoroutinefunction(getattr(cluster, "aclose", None))
    if blocking and is_aio:
        raise TypeError(
            f"{channel} takes {want}, got {type(cluster).__name__}, an asyncio cluster: "
            "use RoutedChannel in its event loop (MemoryCluster has no blocking face)"
        )
    if not blocking and not is_aio:
        raise TypeError(
            f"{channel} takes {want}, got {type(cluster).__name__}, a blocking one: "
            "use RoutedSyncChannel"
        )


def check_factory(factory: object) -> None:
    """Refuse a ``channel_factory`` that is not a function (None: the default one)."""
    if factory is not None and not callable(factory):
        raise TypeError(f"channel_factory must be a function address -> channel, got {factory!r}")


class Targets:
    """The node channels' multicallables of one method, made once per node channel."""

    def __init__(
        self,
        method: str,
        serializer: Callable[[Any], bytes] | None,
        deserializer: Callable[[bytes], Any] | None,
    ) -> None:
        self.method = method
        self._ser = serializer
        self._deser = deserializer
        self._made: dict[int, tuple[Any, Any]] = {}

    def get(self, kind: str, channel: Any) -> Any:
        """``channel.<kind>(method, ...)`` (kind: "unary_unary", "unary_stream", ...)."""
        made = self._made.get(id(channel))
        if made is None or made[0] is not channel:
            made = (channel, getattr(channel, kind)(self.method, self._ser, self._deser))
            if len(self._made) > 64:  # nodes come and go: forget the channels of old ones
                self._made.clear()
            self._made[id(channel)] = made
        return made[1]


class Nodes(Generic[C]):
    """One channel per node of the current registry view, and the routing decisions.

    ``update(view)`` returns the channels to close. ``view`` and ``channels`` are each
    replaced in one assignment, so calls in any thread route without a lock. A node whose
    channel cannot be opened (the factory raised) has none: calls routed to it find no node
    (it is tried again at the next view).
    """

    def __init__(
        self, open_channel: Callable[[NodeDescriptor], C], balancer: Balancer | None = None
    ) -> None:
        self._open = open_channel
        self.balancer = balancer  # None: weighted random picks (Go's registry picker)
        self.view = RegistryView.empty()
        self.channels: dict[str, tuple[str, C]] = {}  # node id -> (address, channel)
        self.closed = False  # the routed channel closed: a call its close ended is not retried
        # (node ids with weight, their cumulative weights, the total) for weighted picks
        self._weights: tuple[list[str], list[int], int] = ([], [], 0)
        self._random = random.Random().random
        # A future done once the source has its first view (None: it has one, or calls never
        # wait for it): asyncio calls made before it wait for it (RoutedChannel's first_view).
        self.first_view: Any = None

    def update(self, view: RegistryView) -> list[C]:
        old = self.channels
        new: dict[str, tuple[str, C]] = {}
        for node_id, node in view.nodes.items():
            have = old.get(node_id)
            if have is not None and have[0] == node.address:
                new[node_id] = have
                continue
            try:
                new[node_id] = (node.address, self._open(node))
            except Exception as exc:  # (the channel factory's): route without it, go on following
                log.error(
                    "node %s at %s: no channel could be opened: %r", node_id, node.address, exc
                )
                continue
            log.info("node %s joined at %s", node_id, node.address)
        gone: list[C] = []
        for node_id, (address, channel) in old.items():
            kept = new.get(node_id)
            if kept is None or kept[1] is not channel:
                log.info("node %s at %s left; closing its channel", node_id, address)
                gone.append(channel)
        ids = [n.id for n in view.nodes.values() if n.weight and n.id in new]
        cumulative = list(itertools.accumulate(view.nodes[i].weight for i in ids))
        self._weights = (ids, cumulative, cumulative[-1] if cumulative else 0)
        self.channels = new
        self.view = view
        return gone

    def take_all(self) -> list[C]:
        """Every node channel, forgotten (for closing: the routed channel is closed)."""
        self.closed = True
        channels, self.channels = self.channels, {}
        return [channel for _, channel in channels.values()]

    def pick(self, key: bytes | None, tried: Sequence[str]) -> tuple[str, C] | None:
        """The node (id, channel) for the next attempt: the owner of *key* (then the next
        nodes of the ring), or the balancer's pick, or a weighted random node; never one in
        *tried*."""
        view, channels = self.view, self.channels
        node_id: str | None
        if key is not None:
            if not tried:
                node_id = view.ring.node(key)
            else:
                later = view.ring.nodes(key, len(tried) + 1)
                node_id = next((n for n in later if n not in tried), None)
        elif self.balancer is not None:
            node_id = self.balancer.pick(self._weights[0], tried)
        else:
            ids, cumulative, total = self._weights
            if tried:  # rare (a retry): pick among the others, weights as they are
                weights = [w - p for w, p in zip(cumulative, [0, *cumulative])]
                pairs = [(i, w) for i, w in zip(ids, weights) if i not in tried]
                ids = [i for i, _ in pairs]
                cumulative = list(itertools.accumulate(w for _, w in pairs))
                total = cumulative[-1] if cumulative else 0
            node_id = ids[bisect.bisect(cumulative, self._random() * total)] if total else None
        if node_id is None:
            return None
        entry = channels.get(node_id)
        return None if entry is None else (node_id, entry[1])

    def left(self, node_id: str, channel: object) -> bool:
        """Whether *channel* (of *node_id*) is no longer the node's: the node left or moved
        (not that the routed channel closed)."""
        if self.closed:
            return False
        entry = self.channels.get(node_id)
        return entry is None or entry[1] is not channel

    def describe(self) -> str:
        view = self.view
        return f"{len(view.nodes)} nodes, {len(self._weights[0])} with weight, rev {view.revision}"


class Attempts:
    """The attempts of one call: which node next, how much time is left, when to give up.

    ``next()`` returns (node id, channel, timeout) or raises the error to give up with: the
    last attempt's error, else one made by *error* (UNAVAILABLE: no node; DEADLINE_EXCEEDED).
    """

    def __init__(
        self,
        nodes: Nodes[Any],
        key: bytes | None,
        timeout: float | None,
        attempts: int,
        error: ErrorFactory,
    ) -> None:
        self.nodes = nodes
        self.key = key
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.left = attempts
        self.tried: list[str] = []
        self.last_error: Exception | None = None
        self._error = error

    def time_left(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def next(self) -> tuple[str, Any, float | None]:
        if self.left <= 0:
            raise self._give_up("no node answered")
        timeout = self.time_left()
        if timeout is not None and timeout <= 0:
            if self.last_error is not None:
                raise self.last_error
            raise self._error(
                grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded before a node answered"
            )
        picked = self.nodes.pick(self.key, self.tried)
        if picked is None:
            raise self._give_up(f"no node of the cluster is available ({self.nodes.describe()})")
        self.left -= 1
        self.tried.append(picked[0])
        return picked[0], picked[1], timeout

    def failed(self, error: Exception) -> None:
        """The attempt in flight failed with *error*, which is worth another node."""
        self.last_error = error

    def node_left(self, node_id: str) -> None:
        """The attempt in flight ended because its node left the cluster."""
        self.last_error = self._error(
            grpc.StatusCode.UNAVAILABLE, f"node {node_id} left the cluster during the call"
        )

    def _give_up(self, why: str) -> Exception:
        if self.last_error is not None:
            return self.last_error
        return self._error(grpc.StatusCode.UNAVAILABLE, why)
