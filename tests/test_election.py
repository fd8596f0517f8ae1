"""Election against real etcd: campaign, leader, proclaim, observe, faults, and Go's layout
(``etcdctl elect`` sees our leader and we see its, when etcdctl is on PATH)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable

import pytest

import etcdkit
from etcdkit import AsyncClient, Client, HoldState, Leader, NotHeldError, Op
from etcdkit.server import EtcdServer, Proxy

WAIT = 20.0


async def line(client: AsyncClient, prefix: str) -> list[bytes]:
    kvs = sorted((await client.get_prefix(prefix)).kvs, key=lambda kv: kv.create_revision)
    return [kv.key for kv in kvs]


async def line_is(client: AsyncClient, prefix: str, n: int) -> None:
    async with asyncio.timeout(WAIT):
        while len(await line(client, prefix)) != n:
            await asyncio.sleep(0.01)


class Seen:
    """Collects what ``observe()`` yields, in a task of its own."""

    def __init__(self, election: etcdkit.Election) -> None:
        self.leaders: list[Leader] = []
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._run(election))

    async def _run(self, election: etcdkit.Election) -> None:
        async for leader in election.observe():
            self.leaders.append(leader)
            self._changed.set()

    async def value(self, value: bytes) -> Leader:
        async with asyncio.timeout(WAIT):
            while True:
                if self.leaders and self.leaders[-1].value == value:
                    return self.leaders[-1]
                self._changed.clear()
                await self._changed.wait()

    async def stop(self) -> None:
        self._task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self._task


async def test_campaign_leader_proclaim_resign(
    etcd: AsyncClient, etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    name = etcd_prefix + "scheduler"
    election = etcd.election(name)
    assert await election.leader() is None
    seen = Seen(election)
    async with AsyncClient(etcd_server.endpoint) as other:
        async with election.campaign("node-a", ttl=5) as a:
            assert a.state is HoldState.HELD
            assert a.key == f"{name}/{a.lease_id:x}".encode()  # Go's key
            assert await election.leader() == Leader(a.key, b"node-a", a.revision)
            assert (await seen.value(b"node-a")).revision == a.revision
            b_entered = asyncio.Event()

            async def candidate_b() -> int:
                async with other.election(name).campaign("node-b", ttl=5) as b:
                    b_entered.set()
                    assert await other.election(name).leader() == Leader(
                        b.key, b"node-b", b.revision
                    )
                    await seen.value(b"node-b")
                    return b.revision

            task = asyncio.create_task(candidate_b())
            await line_is(etcd, name + "/", 2)
            await a.proclaim("node-a v2")
            assert a.value == b"node-a v2"
            assert (await seen.value(b"node-a v2")).key == a.key
            assert not b_entered.is_set()
            assert (await etcd.txn([a.guard()], [Op.put(name + "-data", "a")])).succeeded
        after: HoldState = a.state  # (read again: it changed on leaving the block)
        assert after is HoldState.RELEASED
        assert a.lost.is_set()
        b_revision = await asyncio.wait_for(task, WAIT)
        assert b_revision > a.revision
        with pytest.raises(NotHeldError):
            await a.proclaim("too late")
        assert not (await etcd.txn([a.guard()], [Op.put(name + "-data", "stale")])).succeeded
    await seen.stop()
    assert [x.value for x in seen.leaders] == [b"node-a", b"node-a v2", b"node-b"]
    assert await election.leader() is None


async def test_observe_latest_wins_and_waits_for_a_leader(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    election = etcd.election(etcd_prefix + "e")
    leaders = election.observe()
    first = asyncio.create_task(anext(leaders))
    await asyncio.sleep(0.2)
    assert not first.done()  # no leader: nothing yet (as Go's Observe)
    async with election.campaign("v0") as lead:
        assert (await asyncio.wait_for(first, WAIT)).value == b"v0"
        for i in range(1, 20):
            await lead.proclaim(f"v{i}")
        await asyncio.sleep(0.2)
        newest = await asyncio.wait_for(anext(leaders), WAIT)  # a slow consumer skips ahead
        assert newest == Leader(lead.key, b"v19", lead.revision)
    await leaders.aclose()


async def test_observe_yields_a_leader_that_led_briefly(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    """The next leader is read where the last one went: a candidate that leads and goes
    before the consumer asks again is still yielded (read at the latest, it would be skipped)."""
    name = etcd_prefix + "brief"
    election = etcd.election(name)
    leaders = election.observe()
    try:
        async with election.campaign("a"):
            assert (await asyncio.wait_for(anext(leaders), WAIT)).value == b"a"
            brief = await etcd.put(f"{name}/brief", "b")
            later = f"{name}/later"
            await etcd.put(later, "c")
        await etcd.delete(f"{name}/brief")  # "b" led from a's resignation until now
        got = await asyncio.wait_for(anext(leaders), WAIT)
        assert (got.key, got.value, got.revision) == (f"{name}/brief".encode(), b"b", brief)
        assert (await asyncio.wait_for(anext(leaders), WAIT)).value == b"c"
        await etcd.delete(later)
    finally:
        await leaders.aclose()


async def test_observe_keeps_up_with_leaders_that_come_and_go_quickly(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    """30 candidates queue at once; each proclaims a second value and resigns as soon as it
    leads. The observer yields every leader's last value, once, and the last one as it
    happens. It read each next leader where the last one went and watched its key from
    there, a revision etcd already had: etcd catches such a watch up every 100 ms, so it
    fell ~0.1 s behind per leader (2.6 s after 30; Go's Observe stays current)."""
    name = etcd_prefix + "churn"
    election = etcd.election(name)
    seen: list[tuple[float, bytes]] = []

    async def observe() -> None:
        async for leader in election.observe():
            seen.append((time.monotonic(), leader.value))

    watcher = asyncio.create_task(observe())
    try:
        await asyncio.sleep(0.2)

        async def candidate(i: int) -> None:
            async with election.campaign(f"p{i}") as lead:
                await lead.proclaim(f"p{i} again")

        await asyncio.gather(*(candidate(i) for i in range(30)))
        ended = time.monotonic()
        await until_true(lambda: len({v for _, v in seen if v.endswith(b"again")}) == 30)
        finals = [v for _, v in seen if v.endswith(b"again")]
        assert len(finals) == 30  # each leader, once, with its last value
        last_at, last = seen[-1]
        assert last.endswith(b"again")
        assert last_at - ended < 1.0, f"the last leader came {last_at - ended:.2f} s late"
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


async def test_observe_goes_on_through_a_compaction_it_missed_and_a_restart(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    """The observer's connection drops; meanwhile the leader changes twice and etcd compacts
    that history: once back, its watch meets the compaction, and it reads the candidates
    again (the newest leader next; the one that came and went in the compacted history is
    not yielded, as documented). Then etcd restarts, and the next leader comes next."""
    server = etcd_server_factory()
    name = "/observed"
    with Proxy(server) as proxy:
        async with (
            AsyncClient(proxy.endpoint, timeout=2) as watcher,
            AsyncClient(server.endpoint) as admin,
        ):
            leaders = watcher.election(name).observe()
            try:
                await admin.put(f"{name}/a", "a")
                assert (await asyncio.wait_for(anext(leaders), WAIT)).value == b"a"
                nxt = asyncio.create_task(anext(leaders))
                proxy.cut()
                proxy.drop_connections()
                await admin.delete(f"{name}/a")
                await admin.put(f"{name}/b", "b1")
                await admin.put(f"{name}/b", "b2")
                await admin.compact(await admin.put("/elsewhere", "x"))
                await asyncio.sleep(0.5)
                assert not nxt.done()
                proxy.restore()
                got = await asyncio.wait_for(nxt, WAIT)
                assert (got.key, got.value) == (f"{name}/b".encode(), b"b2")
                nxt = asyncio.create_task(anext(leaders))
                server.kill()
                server.restart()
                await admin.delete(f"{name}/b")
                await admin.put(f"{name}/c", "c")
                assert (await asyncio.wait_for(nxt, WAIT)).value == b"c"
            finally:
                await leaders.aclose()


async def until_true(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        assert time.monotonic() < deadline, "not within WAIT"
        await asyncio.sleep(0.01)


async def test_revoke_sets_lost_and_the_next_leads(
    etcd: AsyncClient, etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    name = etcd_prefix + "f"
    async with AsyncClient(etcd_server.endpoint) as other:
        async with etcd.election(name).campaign("a", ttl=10) as a:
            nxt = asyncio.create_task(_lead_once(other, name))
            await line_is(etcd, name + "/", 2)
            t0 = time.monotonic()
            await etcd.revoke(a.lease_id)
            await asyncio.wait_for(a.lost.wait(), 2.0)
            assert time.monotonic() - t0 < 1.0
            assert a.state is HoldState.LOST
            with pytest.raises(NotHeldError):
                await a.proclaim("still me?")
            assert await asyncio.wait_for(nxt, WAIT) > a.revision
        assert a.state is HoldState.LOST


async def _lead_once(client: AsyncClient, name: str) -> int:
    async with client.election(name).campaign("b") as b:
        return b.revision


async def test_cancel_and_timeout_leave_no_key(etcd: AsyncClient, etcd_prefix: str) -> None:
    name = etcd_prefix + "c"
    election = etcd.election(name)
    async with election.campaign("a") as a:
        task = asyncio.create_task(_lead_once(etcd, name))
        await line_is(etcd, name + "/", 2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await line(etcd, name + "/") == [a.key]
        with pytest.raises(etcdkit.EtcdTimeoutError, match="waiting behind"):
            async with election.campaign("b", timeout=0.3):
                pass
        assert await line(etcd, name + "/") == [a.key]


async def test_bad_input(etcd: AsyncClient, etcd_prefix: str) -> None:
    with pytest.raises(ValueError, match="empty"):
        etcd.election("")
    with pytest.raises(TypeError):
        etcd.election(None)  # type: ignore[arg-type]
    election = etcd.election(etcd_prefix + "x")
    with pytest.raises(ValueError, match="ttl"):
        election.campaign("v", ttl=0)
    with pytest.raises(TypeError, match="value"):
        election.campaign(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        election.campaign("v", timeout=-1)
    assert election.prefix == f"{etcd_prefix}x/".encode()
    # "/a" and "/ab": two elections, two leaders
    async with (
        etcd.election(etcd_prefix + "a").campaign("1") as a,
        etcd.election(etcd_prefix + "ab").campaign("2") as ab,
    ):
        assert a.state is ab.state is HoldState.HELD
        assert (await etcd.election(etcd_prefix + "a").leader()) == Leader(a.key, b"1", a.revision)
    campaign = election.campaign("v")
    async with campaign:
        with pytest.raises(RuntimeError, match="entered already"):
            await campaign.__aenter__()


def test_threaded_face(etcd_server: EtcdServer, etcd_sync: Client, etcd_prefix: str) -> None:
    name = etcd_prefix + "sync"
    election = etcd_sync.election(name)
    assert election.leader() is None
    seen: list[Leader] = []
    observer = election.observe()

    def follow() -> None:
        for leader in observer:
            seen.append(leader)
            if leader.value == b"b":
                return

    t = threading.Thread(target=follow)
    t.start()
    with Client(etcd_server.endpoint) as other:
        with election.campaign("a", ttl=5) as a:
            assert isinstance(a.lost, threading.Event)
            assert not a.lost.is_set()
            assert election.leader() == Leader(a.key, b"a", a.revision)
            a.proclaim("b")
            assert a.value == b"b"
            assert a.state is HoldState.HELD
            assert etcd_sync.txn([a.guard()], [Op.put(name + "-d", "x")]).succeeded
            assert other.election(name).leader() == Leader(a.key, b"b", a.revision)
        assert a.lost.is_set()
        t.join(WAIT)
        assert not t.is_alive()
        observer.close()
        assert seen[-1].value == b"b"
        assert "SyncLeadership" in repr(a)
        with pytest.raises(NotHeldError):
            a.proclaim("c")


def _until(cond: Callable[[], bool], bound: float = WAIT) -> None:
    deadline = time.monotonic() + bound
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.mark.parametrize("led", [False, True])
def test_threaded_observe_is_closed_from_another_thread(
    etcd_sync: Client, etcd_prefix: str, led: bool
) -> None:
    """A thread iterates observe() and waits for the next leader (none yet, or the one it got
    stays); close() from another thread ends its loop (StopIteration, as closing a watch
    does) and the watch; the iterator stays closed."""
    election = etcd_sync.election(etcd_prefix + "e")
    with contextlib.ExitStack() as stack:
        if led:
            stack.enter_context(election.campaign("a"))
        watches = etcd_sync.stats.watches  # (the leadership's own included)
        observer = election.observe()
        seen: list[Leader] = []
        ended: list[BaseException | None] = []

        def follow() -> None:
            try:
                for leader in observer:
                    seen.append(leader)
                ended.append(None)
            except BaseException as exc:
                ended.append(exc)

        t = threading.Thread(target=follow)
        t.start()
        _until(lambda: etcd_sync.stats.watches > watches and len(seen) == int(led))
        time.sleep(0.1)  # (the thread waits in next() now)
        if not led:  # (the watch shows its next() is under way)
            with pytest.raises(RuntimeError, match="one thread at a time"):
                next(observer)
        observer.close()
        t.join(WAIT)
        assert not t.is_alive()
        assert ended == [None]
        assert [leader.value for leader in seen] == [b"a"] * int(led)
        _until(lambda: etcd_sync.stats.watches == watches)
        with pytest.raises(StopIteration):
            next(observer)
        observer.close()  # again: nothing


# -- interop with etcdctl elect (Go's concurrency.Election) ---------------------------------------

ETCDCTL = shutil.which("etcdctl")
needs_etcdctl = pytest.mark.skipif(ETCDCTL is None, reason="etcdctl is not on PATH")


def etcdctl(server: EtcdServer, *args: str) -> subprocess.Popen[str]:
    assert ETCDCTL is not None
    return subprocess.Popen(
        [ETCDCTL, "--endpoints", server.endpoint, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=dict(os.environ, ETCDCTL_API="3"),
    )


def read_until(proc: subprocess.Popen[str], needle: str) -> list[str]:
    assert proc.stdout is not None
    lines: list[str] = []
    for raw in proc.stdout:
        lines.append(raw.rstrip("\n"))
        if needle in raw:
            return lines
    raise AssertionError(f"etcdctl ended before printing {needle!r}: {lines}")


@needs_etcdctl
async def test_etcdctl_elect_listen_sees_our_leader(
    etcd: AsyncClient, etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    name = etcd_prefix + "go"
    proc = etcdctl(etcd_server, "elect", "-l", name)
    try:
        async with etcd.election(name).campaign("ours-1") as lead:
            lines = await asyncio.wait_for(asyncio.to_thread(read_until, proc, "ours-1"), WAIT)
            assert lead.key.decode() in lines  # etcdctl prints the leader's key, then its value
            await lead.proclaim("ours-2")
            await asyncio.wait_for(asyncio.to_thread(read_until, proc, "ours-2"), WAIT)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            await asyncio.to_thread(proc.communicate, timeout=WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.communicate)


@needs_etcdctl
async def test_we_see_etcdctl_as_leader_and_follow_it(
    etcd: AsyncClient, etcd_prefix: str, etcd_server: EtcdServer
) -> None:
    name = etcd_prefix + "go2"
    election = etcd.election(name)
    seen = Seen(election)
    proc = etcdctl(etcd_server, "elect", name, "go-leader")
    try:
        got = await seen.value(b"go-leader")
        assert await election.leader() == got
        waiter = asyncio.create_task(_lead_once(etcd, name))  # we queue behind Go's candidate
        await line_is(etcd, name + "/", 2)
        await asyncio.sleep(0.3)
        assert not waiter.done()
        proc.send_signal(signal.SIGINT)  # etcdctl resigns on SIGINT
        assert await asyncio.wait_for(waiter, WAIT) > got.revision
        await seen.value(b"b")
    finally:
        if proc.poll() is None:
            proc.kill()
        await asyncio.to_thread(proc.communicate, timeout=WAIT)
        await seen.stop()
