"""The typed values the core hands to recipes and users: keys, listings, leases, watch events,
and transactions (compares, operations, results).

Pure: no grpc, no protobuf. The core (``_kv``, ``_watch_hub``) converts wire messages into
these; recipes and users only ever see these.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Protocol, TypeAlias

__all__ = [
    "Compare",
    "DeleteResult",
    "EventType",
    "HoldState",
    "KeepAliveStatus",
    "KeyValue",
    "KeyValueLike",
    "LeaseGrant",
    "LeaseInfo",
    "Op",
    "OpResult",
    "PutResult",
    "RangeResult",
    "ResponseHeader",
    "SessionState",
    "SortOrder",
    "SortTarget",
    "TxnResult",
    "WatchBatch",
    "WatchEvent",
    "WatchFilter",
    "check_bool",
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
        try:
            return value.encode()
        except UnicodeEncodeError as exc:  # (a lone surrogate: not text UTF-8 can hold)
            raise ValueError(
                f"{what} must be str that UTF-8 can encode, or bytes: {exc.reason} at index "
                f"{exc.start} of {value[max(0, exc.start - 20) : exc.start + 20]!r} (for bytes "
                "that are not UTF-8, pass bytes)"
            ) from None
    raise TypeError(f"{what} must be str or bytes, got {type(value).__name__}: {value!r:.80}")


def key_bytes(key: str | bytes, what: str = "key") -> bytes:
    if type(key) is bytes and key:
        return key  # (the common case, on every read and watch: no further call)
    raw = to_bytes(key, what)
    if not raw:
        raise ValueError(f"{what} must not be empty")
    return raw


def second_reader(what: str) -> RuntimeError:
    """The error for a second reader waiting on a stream that hands each item to one reader
    (a watch, a keep-alive stream), as an async generator refuses a second ``anext``."""
    return RuntimeError(
        f"this {what} is already being read by another task or thread: iterate it from one "
        "reader at a time (for two consumers, make two)"
    )


def check_int64(value: object, what: str, *, low: int = 0, hint: str = "") -> int:
    """An int in ``[low, 2**63)``: TypeError for another type, ValueError for another value."""
    if type(value) is int and low <= value < 2**63:
        return value  # (the common case: one test; a bool's type is bool)
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


class KeyValueLike(Protocol):
    """A listed key read straight from etcd's answer (``get_prefix_pages``): the attributes of
    :class:`KeyValue`, read-only, with no object made per key. A :class:`KeyValue` is one."""

    @property
    def key(self) -> bytes: ...
    @property
    def value(self) -> bytes: ...
    @property
    def create_revision(self) -> int: ...
    @property
    def mod_revision(self) -> int: ...
    @property
    def version(self) -> int: ...
    @property
    def lease(self) -> int: ...


class ResponseHeader(NamedTuple):
    """What etcd says about the answer it gives: which cluster and member answered, the store's
    revision when it answered, and the raft term (Go's ``etcdserverpb.ResponseHeader``)."""

    cluster_id: int
    member_id: int
    revision: int
    raft_term: int


@dataclass(frozen=True, slots=True)
class RangeResult:
    """What a read returns (:meth:`AsyncClient.range`, :meth:`AsyncClient.get_prefix`, a
    range inside a transaction): the keys, the revision they were read at, how many keys the
    range holds in all (``count``; more than ``len(kvs)`` when ``limit`` cut it), whether
    ``limit`` left keys out (``more``), and etcd's :class:`ResponseHeader`.

    It still unpacks as ``kvs, revision = result``, as it did before it had more fields."""

    kvs: list[KeyValue]
    revision: int
    count: int = 0
    more: bool = False
    header: ResponseHeader | None = None

    def __iter__(self) -> Iterator[list[KeyValue] | int]:
        return iter((self.kvs, self.revision))


class LeaseGrant(NamedTuple):
    """A granted lease: its id and the TTL the server actually granted (seconds)."""

    id: int
    ttl: int
    header: ResponseHeader | None = None


class _LeaseFields(NamedTuple):
    id: int
    ttl: int
    granted_ttl: int
    keys: list[bytes]


class LeaseInfo(_LeaseFields):
    """A lease as etcd reports it (:meth:`AsyncClient.lease_info`): its id, the seconds it has
    left, the TTL it was granted, and the keys attached to it (when asked for with
    ``keys=True``, else empty): the tuple ``(id, ttl, granted_ttl, keys)``. ``header``, etcd's
    :class:`ResponseHeader`, is an attribute beside the tuple's fields (it takes no part in
    unpacking, indexing or equality)."""

    header: ResponseHeader | None = None

    def __new__(
        cls,
        id: int,
        ttl: int,
        granted_ttl: int,
        keys: list[bytes],
        header: ResponseHeader | None = None,
    ) -> LeaseInfo:
        self = super().__new__(cls, id, ttl, granted_ttl, keys)
        if header is not None:
            self.header = header
        return self


class EventType(enum.Enum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change seen by a watch. For a DELETE, ``kv`` has the key, an empty value and the
    delete's ``mod_revision``; ``prev_kv`` is the entry before the change when asked for.
    It unpacks as ``type, kv, prev_kv = event``, as a :class:`WatchBatch` does."""

    type: EventType
    kv: KeyValue
    prev_kv: KeyValue | None = None

    def __iter__(self) -> Iterator[EventType | KeyValue | None]:
        return iter((self.type, self.kv, self.prev_kv))


class WatchBatch(NamedTuple):
    """One answer of etcd on a watch (:meth:`AsyncClient.watch`): the events of one revision
    range, in order (a transaction's events arrive together), and a revision etcd had
    reached when it sent them: at least the last event's, often etcd's newest (a watch on one
    key, which may share an etcd watch with other keys, says the last event's: that etcd
    watch's header speaks of the other keys' news too). A batch with no events is a progress
    notification: every change up to ``revision`` has been delivered. (A watch from a
    revision etcd has not reached yet says the revision before its start, never less:
    revisions a watch reports only go up, and the next change it can show is at its start.)"""

    revision: int
    events: list[WatchEvent]


class HoldState(enum.Enum):
    """Where a hold stands (a :class:`~etcdkit.Lock`, a :class:`~etcdkit.Leadership`, a
    semaphore's :class:`~etcdkit.Permit`, a read or write hold of an
    :class:`~etcdkit.RWLock`), as its owner should read it.

    - ``IDLE``: not acquired (yet). No key of ours is in etcd.
    - ``WAITING``: our key is in line; an older key holds. Do nothing that needs the lock.
    - ``REQUEUED``: while we waited, our key or our lease vanished (deleted or revoked by
      someone else, or the lease expired while etcd was unreachable): we lost our place and are
      queuing again, at the back, with a new lease. ``WAITING`` follows once the new key is in
      line. A lock or an election also counts each time (``requeues``, the
      ``etcdkit.lock.requeues`` metric) and logs it once as a WARNING (logger ``etcdkit.lock``).
    - ``HELD``: our key is the oldest, and etcd confirmed its lease within its TTL.
    - ``SUSPENDED``: we were the holder, but etcd has not confirmed our lease lately (connection
      down, member hung). We may still hold until the TTL runs out; we may not. Only writes
      guarded by the fencing token are safe; ``LOST`` follows before the TTL ends (a margin
      early) unless etcd answers again.
    - ``LOST``: etcd may have given the lock to another (or soon will): our key was deleted,
      replaced, or its lease expired, was revoked or went unconfirmed for its TTL. Final for this
      acquisition: stop, release, and acquire again if you still need it.
    - ``RELEASED``: we released it (our key was deleted with its lease). Final.
    """

    IDLE = "idle"
    WAITING = "waiting"
    REQUEUED = "requeued"
    HELD = "held"
    SUSPENDED = "suspended"
    LOST = "lost"
    RELEASED = "released"


class SessionState(enum.Enum):
    """What a :class:`Session` knows about its lease, as its owner should read it.

    - ``OPENING``: the lease is being granted.
    - ``ALIVE``: etcd confirmed the lease within its TTL; keys attached to it stand.
    - ``SUSPENDED``: etcd has not answered lately (connection down, member hung). The lease may
      still be alive until its TTL runs out, counted from the last confirmation; it may also be
      gone. Do not assume others still see your keys or that you still hold a lock.
    - ``LOST``: the lease is gone: revoked, expired, or unconfirmed for its whole TTL. etcd has
      deleted (or will delete) every key on it. Final: open a new session.
    - ``CLOSED``: you closed the session (its lease was revoked, or expires by itself if etcd
      was unreachable). Final.
    """

    OPENING = "opening"
    ALIVE = "alive"
    SUSPENDED = "suspended"
    LOST = "lost"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class KeepAliveStatus:
    """How a lease kept alive by :meth:`AsyncClient.keep_alive` stands.

    ``suspended=False``: etcd renewed the lease to ``ttl`` seconds. ``suspended=True``: the
    keepalive stream broke, or an answer is late; renewals resume once etcd answers, and the
    lease runs out at :attr:`KeepAlive.expires` unless it does (``ttl`` is then the last
    renewed TTL)."""

    ttl: int
    suspended: bool


WatchFilter: TypeAlias = Literal["noput", "nodelete"]
WATCH_FILTERS = ("noput", "nodelete")

# Seconds a cluster view (etcdkit.cluster, AsyncClient.cluster) may take to load its first view.
# Here, not in etcdkit.cluster, so that the client names it without importing the cluster.
DEFAULT_OPEN_TIMEOUT = 10.0


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
            error = ValueError if isinstance(op, str) else TypeError
            raise error(f"compare op must be one of {', '.join(_OPS)} (a str); got {op!r}")
        raw = key_bytes(key)
        prefixed = check_bool(prefix, "prefix")
        return cls(raw, target, op, operand, prefix_range_end(raw) if prefixed else b"")


SortOrder: TypeAlias = Literal["ascend", "descend"]
SortTarget: TypeAlias = Literal["key", "version", "create", "mod", "value"]
SORT_ORDERS = ("ascend", "descend")
SORT_TARGETS = ("key", "version", "create", "mod", "value")


def range_end_of(
    key: str | bytes, range_end: str | bytes | None, prefix: bool, what: str = "key"
) -> tuple[bytes, bytes]:
    """``(key, range_end)`` in etcd's terms from the public arguments: one key, the range
    ``[key, range_end)``, or every key starting with ``key`` (``prefix=True``; an empty
    ``key`` then means every key). ``range_end`` and ``prefix`` exclude each other."""
    if not isinstance(prefix, bool):
        raise TypeError(f"prefix must be a bool, got {type(prefix).__name__}: {prefix!r:.40}")
    if prefix:
        if range_end is not None:
            raise ValueError("pass either range_end or prefix=True, not both")
        raw = to_bytes(key, what)
        return (raw or b"\0"), prefix_range_end(raw)
    if range_end in (b"\0", "\0") and key in (b"", ""):
        return b"\0", b"\0"  # every key from the first on (etcd wants a key: Go's WithFromKey)
    raw = key_bytes(key, what)
    if range_end is None:
        return raw, b""
    end = to_bytes(range_end, "range_end")
    if not end:
        raise ValueError(
            "range_end must not be empty (None: one key; b'\\0': every key from key on)"
        )
    return raw, end


def check_timeout(timeout: object, what: str = "timeout") -> float | None:
    """``timeout`` as seconds (``None``: no bound); TypeError/ValueError naming ``what`` for
    anything but ``None`` or a number >= 0 (not a bool, not NaN)."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"{what} must be a number of seconds or None, got {timeout!r:.40}")
    if not timeout >= 0:
        raise ValueError(f"{what} must be a number of seconds >= 0 or None, got {timeout!r}")
    try:
        return float(timeout)
    except OverflowError:  # (an int past a float's range)
        raise ValueError(
            f"{what} must be a number of seconds >= 0 or None, got an int too large for a "
            "float (None waits with no bound)"
        ) from None


def check_bool(value: object, what: str) -> bool:
    """``value`` if it is a bool; TypeError naming ``what`` otherwise (not 0 or 1)."""
    if value is True or value is False:
        return value
    if not isinstance(value, bool):
        raise TypeError(f"{what} must be a bool, got {type(value).__name__}: {value!r:.40}")
    return value


@dataclass(frozen=True)
class Op:
    """One operation of a transaction; build with the class methods::

        Op.get("/k")
        Op.range("/jobs/", prefix=True, sort_target="create", limit=1)
        Op.put("/k", "v", lease=0)
        Op.delete("/k")    Op.delete_range("/jobs/", prefix=True)
        Op.txn([Compare.version("/k", "==", 0)], [Op.put("/k", "v")], [Op.get("/k")])

    ``Op.range`` takes the options of :meth:`AsyncClient.range`, ``Op.delete_range`` those of
    :meth:`AsyncClient.delete_range`, ``Op.put`` those of :meth:`AsyncClient.put`, ``Op.txn``
    those of :meth:`AsyncClient.txn` (a transaction nested in another, as Go's ``OpTxn``).
    """

    kind: Literal["range", "put", "delete", "txn"]
    key: bytes
    range_end: bytes = b""
    value: bytes = b""
    lease: int = 0
    prev_kv: bool = False
    ignore_value: bool = False
    ignore_lease: bool = False
    revision: int = 0
    limit: int = 0
    sort_order: SortOrder | None = None
    sort_target: SortTarget = "key"
    serializable: bool = False
    keys_only: bool = False
    count_only: bool = False
    min_mod_revision: int = 0
    max_mod_revision: int = 0
    min_create_revision: int = 0
    max_create_revision: int = 0
    compare: tuple[Compare, ...] = ()
    success: tuple[Op, ...] = ()
    failure: tuple[Op, ...] = ()

    @property
    def writes(self) -> bool:
        """Whether running this operation may write (a nested txn: any of its operations)."""
        if self.kind == "txn":
            return any(op.writes for op in (*self.success, *self.failure))
        return self.kind != "range"

    @classmethod
    def txn(
        cls,
        compare: Sequence[Compare] = (),
        success: Sequence[Op] = (),
        failure: Sequence[Op] = (),
    ) -> Op:
        """A transaction inside a transaction (etcd 3.3+): its ``compare`` is evaluated when
        the outer transaction runs this operation; its result is a :class:`TxnResult`.
        etcd refuses a nested transaction that writes a key another operation of the outer
        one also writes."""
        for name, seq, item in (
            ("compare", compare, Compare),
            ("success", success, Op),
            ("failure", failure, Op),
        ):
            if isinstance(seq, str | bytes) or not isinstance(seq, Sequence):
                raise TypeError(f"Op.txn {name} must be a list, got {seq!r:.80}")
            for x in seq:
                if not isinstance(x, item):
                    raise TypeError(
                        f"Op.txn {name} must hold etcdkit.{item.__name__} objects, got {x!r:.80}"
                    )
        return _op(
            "txn", b"", compare=tuple(compare), success=tuple(success), failure=tuple(failure)
        )

    @classmethod
    def get(cls, key: str | bytes, *, revision: int = 0, serializable: bool = False) -> Op:
        """Read one key."""
        return _op(
            "range",
            key_bytes(key),
            revision=check_int64(revision, "revision", hint=" (0 = latest)"),
            serializable=check_bool(serializable, "serializable"),
        )

    @classmethod
    def range(
        cls,
        key: str | bytes,
        range_end: str | bytes | None = None,
        *,
        prefix: bool = False,
        revision: int = 0,
        limit: int = 0,
        sort_order: SortOrder | None = None,
        sort_target: SortTarget = "key",
        serializable: bool = False,
        keys_only: bool = False,
        count_only: bool = False,
        min_mod_revision: int = 0,
        max_mod_revision: int = 0,
        min_create_revision: int = 0,
        max_create_revision: int = 0,
    ) -> Op:
        """Read one key, the keys in ``[key, range_end)``, or with ``prefix=True`` every key
        starting with ``key`` (see :meth:`AsyncClient.range` for the options)."""
        raw, end = range_end_of(key, range_end, prefix)
        if sort_order is not None and sort_order not in SORT_ORDERS:
            error = ValueError if isinstance(sort_order, str) else TypeError
            raise error(f"sort_order must be 'ascend', 'descend' or None; got {sort_order!r}")
        if sort_target not in SORT_TARGETS:
            raise (ValueError if isinstance(sort_target, str) else TypeError)(
                f"sort_target must be one of {', '.join(map(repr, SORT_TARGETS))}; "
                f"got {sort_target!r}"
            )
        return _op(
            "range",
            raw,
            range_end=end,
            revision=check_int64(revision, "revision", hint=" (0 = latest)"),
            limit=check_int64(limit, "limit", hint=" (0 = no limit)"),
            sort_order=sort_order,
            sort_target=sort_target,
            serializable=check_bool(serializable, "serializable"),
            keys_only=check_bool(keys_only, "keys_only"),
            count_only=check_bool(count_only, "count_only"),
            min_mod_revision=check_int64(min_mod_revision, "min_mod_revision"),
            max_mod_revision=check_int64(max_mod_revision, "max_mod_revision"),
            min_create_revision=check_int64(min_create_revision, "min_create_revision"),
            max_create_revision=check_int64(max_create_revision, "max_create_revision"),
        )

    @classmethod
    def put(
        cls,
        key: str | bytes,
        value: str | bytes,
        *,
        lease: int = 0,
        prev_kv: bool = False,
        ignore_value: bool = False,
        ignore_lease: bool = False,
    ) -> Op:
        """Write ``key=value`` (see :meth:`AsyncClient.put` for the options)."""
        lease = check_int64(lease, "lease", hint=" (a lease id, 0 = none)")
        if check_bool(ignore_value, "ignore_value") and value not in (b"", ""):
            raise ValueError("ignore_value=True keeps the current value: pass value=b''")
        if check_bool(ignore_lease, "ignore_lease") and lease:
            raise ValueError("ignore_lease=True keeps the current lease: pass lease=0")
        return _op(
            "put",
            key_bytes(key),
            value=to_bytes(value, "value"),
            lease=lease,
            prev_kv=check_bool(prev_kv, "prev_kv"),
            ignore_value=ignore_value,
            ignore_lease=ignore_lease,
        )

    @classmethod
    def delete(cls, key: str | bytes, *, prev_kv: bool = False) -> Op:
        """Delete one key."""
        return cls.delete_range(key, prev_kv=prev_kv)

    @classmethod
    def delete_range(
        cls,
        key: str | bytes,
        range_end: str | bytes | None = None,
        *,
        prefix: bool = False,
        prev_kv: bool = False,
    ) -> Op:
        """Delete one key, the keys in ``[key, range_end)``, or with ``prefix=True`` every key
        starting with ``key``."""
        raw, end = range_end_of(key, range_end, prefix)
        return _op("delete", raw, range_end=end, prev_kv=check_bool(prev_kv, "prev_kv"))

    @classmethod
    def delete_prefix(cls, prefix: str | bytes, *, prev_kv: bool = False) -> Op:
        """Delete every key starting with ``prefix`` (which must not be empty)."""
        key_bytes(prefix, "prefix")
        return cls.delete_range(prefix, prefix=True, prev_kv=prev_kv)


_new_object = object.__new__


def _op(kind: Literal["range", "put", "delete", "txn"], key: bytes, **fields: Any) -> Op:
    """An :class:`Op` of checked fields, made without the dataclass ``__init__``: a frozen
    dataclass sets each of its 22 fields through ``object.__setattr__`` (2 us an Op); this
    stores only the fields given (0.3 us), the others read the class's defaults. Equal, and
    hashed alike, to the same ``Op(...)``."""
    op = _new_object(Op)
    d = op.__dict__
    d["kind"] = kind
    d["key"] = key
    d.update(fields)
    return op


class PutResult(NamedTuple):
    """A put: the revision it made, the entry before it (when asked for with ``prev_kv``),
    and etcd's :class:`ResponseHeader`."""

    revision: int
    prev_kv: KeyValue | None
    header: ResponseHeader | None = None


class DeleteResult(NamedTuple):
    """A delete: how many keys went, their entries (when asked for with ``prev_kv``), and
    etcd's :class:`ResponseHeader`."""

    deleted: int
    prev_kvs: list[KeyValue]
    header: ResponseHeader | None = None


OpResult: TypeAlias = "RangeResult | PutResult | DeleteResult | TxnResult"


class TxnResult(NamedTuple):
    """What :meth:`AsyncClient.txn` returns: whether every compare held (so ``success`` ran,
    else ``failure``), the revision after the transaction, and one result per operation run."""

    succeeded: bool
    revision: int
    responses: list[OpResult]
    header: ResponseHeader | None = None
