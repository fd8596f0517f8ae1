"""watch_prefix against real etcd: exact snapshots through restarts, cuts, compaction, leaders."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping
from typing import Any, cast

import pytest
from aetcd import rpc

import etcdkit
from etcdkit import AsyncClient, ChangeKind, Client, PrefixWatch, Snapshot, WatchState
from etcdkit.server import EtcdCluster, EtcdServer, Proxy

WAIT = 20.0


def int_transform(key: bytes, value: bytes) -> tuple[str, int]:
    return key.decode().rsplit("/", 1)[-1], int(value)


async def next_snap(watch: PrefixWatch[Any, Any], timeout: float = WAIT) -> Snapshot[Any, Any]:
    async with asyncio.timeout(timeout):
        return await anext(watch)


async def until(
    watch: PrefixWatch[Any, Any], pred: Callable[[Snapshot[Any, Any]], bool], timeout: float = WAIT
) -> Snapshot[Any, Any]:
    snap = watch.snapshot
    if snap is not None and pred(snap):
        return snap
    async with asyncio.timeout(timeout):
        async for snap in watch:
            if pred(snap):
                return snap
    raise AssertionError("watch ended")


async def expected_tree(
    client: AsyncClient, prefix: str, revision: int, transform: Callable[[bytes, bytes], Any]
) -> dict[Any, Any]:
    """The tree by the documented rule: valid records only; when raw keys collide (transform
    to one key), the smallest raw key wins (``get_prefix`` lists them in key order)."""
    out: dict[Any, Any] = {}
    for kv in (await client.get_prefix(prefix, revision=revision)).kvs:
        try:
            k, v = transform(kv.key, kv.value)
        except Exception:
            continue
        out.setdefault(k, v)
    return out


def folding_transform(key: bytes, value: bytes) -> tuple[str, int]:
    """The last segment in lower case (``A`` and ``a`` collide); a value ``name:n`` files the
    record under ``name``; a value that is not an integer is invalid."""
    text = value.decode()
    if ":" in text:
        name, _, number = text.partition(":")
        return name, int(number)
    return key.decode().rsplit("/", 1)[-1].lower(), int(text)


async def test_seed_scenario_four_trees_in_order(etcd: AsyncClient, etcd_prefix: str) -> None:
    p = etcd_prefix
    for name, val in [("a", 1), ("b", 2), ("c", 3)]:
        await etcd.put(p + name, str(val))
    async with etcd.watch_prefix(p, int_transform) as watch:
        snap = await watch.synced(timeout=WAIT)
        assert dict(snap.tree) == {"a": 1, "b": 2, "c": 3}
        assert watch.state is WatchState.LIVE or watch.state is WatchState.STALE
        await etcd.delete(p + "b")
        snap = await next_snap(watch)
        assert dict(snap.tree) == {"a": 1, "c": 3}
        assert snap.changes["b"].kind is ChangeKind.REMOVED
        assert snap.changes["b"].old == 2
        await etcd.put(p + "a", "10")
        snap = await next_snap(watch)
        assert dict(snap.tree) == {"a": 10, "c": 3}
        assert (snap.changes["a"].kind, snap.changes["a"].old, snap.changes["a"].new) == (
            ChangeKind.UPDATED, 1, 10,
        )  # fmt: skip
        rev = await etcd.put(p + "d", "4")
        snap = await next_snap(watch)
        assert dict(snap.tree) == {"a": 10, "c": 3, "d": 4}
        assert snap.revision == rev
        assert list(snap.changes) == ["d"]
        assert watch.snapshot is not None
        assert watch.snapshot.revision == rev
        with pytest.raises(TypeError):
            snap.tree["x"] = 1  # type: ignore[index]
    final_state: WatchState = watch.state  # (read again: it changed on close)
    assert final_state is WatchState.CLOSED


async def test_default_transform_and_byte_prefix(etcd: AsyncClient, etcd_prefix: str) -> None:
    base = etcd_prefix + "svc"
    await etcd.put(base + "/x", "1")
    await etcd.put(base + "x/y", "sibling")  # matched by the byte prefix "svc", not "svc/"
    async with etcd.watch_prefix(base + "/") as watch:
        snap = await watch.synced(timeout=WAIT)
        assert dict(snap.tree) == {base + "/x": b"1"}
    async with etcd.watch_prefix(base) as watch:
        snap = await watch.synced(timeout=WAIT)
        assert set(snap.tree) == {base + "/x", base + "x/y"}


async def test_txn_is_one_step(etcd: AsyncClient, etcd_prefix: str) -> None:
    async with etcd.watch_prefix(etcd_prefix, int_transform) as watch:
        await watch.synced(timeout=WAIT)
        ops = [
            rpc.RequestOp(request_put=rpc.PutRequest(key=f"{etcd_prefix}{k}".encode(), value=b"7"))
            for k in "xyz"
        ]
        resp = await etcd.raw.kv.Txn(rpc.TxnRequest(success=ops))
        snap = await next_snap(watch)
        assert dict(snap.tree) == {"x": 7, "y": 7, "z": 7}
        assert snap.revision == resp.header.revision
        assert {c.kind for c in snap.changes.values()} == {ChangeKind.ADDED}


async def test_lease_revoke_removes_many_keys_in_one_step(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    grant = await etcd.grant(60)
    for k in "abc":
        await etcd.put(etcd_prefix + k, "1", lease=grant.id)
    await etcd.put(etcd_prefix + "keep", "2")
    async with etcd.watch_prefix(etcd_prefix, int_transform) as watch:
        await watch.synced(timeout=WAIT)
        await etcd.revoke(grant.id)
        snap = await next_snap(watch)
        assert dict(snap.tree) == {"keep": 2}
        assert len(snap.changes) == 3


async def test_invalid_records(
    etcd: AsyncClient, etcd_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    p = etcd_prefix
    await etcd.put(p + "good", "1")
    await etcd.put(p + "bad", "not-a-number")
    caplog.set_level(logging.WARNING, logger="etcdkit")
    async with etcd.watch_prefix(p, int_transform) as watch:
        snap = await watch.synced(timeout=WAIT)
        assert dict(snap.tree) == {"good": 1}
        assert watch.stats.invalid_records == 1
        assert any("bad" in r.getMessage() for r in caplog.records)
        await etcd.put(p + "good", "oops")  # update to invalid: removed, not left stale
        snap = await next_snap(watch)
        assert dict(snap.tree) == {}
        assert snap.changes["good"].kind is ChangeKind.REMOVED
        await etcd.delete(p + "bad")  # delete of an invalid key: no visible change
        rev = await etcd.put(p + "new", "5")
        snap = await next_snap(watch)
        assert dict(snap.tree) == {"new": 5}
        assert list(snap.changes) == ["new"]
        assert snap.revision == rev
        assert watch.stats.invalid_records == 2


async def test_slow_consumer_gets_latest_with_merged_changes(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    async with etcd.watch_prefix(etcd_prefix, int_transform) as watch:
        await watch.synced(timeout=WAIT)
        last = 0
        for i in range(300):  # the consumer does not read meanwhile
            last = await etcd.put(f"{etcd_prefix}k{i % 10}", str(i))
        await etcd.delete(etcd_prefix + "k0")
        last = await etcd.put(etcd_prefix + "k0", "1000")
        async with asyncio.timeout(WAIT):  # the watch drains etcd while nobody reads
            while watch.revision < last:
                await asyncio.sleep(0.01)
        snap = await anext(watch)
        assert snap.revision == last
        assert dict(snap.tree) == {f"k{j}": 290 + j for j in range(1, 10)} | {"k0": 1000}
        assert len(snap.changes) == 10  # one merged change per key, whatever the write count
        assert all(c.kind is ChangeKind.ADDED for c in snap.changes.values())
        assert watch.stats.events >= 302
        assert watch.stats.snapshots <= 3


async def test_large_tree_paginated_beyond_grpc_default_limit(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    value = b"v" * 200_000
    for i in range(25):  # 5 MB, more than gRPC's default 4 MB message limit
        await etcd.put(f"{etcd_prefix}{i:03d}", value)
    async with etcd.watch_prefix(etcd_prefix) as watch:
        snap = await watch.synced(timeout=WAIT)
        assert len(snap.tree) == 25
        assert all(v == value for v in snap.tree.values())


async def test_server_restart_resumes_without_relist(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    server = etcd_server_factory()
    async with AsyncClient(server.endpoint) as client:
        await client.put("/r/a", "1")
        async with client.watch_prefix("/r/", int_transform) as watch:
            await watch.synced(timeout=WAIT)
            await until_state(watch, WatchState.LIVE)  # the watch stream is up
            server.kill()
            server.restart()
            rev = await put_retrying(client, "/r/b", "2")
            snap = await until(watch, lambda s: s.revision >= rev)
            assert dict(snap.tree) == {"a": 1, "b": 2}
            assert watch.stats.relists == 0
            assert watch.stats.disconnects >= 1
            await until_state(watch, WatchState.LIVE)


async def put_retrying(client: AsyncClient, key: str, value: str) -> int:
    async with asyncio.timeout(WAIT):
        while True:
            try:
                return await client.put(key, value)
            except (etcdkit.ConnectionUnavailableError, etcdkit.EtcdTimeoutError):
                await asyncio.sleep(0.1)


async def until_state(watch: PrefixWatch[Any, Any], state: WatchState) -> None:
    async with asyncio.timeout(WAIT):
        while watch.state is not state:
            await asyncio.sleep(0.05)


async def test_cut_connection_with_writes_and_compaction_relists(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    server = etcd_server_factory()
    with Proxy(server.endpoint) as proxy:
        async with (
            AsyncClient(server.endpoint) as writer,
            AsyncClient(proxy.endpoint) as client,
        ):
            for k in "abc":
                await writer.put("/cut/" + k, "1")
            async with client.watch_prefix("/cut/", int_transform) as watch:
                await watch.synced(timeout=WAIT)
                proxy.cut()
                await writer.delete("/cut/a")
                await writer.put("/cut/b", "2")
                rev = await writer.put("/cut/d", "4")
                await writer.compact(rev)
                proxy.drop_connections()
                proxy.restore()
                snap = await until(watch, lambda s: s.revision >= rev)
                assert dict(snap.tree) == {"b": 2, "c": 1, "d": 4}
                assert snap.changes["a"].kind is ChangeKind.REMOVED  # synthesized delete
                assert watch.stats.relists >= 1
                assert snap.tree == await expected_tree(
                    writer, "/cut/", snap.revision, int_transform
                )


async def test_black_hole_marks_stale_then_recovers(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    server = etcd_server_factory()
    with Proxy(server.endpoint) as proxy:
        async with (
            AsyncClient(server.endpoint) as writer,
            AsyncClient(proxy.endpoint) as client,
        ):
            async with client.watch_prefix("/bh/", int_transform) as watch:
                await watch.synced(timeout=WAIT)
                await until_state(watch, WatchState.LIVE)
                proxy.cut()
                await until_state(watch, WatchState.STALE)
                assert watch.age > 0
                rev = await writer.put("/bh/x", "1")
                proxy.restore()
                snap = await until(watch, lambda s: s.revision >= rev)
                assert dict(snap.tree) == {"x": 1}
                await until_state(watch, WatchState.LIVE)


@pytest.mark.cluster
async def test_leader_kill_in_cluster(etcd_cluster: EtcdCluster) -> None:
    async with AsyncClient(etcd_cluster.endpoints) as client:
        prefix = f"/leader-{random.randrange(1 << 30)}/"
        await client.put(prefix + "a", "1")
        async with client.watch_prefix(prefix, int_transform) as watch:
            await watch.synced(timeout=WAIT)
            leader = etcd_cluster.leader()
            leader.kill()
            try:
                rev = await put_retrying(client, prefix + "b", "2")
                snap = await until(watch, lambda s: s.revision >= rev)
                assert dict(snap.tree) == {"a": 1, "b": 2}
            finally:
                leader.restart()
            rev = await put_retrying(client, prefix + "c", "3")
            snap = await until(watch, lambda s: s.revision >= rev)
            assert dict(snap.tree) == {"a": 1, "b": 2, "c": 3}
            assert watch.stats.relists == 0


async def test_every_snapshot_is_exact_under_random_writes(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    rng = random.Random(1234)
    async with etcd.watch_prefix(etcd_prefix, int_transform) as watch:
        seen: list[Snapshot[str, int]] = [await watch.synced(timeout=WAIT)]

        async def consume() -> None:
            async for snap in watch:
                seen.append(snap)
                if rng.random() < 0.3:
                    await asyncio.sleep(0.01)  # sometimes slow: coalescing

        consumer = asyncio.create_task(consume())
        last = 0
        for _ in range(300):
            key = f"{etcd_prefix}k{rng.randrange(20)}"
            op = rng.random()
            if op < 0.6:
                last = await etcd.put(key, str(rng.randrange(100)) if op > 0.05 else "bad")
            else:
                await etcd.delete(key)
        last = await etcd.put(etcd_prefix + "end", "1")
        await until_revision(seen, last)
        consumer.cancel()
    revisions = [s.revision for s in seen]
    assert revisions == sorted(revisions)
    prev: Mapping[str, int] = {}
    for snap in seen:
        assert dict(snap.tree) == await expected_tree(
            etcd, etcd_prefix, snap.revision, int_transform
        )
        applied = dict(prev)
        for key, change in snap.changes.items():
            assert change.old == prev.get(key)
            if change.kind is ChangeKind.REMOVED:
                applied.pop(key)
            else:
                applied[key] = cast(int, change.new)
        assert applied == dict(snap.tree)
        prev = snap.tree


async def test_colliding_keys_stay_exact_through_events_and_a_relist(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    # Raw keys that transform to one key. Events arrive first with no collision anywhere, then
    # make one, then make and undo them at random; a relist (the watch cut off while history
    # is compacted) lists them again, and a second watch starts from a listing that has them.
    # Every snapshot is the tree a fresh listing at its revision gives.
    server = etcd_server_factory()
    p = "/fold/"
    rng = random.Random(2612)

    async def scribble(writer: AsyncClient, n: int, names: str, values: list[str]) -> int:
        for _ in range(n):
            key = p + rng.choice(names)
            if rng.random() < 0.25:
                await writer.delete(key)
            else:
                await writer.put(key, rng.choice(values))
        # a last write that changes the tree: a snapshot is delivered at its revision
        return await writer.put(p + "end", str(rng.randrange(10**9)))

    async def check(watch: PrefixWatch[str, int], writer: AsyncClient, revision: int) -> None:
        snap = await until_past(watch, revision)
        assert snap.tree == await expected_tree(writer, p, snap.revision, folding_transform)

    with Proxy(server.endpoint) as proxy:
        async with (
            AsyncClient(server.endpoint) as writer,
            AsyncClient(proxy.endpoint) as client,
        ):
            await writer.put(p + "a", "1")
            async with client.watch_prefix(p, folding_transform) as watch:
                await watch.synced(timeout=WAIT)
                # distinct lower-case names, no value filing elsewhere: no collision yet
                await check(watch, writer, await scribble(writer, 40, "abc", ["1", "2", "bad"]))
                await writer.put(p + "a", "1")
                snap = await until_past(watch, await writer.put(p + "A", "2"))
                assert snap.tree["a"] == 2  # b"A" < b"a" wins
                for _ in range(3):
                    revision = await scribble(writer, 40, "aAbBc", ["1", "2", "bad", "a:7", "c:8"])
                    await check(watch, writer, revision)
                proxy.cut()
                revision = await scribble(writer, 40, "aAbBc", ["1", "2", "bad", "a:7", "c:8"])
                await writer.compact(revision)
                proxy.drop_connections()
                proxy.restore()
                await check(watch, writer, revision)
                assert watch.stats.relists >= 1
                await check(watch, writer, await scribble(writer, 40, "aAbBc", ["1", "c:8"]))
            await writer.delete_prefix(p)
            await writer.put(p + "x", "b:5")
            await writer.put(p + "b", "6")  # b"b" < b"x", both under "b": "b" wins
            await writer.put(p + "c", "7")
            async with client.watch_prefix(p, folding_transform) as watch:
                snap = await watch.synced(timeout=WAIT)
                assert snap.tree["b"] == 6
                assert snap.tree == await expected_tree(writer, p, snap.revision, folding_transform)
                await writer.delete(p + "b")  # the hidden record takes over
                await check(watch, writer, await writer.put(p + "end", "0"))
                assert watch.snapshot is not None
                assert watch.snapshot.tree["b"] == 5


async def until_past(watch: PrefixWatch[Any, Any], revision: int) -> Snapshot[Any, Any]:
    return await until(watch, lambda s: s.revision >= revision)


async def until_revision(seen: list[Snapshot[Any, Any]], revision: int) -> None:
    async with asyncio.timeout(WAIT):
        while seen[-1].revision < revision:
            await asyncio.sleep(0.01)


async def test_bad_arguments(etcd: AsyncClient) -> None:
    with pytest.raises(TypeError, match="transform must be a callable"):
        etcd.watch_prefix("/p/", "nope")  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="prefix must be str or bytes"):
        etcd.watch_prefix(42)  # type: ignore[call-overload]


async def test_synced_timeout_when_unreachable() -> None:
    async with AsyncClient("127.0.0.1:1", timeout=1) as client:
        async with client.watch_prefix("/x/") as watch:
            with pytest.raises(etcdkit.EtcdTimeoutError, match="did not sync"):
                await watch.synced(timeout=0.5)
            assert watch.state is WatchState.SYNCING


def test_threaded_watch(etcd_sync: Client, etcd_prefix: str, no_leaked_threads: None) -> None:
    etcd_sync.put(etcd_prefix + "a", "1")
    with etcd_sync.watch_prefix(etcd_prefix, int_transform) as watch:
        snap = watch.synced(timeout=WAIT)
        assert dict(snap.tree) == {"a": 1}
        rev = etcd_sync.put(etcd_prefix + "b", "2")
        for snap in watch:
            if snap.revision >= rev:
                break
        assert dict(snap.tree) == {"a": 1, "b": 2}
    assert watch.state is WatchState.CLOSED
    assert list(watch) == []  # a closed watch iterates no more


async def test_no_tasks_left_after_close(etcd_server: EtcdServer) -> None:
    async with AsyncClient(etcd_server.endpoint) as client:
        watch = client.watch_prefix("/leak/")
        await watch.__aenter__()
        await watch.synced(timeout=WAIT)
        # the client closes the watch it still owns
    assert watch.state is WatchState.CLOSED
    await asyncio.sleep(0)
    names = [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("etcdkit")]
    assert names == []


async def test_several_tasks_waiting_on_one_watch_are_all_woken(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    """Tasks waiting at once on one watch (synced() in some, the iteration in others) are each
    woken by the news they wait for; a waiter cancelled meanwhile leaves the others waiting;
    closing the watch ends the iterations still waiting."""
    await etcd.put(etcd_prefix + "a", "1")
    async with etcd.watch_prefix(etcd_prefix, int_transform) as watch:
        synced = [asyncio.create_task(watch.synced(timeout=WAIT)) for _ in range(3)]
        cancelled = asyncio.create_task(watch.synced(timeout=WAIT))
        await asyncio.sleep(0)
        cancelled.cancel()
        for snap in await asyncio.gather(*synced):
            assert dict(snap.tree) == {"a": 1}
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        rev = await etcd.put(etcd_prefix + "b", "2")
        # two iterations wait for the next snapshot: the one that takes it returns, and the
        # other waits on (a snapshot is delivered once) until the watch closes
        nexts = [asyncio.create_task(next_snap(watch)) for _ in range(2)]
        done, pending = await asyncio.wait(nexts, timeout=WAIT, return_when="FIRST_COMPLETED")
        (first,) = done
        assert first.result().revision == rev
        assert dict(first.result().tree) == {"a": 1, "b": 2}
        await watch.aclose()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(pending.pop(), WAIT)


async def test_transform_raising_cancelled_error_ends_the_watch(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    # A CancelledError out of the transform (or code it calls) while nobody cancelled the watch
    # is a failure like any other exception that is not a rejection: the watch ends and says
    # so. It used to end the watch's task as if closed, leaving the watch SYNCING, its
    # consumers waiting until their timeout.
    def cancelling(key: bytes, value: bytes) -> tuple[str, bytes]:
        if value == b"cancel":
            raise asyncio.CancelledError("from the transform")
        return key.decode(), value

    await etcd.put(etcd_prefix + "a", "cancel")
    async with etcd.watch_prefix(etcd_prefix, cancelling) as watch:
        with pytest.raises(RuntimeError, match="CancelledError"):
            await watch.synced(timeout=WAIT)
        assert watch.state is WatchState.CLOSED
    await etcd.put(etcd_prefix + "a", "fine")
    async with etcd.watch_prefix(etcd_prefix, cancelling) as watch:  # the same, live
        await watch.synced(timeout=WAIT)
        await etcd.put(etcd_prefix + "b", "cancel")
        with pytest.raises(RuntimeError, match="CancelledError"):
            await next_snap(watch)
        assert watch.state is WatchState.CLOSED


@pytest.mark.slow
async def test_a_relist_is_stale_and_ages_from_the_last_confirmation(
    etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    """While a relist (the resume revision was compacted) loads, the watch has a snapshot: it
    is STALE, not SYNCING (the first relist said SYNCING, and synced() and iteration
    blocked), and its age counts from etcd's last confirmation of the ended watch, not from
    the first listing (it jumped to the watch's whole life). The transform, called for each
    record of the relist, reads both then."""
    seen: list[tuple[WatchState, float]] = []
    relisting = False

    def spy(key: bytes, value: bytes) -> tuple[str, bytes]:
        if relisting:
            seen.append((watch.state, watch.age))
        return key.decode(), value

    with Proxy(etcd_server.endpoint) as proxy:
        async with (
            AsyncClient(etcd_server.endpoint) as writer,
            AsyncClient(proxy.endpoint) as client,
        ):
            await writer.put(etcd_prefix + "a", "1")
            async with client.watch_prefix(etcd_prefix, spy) as watch:
                await watch.synced(timeout=WAIT)
                await asyncio.sleep(4.0)  # LIVE, confirmed every second, long after the listing
                proxy.cut()
                await writer.put(etcd_prefix + "b", "2")
                rev = await writer.put(etcd_prefix + "c", "3")
                await writer.compact(rev)  # (past the watch's next revision: it relists)
                relisting = True
                proxy.drop_connections()
                proxy.restore()
                await until(watch, lambda s: s.revision >= rev)
                assert watch.stats.relists == 1
    assert seen, "the relist called no transform"
    assert {state for state, _ in seen} == {WatchState.STALE}
    assert max(age for _, age in seen) < 3.5  # (from the listing: over 4 s)
