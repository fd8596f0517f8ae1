"""etcdkit.cluster in memory: the conformance suite on MemoryCluster, its own extras (shared
stores, disconnects, close), and the wire format it shares with Go (members, node descriptors).
"""

from __future__ import annotations

import asyncio
import importlib
import uuid
from collections.abc import AsyncIterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

import etcdkit.cluster
from cluster_conformance import BOUND, CHECKS, Check, next_view, nothing_arrives
from etcdkit import ClosedError, EtcdTimeoutError, WatchState
from etcdkit.cluster import (
    Cluster,
    EtcdBackedCluster,
    Member,
    Membership,
    MemoryCluster,
    MemoryStore,
    NodeDescriptor,
    decode_member,
    encode_member,
    member_key,
)


class MemoryFactory:
    """Clusters on one MemoryStore: the ClusterFactory of the conformance suite."""

    def __init__(self) -> None:
        self.store = MemoryStore("/test/cluster")
        self.created: list[MemoryCluster] = []

    @property
    def root(self) -> str:
        return self.store.root

    async def __call__(self) -> MemoryCluster:
        cluster = MemoryCluster(self.store)
        self.created.append(cluster)
        return cluster

    async def put_raw(self, key: bytes, value: bytes) -> None:
        self.store.put_raw(key, value)

    async def delete_raw(self, key: bytes) -> None:
        self.store.delete_raw(key)


@pytest.fixture
async def factory() -> AsyncIterator[MemoryFactory]:
    made = MemoryFactory()
    try:
        yield made
    finally:
        for cluster in made.created:
            await cluster.aclose()


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
async def test_conformance(check: Check, factory: MemoryFactory) -> None:
    tasks_before = asyncio.all_tasks()
    await check(factory)
    for cluster in factory.created:
        await cluster.aclose()
    assert asyncio.all_tasks() == tasks_before  # MemoryCluster owns no tasks: none can leak


# -- MemoryCluster ----------------------------------------------------------------------------


async def test_implements_the_cluster_protocol() -> None:
    async with MemoryCluster() as cluster:
        typed: Cluster = cluster
        membership: Membership = typed.membership("d")
        assert str(uuid.UUID(membership.id, version=4)) == membership.id
        assert (membership.data, membership.registered) == ("d", False)
        assert membership.member == Member(membership.id, "d")
        assert typed.members == ()
        assert cluster.store.root == "/cluster"
        assert repr(cluster) == "<MemoryCluster root='/cluster' connected members=0 revision=1>"
        assert repr(membership) == f"<MemoryMembership id={membership.id!r} unregistered data='d'>"
        # Long data: a short preview and the size, not the whole data (repr lands in logs).
        big = cluster.membership("x" * 1_000_000, id="big")
        text = repr(big)
        assert len(text) < 200
        assert text.startswith("<MemoryMembership id='big' unregistered data='xxxx")
        assert text.endswith("... (1000000 chars)>")
    assert cluster.closed


async def test_register_returns_the_revision_of_a_view_with_the_member() -> None:
    async with MemoryCluster() as cluster:
        m = cluster.membership("x", id="m1")
        rev = await m.register(timeout=0)  # nothing to wait for in memory
        assert rev == cluster.revision == cluster.store.revision == 2
        assert cluster.members == (Member("m1", "x"),)
        m.set_data("x")  # unchanged: no new revision
        assert await m.synced(timeout=0) == 2
        assert await m.deregister(timeout=0) == 3
        assert len(cluster.members) == 0


async def test_clusters_on_one_store_see_each_other() -> None:
    store = MemoryStore("/svc")
    async with MemoryCluster(store) as a, MemoryCluster(a.store) as b, MemoryCluster() as other:
        await a.membership("1", id="m1").register(timeout=BOUND)
        assert b.members == store.members == (Member("m1", "1"),)
        assert other.members == ()
        assert store.put_raw(member_key("/svc", "go"), b'{"id":"go","data":"g"}') == b.revision
        assert [m.id for m in a.members] == ["go", "m1"]


async def test_an_id_is_registered_by_one_membership_at_a_time() -> None:
    store = MemoryStore()
    async with MemoryCluster(store) as a, MemoryCluster(store) as b:
        first, second = a.membership("a", id="same"), b.membership("b", id="same")
        await first.register(timeout=BOUND)
        with pytest.raises(ValueError, match="already registered"):
            await second.register(timeout=BOUND)
        await first.deregister(timeout=BOUND)
        await second.register(timeout=BOUND)
        assert a.members == (Member("same", "b"),)


async def test_memory_cluster_has_the_etcd_backed_clusters_api() -> None:
    # The README: "MemoryCluster is the same API in memory" (it has no client and no ttl).
    public = {n for n in dir(EtcdBackedCluster) if not n.startswith("_")}
    assert public - {n for n in dir(MemoryCluster) if not n.startswith("_")} == {"client", "ttl"}
    store = MemoryStore("/svc")
    store.put_raw("/svc/bad", "not json")
    store.put_raw("/svc/bad", "not json")  # the same value again: the same record
    cluster = MemoryCluster(store)
    assert await cluster.open() is cluster
    assert (cluster.root, cluster.invalid_records) == ("/svc", 1)
    states = [cluster.state]
    cluster.disconnect()
    states.append(cluster.state)
    cluster.reconnect()
    store.put_raw("/svc/other", '{"id":"nope"}')
    assert cluster.invalid_records == 2
    await cluster.close()
    states.append(cluster.state)
    assert states == [WatchState.LIVE, WatchState.STALE, WatchState.CLOSED]
    with pytest.raises(ClosedError):
        await cluster.open()


async def test_disconnected_cluster_freezes_and_its_writes_time_out() -> None:
    store = MemoryStore()
    async with MemoryCluster(store) as a, MemoryCluster(store) as b:
        a.disconnect()
        assert not a.connected
        m = a.membership("x")
        with pytest.raises(EtcdTimeoutError, match="disconnected") as caught:
            await m.register(timeout=0.05)
        assert isinstance(caught.value, TimeoutError)
        assert m.registered  # the registration waits for the connection to come back
        assert b.members == a.members == ()
        await b.membership("b", id="b").register(timeout=BOUND)
        assert a.members == ()  # frozen

        a.reconnect()
        assert await m.synced(timeout=0) == a.revision
        assert a.members == b.members == tuple(sorted([Member("b", "b"), m.member]))


async def test_disconnected_members_stay_visible_to_others() -> None:
    store = MemoryStore()
    async with MemoryCluster(store) as a, MemoryCluster(store) as b:
        m = a.membership("x")
        await m.register(timeout=BOUND)
        a.disconnect()
        m.set_data("y")
        with pytest.raises(EtcdTimeoutError):
            await m.deregister(timeout=0.05)
        assert b.members == (Member(m.id, "x"),)  # as a lease outliving an outage would
        a.reconnect()
        await m.synced(timeout=0)
        assert len(b.members) == 0


async def test_close_removes_members_in_one_revision_and_wakes_waiters() -> None:
    store = MemoryStore()
    a, b = MemoryCluster(store), MemoryCluster(store)
    for i in range(3):
        await a.membership(str(i)).register(timeout=BOUND)
    stuck = a.membership("stuck")
    a.disconnect()
    waiter = asyncio.create_task(stuck.register(timeout=BOUND))
    async with b.watch_members() as watch:
        assert len(await next_view(watch) or ()) == 3
        rev = b.revision
        await a.aclose()
        assert await next_view(watch) == ()
        assert b.revision == rev + 1
        await nothing_arrives(watch)
    with pytest.raises(ClosedError):
        await waiter
    with pytest.raises(ClosedError):
        a.reconnect()
    await b.aclose()
    assert store.members == ()


async def test_watch_as_context_manager_and_repr() -> None:
    async with MemoryCluster() as cluster:
        async with cluster.watch_members() as watch:
            assert repr(watch) == "<MemberWatch open members=0>"
            assert [view async for view in _first(watch)] == [()]
        assert repr(watch) == "<MemberWatch closed members=0>"
        assert await next_view(watch) is None


async def _first(watch: AsyncIterator[tuple[Member, ...]]) -> AsyncIterator[tuple[Member, ...]]:
    yield await anext(watch)


def test_store_and_cluster_bad_input() -> None:
    with pytest.raises(ValueError, match="non-empty key prefix"):
        MemoryStore("")
    with pytest.raises(TypeError, match="cluster root must be a str"):
        MemoryStore(b"/x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="MemoryStore or None"):
        MemoryCluster("/x")  # type: ignore[arg-type]
    store = MemoryStore("/x")
    with pytest.raises(ValueError, match="not under this store's root"):
        store.put_raw(b"/y/a", b"{}")
    with pytest.raises(ValueError, match="not under this store's root"):
        store.delete_raw("/x/")
    with pytest.raises(TypeError, match="value must be str or bytes"):
        store.put_raw("/x/a", 1)  # type: ignore[arg-type]
    assert repr(store) == "<MemoryStore root='/x' members=0 rev=1>"


def test_exported_names() -> None:
    assert sorted(etcdkit.cluster.__all__) == [
        "Cluster",
        "DEFAULT_OPEN_TIMEOUT",
        "EtcdBackedCluster",
        "EtcdMembership",
        "HashRing",
        "Member",
        "MemberWatch",
        "Membership",
        "MemoryCluster",
        "MemoryMembership",
        "MemoryStore",
        "NodeDescriptor",
        "Registry",
        "RegistryView",
        "SyncCluster",
        "SyncMemberWatch",
        "SyncMembership",
        "decode_member",
        "encode_member",
        "member_key",
    ]
    routing = importlib.import_module("etcdkit.cluster.grpc")
    assert sorted(routing.__all__) == [
        "DEFAULT_ATTEMPTS",
        "DEFAULT_GRACE",
        "DEFAULT_OPTIONS",
        "KeyFunction",
        "RoutedChannel",
        "RoutedSyncChannel",
        "RoutingError",
        "current_route_key",
        "route_key",
    ]


# -- wire format: members ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("member", "value"),
    [
        (Member("a", "b"), b'{"id":"a","data":"b"}'),
        (Member("a"), b'{"id":"a","data":""}'),
        # Go's json.Marshal escapes <, >, & and U+2028/9, and writes other text as UTF-8.
        (
            Member("m", "<a>&\u2028\u2029é日"),
            rb'{"id":"m","data":"\u003ca\u003e\u0026\u2028\u2029' + "é日".encode() + b'"}',
        ),
        (Member("m", '"\\\n\r\t\x01'), rb'{"id":"m","data":"\"\\\n\r\t\u0001"}'),
    ],
)
def test_encode_member_writes_what_go_writes(member: Member, value: bytes) -> None:
    assert encode_member(member) == value
    assert decode_member("/root", b"/root/" + member.id.encode(), value) == member


def test_member_key() -> None:
    assert member_key("/svc/api", "m1") == b"/svc/api/m1"
    assert member_key("/svc/api/", "m1") == b"/svc/api/m1"  # as Go's path.Join
    assert member_key("/", "m1") == b"/m1"
    assert member_key("/é", "ü") == "/é/ü".encode()


def test_decode_member_reads_like_go() -> None:
    def decode(value: bytes) -> Member:
        return decode_member("/r", b"/r/a", value)

    assert decode(b'{"ID":"a","Data":"x","extra":[1,2]}') == Member("a", "x")
    assert decode(b'{"id":"a"}') == Member("a", "")
    assert decode(b'{"id":"a","data":null}') == Member("a", "")
    assert decode(b'{"id":"a","data":"1","data":"2"}') == Member("a", "2")
    assert decode(b' {"id":"a","data":"\\ud800"} ') == Member("a", "\ufffd")
    assert decode(b'{"id":"a","data":"\xff"}') == Member("a", "\ufffd")
    assert decode(b'{"id":"a","data":"\xe2\x82!"}') == Member("a", "\ufffd\ufffd!")  # Go's
    assert decode(b'{"id":"a","n":' + b"9" * 5000 + b"}") == Member("a", "")  # not read
    assert decode_member("/r/", b"/r/a", b'{"id":"a"}') == Member("a")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (b"/r/a", b"not json", "invalid JSON"),
        (b"/r/a", b"", "invalid JSON"),
        (b"/r/a", b'{"id":"a","data":NaN}', "invalid JSON"),
        (b"/r/a", b'["a"]', "expected a JSON object"),
        (b"/r/a", b"null", "expected a JSON object"),
        (b"/r/a", b'{"id":"b","data":""}', "must equal the key's last segment 'a'"),
        (b"/r/a", b'{"data":"x"}', "has id None"),
        (b"/r/a", b'{"id":1}', "'id' must be a JSON string"),
        (b"/r/a", b'{"id":"a","data":{}}', "'data' must be a JSON string"),
        (b"/rx/a", b'{"id":"a"}', "not under the cluster root"),
        (b"/r/", b'{"id":""}', "followed by a member id"),
        (b"/r/a/b", b'{"id":"b"}', "followed by a member id"),
        (b"/r/\xff", b'{"id":"a"}', "followed by a member id"),
    ],
)
def test_decode_member_refuses_invalid_records(key: bytes, value: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        decode_member("/r", key, value)


def test_member_validation() -> None:
    with pytest.raises(ValueError, match="non-empty string without '/'"):
        Member("")
    with pytest.raises(ValueError, match="non-empty string without '/'"):
        Member("a/b")
    with pytest.raises(TypeError, match="member id must be a str"):
        Member(1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="data must be a str"):
        Member("a", b"x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="takes a Member"):
        encode_member(("a", "b"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lone surrogate"):
        encode_member(Member("a", "\udc80"))
    assert sorted([Member("b"), Member("a", "z")]) == [Member("a", "z"), Member("b")]


text = st.text(st.characters(exclude_categories=["Cs"]))


@given(id=text.filter(lambda s: s and "/" not in s), data=text)
def test_member_round_trip(id: str, data: str) -> None:
    member = Member(id, data)
    value = encode_member(member)
    assert decode_member("/root", member_key("/root", id), value) == member
    assert not any(c in value for c in (b"<", b">", b"&"))


# -- wire format: node descriptors ------------------------------------------------------------


@pytest.mark.parametrize(
    ("descriptor", "data"),
    [
        (
            NodeDescriptor("m1", "10.0.0.5:8080"),
            '{"id":"m1","address":{"ip":"10.0.0.5","port":8080}}',  # weight 0: omitempty
        ),
        (
            NodeDescriptor("m1", "10.0.0.5:8080", 100),
            '{"id":"m1","address":{"ip":"10.0.0.5","port":8080},"weight":100}',
        ),
        (
            NodeDescriptor("m2", "[::1]:80", 65535),
            '{"id":"m2","address":{"ip":"[::1]","port":80},"weight":65535}',
        ),
        (
            NodeDescriptor("m3", "db-1.internal:5432", 7),
            '{"id":"m3","address":{"ip":"db-1.internal","port":5432},"weight":7}',
        ),
    ],
)
def test_descriptor_is_go_registry_json(descriptor: NodeDescriptor, data: str) -> None:
    assert descriptor.encode() == data
    assert NodeDescriptor.decode(data) == descriptor
    assert NodeDescriptor.decode(data.encode(), id="other").id == "other"
    assert NodeDescriptor.from_member(Member("mid", data)) == NodeDescriptor(
        "mid", descriptor.address, descriptor.weight
    )


def test_descriptor_reads_go_variants() -> None:
    # Go's registry ignores the JSON id (the member's wins), and writes no weight when it is 0.
    go = '{"id":"","address":{"ip":"10.1.2.3","port":9000}}'
    assert NodeDescriptor.decode(go, id="m") == NodeDescriptor("m", "10.1.2.3:9000", 0)
    bare_v6 = '{"Address":{"IP":"fe80::1%eth0","Port":443},"Weight":5}'
    desc = NodeDescriptor.decode(bare_v6, id="m")
    assert desc == NodeDescriptor("m", "[fe80::1%eth0]:443", 5)
    assert (desc.host, desc.port) == ("fe80::1%eth0", 443)


# What Go 1.19's json.Unmarshal made of these into registry.NodeDescriptor (the outside check's
# Go program): keys are matched to field names by simple case folding, in which only the long
# s (U+017F) and the Kelvin sign (U+212A) fold to ASCII letters; U+00DF is not "ss".
@pytest.mark.parametrize(
    ("data", "go"),
    [
        (
            '{"id":"a","addre\u017f\u017f":{"ip":"10.0.0.1","port":80},"weight":5}',
            "a@10.0.0.1:80/5",
        ),
        ('{"ADDRESS":{"IP":"h","PORT":1},"\u017fome":1}', "m@h:1/0"),
        ('{"address":{"ip":"h","port":1},"weight":5,"\u212aeep":1}', "m@h:1/5"),
        ('{"address":{"ip":"h","port":1},"weight":5,"weight\u017f":7}', "m@h:1/5"),
        ('{"addre\u00df":{"ip":"h","port":1}}', None),  # ß: no field ("addreß" != "address")
        ('{"addre\u017fs":{"ip":"h","port":1}}', "m@h:1/0"),
        ('{"\u0130p":1,"address":{"\u0130p":"h","port":1}}', None),  # U+0130 is no "i" for Go
        ('{"address":{"\u0131p":"h","port":1}}', None),  # nor is U+0131
    ],
)
def test_descriptor_keys_fold_as_go_folds_them(data: str, go: str | None) -> None:
    if go is None:
        with pytest.raises(ValueError, match="not a valid node descriptor"):
            NodeDescriptor.decode(data, id="m")
        return
    desc = NodeDescriptor.decode(data, id="a" if go.startswith("a@") else "m")
    assert f"{desc.id}@{desc.address}/{desc.weight}" == go


def test_member_record_keys_fold_as_go_folds_them() -> None:
    record = '{"\u0130d":"x","id":"m","d\u0430ta":"no","DATA":"yes"}'
    assert decode_member("/r", b"/r/m", record.encode()) == Member("m", "yes")
    dotless = '{"\\u0131d":"m","data":"v"}'
    with pytest.raises(ValueError, match="has id None"):  # (U+0131 is no i: no id)
        decode_member("/r", b"/r/m", dotless.encode())


@pytest.mark.parametrize(
    "data",
    [
        "not json",
        "[]",
        '{"address":{"ip":"h","port":1}}',  # no id, none given
        '{"id":"m"}',
        '{"id":"m","address":null}',
        '{"id":"m","address":"h:1"}',
        '{"id":"m","address":{"ip":"","port":80}}',  # Go's router drops these
        '{"id":"m","address":{"ip":"h","port":0}}',
        '{"id":"m","address":{"ip":"h","port":80.0}}',
        '{"id":"m","address":{"ip":"h","port":"80"}}',
        '{"id":"m","address":{"ip":"h","port":70000}}',
        '{"id":"m","address":{"ip":"h","port":1},"weight":-1}',
        '{"id":"m","address":{"ip":"h","port":1},"weight":-0}',  # (Go's uint32 refuses it)
        '{"id":"m","address":{"ip":"h","port":1},"weight":4294967296}',
        # a ring token per unit of weight: above MAX_WEIGHT no router builds it (Go would)
        '{"id":"m","address":{"ip":"h","port":1},"weight":65536}',
        '{"id":"m","address":{"ip":"h","port":1},"weight":4294967295}',
        '{"id":"m","address":{"ip":"h","port":1},"weight":1.5}',
        '{"id":"m","address":{"ip":"[nope]","port":1}}',
        '{"id":"a/b","address":{"ip":"h","port":1}}',
    ],
)
def test_descriptor_refuses_what_a_router_cannot_use(data: str) -> None:
    with pytest.raises(ValueError, match="not a valid node descriptor"):
        NodeDescriptor.decode(data)


@pytest.mark.parametrize(
    ("address", "error"),
    [
        ("10.0.0.5", ValueError),
        ("10.0.0.5:", ValueError),
        (":80", ValueError),
        ("::1:80", ValueError),  # IPv6 needs brackets
        ("[::1]", ValueError),
        ("[1.2.3.4]:80", ValueError),
        ("h:0", ValueError),
        ("h:65536", ValueError),
        ("h:+80", ValueError),
        ("h:٨٠", ValueError),  # non-ASCII digits
        ("a b:80", ValueError),
        (("h", 80), TypeError),
    ],
)
def test_descriptor_address_validation(address: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="host:port"):
        NodeDescriptor("m", address)  # type: ignore[arg-type]


def test_descriptor_field_validation() -> None:
    assert NodeDescriptor("m", "h:65535").port == 65535
    with pytest.raises(ValueError, match="weight must be an int from 0 to 65535"):
        NodeDescriptor("m", "h:1", -1)
    assert NodeDescriptor.MAX_WEIGHT == 65535
    assert NodeDescriptor("m", "h:1", NodeDescriptor.MAX_WEIGHT).weight == 65535
    with pytest.raises(ValueError, match=r"weight must be an int from 0 to 65535 \(NodeDesc"):
        NodeDescriptor("m", "h:1", 65536)
    with pytest.raises(TypeError, match="weight must be an int"):
        NodeDescriptor("m", "h:1", True)
    with pytest.raises(ValueError, match="member id"):
        NodeDescriptor("", "h:1")
    with pytest.raises(TypeError, match="takes a Member"):
        NodeDescriptor.from_member("m")  # type: ignore[arg-type]
