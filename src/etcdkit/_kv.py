"""Typed KV, transaction and lease calls: the only face of the wire that recipes and the client use.

Every method takes and returns the plain values of :mod:`etcdkit._types`; requests are built
and responses read here, nowhere else. Argument checks happen before any I/O and raise
``TypeError`` (wrong type) or ``ValueError`` (wrong value) with what to pass instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from aetcd import rpc

from etcdkit._conn import Connection
from etcdkit._errors import InvalidArgumentError
from etcdkit._types import (
    Compare,
    DeleteResult,
    KeyValue,
    LeaseGrant,
    Op,
    OpResult,
    PutResult,
    RangeResult,
    TxnResult,
    check_int64,
    key_bytes,
    prefix_range_end,
    to_bytes,
)

__all__ = ["KV", "kv_of"]

# A listing page is cut in half when its answer is bigger than this (keeps messages well below
# gRPC/etcd limits for big values).
PAGE_BYTES = 16 * 1024 * 1024

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


def kv_of(pb: Any) -> KeyValue:
    """A :class:`KeyValue` from an ``mvccpb.KeyValue`` message."""
    return KeyValue(pb.key, pb.value, pb.create_revision, pb.mod_revision, pb.version, pb.lease)


def _revision(revision: int, what: str = "revision") -> int:
    return check_int64(revision, what, hint=" (0 = latest)")


def _lease(lease: int) -> int:
    return check_int64(lease, "lease", hint=" (a lease id, 0 = none)")


def _ttl(ttl: int) -> int:
    return check_int64(ttl, "ttl", low=1, hint=" (whole seconds)")


def _compare_pb(c: Compare) -> Any:
    if not isinstance(c, Compare):
        raise TypeError(f"txn compare entries must be etcdkit.Compare, got {c!r:.80}")
    return rpc.Compare(
        key=c.key,
        range_end=c.range_end,
        target=_TARGET[c.target],
        result=_RESULT[c.op],
        **{_FIELD[c.target]: c.operand},
    )


def _op_pb(op: Op) -> Any:
    if not isinstance(op, Op):
        raise TypeError(f"txn operations must be etcdkit.Op, got {op!r:.80}")
    if op.kind == "range":
        return rpc.RequestOp(request_range=rpc.RangeRequest(key=op.key, range_end=op.range_end))
    if op.kind == "put":
        put = rpc.PutRequest(key=op.key, value=op.value, lease=op.lease, prev_kv=op.prev_kv)
        return rpc.RequestOp(request_put=put)
    delete = rpc.DeleteRangeRequest(key=op.key, range_end=op.range_end, prev_kv=op.prev_kv)
    return rpc.RequestOp(request_delete_range=delete)


def _op_result(resp: Any, revision: int) -> OpResult:
    which = resp.WhichOneof("response")
    if which == "response_range":
        return RangeResult([kv_of(kv) for kv in resp.response_range.kvs], revision)
    if which == "response_put":
        put = resp.response_put
        return PutResult(revision, kv_of(put.prev_kv) if put.HasField("prev_kv") else None)
    deleted = resp.response_delete_range
    return DeleteResult(int(deleted.deleted), [kv_of(kv) for kv in deleted.prev_kvs])


class KV:
    """Typed etcd calls over one :class:`Connection` (retries and deadlines live there)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    @property
    def where(self) -> str:
        return self._conn.where

    async def _read(self, what: str, service: str, method: str, request: Any) -> Any:
        return await self._conn.call(what, service, method, request, idempotent=True)

    async def _write(self, what: str, service: str, method: str, request: Any) -> Any:
        return await self._conn.call(what, service, method, request, idempotent=False)

    # -- reads ------------------------------------------------------------------------------------

    async def get(
        self, key: str | bytes, *, revision: int = 0, serializable: bool = False
    ) -> tuple[KeyValue | None, int]:
        """The key's entry (``None`` when absent) and the revision the answer holds at."""
        raw = key_bytes(key)
        req = rpc.RangeRequest(key=raw, revision=_revision(revision), serializable=serializable)
        resp = await self._read(f"get {raw!r}", "kv", "Range", req)
        return (kv_of(resp.kvs[0]) if resp.kvs else None), int(resp.header.revision)

    async def revision(self) -> int:
        """The store's current revision (one cheap linearizable read)."""
        resp = await self._read(
            "get revision", "kv", "Range", rpc.RangeRequest(key=b"\0", count_only=True)
        )
        return int(resp.header.revision)

    async def first_created(
        self, prefix: str | bytes, *, last: bool = False, max_create_revision: int = 0
    ) -> tuple[KeyValue | None, int]:
        """The key under ``prefix`` with the lowest create revision (``last=True``: the
        highest), among keys created at or before ``max_create_revision`` when that is > 0;
        ``None`` when there is none. And the revision the answer holds at. (Go's
        ``WithFirstCreate`` / ``WithLastCreate`` + ``WithMaxCreateRev``: the reads of etcd's
        lock and election recipes.)"""
        raw = key_bytes(prefix, "prefix")
        order = rpc.RangeRequest.SortOrder.DESCEND if last else rpc.RangeRequest.SortOrder.ASCEND
        req = rpc.RangeRequest(
            key=raw,
            range_end=prefix_range_end(raw),
            limit=1,
            sort_order=order,
            sort_target=rpc.RangeRequest.SortTarget.CREATE,
            max_create_revision=_revision(max_create_revision, "max_create_revision"),
        )
        resp = await self._read(f"first created under {raw!r}", "kv", "Range", req)
        return (kv_of(resp.kvs[0]) if resp.kvs else None), int(resp.header.revision)

    async def _pb_pages(
        self, prefix: str | bytes, revision: int, page_size: int, keys_only: bool
    ) -> AsyncIterator[tuple[Any, int]]:
        raw = to_bytes(prefix, "prefix")
        rev = _revision(revision)
        if isinstance(page_size, bool) or not isinstance(page_size, int):
            raise TypeError(f"page_size must be an int, got {page_size!r}")
        if page_size < 1:
            raise ValueError(f"page_size must be a positive int, got {page_size!r}")
        end = prefix_range_end(raw)
        start = raw if raw else b"\0"
        while True:
            req = rpc.RangeRequest(
                key=start, range_end=end, limit=page_size, revision=rev, keys_only=keys_only
            )
            try:
                resp = await self._read(f"get_prefix {raw!r}", "kv", "Range", req)
            except InvalidArgumentError as exc:
                if "too large" in str(exc) and page_size > 1:
                    page_size = max(1, page_size // 2)
                    continue
                raise
            if rev == 0:
                rev = int(resp.header.revision)
            if page_size > 100 and resp.ByteSize() > PAGE_BYTES:
                page_size //= 2
            yield resp.kvs, rev
            if not resp.more or not resp.kvs:
                return
            start = resp.kvs[-1].key + b"\0"

    async def pages(
        self, prefix: str | bytes, *, revision: int = 0, page_size: int, keys_only: bool = False
    ) -> AsyncIterator[tuple[list[KeyValue], int]]:
        """Every key under ``prefix``, page by page, all pages at one revision.

        With ``revision=0`` the first page fixes the revision. Raises :class:`CompactedError`
        if that revision is compacted while paging.
        """
        async for page, rev in self._pb_pages(prefix, revision, page_size, keys_only):
            yield [kv_of(kv) for kv in page], rev

    async def item_pages(
        self, prefix: str | bytes, *, revision: int = 0, page_size: int
    ) -> AsyncIterator[tuple[list[tuple[bytes, bytes]], int]]:
        """As :meth:`pages`, yielding only ``(key, value)`` pairs (the cheap form for big
        listings)."""
        async for page, rev in self._pb_pages(prefix, revision, page_size, False):
            yield [(kv.key, kv.value) for kv in page], rev

    # -- writes -----------------------------------------------------------------------------------

    async def put(
        self, key: str | bytes, value: str | bytes, *, lease: int = 0, prev_kv: bool = False
    ) -> PutResult:
        raw = key_bytes(key)
        req = rpc.PutRequest(
            key=raw, value=to_bytes(value, "value"), lease=_lease(lease), prev_kv=prev_kv
        )
        resp = await self._write(f"put {raw!r}", "kv", "Put", req)
        prev = kv_of(resp.prev_kv) if resp.HasField("prev_kv") else None
        return PutResult(int(resp.header.revision), prev)

    async def delete(self, key: str | bytes, *, prefix: bool = False) -> int:
        """Delete one key (or every key under it with ``prefix``); how many went."""
        raw = key_bytes(key, "prefix" if prefix else "key")
        req = rpc.DeleteRangeRequest(key=raw, range_end=prefix_range_end(raw) if prefix else b"")
        what = f"delete_prefix {raw!r}" if prefix else f"delete {raw!r}"
        resp = await self._write(what, "kv", "DeleteRange", req)
        return int(resp.deleted)

    async def txn(
        self,
        compare: Sequence[Compare] = (),
        success: Sequence[Op] = (),
        failure: Sequence[Op] = (),
    ) -> TxnResult:
        """One etcd transaction: if every compare holds run ``success``, else ``failure``."""
        for name, seq in (("compare", compare), ("success", success), ("failure", failure)):
            if isinstance(seq, str | bytes) or not isinstance(seq, Sequence):
                raise TypeError(f"txn {name} must be a list, got {seq!r:.80}")
        req = rpc.TxnRequest(
            compare=[_compare_pb(c) for c in compare],
            success=[_op_pb(o) for o in success],
            failure=[_op_pb(o) for o in failure],
        )
        writes = any(o.kind != "range" for o in (*success, *failure))
        what = f"txn ({len(compare)} compares)"
        if writes:
            resp = await self._write(what, "kv", "Txn", req)
        else:
            resp = await self._read(what, "kv", "Txn", req)
        rev = int(resp.header.revision)
        return TxnResult(bool(resp.succeeded), rev, [_op_result(r, rev) for r in resp.responses])

    async def compact(self, revision: int, *, physical: bool = False) -> None:
        rev = check_int64(revision, "revision", low=1)
        req = rpc.CompactionRequest(revision=rev, physical=physical)
        await self._write(f"compact to {rev}", "kv", "Compact", req)

    # -- leases -----------------------------------------------------------------------------------

    async def grant(self, ttl: int) -> LeaseGrant:
        ttl = _ttl(ttl)
        resp = await self._write(
            f"grant lease ttl={ttl}", "lease", "LeaseGrant", rpc.LeaseGrantRequest(TTL=ttl)
        )
        if resp.error:
            raise InvalidArgumentError(f"lease grant refused by etcd: {resp.error}")
        return LeaseGrant(int(resp.ID), int(resp.TTL))

    async def revoke(self, lease_id: int) -> None:
        lid = check_int64(lease_id, "lease_id")
        req = rpc.LeaseRevokeRequest(ID=lid)
        # Revoking twice is harmless (the second says "lease not found"): safe to retry.
        await self._read(f"revoke lease {lid:#x}", "lease", "LeaseRevoke", req)

    async def time_to_live(self, lease_id: int) -> int:
        lid = check_int64(lease_id, "lease_id")
        req = rpc.LeaseTimeToLiveRequest(ID=lid)
        resp = await self._read(f"ttl of lease {lid:#x}", "lease", "LeaseTimeToLive", req)
        return int(resp.TTL)
