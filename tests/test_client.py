"""AsyncClient / Client basics against a real etcd: KV, leases, errors, lifecycle."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from aetcd import rpc

import etcdkit
from etcdkit import AsyncClient, Client
from etcdkit._types import prefix_range_end
from etcdkit._wire.conn import parse_endpoints
from etcdkit.server import EtcdServer


def etcdkit_tasks() -> list[str]:
    return [
        t.get_name()
        for t in asyncio.all_tasks()
        if t.get_name().startswith("etcdkit") and not t.done()
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- pure helpers ---------------------------------------------------------------------------------


def test_parse_endpoints_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    e = parse_endpoints("127.0.0.1:1, http://127.0.0.1:2,http://[::1]:3")
    assert [(x.host, x.port) for x in e] == [("127.0.0.1", 1), ("127.0.0.1", 2), ("::1", 3)]
    assert parse_endpoints("https://127.0.0.1:7")[0].tls
    with pytest.raises(ValueError, match="mix http and https"):
        AsyncClient("http://127.0.0.1:1,https://127.0.0.1:2")
    assert parse_endpoints(["localhost:5"])[0].host == "localhost"
    monkeypatch.setenv("ETCDKIT_ENDPOINTS", "127.0.0.1:4444")
    assert str(parse_endpoints(None)[0]) == "http://127.0.0.1:4444"
    monkeypatch.delenv("ETCDKIT_ENDPOINTS")
    assert str(parse_endpoints(None)[0]) == "http://127.0.0.1:2379"
    monkeypatch.setenv("ETCDKIT_ENDPOINTS", " ")  # blank as empty: the default
    assert str(parse_endpoints(None)[0]) == "http://127.0.0.1:2379"


@pytest.mark.parametrize("bad", ["", "ftp://x:1", "host:notaport", "h:70000", ","])
def test_bad_endpoints_are_value_errors(bad: str) -> None:
    with pytest.raises(ValueError, match="endpoint"):
        AsyncClient(bad)


def test_bad_constructor_arguments() -> None:
    with pytest.raises(TypeError, match="endpoints must be"):
        AsyncClient(123)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="both username and password"):
        AsyncClient("127.0.0.1:1", username="u")
    with pytest.raises(ValueError, match="timeout"):
        AsyncClient("127.0.0.1:1", timeout=-1)
    with pytest.raises(ValueError, match="cannot read ca_cert"):
        AsyncClient("127.0.0.1:1", ca_cert="/nonexistent/ca.pem")


def test_prefix_range_end() -> None:
    assert prefix_range_end(b"/a") == b"/b"
    assert prefix_range_end(b"a\xff") == b"b"
    assert prefix_range_end(b"\xff\xff") == b"\0"


# -- against a real etcd --------------------------------------------------------------------------


async def test_kv_roundtrip(etcd: AsyncClient, etcd_prefix: str) -> None:
    k = etcd_prefix + "a"
    rev = await etcd.put(k, "1")
    kv = await etcd.get(k)
    assert kv is not None
    assert kv.value == b"1"
    assert kv.mod_revision == rev
    assert kv.create_revision == rev
    rev2 = await etcd.put(k.encode(), b"2")
    assert rev2 > rev
    kv2 = await etcd.get(k)
    assert kv2 is not None
    assert (kv2.value, kv2.version, kv2.create_revision) == (b"2", 2, rev)
    assert (await etcd.get(k, revision=rev)).value == b"1"  # type: ignore[union-attr]
    assert await etcd.delete(k) is True
    assert await etcd.delete(k) is False
    assert await etcd.get(k) is None


async def test_get_prefix_paginates_at_one_revision(etcd: AsyncClient, etcd_prefix: str) -> None:
    for i in range(25):
        await etcd.put(f"{etcd_prefix}k{i:03d}", str(i))
    await etcd.put(etcd_prefix.rstrip("/") + "x", "sibling")  # "/p" vs "/px": not under "/p/"
    result = await etcd.get_prefix(etcd_prefix, page_size=4)
    assert [kv.value for kv in result.kvs] == [str(i).encode() for i in range(25)]
    _kvs, revision = result
    assert revision == await etcd.get_revision()
    # A revision in the middle of the writes: exactly the keys that existed then.
    mid = (await etcd.get(f"{etcd_prefix}k009")).mod_revision  # type: ignore[union-attr]
    old = await etcd.get_prefix(etcd_prefix, revision=mid, page_size=3)
    assert len(old.kvs) == 10
    assert old.revision == mid
    assert await etcd.delete_prefix(etcd_prefix) == 25
    await etcd.delete(etcd_prefix.rstrip("/") + "x")


async def test_leases_grant_revoke(etcd: AsyncClient, etcd_prefix: str) -> None:
    grant = await etcd.grant(30)
    assert grant.ttl == 30
    await etcd.put(etcd_prefix + "l", "v", lease=grant.id)
    assert 0 < await etcd.time_to_live(grant.id) <= 30
    await etcd.revoke(grant.id)
    assert await etcd.get(etcd_prefix + "l") is None
    assert await etcd.time_to_live(grant.id) == -1
    with pytest.raises(etcdkit.LeaseNotFoundError):
        await etcd.put(etcd_prefix + "l", "v", lease=grant.id)
    with pytest.raises(ValueError, match="ttl"):
        await etcd.grant(0)


async def test_compacted_read_raises(etcd: AsyncClient, etcd_prefix: str) -> None:
    r1 = await etcd.put(etcd_prefix + "c", "1")
    r2 = await etcd.put(etcd_prefix + "c", "2")
    await etcd.compact(r2)
    with pytest.raises(etcdkit.CompactedError, match="compacted"):
        await etcd.get(etcd_prefix + "c", revision=r1)


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda c: c.put(b"", "v"), ValueError, "key must not be empty"),
        (lambda c: c.put(1, "v"), TypeError, "key must be str or bytes"),
        (lambda c: c.put("k", 1.5), TypeError, "value must be str or bytes"),
        (lambda c: c.get("k", revision=-1), ValueError, "revision"),
        (lambda c: c.put("k", "v", lease=-3), ValueError, "lease"),
        (lambda c: c.get_prefix("p", page_size=0), ValueError, "page_size"),
    ],
)
async def test_bad_input_is_rejected_before_io(
    etcd: AsyncClient, call: object, exc: type[Exception], match: str
) -> None:
    with pytest.raises(exc, match=match):
        await call(etcd)  # type: ignore[operator]


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"page_size": 0}, ValueError),
        ({"page_size": 1.5}, TypeError),
        ({"page_size": 2**63}, ValueError),
        ({"revision": -1}, ValueError),
        ({"keys_only": "yes"}, TypeError),
        ({"keys_only": 1}, TypeError),
        ({"keys_only": None}, TypeError),
    ],
)
def test_get_prefix_pages_checks_its_arguments_at_the_call(
    etcd_server: EtcdServer, kwargs: dict[str, object], exc: type[Exception]
) -> None:
    """As ``get_prefix`` does, on both faces (they were checked at the first ``next()``)."""

    async def aio() -> None:
        async with AsyncClient(etcd_server.endpoint) as client:
            with pytest.raises(exc):
                client.get_prefix_pages("p", **kwargs)  # type: ignore[arg-type]

    asyncio.run(aio())
    with etcdkit.Client(etcd_server.endpoint) as client, pytest.raises(exc):
        client.get_prefix_pages("p", **kwargs)  # type: ignore[arg-type]


async def test_unreachable_endpoint_fails_within_the_timeout() -> None:
    # Issue 12: a call waits for a ready endpoint within its timeout (as Go's clientv3 does),
    # then fails with the endpoint's address and the last connection error.
    port = free_port()
    async with AsyncClient(f"127.0.0.1:{port}", timeout=1) as client:
        t0 = time.monotonic()
        with pytest.raises(etcdkit.ConnectionUnavailableError, match=f"127.0.0.1:{port}") as info:
            await client.get("k")
        assert time.monotonic() - t0 < 1.5
        assert "last error" in str(info.value)
        with pytest.raises(etcdkit.ConnectionUnavailableError, match=f"127.0.0.1:{port}"):
            await client.put("k", "v")  # a write that never left is retried the same way
        assert time.monotonic() - t0 < 3.0


async def test_timeout_is_a_builtin_timeout_error(etcd_server_factory: object) -> None:
    server: EtcdServer = etcd_server_factory()  # type: ignore[operator]
    async with AsyncClient(server.endpoint, timeout=0.5) as client:
        await client.put("k", "v")
        server.pause()
        try:
            with pytest.raises(TimeoutError) as info:
                await client.get("k")
            assert isinstance(info.value, etcdkit.EtcdkitError)
        finally:
            server.resume()
        assert (await client.get("k")) is not None


async def test_raw_escape_hatch(etcd: AsyncClient, etcd_prefix: str) -> None:
    await etcd.put(etcd_prefix + "r", "1")
    resp = await etcd.raw.kv.Range(rpc.RangeRequest(key=(etcd_prefix + "r").encode()))
    assert resp.kvs[0].value == b"1"


async def test_close_is_idempotent_and_use_after_close_is_clear(etcd_server: EtcdServer) -> None:
    client = AsyncClient(etcd_server.endpoint)
    with pytest.raises(etcdkit.ClosedError, match="not open"):
        await client.get("k")
    async with client:
        await client.get("k")
    await client.close()
    with pytest.raises(etcdkit.ClosedError, match="closed"):
        await client.get("k")
    with pytest.raises(etcdkit.ClosedError):
        await client.connect()
    assert etcdkit_tasks() == []


def test_threaded_client(etcd_sync: Client, etcd_prefix: str, no_leaked_threads: None) -> None:
    with Client(etcd_sync.endpoints) as client:
        rev = client.put(etcd_prefix + "t", "v")
        kv = client.get(etcd_prefix + "t")
        assert kv is not None
        assert kv.mod_revision == rev
        assert client.get_prefix(etcd_prefix).revision >= rev
        with pytest.raises(TypeError):
            client.put(None, "v")  # type: ignore[call-overload]
    with pytest.raises(etcdkit.ClosedError):
        client.get("k")


def test_public_names_are_pinned() -> None:
    assert sorted(etcdkit.__all__) == sorted(
        [
            "AsyncClient", "AuthError", "Change", "ChangeKind", "Client", "ClosedError",
            "CompactedError", "Compare", "ConnectionUnavailableError", "DeleteResult",
            "EtcdTimeoutError", "EtcdkitError", "EventType", "InvalidArgumentError", "KeyValue",
            "LeaseGrant", "LeaseNotFoundError", "LeaseState", "Op", "PermissionDeniedError",
            "PersistentLease", "PrefixWatch", "PutResult", "RangeResult", "RetryPolicy",
            "ServerError", "Session", "SessionState", "Snapshot", "SyncPersistentLease",
            "SyncPrefixWatch", "SyncSession", "TxnResult", "WatchEndedError", "WatchEvent",
            "WatchState", "WatchStats", "WrongContextError", "__version__", "default_transform",
            "Campaign", "Election", "HoldState", "Leader", "Leadership", "Lock", "NotHeldError",
            "SyncCampaign", "SyncElection", "SyncIterator", "SyncLeadership", "SyncLock",
            "LockHold", "SyncLockHold",
            "ClientStats", "LeaseStats",
            "LeaseInfo", "ResponseHeader", "SyncWatch", "Watch", "WatchBatch",
            "Alarm", "Auth", "AuthStatus", "HashKV", "Maintenance", "Member", "Members",
            "Permission", "Status", "SyncAuth", "SyncMaintenance", "SyncMembers",
            "Barrier", "BarrierFullError", "DoubleBarrier", "Permit", "RWHold", "RWLock",
            "Semaphore", "SyncBarrier", "SyncDoubleBarrier", "SyncPermit", "SyncRWHold",
            "SyncRWLock", "SyncSemaphore",
            "ConflictError", "Counter", "OutcomeUnknownError", "PriorityQueue", "Queue", "Stm",
            "SyncCounter", "SyncPriorityQueue", "SyncQueue", "SyncStm",
            "Endpoint", "EndpointManager", "SyncEndpointManager",
            "KeepAlive", "KeepAliveStatus", "SyncKeepAlive",
            "Backoff", "Etcd", "Isolation", "KeyValueLike", "SortOrder", "SortTarget",
            "Transform", "WatchFilter",
        ]
    )  # fmt: skip
    assert isinstance(etcdkit.__version__, str)
    assert issubclass(etcdkit.EtcdTimeoutError, TimeoutError)
