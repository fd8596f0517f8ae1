"""wait_for against real etcd."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

import etcdkit
from etcdkit import AsyncClient, Client
from etcdkit.server import EtcdServer

WAIT = 20.0


async def test_returns_at_once_when_condition_holds(etcd: AsyncClient, etcd_prefix: str) -> None:
    rev = await etcd.put(etcd_prefix + "k", "v")
    assert await etcd.wait_for(etcd_prefix + "k", exists=True, timeout=5) >= rev
    assert await etcd.wait_for(etcd_prefix + "absent", exists=False, timeout=5) >= rev


async def test_wakes_on_put_and_on_delete(etcd: AsyncClient, etcd_prefix: str) -> None:
    key = etcd_prefix + "ready"
    waiter = asyncio.create_task(etcd.wait_for(key, exists=True, timeout=WAIT))
    await asyncio.sleep(0.2)
    assert not waiter.done()
    rev = await etcd.put(key, "1")
    assert await waiter == rev
    gone = asyncio.create_task(etcd.wait_for(key, exists=False, timeout=WAIT))
    await asyncio.sleep(0.2)
    assert not gone.done()
    await etcd.put(key, "2")  # still exists: keep waiting
    await asyncio.sleep(0.2)
    assert not gone.done()
    await etcd.delete(key)
    assert await gone > rev


async def test_no_gap_between_read_and_watch(
    etcd: AsyncClient, etcd_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A put and a delete land right after wait_for's read, before its watch is asked for:
    # the watch (from the read's revision + 1) must still show the put. (Racing a put against
    # the read instead cannot promise the read came first: that test failed ~1 run in 160.)
    real_read = etcd.core.kv.get_coalesced
    puts: list[int] = []

    async def read_then_flash(key: bytes) -> etcdkit.RangeResult:
        result = await real_read(key)
        puts.append(await etcd.put(key, "x"))
        await etcd.delete(key)
        return result

    monkeypatch.setattr(etcd.core.kv, "get_coalesced", read_then_flash)
    for i in range(5):
        assert await etcd.wait_for(f"{etcd_prefix}flash{i}", timeout=WAIT) == puts[-1]


async def test_timeout_raises_timeout_error(etcd: AsyncClient, etcd_prefix: str) -> None:
    with pytest.raises(TimeoutError, match=r"did not exist within 0\.3 s") as info:
        await etcd.wait_for(etcd_prefix + "never", timeout=0.3)
    assert isinstance(info.value, etcdkit.EtcdTimeoutError)
    assert not etcd.core.watches._subs  # the key's watcher was removed from the shared stream


async def test_cancellation_propagates(etcd: AsyncClient, etcd_prefix: str) -> None:
    waiter = asyncio.create_task(etcd.wait_for(etcd_prefix + "never"))
    await asyncio.sleep(0.1)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter


async def test_survives_server_restart(etcd_server_factory: Callable[..., EtcdServer]) -> None:
    server = etcd_server_factory()
    async with AsyncClient(server.endpoint) as client:
        waiter = asyncio.create_task(client.wait_for("/w/key", timeout=WAIT))
        await asyncio.sleep(0.3)
        server.kill()
        await asyncio.sleep(0.3)
        server.restart()
        async with asyncio.timeout(WAIT):
            while True:
                try:
                    rev = await client.put("/w/key", "1")
                    break
                except etcdkit.ConnectionUnavailableError:
                    await asyncio.sleep(0.1)
        assert await waiter == rev


async def test_waiting_while_etcd_is_down_then_comes_up(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    server = etcd_server_factory()
    async with AsyncClient(server.endpoint) as client:
        server.stop()
        waiter = asyncio.create_task(client.wait_for("/w/x", exists=False, timeout=WAIT))
        await asyncio.sleep(0.5)
        assert not waiter.done()
        server.restart()
        assert await waiter > 0


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"key": ""}, ValueError),
        ({"key": 5}, TypeError),
        ({"key": "k", "exists": "yes"}, TypeError),
        ({"key": "k", "timeout": -1}, ValueError),
    ],
)
async def test_bad_arguments(etcd: AsyncClient, kwargs: dict[str, object], exc: type) -> None:
    with pytest.raises(exc):
        await etcd.wait_for(**kwargs)  # type: ignore[arg-type]


def test_threaded_wait_for(etcd_sync: Client, etcd_prefix: str) -> None:
    rev = etcd_sync.put(etcd_prefix + "t", "1")
    assert etcd_sync.wait_for(etcd_prefix + "t", timeout=5) >= rev
    with pytest.raises(etcdkit.EtcdTimeoutError):
        etcd_sync.wait_for(etcd_prefix + "t", exists=False, timeout=0.2)


async def test_timeout_zero_answers_from_one_read(etcd: AsyncClient, etcd_prefix: str) -> None:
    rev = await etcd.put(etcd_prefix + "z", "1")
    assert await etcd.wait_for(etcd_prefix + "z", timeout=0) >= rev
    with pytest.raises(etcdkit.EtcdTimeoutError, match="still existed"):
        await etcd.wait_for(etcd_prefix + "z", exists=False, timeout=0)


async def test_many_concurrent_waiters_share_their_reads(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    present = [f"{etcd_prefix}p{i}" for i in range(300)]
    absent = [f"{etcd_prefix}a{i}" for i in range(300)]
    revs = [await etcd.put(k, "v") for k in present[:5]]
    for k in present[5:]:
        await etcd.put(k, "v")
    waiters = [asyncio.create_task(etcd.wait_for(k, timeout=WAIT)) for k in present + absent]
    gone = [asyncio.create_task(etcd.wait_for(k, exists=False, timeout=WAIT)) for k in absent]
    done_present = await asyncio.gather(*waiters[: len(present)])
    assert min(done_present) >= revs[-1]  # each answer is a read at or after the puts
    assert all(r > 0 for r in await asyncio.gather(*gone))
    put_revs = {k: await etcd.put(k, "x") for k in absent}
    for k, r in zip(absent, await asyncio.gather(*waiters[len(present) :])):
        assert r == put_revs[k]
