"""python-etcd3's :class:`Lease`: a granted lease, and the answers about leases.

A Lease is not kept alive: as in python-etcd3 it expires ``ttl`` seconds after the grant or
the last :meth:`Lease.refresh`. To keep a lease alive, use etcdkit's ``session(ttl)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from etcdkit import ResponseHeader

if TYPE_CHECKING:
    from etcdkit.compat.etcd3.client import Etcd3Client

__all__ = ["Lease", "LeaseKeepAliveResponse", "LeaseTimeToLiveResponse"]


class LeaseKeepAliveResponse(NamedTuple):
    """One refresh of a lease (etcd's ``LeaseKeepAliveResponse``): its id and the TTL it was
    renewed to; ``TTL`` is 0 when the lease no longer exists."""

    ID: int
    TTL: int
    header: ResponseHeader | None = None


class LeaseTimeToLiveResponse(NamedTuple):
    """A lease as etcd reports it (etcd's ``LeaseTimeToLiveResponse``): ``TTL`` is the seconds
    it has left (-1 when it does not exist), ``grantedTTL`` the TTL it was granted, ``keys`` the
    keys attached to it."""

    ID: int
    TTL: int
    grantedTTL: int
    keys: list[bytes]
    header: ResponseHeader | None = None


class Lease:
    """A lease: ``id``, ``ttl`` (as granted), and calls to etcd about it.

    :ivar id: the lease's id
    :ivar ttl: the TTL etcd granted, in seconds
    """

    def __init__(self, lease_id: int, ttl: int, etcd_client: Etcd3Client | None = None) -> None:
        self.id = lease_id
        self.ttl = ttl
        self.etcd_client = etcd_client

    def __repr__(self) -> str:
        return f"<Lease id={self.id:#x} ttl={self.ttl}>"

    def _client(self) -> Etcd3Client:
        if self.etcd_client is None:
            raise ValueError("this Lease has no etcd_client: make it with client.lease(ttl)")
        return self.etcd_client

    def revoke(self) -> None:
        """Revoke this lease: every key attached to it is deleted."""
        self._client().revoke_lease(self.id)

    def refresh(self) -> list[LeaseKeepAliveResponse]:
        """Refresh this lease's TTL once; a list of one :class:`LeaseKeepAliveResponse`."""
        return list(self._client().refresh_lease(self.id))

    @property
    def remaining_ttl(self) -> int:
        """Seconds left before the lease expires (-1 once it is gone). One read from etcd."""
        return self._client().get_lease_info(self.id).TTL

    @property
    def granted_ttl(self) -> int:
        """The TTL the lease was granted (0 once it is gone). One read from etcd."""
        return self._client().get_lease_info(self.id).grantedTTL

    @property
    def keys(self) -> list[bytes]:
        """The keys attached to the lease. One read from etcd."""
        return self._client().get_lease_info(self.id).keys
