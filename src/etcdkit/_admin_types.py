"""The values the administration API returns (:mod:`etcdkit._wire.admin`): cluster members, a
member's status, alarms, KV hashes, the auth status and role permissions.

Pure: no grpc, no protobuf. Member ids are etcd's unsigned 64-bit ids, shown in hex by
``etcdctl`` (``f"{member.id:x}"`` prints the same).
"""

from __future__ import annotations

from typing import Literal, NamedTuple, TypeAlias

from etcdkit._types import ResponseHeader

__all__ = [
    "PERMISSION_TYPES",
    "Alarm",
    "AlarmKind",
    "AuthStatus",
    "HashKV",
    "Member",
    "Permission",
    "PermissionType",
    "Status",
]

AlarmKind: TypeAlias = Literal["NOSPACE", "CORRUPT"]
PermissionType: TypeAlias = Literal["read", "write", "readwrite"]
PERMISSION_TYPES: tuple[PermissionType, ...] = ("read", "write", "readwrite")


class Member(NamedTuple):
    """One member of the cluster, as ``etcdctl member list`` shows it.

    ``name`` and ``client_urls`` are empty for a member that was added but has not started
    yet. ``is_learner``: a non-voting member that receives the log; promote it once it caught
    up (:meth:`Members.promote`)."""

    id: int
    name: str
    peer_urls: list[str]
    client_urls: list[str]
    is_learner: bool


class Status(NamedTuple):
    """What one member says about itself (:meth:`Maintenance.status`, ``etcdctl endpoint
    status``): its etcd ``version``, its backend's size on disk (``db_size``) and in use
    (``db_size_in_use``; the rest is freed by defragmenting), the id of the ``leader`` it
    follows (its own id when it leads; 0 when it knows none), its raft positions, the
    ``errors`` it reports (e.g. an active alarm), and whether it is a learner. ``header`` says
    which member answered (``header.member_id``)."""

    version: str
    db_size: int
    db_size_in_use: int
    leader: int
    raft_index: int
    raft_term: int
    raft_applied_index: int
    errors: list[str]
    is_learner: bool
    header: ResponseHeader


class Alarm(NamedTuple):
    """An active alarm of one member: ``kind`` is ``"NOSPACE"`` (the backend reached its quota:
    the cluster accepts only reads and deletes until you compact, defragment and disarm) or
    ``"CORRUPT"`` (the member's data differs from the others')."""

    member_id: int
    kind: str


class HashKV(NamedTuple):
    """The hash of one member's key-value store up to a revision (:meth:`Maintenance.hash_kv`).
    Members that agree on their data give the same ``hash`` for the same revision and
    ``compact_revision``."""

    hash: int
    compact_revision: int
    header: ResponseHeader


class AuthStatus(NamedTuple):
    """Whether auth is enabled, and the auth store's revision (it grows with every change of
    users, roles or permissions)."""

    enabled: bool
    auth_revision: int
    header: ResponseHeader


class Permission(NamedTuple):
    """One permission of a role: ``perm`` (``"read"``, ``"write"`` or ``"readwrite"``) on the
    key ``key`` alone when ``range_end`` is empty, else on the range ``[key, range_end)``
    (a prefix's range ends at the prefix with its last byte incremented; ``key == range_end ==
    b"\\0"`` is every key)."""

    perm: PermissionType
    key: bytes
    range_end: bytes
