"""What :class:`~etcdkit.compat.etcd3.Etcd3Client` returns, in python-etcd3's shapes, made
from etcdkit's results: :class:`KVMetadata`, :class:`Status`, :class:`Alarm`,
:class:`PutResponse` and a transaction's :class:`ResponseOp`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

from etcdkit import DeleteResult, KeyValue, RangeResult, ResponseHeader
from etcdkit.compat.etcd3.members import Member

__all__ = [
    "Alarm",
    "KVMetadata",
    "PutResponse",
    "ResponseOp",
    "Status",
    "header_or_revision",
    "pairs",
]


class KVMetadata:
    """What python-etcd3 returned beside a value: the key and its revisions."""

    def __init__(self, keyvalue: KeyValue, header: ResponseHeader | None) -> None:
        self.key = keyvalue.key
        self.create_revision = keyvalue.create_revision
        self.mod_revision = keyvalue.mod_revision
        self.version = keyvalue.version
        self.lease_id = keyvalue.lease
        self.response_header = header

    def __repr__(self) -> str:
        return (
            f"<KVMetadata key={self.key!r} create_revision={self.create_revision} "
            f"mod_revision={self.mod_revision} version={self.version} lease_id={self.lease_id}>"
        )


class Status:
    """The status of the member the client talks to; ``leader`` is a :class:`Member` (or
    ``None`` when it knows no leader)."""

    def __init__(
        self, version: str, db_size: int, leader: Member | None, raft_index: int, raft_term: int
    ) -> None:
        self.version = version
        self.db_size = db_size
        self.leader = leader
        self.raft_index = raft_index
        self.raft_term = raft_term


class Alarm:
    """An active alarm: ``alarm_type`` is etcd's number (1: NOSPACE, 2: CORRUPT)."""

    def __init__(self, alarm_type: int, member_id: int) -> None:
        self.alarm_type = alarm_type
        self.member_id = member_id

    def __repr__(self) -> str:
        return f"<Alarm alarm_type={self.alarm_type} member_id={self.member_id:x}>"


class PutResponse(NamedTuple):
    """A put: etcd's ``header`` and the entry before it (``prev_kv``, asked for with
    ``prev_kv=True``; an empty one otherwise, as etcd's empty message read). Without
    ``prev_kv`` only ``header.revision`` is filled in."""

    header: ResponseHeader
    prev_kv: KeyValue


class TxnResponse(NamedTuple):
    """A nested transaction's response: ``succeeded``, and its ``responses`` in the shape
    :meth:`Etcd3Client.transaction` gives them."""

    succeeded: bool
    responses: list[Any]
    header: ResponseHeader | None


class ResponseOp:
    """One response of a transaction's put, delete or nested transaction (a get's is a list
    of ``(value, KVMetadata)``): ``response_put``, ``response_delete_range`` or
    ``response_txn``."""

    def __init__(
        self,
        response_put: PutResponse | None = None,
        response_delete_range: DeleteResult | None = None,
        response_txn: TxnResponse | None = None,
    ) -> None:
        self.response_put = response_put
        self.response_delete_range = response_delete_range
        self.response_txn = response_txn

    def WhichOneof(self, group: str) -> str:  # (protobuf's name)
        if self.response_put is not None:
            return "response_put"
        return "response_txn" if self.response_txn is not None else "response_delete_range"


def header_or_revision(result_header: ResponseHeader | None, revision: int) -> ResponseHeader:
    """etcd's header, or one that carries only ``revision`` when etcdkit gave none."""
    return result_header if result_header is not None else ResponseHeader(0, 0, revision, 0)


def pairs(result: RangeResult) -> Iterator[tuple[bytes, KVMetadata]]:
    """python-etcd3's listing: ``(value, KVMetadata)`` for each key read."""
    header = result.header
    return iter([(kv.value, KVMetadata(kv, header)) for kv in result.kvs])
