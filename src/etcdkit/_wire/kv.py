"""Typed KV, transaction and lease calls: the only face of the wire that recipes and the client use.

Every method takes and returns the plain values of :mod:`etcdkit._types`; requests are built
and responses read here, nowhere else. Argument checks happen before any I/O and raise
``TypeError`` (wrong type) or ``ValueError`` (wrong value) with what to pass instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncGenerator, Awaitable, Sequence
from typing import Any

import grpc
import grpc.aio
from aetcd import rpc

from etcdkit._errors import (
    ClosedError,
    ConnectionUnavailableError,
    EtcdkitError,
    EtcdTimeoutError,
    InvalidArgumentError,
    LeaseNotFoundError,
    mark_retrieved,
)
from etcdkit._types import (
    Compare,
    DeleteResult,
    KeyValue,
    KeyValueLike,
    LeaseGrant,
    LeaseInfo,
    Op,
    OpResult,
    PutResult,
    RangeResult,
    ResponseHeader,
    TxnResult,
    check_bool,
    check_int64,
    key_bytes,
    prefix_range_end,
    to_bytes,
)
from etcdkit._wire.conn import Channel, Connection, map_rpc_error

__all__ = ["KV", "KeySpace", "header_of", "kv_of"]

# A fixed-size listing page is cut in half when its answer is bigger than this (keeps messages
# well below gRPC/etcd limits for big values).
PAGE_BYTES = 16 * 1024 * 1024
# Pages sized by the library: the first of FIRST_PAGE_KEYS keys (whatever their size: none is
# known before), then twice as many each time, up to about PAGE_TARGET_BYTES at the sizes seen
# so far (fewer keys than the first page's when values are big; 1M small keys: ~16 pages, not
# 100). A larger target is faster at a million keys and costs peak memory (8 MB: 4.3 s,
# 367 MB; 4 MB: 5.0 s, 340 MB; bench/initial.py). Once fewer keys are left than that (etcd's
# count says how many), each page takes half of the rest, down to LAST_PAGE_KEYS (and no
# smaller one after it): the caller's work on the last page overlaps no read (100k keys: 8
# pages, not 4; the first sync's peak RSS is lower, bench/README.md "Last pages").
FIRST_PAGE_KEYS = 10_000
PAGE_TARGET_BYTES = 4 * 1024 * 1024
MAX_PAGE_KEYS = 500_000
LAST_PAGE_KEYS = 2_000
MIN_PAGE_KEYS = 1  # later pages of big values: about PAGE_TARGET_BYTES (a key over it alone)
SEND_TURNS = 3  # loop turns a prefetch needs to put its request on the wire
KV_OVERHEAD = 24  # bytes of a listed key besides its key and value (revisions, lease, framing)
# Pages after the second, while GUESS_REST_KEYS keys or more are left, are read from guessed
# ranges (KeySpace): a range sized for GUESS_SLACK times the keys wanted (the limit cuts the
# rest), at most GUESS_TRIES ranges a page (then the rest of the prefix), each
# GUESS_MISS_GROWTH times wider after one that held no key; keys read as numbers of at most
# GUESS_WIDTH bytes. (Under 100k keys left, etcd's walk of them costs about what the round
# trips of a guess that missed do: 100k-key listings took as long either way. A 1M-key sync
# 0.79 x the time, etcd's CPU 0.65 x: bench/README.md "Guessed ranges".)
GUESS_REST_KEYS = 100_000
GUESS_SLACK = 2.0
GUESS_TRIES = 6
GUESS_MISS_GROWTH = 8.0
GUESS_WIDTH = 64

_TARGET = {
    "value": rpc.Compare.CompareTarget.VALUE,
    "version": rpc.Compare.CompareTarget.VERSION,
    "create": rpc.Compare.CompareTarget.CREATE,
    "mod": rpc.Compare.CompareTarget.MOD,
    "lease": rpc.Compare.CompareTarget.LEASE,
}
_FIELD = {
    "value": "value",
    "version": "version",
    "create": "create_revision",
    "mod": "mod_revision",
    "lease": "lease",
}
_RESULT = {
    "==": rpc.Compare.CompareResult.EQUAL,
    "!=": rpc.Compare.CompareResult.NOT_EQUAL,
    "<": rpc.Compare.CompareResult.LESS,
    ">": rpc.Compare.CompareResult.GREATER,
}


class _Unfrozen:
    """KeyValue's slots without the frozen ``__setattr__``: kv_of fills one in with plain
    attribute stores, then makes it a KeyValue (``__class__`` assignment, allowed between
    classes of the same slots). A frozen dataclass's __init__ goes through
    object.__setattr__ for each field (1.6 us per key); setting the slots through their
    descriptors took 1.0-1.1 us, this way 0.8-0.9 (``python -m bench.micro``: ``kv_of_ms``).
    The object is the same: same type, fields, equality and hash, and still frozen."""

    __slots__ = KeyValue.__slots__


_new_object = object.__new__
# RangeResult's slots, set directly through their descriptors (its frozen dataclass's __init__
# goes through object.__setattr__ per field): ten thousand wait_for calls read ten thousand
# of them at once.
_SET_KVS, _SET_REVISION, _SET_COUNT, _SET_MORE, _SET_HEADER = (
    RangeResult.__dict__[name].__set__ for name in ("kvs", "revision", "count", "more", "header")
)
# The NamedTuple results made per call, made as their tuples are: a NamedTuple's generated
# __new__ is a Python function (with its defaults), 0.3-0.5 us more each.
_new_tuple = tuple.__new__


def next_page_keys(limit: int, cap: int, rest: int) -> int:
    """The keys to ask for in the next page of a listing the library sizes, after a page of
    ``limit`` keys with ``rest`` keys after it: twice as many, at most ``cap``; once ``rest`` is
    small, half of it, at least LAST_PAGE_KEYS, and all of it rather than leave a smaller page
    after it (``cap`` is at least FIRST_PAGE_KEYS, over 3 x LAST_PAGE_KEYS: a rest that would
    leave one is never above ``cap``). ``rest <= 0`` (a server that left its count out) gets
    the doubling alone."""
    limit = min(cap, limit * 2)
    if rest <= 0:
        return limit
    limit = min(limit, max(LAST_PAGE_KEYS, -(-rest // 2)))
    if rest - limit < LAST_PAGE_KEYS:
        limit = min(cap, rest)  # no runt page after this one
    return limit


class KeySpace:
    """Where the keys under a prefix lie, to guess the range that holds the next N of them.

    etcd 3.5 counts every key of a Range's range (``count``), whatever its ``limit``: a page
    asked for as "``limit`` keys from here to the end of the prefix" costs etcd a walk of every
    key left (12 ms per 100k keys, on every page: a million keys in pages of 80k walk eight
    million). A page asked for as the keys of a range that holds about that many costs a walk
    of that range alone. Pure: no I/O.

    Keys are read as numbers: the bytes after the prefix, up to ``width`` of them (the common
    prefix of the listing's first and last key so far, and 8 more), big-endian, zero-padded.
    The density is the listing's so far (keys read over the numbers they span: two pages at
    least, as one page of keys numbered in decimal is one dense block between empty gaps). A
    guess is where ``want`` keys at that density end, times GUESS_SLACK. It is only ever a
    range end: the pages cover every key, once, in order, whatever it guessed.
    """

    __slots__ = ("first", "per_key", "prefix", "width")

    def __init__(self, prefix: bytes, width: int) -> None:
        self.prefix = prefix
        self.width = width
        self.first = 0  # the number of the listing's first key
        self.per_key = 0.0  # numbers per key, over the keys read so far

    @classmethod
    def of(cls, prefix: bytes, first: bytes, last: bytes, keys: int) -> KeySpace | None:
        """From the first and last of the ``keys`` keys read so far; None when they tell
        nothing (keys that differ only past GUESS_WIDTH bytes after the prefix)."""
        common = len(prefix)
        while common < min(len(first), len(last)) and first[common] == last[common]:
            common += 1
        space = cls(prefix, min(GUESS_WIDTH, common - len(prefix) + 8))
        space.first = space.number(first)
        return space if space.read(last, keys) else None

    def number(self, key: bytes) -> int:
        n = len(self.prefix)
        return int.from_bytes(key[n : n + self.width].ljust(self.width, b"\0"), "big")

    def read(self, last: bytes, keys: int) -> bool:
        """``keys`` keys read, up to ``last``: the density from them; False if none."""
        span = self.number(last) - self.first
        if keys < 2 or span <= 0:
            return False
        self.per_key = span / (keys - 1)
        return True

    def guess(self, start: bytes, want: int, end: bytes, misses: int = 0) -> bytes:
        """A range end after ``start`` that should hold ``want`` keys or a few more (a range
        GUESS_MISS_GROWTH times wider for each of ``misses`` ranges found empty before); ``end``
        (the prefix's) when the guess would reach it."""
        reach = self.per_key * want * GUESS_SLACK * GUESS_MISS_GROWTH**misses
        n = self.number(start) + 1 + int(min(reach, 2.0 ** (8 * self.width)))
        if n >= 1 << (8 * self.width):
            return end
        stop = self.prefix + n.to_bytes(self.width, "big").rstrip(b"\0")
        return stop if start < stop < end else end


def _joined(pieces: list[Any]) -> Any:
    return pieces[0] if len(pieces) == 1 else [kv for piece in pieces for kv in piece]


def kv_of(pb: Any) -> KeyValue:
    """A :class:`KeyValue` from an ``mvccpb.KeyValue`` message.

    A key not changed since it was created (``create_revision == mod_revision``) holds one int
    object for both: protobuf hands out a new one per field read, 28 bytes each above 256
    (``python -m bench.micro``: ``kv_of_mb``)."""
    kv: Any = _Unfrozen()
    kv.key = pb.key
    kv.value = pb.value
    mod = kv.mod_revision = pb.mod_revision
    create = pb.create_revision
    kv.create_revision = mod if create == mod else create
    kv.version = pb.version
    kv.lease = pb.lease
    kv.__class__ = KeyValue
    return kv  # type: ignore[no-any-return]


def header_of(pb: Any) -> ResponseHeader:
    """A :class:`ResponseHeader` from an ``etcdserverpb.ResponseHeader`` message (protobuf
    hands out its integer fields as ints)."""
    return _new_tuple(ResponseHeader, (pb.cluster_id, pb.member_id, pb.revision, pb.raft_term))


def _revision(revision: int, what: str = "revision") -> int:
    return check_int64(revision, what, hint=" (0 = latest)")


def _lease(lease: int) -> int:
    return check_int64(lease, "lease", hint=" (a lease id, 0 = none)")


def _ttl(ttl: int) -> int:
    return check_int64(ttl, "ttl", low=1, hint=" (whole seconds)")


# Requests are filled in place, setting only the fields that differ from protobuf's defaults:
# a message passed to another's constructor is copied, so a transaction built from nested
# constructors copied each operation twice (9 us for a lock's three operations; 3.7 us so).


def _fill_compare(pb: Any, c: Compare) -> None:
    if not isinstance(c, Compare):
        raise TypeError(f"txn compare entries must be etcdkit.Compare, got {c!r:.80}")
    pb.key = c.key
    if c.range_end:
        pb.range_end = c.range_end
    pb.target = _TARGET[c.target]
    pb.result = _RESULT[c.op]
    setattr(pb, _FIELD[c.target], c.operand)


_SORT_ORDER = {
    None: rpc.RangeRequest.SortOrder.NONE,
    "ascend": rpc.RangeRequest.SortOrder.ASCEND,
    "descend": rpc.RangeRequest.SortOrder.DESCEND,
}
_SORT_TARGET = {
    "key": rpc.RangeRequest.SortTarget.KEY,
    "version": rpc.RangeRequest.SortTarget.VERSION,
    "create": rpc.RangeRequest.SortTarget.CREATE,
    "mod": rpc.RangeRequest.SortTarget.MOD,
    "value": rpc.RangeRequest.SortTarget.VALUE,
}


def _fill_range(pb: Any, op: Op) -> None:
    pb.key = op.key
    if op.range_end:
        pb.range_end = op.range_end
    if op.revision:
        pb.revision = op.revision
    if op.limit:
        pb.limit = op.limit
    if op.sort_order is not None:
        pb.sort_order = _SORT_ORDER[op.sort_order]
    if op.sort_target != "key":
        pb.sort_target = _SORT_TARGET[op.sort_target]
    if op.serializable:
        pb.serializable = True
    if op.keys_only:
        pb.keys_only = True
    if op.count_only:
        pb.count_only = True
    if op.min_mod_revision:
        pb.min_mod_revision = op.min_mod_revision
    if op.max_mod_revision:
        pb.max_mod_revision = op.max_mod_revision
    if op.min_create_revision:
        pb.min_create_revision = op.min_create_revision
    if op.max_create_revision:
        pb.max_create_revision = op.max_create_revision


def _fill_put(pb: Any, op: Op) -> None:
    pb.key = op.key
    pb.value = op.value
    if op.lease:
        pb.lease = op.lease
    if op.prev_kv:
        pb.prev_kv = True
    if op.ignore_value:
        pb.ignore_value = True
    if op.ignore_lease:
        pb.ignore_lease = True


def _fill_delete(pb: Any, op: Op) -> None:
    pb.key = op.key
    if op.range_end:
        pb.range_end = op.range_end
    if op.prev_kv:
        pb.prev_kv = True


def _fill_op(pb: Any, op: Op) -> None:
    if not isinstance(op, Op):
        raise TypeError(f"txn operations must be etcdkit.Op, got {op!r:.80}")
    kind = op.kind
    if kind == "range":
        _fill_range(pb.request_range, op)
    elif kind == "put":
        _fill_put(pb.request_put, op)
    elif kind == "txn":
        _fill_txn(pb.request_txn, op.compare, op.success, op.failure)
    else:
        _fill_delete(pb.request_delete_range, op)


def _fill_txn(
    pb: Any, compare: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op]
) -> None:
    add = pb.compare.add
    for c in compare:
        _fill_compare(add(), c)
    add = pb.success.add
    for o in success:
        _fill_op(add(), o)
    add = pb.failure.add
    for o in failure:
        _fill_op(add(), o)


def _range_pb(op: Op) -> Any:
    pb = rpc.RangeRequest()
    _fill_range(pb, op)
    return pb


def _put_pb(op: Op) -> Any:
    pb = rpc.PutRequest()
    _fill_put(pb, op)
    return pb


def _delete_pb(op: Op) -> Any:
    pb = rpc.DeleteRangeRequest()
    _fill_delete(pb, op)
    return pb


def _txn_pb(compare: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op]) -> Any:
    pb = rpc.TxnRequest()
    _fill_txn(pb, compare, success, failure)
    return pb


def _range_result(resp: Any, header: ResponseHeader, revision: int = 0) -> RangeResult:
    pbs = resp.kvs
    result: RangeResult = _new_object(RangeResult)
    _SET_KVS(result, [kv_of(kv) for kv in pbs] if pbs else [])
    # the revision read at (the header's: the latest)
    _SET_REVISION(result, revision or header.revision)
    _SET_COUNT(result, int(resp.count))
    _SET_MORE(result, bool(resp.more))
    _SET_HEADER(result, header)
    return result


def _put_result(resp: Any, header: ResponseHeader) -> PutResult:
    prev = kv_of(resp.prev_kv) if resp.HasField("prev_kv") else None
    return _new_tuple(PutResult, (header.revision, prev, header))


def _delete_result(resp: Any, header: ResponseHeader) -> DeleteResult:
    return _new_tuple(DeleteResult, (resp.deleted, [kv_of(kv) for kv in resp.prev_kvs], header))


def _op_results(pbs: Any, header: ResponseHeader, ops: Sequence[Op]) -> list[OpResult]:
    # Inside a transaction, each operation's result carries the transaction's header: etcd
    # fills in only the revision of the per-operation headers. That revision is the
    # transaction's for a write, but a range reads the store as the transaction's operations
    # before it left it: one before the first write reads the revision before the
    # transaction's (Go's client hands out etcd's own per-operation headers). So a range
    # says the revision it read at, in its result and its header; one read at a past revision
    # says that revision, as a range() outside does. ``ops``: the branch run (etcd answers
    # each of its operations, in order).
    results: list[OpResult] = []
    for resp, op in zip(pbs, ops, strict=True):
        which = resp.WhichOneof("response")
        if which == "response_range":
            got = resp.response_range
            read_at = got.header.revision
            results.append(
                _range_result(
                    got,
                    _new_tuple(ResponseHeader, (header[0], header[1], read_at, header[3]))
                    if read_at and read_at != header.revision
                    else header,
                    op.revision,
                )
            )
        elif which == "response_put":
            results.append(_put_result(resp.response_put, header))
        elif which == "response_txn":
            results.append(_txn_result(resp.response_txn, header, op.success, op.failure))
        else:
            results.append(_delete_result(resp.response_delete_range, header))
    return results


def _txn_result(
    resp: Any, header: ResponseHeader, success: Sequence[Op], failure: Sequence[Op]
) -> TxnResult:
    """The result of a transaction (or of one nested in it) whose branches were these."""
    ops = success if resp.succeeded else failure
    return _new_tuple(
        TxnResult,
        (resp.succeeded, header.revision, _op_results(resp.responses, header, ops), header),
    )


_LISTS = (list, tuple)  # (txn's arguments, as given nearly always: no ABC check needed)
TXN_OPS = 128  # etcd's default --max-txn-ops: gets per coalesced read
BATCH_PROBE_SOON = 1.0  # s before asking again, when a connection changed while they were asked
BATCH_PROBE_AGAIN = 30.0  # s before asking again the endpoints' versions, when one did not answer
_STATUS = rpc.StatusRequest()
_READY = grpc.ChannelConnectivity.READY

log = logging.getLogger("etcdkit.kv")


def _all_ready(channels: Sequence[grpc.aio.Channel]) -> bool:
    """Every one of ``channels`` is connected now (grpc's own state: no I/O)."""
    return all(g.get_state(False) is _READY for g in channels)


def batches_reads(version: str) -> bool:
    """Whether etcd of ``version`` may be sent plain reads batched in a read-only transaction.
    Not etcd 3.5.0-3.5.4: it panics when a read-only transaction's context ends (deadline,
    cancel, connection gone) while the transaction runs (etcd-io/etcd#14110, fixed in 3.5.5),
    where a plain Range just fails. Nor a version it cannot read."""
    m = re.match(r"(\d+)\.(\d+)\.(\d+)", version)
    if m is None:
        return False
    v = (int(m[1]), int(m[2]), int(m[3]))
    return not (3, 5, 0) <= v <= (3, 5, 4)


class KV:
    """Typed etcd calls over one :class:`Connection` (retries and deadlines live there)."""

    # Whether plain reads may go out batched (see batches_reads): None until every endpoint's
    # version is known, unbatched meanwhile. (A class default: tests of what batches do set
    # it, on an etcd that would not get them.)
    _batches: bool | None = None

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._gets: list[tuple[bytes, asyncio.Future[RangeResult]]] = []
        self._flushing: set[asyncio.Task[None]] = set()
        self._reading = 0  # coalescable reads in flight
        self._batch_probe_at = 0.0  # (loop time) not before: the endpoints' versions
        # One per channel while its version is known: done once that channel's connection
        # changed (a member restarted, perhaps with another etcd binary: its version is to be
        # asked again before a read goes out batched there).
        self._connected: list[asyncio.Future[None]] = []
        self._grpc_channels: list[grpc.aio.Channel] = []  # the channels watched
        self._txn_ops_refused = False  # etcd refused a batch for --max-txn-ops: never again
        # (unbatched reads past TXN_OPS in flight wait here for one of TXN_OPS turns)
        self._plain_turns = asyncio.Semaphore(TXN_OPS)

    @property
    def where(self) -> str:
        return self._conn.where

    # (plain functions handing back the call's coroutine: no frame of their own per call)
    def _read(self, what: str, service: str, method: str, request: Any) -> Awaitable[Any]:
        return self._conn.call(what, service, method, request, idempotent=True)

    def _write(self, what: str, service: str, method: str, request: Any) -> Awaitable[Any]:
        return self._conn.call(what, service, method, request, idempotent=False)

    # -- reads ------------------------------------------------------------------------------------

    async def get(
        self, key: str | bytes, *, revision: int = 0, serializable: bool = False
    ) -> tuple[KeyValue | None, int]:
        """The key's entry (``None`` when absent) and the revision the answer holds at."""
        raw = key_bytes(key)
        req = rpc.RangeRequest(
            key=raw,
            revision=_revision(revision),
            serializable=check_bool(serializable, "serializable"),
        )
        resp = await self._read(f"get {raw!r}", "kv", "Range", req)
        return (kv_of(resp.kvs[0]) if resp.kvs else None), int(resp.header.revision)

    async def get_coalesced(self, key: bytes) -> RangeResult:
        """As :meth:`range` for a plain read of one key (``Op.get(key)``, ``key`` already
        checked), but reads asked for while another is in flight go out together at the next
        turn of the event loop, up to :data:`TXN_OPS` per read-only transaction (one revision
        each): ten thousand ``wait_for`` calls started at once cost ~80 round trips, not
        10,000. (No :class:`Op` is made per read: ten thousand of them add up.)

        Only once every endpoint said its version and none is etcd 3.5.0-3.5.4
        (:func:`batches_reads`), on the connections that said it; until then, and on those
        versions, each read is its own Range, as Go's ``Get``. A transaction etcd refuses for
        what one of its reads asks (a key the user may not read, ``--max-txn-ops`` below
        128) sends each read again alone, for its own answer. Unbatched, past
        :data:`TXN_OPS` such reads in flight, the next wait for one of :data:`TXN_OPS` turns
        (ten thousand grpc calls in flight at once cost ~20 KB each, and took longer)."""
        if (not self._reading and not self._gets) or not self._batching():
            # Nothing in flight (or no batches): this read goes out at once (a lone caller
            # waits no extra turn, and one that starts before a put reads before that put).
            if self._reading and self._batches is None:
                self._learn_versions()
            self._reading += 1
            try:
                if self._reading <= TXN_OPS:
                    return await self._get_one(key)
                async with self._plain_turns:
                    return await self._get_one(key)
            finally:
                self._reading -= 1
        fut: asyncio.Future[RangeResult] = asyncio.get_running_loop().create_future()
        if not self._gets:
            asyncio.get_running_loop().call_soon(self._flush_gets)
        self._gets.append((key, fut))
        return await fut

    def _batching(self) -> bool:
        """Reads may go out batched: every endpoint said a version that takes batches, and its
        connection is the one that said it. A connection changed since (a restart, maybe an
        upgrade or a downgrade in place) makes the versions unknown again."""
        if self._connected and (
            any(c.done() for c in self._connected)
            # (a change the watches have yet to hear of: a connection lost, or being made)
            or not _all_ready(self._grpc_channels)
        ):
            self._forget_versions()
        return self._batches is True

    def _forget_versions(self) -> None:
        self.end()
        self._batches = None
        if self._batch_probe_at != float("inf"):  # (not while one is under way: it ends)
            self._batch_probe_at = 0.0

    def end(self) -> None:
        """Stop watching the connections (the client closes)."""
        for c in self._connected:
            c.cancel()
        self._connected = []
        self._grpc_channels = []

    async def _get_one(self, key: bytes) -> RangeResult:
        resp = await self._read(f"get {key!r}", "kv", "Range", rpc.RangeRequest(key=key))
        return _range_result(resp, header_of(resp.header))

    async def _alone(
        self, chunk: list[tuple[bytes, asyncio.Future[RangeResult]]], deadline: float | None
    ) -> list[RangeResult | BaseException]:
        """Each read of ``chunk`` as a Range of its own, by ``deadline`` (the batch's: the
        callers wait no longer than for one read), at most :data:`TXN_OPS` in flight."""

        async def one(key: bytes) -> RangeResult:
            async with self._plain_turns:
                resp = await self._conn.call(
                    f"get {key!r}", "kv", "Range", rpc.RangeRequest(key=key), idempotent=True,
                    deadline=deadline,
                )  # fmt: skip
            return _range_result(resp, header_of(resp.header))

        return list(await asyncio.gather(*(one(k) for k, _ in chunk), return_exceptions=True))

    def _flush_gets(self) -> None:
        batch, self._gets = self._gets, []
        for i in range(0, len(batch), TXN_OPS):
            task = asyncio.ensure_future(self._read_many(batch[i : i + TXN_OPS]))
            self._flushing.add(task)
            task.add_done_callback(self._flushing.discard)

    async def _read_many(self, chunk: list[tuple[bytes, asyncio.Future[RangeResult]]]) -> None:
        self._reading += 1
        results: list[RangeResult | BaseException]
        try:
            results = await self._batch(chunk)
        except asyncio.CancelledError:
            for _, fut in chunk:
                fut.cancel()
            raise
        except Exception as exc:  # (anything else: every caller hears of it, none is left waiting)
            results = [exc] * len(chunk)
        finally:
            self._reading -= 1
        for (_, fut), result in zip(chunk, results):
            if fut.done():
                continue
            if isinstance(result, BaseException):
                fut.set_exception(result)
            else:
                fut.set_result(result)

    async def _batch(
        self, chunk: list[tuple[bytes, asyncio.Future[RangeResult]]]
    ) -> list[RangeResult | BaseException]:
        """The answer (or error) of each read of ``chunk``."""
        loop = asyncio.get_running_loop()
        timeout = self._conn.timeout
        deadline = None if timeout is None else loop.time() + timeout
        if not self._batching():  # (a connection changed since the reads were asked for)
            return await self._alone(chunk, deadline)
        if len(chunk) == 1:  # (a Range alone: its error is its own answer, not sent again)
            try:
                return [await self._get_one(chunk[0][0])]
            except EtcdkitError as exc:
                return [exc]
        try:
            # plain reads of one key each: the request and results are built directly
            req = rpc.TxnRequest(
                success=[rpc.RequestOp(request_range=rpc.RangeRequest(key=key)) for key, _ in chunk]
            )
            # Retried only while batches still may go out: a retry could otherwise reach a
            # member restarted meanwhile as another version (one that must not get them)
            # before its version was asked.
            resp = await self._conn.call(
                f"get {len(chunk)} keys", "kv", "Txn", req, idempotent=True, again=self._batching
            )
        except (EtcdTimeoutError, ClosedError) as exc:
            return [exc] * len(chunk)  # (each read alone would meet the same)
        except EtcdkitError as exc:
            if isinstance(exc, ConnectionUnavailableError) and (
                deadline is None or loop.time() >= deadline
            ):
                return [exc] * len(chunk)  # (no endpoint answered in time: as above)
            # etcd refused the transaction for what one read asks, or for its size, or a
            # connection changed under it: each read goes again alone, for its own answer
            # (as each was asked for), within the time the batch had.
            if "too many operations" in str(exc):
                self._batches = False
                self._txn_ops_refused = True
                log.info("plain reads are no longer batched: %s (etcd's --max-txn-ops)", exc)
            return await self._alone(chunk, deadline)
        header = header_of(resp.header)
        return [_range_result(r.response_range, header) for r in resp.responses]

    async def _statuses(self, channels: Sequence[Channel]) -> list[Any]:
        """Every endpoint's status, or the error asking it met."""
        calls = [
            self._conn.call(
                "status (are plain reads batched?)",
                "maintenance",
                "Status",
                _STATUS,
                idempotent=True,
                channel=ch,
            )
            for ch in channels
        ]
        return await asyncio.gather(*calls, return_exceptions=True)

    def _learn_versions(self) -> None:
        """Ask every endpoint's version (once at a time, in a task of the KV's: it ends with
        the client's calls), to know if plain reads may go out batched."""
        loop = asyncio.get_running_loop()
        if loop.time() < self._batch_probe_at:
            return
        self._batch_probe_at = float("inf")  # (one at a time)
        task = asyncio.ensure_future(self._versions())
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)
        task.add_done_callback(mark_retrieved)

    async def _versions(self) -> None:
        channels = self._conn.channels
        watches: list[asyncio.Future[None]] = []
        try:
            # Once every channel is connected (a first round of status requests connects
            # them), its connection is watched, and only then are the versions asked: an
            # answer holds for the connection it came on, and one that changes meanwhile (a
            # member restarted, maybe as another version) makes the round count for nothing.
            if any(isinstance(a, BaseException) for a in await self._statuses(channels)):
                return
            grpc_channels = [ch.stubs.channel for ch in channels]
            if not _all_ready(grpc_channels):
                return
            self.end()
            watches = [
                asyncio.ensure_future(g.wait_for_state_change(_READY)) for g in grpc_channels
            ]
            for c in watches:
                c.add_done_callback(mark_retrieved)
            self._grpc_channels, self._connected = grpc_channels, watches
            answers = await self._statuses(channels)
        finally:
            self._batch_probe_at = asyncio.get_running_loop().time() + BATCH_PROBE_AGAIN
        # (forgetting the versions, or the client's close, drops this round's watches)
        if (
            self._connected is not watches
            or any(c.done() for c in watches)
            or not _all_ready(grpc_channels)
        ):
            # (a connection changed during the round: asked again soon)
            for c in watches:
                c.cancel()
            if self._connected is watches:
                self.end()
            self._batch_probe_at = asyncio.get_running_loop().time() + BATCH_PROBE_SOON
            return
        old = [a.version for a in answers if not isinstance(a, BaseException)]
        old = [v for v in old if not batches_reads(v)]
        if old:
            self._batches = False
            log.info(
                "etcd %s: plain reads are not batched into transactions (etcd 3.5.0-3.5.4 "
                "panics when one is cut short: etcd-io/etcd#14110)",
                old[0],
            )
        elif not any(isinstance(a, BaseException) for a in answers) and not self._txn_ops_refused:
            self._batches = True

    async def range(self, op: Op) -> RangeResult:
        """Run one range :class:`Op` (built, and so checked, by ``Op.range``)."""
        what = f"range {op.key!r}..{op.range_end!r}" if op.range_end else f"get {op.key!r}"
        resp = await self._read(what, "kv", "Range", _range_pb(op))
        return _range_result(resp, header_of(resp.header), op.revision)

    async def revision(self, key: bytes = b"\0") -> int:
        """The store's current revision (one cheap linearizable read: a count of the one key
        ``key``, which a user of etcd's auth must be allowed to read)."""
        resp = await self._read(
            "get revision", "kv", "Range", rpc.RangeRequest(key=key, count_only=True)
        )
        return int(resp.header.revision)

    @staticmethod
    def check_pages(
        prefix: str | bytes, revision: int, page_size: int | None, keys_only: bool
    ) -> bytes:
        """The arguments of a paged listing, checked (so a caller may check them before its
        first page is asked for); the prefix as bytes."""
        raw = to_bytes(prefix, "prefix")
        _revision(revision)
        if page_size is not None:
            check_int64(page_size, "page_size", low=1, hint=" (keys per page, or None)")
        check_bool(keys_only, "keys_only")
        return raw

    async def _pb_pages(
        self,
        prefix: str | bytes,
        revision: int,
        page_size: int | None,
        keys_only: bool,
        what: str = "get_prefix",
    ) -> AsyncGenerator[tuple[Any, int, Any], None]:
        raw = self.check_pages(prefix, revision, page_size, keys_only)
        rev = revision
        limit = page_size or FIRST_PAGE_KEYS
        end = prefix_range_end(raw)
        what = f"{what} {raw!r}"
        space: KeySpace | None = None  # where the keys lie, once the first page says
        rest = -1  # keys after the pages read so far (etcd's count on the first page)
        # Pages at a known revision are read as they are at that revision, which no later write
        # changes: serializable reads, with no round of raft's ReadIndex each (a few ms a page
        # here, within the noise of bench/initial.py). A member that has not reached the
        # revision yet says so ("a future revision"): the listing's pages are linearizable
        # from then on (such a read waits for the member to catch up).
        serial = True

        async def page(start: bytes, want: int, rev: int) -> tuple[Any, Any, bool, bytes]:
            """The page of ``want`` keys from ``start``: its keys, the last answer, whether
            keys are left after it, and where they start. etcd 3.5 counts every key of a
            request's range, to the end of the prefix, whatever its limit (12 ms per 100k
            keys, for every page); so once ``space`` can guess, the page is read from guessed
            ranges that hold about its keys, each counted alone (KeySpace)."""
            nonlocal limit  # cut when etcd finds an answer too large: this page and the next
            nonlocal serial
            pieces: list[Any] = []
            got = tries = misses = 0
            while True:
                stop = end
                if (
                    space is not None
                    and tries < GUESS_TRIES
                    and rest > want
                    and rest >= GUESS_REST_KEYS
                ):
                    stop = space.guess(start, want - got, end, misses)
                    tries += 1
                req = rpc.RangeRequest(
                    key=start,
                    range_end=stop,
                    limit=want - got,
                    revision=rev,
                    keys_only=keys_only,
                    serializable=serial and rev != 0,
                )
                try:
                    resp = await self._read(what, "kv", "Range", req)
                except InvalidArgumentError as exc:
                    if "too large" in str(exc) and want - got > 1:
                        want = limit = got + max(1, (want - got) // 2)
                        continue
                    if req.serializable and "future revision" in str(exc):
                        serial = False  # a member behind the revision: it catches up first
                        continue
                    raise
                kvs = resp.kvs
                if kvs:
                    pieces.append(kvs)
                    got += len(kvs)
                else:
                    misses += 1
                if resp.more:  # cut by the limit: the page is full
                    return _joined(pieces), resp, True, kvs[-1].key + b"\0"
                if stop is end:  # the rest of the prefix, whole
                    return _joined(pieces), resp, False, b""
                start = stop  # a guessed range, all read: on from its end
                if got >= want:
                    return _joined(pieces), resp, True, start

        start = raw if raw else b"\0"
        pending = asyncio.ensure_future(page(start, limit, rev))
        first_key = b""
        read = 0  # keys in the pages yielded so far
        try:
            while True:
                kvs, resp, more, start = await pending
                first = read == 0
                if rev == 0:
                    rev = int(resp.header.revision)
                if not more:
                    if kvs or first:
                        yield kvs, rev, resp.header
                    return
                read += len(kvs)
                if first:
                    # etcd's count covers this page and every key after it
                    rest = int(resp.count) - len(kvs) if resp.count > len(kvs) else -1
                    first_key = kvs[0].key
                elif rest > 0:
                    rest = max(1, rest - len(kvs))  # (at least one: more keys are coming)
                    if page_size is None:  # guesses from the second page on (KeySpace)
                        if space is None:
                            space = KeySpace.of(raw, first_key, kvs[-1].key, read)
                        else:
                            space.read(kvs[-1].key, read)
                if page_size is None:
                    # Pages sized in bytes, not keys: few large pages beat many small ones. The
                    # size of a key is estimated from a sample (ByteSize() would walk the
                    # message).
                    sample = kvs[:: max(1, len(kvs) // 64)]
                    per_key = KV_OVERHEAD + sum(
                        len(kv.key) + len(kv.value) for kv in sample
                    ) // len(sample)
                    # Pages double up to that size: early pages are small, so the caller starts
                    # on the first keys while etcd reads the next (and a 100k-key prefix is
                    # not one big page nothing overlaps with).
                    # (big values: fewer keys than the first page's, down to MIN_PAGE_KEYS)
                    cap = min(MAX_PAGE_KEYS, max(MIN_PAGE_KEYS, PAGE_TARGET_BYTES // per_key))
                    # ...and shrink toward the end
                    limit = next_page_keys(limit, cap, rest)
                elif limit > 100 and resp.ByteSize() > PAGE_BYTES:
                    limit //= 2
                # Ask for the next page now: etcd reads it while this one is consumed. The
                # request leaves only once its task (and grpc's own) ran, so give them those
                # loop turns before the caller's synchronous work on this page.
                pending = asyncio.ensure_future(page(start, limit, rev))
                # (its error is retrieved when it is done: a listing dropped unfinished, say as
                # its client closes, may never reach the finally below, and a failed prefetch
                # nobody waits for is no error)
                pending.add_done_callback(mark_retrieved)
                for _ in range(SEND_TURNS):
                    await asyncio.sleep(0)
                yield kvs, rev, resp.header
        finally:
            if not pending.done():
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, EtcdkitError):
                    await pending

    async def pages(
        self,
        prefix: str | bytes,
        *,
        revision: int = 0,
        page_size: int | None = None,
        keys_only: bool = False,
        what: str = "get_prefix",
    ) -> AsyncGenerator[tuple[list[KeyValue], int, ResponseHeader], None]:
        """Every key under ``prefix``, page by page, all pages at one revision, with the
        header of the page's answer.

        With ``revision=0`` the first page fixes the revision. ``page_size`` keys per page, or
        ``None`` for pages of about :data:`PAGE_TARGET_BYTES`. The next page is requested while
        the caller handles this one. Raises :class:`CompactedError` if that revision is
        compacted while paging. Close the iterator if you stop early (``contextlib.aclosing``).
        ``what`` names the listing in errors (``range`` when it reads a whole prefix).
        """
        async for page, rev, header in self._pb_pages(prefix, revision, page_size, keys_only, what):
            yield [kv_of(kv) for kv in page], rev, header_of(header)

    async def record_pages(
        self,
        prefix: str | bytes,
        *,
        revision: int = 0,
        page_size: int | None = None,
        keys_only: bool = False,
    ) -> AsyncGenerator[tuple[Sequence[KeyValueLike], int], None]:
        """As :meth:`pages`, yielding each page as etcd's own messages (the cheap form for big
        listings: no object made per key)."""
        async for page, rev, _header in self._pb_pages(prefix, revision, page_size, keys_only):
            yield page, rev

    # -- writes -----------------------------------------------------------------------------------

    async def put(self, op: Op) -> PutResult:
        """Run one put :class:`Op` (built, and so checked, by ``Op.put``)."""
        resp = await self._write(f"put {op.key!r}", "kv", "Put", _put_pb(op))
        return _put_result(resp, header_of(resp.header))

    async def put_plain(self, key: bytes, value: bytes, lease: int) -> int:
        """``put(Op.put(key, value, lease=lease)).revision`` for arguments already checked as
        ``Op.put`` checks them, without the :class:`Op` and the :class:`PutResult` (the most
        common write: a few µs less)."""
        req = rpc.PutRequest(key=key, value=value, lease=lease)
        resp = await self._write(f"put {key!r}", "kv", "Put", req)
        return int(resp.header.revision)

    async def delete(self, key: str | bytes, *, prefix: bool = False) -> int:
        """Delete one key (or every key under it with ``prefix``); how many went."""
        raw = key_bytes(key, "prefix" if prefix else "key")
        req = rpc.DeleteRangeRequest(key=raw, range_end=prefix_range_end(raw) if prefix else b"")
        what = f"delete_prefix {raw!r}" if prefix else f"delete {raw!r}"
        resp = await self._write(what, "kv", "DeleteRange", req)
        return int(resp.deleted)

    async def delete_range(self, op: Op) -> DeleteResult:
        """Run one delete :class:`Op` (built by ``Op.delete_range``)."""
        what = (
            f"delete_range {op.key!r}..{op.range_end!r}" if op.range_end else f"delete {op.key!r}"
        )
        resp = await self._write(what, "kv", "DeleteRange", _delete_pb(op))
        return _delete_result(resp, header_of(resp.header))

    async def txn(
        self,
        compare: Sequence[Compare] = (),
        success: Sequence[Op] = (),
        failure: Sequence[Op] = (),
    ) -> TxnResult:
        """One etcd transaction: if every compare holds run ``success``, else ``failure``."""
        if not (type(compare) in _LISTS and type(success) in _LISTS and type(failure) in _LISTS):
            for name, seq in (("compare", compare), ("success", success), ("failure", failure)):
                if isinstance(seq, str | bytes) or not isinstance(seq, Sequence):
                    raise TypeError(f"txn {name} must be a list, got {seq!r:.80}")
        req = _txn_pb(compare, success, failure)
        # (Op.writes is the one rule for what may write: it decides whether a txn is retried)
        writes = any(o.writes for o in success) or any(o.writes for o in failure)
        what = f"txn ({len(compare)} compares)"
        if writes:
            resp = await self._write(what, "kv", "Txn", req)
        else:
            resp = await self._read(what, "kv", "Txn", req)
        return _txn_result(resp, header_of(resp.header), success, failure)

    async def compact(self, revision: int, *, physical: bool = False) -> None:
        rev = check_int64(revision, "revision", low=1)
        req = rpc.CompactionRequest(revision=rev, physical=check_bool(physical, "physical"))
        await self._write(f"compact to {rev}", "kv", "Compact", req)

    # -- leases -----------------------------------------------------------------------------------

    async def grant(self, ttl: int, lease_id: int = 0) -> LeaseGrant:
        ttl = _ttl(ttl)
        lid = check_int64(lease_id, "lease_id")
        if lid < 0:
            raise ValueError(f"lease_id must be >= 0 (0: etcd chooses), got {lease_id}")
        resp = await self._write(
            f"grant lease ttl={ttl}",
            "lease",
            "LeaseGrant",
            rpc.LeaseGrantRequest(TTL=ttl, ID=lid),
        )
        if resp.error:
            raise InvalidArgumentError(f"lease grant refused by etcd: {resp.error}")
        return _new_tuple(LeaseGrant, (resp.ID, resp.TTL, header_of(resp.header)))

    async def revoke(self, lease_id: int) -> None:
        lid = check_int64(lease_id, "lease_id")
        req = rpc.LeaseRevokeRequest(ID=lid)
        # Revoking twice is harmless (the second says "lease not found"): safe to retry.
        await self._conn.call(
            f"revoke lease {lid:#x}", "lease", "LeaseRevoke", req, idempotent=True, final=True
        )

    async def time_to_live(self, lease_id: int) -> int:
        lid = check_int64(lease_id, "lease_id")
        req = rpc.LeaseTimeToLiveRequest(ID=lid)
        resp = await self._read(f"ttl of lease {lid:#x}", "lease", "LeaseTimeToLive", req)
        return int(resp.TTL)

    async def lease_info(self, lease_id: int, *, keys: bool = False) -> LeaseInfo:
        lid = check_int64(lease_id, "lease_id")
        req = rpc.LeaseTimeToLiveRequest(ID=lid, keys=check_bool(keys, "keys"))
        resp = await self._read(f"info of lease {lid:#x}", "lease", "LeaseTimeToLive", req)
        if resp.TTL == -1:
            raise LeaseNotFoundError(
                f"lease {lid:#x} not found at {self.where} (expired or revoked)"
            )
        return LeaseInfo(
            int(resp.ID),
            int(resp.TTL),
            int(resp.grantedTTL),
            list(resp.keys),
            header_of(resp.header),
        )

    async def leases(self) -> list[int]:
        resp = await self._read("list leases", "lease", "LeaseLeases", rpc.LeaseLeasesRequest())
        return [int(lease.ID) for lease in resp.leases]

    async def keep_alive_once(self, lease_id: int) -> int:
        """One keepalive on a stream of its own; the TTL etcd renewed the lease to.

        As a unary read: within the client's timeout it waits for a ready endpoint, leaving an
        unavailable one for the next, and retries (a keepalive sent twice renews the lease
        twice: no harm); counted as a call (``LeaseKeepAlive``)."""
        lid = check_int64(lease_id, "lease_id")
        conn = self._conn
        what = f"keep lease {lid:#x} alive"
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        deadline = None if conn.timeout is None else loop.time() + conn.timeout
        backoff = None
        try:
            while True:
                ch = conn.channel  # raises ClosedError once closed
                call = ch.stream("lease", "LeaseKeepAlive", await conn.metadata())
                left = None if deadline is None else max(0.0, deadline - loop.time())
                try:
                    async with asyncio.timeout(left):
                        await call.write(rpc.LeaseKeepAliveRequest(ID=lid))
                        resp = await call.read()
                except TimeoutError:
                    raise EtcdTimeoutError(
                        f"{what}: no answer from {ch.endpoint} within {conn.timeout} s"
                    ) from None
                except grpc.aio.AioRpcError as exc:
                    if conn.closed or conn.closing:
                        raise ClosedError(f"{what}: the etcdkit client was closed") from exc
                    err = map_rpc_error(exc, str(ch.endpoint), what)
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:
                        raise err from exc
                    err.__cause__ = exc
                    conn.note_failure(err)
                    conn.failover(ch, f"UNAVAILABLE: {exc.details()}")
                    if not conn.retry.is_retryable(err):
                        raise err from exc
                    if deadline is not None and loop.time() >= deadline:
                        raise conn.gave_up(what, err) from exc
                else:
                    if resp is not grpc.aio.EOF:
                        break
                    err = ConnectionUnavailableError(f"{what}: {ch.endpoint} closed the stream")
                    if deadline is not None and loop.time() >= deadline:
                        raise err
                finally:
                    call.cancel()
                backoff = await conn.pause_to_retry(backoff, deadline)
            if resp.TTL <= 0:
                raise LeaseNotFoundError(
                    f"lease {lid:#x} not found at {self.where} (expired or revoked)"
                )
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            conn.meter.record("LeaseKeepAlive", time.monotonic() - started, exc)
            raise
        conn.meter.record("LeaseKeepAlive", time.monotonic() - started, None)
        return int(resp.TTL)
