"""The typed values the core hands to recipes and users: keys, listings, leases, watch events,
and transactions (compares, operations, results).

Pure: no grpc, no protobuf. The core (``_kv``, ``_watch_hub``) converts wire messages into
these; recipes and users only ever see these.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal, NamedTuple, TypeAlias

__all__ = [
    "Compare",
    "DeleteResult",
    "EventType",
    "KeyValue",
    "LeaseGrant",
    "Op",
    "OpResult",
    "PutResult",
    "RangeResult",
    "TxnResult",
    "WatchEvent",
    "check_int64",
    "key_bytes",
    "prefix_range_end",
    "to_bytes",
]


# -- argument checks (before any I/O) -------------------------------------------------------------


def to_bytes(value: str | bytes, what: str) -> bytes:
    """Accept ``str`` (UTF-8 encoded) or ``bytes``; anything else is a TypeError."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise TypeError(f"{what} must be str or bytes, got {type(value).__name__}: {value!r:.80}")


def key_bytes(key: str | bytes, what: str = "key") -> bytes:
    raw = to_bytes(key, what)
    if not raw:
        raise ValueError(f"{what} must not be empty")
    return raw


def check_int64(value: object, what: str, *, low: int = 0, hint: str = "") -> int:
    """An int in ``[low, 2**63)``: TypeError for another type, ValueError for another value."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{what} must be an int{hint}, got {type(value).__name__}: {value!r:.40}")
    if not low <= value < 2**63:
        raise ValueError(f"{what} must be an int64 >= {low}{hint}, got {value!r}")
    return value


def prefix_range_end(prefix: bytes) -> bytes:
    """The etcd range end that covers every key starting with ``prefix`` (byte-wise)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"  # all keys


# -- keys, listings, leases -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key as stored in etcd."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


class RangeResult(NamedTuple):
    """What :meth:`AsyncClient.get_prefix` returns: the keys, and the revision they were read at."""

    kvs: list[KeyValue]
    revision: int


class LeaseGrant(NamedTuple):
    """A granted lease: its id and the TTL the server actually granted (seconds)."""

    id: int
    ttl: int


class EventType(enum.Enum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change seen by a watch. For a DELETE, ``kv`` has the key, an empty value and the
    delete's ``mod_revision``; ``prev_kv`` is the entry before the change when asked for."""

    type: EventType
    kv: KeyValue
    prev_kv: KeyValue | None = None


# -- transactions ---------------------------------------------------------------------------------

CompareOp: TypeAlias = Literal["==", "!=", "<", ">"]
_OPS = ("==", "!=", "<", ">")


@dataclass(frozen=True, slots=True)
class Compare:
    """One condition of a transaction; build with the class methods::

        Compare.value("/cfg", "==", b"v1")
        Compare.version("/cfg", "==", 0)              # the key does not exist
        Compare.create_revision(lock.key, "==", token)
        Compare.mod_revision("/cfg", "<", 100)
        Compare.lease("/nodes/a", "==", lease_id)

    ``prefix=True`` applies the condition to every key under ``key`` (etcd's range compare).
    """

    key: bytes
    target: Literal["value", "version", "create", "mod", "lease"]
    op: CompareOp
    operand: bytes | int
    range_end: bytes = b""

    @classmethod
    def value(
        cls, key: str | bytes, op: CompareOp, value: str | bytes, *, prefix: bool = False
    ) -> Compare:
        return cls._make(key, "value", op, to_bytes(value, "value"), prefix)

    @classmethod
    def version(
        cls, key: str | bytes, op: CompareOp, version: int, *, prefix: bool = False
    ) -> Compare:
        return cls._make(key, "version", op, check_int64(version, "version"), prefix)

    @classmethod
    def create_revision(
        cls, key: str | bytes, op: CompareOp, revision: int, *, prefix: bool = False
    ) -> Compare:
        return cls._make(key, "create", op, check_int64(revision, "revision"), prefix)

    @classmethod
    def mod_revision(
        cls, key: str | bytes, op: CompareOp, revision: int, *, prefix: bool = False
    ) -> Compare:
        return cls._make(key, "mod", op, check_int64(revision, "revision"), prefix)

    @classmethod
    def lease(
        cls, key: str | bytes, op: CompareOp, lease_id: int, *, prefix: bool = False
    ) -> Compare:
        return cls._make(key, "lease", op, check_int64(lease_id, "lease_id"), prefix)

    @classmethod
    def _make(
        cls,
        key: str | bytes,
        target: Literal["value", "version", "create", "mod", "lease"],
        op: CompareOp,
        operand: bytes | int,
        prefix: bool,
    ) -> Compare:
        if op not in _OPS:
            raise ValueError(f"compare op must be one of {', '.join(_OPS)}; got {op!r}")
        raw = key_bytes(key)
        return cls(raw, target, op, operand, prefix_range_end(raw) if prefix else b"")


@dataclass(frozen=True, slots=True)
class Op:
    """One operation of a transaction; build with the class methods::

    Op.get("/k")    Op.range("/prefix/")    Op.put("/k", "v", lease=0)
    Op.delete("/k")    Op.delete_prefix("/prefix/")
    """

    kind: Literal["range", "put", "delete"]
    key: bytes
    range_end: bytes = b""
    value: bytes = b""
    lease: int = 0
    prev_kv: bool = False

    @classmethod
    def get(cls, key: str | bytes) -> Op:
        return cls("range", key_bytes(key))

    @classmethod
    def range(cls, prefix: str | bytes) -> Op:
        raw = to_bytes(prefix, "prefix")
        return cls("range", raw or b"\0", prefix_range_end(raw))

    @classmethod
    def put(
        cls, key: str | bytes, value: str | bytes, *, lease: int = 0, prev_kv: bool = False
    ) -> Op:
        lease = check_int64(lease, "lease", hint=" (a lease id, 0 = none)")
        return cls("put", key_bytes(key), b"", to_bytes(value, "value"), lease, bool(prev_kv))

    @classmethod
    def delete(cls, key: str | bytes, *, prev_kv: bool = False) -> Op:
        return cls("delete", key_bytes(key), prev_kv=bool(prev_kv))

    @classmethod
    def delete_prefix(cls, prefix: str | bytes, *, prev_kv: bool = False) -> Op:
        raw = key_bytes(prefix, "prefix")
        return cls("delete", raw, prefix_range_end(raw), prev_kv=bool(prev_kv))


class PutResult(NamedTuple):
    """A put inside a transaction: the revision, and the entry before it (if asked for)."""

    revision: int
    prev_kv: KeyValue | None


class DeleteResult(NamedTuple):
    """A delete inside a transaction: how many keys went, and their entries (if asked for)."""

    deleted: int
    prev_kvs: list[KeyValue]


OpResult: TypeAlias = RangeResult | PutResult | DeleteResult


class TxnResult(NamedTuple):
    """What :meth:`AsyncClient.txn` returns: whether every compare held (so ``success`` ran,
    else ``failure``), the revision after the transaction, and one result per operation run."""

    succeeded: bool
    revision: int
    responses: list[OpResult]
