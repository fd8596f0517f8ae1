"""etcdkit.cluster: cluster membership, a consistent-hash ring, and their wire format.

A port of the ideas of code-payments/code-server ``pkg/cluster`` (Go), compatible with it on the
wire: Python and Go processes can share a cluster and route keys to the same owners.

- :class:`Member` — ``Member(id, data)``; views are tuples of members sorted by id.
- :class:`HashRing` — ``HashRing({"a": 100, "b": 100})``; ``ring.node(key)`` is the owner of a
  key, ``ring.nodes(key, n)`` a failover order; same owners as Go's ``ring.HashRing``.
- :class:`MemoryCluster` — the :class:`Cluster` API in memory for unit tests; share a
  :class:`MemoryStore` between several to play several processes.
- :class:`NodeDescriptor` — ``NodeDescriptor(id, "host:port", weight)``, published as member
  data in Go's ``registry`` JSON; its weight is its claims on the ring.
- :func:`encode_member` / :func:`decode_member` / :func:`member_key` — a member's etcd key
  (``root + "/" + id``) and JSON value (``{"id":...,"data":...}``).

Example::

    async with MemoryCluster() as cluster:
        me = cluster.membership()
        me.set_data(NodeDescriptor(me.id, "10.0.0.5:8080", weight=100).encode())
        await me.register(timeout=5)
        async for members in cluster.watch_members():
            nodes = [NodeDescriptor.from_member(m) for m in members]
            ring = HashRing({n.id: n.weight for n in nodes})
            owner = ring.node(b"user-42")
"""

from etcdkit.cluster._api import Cluster, Membership
from etcdkit.cluster._descriptor import NodeDescriptor
from etcdkit.cluster._member import Member, decode_member, encode_member, member_key
from etcdkit.cluster._memory import MemoryCluster, MemoryMembership, MemoryStore
from etcdkit.cluster._ring import HashRing
from etcdkit.cluster._views import MemberWatch

__all__ = [
    "Cluster",
    "HashRing",
    "Member",
    "MemberWatch",
    "Membership",
    "MemoryCluster",
    "MemoryMembership",
    "MemoryStore",
    "NodeDescriptor",
    "decode_member",
    "encode_member",
    "member_key",
]
