"""python-etcd3's :class:`Member`: one member of the etcd cluster."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from etcdkit.compat.etcd3.client import Alarm, Etcd3Client

__all__ = ["Member"]


class Member:
    """A member of the etcd cluster.

    :ivar id: the member's id (etcd's unsigned 64-bit id; ``f"{id:x}"`` is etcdctl's hex)
    :ivar name: its name (empty until it started)
    :ivar peer_urls: the URLs it serves its peers on
    :ivar client_urls: the URLs it serves clients on (empty until it started)
    """

    def __init__(
        self,
        id: int,
        name: str,
        peer_urls: Sequence[str],
        client_urls: Sequence[str],
        etcd_client: Etcd3Client | None = None,
    ) -> None:
        self.id = id
        self.name = name
        self.peer_urls = list(peer_urls)
        self.client_urls = list(client_urls)
        self._etcd_client = etcd_client

    def __str__(self) -> str:
        return f"Member {self.id}: peer urls: {self.peer_urls}, client urls: {self.client_urls}"

    def __repr__(self) -> str:
        return f"<Member id={self.id:x} name={self.name!r} peer_urls={self.peer_urls}>"

    def _client(self) -> Etcd3Client:
        if self._etcd_client is None:
            raise ValueError("this Member has no etcd_client: get it from client.members")
        return self._etcd_client

    def remove(self) -> None:
        """Remove this member from the cluster."""
        self._client().remove_member(self.id)

    def update(self, peer_urls: Sequence[str]) -> None:
        """Change the peer URLs of this member."""
        self._client().update_member(self.id, peer_urls)

    @property
    def active_alarms(self) -> Iterator[Alarm]:
        """The active alarms of this member."""
        return self._client().list_alarms(member_id=self.id)
