"""etcdkit.cluster.grpc: routed channels over in-process gRPC servers (generic handlers, no
protoc), on MemoryCluster and on real etcd; the registry view they route on."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from typing import Any

import grpc
import grpc.aio
import pytest

from _helpers import etcdkit_tasks, quickly
from cluster_conformance import BOUND
from etcdkit import AsyncClient, Client
from etcdkit.cluster import (
    HashRing,
    Member,
    MemoryCluster,
    MemoryStore,
    NodeDescriptor,
    Registry,
    RegistryView,
)
from etcdkit.cluster.grpc import (
    DEFAULT_OPTIONS,
    RoutedChannel,
    RoutedSyncChannel,
    RoutingError,
    current_route_key,
    route_key,
)
from etcdkit.server import EtcdServer

SERVICE = "test.Echo"
KEYS = [f"user-{i}".encode() for i in range(60)]


class EchoStub:
    """What protoc generates for a service, by hand: the channel's multicallables."""

    def __init__(self, channel: Any) -> None:
        self.Who = channel.unary_unary(f"/{SERVICE}/Who", _registered_method=True)
        self.Slow = channel.unary_unary(f"/{SERVICE}/Slow", _registered_method=True)
        self.Fail = channel.unary_unary(f"/{SERVICE}/Fail", _registered_method=True)
        self.Count = channel.unary_stream(f"/{SERVICE}/Count", _registered_method=True)
        self.Upload = channel.stream_unary(f"/{SERVICE}/Upload", _registered_method=True)
        self.Chat = channel.stream_stream(f"/{SERVICE}/Chat", _registered_method=True)


class Node:
    """An in-process grpc.aio server that answers with its name."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self.calls = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def descriptor(self, weight: int = 100) -> str:
        return NodeDescriptor(self.name, self.address, weight).encode()

    async def start(self, port: int = 0) -> Node:
        name = self.name.encode()

        async def who(request: bytes, context: Any) -> bytes:
            self.calls += 1
            return name + b":" + request

        async def slow(request: bytes, context: Any) -> bytes:
            await asyncio.sleep(float(request.decode() or "1"))
            return name

        async def fail(request: bytes, context: Any) -> bytes:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no")
            return b""

        async def count(request: bytes, context: Any) -> AsyncIterator[bytes]:
            for i in range(3):
                yield name + b"%d" % i

        async def upload(requests: AsyncIterator[bytes], context: Any) -> bytes:
            return name + b":" + b"".join([r async for r in requests])

        async def chat(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
            async for r in requests:
                yield name + b":" + r

        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Who": grpc.unary_unary_rpc_method_handler(who),
                "Slow": grpc.unary_unary_rpc_method_handler(slow),
                "Fail": grpc.unary_unary_rpc_method_handler(fail),
                "Count": grpc.unary_stream_rpc_method_handler(count),
                "Upload": grpc.stream_unary_rpc_method_handler(upload),
                "Chat": grpc.stream_stream_rpc_method_handler(chat),
            },
        )
        self.server = grpc.aio.server()
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port or self.port}")
        await self.server.start()
        return self

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(None)
            self.server = None


@pytest.fixture
async def nodes() -> AsyncIterator[list[Node]]:
    made = [await Node(f"n{i}").start() for i in range(3)]
    try:
        yield made
    finally:
        for node in made:
            await node.stop()


async def register_all(cluster: MemoryCluster, nodes: list[Node], weight: int = 100) -> None:
    for node in nodes:
        await cluster.membership(node.descriptor(weight), id=node.name).register(timeout=BOUND)


def owner_name(reply: bytes) -> str:
    return reply.split(b":", 1)[0].decode()


# -- the registry view -----------------------------------------------------------------------------


def test_registry_view_is_nodes_and_ring_of_one_revision() -> None:
    a = NodeDescriptor("a", "10.0.0.1:80", 100)
    b = NodeDescriptor("b", "[::1]:80", 50)
    z = NodeDescriptor("z", "10.0.0.3:80")  # weight 0: a node, but owns no keys
    members = [Member("b", b.encode()), Member("a", a.encode()), Member("z", z.encode())]
    members.append(Member("junk", "not a descriptor"))
    view = RegistryView.from_members(members, 7)
    assert view.revision == 7
    assert list(view.nodes) == ["a", "b", "z"]
    assert view.nodes["b"] == b
    assert view.invalid == (Member("junk", "not a descriptor"),)
    assert view.ring == HashRing({"a": 100, "b": 50})
    for key in KEYS:
        assert view.owner(key) == view.nodes[view.ring.node(key) or ""]
        assert [n.id for n in view.owners(key, 5)] == view.ring.nodes(key, 5)
    again = RegistryView.from_members(members[:3], 8, previous=view)
    assert again.ring is view.ring  # same weights: the ring is reused
    assert RegistryView.empty().owner(b"k") is None
    assert repr(view) == "<RegistryView revision=7 nodes=3 tokens=150 invalid=1>"
    with pytest.raises(AttributeError):
        view.revision = 9  # type: ignore[misc]


def test_a_node_weighing_more_than_the_maximum_is_left_out() -> None:
    # Go's registry takes any uint32, and every router would build a token per unit of weight
    # in its event loop (2**32-1: hours). Above NodeDescriptor.MAX_WEIGHT it is no node.
    ok = NodeDescriptor("a", "10.0.0.1:80", NodeDescriptor.MAX_WEIGHT)
    heavy = '{"id":"h","address":{"ip":"10.0.0.2","port":80},"weight":%d}'
    members = [Member("a", ok.encode()), Member("h", heavy % (NodeDescriptor.MAX_WEIGHT + 1))]
    view = RegistryView.from_members(members, 3)
    assert list(view.nodes) == ["a"]
    assert [m.id for m in view.invalid] == ["h"]
    assert view.ring == HashRing({"a": NodeDescriptor.MAX_WEIGHT})


async def test_registry_follows_a_cluster(caplog: pytest.LogCaptureFixture) -> None:
    async with MemoryCluster(MemoryStore("/svc")) as cluster:
        registry = Registry(cluster)
        assert registry.view.nodes == {}
        assert registry.owner(b"k") is None
        a = cluster.membership(NodeDescriptor("a", "h:1", 10).encode(), id="a")
        await a.register()
        assert registry.view is registry.view  # cached while nothing changes
        assert registry.owner(b"k") == NodeDescriptor("a", "h:1", 10)
        views = registry.watch()
        first = await anext(views)
        assert list(first.nodes) == ["a"]
        bad = cluster.membership("garbage", id="bad")
        await bad.register()
        second = await anext(views)
        assert second.invalid == (bad.member,)
        assert second.ring is first.ring
        assert sum("garbage" in r.getMessage() for r in caplog.records) == 1
        registry.view  # noqa: B018 (a rebuild must not warn again)
        assert sum("garbage" in r.getMessage() for r in caplog.records) == 1
        await views.aclose()


# -- routing on a MemoryCluster -------------------------------------------------------------------


async def test_calls_go_to_the_ring_owner_of_their_key(nodes: list[Node]) -> None:
    async with MemoryCluster() as cluster:
        await register_all(cluster, nodes)
        async with RoutedChannel(cluster) as channel:
            stub = EchoStub(channel)
            view = channel.view
            assert set(view.nodes) == {"n0", "n1", "n2"}
            seen = set()
            for key in KEYS:
                with route_key(key):
                    assert current_route_key() == key
                    reply = await stub.Who(b"x", timeout=BOUND)
                owner = view.owner(key)
                assert owner is not None
                assert owner_name(reply) == owner.id == channel.owner(key).id  # type: ignore[union-attr]
                seen.add(owner.id)
            assert seen == {"n0", "n1", "n2"}
            assert current_route_key() is None


async def test_a_key_function_routes_by_request(nodes: list[Node]) -> None:
    async with MemoryCluster() as cluster:
        await register_all(cluster, nodes)
        async with RoutedChannel(cluster, key=lambda request: request) as channel:
            stub = EchoStub(channel)
            for key in KEYS[:20]:
                reply = await stub.Who(key, timeout=BOUND)
                assert owner_name(reply) == channel.owner(key).id  # type: ignore[union-attr]
            # a route_key block wins over the function
            with route_key(KEYS[0]):
                reply = await stub.Who(KEYS[1], timeout=BOUND)
            assert owner_name(reply) == channel.owner(KEYS[0]).id  # type: ignore[union-attr]


async def test_without_a_key_calls_are_weighted_random(nodes: list[Node]) -> None:
    async with MemoryCluster() as cluster:
        for node, weight in zip(nodes, (100, 300, 0)):
            await cluster.membership(node.descriptor(weight), id=node.name).register()
        async with RoutedChannel(cluster) as channel:
            stub = EchoStub(channel)
            counts = {"n0": 0, "n1": 0, "n2": 0}
            for _ in range(200):
                counts[owner_name(await stub.Who(b"", timeout=BOUND))] += 1
            assert counts["n2"] == 0  # weight 0 takes no calls
            assert 20 < counts["n0"] < 90 < counts["n1"]


async def test_unavailable_owner_is_retried_on_the_next_ring_node(nodes: list[Node]) -> None:
    async with MemoryCluster() as cluster:
        await register_all(cluster, nodes)
        async with RoutedChannel(cluster) as channel:
            stub = EchoStub(channel)
            victim = nodes[0]
            keys = [k for k in KEYS if channel.owner(k).id == victim.name]  # type: ignore[union-attr]
            assert keys
            await victim.stop()  # killed: still registered, refuses connections
            for key in keys:
                with route_key(key), quickly(2.0):
                    reply = await stub.Who(b"", timeout=BOUND)
                assert owner_name(reply) == channel.view.ring.nodes(key, 2)[1]
            # a failure that is not UNAVAILABLE is not retried
            with route_key(KEYS[0]), pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Fail(b"", timeout=BOUND)
            assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            # attempts are bounded: with every node down the call fails UNAVAILABLE
            for node in nodes:
                await node.stop()
            with route_key(KEYS[0]), quickly(3.0), pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Who(b"", timeout=BOUND)
            assert err.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_a_call_being_retried_is_not_done(nodes: list[Node]) -> None:
    # grpc.aio's contract: done() and the done callbacks mean the RPC ended. A call whose
    # owner is down is retried on the next node even when nobody awaits it (an interceptor,
    # code collecting calls later): done, and its callbacks, come after that retry.
    async with MemoryCluster() as cluster:
        await register_all(cluster, nodes)
        async with RoutedChannel(cluster) as channel:
            stub = EchoStub(channel)
            key = KEYS[7]
            owner, later = channel.view.ring.nodes(key, 2)
            await next(n for n in nodes if n.name == owner).stop()
            second = next(n for n in nodes if n.name == later)
            seen: list[int] = []
            with route_key(key):
                call = stub.Who(b"x", timeout=BOUND)
                call.add_done_callback(lambda c: seen.append(second.calls))
            deadline = time.monotonic() + BOUND
            while not seen:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            assert seen == [1]  # it fired once the retry had been answered, not before
            assert call.done()
            assert await call.code() is grpc.StatusCode.OK
            assert await call == f"{later}:x".encode()
            # asked by polling done(), without a callback
            with route_key(key):
                polled = stub.Who(b"y", timeout=BOUND)
            while not polled.done():
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            assert second.calls == 2
            assert await polled == f"{later}:y".encode()
            assert second.calls == 2  # (awaited after: no attempt more)


async def test_no_node_fails_at_once_with_unavailable() -> None:
    async with MemoryCluster() as cluster, RoutedChannel(cluster) as channel:
        stub = EchoStub(channel)
        call = stub.Who(b"")
        with quickly(1.0), pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "no node" in (err.value.details() or "")
        assert await call.code() is grpc.StatusCode.UNAVAILABLE
        assert call.done()
        assert channel.get_state() is grpc.ChannelConnectivity.TRANSIENT_FAILURE


async def test_a_node_that_leaves_has_its_channel_closed(nodes: list[Node]) -> None:
    opened: dict[str, grpc.aio.Channel] = {}

    def factory(address: str) -> grpc.aio.Channel:
        ch = grpc.aio.insecure_channel(address)
        opened[address] = ch
        return ch

    async with MemoryCluster() as cluster:
        await register_all(cluster, nodes[:2])
        async with RoutedChannel(cluster, channel_factory=factory, grace=0.2) as channel:
            stub = EchoStub(channel)
            assert set(opened) == {nodes[0].address, nodes[1].address}
            await stub.Who(b"", timeout=BOUND)
            gone = cluster.membership(id="x")  # an unrelated member changes nothing
            await gone.register()
            member = nodes[0]
            leaving = [m for m in cluster.store.members if m.id == member.name]
            assert leaving
            # deregister n0 (registered by register_all through another membership object)
            cluster.store.delete_raw(f"{cluster.store.root}/{member.name}")
            await asyncio.sleep(0.05)
            assert set(channel.view.nodes) == {"n1"}
            deadline = time.monotonic() + BOUND
            while opened[member.address].get_state() is not grpc.ChannelConnectivity.SHUTDOWN:
                assert time.monotonic() < deadline, "the channel of the node that left is open"
                await asyncio.sleep(0.05)
            for key in KEYS[:10]:
                with route_key(key):
                    assert owner_name(await stub.Who(b"", timeout=BOUND)) == "n1"
            # a node that joins gets a channel
            await cluster.membership(nodes[2].descriptor(), id="n9").register()
            await asyncio.sleep(0.05)
            assert nodes[2].address in opened
    assert all(ch.get_state() is grpc.ChannelConnectivity.SHUTDOWN for ch in opened.values())


async def test_a_node_whose_channel_cannot_be_opened_is_left_out_and_the_view_followed(
    nodes: list[Node], caplog: pytest.LogCaptureFixture
) -> None:
    """The channel factory raises for one node: that node gets no calls (an error says why),
    and the channel goes on following the cluster (it kept the view of that moment, for
    good: calls went on to a node that had left)."""
    refused = nodes[0].address

    def factory(address: str) -> grpc.aio.Channel:
        if address == refused:
            raise ValueError(f"no channel to {address}")
        return grpc.aio.insecure_channel(address)

    async with MemoryCluster() as cluster:
        await register_all(cluster, nodes[:2])
        async with RoutedChannel(cluster, channel_factory=factory) as channel:
            stub = EchoStub(channel)
            for _ in range(10):
                assert owner_name(await stub.Who(b"", timeout=BOUND)) == "n1"
            assert "n0 at" in caplog.text
            assert "no channel to" in caplog.text
            await cluster.membership(nodes[2].descriptor(), id="n2").register(timeout=BOUND)
            cluster.store.delete_raw(f"{cluster.store.root}/n1")
            async with asyncio.timeout(BOUND):
                while set(channel.view.nodes) != {"n0", "n2"}:
                    await asyncio.sleep(0.02)
            for _ in range(10):
                assert owner_name(await stub.Who(b"", timeout=BOUND)) == "n2"


async def test_close_ends_the_calls_in_flight_with_cancelled(nodes: list[Node]) -> None:
    """As documented, not as nodes that left: UNAVAILABLE, which a caller's retry takes as
    worth another try."""
    async with MemoryCluster() as cluster:
        await register_all(cluster, nodes[:2])
        channel = RoutedChannel(cluster, grace=0)
        stub = EchoStub(channel)
        calls = []
        for key in KEYS[:4]:
            with route_key(key):
                calls.append(asyncio.ensure_future(stub.Slow(b"30")))
        await asyncio.sleep(0.2)
        await channel.close()
        async with asyncio.timeout(BOUND):
            ended = await asyncio.gather(*calls, return_exceptions=True)
        assert {(type(e), e.code()) for e in ended} == {  # type: ignore[union-attr]
            (grpc.aio.AioRpcError, grpc.StatusCode.CANCELLED)
        }


async def test_calls_fail_once_the_cluster_closed(
    nodes: list[Node], caplog: pytest.LogCaptureFixture
) -> None:
    # Its members left with it: the channel no longer routes to them, and says why.
    async def parts() -> AsyncIterator[bytes]:
        yield b"a"

    caplog.set_level(logging.INFO, "etcdkit")
    cluster = MemoryCluster()
    await register_all(cluster, nodes)
    async with RoutedChannel(cluster, grace=0) as channel:
        stub = EchoStub(channel)
        assert owner_name(await stub.Who(b"", timeout=BOUND)) in {n.name for n in nodes}
        await cluster.aclose()
        deadline = time.monotonic() + BOUND
        while channel.view.nodes:
            assert time.monotonic() < deadline, "still routing on the closed cluster's nodes"
            await asyncio.sleep(0.01)
        assert channel.get_state() is grpc.ChannelConnectivity.SHUTDOWN
        with pytest.raises(
            grpc.aio.UsageError, match="the cluster of this RoutedChannel was closed"
        ):
            stub.Who(b"", timeout=BOUND)
        with pytest.raises(grpc.aio.UsageError, match="close the RoutedChannel"):
            stub.Upload(parts(), timeout=BOUND)
        assert "open (its cluster closed)" in repr(channel)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert "the cluster of this RoutedChannel was closed" in caplog.text


def test_default_options_ping_no_more_than_a_default_grpc_server_allows() -> None:
    """gRPC servers (C-core's, Go's) allow a keepalive ping per 5 minutes by default, and none
    without a call in flight; more get GOAWAY "too_many_pings", which ends every call on the
    connection (seen: a 60 s call cut at ~30 s by 10 s pings, then run again on the next
    node). Slower pings cannot show it in a test's time: the values are the test."""
    options = dict(DEFAULT_OPTIONS)
    assert options["grpc.keepalive_time_ms"] > 300_000
    assert options["grpc.keepalive_permit_without_calls"] == 0


async def test_a_call_on_a_node_that_leaves_finishes_or_moves(nodes: list[Node]) -> None:
    async with MemoryCluster() as cluster:
        await register_all(cluster, nodes)
        async with RoutedChannel(cluster, grace=0.3) as channel:
            stub = EchoStub(channel)
            key = next(k for k in KEYS if channel.owner(k).id == "n0")  # type: ignore[union-attr]
            with route_key(key):
                quick = asyncio.ensure_future(stub.Slow(b"0.1", timeout=BOUND))
                stuck = asyncio.ensure_future(stub.Slow(b"30"))  # no deadline at all
            await asyncio.sleep(0.05)
            cluster.store.delete_raw(f"{cluster.store.root}/n0")
            # within the grace: finishes on n0; after it: moves on (to the next ring node,
            # where it waits its 30 s: cancel it there)
            assert await quick == b"n0"
            await asyncio.sleep(0.6)
            assert not stuck.done()
            stuck.cancel()
            with pytest.raises(asyncio.CancelledError):
                await stuck
            assert nodes[1].calls + nodes[2].calls == 0  # Slow does not count


async def test_calls_never_block_forever_on_a_black_hole() -> None:
    """A node whose address accepts TCP but never answers: a call with a deadline ends at it;
    one without ends when the node leaves the view."""
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(16)
    port = hole.getsockname()[1]
    try:
        async with MemoryCluster() as cluster:
            m = cluster.membership(NodeDescriptor("hole", f"127.0.0.1:{port}", 1).encode())
            await m.register()
            async with RoutedChannel(cluster, grace=0.1) as channel:
                stub = EchoStub(channel)
                with quickly(2.0), pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.Who(b"", timeout=0.5)
                assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
                forever = asyncio.ensure_future(stub.Who(b""))
                await asyncio.sleep(0.2)
                await m.deregister()
                with quickly(2.0), pytest.raises(grpc.aio.AioRpcError) as err:
                    await forever
                assert err.value.code() is grpc.StatusCode.UNAVAILABLE
                assert "left the cluster" in (err.value.details() or "")
    finally:
        hole.close()


async def test_streaming_calls_are_routed(nodes: list[Node]) -> None:
    async with MemoryCluster() as cluster:
        await register_all(cluster, nodes)
        async with RoutedChannel(cluster) as channel:
            stub = EchoStub(channel)
            key = KEYS[3]
            owner = channel.owner(key).id  # type: ignore[union-attr]
            with route_key(key):
                got = [r async for r in stub.Count(b"", timeout=BOUND)]
                assert got == [f"{owner}{i}".encode() for i in range(3)]
                call = stub.Count(b"", timeout=BOUND)
                assert await call.read() == f"{owner}0".encode()
                assert await call.read() == f"{owner}1".encode()
                assert await call.read() == f"{owner}2".encode()
                assert await call.read() is grpc.aio.EOF
                assert await call.code() is grpc.StatusCode.OK

                async def parts() -> AsyncIterator[bytes]:
                    yield b"a"
                    yield b"b"

                assert await stub.Upload(parts(), timeout=BOUND) == f"{owner}:ab".encode()
                chat = stub.Chat(parts(), timeout=BOUND)
                assert [r async for r in chat] == [f"{owner}:a".encode(), f"{owner}:b".encode()]
            # server streaming moves on before its first response
            await next(n for n in nodes if n.name == owner).stop()
            with route_key(key):
                got = [r async for r in stub.Count(b"", timeout=BOUND)]
            assert got[0].startswith(channel.view.ring.nodes(key, 2)[1].encode())


async def test_streaming_calls_on_a_channel_with_a_key_function(nodes: list[Node]) -> None:
    # The key function takes a request; a call whose requests are a stream has none when it
    # starts: route_key routes it, else a random node (the function was called with None).
    async def parts() -> AsyncIterator[bytes]:
        yield b"a"
        yield b"b"

    async with MemoryCluster() as cluster:
        await register_all(cluster, nodes)
        async with RoutedChannel(cluster, key=lambda request: request.decode()) as channel:
            stub = EchoStub(channel)
            assert owner_name(await stub.Who(b"k", timeout=BOUND)) == channel.owner("k").id  # type: ignore[union-attr]
            names = {n.name for n in nodes}
            assert owner_name(await stub.Upload(parts(), timeout=BOUND)) in names
            chat = [r async for r in stub.Chat(parts(), timeout=BOUND)]
            assert len(chat) == 2
            assert owner_name(chat[0]) in names
            with route_key(KEYS[5]):
                owner = channel.owner(KEYS[5]).id  # type: ignore[union-attr]
                assert owner_name(await stub.Upload(parts(), timeout=BOUND)) == owner
                assert [r async for r in stub.Chat(parts(), timeout=BOUND)] == [
                    f"{owner}:a".encode(),
                    f"{owner}:b".encode(),
                ]


async def test_call_api_cancel_and_metadata(nodes: list[Node]) -> None:
    async with MemoryCluster() as cluster:
        await register_all(cluster, nodes)
        async with RoutedChannel(cluster) as channel:
            stub = EchoStub(channel)
            call = stub.Who(b"m", timeout=BOUND)
            done: list[Any] = []
            call.add_done_callback(done.append)
            assert (call.time_remaining() or 0) > 0
            await call.wait_for_connection()
            assert await call.initial_metadata() is not None
            assert owner_name(await call) == owner_name(await call)  # awaited twice: one answer
            assert call.done()
            assert done == [call]
            assert await call.code() is grpc.StatusCode.OK
            assert await call.details() in ("", None)
            assert await call.trailing_metadata() is not None
            slow = stub.Slow(b"10")
            await asyncio.sleep(0.05)
            assert slow.cancel()
            assert slow.cancelled()
            with pytest.raises(asyncio.CancelledError):
                await slow
            assert await slow.code() is grpc.StatusCode.CANCELLED
            await asyncio.wait_for(channel.channel_ready(), BOUND)
            assert channel.get_state() is grpc.ChannelConnectivity.READY
            assert repr(channel).startswith("<RoutedChannel open 3 nodes")
    assert channel.get_state() is grpc.ChannelConnectivity.SHUTDOWN
    with pytest.raises(grpc.aio.UsageError):
        stub.Who(b"")


def test_bad_arguments() -> None:
    async def make(**kwargs: Any) -> None:
        async with MemoryCluster() as cluster:
            RoutedChannel(cluster, **kwargs)

    for kwargs, error in (
        ({"key": 5}, TypeError),
        ({"attempts": 0}, ValueError),
        ({"attempts": "3"}, TypeError),
        ({"grace": -1}, ValueError),
        ({"channel_factory": 1}, TypeError),
    ):
        with pytest.raises(error):
            asyncio.run(make(**kwargs))
    with pytest.raises(TypeError, match="routing key"), route_key(5):  # type: ignore[arg-type]
        pass


def test_a_channel_refuses_what_is_no_cluster_of_its_face(no_leaked_threads: None) -> None:
    async def aio(cluster: Any) -> None:
        RoutedChannel(cluster)

    for bad in (None, "/services/api", 42):
        with pytest.raises(TypeError, match="RoutedChannel takes an asyncio cluster"):
            asyncio.run(aio(bad))

    async def sync_on_aio() -> None:
        async with MemoryCluster() as cluster:
            # (it used to start, its thread died at once, and it routed on its first view)
            with pytest.raises(TypeError, match="an asyncio cluster: use RoutedChannel"):
                RoutedSyncChannel(cluster)

    asyncio.run(sync_on_aio())
    with pytest.raises(TypeError, match="RoutedSyncChannel takes a blocking cluster"):
        RoutedSyncChannel(None)


def test_an_asyncio_channel_refuses_a_blocking_cluster(
    etcd_sync: Client, etcd_prefix: str, no_leaked_threads: None
) -> None:
    with etcd_sync.cluster(etcd_prefix + "face") as cluster:

        async def make() -> None:
            RoutedChannel(cluster)  # type: ignore[arg-type]

        with pytest.raises(TypeError, match="a blocking one: use RoutedSyncChannel"):
            asyncio.run(make())


# -- on real etcd --------------------------------------------------------------------------------


async def test_routed_channel_on_etcd(
    etcd_server: EtcdServer, etcd_prefix: str, nodes: list[Node]
) -> None:
    root = etcd_prefix + "svc"
    before = set(asyncio.all_tasks())
    async with AsyncClient(etcd_server.endpoint) as servers, servers.cluster(root) as joined:
        members = [joined.membership(n.descriptor(), id=n.name) for n in nodes]
        for m in members:
            await m.register(timeout=BOUND)
        async with AsyncClient(etcd_server.endpoint) as etcd, etcd.cluster(root) as cluster:
            async with RoutedChannel(cluster) as channel:
                stub = EchoStub(channel)
                for key in KEYS[:20]:
                    with route_key(key):
                        reply = await stub.Who(b"", timeout=BOUND)
                    assert owner_name(reply) == channel.owner(key).id  # type: ignore[union-attr]
                # a graceful leave moves its keys at once
                await members[0].deregister(timeout=BOUND)
                deadline = time.monotonic() + BOUND
                while "n0" in channel.view.nodes:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.01)
                for key in KEYS[:20]:
                    with route_key(key):
                        assert owner_name(await stub.Who(b"", timeout=BOUND)) != "n0"
            assert not [
                t for t in asyncio.all_tasks() - before if t.get_name().startswith("etcdkit-routed")
            ]
    await asyncio.sleep(0)
    assert etcdkit_tasks() == []


# -- the blocking channel --------------------------------------------------------------------------


class SyncNode:
    def __init__(self, name: str) -> None:
        self.name = name
        self.server = grpc.server(futures.ThreadPoolExecutor(4))

        def who(request: bytes, context: Any) -> bytes:
            return name.encode() + b":" + request

        def count(request: bytes, context: Any) -> Iterator[bytes]:
            yield name.encode()

        def upload(requests: Iterator[bytes], context: Any) -> bytes:
            return name.encode() + b":" + b"".join(requests)

        def chat(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
            for r in requests:
                yield name.encode() + b":" + r

        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Who": grpc.unary_unary_rpc_method_handler(who),
                "Count": grpc.unary_stream_rpc_method_handler(count),
                "Upload": grpc.stream_unary_rpc_method_handler(upload),
                "Chat": grpc.stream_stream_rpc_method_handler(chat),
            },
        )
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def descriptor(self) -> str:
        return NodeDescriptor(self.name, f"127.0.0.1:{self.port}", 100).encode()

    def stop(self) -> None:
        self.server.stop(None).wait()


@pytest.fixture
def sync_nodes() -> Iterator[list[SyncNode]]:
    made = [SyncNode(f"s{i}") for i in range(3)]
    try:
        yield made
    finally:
        for node in made:
            node.stop()


def test_routed_sync_channel_on_etcd(
    etcd_sync: Client, etcd_prefix: str, sync_nodes: list[SyncNode], no_leaked_threads: None
) -> None:
    root = etcd_prefix + "sync"
    with etcd_sync.cluster(root) as cluster:
        members = [cluster.membership(n.descriptor(), id=n.name) for n in sync_nodes]
        for m in members:
            m.register(timeout=BOUND)
        states: list[grpc.ChannelConnectivity] = []
        with RoutedSyncChannel(cluster) as channel:
            channel.subscribe(states.append)
            assert states == [grpc.ChannelConnectivity.READY]
            stub = EchoStub(channel)
            for key in KEYS[:20]:
                with route_key(key):
                    reply = stub.Who(b"", timeout=BOUND)
                    reply2, call = stub.Who.with_call(b"", timeout=BOUND)
                assert owner_name(reply) == owner_name(reply2) == channel.owner(key).id  # type: ignore[union-attr]
                assert call.code() is grpc.StatusCode.OK
            with route_key(KEYS[0]):
                assert list(stub.Count(b"", timeout=BOUND)) == [
                    channel.owner(KEYS[0]).id.encode()  # type: ignore[union-attr]
                ]
                assert owner_name(stub.Who.future(b"", timeout=BOUND).result()) == (
                    channel.owner(KEYS[0]).id  # type: ignore[union-attr]
                )
            # killed: retried on the next ring node
            victim = channel.owner(KEYS[0]).id  # type: ignore[union-attr]
            next(n for n in sync_nodes if n.name == victim).stop()
            with route_key(KEYS[0]):
                assert (
                    owner_name(stub.Who(b"", timeout=BOUND))
                    == channel.view.ring.nodes(KEYS[0], 2)[1]
                )
            # gone from the view: no longer a node
            next(m for m in members if m.id == victim).deregister(timeout=BOUND)
            deadline = time.monotonic() + BOUND
            while victim in channel.view.nodes:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            for m in members:
                m.deregister(timeout=BOUND)
            deadline = time.monotonic() + BOUND
            while channel.view.nodes:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            with pytest.raises(grpc.RpcError) as err:
                stub.Who(b"", timeout=BOUND)
            assert isinstance(err.value, RoutingError)
            assert err.value.code() is grpc.StatusCode.UNAVAILABLE
            deadline = time.monotonic() + BOUND  # subscribers hear it from the channel's thread
            while states[-1] is not grpc.ChannelConnectivity.TRANSIENT_FAILURE:
                assert time.monotonic() < deadline, states
                time.sleep(0.01)
            assert states == [
                grpc.ChannelConnectivity.READY,
                grpc.ChannelConnectivity.TRANSIENT_FAILURE,
            ]
            assert "RoutedSyncChannel open" in repr(channel)
        with pytest.raises(ValueError, match="closed"):
            stub.Who(b"")


def test_sync_streaming_calls_on_a_channel_with_a_key_function(
    etcd_sync: Client, etcd_prefix: str, sync_nodes: list[SyncNode], no_leaked_threads: None
) -> None:
    # As on the asyncio face: route_key routes a request stream, else a random node.
    with etcd_sync.cluster(etcd_prefix + "keyfn") as cluster:
        for n in sync_nodes:
            cluster.membership(n.descriptor(), id=n.name).register(timeout=BOUND)
        names = {n.name for n in sync_nodes}
        with RoutedSyncChannel(cluster, key=lambda request: request.decode()) as channel:
            stub = EchoStub(channel)
            assert owner_name(stub.Who(b"k", timeout=BOUND)) == channel.owner("k").id  # type: ignore[union-attr]
            assert owner_name(stub.Upload(iter([b"a", b"b"]), timeout=BOUND)) in names
            reply, call = stub.Upload.with_call(iter([b"a"]), timeout=BOUND)
            assert owner_name(reply) in names
            assert call.code() is grpc.StatusCode.OK
            assert owner_name(stub.Upload.future(iter([b"a"]), timeout=BOUND).result()) in names
            chat = list(stub.Chat(iter([b"a", b"b"]), timeout=BOUND))
            assert len(chat) == 2
            with route_key(KEYS[5]):
                owner = channel.owner(KEYS[5]).id  # type: ignore[union-attr]
                assert stub.Upload(iter([b"a", b"b"]), timeout=BOUND) == f"{owner}:ab".encode()
                assert list(stub.Chat(iter([b"a"]), timeout=BOUND)) == [f"{owner}:a".encode()]


@pytest.mark.parametrize("first", ["cluster", "client"])
def test_sync_calls_fail_once_the_cluster_closed(
    etcd_server: EtcdServer,
    etcd_prefix: str,
    sync_nodes: list[SyncNode],
    first: str,
    caplog: pytest.LogCaptureFixture,
    no_leaked_threads: None,
) -> None:
    # An orderly close, in either order, is no ERROR; the nodes that left get no more calls.
    caplog.set_level(logging.INFO, "etcdkit")
    client = Client(etcd_server.endpoint)
    try:
        cluster = client.cluster(etcd_prefix + "ends")
        for n in sync_nodes:
            cluster.membership(n.descriptor(), id=n.name).register(timeout=BOUND)
        with RoutedSyncChannel(cluster, grace=0) as channel:
            stub = EchoStub(channel)
            assert owner_name(stub.Who(b"", timeout=BOUND)) in {n.name for n in sync_nodes}
            (cluster if first == "cluster" else client).close()
            deadline = time.monotonic() + BOUND
            while channel.view.nodes:
                assert time.monotonic() < deadline, "still routing on the closed cluster's nodes"
                time.sleep(0.01)
            with pytest.raises(
                ValueError, match="the cluster of this RoutedSyncChannel was closed"
            ):
                stub.Who(b"", timeout=BOUND)
            with pytest.raises(ValueError, match="close the RoutedSyncChannel"):
                stub.Upload(iter([b"a"]), timeout=BOUND)
    finally:
        client.close()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
