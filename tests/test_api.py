"""The data plane of the public client against real etcd: range with every option, delete_range,
put's options, headers on every result, Op.range in transactions, and the lease calls; on both
faces. (The raw watch has tests/test_raw_watch.py.)"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest

import etcdkit
from etcdkit import AsyncClient, Client, Compare, DeleteResult, Op, PutResult, RangeResult
from etcdkit.testing import EtcdServer


async def _fill(etcd: AsyncClient, prefix: str) -> list[int]:
    revs = []
    for name, value in [("b", "2"), ("a", "3"), ("c", "1")]:
        revs.append(await etcd.put(prefix + name, value))
    await etcd.put(prefix + "a", "33")  # a: version 2, newest mod revision
    return revs


def _keys(result: RangeResult, prefix: str) -> list[str]:
    return [kv.key.decode()[len(prefix) :] for kv in result.kvs]


async def test_range_options(etcd: AsyncClient, etcd_prefix: str) -> None:
    p = etcd_prefix
    revs = await _fill(etcd, p)
    everything = await etcd.range(p, prefix=True)
    assert _keys(everything, p) == ["a", "b", "c"]
    assert (everything.count, everything.more) == (3, False)
    assert everything.header is not None
    assert everything.header.revision == everything.revision == await etcd.get_revision()
    assert everything.header.cluster_id
    assert everything.header.member_id
    assert everything.header.raft_term >= 1

    one = await etcd.range(p + "b")
    assert _keys(one, p) == ["b"]
    assert one.count == 1
    assert _keys(await etcd.range(p + "a", p + "c"), p) == ["a", "b"]  # [key, range_end)
    assert _keys(await etcd.range(p + "b", b"\0"), p)[:2] == ["b", "c"]  # from key on

    limited = await etcd.range(p, prefix=True, limit=2)
    assert _keys(limited, p) == ["a", "b"]
    assert limited.more
    assert limited.count == 3

    by = {
        ("key", "descend"): ["c", "b", "a"],
        ("value", "ascend"): ["c", "b", "a"],  # "1" < "2" < "33"
        ("create", "ascend"): ["b", "a", "c"],
        ("mod", "descend"): ["a", "c", "b"],
        ("version", "descend"): ["a", "b", "c"],  # a has version 2; ties by key
    }
    for (target, order), want in by.items():
        got = await etcd.range(p, prefix=True, sort_target=target, sort_order=order)  # type: ignore[arg-type]
        assert _keys(got, p)[0] == want[0], (target, order)
    assert _keys(
        await etcd.range(p, prefix=True, sort_target="create", sort_order="ascend"), p
    ) == [
        "b",
        "a",
        "c",
    ]

    keys_only = await etcd.range(p, prefix=True, keys_only=True)
    assert [kv.value for kv in keys_only.kvs] == [b"", b"", b""]
    counted = await etcd.range(p, prefix=True, count_only=True)
    assert counted.kvs == []
    assert counted.count == 3

    old = await etcd.range(p, prefix=True, revision=revs[1])
    assert _keys(old, p) == ["a", "b"]
    assert old.revision == revs[1]
    assert [kv.value for kv in old.kvs] == [b"3", b"2"]

    assert _keys(await etcd.range(p, prefix=True, min_mod_revision=revs[2]), p) == ["a", "c"]
    assert _keys(await etcd.range(p, prefix=True, max_mod_revision=revs[1]), p) == ["b"]
    assert _keys(await etcd.range(p, prefix=True, min_create_revision=revs[1]), p) == ["a", "c"]
    assert _keys(await etcd.range(p, prefix=True, max_create_revision=revs[1]), p) == ["a", "b"]
    assert _keys(await etcd.range(p, prefix=True, serializable=True), p) == ["a", "b", "c"]


async def test_a_whole_prefix_is_read_in_pages_as_one_range(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    """``range(prefix, prefix=True)`` with no limit, sort or filter is read in pages at one
    revision (as ``get_prefix``): its result is the one Range's at that revision, keys,
    count and header; a compaction of that revision between two pages and it is one Range."""
    server = etcd_server_factory()
    async with AsyncClient(server.endpoint) as c:
        for i in range(0, 25_000, 100):  # more keys than the first page's 10,000
            await c.txn([], [Op.put(f"/p/{j:06d}", f"v{j}") for j in range(i, i + 100)])
        await c.put("/q", "not under /p/")

        async def one_range(**kw: Any) -> RangeResult:
            (read,) = (await c.txn([], [Op.range("/p/", prefix=True, **kw)])).responses
            assert isinstance(read, RangeResult)
            return read

        whole = await c.range("/p/", prefix=True)
        assert len(whole.kvs) == whole.count == 25_000
        assert not whole.more
        assert whole.header is not None
        assert whole.header.revision == whole.revision
        assert whole.kvs == (await one_range(revision=whole.revision)).kvs
        first = whole.revision
        await c.put("/p/000007", "changed")
        assert (await c.range("/p/", prefix=True, revision=first)).kvs == whole.kvs
        names = await c.range("/p/", prefix=True, keys_only=True)
        assert [kv.key for kv in names.kvs] == [kv.key for kv in whole.kvs]
        assert {kv.value for kv in names.kvs} == {b""}
        everything = await c.range("", prefix=True)
        assert len(everything.kvs) == 25_001

        # etcd compacts the revision the pages are read at, after the first page
        pages = c._core.kv.pages

        compacted: list[int] = []

        async def compacted_after_the_first(*args: Any, **kwargs: Any) -> Any:
            async with contextlib.aclosing(pages(*args, **kwargs)) as them:
                async for page in them:
                    yield page
                    if not compacted:
                        compacted.append(await c.put("/other", "x"))
                        await c.compact(compacted[0])

        c._core.kv.pages = compacted_after_the_first  # type: ignore[method-assign]
        late = await c.range("/p/", prefix=True)
        assert compacted
        assert late.revision >= compacted[0]  # read again, after the compaction
        assert late.kvs == (await one_range(revision=late.revision)).kvs
        with pytest.raises(etcdkit.CompactedError):
            await c.range("/p/", prefix=True, revision=first)


async def test_range_with_a_compacted_revision_raises(etcd: AsyncClient, etcd_prefix: str) -> None:
    first = await etcd.put(etcd_prefix + "k", "1")
    now = await etcd.put(etcd_prefix + "k", "2")
    await etcd.compact(now)
    with pytest.raises(etcdkit.CompactedError):
        await etcd.range(etcd_prefix + "k", revision=first)
    # a whole prefix is read in pages: its error still names the range it is
    with pytest.raises(etcdkit.CompactedError, match=r"^range "):
        await etcd.range(etcd_prefix, prefix=True, revision=first)


async def test_delete_range(etcd: AsyncClient, etcd_prefix: str) -> None:
    p = etcd_prefix
    await _fill(etcd, p)
    one = await etcd.delete_range(p + "a", prev_kv=True)
    assert isinstance(one, DeleteResult)
    assert one.deleted == 1
    assert [kv.value for kv in one.prev_kvs] == [b"33"]
    assert one.header is not None
    assert one.header.revision == await etcd.get_revision()
    assert (await etcd.delete_range(p + "a")).deleted == 0
    span = await etcd.delete_range(p + "b", p + "c")
    assert span.deleted == 1
    assert span.prev_kvs == []
    await etcd.put(p + "x/1", "v")
    await etcd.put(p + "x/2", "v")
    rest = await etcd.delete_range(p, prefix=True, prev_kv=True)
    assert rest.deleted == 3
    assert sorted(kv.key for kv in rest.prev_kvs) == [
        e.encode() for e in (p + "c", p + "x/1", p + "x/2")
    ]
    assert (await etcd.range(p, prefix=True)).count == 0


async def test_every_key_from_an_empty_key_on(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    """``("", b"\\0")``: every key (Go's ``WithFromKey`` on ``""``, ``etcdctl get "" --from-key``),
    as ``("", prefix=True)`` is, in a range, an ``Op.range``, a watch and a delete; an empty
    key with any other range end is still refused."""
    server = etcd_server_factory()
    async with AsyncClient(server.endpoint) as c:
        for k in ("\x01", "a", "b/c", "\xff"):
            await c.put(k, "v")
        everything = await c.range("", prefix=True)
        assert len(everything.kvs) == 4
        assert (await c.range("", b"\0")).kvs == everything.kvs
        assert (await c.range(b"", "\0", count_only=True)).count == 4
        res = await c.txn([], [Op.range("", b"\0", keys_only=True)])
        (read,) = res.responses
        assert isinstance(read, RangeResult)
        assert [kv.key for kv in read.kvs] == [kv.key for kv in everything.kvs]
        async with c.watch("", b"\0") as w:
            await c.put("\x00", "first key of all")
            batch = await anext(w)
        assert [e.kv.key for e in batch.events] == [b"\0"]
        assert (await c.delete_range("", b"\0")).deleted == 5
        assert (await c.range("", prefix=True)).count == 0
        with pytest.raises(ValueError, match="key must not be empty"):
            await c.range("", b"m")
        with pytest.raises(ValueError, match="key must not be empty"):
            await c.range("")


async def test_a_plain_put_writes_what_the_same_put_through_an_op_writes(
    etcd: AsyncClient, etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    """put() without options takes a shorter path than put(..., prev_kv=True) and txn's
    Op.put: the same key, value, lease and revision, and the same refusals."""
    lease = await etcd.grant(30)
    try:
        plain = await etcd.put(etcd_prefix + "plain", "v", lease=lease.id)
        via_op = await etcd.put(etcd_prefix + "op", "v", lease=lease.id, prev_kv=True)
        assert plain == via_op.revision - 1
        a, b = await etcd.get(etcd_prefix + "plain"), await etcd.get(etcd_prefix + "op")
        assert a is not None
        assert b is not None
        assert (a.value, a.lease, a.mod_revision) == (b"v", lease.id, plain)
        assert (b.value, b.lease) == (b"v", lease.id)
        assert await etcd.put(etcd_prefix + "plain", b"\x00\xff") == plain + 2
    finally:
        await etcd.revoke(lease.id)
    # non-bool options are refused, not taken for "no option"
    for option in ("prev_kv", "ignore_value", "ignore_lease"):
        with pytest.raises(TypeError, match=option):
            await etcd.put(etcd_prefix + "k", "v", **{option: 0})  # type: ignore[call-overload]
    # bad input is refused before a closed client is noticed, as through Op.put
    closed = AsyncClient(etcd_server.endpoint)
    await closed.close()
    with pytest.raises(ValueError, match="key must not be empty"):
        await closed.put("", "v")
    with pytest.raises(etcdkit.ClosedError):
        await closed.put(etcd_prefix + "k", "v")


async def test_put_options(etcd: AsyncClient, etcd_prefix: str) -> None:
    k = etcd_prefix + "k"
    rev = await etcd.put(k, "v1")
    assert isinstance(rev, int)
    first = await etcd.put(k + "new", "x", prev_kv=True)
    assert isinstance(first, PutResult)
    assert first.prev_kv is None
    res = await etcd.put(k, "v2", prev_kv=True)
    assert res.prev_kv is not None
    assert res.prev_kv.value == b"v1"
    assert res.prev_kv.mod_revision == rev
    assert res.header is not None
    assert res.header.revision == res.revision > rev

    lease = await etcd.grant(30)
    try:
        # ignore_value: move the key to a lease, keep its value
        await etcd.put(k, b"", lease=lease.id, ignore_value=True)
        kv = await etcd.get(k)
        assert kv is not None
        assert (kv.value, kv.lease) == (b"v2", lease.id)
        # ignore_lease: change the value, keep the lease
        await etcd.put(k, "v3", ignore_lease=True)
        kv = await etcd.get(k)
        assert kv is not None
        assert (kv.value, kv.lease) == (b"v3", lease.id)
    finally:
        await etcd.revoke(lease.id)
    # etcd refuses both on a missing key
    with pytest.raises(etcdkit.InvalidArgumentError):
        await etcd.put(etcd_prefix + "absent", b"", ignore_value=True)
    with pytest.raises(etcdkit.InvalidArgumentError):
        await etcd.put(etcd_prefix + "absent", "v", ignore_lease=True)


async def test_op_range_in_a_transaction(etcd: AsyncClient, etcd_prefix: str) -> None:
    p = etcd_prefix
    await _fill(etcd, p)
    res = await etcd.txn(
        [Compare.version(p + "a", ">", 0)],
        [
            Op.range(p, prefix=True, sort_target="create", sort_order="descend", limit=1),
            Op.range(p, prefix=True, count_only=True),
            Op.range(p + "a", p + "c", keys_only=True),
            Op.put(p + "d", "4", prev_kv=True),
            Op.delete_range(p + "b", prefix=True, prev_kv=True),
        ],
    )
    assert res.succeeded
    assert res.header is not None
    assert res.header.revision == res.revision
    newest, counted, span, put, deleted = res.responses
    assert isinstance(newest, RangeResult)
    assert _keys(newest, p) == ["c"]
    assert newest.more
    assert isinstance(counted, RangeResult)
    assert counted.count == 3
    assert counted.kvs == []
    assert isinstance(span, RangeResult)
    assert _keys(span, p) == ["a", "b"]
    assert isinstance(put, PutResult)
    assert put.prev_kv is None
    assert put.header == res.header
    assert isinstance(deleted, DeleteResult)
    assert deleted.deleted == 1
    assert [kv.value for kv in deleted.prev_kvs] == [b"2"]


async def test_a_transaction_nested_in_another(etcd: AsyncClient, etcd_prefix: str) -> None:
    p = etcd_prefix
    await etcd.put(p + "a", "1")
    inner = Op.txn([Compare.value(p + "a", "==", "1")], [Op.put(p + "b", "2")], [Op.get(p + "a")])
    res = await etcd.txn([], [inner, Op.get(p + "a")])
    assert res.succeeded
    nested, got = res.responses
    assert isinstance(nested, etcdkit.TxnResult)
    assert nested.succeeded
    assert isinstance(nested.responses[0], PutResult)
    assert isinstance(got, RangeResult)
    assert await etcd.get(p + "b") is not None
    res = await etcd.txn([], [Op.txn([Compare.value(p + "a", "==", "0")], [], [Op.get(p + "a")])])
    (nested,) = res.responses
    assert isinstance(nested, etcdkit.TxnResult)
    assert not nested.succeeded
    (read,) = nested.responses
    assert isinstance(read, RangeResult)
    assert [kv.value for kv in read.kvs] == [b"1"]
    with pytest.raises(TypeError, match=r"etcdkit\.Op"):
        Op.txn([], ["put"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"etcdkit\.Compare"):
        Op.txn([Op.get("/k")])  # type: ignore[list-item]


async def test_a_range_at_a_past_revision_inside_a_transaction_says_it(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    """``RangeResult.revision`` is the revision read at, inside a transaction (nested too) as
    from range(): a past one when the Op asks for it, else the transaction's."""
    k = etcd_prefix + "k"
    old = await etcd.put(k, "old")
    new = await etcd.put(k, "new")
    past = Op.range(k, revision=old)
    res = await etcd.txn([], [past, Op.get(k)], [])
    at_old, now = res.responses
    assert isinstance(at_old, RangeResult)
    assert isinstance(now, RangeResult)
    assert (at_old.revision, [kv.value for kv in at_old.kvs]) == (old, [b"old"])
    assert (now.revision, [kv.value for kv in now.kvs]) == (res.revision, [b"new"])
    assert res.revision >= new
    failed = await etcd.txn(
        [Compare.value(k, "==", "nope")],
        [],
        [Op.txn([], [Op.get(k), past], [])],
    )
    (inner,) = failed.responses
    assert isinstance(inner, etcdkit.TxnResult)
    latest, before = inner.responses
    assert isinstance(latest, RangeResult)
    assert isinstance(before, RangeResult)
    assert (latest.revision, before.revision) == (failed.revision, old)


async def test_a_range_before_a_write_in_a_transaction_says_the_revision_it_read(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    """A range that runs before a transaction's first write reads the store at the revision
    before the transaction's, and says so (its ``revision`` and header, as etcd's own
    per-operation header and Go's client say); one after a write says the transaction's.
    It said the transaction's for both: a revision whose keys it did not hold."""
    p = etcd_prefix
    first = await etcd.put(p + "a", "1")
    read = Op.range(p, prefix=True)
    res = await etcd.txn([], [read, Op.put(p + "b", "2"), read, Op.txn([], [read])])
    before, put, after, nested = res.responses
    assert isinstance(before, RangeResult)
    assert isinstance(after, RangeResult)
    assert isinstance(put, PutResult)
    assert isinstance(nested, etcdkit.TxnResult)
    assert res.revision == first + 1
    assert (before.revision, _keys(before, p)) == (first, ["a"])
    assert (after.revision, _keys(after, p)) == (res.revision, ["a", "b"])
    assert before.header is not None
    assert res.header is not None
    assert before.header == res.header._replace(revision=first)
    assert after.header == put.header == res.header
    (inner,) = nested.responses
    assert isinstance(inner, RangeResult)
    assert (inner.revision, _keys(inner, p)) == (res.revision, ["a", "b"])
    # what it says is what a read at that revision holds
    assert (await etcd.range(p, prefix=True, revision=before.revision)).kvs == before.kvs
    # a failed comparison's branch, the same
    res = await etcd.txn(
        [Compare.value(p + "a", "==", "no")], [], [read, Op.delete_range(p + "a"), read]
    )
    before, _, after = res.responses
    assert isinstance(before, RangeResult)
    assert isinstance(after, RangeResult)
    assert (before.revision, _keys(before, p)) == (res.revision - 1, ["a", "b"])
    assert (after.revision, _keys(after, p)) == (res.revision, ["b"])


async def test_leases(etcd: AsyncClient, etcd_prefix: str) -> None:
    lease = await etcd.grant(20)
    assert lease.header is not None
    assert lease.header.revision > 0
    try:
        await etcd.put(etcd_prefix + "a", "v", lease=lease.id)
        await etcd.put(etcd_prefix + "b", "v", lease=lease.id)
        assert lease.id in await etcd.leases()
        info = await etcd.lease_info(lease.id)
        assert (info.id, info.granted_ttl, info.keys) == (lease.id, lease.ttl, [])
        assert 0 < info.ttl <= 20
        with_keys = await etcd.lease_info(lease.id, keys=True)
        assert sorted(with_keys.keys) == [(etcd_prefix + k).encode() for k in "ab"]
        assert with_keys.header is not None
        # LeaseInfo(id, ttl, granted_ttl, keys), the header beside it (it unpacked as five)
        lid, ttl, granted, keys = with_keys
        assert (lid, granted, sorted(keys)) == (lease.id, lease.ttl, sorted(with_keys.keys))
        assert with_keys == (lid, ttl, granted, keys)
        assert with_keys.header.revision > 0
        assert await etcd.keep_alive_once(lease.id) == 20
    finally:
        await etcd.revoke(lease.id)
    assert lease.id not in await etcd.leases()
    with pytest.raises(etcdkit.LeaseNotFoundError):
        await etcd.lease_info(lease.id)
    with pytest.raises(etcdkit.LeaseNotFoundError):
        await etcd.keep_alive_once(lease.id)


BAD: list[tuple[str, dict[str, Any], type[Exception]]] = [
    ("range", {"key": 1}, TypeError),
    ("range", {"key": ""}, ValueError),
    ("range", {"key": "k", "range_end": "z", "prefix": True}, ValueError),
    ("range", {"key": "k", "range_end": ""}, ValueError),
    ("range", {"key": "k", "limit": -1}, ValueError),
    ("range", {"key": "k", "limit": "1"}, TypeError),
    ("range", {"key": "k", "revision": -1}, ValueError),
    ("range", {"key": "k", "revision": False}, TypeError),  # (the plain read's own checks)
    ("range", {"key": "k", "limit": 0.0}, TypeError),
    ("range", {"key": b""}, ValueError),
    ("range", {"key": "k", "sort_order": "up"}, ValueError),
    ("range", {"key": "k", "sort_target": "size"}, ValueError),
    ("range", {"key": "k", "sort_order": 5}, TypeError),
    ("range", {"key": "k", "sort_order": b"ascend"}, TypeError),
    ("range", {"key": "k", "sort_target": None}, TypeError),
    ("get_prefix", {"prefix": "k", "keys_only": "yes"}, TypeError),
    ("get_prefix", {"prefix": "k", "keys_only": None}, TypeError),
    ("get_prefix", {"prefix": "k", "page_size": 2**63}, ValueError),
    ("range", {"key": "k", "serializable": 1}, TypeError),
    ("range", {"key": "k", "prefix": "yes"}, TypeError),
    ("range", {"key": "k", "min_mod_revision": -2}, ValueError),
    ("delete_range", {"key": None}, TypeError),
    ("delete_range", {"key": "k", "range_end": "z", "prefix": True}, ValueError),
    ("delete_range", {"key": "k", "prev_kv": "no"}, TypeError),
    ("put", {"key": "k", "value": "v", "ignore_value": True}, ValueError),
    ("put", {"key": "k", "value": "v", "lease": 5, "ignore_lease": True}, ValueError),
    ("put", {"key": "k", "value": 3}, TypeError),
    ("lease_info", {"lease_id": "1"}, TypeError),
    ("lease_info", {"lease_id": 1, "keys": "yes"}, TypeError),
    ("keep_alive_once", {"lease_id": -1}, ValueError),
]


@pytest.mark.parametrize(("method", "kwargs", "error"), BAD)
async def test_bad_arguments_fail_before_any_io(
    method: str, kwargs: dict[str, Any], error: type[Exception]
) -> None:
    # A client whose endpoint has nothing listening: any I/O would fail differently.
    async with AsyncClient("127.0.0.1:1", timeout=0.5) as etcd:
        with pytest.raises(error):
            await getattr(etcd, method)(**kwargs)
        assert etcd.stats.calls == 0


def test_threaded_face(etcd_sync: Client, etcd_prefix: str) -> None:
    c, p = etcd_sync, etcd_prefix
    c.put(p + "a", "1")
    res = c.put(p + "a", "2", prev_kv=True)
    assert res.prev_kv is not None
    assert res.prev_kv.value == b"1"
    c.put(p + "b", "3")
    got = c.range(p, prefix=True, sort_order="descend", limit=1)
    assert _keys(got, p) == ["b"]
    assert got.more
    assert got.count == 2
    assert got.header is not None
    txn = c.txn([], [Op.range(p, prefix=True, keys_only=True)])
    assert isinstance(txn.responses[0], RangeResult)
    assert len(txn.responses[0].kvs) == 2
    lease = c.grant(15)
    c.put(p + "c", "v", lease=lease.id)
    assert lease.id in c.leases()
    assert c.lease_info(lease.id, keys=True).keys == [(p + "c").encode()]
    lid, _ttl, granted, keys = c.lease_info(lease.id, keys=True)
    assert (lid, granted, keys) == (lease.id, 15, [(p + "c").encode()])
    assert c.lease_info(lease.id).header is not None
    assert c.keep_alive_once(lease.id) == 15
    c.revoke(lease.id)
    gone = c.delete_range(p, prefix=True, prev_kv=True)
    assert gone.deleted == 2
    assert len(gone.prev_kvs) == 2
    with pytest.raises(ValueError, match="sort_order"):
        c.range(p, sort_order="sideways")  # type: ignore[arg-type]


def test_threaded_methods_have_docstrings() -> None:
    """The API reference is generated from docstrings: every public method of the threaded
    client, and of every threaded twin etcdkit exports (``Sync*``), has one (made by the
    generic twin maker from the asyncio one, or its own)."""
    faces = [Client] + [
        getattr(etcdkit, name)
        for name in etcdkit.__all__
        if name.startswith("Sync") and isinstance(getattr(etcdkit, name), type)
    ]
    assert len(faces) > 10
    missing = [
        f"{face.__name__}.{name}"
        for face in faces
        for name, value in vars(face).items()
        if not name.startswith("_") and callable(value) and not (value.__doc__ or "").strip()
    ]
    assert missing == []


def test_threaded_attributes_have_docstrings() -> None:
    """As methods do, every public property of the threaded client and twins has a docstring
    (``Client.endpoints`` and ``stats``, and most of ``SyncLock``'s, were left out of the
    reference). A mirrored one takes the asyncio property's."""
    faces = [Client] + [
        getattr(etcdkit, name)
        for name in etcdkit.__all__
        if name.startswith("Sync") and isinstance(getattr(etcdkit, name), type)
    ]
    missing = [
        f"{face.__name__}.{name}"
        for face in faces
        for name, value in vars(face).items()
        if not name.startswith("_")
        and not callable(value)
        and hasattr(type(value), "__get__")
        and not (value.__doc__ or "").strip()
    ]
    assert missing == []


async def test_get_prefix_pages(etcd: AsyncClient, etcd_prefix: str) -> None:
    for i in range(25):
        await etcd.put(f"{etcd_prefix}k{i:02d}", str(i))
    seen: list[tuple[bytes, bytes]] = []
    revisions = set()
    async for kvs, rev in etcd.get_prefix_pages(etcd_prefix, page_size=10):
        assert len(kvs) <= 10
        seen.extend((kv.key, kv.value) for kv in kvs)
        revisions.add(rev)
    assert seen == [(f"{etcd_prefix}k{i:02d}".encode(), str(i).encode()) for i in range(25)]
    assert len(revisions) == 1  # every page at one revision
    keys = [
        kv.value
        async for kvs, _ in etcd.get_prefix_pages(etcd_prefix, keys_only=True)
        for kv in kvs
    ]
    assert keys == [b""] * 25


async def test_default_pages_after_the_first_are_sized_in_bytes(
    etcd: AsyncClient, etcd_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the first page (FIRST_PAGE_KEYS keys: sizes unknown before), pages hold about
    PAGE_TARGET_BYTES, fewer keys than the first when values are big (they held at least
    FIRST_PAGE_KEYS: with 8 KB values, 78 MB pages). Scaled down: a 64 KB target."""
    from etcdkit._wire import kv as kv_module

    monkeypatch.setattr(kv_module, "PAGE_TARGET_BYTES", 64 * 1024)
    n = kv_module.FIRST_PAGE_KEYS + 2_000
    value = b"v" * 100
    for start in range(0, n, 100):
        await etcd.txn(
            [], [Op.put(f"{etcd_prefix}{i:06d}", value) for i in range(start, start + 100)]
        )
    sizes = []
    async for kvs, _ in etcd.get_prefix_pages(etcd_prefix):
        sizes.append(len(kvs))
    assert sum(sizes) == n
    assert sizes[0] == kv_module.FIRST_PAGE_KEYS
    assert len(sizes) > 2
    assert max(sizes[1:]) * (24 + len(etcd_prefix) + 6 + len(value)) <= 2 * 64 * 1024
    await etcd.delete_range(etcd_prefix, prefix=True)


async def test_default_pages_of_big_values_hold_a_few_mb(
    etcd: AsyncClient, etcd_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Values of 512 KB: after the first page, pages of about PAGE_TARGET_BYTES (8 keys), not
    the 100 keys a page held at least (50 MB here; with values of 1.5 MB, 150 MB a page).
    Scaled down: a first page of 10 keys."""
    from etcdkit._wire import kv as kv_module

    monkeypatch.setattr(kv_module, "FIRST_PAGE_KEYS", 10)
    value = b"v" * (512 * 1024)
    for i in range(40):
        await etcd.put(f"{etcd_prefix}{i:03d}", value)
    sizes = []
    async for kvs, _ in etcd.get_prefix_pages(etcd_prefix):
        sizes.append(len(kvs))
    assert sum(sizes) == 40
    assert sizes[0] == 10
    assert max(sizes[1:]) * len(value) <= kv_module.PAGE_TARGET_BYTES
    await etcd.delete_range(etcd_prefix, prefix=True)


def test_get_prefix_pages_threaded(etcd_sync: Client, etcd_prefix: str) -> None:
    for i in range(5):
        etcd_sync.put(f"{etcd_prefix}{i}", "v")
    pages = list(etcd_sync.get_prefix_pages(etcd_prefix, page_size=2))
    assert [len(kvs) for kvs, _ in pages] == [2, 2, 1]
    for kvs, _rev in etcd_sync.get_prefix_pages(etcd_prefix, page_size=2):
        assert len(kvs) == 2
        break  # stopping early closes the reading
    with etcd_sync.get_prefix_pages(etcd_prefix, page_size=2) as reading:
        kvs, _rev = next(reading)
        assert len(kvs) == 2
    with pytest.raises(StopIteration):  # closed by the with: no more pages
        next(reading)


async def test_watch_status_is_public(etcd: AsyncClient, etcd_prefix: str) -> None:
    async with etcd.watch(etcd_prefix, prefix=True, progress_notify=True) as w:
        first = await anext(w)  # etcd confirmed the watch: a progress batch
        assert first.events == []
        assert w.connected
        assert w.confirmed_at > 0
        assert w.disconnects == 0


@pytest.mark.parametrize("op", [None, 1, b"=="])
def test_a_compare_operator_of_another_type_is_a_type_error(op: object) -> None:
    with pytest.raises(TypeError, match="compare op must be one of"):
        Compare.value("/k", op, "v")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="compare op must be one of"):
        Compare.value("/k", "=", "v")  # type: ignore[arg-type]
