"""gRPC channels over the endpoints of a target, as Go's ``etcd:///target`` resolver sees them.

``channel(etcd, target)`` is a ``grpc.aio`` channel (:class:`EndpointChannel`) and
``sync_channel(client, target)`` its blocking twin (:class:`EndpointSyncChannel`): generated
stubs use them unchanged. They follow the endpoints of *target* (the keys Go's
``endpoints.Manager`` and :meth:`EndpointManager.register` write under ``target + "/"``) with
an exact watch, and open one channel per address: an endpoint that is added takes calls as
soon as etcd reports it (a few milliseconds), one that is removed (deleted, or its lease
expired) takes no new calls, and its channel closes after *grace* seconds.

Policies: ``"round_robin"`` (each call to the next address, in address order) or
``"pick_first"`` (every call to one address until it fails or leaves, then the next one).

Retries (the rule of :class:`etcdkit.cluster.grpc.RoutedChannel`, whose routing core these
channels are): a unary call, and a server-streaming call before its first response, that
fails with ``UNAVAILABLE`` (address down, connection refused), or whose endpoint left
meanwhile, is retried on the next address within the call's own deadline, on up to *attempts*
distinct addresses (default 3). Calls whose requests are a stream (client- and
bidi-streaming) are never retried, and on the blocking channel neither are ``.future()`` calls
nor server-streaming calls. A call can fail with UNAVAILABLE after the server took it (it died
mid-call): make retried methods idempotent, or pass ``attempts=1``. With no endpoint at all a
call fails with UNAVAILABLE at once; a unary or server-streaming call made before the first
view of the endpoints is loaded waits for it (within its deadline and the channel's
*timeout*), as grpc's calls wait for a new channel's first name resolution.

The endpoint's ``addr`` must be ``host:port`` (IPv6 in brackets); others are left out with a
warning. ``Metadata`` is not used. This module is the only one of etcdkit.naming that imports
grpc.

Example::

    async with channel(etcd, "services/echo") as ch:   # waits for the first view
        stub = echo_pb2_grpc.EchoStub(ch)
        reply = await stub.Say(request, timeout=2.0)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Literal, NoReturn, Self

import grpc
import grpc.aio

from etcdkit._surface import Etcd
from etcdkit.cluster._descriptor import NodeDescriptor
from etcdkit.cluster.grpc import DEFAULT_ATTEMPTS, DEFAULT_GRACE, RoutedChannel, RoutedSyncChannel
from etcdkit.cluster.grpc._routing import Balancer, check_args, check_factory
from etcdkit.naming._cluster import EndpointCluster, SyncEndpointCluster
from etcdkit.naming._record import Endpoint
from etcdkit.naming.endpoints import EndpointManager

if TYPE_CHECKING:
    from etcdkit import Client

__all__ = [
    "DEFAULT_OPEN_TIMEOUT",
    "EndpointChannel",
    "EndpointSyncChannel",
    "Policy",
    "channel",
    "sync_channel",
]

Policy = Literal["round_robin", "pick_first"]
DEFAULT_OPEN_TIMEOUT = 10.0  # seconds to wait for the first view of the endpoints


def _check_policy(policy: object) -> str:
    """Return *policy* if it is ``"round_robin"`` or ``"pick_first"``; else TypeError /
    ValueError saying what to pass."""
    if not isinstance(policy, str):
        raise TypeError(f'policy must be "round_robin" or "pick_first", got {policy!r:.80}')
    if policy not in ("round_robin", "pick_first"):
        raise ValueError(f'policy must be "round_robin" or "pick_first", got {policy!r:.80}')
    return policy


class RoundRobin(Balancer):
    """Each call to the next node in id (address) order; a retry to the next one untried."""

    def __init__(self) -> None:
        self._next = 0  # races between threads only skew the rotation a little

    def pick(self, ids: Sequence[str], tried: Sequence[str]) -> str | None:
        n = len(ids)
        for _ in range(n):
            i = self._next % n
            self._next = i + 1
            if ids[i] not in tried:
                return ids[i]
        return None


class PickFirst(Balancer):
    """Every call to one node, as long as it is in the view and answers: the first by id at
    start; after a failure the next one (wrapping around), which then stays."""

    def __init__(self) -> None:
        self._current: str | None = None

    def pick(self, ids: Sequence[str], tried: Sequence[str]) -> str | None:
        current = self._current
        known = current is not None and current in ids
        if known and current not in tried:
            return current
        start = ids.index(current) + 1 if known else 0
        for i in range(len(ids)):
            node = ids[(start + i) % len(ids)]
            if node not in tried:
                self._current = node
                return node
        return None


def _balancer(policy: str) -> Balancer:
    """The :class:`Balancer` of a policy name (checked with :func:`_check_policy`)."""
    return RoundRobin() if _check_policy(policy) == "round_robin" else PickFirst()


def _check_timeout(timeout: object) -> None:
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"timeout must be a number of seconds >= 0 or None, got {timeout!r}")
    if not (timeout >= 0 and math.isfinite(timeout)):
        raise ValueError(f"timeout must be a number of seconds >= 0 or None, got {timeout!r}")


def _no_owner() -> NoReturn:
    raise TypeError(
        "calls on an endpoint channel are balanced by its policy, not routed by key; "
        "use etcdkit.cluster.grpc.RoutedChannel for routing keys"
    )


class EndpointChannel(RoutedChannel):
    """A ``grpc.aio`` channel over the endpoints of *target* (see the module docstring).

    ``EndpointChannel(etcd, target, policy="round_robin", attempts=3, channel_factory=None,
    grace=5.0, timeout=10.0)``; create it in the event loop of *etcd* (an AsyncClient, or any
    object of the public surface). *channel_factory*: ``factory(address) -> grpc.aio.Channel``
    (TLS, options, interceptors); default an insecure channel with keepalive pings.

    It starts following the endpoints at once. A unary or server-streaming call made before
    the first view is loaded waits for it, as grpc's calls wait for a new channel's first
    name resolution: at most its own deadline (then DEADLINE_EXCEEDED); if no view came within
    *timeout* seconds, the calls waiting and later ones fail with UNAVAILABLE. A call whose
    requests are a stream fails with UNAVAILABLE at once then.
    ``async with`` (or ``await ch.synced(timeout)``) waits for the first view, raising
    EtcdTimeoutError after *timeout* seconds. ``close()`` stops following and closes
    every address channel. Raises TypeError / ValueError on bad arguments, before any I/O.
    """

    def __init__(
        self,
        etcd: Etcd,
        target: str,
        *,
        policy: Policy = "round_robin",
        attempts: int = DEFAULT_ATTEMPTS,
        channel_factory: Callable[[str], grpc.aio.Channel] | None = None,
        grace: float = DEFAULT_GRACE,
        timeout: float | None = DEFAULT_OPEN_TIMEOUT,
    ) -> None:
        if hasattr(etcd, "aio"):
            raise TypeError(
                "channel() takes an AsyncClient; for a threaded etcdkit.Client use "
                "etcdkit.naming.grpc.sync_channel(client, target)"
            )
        picks = _balancer(policy)
        check_args(None, attempts, grace)
        _check_timeout(timeout)
        check_factory(channel_factory)  # (before the endpoints are followed)
        manager = EndpointManager(etcd, target)
        self._policy = policy
        self._open_timeout = timeout
        self._source = EndpointCluster(manager)
        super().__init__(
            self._source,
            key=picks,
            attempts=attempts,
            channel_factory=channel_factory,
            grace=grace,
            first_view=lambda: self._source.synced(timeout),
        )

    def __repr__(self) -> str:
        view, state = self.view, self.get_state()
        return (
            f"<EndpointChannel target={self.target!r} policy={self._policy} "
            f"addresses={len(view.nodes)} revision={view.revision} state={state.name}>"
        )

    @property
    def target(self) -> str:
        return self._source.target

    @property
    def policy(self) -> Policy:
        return self._policy

    @property
    def endpoints(self) -> Mapping[str, Endpoint]:
        """The newest ``{key: Endpoint}`` of the target (no I/O). Calls go to the addresses
        of ``view.nodes`` (the dialable ones, one per address)."""
        return self._source.endpoints

    def owner(self, key: str | bytes) -> NodeDescriptor | None:
        """Not offered: raises TypeError (calls are balanced, not routed by key)."""
        _no_owner()

    async def synced(self, timeout: float | None = None) -> int:
        """Wait until the first view of the endpoints is loaded; returns its revision.
        Raises EtcdTimeoutError after *timeout* seconds, ClosedError once closed."""
        return await self._source.synced(timeout)

    async def close(self, grace: float | None = None) -> None:
        """Stop following the endpoints and close every address channel (calls in flight get
        *grace* seconds, then end with CANCELLED). Idempotent."""
        await super().close(grace)
        await self._source.aclose()

    async def __aenter__(self) -> Self:
        try:
            await self.synced(self._open_timeout)
        except BaseException:
            await self.close()
            raise
        return self


class EndpointSyncChannel(RoutedSyncChannel):
    """The blocking twin of :class:`EndpointChannel` (a ``grpc.Channel``) over a threaded
    ``etcdkit.Client``: ``EndpointSyncChannel(client, target, policy=..., attempts=3,
    channel_factory=None, grace=5.0, timeout=10.0)``.

    The constructor blocks until the first view of the endpoints is loaded (EtcdTimeoutError
    after *timeout* seconds); then a thread (``etcdkit-routed-channel``) follows them until
    :meth:`close` (or ``with``). Unary calls (``stub.Method(req)``, ``.with_call``) are retried
    on the next address on UNAVAILABLE; ``.future()`` and streaming calls are not.
    """

    def __init__(
        self,
        client: Client,
        target: str,
        *,
        policy: Policy = "round_robin",
        attempts: int = DEFAULT_ATTEMPTS,
        channel_factory: Callable[[str], grpc.Channel] | None = None,
        grace: float = DEFAULT_GRACE,
        timeout: float | None = DEFAULT_OPEN_TIMEOUT,
    ) -> None:
        if not hasattr(client, "aio"):
            raise TypeError(
                "sync_channel() takes a threaded etcdkit.Client; for an AsyncClient use "
                "etcdkit.naming.grpc.channel(etcd, target)"
            )
        picks = _balancer(policy)
        check_args(None, attempts, grace)
        _check_timeout(timeout)
        check_factory(channel_factory)  # (before the endpoints are followed)
        manager = client.endpoint_manager(target)
        portal = manager.portal
        source = SyncEndpointCluster(portal, portal.run_sync(EndpointCluster, manager.aio))
        try:
            source.synced(timeout)
        except BaseException:
            source.close()
            raise
        self._policy = policy
        self._source = source
        self._target = target
        try:
            super().__init__(
                source,
                key=picks,
                attempts=attempts,
                channel_factory=channel_factory,
                grace=grace,
            )
        except BaseException:
            source.close()
            raise

    def __repr__(self) -> str:
        view = self.view
        return (
            f"<EndpointSyncChannel target={self._target!r} policy={self._policy} "
            f"addresses={len(view.nodes)} revision={view.revision}>"
        )

    @property
    def target(self) -> str:
        return self._target

    @property
    def policy(self) -> Policy:
        return self._policy

    @property
    def endpoints(self) -> Mapping[str, Endpoint]:
        """See :attr:`EndpointChannel.endpoints`."""
        return self._source.endpoints

    def owner(self, key: str | bytes) -> NodeDescriptor | None:
        """Not offered: raises TypeError (calls are balanced, not routed by key)."""
        _no_owner()

    def close(self) -> None:
        """Stop following the endpoints (joins the thread) and close every address channel.
        Idempotent."""
        super().close()
        self._source.close()

    def __enter__(self) -> Self:
        return self


def channel(
    etcd: Etcd,
    target: str,
    *,
    policy: Policy = "round_robin",
    attempts: int = DEFAULT_ATTEMPTS,
    channel_factory: Callable[[str], grpc.aio.Channel] | None = None,
    grace: float = DEFAULT_GRACE,
    timeout: float | None = DEFAULT_OPEN_TIMEOUT,
) -> EndpointChannel:
    """A ``grpc.aio`` channel balancing calls over the live endpoints of *target*: an
    :class:`EndpointChannel` (see there and the module docstring). Call it in the event loop
    of *etcd*; it follows the endpoints from then on: ``async with channel(etcd,
    "services/echo") as ch:`` waits for the first view."""
    return EndpointChannel(
        etcd,
        target,
        policy=policy,
        attempts=attempts,
        channel_factory=channel_factory,
        grace=grace,
        timeout=timeout,
    )


def sync_channel(
    client: Client,
    target: str,
    *,
    policy: Policy = "round_robin",
    attempts: int = DEFAULT_ATTEMPTS,
    channel_factory: Callable[[str], grpc.Channel] | None = None,
    grace: float = DEFAULT_GRACE,
    timeout: float | None = DEFAULT_OPEN_TIMEOUT,
) -> EndpointSyncChannel:
    """The blocking twin of :func:`channel` for a threaded ``etcdkit.Client``: an
    :class:`EndpointSyncChannel`, returned once the first view is loaded; use with ``with``."""
    return EndpointSyncChannel(
        client,
        target,
        policy=policy,
        attempts=attempts,
        channel_factory=channel_factory,
        grace=grace,
        timeout=timeout,
    )
