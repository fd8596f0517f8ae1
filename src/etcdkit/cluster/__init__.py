"""etcdkit.cluster: cluster membership, a consistent-hash ring, and their wire format.

A port of the ideas of code-payments/code-server ``pkg/cluster`` (Go), compatible with it on the
wire: Python and Go processes can share a cluster and route keys to the same owners.

- ``etcd.cluster(root, ttl=10)`` (:class:`EtcdBackedCluster`) — the members under *root* on
  etcd: ``members``, ``revision``, ``watch_members()``, ``membership(data, id=None)`` with
  ``register`` / ``set_data`` / ``synced`` / ``deregister``. ``etcdkit.Client.cluster()``
  gives the blocking twin (:class:`SyncCluster`).
- :class:`MemoryCluster` — the :class:`Cluster` API in memory for unit tests; share a
  :class:`MemoryStore` between several to play several processes.
- :class:`Member` — ``Member(id, data)``; views are tuples of members sorted by id.
- :class:`HashRing` — ``HashRing({"a": 100, "b": 100})``; ``ring.node(key)`` is the owner of a
  key, ``ring.nodes(key, n)`` a failover order; same owners as Go's ``ring.HashRing``.
- :class:`NodeDescriptor` — ``NodeDescriptor(id, "host:port", weight)``, published as member
  data in Go's ``registry`` JSON; its weight is its claims on the ring.
- :class:`RegistryView` / :class:`Registry` — the nodes of a view and their ring, as one
  object per revision: ``view.owner(key)``.
- :mod:`etcdkit.cluster.grpc` — ``RoutedChannel(cluster)``: gRPC calls routed to the ring owner
  of a key (imported on its own: the rest of the package does not need grpc).
- :func:`encode_member` / :func:`decode_member` / :func:`member_key` — a member's etcd key
  (``root + "/" + id``) and JSON value (``{"id":...,"data":...}``).

Example::

    async with etcd.cluster("/services/api", ttl=10) as cluster:
        me = cluster.membership()
        me.set_data(NodeDescriptor(me.id, "10.0.0.5:8080", weight=100).encode())
        await me.register(timeout=5)
        registry = Registry(cluster)
        async for view in registry.watch():
            owner = view.owner(b"user-42")
"""

from etcdkit.cluster._api import Cluster, Membership
from etcdkit.cluster._blocking import SyncCluster, SyncMembership, SyncMemberWatch
from etcdkit.cluster._descriptor import NodeDescriptor
from etcdkit.cluster._etcd import DEFAULT_OPEN_TIMEOUT, EtcdBackedCluster, EtcdMembership
from etcdkit.cluster._member import Member, decode_member, encode_member, member_key
from etcdkit.cluster._memory import MemoryCluster, MemoryMembership, MemoryStore
from etcdkit.cluster._registry import Registry, RegistryView
from etcdkit.cluster._ring import HashRing
from etcdkit.cluster._views import MemberWatch

__all__ = [
    "DEFAULT_OPEN_TIMEOUT",
    "Cluster",
    "EtcdBackedCluster",
    "EtcdMembership",
    "HashRing",
    "Member",
    "MemberWatch",
    "Membership",
    "MemoryCluster",
    "MemoryMembership",
    "MemoryStore",
    "NodeDescriptor",
    "Registry",
    "RegistryView",
    "SyncCluster",
    "SyncMemberWatch",
    "SyncMembership",
    "decode_member",
    "encode_member",
    "member_key",
]
