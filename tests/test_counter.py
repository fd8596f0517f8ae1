"""Counter against real etcd: decimal ASCII that etcdctl reads and writes, no lost update with
eight concurrent adders on both faces, unanswered writes, bad input and bad data."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading

import pytest

from _flaky import FlakyClient
from etcdkit import AsyncClient, Client, Counter, OutcomeUnknownError, SyncCounter
from etcdkit.server import EtcdServer

ADDERS = 8
ADDS = 25


async def test_add_and_value_in_decimal_ascii(etcd: AsyncClient, etcd_prefix: str) -> None:
    key = etcd_prefix + "hits"
    c = etcd.counter(key)
    assert isinstance(c, Counter)
    assert c.key == key.encode()
    assert await c.value() == 0  # a missing key counts as 0
    assert await c.add() == 1
    assert await c.add(41) == 42
    kv = await etcd.get(key)
    assert kv is not None
    assert (kv.value, kv.lease) == (b"42", 0)
    assert await c.add(-50) == -8
    assert (await etcd.get(key)).value == b"-8"  # type: ignore[union-attr]
    assert await c.add(0) == -8
    assert await c.value() == -8
    assert await c.add(10**30) == 10**30 - 8  # any int: it is text
    assert repr(c) == f"<Counter key={key.encode()!r}>"


async def test_eight_adders_lose_no_update(
    etcd: AsyncClient, etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    key = etcd_prefix + "n"
    clients = [AsyncClient(etcd_server.endpoint) for _ in range(4)]
    for c in clients:
        await c.connect()
    try:

        async def adder(i: int) -> list[int]:
            c = clients[i % len(clients)].counter(key)
            return [await c.add(1) for _ in range(ADDS)]

        results = await asyncio.gather(*(adder(i) for i in range(ADDERS)))
    finally:
        for c in clients:
            await c.close()
    seen = sorted(v for r in results for v in r)
    assert seen == list(range(1, ADDERS * ADDS + 1))  # each add made a value of its own
    assert all(r == sorted(r) for r in results)
    assert await etcd.counter(key).value() == ADDERS * ADDS


def test_threaded_adders(etcd_sync: Client, etcd_prefix: str, no_leaked_threads: None) -> None:
    key = etcd_prefix + "n"
    c = etcd_sync.counter(key)
    assert isinstance(c, SyncCounter)
    assert c.key == key.encode()
    seen: list[int] = []
    lock = threading.Lock()

    def adder() -> None:
        mine = etcd_sync.counter(key)
        for _ in range(10):
            v = mine.add(2)
            with lock:
                seen.append(v)

    threads = [threading.Thread(target=adder) for _ in range(ADDERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(seen) == list(range(2, 2 * ADDERS * 10 + 1, 2))
    assert c.value() == 2 * ADDERS * 10
    assert "SyncCounter" in repr(c)


async def test_etcdctl_reads_and_writes_it(
    etcd: AsyncClient, etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    etcdctl = shutil.which("etcdctl")
    if etcdctl is None:
        pytest.skip("no etcdctl on PATH")
    key = etcd_prefix + "shared"

    def ctl(*args: str) -> str:
        return subprocess.run(
            [etcdctl, "--endpoints", etcd_server.endpoint, *args],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout

    await asyncio.to_thread(ctl, "put", key, "100")
    c = etcd.counter(key)
    assert await c.add(5) == 105
    assert (await asyncio.to_thread(ctl, "get", key, "--print-value-only")).strip() == "105"


async def test_bad_input_and_bad_data(etcd: AsyncClient, etcd_prefix: str) -> None:
    with pytest.raises(ValueError, match="key must not be empty"):
        etcd.counter("")
    with pytest.raises(TypeError, match="key must be str or bytes"):
        etcd.counter(3)  # type: ignore[arg-type]
    key = etcd_prefix + "c"
    c = etcd.counter(key)
    for bad in ("1", 1.5, True, None):
        with pytest.raises(TypeError, match="n must be an int"):
            await c.add(bad)  # type: ignore[arg-type]
    assert await etcd.get(key) is None
    for junk in (b"abc", b" 1", b"1_000", b"+1", b"", b"1.0"):
        await etcd.put(key, junk)
        with pytest.raises(ValueError, match="not a decimal integer"):
            await c.add(1)
        with pytest.raises(ValueError, match="not a decimal integer"):
            await c.value()
        assert (await etcd.get(key)).value == junk  # type: ignore[union-attr]


def test_more_digits_than_python_converts(etcd_sync: Client, etcd_prefix: str) -> None:
    # A decimal past sys.get_int_max_str_digits() (4300 by default; etcdctl writes one as
    # easily as any other): a ValueError that names the key and the limit, nothing written,
    # and an n that could not be written is refused before any I/O (threaded face).
    key = etcd_prefix + "c"
    c = etcd_sync.counter(key)
    with pytest.raises(ValueError, match="digits than this Python converts"):
        c.add(10**5000)
    assert etcd_sync.get(key) is None
    huge = b"1" * 5000
    etcd_sync.put(key, huge)
    for call in (c.value, c.add):
        with pytest.raises(ValueError, match=r"holds a decimal of 5000 digits, more than the"):
            call()
    assert etcd_sync.get(key).value == huge  # type: ignore[union-attr]
    etcd_sync.put(key, b"9" * 4300)  # as many as it converts: the sum has one more
    with pytest.raises(ValueError, match="nothing written"):
        c.add(1)
    assert etcd_sync.get(key).value == b"9" * 4300  # type: ignore[union-attr]


async def test_unanswered_adds(etcd_server: EtcdServer, etcd_prefix: str) -> None:
    async with FlakyClient(etcd_server.endpoint) as etcd:
        c = Counter(etcd, etcd_prefix + "c")
        etcd.drop_requests = 2  # never left: sent again, applied once
        assert await c.add(1) == 1
        assert await c.value() == 1
        etcd.lose_answers = 1  # applied, unheard: the copy sent again is refused by its guard
        with pytest.raises(OutcomeUnknownError, match="may or may not have been applied"):
            await c.add(1)
        assert await c.value() == 2  # applied once, not twice
