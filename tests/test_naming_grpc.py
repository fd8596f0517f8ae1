"""etcdkit.naming.grpc: channels over the endpoints of a target, on real etcd, with in-process
gRPC servers (generic handlers, no protoc) and, to kill one for real, server processes."""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import grpc.aio
import pytest

from _helpers import etcdkit_tasks
from etcdkit import AsyncClient, Client, ClosedError
from etcdkit.naming.grpc import EndpointChannel, EndpointSyncChannel, channel, sync_channel
from etcdkit.server import EtcdServer
from test_cluster_grpc import EchoStub, Node, SyncNode, owner_name

WAIT = 20.0
SERVER = Path(__file__).with_name("_naming_server.py")


@pytest.fixture
async def nodes() -> AsyncIterator[list[Node]]:
    made = [await Node(f"n{i}").start() for i in range(3)]
    try:
        yield made
    finally:
        for node in made:
            await node.stop()


async def until(check: object, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


def channel_tasks() -> list[str]:
    """The tasks of endpoint channels and their watches (the client's own streams excluded)."""
    return [
        n
        for n in etcdkit_tasks()
        if n.startswith(("etcdkit-endpoints", "etcdkit-routed", "etcdkit-watch-prefix"))
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the asyncio channel --


async def test_round_robin_spreads_calls_evenly(
    etcd: AsyncClient, etcd_prefix: str, nodes: list[Node]
) -> None:
    target = etcd_prefix + "svc"
    eps = etcd.endpoint_manager(target)
    for n in nodes:
        await eps.add(f"{target}/{n.name}", n.address, n.name)
    async with channel(etcd, target) as ch:
        assert isinstance(ch, EndpointChannel)
        assert isinstance(ch, grpc.aio.Channel)
        await until(lambda: len(ch.view.nodes) == 3, "three addresses")
        assert sorted(ch.endpoints) == [f"{target}/n0", f"{target}/n1", f"{target}/n2"]
        stub = EchoStub(ch)
        seen = collections.Counter(
            [owner_name(await stub.Who(b"x", timeout=WAIT)) for _ in range(30)]
        )
        assert seen == {"n0": 10, "n1": 10, "n2": 10}
        assert f"target={target!r} policy=round_robin addresses=3" in repr(ch)
    assert ch.get_state() is grpc.ChannelConnectivity.SHUTDOWN
    await asyncio.sleep(0)
    assert channel_tasks() == []


async def test_pick_first_sticks_to_one_address_until_it_fails(
    etcd: AsyncClient, etcd_prefix: str, nodes: list[Node]
) -> None:
    target = etcd_prefix + "svc"
    eps = etcd.endpoint_manager(target)
    for n in nodes:
        await eps.add(f"{target}/{n.name}", n.address)
    async with channel(etcd, target, policy="pick_first") as ch:
        await until(lambda: len(ch.view.nodes) == 3, "three addresses")
        stub = EchoStub(ch)
        first = {owner_name(await stub.Who(b"", timeout=WAIT)) for _ in range(10)}
        assert len(first) == 1
        victim = next(n for n in nodes if n.name in first)
        await victim.stop()  # still in etcd: the call fails over, and the next one stays
        second = {owner_name(await stub.Who(b"", timeout=WAIT)) for _ in range(10)}
        assert len(second) == 1
        assert second != first


async def test_unavailable_addresses_are_retried_within_the_deadline(
    etcd: AsyncClient, etcd_prefix: str, nodes: list[Node]
) -> None:
    target = etcd_prefix + "svc"
    eps = etcd.endpoint_manager(target)
    await eps.add(f"{target}/dead", f"127.0.0.1:{free_port()}")  # nothing listens
    await eps.add(f"{target}/live", nodes[0].address)
    async with channel(etcd, target) as ch:
        await until(lambda: len(ch.view.nodes) == 2, "two addresses")
        stub = EchoStub(ch)
        for _ in range(10):  # half of them meet the dead address first
            assert owner_name(await stub.Who(b"", timeout=WAIT)) == "n0"
        # a streaming request is not retried: it fails on the dead address, or goes through
        codes = set()
        for _ in range(4):
            try:
                await stub.Upload(iter([b"a"]), timeout=WAIT)
                codes.add(grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as exc:
                codes.add(exc.code())
        assert grpc.StatusCode.UNAVAILABLE in codes


async def test_no_endpoint_fails_at_once_and_the_first_view_is_awaited(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    target = etcd_prefix + "none"
    async with channel(etcd, target, timeout=WAIT) as ch:
        assert await ch.synced(0) > 0  # the (empty) view is loaded
        t0 = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await EchoStub(ch).Who(b"", timeout=WAIT)
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - t0 < WAIT / 2
    with pytest.raises(ClosedError):  # as its docstring says, once the view was loaded too
        await ch.synced(0)


async def test_calls_made_before_the_first_view_wait_for_it(
    etcd: AsyncClient, etcd_prefix: str, nodes: list[Node]
) -> None:
    """As grpc's calls wait for a new channel's first name resolution: a call made on a
    channel just created (no ``async with``, no ``synced()``) goes to the endpoints of the
    first view, unary and server-streaming alike."""
    target = etcd_prefix + "svc"
    await etcd.endpoint_manager(target).add(f"{target}/n0", nodes[0].address)
    ch = channel(etcd, target)
    try:
        stub = EchoStub(ch)
        who, count = stub.Who(b"", timeout=WAIT), stub.Count(b"", timeout=WAIT)
        assert not who.done()
        assert owner_name(await who) == "n0"
        assert [r async for r in count] == [b"n00", b"n01", b"n02"]
    finally:
        await ch.close()
    empty = etcd_prefix + "none"  # a first view without endpoints: UNAVAILABLE once it came
    ch = channel(etcd, empty, timeout=WAIT)
    try:
        t0 = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await EchoStub(ch).Who(b"", timeout=WAIT)
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - t0 < WAIT / 2
        assert ch.view.revision > 0
    finally:
        await ch.close()


async def test_a_first_view_that_does_not_come_is_waited_for_boundedly(
    etcd_prefix: str,
) -> None:
    """No view at all (etcd out of reach): a call made meanwhile waits at most the channel's
    *timeout* (then UNAVAILABLE, and so do later calls at once, as grpc's fail on a channel
    whose name resolution failed) or its own deadline (DEADLINE_EXCEEDED), whichever is
    first; a cancelled one ends at once."""
    async with AsyncClient(f"http://127.0.0.1:{free_port()}", timeout=WAIT) as nowhere:
        ch = channel(nowhere, etcd_prefix + "svc", timeout=0.5)
        try:
            stub = EchoStub(ch)
            t0 = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Who(b"", timeout=WAIT)
            assert err.value.code() is grpc.StatusCode.UNAVAILABLE
            assert 0.4 < time.monotonic() - t0 < WAIT / 2
            t0 = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Who(b"")  # no deadline: the channel gave up on the view already
            assert err.value.code() is grpc.StatusCode.UNAVAILABLE
            assert time.monotonic() - t0 < 0.4
        finally:
            await ch.close()
        ch = channel(nowhere, etcd_prefix + "svc", timeout=WAIT)
        try:
            stub = EchoStub(ch)
            t0 = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Who(b"", timeout=0.2)
            assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            assert time.monotonic() - t0 < 0.45
            call = stub.Who(b"", timeout=WAIT)
            assert call.cancel()
            t0 = time.monotonic()
            with pytest.raises(asyncio.CancelledError):
                await call
            assert time.monotonic() - t0 < 0.4
            assert call.cancelled()
        finally:
            await ch.close()


async def test_a_call_waiting_for_the_first_view_is_a_grpc_call(
    etcd: AsyncClient, etcd_prefix: str, nodes: list[Node]
) -> None:
    """A call made before the first view behaves as a grpc.aio call: it goes out without
    being awaited (a done callback alone sees it through), its metadata and connection can
    be awaited, a cancel ends it at once (CANCELLED, the server never called), and closing
    the channel ends the calls that wait."""
    target = etcd_prefix + "svc"
    await etcd.endpoint_manager(target).add(f"{target}/n0", nodes[0].address)
    ch = channel(etcd, target)
    try:
        stub = EchoStub(ch)
        finished = asyncio.Event()
        call = stub.Who(b"cb", timeout=WAIT)
        call.add_done_callback(lambda _: finished.set())
        cancelled = stub.Who(b"no", timeout=WAIT)
        seen: list[object] = []
        cancelled.add_done_callback(seen.append)
        assert cancelled.cancel()
        assert not cancelled.cancel()  # (once)
        assert cancelled.done()
        assert cancelled.cancelled()
        assert seen == [cancelled]
        assert await cancelled.code() is grpc.StatusCode.CANCELLED
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        meta = stub.Who(b"meta", timeout=WAIT)
        await meta.wait_for_connection()
        assert isinstance(await meta.initial_metadata(), grpc.aio.Metadata)
        assert await meta == b"n0:meta"
        await asyncio.wait_for(finished.wait(), WAIT)  # never awaited, yet it went out
        assert await call.code() is grpc.StatusCode.OK
        assert await call == b"n0:cb"
        assert nodes[0].calls == 2  # cb and meta: the cancelled call never went out
    finally:
        await ch.close()
    async with AsyncClient(f"http://127.0.0.1:{free_port()}", timeout=WAIT) as nowhere:
        ch = channel(nowhere, etcd_prefix + "svc", timeout=None)  # no view will come
        waiting = EchoStub(ch).Who(b"")  # nor a deadline
        t0 = time.monotonic()
        await ch.close()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(waiting, WAIT)
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - t0 < WAIT / 4


async def test_a_new_server_gets_calls_within_milliseconds(
    etcd: AsyncClient,
    etcd_prefix: str,
    nodes: list[Node],
    record_property: Callable[[str, object], None],
) -> None:
    target = etcd_prefix + "svc"
    eps = etcd.endpoint_manager(target)
    async with eps.register(nodes[0].address, ttl=5) as reg0:
        await reg0.registered(timeout=WAIT)
        async with channel(etcd, target) as ch:
            await until(lambda: len(ch.view.nodes) == 1, "the first address")
            stub = EchoStub(ch)
            got: dict[str, float] = {}
            stop = asyncio.Event()

            async def call_forever() -> None:
                while not stop.is_set():
                    name = owner_name(await stub.Who(b"", timeout=WAIT))
                    got.setdefault(name, time.monotonic())

            caller = asyncio.create_task(call_forever())
            try:
                await until(lambda: "n0" in got, "a first call")
                t0 = time.monotonic()
                async with eps.register(nodes[1].address, ttl=5):
                    await until(lambda: "n1" in got, "a call on the new server", timeout=WAIT)
                    took = got["n1"] - t0
                    # the figure (see the bench for a p50); the bound is generous: loaded CI
                    record_property(
                        "report",
                        f"new server took its first call {took * 1000:.1f} ms after "
                        "register() began",
                    )
                    assert took < 2.0
                    before = len(ch.view.nodes)
                assert before == 2
                await until(lambda: len(ch.view.nodes) == 1, "the address to leave on exit")
            finally:
                stop.set()
                await caller


async def test_addresses_that_cannot_be_dialled_are_left_out(
    etcd: AsyncClient, etcd_prefix: str, nodes: list[Node], caplog: pytest.LogCaptureFixture
) -> None:
    target = etcd_prefix + "svc"
    eps = etcd.endpoint_manager(target)
    await eps.add(f"{target}/unix", "unix:///tmp/x.sock")
    await eps.add(f"{target}/a", nodes[0].address)
    await eps.add(f"{target}/a-again", nodes[0].address)  # one address under two keys
    with caplog.at_level(logging.WARNING, logger="etcdkit.naming"):
        async with channel(etcd, target) as ch:
            await until(lambda: len(ch.endpoints) == 3, "three endpoints")
            assert list(ch.view.nodes) == [nodes[0].address]
            assert owner_name(await EchoStub(ch).Who(b"", timeout=WAIT)) == "n0"
    assert "unix:///tmp/x.sock" in caplog.text
    assert "left out" in caplog.text


async def _task_names() -> list[str]:
    return [t.get_name() for t in asyncio.all_tasks()]


async def test_bad_arguments(etcd: AsyncClient, etcd_sync: Client) -> None:
    with pytest.raises(ValueError, match='"round_robin" or "pick_first"'):
        channel(etcd, "svc", policy="random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="attempts"):
        channel(etcd, "svc", attempts=0)
    with pytest.raises(ValueError, match="timeout"):
        channel(etcd, "svc", timeout=-1)
    with pytest.raises(ValueError, match="target must not be empty"):
        channel(etcd, "")
    with pytest.raises(TypeError, match="sync_channel"):
        channel(etcd_sync, "svc")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="AsyncClient use"):
        sync_channel(etcd, "svc")  # type: ignore[arg-type]
    # refused before the endpoints are followed: no task, no watch left (there were)
    with pytest.raises(TypeError, match="channel_factory must be a function"):
        channel(etcd, "svc", channel_factory=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="channel_factory must be a function"):
        await asyncio.to_thread(sync_channel, etcd_sync, "svc", channel_factory=5)  # type: ignore[arg-type]
    await asyncio.sleep(0)
    assert channel_tasks() == []
    sync_tasks = await asyncio.to_thread(etcd_sync.portal.call, _task_names())
    assert [n for n in sync_tasks if n.startswith(("etcdkit-endpoints", "etcdkit-watch-"))] == []
    async with channel(etcd, "svc") as ch:
        with pytest.raises(TypeError, match="balanced by its policy"):
            ch.owner(b"k")
    await asyncio.sleep(0)
    assert channel_tasks() == []


# -- a server killed for real --


class ServerProcess:
    """tests/_naming_server.py in a process of its own."""

    def __init__(self, proc: asyncio.subprocess.Process, addr: str, ttl: int) -> None:
        self.proc = proc
        self.addr = addr
        self.ttl = ttl

    @classmethod
    async def start(cls, endpoint: str, target: str, name: str, ttl: int) -> ServerProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(SERVER),
            endpoint,
            target,
            name,
            str(ttl),
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONASYNCIODEBUG": ""},
        )
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(60):
                line = (await proc.stdout.readline()).decode().split()
        except BaseException:
            proc.kill()
            await proc.wait()
            raise
        assert line[:1] == ["registered"], line
        return cls(proc, line[1], int(line[2]))

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(10):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


@pytest.mark.slow
async def test_a_killed_server_costs_no_call_and_leaves_the_view_within_ttl(
    etcd_server: EtcdServer,
    etcd: AsyncClient,
    etcd_prefix: str,
    record_property: Callable[[str, object], None],
) -> None:
    target = etcd_prefix + "svc"
    servers = await asyncio.gather(
        *(ServerProcess.start(etcd_server.endpoint, target, f"p{i}", 2) for i in range(3))
    )
    try:
        async with channel(etcd, target) as ch:
            await until(lambda: len(ch.view.nodes) == 3, "three addresses")
            stub = EchoStub(ch)
            seen = collections.Counter(
                [owner_name(await stub.Who(b"", timeout=WAIT)) for _ in range(30)]
            )
            assert seen == {"p0": 10, "p1": 10, "p2": 10}

            deadline = 2.0
            calls: list[tuple[float, str]] = []  # (seconds taken, outcome)
            stop = asyncio.Event()

            async def call_forever() -> None:
                while not stop.is_set():
                    t0 = time.monotonic()
                    try:
                        outcome = owner_name(await stub.Who(b"", timeout=deadline))
                    except grpc.aio.AioRpcError as exc:
                        outcome = exc.code().name
                    calls.append((time.monotonic() - t0, outcome))

            callers = [asyncio.create_task(call_forever()) for _ in range(4)]
            try:
                await asyncio.sleep(0.2)
                victim = servers[0]
                victim.proc.kill()  # SIGKILL: no deregistration, the lease has to expire
                killed_at = time.monotonic()
                await until(lambda: victim.addr not in ch.view.nodes, "the view to drop it")
                dropped = time.monotonic() - killed_at
                await asyncio.sleep(0.3)
            finally:
                stop.set()
                await asyncio.gather(*callers)
            record_property(
                "report",
                f"killed server left the view {dropped:.2f} s after SIGKILL (lease ttl "
                f"{victim.ttl} s); {len(calls)} calls meanwhile, slowest "
                f"{max(t for t, _ in calls) * 1000:.0f} ms",
            )
            failed = [c for c in calls if c[1] not in ("p0", "p1", "p2")]
            assert failed == []  # every call met the dead server at most once, then moved on
            assert max(t for t, _ in calls) < deadline + 0.5
            assert dropped < victim.ttl + 2 + 3  # the goal is ttl + 2 s; margin: a loaded box
            after = {o for _, o in calls[-20:]}
            assert "p0" not in after
    finally:
        await asyncio.gather(*(s.stop() for s in servers))
        for s in servers:
            if s.proc.returncode is None:
                s.proc.kill()


# -- the blocking channel --


def test_sync_channel_on_etcd(etcd_sync: Client, etcd_prefix: str, no_leaked_threads: None) -> None:
    target = etcd_prefix + "sync"
    nodes = [SyncNode(f"s{i}") for i in range(3)]
    try:
        eps = etcd_sync.endpoint_manager(target)
        regs = [eps.register(f"127.0.0.1:{n.port}", n.name, ttl=5) for n in nodes]
        for r in regs:
            r.registered(timeout=WAIT)
        with sync_channel(etcd_sync, target, timeout=WAIT) as ch:
            assert isinstance(ch, EndpointSyncChannel)
            assert isinstance(ch, grpc.Channel)
            assert len(ch.view.nodes) == 3  # loaded before it returned
            stub = EchoStub(ch)
            seen = collections.Counter([owner_name(stub.Who(b"", timeout=WAIT)) for _ in range(30)])
            assert seen == {"s0": 10, "s1": 10, "s2": 10}
            _reply, call = stub.Who.with_call(b"", timeout=WAIT)
            assert call.code() is grpc.StatusCode.OK
            nodes[0].stop()  # unary calls move on
            for _ in range(6):
                assert owner_name(stub.Who(b"", timeout=WAIT)) in ("s1", "s2")
            regs[0].close()
            deadline = time.monotonic() + WAIT
            while len(ch.view.nodes) != 2:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            assert "policy=round_robin addresses=2" in repr(ch)
        for r in regs:
            r.close()
    finally:
        for n in nodes:
            n.stop()
