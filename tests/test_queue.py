"""Queue and PriorityQueue against real etcd: FIFO and priority order on Go's keys, each item to
exactly one of many consumers, timeouts and cancels that take nothing, one consumer awake per
object, unanswered writes, both faces, and Go's recipes sharing the queues both ways."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections import Counter as Multiset
from collections.abc import Callable
from typing import Any

import pytest

from _flaky import FlakyClient
from _go import GoProc, GoPrograms, go_program
from etcdkit import (
    AsyncClient,
    Client,
    ClosedError,
    EtcdTimeoutError,
    OutcomeUnknownError,
    PriorityQueue,
    Queue,
    SyncQueue,
)
from etcdkit.server import EtcdServer

__all__ = ["go_program"]  # (a fixture, imported for pytest)

WAIT = 20.0


async def items(etcd: AsyncClient, prefix: str) -> list[tuple[bytes, bytes]]:
    kvs = (await etcd.range(prefix, prefix=True, sort_target="create")).kvs
    return [(kv.key, kv.value) for kv in kvs]


# -- Queue: order and layout ----------------------------------------------------------------------


async def test_fifo_on_gos_keys(etcd: AsyncClient, etcd_prefix: str) -> None:
    name = etcd_prefix + "jobs"
    q = etcd.queue(name)
    assert isinstance(q, Queue)
    assert q.name == name.encode()
    keys = [await q.put(f"job {i}") for i in range(6)]
    for key in keys:  # Go's newUniqueKV: name + "/" + Unix nanoseconds in decimal
        assert re.fullmatch(re.escape(name.encode()) + rb"/[0-9]{19}", key), key
    assert [v for _, v in await items(etcd, name + "/")] == [b"job %d" % i for i in range(6)]
    assert [await q.get() for _ in range(6)] == [b"job %d" % i for i in range(6)]
    assert await items(etcd, name + "/") == []
    assert "waiting=0" in repr(q)


async def test_get_waits_for_a_put(etcd: AsyncClient, etcd_prefix: str) -> None:
    q = etcd.queue(etcd_prefix + "q")
    getter = asyncio.create_task(q.get(timeout=WAIT))
    await asyncio.sleep(0.3)
    assert not getter.done()
    await etcd.queue(etcd_prefix + "q").put(b"\x00binary\xff")
    assert await getter == b"\x00binary\xff"


async def test_a_queue_is_not_its_prefix_sibling(etcd: AsyncClient, etcd_prefix: str) -> None:
    await etcd.queue(etcd_prefix + "ab").put("other")
    with pytest.raises(EtcdTimeoutError):
        await etcd.queue(etcd_prefix + "a").get(timeout=0)


# -- exactly once, with many consumers ------------------------------------------------------------


async def test_many_consumers_each_item_exactly_once(
    etcd: AsyncClient, etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    name = etcd_prefix + "work"
    total = 120
    clients = [AsyncClient(etcd_server.endpoint) for _ in range(3)]
    for c in clients:
        await c.connect()
    try:
        shared = clients[0].queue(name)  # three consumers take turns on one object
        queues = [shared, shared, shared, clients[1].queue(name), clients[2].queue(name)]
        queues.append(clients[2].queue(name))
        got: list[list[bytes]] = [[] for _ in queues]
        done = asyncio.Event()

        async def consume(i: int) -> None:
            while not done.is_set():
                try:
                    got[i].append(await queues[i].get(timeout=0.5))
                except EtcdTimeoutError:
                    continue
                if sum(map(len, got)) >= total:
                    done.set()

        async def produce(p: int) -> None:
            q = clients[p].queue(name)
            for i in range(p, total, 3):
                await q.put(f"item {i}")

        consumers = [asyncio.create_task(consume(i)) for i in range(len(queues))]
        await asyncio.gather(*(produce(p) for p in range(3)))
        async with asyncio.timeout(WAIT * 2):
            await done.wait()
        await asyncio.gather(*consumers)
    finally:
        for c in clients:
            await c.close()
    delivered = Multiset(v for lst in got for v in lst)
    assert max(delivered.values()) == 1, [v for v, n in delivered.items() if n > 1]
    assert set(delivered) == {b"item %d" % i for i in range(total)}
    assert sum(1 for lst in got if lst) > 1  # the work was shared
    for lst in got:  # each consumer took its items in the order they were put, per producer
        for p in range(3):
            mine = [int(v.split()[1]) for v in lst if int(v.split()[1]) % 3 == p]
            assert mine == sorted(mine)
    assert await items(etcd, name + "/") == []


async def test_a_put_wakes_one_consumer_of_an_object(
    etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    async with FlakyClient(etcd_server.endpoint) as etcd:
        q = Queue(etcd, etcd_prefix + "q")
        getters = [asyncio.create_task(q.get(timeout=WAIT)) for _ in range(5)]
        await asyncio.sleep(0.5)
        assert "waiting=5" in repr(q)
        await q.put("one")
        async with asyncio.timeout(WAIT):
            while not any(g.done() for g in getters):
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        assert sum(g.done() for g in getters) == 1
        assert etcd.deletes() == 1  # one take: the other four never raced for it
        for v in ("two", "three", "four", "five"):
            await q.put(v)
        assert sorted(await asyncio.gather(*getters)) == sorted(
            [b"one", b"two", b"three", b"four", b"five"]
        )


# -- timeouts and cancels take nothing ------------------------------------------------------------


async def test_timeouts_take_nothing(etcd: AsyncClient, etcd_prefix: str) -> None:
    name = etcd_prefix + "q"
    q = etcd.queue(name)
    with pytest.raises(EtcdTimeoutError, match="no item within 0 s"):
        await q.get(timeout=0)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(EtcdTimeoutError, match=r"no item within 0\.3 s"):
        await q.get(timeout=0.3)
    assert loop.time() - t0 >= 0.29
    await q.put("kept")
    assert await q.get(timeout=0) == b"kept"  # 0: take one if there is one
    with pytest.raises(EtcdTimeoutError):
        await q.get(timeout=0)


async def test_a_cancelled_waiting_get_takes_nothing(etcd: AsyncClient, etcd_prefix: str) -> None:
    q = etcd.queue(etcd_prefix + "q")
    getter = asyncio.create_task(q.get())
    await asyncio.sleep(0.3)
    getter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await getter
    await q.put("for the next one")
    assert await q.get(timeout=WAIT) == b"for the next one"


async def test_a_get_cancelled_while_its_take_is_in_flight_puts_the_item_back(
    etcd: AsyncClient, etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    name = etcd_prefix + "q"
    first = await etcd.queue(name).put("precious")
    async with FlakyClient(etcd_server.endpoint) as flaky:
        q = Queue(flaky, name)
        flaky.answer_delay = 1.0  # the delete lands; its answer is a second late
        getter = asyncio.create_task(q.get(timeout=WAIT))
        await asyncio.wait_for(flaky.applied.wait(), WAIT)
        assert await items(etcd, name + "/") == []  # taken ...
        getter.cancel()  # ... by a get that will not return it
        flaky.answer_delay = 0.0
        with pytest.raises(asyncio.CancelledError):
            await getter
    assert await items(etcd, name + "/") == [(first, b"precious")]  # back, under its key
    assert await etcd.queue(name).get(timeout=0) == b"precious"


async def test_a_priority_item_put_back_keeps_its_place(
    etcd: AsyncClient, etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    name = etcd_prefix + "pq"
    pq = etcd.priority_queue(name)
    await pq.put("first", 1)
    await pq.put("second", 1)
    async with FlakyClient(etcd_server.endpoint) as flaky:
        flaky.answer_delay = 1.0
        getter = asyncio.create_task(PriorityQueue(flaky, name).get())
        await asyncio.wait_for(flaky.applied.wait(), WAIT)
        getter.cancel()
        flaky.answer_delay = 0.0
        with pytest.raises(asyncio.CancelledError):
            await getter
    await pq.put("third", 1)  # takes the next number, after the one put back
    assert [await pq.get(timeout=0) for _ in range(3)] == [b"first", b"second", b"third"]


# -- writes that get no answer --------------------------------------------------------------------


async def test_an_unanswered_take_is_sent_again(etcd_server: EtcdServer, etcd_prefix: str) -> None:
    async with FlakyClient(etcd_server.endpoint) as etcd:
        q = Queue(etcd, etcd_prefix + "q")
        await q.put("a")
        etcd.drop_requests = 2  # never left: the third copy takes it
        assert await q.get(timeout=WAIT) == b"a"


async def test_a_take_whose_answer_was_lost_is_reported(
    etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    async with FlakyClient(etcd_server.endpoint) as etcd:
        q = Queue(etcd, etcd_prefix + "q")
        key = await q.put("a")
        etcd.lose_answers = 1  # our take landed, we never heard: the item is gone (at most once)
        with pytest.raises(OutcomeUnknownError, match=re.escape(repr(key))) as info:
            await q.get(timeout=WAIT)
        assert (info.value.key, info.value.value) == (key, b"a")  # the item, to act on
        with pytest.raises(EtcdTimeoutError):
            await q.get(timeout=0)  # not delivered twice


async def test_a_take_cut_off_by_the_clients_close_is_reported(
    etcd_server_factory: Callable[..., EtcdServer], caplog: pytest.LogCaptureFixture
) -> None:
    """The client closes while a take's delete waits for etcd's answer (etcd stopped: it
    never comes). Whether the take landed is unknown and the item cannot be put back: the get
    raises ClosedError and a WARNING names the item's key, as the docs promise for every
    item not delivered."""
    server = etcd_server_factory()
    async with AsyncClient(server.endpoint) as admin:
        key = await admin.queue("/q").put("precious")
        client = AsyncClient(server.endpoint)
        await client.connect()
        txn = client.txn

        async def txn_to_a_stopped_etcd(*args: Any, **kwargs: Any) -> Any:
            server.pause()  # the take's delete goes out, and nothing answers it
            return await txn(*args, **kwargs)

        client.txn = txn_to_a_stopped_etcd  # type: ignore[method-assign]
        getter = asyncio.create_task(client.queue("/q").get(timeout=WAIT))
        try:
            async with asyncio.timeout(WAIT):
                while not server.paused:
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)  # (the delete is out)
            with caplog.at_level(logging.WARNING, logger="etcdkit.queue"):
                await client.close()
                with pytest.raises(ClosedError):
                    await getter
        finally:
            server.resume()
    said = [r.getMessage() for r in caplog.records if r.name == "etcdkit.queue"]
    assert any("client closed while taking" in m and repr(key) in m for m in said), said


async def test_an_unanswered_put_is_not_sent_again(
    etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    async with FlakyClient(etcd_server.endpoint) as etcd:
        q = Queue(etcd, etcd_prefix + "q")
        etcd.lose_answers = 1
        with pytest.raises(OutcomeUnknownError, match="may or may not be in the queue") as info:
            await q.put("maybe")
        assert info.value.value == b"maybe"
        assert info.value.key is not None
        assert info.value.key.startswith((etcd_prefix + "q/").encode())
        assert len(etcd.writes) == 1
        assert await q.get(timeout=0) == b"maybe"  # (it was: once)
        pq = PriorityQueue(etcd, etcd_prefix + "pq")
        etcd.drop_requests = 1  # the priority queue's put is guarded: sent again, lands once
        await pq.put("once", 3)
        assert await pq.get(timeout=0) == b"once"
        with pytest.raises(EtcdTimeoutError):
            await pq.get(timeout=0)


# -- PriorityQueue --------------------------------------------------------------------------------


async def test_priority_order_ties_in_order_and_gos_keys(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    name = etcd_prefix + "pq"
    pq = etcd.priority_queue(name)
    assert isinstance(pq, PriorityQueue)
    puts = [("c1", 5), ("a1", 0), ("b1", 3), ("a2", 0), ("c2", 5), ("z", 65535), ("b2", 3)]
    keys = [await pq.put(v, p) for v, p in puts]
    assert keys[0] == f"{name}/00005/0000000000000000".encode()
    assert keys[3] == f"{name}/00000/0000000000000001".encode()
    assert keys[5] == f"{name}/65535/0000000000000000".encode()
    assert await etcd.get(f"__{name}/00005") is not None  # Go's bookkeeping key
    got = [await pq.get(timeout=0) for _ in puts]
    assert got == [b"a1", b"a2", b"b1", b"b2", b"c1", b"c2", b"z"]


async def test_priority_get_waits_and_takes_the_best_of_a_batch(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    name = etcd_prefix + "pq"
    pq = etcd.priority_queue(name)
    getter = asyncio.create_task(pq.get(timeout=WAIT))
    await asyncio.sleep(0.3)
    await pq.put("only", 7)
    assert await getter == b"only"


async def test_bad_input_before_any_io(etcd: AsyncClient, etcd_prefix: str) -> None:
    with pytest.raises(ValueError, match="name must not be empty"):
        etcd.queue("")
    with pytest.raises(TypeError, match="name must be str or bytes"):
        etcd.queue(7)  # type: ignore[arg-type]
    q = etcd.queue(etcd_prefix + "q")
    with pytest.raises(TypeError, match="value must be str or bytes"):
        await q.put(1)  # type: ignore[arg-type]
    for bad in (-1, float("nan")):
        with pytest.raises(ValueError, match="timeout must be"):
            await q.get(timeout=bad)
    with pytest.raises(TypeError, match="timeout must be"):
        await q.get(timeout="1")  # type: ignore[arg-type]
    pq = etcd.priority_queue(etcd_prefix + "pq")
    for bad_value in (-1, 65536):
        with pytest.raises(ValueError, match=r"from 0 .* to 65535"):
            await pq.put("v", bad_value)
    for bad_type in (True, 1.0, "1", None):
        with pytest.raises(TypeError, match="priority must be an int"):
            await pq.put("v", bad_type)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await pq.put("v")  # type: ignore[call-arg]
    assert await items(etcd, etcd_prefix) == []


# -- the threaded face ----------------------------------------------------------------------------


def test_threaded_queue(etcd_sync: Client, etcd_prefix: str, no_leaked_threads: None) -> None:
    name = etcd_prefix + "q"
    q = etcd_sync.queue(name)
    assert isinstance(q, SyncQueue)
    assert q.name == name.encode()
    for i in range(3):
        q.put(f"v{i}")
    assert [q.get(timeout=5) for _ in range(3)] == [b"v0", b"v1", b"v2"]
    with pytest.raises(EtcdTimeoutError):
        q.get(timeout=0.2)
    got: list[bytes] = []
    lock = threading.Lock()

    def consume() -> None:
        mine = etcd_sync.queue(name)
        while True:
            try:
                v = mine.get(timeout=1.0)
            except EtcdTimeoutError:
                return
            with lock:
                got.append(v)

    threads = [threading.Thread(target=consume) for _ in range(4)]
    for t in threads:
        t.start()
    for i in range(40):
        q.put(f"t{i}")
    for t in threads:
        t.join(timeout=WAIT)
    assert sorted(got) == sorted(b"t%d" % i for i in range(40))
    pq = etcd_sync.priority_queue(etcd_prefix + "pq")
    pq.put("low", 9)
    pq.put("high", 1)
    assert [pq.get(timeout=0), pq.get(timeout=0)] == [b"high", b"low"]
    assert "SyncPriorityQueue" in repr(pq)


# -- Go's recipes share the queues ----------------------------------------------------------------


async def test_go_enqueues_we_dequeue_and_back(
    etcd: AsyncClient, etcd_server: EtcdServer, etcd_prefix: str, go_program: GoPrograms
) -> None:
    binary = go_program("queue")
    name = etcd_prefix + "shared"
    values = [f"go-{i}" for i in range(5)]
    go = await GoProc.start(binary, etcd_server.endpoint, name, "put", *values)
    await go.expect("done")
    q = etcd.queue(name)
    assert [await q.get(timeout=WAIT) for _ in values] == [v.encode() for v in values]

    go = await GoProc.start(binary, etcd_server.endpoint, name, "get", "5")
    await go.expect("ready")
    for i in range(5):
        await q.put(f"py-{i}")
    for i in range(5):
        await go.expect(f"py-{i}")
    assert await go.finish() == 0
    assert await items(etcd, name + "/") == []


async def test_go_priority_queue_and_ours_agree(
    etcd: AsyncClient, etcd_server: EtcdServer, etcd_prefix: str, go_program: GoPrograms
) -> None:
    binary = go_program("priority_queue")
    name = etcd_prefix + "shared"
    pq = etcd.priority_queue(name)
    await pq.put("py-b", 2)
    go = await GoProc.start(binary, etcd_server.endpoint, name, "put", "go-c:9", "go-a:0", "go-b:2")
    await go.expect("done")
    await pq.put("py-a", 0)
    got = [await pq.get(timeout=WAIT) for _ in range(5)]
    assert got == [b"go-a", b"py-a", b"py-b", b"go-b", b"go-c"]  # by priority, then in order

    for v, p in (("x", 4), ("y", 1), ("z", 4)):
        await pq.put(v, p)
    go = await GoProc.start(binary, etcd_server.endpoint, name, "get", "3")
    for word in ("ready", "y", "x", "z"):
        await go.expect(word)
    assert await go.finish() == 0


@pytest.mark.parametrize("kind", ["queue", "priority_queue"])
async def test_gets_that_never_wait_share_one_object(
    etcd: AsyncClient, etcd_prefix: str, kind: str
) -> None:
    """get(timeout=0) takes an item if one is there, also when other gets of the same object
    are under way (they take turns only to wait): ten at once on one object take ten items."""
    q = etcd.queue(etcd_prefix + "q") if kind == "queue" else etcd.priority_queue(etcd_prefix + "q")
    for i in range(10):
        await (q.put(f"v{i}") if kind == "queue" else q.put(f"v{i}", 1))  # type: ignore[call-arg]
    got = await asyncio.gather(*(q.get(timeout=0) for _ in range(10)))
    assert sorted(got) == sorted(f"v{i}".encode() for i in range(10))
    with pytest.raises(EtcdTimeoutError):
        await q.get(timeout=0)
