"""The endpoints of a target seen as a read-only :class:`etcdkit.cluster.Cluster`.

etcdkit.cluster.grpc's routed channels route over the members of a cluster whose data is a
:class:`NodeDescriptor`. :class:`EndpointCluster` follows the endpoints of a target (an
:class:`EndpointManager` watch) and shows one member per address: id and address the
endpoint's ``addr``, weight 1. Two keys with one address are one member (as grpc-go dedups
equal addresses). An ``addr`` that is not ``host:port`` (a port from 1 to 65535, an IPv6 host
in brackets) cannot be dialled by the channel: it is left out, with a warning once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from types import MappingProxyType, TracebackType
from typing import NoReturn, Self

from etcdkit._blocking.twin import Twin, blocking, mirror
from etcdkit._errors import ClosedError, EtcdkitError, EtcdTimeoutError
from etcdkit.cluster._blocking import SyncMemberWatch
from etcdkit.cluster._descriptor import NodeDescriptor
from etcdkit.cluster._member import Member
from etcdkit.cluster._views import MemberWatch, ViewHub
from etcdkit.naming._record import Endpoint
from etcdkit.naming.endpoints import EndpointManager

__all__ = ["EndpointCluster", "SyncEndpointCluster"]

log = logging.getLogger("etcdkit.naming")

_EMPTY: Mapping[str, Endpoint] = MappingProxyType({})


class EndpointCluster:
    """The endpoints of an :class:`EndpointManager`'s target as cluster members (see the
    module docstring). Create it in a running event loop: it follows the endpoints in a task
    until :meth:`aclose`. ``members`` / ``revision`` are empty / 0 until the first view
    (``await synced(timeout)``); ``endpoints`` is the newest ``{key: Endpoint}``."""

    def __init__(self, manager: EndpointManager) -> None:
        self._manager = manager
        self._hub = ViewHub()
        self._watch = manager.watch()
        self._first = asyncio.Event()
        self._endpoints: Mapping[str, Endpoint] = _EMPTY
        self._members: dict[str, Member] = {}  # addr -> member, reused across views
        self._warned: set[tuple[str, str]] = set()  # (key, addr) left out, warned once
        self._closed = False
        self._task = asyncio.get_running_loop().create_task(
            self._follow(), name=f"etcdkit-endpoints {manager.target!r}"
        )

    def __repr__(self) -> str:
        return (
            f"<EndpointCluster target={self._manager.target!r} members={len(self.members)} "
            f"revision={self.revision}>"
        )

    @property
    def target(self) -> str:
        return self._manager.target

    @property
    def members(self) -> tuple[Member, ...]:
        """One member per dialable address, sorted by id (no I/O)."""
        return self._hub.members

    @property
    def revision(self) -> int:
        """The etcd revision of the newest view (0 before the first)."""
        return self._hub.revision

    @property
    def endpoints(self) -> Mapping[str, Endpoint]:
        """The newest ``{key: Endpoint}`` of the target, every record that decodes (no I/O)."""
        return self._endpoints

    def watch_members(self) -> MemberWatch:
        """Follow the members: the current ones first, then the newest after each change."""
        return self._hub.watch()

    def membership(self, data: str = "", *, id: str | None = None) -> NoReturn:
        """Not offered: register an endpoint with :meth:`EndpointManager.register`."""
        raise TypeError(
            "the endpoints of a target are read here; register one with "
            "etcd.endpoint_manager(target).register(addr)"
        )

    async def synced(self, timeout: float | None = None) -> int:
        """Wait for the first view of the endpoints; returns its revision. Raises
        EtcdTimeoutError after *timeout* seconds, ClosedError once closed, or the failure
        that ended the watch (e.g. permission denied)."""
        if self._closed or self._hub.closed:
            raise ClosedError(f"the endpoints of {self.target!r} are closed")
        try:
            async with asyncio.timeout(timeout):
                while not self._first.is_set():
                    if self._hub.error is not None:
                        raise self._hub.error
                    if self._closed or self._hub.closed:
                        raise ClosedError(f"the endpoints of {self.target!r} are closed")
                    waiter = asyncio.ensure_future(self._first.wait())
                    try:
                        await asyncio.wait(
                            [waiter, self._task], return_when=asyncio.FIRST_COMPLETED
                        )
                    finally:
                        waiter.cancel()
        except TimeoutError as exc:
            if isinstance(exc, EtcdkitError):
                raise
            raise EtcdTimeoutError(
                f"no view of the endpoints of {self.target!r} within {timeout} s "
                f"(is etcd reachable?)"
            ) from None
        return self.revision

    async def aclose(self) -> None:
        """Stop following the endpoints; member watches end. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._watch.aclose()
        self._hub.close()

    close = aclose

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _follow(self) -> None:
        try:
            async with self._watch as watch:
                async for snap in watch:
                    self._endpoints = snap.tree
                    self._hub.publish(self._members_of(snap.tree), snap.revision)
                    self._first.set()
            self._hub.close()  # the watch was closed: member watches end
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the watch failed for good (no permission, client closed)
            log.error("endpoints of %r: the watch ended (%s)", self.target, exc)
            self._hub.close(exc)

    def _members_of(self, tree: Mapping[str, Endpoint]) -> tuple[Member, ...]:
        old, new = self._members, {}
        for key, endpoint in tree.items():
            addr = endpoint.addr
            if addr in new:
                continue
            member = old.get(addr)
            if member is None:
                try:
                    member = Member(addr, NodeDescriptor(addr, addr, 1).encode())
                except (TypeError, ValueError) as exc:
                    if (key, addr) not in self._warned:
                        self._warned.add((key, addr))
                        log.warning(
                            "endpoint %r of %r left out of the channel: %s",
                            key,
                            self.target,
                            exc,
                        )
                    continue
            new[addr] = member
        self._members = new
        return tuple(sorted(new.values()))


class SyncEndpointCluster(Twin[EndpointCluster]):
    """The blocking face of an :class:`EndpointCluster`, what a ``RoutedSyncChannel``
    follows: ``members`` and ``revision`` from any thread, ``watch_members()`` an iterator."""

    members: mirror[tuple[Member, ...]] = mirror(EndpointCluster.members, direct=True)
    revision: mirror[int] = mirror(EndpointCluster.revision, direct=True)
    endpoints: mirror[Mapping[str, Endpoint]] = mirror(EndpointCluster.endpoints, direct=True)
    synced = blocking(EndpointCluster.synced)

    def watch_members(self) -> SyncMemberWatch:
        """See :meth:`EndpointCluster.watch_members`: iterate with a plain ``for``."""
        return SyncMemberWatch(self.portal, self.portal.run_sync(self.aio.watch_members))

    def close(self) -> None:
        """See :meth:`EndpointCluster.aclose` (idempotent)."""
        if not self.portal.closed:
            self.portal.call(self.aio.aclose())
