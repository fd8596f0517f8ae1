"""STM against real etcd: Go's four isolation levels (what each reads and what its commit
compares), the bank-transfer invariant under concurrency for the levels that promise it,
conflicts that run fn again up to a bound, fn's result and exceptions, unanswered commits,
bad input, and the threaded face (a plain fn in the calling thread)."""

from __future__ import annotations

import asyncio
import functools
import random
import threading
from typing import Any

import pytest

from _flaky import FlakyClient
from etcdkit import (
    AsyncClient,
    ClosedError,
    ConflictError,
    ConnectionUnavailableError,
    OutcomeUnknownError,
    Stm,
    SyncStm,
)
from etcdkit.recipes.stm import ISOLATIONS, Isolation, StmState
from etcdkit.server import EtcdServer

PROMISING: tuple[Isolation, ...] = ("serializable_snapshot", "serializable", "repeatable_reads")
ACCOUNTS = 5
START = 100


async def open_accounts(etcd: AsyncClient, prefix: str) -> list[str]:
    names = [f"{prefix}acct/{i}" for i in range(ACCOUNTS)]
    for n in names:
        await etcd.put(n, str(START))
    return names


def transfer(names: list[str], src: int, dst: int, amount: int) -> Any:
    """An ``async def fn(stm)`` that moves ``amount`` from one account to another (none if the
    source has less); it returns ``(src, dst, amount moved)``."""

    async def fn(stm: Stm) -> tuple[int, int, int]:
        a = int(await stm.get(names[src]) or b"0")
        b = int(await stm.get(names[dst]) or b"0")
        if a < amount:
            return (src, dst, 0)  # refused: no overdraft
        stm.put(names[src], str(a - amount))
        stm.put(names[dst], str(b + amount))
        return (src, dst, amount)

    return fn


async def balances(etcd: AsyncClient, names: list[str]) -> list[int]:
    out = []
    for n in names:
        kv = await etcd.get(n)
        assert kv is not None
        out.append(int(kv.value))
    return out


# -- the bank-transfer invariant ------------------------------------------------------------------


@pytest.mark.parametrize("isolation", PROMISING)
async def test_transfers_keep_the_sum_and_every_balance(
    etcd: AsyncClient, etcd_server: EtcdServer, etcd_prefix: str, isolation: Isolation
) -> None:
    names = await open_accounts(etcd, etcd_prefix)
    clients = [AsyncClient(etcd_server.endpoint) for _ in range(4)]
    for c in clients:
        await c.connect()
    done: list[tuple[int, int, int]] = []
    try:

        async def worker(w: int) -> None:
            rng = random.Random(w)
            client = clients[w % len(clients)]
            for _ in range(12):
                src, dst = rng.sample(range(ACCOUNTS), 2)
                fn = transfer(names, src, dst, rng.randint(1, 30))
                done.append(await client.stm(fn, isolation))

        await asyncio.gather(*(worker(w) for w in range(8)))
    finally:
        for c in clients:
            await c.close()
    final = await balances(etcd, names)
    assert sum(final) == ACCOUNTS * START
    assert min(final) >= 0
    expected = [START] * ACCOUNTS  # every committed transfer applied exactly once
    for src, dst, amount in done:
        expected[src] -= amount
        expected[dst] += amount
    assert final == expected
    assert sum(1 for *_, amount in done if amount) > 10


def test_threaded_transfers_run_fn_in_the_calling_thread(
    etcd_sync: Any, etcd_prefix: str, no_leaked_threads: None
) -> None:
    names = [f"{etcd_prefix}acct/{i}" for i in range(3)]
    for n in names:
        etcd_sync.put(n, str(START))
    threads_seen: set[int] = set()
    errors: list[BaseException] = []

    def move(stm: SyncStm, src: str, dst: str) -> int:
        threads_seen.add(threading.get_ident())
        a = int(stm.get(src) or b"0")
        b = int(stm.get(dst) or b"0")
        stm.put(src, str(a - 1))
        stm.put(dst, str(b + 1))
        return threading.get_ident()

    def worker(w: int) -> None:
        rng = random.Random(w)
        try:
            for _ in range(8):
                src, dst = rng.sample(names, 2)
                ran_in = etcd_sync.stm(functools.partial(move, src=src, dst=dst), "serializable")
                assert ran_in == threading.get_ident()  # fn ran in the calling thread
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert len(threads_seen) == 6
    assert sum(int(etcd_sync.get(n).value) for n in names) == 3 * START


# -- what each level reads and compares -----------------------------------------------------------


@pytest.mark.parametrize("isolation", ISOLATIONS)
async def test_a_conflict_runs_fn_again_where_the_level_compares(
    etcd: AsyncClient, etcd_prefix: str, isolation: Isolation
) -> None:
    key, out = etcd_prefix + "k", etcd_prefix + "out"
    await etcd.put(key, "1")
    calls: list[bytes | None] = []

    async def fn(stm: Stm) -> str:
        v = await stm.get(key)
        calls.append(v)
        if len(calls) == 1:
            await etcd.put(key, "2")  # someone else writes what we read, before our commit
        stm.put(out, b"saw " + (v or b""))
        return "result"

    assert await etcd.stm(fn, isolation) == "result"
    if isolation == "read_committed":  # no compares: the commit lands on a stale read
        assert calls == [b"1"]
        assert (await etcd.get(out)).value == b"saw 1"  # type: ignore[union-attr]
    else:
        assert calls == [b"1", b"2"]
        assert (await etcd.get(out)).value == b"saw 2"  # type: ignore[union-attr]


@pytest.mark.parametrize("isolation", ISOLATIONS)
async def test_a_write_only_key_conflicts_only_under_serializable_snapshot(
    etcd: AsyncClient, etcd_prefix: str, isolation: Isolation
) -> None:
    read, written = etcd_prefix + "r", etcd_prefix + "w"
    await etcd.put(read, "x")
    calls = 0

    async def fn(stm: Stm) -> None:
        nonlocal calls
        calls += 1
        await stm.get(read)  # the snapshot
        if calls == 1:
            await etcd.put(written, "theirs")  # after the snapshot, on a key we only write
        stm.put(written, "ours")

    await etcd.stm(fn, isolation)
    assert calls == (2 if isolation == "serializable_snapshot" else 1)
    assert (await etcd.get(written)).value == b"ours"  # type: ignore[union-attr]


@pytest.mark.parametrize("isolation", ISOLATIONS)
async def test_reads_after_the_first_come_from_its_snapshot(
    etcd: AsyncClient, etcd_prefix: str, isolation: Isolation
) -> None:
    a, b = etcd_prefix + "a", etcd_prefix + "b"
    await etcd.put(a, "a0")
    await etcd.put(b, "b0")
    seen: list[bytes | None] = []

    async def fn(stm: Stm) -> None:
        seen.append(await stm.get(a))
        if len(seen) == 1:
            await etcd.put(b, "b1")
        seen.append(await stm.get(b))

    await etcd.stm(fn, isolation)
    if isolation in ("serializable_snapshot", "serializable"):
        # b is read at a's revision: b0; the commit sees b changed and runs fn again
        assert seen == [b"a0", b"b0", b"a0", b"b1"]
    else:
        assert seen == [b"a0", b"b1"]  # each read at the latest revision


async def test_own_writes_deletes_rev_and_prefetch(etcd: AsyncClient, etcd_prefix: str) -> None:
    k, gone, fresh = etcd_prefix + "k", etcd_prefix + "gone", etcd_prefix + "fresh"
    rev = await etcd.put(k, "v")
    await etcd.put(gone, "x")

    async def fn(stm: Stm) -> tuple[Any, ...]:
        assert stm.isolation == "serializable_snapshot"
        r = await stm.rev(k)
        before = await stm.get(k)
        stm.put(k, "v2")
        stm.delete(gone)
        return r, before, await stm.get(k), await stm.get(gone), await stm.get(fresh)

    assert await etcd.stm(fn, prefetch=[k, gone]) == (rev, b"v", b"v2", None, None)
    assert (await etcd.get(k)).value == b"v2"  # type: ignore[union-attr]
    assert await etcd.get(gone) is None


async def test_fn_exception_propagates_and_writes_nothing(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    key = etcd_prefix + "k"

    async def fn(stm: Stm) -> None:
        stm.put(key, "never")
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        await etcd.stm(fn)
    assert await etcd.get(key) is None


async def test_gives_up_after_attempts_with_conflict_error(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    key, out = etcd_prefix + "k", etcd_prefix + "out"
    await etcd.put(key, "0")
    calls = 0

    async def fn(stm: Stm) -> None:
        nonlocal calls
        calls += 1
        await stm.get(key)
        await etcd.put(key, str(calls))  # always beaten
        stm.put(out, "x")

    with pytest.raises(ConflictError, match="after 3 attempts"):
        await etcd.stm(fn, attempts=3)
    assert calls == 3
    assert await etcd.get(out) is None


async def test_the_stm_of_an_attempt_is_over_after_it(etcd: AsyncClient, etcd_prefix: str) -> None:
    kept: list[Stm] = []

    async def fn(stm: Stm) -> None:
        kept.append(stm)

    await etcd.stm(fn)
    with pytest.raises(ClosedError, match="attempt is over"):
        await kept[0].get(etcd_prefix + "k")
    with pytest.raises(ClosedError):
        kept[0].put(etcd_prefix + "k", "v")


async def test_bad_input(etcd: AsyncClient, etcd_sync: Any, etcd_prefix: str) -> None:
    async def ok(stm: Stm) -> None:
        return None

    with pytest.raises(ValueError, match="isolation must be one of"):
        await etcd.stm(ok, "snapshot")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="fn must be a function"):
        await etcd.stm("fn")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="attempts must be an int >= 1"):
        await etcd.stm(ok, attempts=0)
    # a wrong type is a TypeError, as everywhere else (it was a ValueError)
    for wrong in ("3", 2.0, True):
        with pytest.raises(TypeError, match="attempts must be an int >= 1"):
            await etcd.stm(ok, attempts=wrong)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="isolation must be a str"):
        await etcd.stm(ok, 123)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="prefetch must be a list of keys"):
        await etcd.stm(ok, prefetch="abc")
    with pytest.raises(ValueError, match="prefetch key must not be empty"):
        await etcd.stm(ok, prefetch=[""])

    def plain(stm: Stm) -> int:
        return 1

    with pytest.raises(TypeError, match="must be an async def"):
        await etcd.stm(plain)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="takes a plain def"):
        await asyncio.to_thread(etcd_sync.stm, ok)

    async def bad_calls(stm: Stm) -> None:
        with pytest.raises(ValueError, match="key must not be empty"):
            await stm.get("")
        with pytest.raises(TypeError, match="value must be str or bytes"):
            stm.put(etcd_prefix + "k", 5)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="lease must be an int"):
            stm.put(etcd_prefix + "k", "v", lease="x")  # type: ignore[arg-type]

    await etcd.stm(bad_calls)
    assert await etcd.get(etcd_prefix + "k") is None


# -- faults ---------------------------------------------------------------------------------------


async def test_unanswered_commits(etcd_server: EtcdServer, etcd_prefix: str) -> None:
    key = etcd_prefix + "n"
    async with FlakyClient(etcd_server.endpoint) as etcd:
        await etcd.put(key, "0")

        async def bump(stm: Stm) -> int:
            n = int(await stm.get(key) or b"0") + 1
            stm.put(key, str(n))
            return n

        etcd.drop_requests = 2  # never left: sent again, applied once
        assert await etcd.stm(bump) == 1
        etcd.lose_answers = 1  # applied unheard: the copy sent again fails its compares
        with pytest.raises(OutcomeUnknownError, match="may or may not have been applied"):
            await etcd.stm(bump)
        assert (await etcd.get(key)).value == b"2"  # type: ignore[union-attr]  # once


async def test_a_failed_read_runs_fn_again(etcd_server: EtcdServer, etcd_prefix: str) -> None:
    key = etcd_prefix + "k"
    async with AsyncClient(etcd_server.endpoint) as etcd:
        await etcd.put(key, "v")
        real_txn = etcd.txn
        failures = [1]

        async def flaky_txn(*args: Any, **kwargs: Any) -> Any:
            from etcdkit import ConnectionUnavailableError

            if failures[0]:
                failures[0] -= 1
                raise ConnectionUnavailableError("test: a read failed")
            return await real_txn(*args, **kwargs)

        etcd.txn = flaky_txn  # type: ignore[method-assign]
        calls = 0

        async def fn(stm: Stm) -> bytes | None:
            nonlocal calls
            calls += 1
            return await stm.get(key)

        assert await etcd.stm(fn) == b"v"
        assert calls == 2


async def test_an_unreachable_etcd_raises_its_error_not_a_conflict(
    etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    """Reads failing with etcd unreachable run ``fn`` once more, then raise the client's own
    error (they used to run it ``attempts`` times, each a client timeout, then say every
    commit conflicted)."""
    key = etcd_prefix + "k"
    async with AsyncClient(etcd_server.endpoint) as etcd:
        await etcd.put(key, "v")
        real_txn = etcd.txn

        async def unreachable(*args: Any, **kwargs: Any) -> Any:
            raise ConnectionUnavailableError("test: etcd unreachable")

        etcd.txn = unreachable  # type: ignore[method-assign]
        calls = 0

        async def fn(stm: Stm) -> bytes | None:
            nonlocal calls
            calls += 1
            return await stm.get(key)

        with pytest.raises(ConnectionUnavailableError, match="unreachable"):
            await etcd.stm(fn)
        assert calls == 2
        etcd.txn = real_txn  # type: ignore[method-assign]
        assert await etcd.stm(fn) == b"v"  # and it works again once etcd answers


# -- the pure state -------------------------------------------------------------------------------


def test_state_commit_compares_by_level() -> None:
    from etcdkit import KeyValue, RangeResult

    def read(value: bytes | None, mod: int, at: int) -> RangeResult:
        kvs = [KeyValue(b"k", value, 1, mod, 1, 0)] if value is not None else []
        return RangeResult(kvs, at)

    for level in ISOLATIONS:
        s = StmState(level)
        s.record([b"a", b"b"], [read(b"1", 5, 10), read(None, 0, 10)])
        s.put(b"c", b"x", 0)
        compares, writes, reread = s.commit()
        got = [(c.key, c.op, c.operand) for c in compares]
        if level == "read_committed":
            assert got == []
        elif level == "serializable_snapshot":
            assert got == [(b"a", "==", 5), (b"b", "==", 0), (b"c", "<", 11)]
        else:
            assert got == [(b"a", "==", 5), (b"b", "==", 0)]
        assert [(w.kind, w.key) for w in writes] == [("put", b"c")]
        snap = level in ("serializable_snapshot", "serializable")
        assert [r.key for r in reread] == ([b"a", b"b"] if snap else [])
        assert s.snapshot == (10 if snap else 0)
        assert s.known(b"c") == (True, b"x")
        assert s.known(b"b") == (True, None)
        assert s.known(b"z") == (False, None)


@pytest.mark.parametrize("level", ISOLATIONS)
async def test_an_unanswered_blind_write_is_not_sent_again(
    etcd_server: EtcdServer, etcd_prefix: str, level: Isolation
) -> None:
    """A commit that writes a key fn did not read (a blind write) and whose answer is lost
    is not sent again: no compare stops a second copy, which would write the key again,
    over what another transaction committed in between (both told they committed). It
    raises OutcomeUnknownError, the write applied once. (Only under serializable_snapshot
    with reads does a compare guard every written key: sent again, its compares fail.)"""
    flag, log = etcd_prefix + "flag", etcd_prefix + "log"
    async with FlakyClient(etcd_server.endpoint) as etcd:
        await etcd.put(flag, "1")

        async def blind(stm: Stm) -> None:
            await stm.get(flag)
            stm.put(log, "T1")

        etcd.lose_answers = 1  # applied, unheard
        with pytest.raises(OutcomeUnknownError, match="may or may not have been applied"):
            await etcd.stm(blind, isolation=level)
        kv = await etcd.get(log)
        assert kv is not None
        assert kv.version == 1  # written once (a second copy wrote it again)


def test_a_commit_is_sent_again_only_when_a_first_copy_fails_the_next() -> None:
    from etcdkit import KeyValue, RangeResult

    def state(level: Isolation, read: list[bytes], write: list[bytes]) -> StmState:
        s = StmState(level)
        s.record(read, [RangeResult([KeyValue(k, b"v", 1, 5, 1, 0)], 10) for k in read])
        for k in write:
            s.put(k, b"x", 0)
        return s

    for level in ISOLATIONS:
        assert state(level, [b"a"], [b"a"]).resend_safe() == (level != "read_committed")
        assert state(level, [b"a"], [b"b"]).resend_safe() == (level == "serializable_snapshot")
        assert not state(level, [], [b"b"]).resend_safe()
        assert state(level, [b"a"], []).resend_safe()
