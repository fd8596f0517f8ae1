"""gRPC channels that route every call to the owner of a key on a cluster's hash ring.

:class:`RoutedChannel` (``grpc.aio``) and :class:`RoutedSyncChannel` (blocking ``grpc``) are
channels that generated stubs use unchanged: ``stub = UsersStub(RoutedChannel(cluster))``.
They hold one channel per node of the cluster's :class:`RegistryView` (members publishing a
:class:`NodeDescriptor`), opened when the node appears and closed when it leaves (after a grace
period for the calls still on it). Each call goes to:

- the ring owner of its routing key: set with ``with route_key(b"user-42"):`` (a contextvar,
  so it follows the task or thread), or computed from the request by ``key=lambda req:
  req.user_id`` (for unary and server-streaming calls: a call whose requests are a stream has
  no request when it starts, so only a ``route_key`` block routes it by key);
- without a key, a node picked at random in proportion to its weight (Go's picker).

A unary call (and a server-streaming call before its first response) that fails with
``UNAVAILABLE`` (node down, connection refused), or whose node left the cluster meanwhile, is
retried on the next node of the ring (``ring.nodes(key, attempts)``) within the call's own
deadline. Calls whose requests are a stream go to the owner with no retry (the request
iterator cannot be replayed). With no node at all a call fails with ``UNAVAILABLE`` at once.

grpc's own ``ring_hash`` policy is not used: it hashes differently from Go's ring. This is the
only package of etcdkit.cluster that imports grpc (``import etcdkit.cluster`` does not).

Example (servers publish ``NodeDescriptor(member.id, "10.0.0.5:8080", weight=100).encode()``
as their member data)::

    async with etcd.cluster("/services/users") as cluster:
        async with RoutedChannel(cluster) as channel:
            stub = users_pb2_grpc.UsersStub(channel)
            with route_key(b"user-42"):
                reply = await stub.Get(request, timeout=2.0)   # the owner of user-42
"""

from etcdkit.cluster.grpc._aio import RoutedChannel
from etcdkit.cluster.grpc._routing import (
    DEFAULT_ATTEMPTS,
    DEFAULT_GRACE,
    DEFAULT_OPTIONS,
    KeyFunction,
    current_route_key,
    route_key,
)
from etcdkit.cluster.grpc._sync import RoutedSyncChannel, RoutingError

__all__ = [
    "DEFAULT_ATTEMPTS",
    "DEFAULT_GRACE",
    "DEFAULT_OPTIONS",
    "KeyFunction",
    "RoutedChannel",
    "RoutedSyncChannel",
    "RoutingError",
    "current_route_key",
    "route_key",
]
