"""Registry views: the routable nodes of a cluster and their hash ring, as one object.

A :class:`RegistryView` is built from one membership view: every member whose data is a
:class:`NodeDescriptor` is a node, and its weight is its claims on the :class:`HashRing`.
Nodes and ring come from the same members at the same revision, so ``view.owner(key)`` always
names a node of ``view.nodes``. A :class:`Registry` follows a cluster and hands out views.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from etcdkit.cluster._api import Cluster
from etcdkit.cluster._descriptor import NodeDescriptor
from etcdkit.cluster._member import Member
from etcdkit.cluster._ring import HashRing

__all__ = ["Registry", "RegistryView"]

log = logging.getLogger("etcdkit.cluster")

_EMPTY_RING = HashRing()


@dataclass(frozen=True, slots=True, eq=False)
class RegistryView:
    """The routable nodes of one membership view and their ring (immutable; share freely).

    - ``revision``: the revision of the membership view it was built from.
    - ``nodes``: node id -> :class:`NodeDescriptor`, in id order (read-only).
    - ``ring``: the :class:`HashRing` of the nodes' weights (a node of weight 0 is a node but
      owns no keys, and random picks skip it, as in Go's registry).
    - ``invalid``: the members whose data is no node descriptor (left out).

    ``owner(key)`` / ``owners(key, n)`` give descriptors: the owner of a key, and the owner
    followed by the next distinct nodes of the ring (a failover order).
    """

    revision: int
    nodes: Mapping[str, NodeDescriptor]
    ring: HashRing
    invalid: tuple[Member, ...] = field(default=())

    def __repr__(self) -> str:
        return (
            f"<RegistryView revision={self.revision} nodes={len(self.nodes)} "
            f"tokens={len(self.ring)} invalid={len(self.invalid)}>"
        )

    @classmethod
    def from_members(
        cls, members: Iterable[Member], revision: int, *, previous: RegistryView | None = None
    ) -> RegistryView:
        """The view of *members* at *revision*. Pass the *previous* view to reuse its ring
        when the weights did not change (a ring of many tokens costs a few ms to build)."""
        nodes: dict[str, NodeDescriptor] = {}
        invalid: list[Member] = []
        for member in sorted(members):
            try:
                nodes[member.id] = NodeDescriptor.from_member(member)
            except ValueError:
                invalid.append(member)
        claims = {node.id: node.weight for node in nodes.values() if node.weight}
        if previous is not None and dict(previous.ring.claims) == claims:
            ring = previous.ring
        else:
            ring = HashRing(claims) if claims else _EMPTY_RING
        return cls(revision, MappingProxyType(nodes), ring, tuple(invalid))

    @classmethod
    def empty(cls) -> RegistryView:
        return cls(0, MappingProxyType({}), _EMPTY_RING)

    def owner(self, key: str | bytes) -> NodeDescriptor | None:
        """The node that owns *key* (str as UTF-8, or bytes); None when no node has weight."""
        node = self.ring.node(key)
        return None if node is None else self.nodes[node]

    def owners(self, key: str | bytes, n: int) -> list[NodeDescriptor]:
        """Up to *n* distinct nodes for *key*: its owner first, then the next ones clockwise."""
        return [self.nodes[node] for node in self.ring.nodes(key, n)]


class Registry:
    """The registry views of a cluster: ``Registry(cluster)``; no task, no I/O of its own.

    ``registry.view`` is the view of the cluster's current members (rebuilt only when they
    changed); ``registry.owner(key)`` asks it; ``async for view in registry.watch()`` follows
    the cluster (the current view first, then the newest; a slow reader skips views). Members
    whose data is no node descriptor are logged once (per id and data) and left out.
    """

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster
        self._view = RegistryView.empty()
        self._members: tuple[Member, ...] | None = None
        self._warned: set[Member] = set()

    def __repr__(self) -> str:
        return f"<Registry {self.view!r}>"

    @property
    def cluster(self) -> Cluster:
        return self._cluster

    @property
    def view(self) -> RegistryView:
        """The view of the cluster's current members (no I/O)."""
        return self._build(self._cluster.members, self._cluster.revision)

    def owner(self, key: str | bytes) -> NodeDescriptor | None:
        return self.view.owner(key)

    async def watch(self) -> AsyncGenerator[RegistryView, None]:
        """The current view, then the newest after each change, until the cluster closes."""
        async with self._cluster.watch_members() as watch:
            async for members in watch:
                yield self._build(members, watch.revision)

    def _build(self, members: tuple[Member, ...], revision: int) -> RegistryView:
        view = self._view
        if members is self._members or members == self._members:
            if revision > view.revision:
                view = RegistryView(revision, view.nodes, view.ring, view.invalid)
                self._view = view
            return view
        view = RegistryView.from_members(members, revision, previous=view)
        for member in view.invalid:
            if member not in self._warned:
                log.warning(
                    "cluster member %r left out of the registry: its data %r is no node descriptor",
                    member.id,
                    member.data[:200],
                )
        self._warned = set(view.invalid)
        self._view = view
        self._members = members
        return view
