"""etcdkit.cluster on real etcd: the conformance suite (with MemoryCluster alongside), records
written by others (Go's format), slow watchers, faults, close, and the blocking twin."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from _helpers import etcdkit_tasks, quickly
from cluster_conformance import BOUND, CHECKS, Check, next_view, nothing_arrives, view_where
from etcdkit import (
    AsyncClient,
    Client,
    ClosedError,
    EtcdTimeoutError,
    WatchState,
)
from etcdkit.cluster import (
    DEFAULT_OPEN_TIMEOUT,
    Cluster,
    EtcdBackedCluster,
    Member,
    MemoryCluster,
    MemoryStore,
    NodeDescriptor,
    SyncCluster,
    encode_member,
    member_key,
)
from etcdkit.server import EtcdServer


class EtcdFactory:
    """Clusters on one root of the test etcd, each on a client of its own (a "process")."""

    def __init__(self, endpoint: str, root: str, ttl: int = 5) -> None:
        self.endpoint = endpoint
        self._root = root
        self.ttl = ttl
        self.clients: list[AsyncClient] = []
        self.created: list[EtcdBackedCluster] = []
        self.writer: AsyncClient | None = None

    @property
    def root(self) -> str:
        return self._root

    async def __call__(self) -> EtcdBackedCluster:
        client = AsyncClient(self.endpoint)
        await client.connect()
        self.clients.append(client)
        cluster = client.cluster(self._root, ttl=self.ttl)
        self.created.append(cluster)
        return await cluster.open()

    async def _writer(self) -> AsyncClient:
        if self.writer is None:
            self.writer = AsyncClient(self.endpoint)
            await self.writer.connect()
        return self.writer

    async def put_raw(self, key: bytes, value: bytes) -> None:
        await (await self._writer()).put(key, value)

    async def delete_raw(self, key: bytes) -> None:
        await (await self._writer()).delete(key)

    async def close(self) -> None:
        for cluster in self.created:
            await cluster.aclose()
        for client in [*self.clients, *([self.writer] if self.writer else [])]:
            await client.close()


class MemoryFactory:
    def __init__(self, root: str) -> None:
        self.store = MemoryStore(root)
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

    async def close(self) -> None:
        for cluster in self.created:
            await cluster.aclose()


@pytest.fixture(params=["memory", "etcd"])
async def factory(
    request: pytest.FixtureRequest, etcd_server: EtcdServer, etcd_prefix: str
) -> AsyncIterator[EtcdFactory | MemoryFactory]:
    made: EtcdFactory | MemoryFactory
    if request.param == "etcd":
        made = EtcdFactory(etcd_server.endpoint, etcd_prefix + "cluster")
    else:
        made = MemoryFactory(etcd_prefix + "cluster")
    try:
        yield made
    finally:
        await made.close()


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
async def test_conformance(check: Check, factory: EtcdFactory | MemoryFactory) -> None:
    await check(factory)
    await factory.close()
    await asyncio.sleep(0)
    assert etcdkit_tasks() == []


@pytest.fixture
async def cluster(etcd: AsyncClient, etcd_prefix: str) -> AsyncIterator[EtcdBackedCluster]:
    async with etcd.cluster(etcd_prefix + "svc", ttl=5) as opened:
        yield opened


# -- the etcd-backed cluster --------------------------------------------------------------------


async def test_implements_the_cluster_protocol(cluster: EtcdBackedCluster) -> None:
    typed: Cluster = cluster
    assert typed.members == ()
    assert cluster.revision > 0
    assert cluster.state is WatchState.LIVE
    assert repr(cluster).startswith("<EtcdBackedCluster root=")
    m = cluster.membership("d")
    assert repr(m) == f"<EtcdMembership id={m.id!r} unregistered data='d'>"
    big = cluster.membership("y" * 100_000)
    assert len(repr(big)) < 200
    assert repr(big).endswith("data='" + "y" * 60 + "'... (100000 chars)>")


async def test_members_are_go_format_keys_under_a_lease(
    etcd: AsyncClient, cluster: EtcdBackedCluster
) -> None:
    m = cluster.membership("10.0.0.5:8080", id="node-1")
    rev = await m.register(timeout=BOUND)
    assert cluster.members == (Member("node-1", "10.0.0.5:8080"),)
    assert rev == cluster.revision
    kv = await etcd.get(member_key(cluster.root, "node-1"))
    assert kv is not None
    assert kv.value == b'{"id":"node-1","data":"10.0.0.5:8080"}'
    assert kv.lease != 0
    assert 0 < await etcd.time_to_live(kv.lease) <= 5
    await m.deregister(timeout=BOUND)
    assert await etcd.get(member_key(cluster.root, "node-1")) is None


async def test_a_member_written_by_a_raw_client_in_go_format_appears(
    etcd: AsyncClient, cluster: EtcdBackedCluster, caplog: pytest.LogCaptureFixture
) -> None:
    desc = NodeDescriptor("go-node", "10.1.2.3:9000", weight=100)
    grant = await etcd.grant(5)
    await etcd.put(
        member_key(cluster.root, "go-node"),
        encode_member(Member("go-node", desc.encode())),
        lease=grant.id,
    )
    view = await view_where(cluster, lambda v: len(v) == 1)
    assert view == (Member("go-node", desc.encode()),)
    assert NodeDescriptor.from_member(view[0]) == desc
    # Exactly the bytes a Go process writes (encoding/json with HTML escaping).
    await etcd.put(
        member_key(cluster.root, "go-2"), b'{"id":"go-2","data":"a\\u003cb\\u0026c\\u003e"}'
    )
    view = await view_where(cluster, lambda v: len(v) == 2)
    assert view[0] == Member("go-2", "a<b&c>")
    # Invalid records: left out, counted, warned about once per record.
    with caplog.at_level(logging.WARNING, logger="etcdkit.watch"):
        await etcd.put(member_key(cluster.root, "bad"), b"not json")
        await etcd.put(member_key(cluster.root, "go-3"), b'{"id":"go-3","data":""}')
        await view_where(cluster, lambda v: len(v) == 3)
    assert [m.id for m in cluster.members] == ["go-2", "go-3", "go-node"]
    assert cluster.invalid_records == 1
    assert sum("bad" in r.getMessage() for r in caplog.records) == 1
    # A revoked lease takes the Go member away.
    await etcd.revoke(grant.id)
    await view_where(cluster, lambda v: len(v) == 2)


async def test_slow_and_absent_readers_block_nobody(
    etcd: AsyncClient, cluster: EtcdBackedCluster
) -> None:
    never_read = [cluster.watch_members() for _ in range(3)]  # absent readers
    slow = cluster.watch_members()
    assert await next_view(slow) == ()
    fast = cluster.watch_members()
    assert await next_view(fast) == ()
    m = cluster.membership("0")
    with quickly():
        await m.register(timeout=BOUND)
        for i in range(1, 50):
            m.set_data(str(i))  # never blocks
            if i % 10 == 0:
                await m.synced(timeout=BOUND)
                assert await next_view(fast) == (Member(m.id, str(i)),)
        await m.synced(timeout=BOUND)
    # The slow reader gets the newest view next, nothing in between, then follows.
    assert await next_view(slow) == (Member(m.id, "49"),)
    await nothing_arrives(slow)
    other = cluster.membership("x")
    await other.register(timeout=BOUND)
    assert len(await next_view(slow) or ()) == 2
    for w in [*never_read, slow, fast]:
        await w.aclose()


async def test_set_data_never_blocks_while_etcd_is_down(
    etcd_server_factory: Any, etcd_prefix: str
) -> None:
    server = etcd_server_factory()
    async with AsyncClient(server.endpoint, timeout=1.0) as client:
        async with client.cluster(etcd_prefix + "down", ttl=5) as cluster:
            m = cluster.membership("a")
            await m.register(timeout=BOUND)
            server.stop()
            try:
                t0 = time.monotonic()
                for i in range(100):
                    m.set_data(f"v{i}")
                assert time.monotonic() - t0 < 0.1
                with pytest.raises(EtcdTimeoutError):
                    await m.synced(timeout=0.5)
                assert cluster.members == (Member(m.id, "a"),)  # the last view known
            finally:
                server.start()
            assert await m.synced(timeout=15) > 0
            assert cluster.members == (Member(m.id, "v99"),)
            assert cluster.state is WatchState.LIVE or cluster.state is WatchState.STALE


async def test_close_is_bounded_while_etcd_is_down(
    etcd_server_factory: Any, etcd_prefix: str
) -> None:
    server = etcd_server_factory()
    async with AsyncClient(server.endpoint, timeout=1.0) as client:
        cluster = await client.cluster(etcd_prefix + "down", ttl=5).open()
        ms = [cluster.membership(str(i)) for i in range(3)]
        for m in ms:
            await m.register(timeout=BOUND)
        server.kill()
        with pytest.raises(EtcdTimeoutError):
            await ms[0].deregister(timeout=0.5)  # removal needs etcd; the view cannot show it
        assert not ms[0].registered
        with quickly(4.0):
            await cluster.aclose()
        assert cluster.state is WatchState.CLOSED
        await asyncio.sleep(0)
        left = [t for t in etcdkit_tasks() if t.startswith(("etcdkit-cluster", "etcdkit-lease b"))]
        assert left == []


async def test_open_with_etcd_unreachable_raises_a_timeout_error(etcd_prefix: str) -> None:
    assert DEFAULT_OPEN_TIMEOUT is not None
    async with AsyncClient("127.0.0.1:1", timeout=0.5) as client:
        cluster = client.cluster(etcd_prefix + "x", ttl=5, timeout=1.0)
        with quickly(4.0), pytest.raises(EtcdTimeoutError, match="no view of its members"):
            async with cluster:
                pass
        assert cluster.closed
        with pytest.raises(ClosedError):
            cluster.membership()
    await asyncio.sleep(0)
    assert etcdkit_tasks() == []


async def test_unopened_cluster_refuses_work(etcd: AsyncClient, etcd_prefix: str) -> None:
    cluster = etcd.cluster(etcd_prefix + "x")
    assert cluster.members == ()
    assert cluster.state is WatchState.SYNCING
    with pytest.raises(ClosedError, match="not open"):
        cluster.watch_members()
    with pytest.raises(ClosedError, match="not open"):
        cluster.membership()
    assert await cluster.open() is cluster
    assert await cluster.open() is cluster  # idempotent
    await cluster.aclose()


def test_bad_arguments_are_refused_before_io() -> None:
    client = AsyncClient("127.0.0.1:1")
    with pytest.raises(TypeError, match="root"):
        client.cluster(5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="root"):
        client.cluster("")
    with pytest.raises(TypeError, match="ttl"):
        client.cluster("/x", ttl=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ttl"):
        client.cluster("/x", ttl=0)
    with pytest.raises(ValueError, match="timeout"):
        client.cluster("/x", timeout=-1)


async def test_close_leaks_nothing_and_removes_members_at_once(
    etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    root = etcd_prefix + "svc"
    async with AsyncClient(etcd_server.endpoint) as observer, observer.cluster(root) as view:
        before = set(asyncio.all_tasks())
        async with AsyncClient(etcd_server.endpoint) as client:
            cluster = await client.cluster(root, ttl=30).open()
            ms = [cluster.membership(f"d{i}") for i in range(3)]
            for m in ms:
                await m.register(timeout=BOUND)
            watch = cluster.watch_members()
            assert len(await next_view(watch) or ()) == 3
            waiting = asyncio.create_task(next_view(watch))
            await view_where(view, lambda v: len(v) == 3)
            with quickly(3.0):
                await cluster.aclose()
                # ttl=30: only a revoke can make them leave this fast
                await view_where(view, lambda v: v == ())
            assert await asyncio.wait_for(waiting, BOUND) is None
            assert not any(m.registered for m in ms)
            await asyncio.sleep(0)
            left = {t.get_name() for t in asyncio.all_tasks() - before}
            # (the client's own keepalive stream stays until the client closes)
            ours = ("etcdkit-cluster", "etcdkit-watch-prefix", "etcdkit-lease b", "etcdkit-lease '")
            assert not [name for name in left if name.startswith(ours)]
    await asyncio.sleep(0)
    assert etcdkit_tasks() == []


async def test_client_close_closes_the_cluster(etcd_server: EtcdServer, etcd_prefix: str) -> None:
    client = AsyncClient(etcd_server.endpoint)
    await client.connect()
    cluster = await client.cluster(etcd_prefix + "svc").open()
    m = cluster.membership()
    await m.register(timeout=BOUND)
    watch = cluster.watch_members()
    assert await next_view(watch) == (m.member,)
    await client.close()
    assert cluster.closed
    # (as every watch of a closing client: a loop over it can tell from a cluster's own close)
    with pytest.raises(ClosedError, match="client was closed"):
        await next_view(watch)
    await asyncio.sleep(0)
    assert etcdkit_tasks() == []


async def test_register_deregister_cycles_keep_one_key(
    etcd: AsyncClient, cluster: EtcdBackedCluster
) -> None:
    m = cluster.membership(id="cycle")
    other = cluster.membership(id="stays")
    await other.register(timeout=BOUND)
    for _ in range(5):
        await m.register(timeout=BOUND)
        assert m.member in cluster.members
        await m.deregister(timeout=BOUND)
        assert m.id not in [x.id for x in cluster.members]
    # deregister without waiting, then register at once: the old removal cannot remove the
    # new key (they share the client's lease)
    await m.register(timeout=BOUND)
    m_task = asyncio.create_task(m.deregister())
    await asyncio.sleep(0)
    await m.register(timeout=BOUND)
    with contextlib.suppress(ClosedError):
        await m_task
    await asyncio.sleep(0.3)
    assert await m.synced(timeout=BOUND) > 0
    assert m.member in cluster.members
    res = await etcd.get_prefix(cluster.root + "/")
    assert sorted(kv.key for kv in res.kvs) == sorted(
        [member_key(cluster.root, "cycle"), member_key(cluster.root, "stays")]
    )


async def test_an_id_is_registered_by_one_membership_at_a_time(
    cluster: EtcdBackedCluster,
) -> None:
    a = cluster.membership("1", id="same")
    b = cluster.membership("2", id="same")
    await a.register(timeout=BOUND)
    with pytest.raises(ValueError, match="already registered"):
        await b.register(timeout=BOUND)
    await a.deregister(timeout=BOUND)
    await b.register(timeout=BOUND)
    assert cluster.members == (Member("same", "2"),)


async def test_a_deleted_member_comes_back(etcd: AsyncClient, cluster: EtcdBackedCluster) -> None:
    m = cluster.membership("x")
    await m.register(timeout=BOUND)
    async with cluster.watch_members() as watch:
        assert await next_view(watch) == (m.member,)
        await etcd.delete(member_key(cluster.root, m.id))
        assert await next_view(watch) == ()
        assert await next_view(watch) == (m.member,)


KILLED_MEMBER = """
import asyncio, sys
import etcdkit

async def main() -> None:
    async with etcdkit.AsyncClient(sys.argv[1]) as etcd:
        async with etcd.cluster(sys.argv[2], ttl=2) as cluster:
            await cluster.membership("doomed", id="doomed").register(timeout=10)
            print("registered", flush=True)
            await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_a_killed_process_leaves_the_view_within_its_ttl(
    etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    root = etcd_prefix + "svc"
    async with AsyncClient(etcd_server.endpoint) as observer, observer.cluster(root) as view:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            KILLED_MEMBER,
            etcd_server.endpoint,
            root,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 20)
            assert line == b"registered\n"
            assert view.members == (Member("doomed", ""),) or await view_where(
                view, lambda v: len(v) == 1
            )
            proc.kill()
            t0 = time.monotonic()
            await view_where(view, lambda v: v == ())
            assert time.monotonic() - t0 < 2 + 2  # ttl, plus etcd's expiry granularity
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()


# -- the blocking twin -----------------------------------------------------------------------------


def test_sync_cluster(etcd_sync: Client, etcd_prefix: str, no_leaked_threads: None) -> None:
    root = etcd_prefix + "sync"
    with etcd_sync.cluster(root, ttl=5) as cluster:
        assert isinstance(cluster, SyncCluster)
        assert not cluster.members
        assert cluster.state is WatchState.LIVE
        views: list[tuple[Member, ...]] = []
        watch = cluster.watch_members()
        ready = threading.Event()

        def follow() -> None:
            for members in watch:
                views.append(members)
                ready.set()

        reader = threading.Thread(target=follow)
        reader.start()
        m = cluster.membership("a", id="s1")
        assert m.register(timeout=BOUND) > 0
        assert m.registered
        m.set_data("b")
        m.synced(timeout=BOUND)
        assert cluster.members == (Member("s1", "b"),)
        assert m.member == Member("s1", "b")
        # (the reader thread gets there too: it was not waited for, and on a loaded machine
        # the watch could close while its last view was still the first data)
        deadline = time.monotonic() + BOUND
        while not views or views[-1] != (Member("s1", "b"),):
            assert time.monotonic() < deadline, views
            time.sleep(0.01)
        m.deregister(timeout=BOUND)
        assert not cluster.members
        assert watch.revision > 0
        watch.close()
        reader.join(BOUND)
        assert not reader.is_alive()
        assert views[0] == ()
        assert views[-1] in ((), (Member("s1", "b"),))
        assert "SyncCluster" in repr(cluster)
        big = cluster.membership("z" * 100_000, id="big")
        assert (
            repr(big)
            == "<SyncMembership id='big' unregistered data='" + "z" * 60 + "'... (100000 chars)>"
        )
    with pytest.raises(ClosedError):
        cluster.membership()


def test_sync_cluster_open_times_out_when_etcd_is_unreachable(no_leaked_threads: None) -> None:
    with Client("127.0.0.1:1", timeout=0.5) as client:
        with quickly(4.0), pytest.raises(EtcdTimeoutError):
            client.cluster("/x", timeout=1.0)


def test_sync_watch_ends_when_the_cluster_closes(etcd_sync: Client, etcd_prefix: str) -> None:
    cluster = etcd_sync.cluster(etcd_prefix + "s")
    watch = cluster.watch_members()
    assert next(watch) == ()
    got: list[Any] = []
    t = threading.Thread(target=lambda: got.extend(watch))
    t.start()
    time.sleep(0.1)
    cluster.close()
    t.join(BOUND)
    assert not t.is_alive()
    assert got == []


def test_sync_watch_raises_closed_error_when_the_client_closes(etcd_server: EtcdServer) -> None:
    """README: ``close()`` ends watch iterations with ClosedError on both faces; a member
    watch's loop just fell through, as if its cluster had been closed on purpose."""
    client = Client(etcd_server.endpoint)
    watch = client.cluster("/sync-client-close/s").watch_members()
    assert next(watch) == ()
    ended: list[BaseException] = []

    def follow() -> None:
        try:
            for _ in watch:
                pass
        except ClosedError as exc:
            ended.append(exc)

    t = threading.Thread(target=follow)
    t.start()
    time.sleep(0.1)
    client.close()
    t.join(BOUND)
    assert not t.is_alive()
    assert len(ended) == 1


# -- the README's example --------------------------------------------------------------------------


def test_the_readme_example_runs(etcd_server: EtcdServer, etcd_prefix: str) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("### cluster:") :]
    start = section.index("```python\n") + len("```python\n")
    code = section[start : section.index("```\n", start)]
    code = code.replace("127.0.0.1:2379", etcd_server.endpoint)
    code = code.replace('"/services/api"', repr(etcd_prefix + "api"))
    env = dict(os.environ)
    env.pop("PYTHONASYNCIODEBUG", None)
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "(Member(id='node-a'" in res.stdout
    assert "NodeDescriptor(id='node-a', address='10.0.0.5:8080', weight=100)" in res.stdout
