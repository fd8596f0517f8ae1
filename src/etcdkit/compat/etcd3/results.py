"""What :class:`~etcdkit.compat.etcd3.Etcd3Client` returns, in python-etcd3's shapes, made
from etcdkit's results: :class:`KVMetadata`, :class:`Status`, :class:`Alarm`,
:class:`PutResponse`, a transaction's :class:`ResponseOp` and a nested transaction's
:class:`TxnResponse`."""

from __future__ import annotations

from collections.abc import Generator
from typing import NamedTuple

from etcdkit import DeleteResult, KeyValue, RangeResult, ResponseHeader
from etcdkit.compat.etcd3.members import Member

__all__ = [
    "Alarm",
    "KVMetadata",
    "PutResponse",
    "ResponseOp",
    "Status",
    "TxnResponse",
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
    """A nested transaction's response (protobuf's ``TxnResponse``): ``succeeded``, one
    :class:`ResponseOp` per operation run in ``responses`` (a get's too, with its
    ``response_range``, as python-etcd3 passed etcd's messages through), and ``header``."""

    succeeded: bool
    responses: list[ResponseOp]
    header: ResponseHeader | None


class ResponseOp:
    """One response of a transaction (protobuf's ``ResponseOp``): the one of
    ``response_range``, ``response_put``, ``response_delete_range`` or ``response_txn`` that
    is set (the others are ``None``); :meth:`WhichOneof` names it. ``transaction()`` gives a
    top-level get as a list of ``(value, KVMetadata)`` instead, as python-etcd3 did; inside a
    nested transaction every response is a ResponseOp."""

    def __init__(
        self,
        response_put: PutResponse | None = None,
        response_delete_range: DeleteResult | None = None,
        response_txn: TxnResponse | None = None,
        response_range: RangeResult | None = None,
    ) -> None:
        self.response_range = response_range
        self.response_put = response_put
        self.response_delete_range = response_delete_range
        self.response_txn = response_txn

    def __repr__(self) -> str:
        which = self.WhichOneof("response")
        return f"<ResponseOp {which}={getattr(self, which)!r:.200}>"

    def WhichOneof(self, group: str) -> str:  # (protobuf's name)
        """The name of the response that is set (``group`` is protobuf's ``"response"``)."""
        if self.response_range is not None:
            return "response_range"
        if self.response_put is not None:
            return "response_put"
        return "response_txn" if self.response_txn is not None else "response_delete_range"


def header_or_revision(result_header: ResponseHeader | None, revision: int) -> ResponseHeader:
    """etcd's header, or one that carries only ``revision`` when etcdkit gave none."""
    return result_header if result_header is not None else ResponseHeader(0, 0, revision, 0)


def pairs(result: RangeResult) -> Generator[tuple[bytes, KVMetadata], None, None]:
    """python-etcd3's listing: a generator of ``(value, KVMetadata)`` for each key read (as its
    ``get_prefix`` returned: the keys were read when it was called)."""
    header = result.header
    items = [(kv.value, KVMetadata(kv, header)) for kv in result.kvs]
    return (item for item in items)
