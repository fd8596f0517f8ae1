"""The core under every recipe (issue 12), on real etcd: consistent threaded reads, clean close,
calls in flight at close, wrong-context use, calls while etcd starts, txn and sessions."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

import etcdkit
from _helpers import etcdkit_tasks, fresh_client
from etcdkit import AsyncClient, Client, Compare, Op, SessionState
from etcdkit._types import prefix_range_end
from etcdkit.testing import EtcdServer

BOUND = 1.0  # everything in flight must end within this after close()


@pytest.fixture
def error_records() -> Iterator[list[logging.LogRecord]]:
    """Every ERROR (or worse) logged anywhere during the test."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.ERROR:
                records.append(record)

    handler = Keep()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield records
    finally:
        root.removeHandler(handler)


# -- one consistent object per read on the threaded face -----------------------------------------


def test_threaded_snapshot_is_never_torn(
    etcd_server: EtcdServer, etcd_prefix: str, no_leaked_threads: None
) -> None:
    seen: dict[int, dict[str, bytes]] = {}
    stop = threading.Event()
    with Client(etcd_server.endpoint) as reader, Client(etcd_server.endpoint) as writer:
        with reader.watch_prefix(etcd_prefix) as watch:
            watch.synced(timeout=5)

            def read_loop() -> None:
                while not stop.is_set():
                    snap = watch.snapshot
                    if snap is not None and snap.revision not in seen:
                        seen[snap.revision] = dict(snap.tree)

            t = threading.Thread(target=read_loop)
            t.start()
            try:
                for i in range(400):
                    writer.put(f"{etcd_prefix}k{i % 7}", str(i))
                    if i % 5 == 0:
                        writer.delete(f"{etcd_prefix}k{(i + 3) % 7}")
            finally:
                stop.set()
                t.join()
        assert len(seen) >= 200, f"saw only {len(seen)} distinct revisions"
        torn = []
        for rev, tree in seen.items():
            raw = writer.get_prefix(etcd_prefix, revision=rev)
            if tree != {kv.key.decode(): kv.value for kv in raw.kvs}:
                torn.append(rev)
        assert torn == [], f"{len(torn)} of {len(seen)} snapshots did not match their revision"


# -- clean close across event loops ----------------------------------------------------------------


def test_sequential_event_loops_leave_nothing_behind(
    etcd_server: EtcdServer, etcd_prefix: str, error_records: list[logging.LogRecord]
) -> None:
    async def one(i: int) -> None:
        async with AsyncClient(etcd_server.endpoint) as c:
            await c.put(f"{etcd_prefix}k{i}", "v")
            async with c.watch_prefix(etcd_prefix) as w:
                await w.synced(timeout=5)
                async with c.persistent_lease(f"{etcd_prefix}l{i}", "v", ttl=5) as lease:
                    await lease.registered(timeout=5)
                    await c.wait_for(f"{etcd_prefix}l{i}", timeout=5)
        me = asyncio.current_task()
        left = [t for t in asyncio.all_tasks() if t is not me]
        assert left == [], f"tasks left after close: {left}"

    threads_before = {t.ident for t in threading.enumerate()}
    for i in range(20):
        asyncio.run(one(i))
    messages = [r.getMessage()[:200] for r in error_records]
    assert messages == []
    # grpc.aio's process-wide poller thread ("..._poll_wrapper") is grpc's, not ours: after a
    # bidirectional stream (the lease keepalive stream here) grpc keeps it running once the
    # channel closed (grpc/grpc#34364, grpcio 1.85); it is started once per process and is
    # not counted. Every other thread that appeared is.
    left = [
        t.name
        for t in threading.enumerate()
        if t.ident not in threads_before and not t.name.endswith("(_poll_wrapper)")
    ]
    assert left == []


# -- close ends everything in flight -------------------------------------------------------------


async def test_async_close_ends_everything_in_flight(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    server = etcd_server_factory()
    client = AsyncClient(server.endpoint, timeout=None)
    await client.connect()
    await client.put("/inflight/x", "1")
    watch = client.watch_prefix("/inflight/")
    await watch.synced(timeout=5)
    lease = client.persistent_lease("/inflight/lease", "v", ttl=5)
    await lease.registered(timeout=5)
    raw = client.watch("/inflight/", prefix=True)
    await raw.start()
    granted = await client.grant(30)
    kept = client.keep_alive(granted.id, ttl=30)
    kept.start()
    server.pause()  # every unary call now hangs (no timeout on this client)

    async def iterate(it: Any = watch) -> None:
        async for _ in it:
            pass

    work = [
        asyncio.create_task(client.get("/inflight/x")),
        asyncio.create_task(client.put("/inflight/y", "v")),
        asyncio.create_task(client.wait_for("/inflight/never")),
        asyncio.create_task(client.wait_for("/inflight/never2", timeout=30)),
        asyncio.create_task(iterate()),
        # (the raw streams end at once too, not after the lease's revoke, 2 s with etcd hung)
        asyncio.create_task(iterate(raw)),
        asyncio.create_task(iterate(kept)),
        asyncio.create_task(lease.wait_state(etcdkit.LeaseState.LOST)),
        asyncio.create_task(client.get_prefix("/inflight/")),
    ]
    await asyncio.sleep(0.3)
    try:
        t0 = time.monotonic()
        closer = asyncio.create_task(client.close())
        _done, pending = await asyncio.wait(work, timeout=BOUND)
        assert pending == set(), f"still pending after {BOUND} s: {pending}"
        for t in work:
            exc = t.exception()
            assert isinstance(exc, etcdkit.ClosedError), f"{t!r} ended with {exc!r}"
        assert time.monotonic() - t0 < BOUND + 0.5
        await asyncio.wait_for(closer, 5)  # the revoke of the lease is bounded too
    finally:
        server.resume()
    assert etcdkit_tasks() == []


def test_threaded_close_ends_every_busy_thread(
    etcd_server: EtcdServer, etcd_prefix: str, no_leaked_threads: None
) -> None:
    client = Client(etcd_server.endpoint)
    client.put(etcd_prefix + "x", "1")
    watch = client.watch_prefix(etcd_prefix)
    watch.synced(timeout=5)
    lease = client.persistent_lease(etcd_prefix + "lease", "v", ttl=5)
    lease.registered(timeout=5)
    started = threading.Barrier(9)

    def loop_get() -> None:
        started.wait()
        while True:
            client.get(etcd_prefix + "x")

    def one(fn: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            started.wait()
            fn()

        return run

    def iterate() -> None:
        started.wait()
        for _ in watch:
            pass

    jobs = [
        loop_get,
        loop_get,
        one(lambda: client.wait_for(etcd_prefix + "never")),
        one(lambda: client.wait_for(etcd_prefix + "never", timeout=30)),
        iterate,
        one(lambda: lease.wait_state(etcdkit.LeaseState.LOST)),
        loop_get,
        one(lambda: client.wait_for(etcd_prefix + "never", exists=True)),
    ]
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(job) for job in jobs]
        started.wait()
        time.sleep(0.3)
        t0 = time.monotonic()
        client.close()
        _done, pending = concurrent.futures.wait(futures, timeout=BOUND)
        took = time.monotonic() - t0
        assert not pending, f"{len(pending)} of {len(futures)} threads still blocked"
        for f in futures:
            exc = f.exception()
            assert isinstance(exc, etcdkit.ClosedError), f"a thread ended with {exc!r}"
        assert took < BOUND + 1.0


# -- wrong context ---------------------------------------------------------------------------------


def test_async_client_from_another_loop_is_refused(etcd_server: EtcdServer) -> None:
    loop1 = asyncio.new_event_loop()
    try:
        client = AsyncClient(etcd_server.endpoint)
        loop1.run_until_complete(client.connect())
        with pytest.raises(etcdkit.WrongContextError, match="another event loop"):
            asyncio.run(client.get("/k"))
        with pytest.raises(etcdkit.WrongContextError):
            asyncio.run(client.wait_for("/k", timeout=1))
        loop1.run_until_complete(client.close())
    finally:
        loop1.close()


async def test_blocking_client_inside_a_loop_is_refused(etcd_server: EtcdServer) -> None:
    client = await asyncio.to_thread(Client, etcd_server.endpoint)
    try:
        t0 = time.monotonic()
        with pytest.raises(etcdkit.WrongContextError, match="AsyncClient"):
            client.wait_for("/k", timeout=1)
        with pytest.raises(etcdkit.WrongContextError):
            client.get("/k")
        assert time.monotonic() - t0 < 0.5  # refused, not blocking the loop
    finally:
        await asyncio.to_thread(client.close)


async def test_blocking_close_and_waits_inside_a_loop_are_refused_with_no_harm(
    etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    """``close()`` and ``SyncSession.wait_lost()`` inside a running loop are refused at once
    and change nothing: the client still works, and a later close (in a thread) revokes."""
    client = await asyncio.to_thread(Client, etcd_server.endpoint)
    try:
        session = await asyncio.to_thread(client.session, 30)
        t0 = time.monotonic()
        with pytest.raises(etcdkit.WrongContextError):
            session.wait_lost(timeout=2)  # (it used to block the loop for those 2 s)
        with pytest.raises(etcdkit.WrongContextError):
            client.close()  # (it used to leave the client half-closed)
        assert time.monotonic() - t0 < 0.5  # refused, not blocking the loop
        assert not await asyncio.to_thread(lambda: client.closed)
        await asyncio.to_thread(client.put, etcd_prefix + "still", "open")
        lease = await asyncio.to_thread(lambda: session.lease_id)
    finally:
        await asyncio.to_thread(client.close)
    assert await asyncio.to_thread(lambda: client.closed)
    async with fresh_client(etcd_server.endpoint) as check:
        assert lease not in await check.leases()  # the later close revoked it


def test_blocking_close_from_a_listener_is_refused_with_no_harm(
    etcd_server: EtcdServer, etcd_prefix: str, no_leaked_threads: None
) -> None:
    """``close()`` from a callback on the client's loop thread is refused, and leaves the
    client as it was: another thread's call is not ended, and a close from a thread works."""
    client = Client(etcd_server.endpoint)
    refused: list[BaseException] = []

    def on_state(state: etcdkit.LeaseState) -> None:
        try:
            client.close()
        except etcdkit.WrongContextError as exc:
            refused.append(exc)

    with client.persistent_lease(etcd_prefix + "k", "v", ttl=5) as lease:
        lease.add_listener(on_state)
        lease.registered(timeout=5)
        lease.set_value("v2")
        lease.synced(timeout=5)
    assert refused
    assert not client.closed
    client.put(etcd_prefix + "after", "ok")  # still usable
    client.close()
    assert client.closed


# -- calls while etcd is starting ------------------------------------------------------------------


async def test_calls_made_while_etcd_starts_succeed(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    server = etcd_server_factory()
    server.stop()
    async with fresh_client(server.endpoint, timeout=10) as client:
        server.start(wait=False)  # and call at once
        t0 = time.monotonic()
        rev = await client.put("/starting/k", "v")
        kv = await client.get("/starting/k")
        assert kv is not None
        assert kv.mod_revision == rev
        assert time.monotonic() - t0 < 10


# -- txn and sessions, both faces ----------------------------------------------------------------


async def test_txn_compare_and_swap(etcd: AsyncClient, etcd_prefix: str) -> None:
    k = etcd_prefix + "cas"
    created = await etcd.txn(
        [Compare.version(k, "==", 0)], [Op.put(k, "v1"), Op.get(k)], [Op.get(k)]
    )
    assert created.succeeded
    put, got = created.responses
    assert isinstance(put, etcdkit.PutResult)
    assert put.revision == created.revision
    assert isinstance(got, etcdkit.RangeResult)
    assert got.kvs[0].value == b"v1"
    again = await etcd.txn([Compare.version(k, "==", 0)], [Op.put(k, "nope")], [Op.get(k)])
    assert not again.succeeded
    only = again.responses[0]
    assert isinstance(only, etcdkit.RangeResult)
    assert only.kvs[0].value == b"v1"
    kv = got.kvs[0]
    swapped = await etcd.txn(
        [Compare.value(k, "==", "v1"), Compare.mod_revision(k, "==", kv.mod_revision)],
        [
            Op.put(k, "v2", prev_kv=True),
            Op.range(etcd_prefix, prefix=True),
            Op.delete_prefix(etcd_prefix + "x"),
        ],
    )
    assert swapped.succeeded
    put2, listing, deleted = swapped.responses
    assert isinstance(put2, etcdkit.PutResult)
    assert put2.prev_kv is not None
    assert put2.prev_kv.value == b"v1"
    assert isinstance(listing, etcdkit.RangeResult)
    assert [x.value for x in listing.kvs] == [b"v2"]
    assert isinstance(deleted, etcdkit.DeleteResult)
    assert deleted.deleted == 0
    gone = await etcd.txn([Compare.create_revision(k, ">", 0)], [Op.delete(k, prev_kv=True)])
    assert gone.succeeded
    d = gone.responses[0]
    assert isinstance(d, etcdkit.DeleteResult)
    assert d.deleted == 1
    assert d.prev_kvs[0].value == b"v2"


async def test_txn_bad_input_is_refused_before_io(etcd: AsyncClient) -> None:
    with pytest.raises(ValueError, match="compare op"):
        Compare.value("/k", "=", "v")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Compare"):
        await etcd.txn(["/k"], [])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="Op"):
        await etcd.txn([], [("put", "/k", "v")])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="list"):
        await etcd.txn(Compare.version("/k", "==", 0))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="lease"):
        Op.put("/k", "v", lease="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must not be empty"):
        Op.get("")


def test_txn_threaded(etcd_sync: Client, etcd_prefix: str) -> None:
    k = etcd_prefix + "t"
    r = etcd_sync.txn([Compare.version(k, "==", 0)], [Op.put(k, "v")])
    assert r.succeeded
    assert not etcd_sync.txn([Compare.version(k, "==", 0)], [Op.put(k, "w")]).succeeded


async def test_session_lifecycle(etcd: AsyncClient, etcd_prefix: str) -> None:
    async with etcd.session(ttl=5) as session:
        assert session.state is SessionState.ALIVE
        assert session.lease_id
        assert session.ttl >= 5
        await etcd.put(etcd_prefix + "s", "v", lease=session.lease_id)
        assert 0 < await etcd.time_to_live(session.lease_id) <= session.ttl
        assert not session.lost.is_set()
    assert session.state in (SessionState.CLOSED,)
    assert session.lost.is_set()
    assert await etcd.get(etcd_prefix + "s") is None  # revoked with its key
    s2 = await etcd.session(5)
    try:
        await etcd.revoke(s2.lease_id)
        assert await s2.wait_lost(timeout=5) is SessionState.LOST
    finally:
        await s2.close()
    assert s2.state is SessionState.CLOSED
    with pytest.raises(ValueError, match="ttl"):
        etcd.session(0)
    with pytest.raises(TypeError, match="ttl"):
        etcd.session(1.5)


async def test_session_lost_when_etcd_is_gone_past_its_ttl(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    server = etcd_server_factory()
    async with fresh_client(server.endpoint, timeout=1) as client:
        session = await client.session(2)
        states: list[SessionState] = []
        session.add_listener(states.append)
        server.pause()
        try:
            assert await session.wait_lost(timeout=10) is SessionState.LOST
        finally:
            server.resume()
        assert states[:2] == [SessionState.SUSPENDED, SessionState.LOST]
        await session.close()


def test_session_threaded(etcd_sync: Client, etcd_prefix: str) -> None:
    with etcd_sync.session(5) as session:
        assert session.state is SessionState.ALIVE
        etcd_sync.put(etcd_prefix + "s", "v", lease=session.lease_id)
        etcd_sync.revoke(session.lease_id)
        assert session.wait_lost(timeout=5) is SessionState.LOST
        assert session.lost.is_set()
    assert session.state in (SessionState.CLOSED,)


async def test_closing_the_client_revokes_its_sessions(etcd_server: EtcdServer) -> None:
    async with fresh_client(etcd_server.endpoint) as client:
        session = await client.session(30)
        lease_id = session.lease_id
    assert session.state is SessionState.CLOSED
    async with fresh_client(etcd_server.endpoint) as other:
        assert await other.time_to_live(lease_id) == -1


async def test_listing_pages_by_size_at_one_revision(etcd: AsyncClient, etcd_prefix: str) -> None:
    for i in range(3000):
        await etcd.put(f"{etcd_prefix}k{i:05d}", "v" * 10)
    mid = await etcd.get_revision()
    await etcd.put(f"{etcd_prefix}late", "x")  # after the listing's revision: not in it
    at_mid = await etcd.get_prefix(etcd_prefix, revision=mid)
    assert len(at_mid.kvs) == 3000
    pages = etcd.core.kv.pages(etcd_prefix, revision=mid, page_size=700)
    seen = []
    async with contextlib.aclosing(pages):
        async for page, rev, header in pages:
            assert rev == mid <= header.revision
            seen.extend(page)
    assert seen == at_mid.kvs
    # leaving early cancels the page fetched ahead: nothing keeps running
    pages = etcd.core.kv.pages(etcd_prefix, page_size=100)
    async with contextlib.aclosing(pages):
        async for _page, _rev, _header in pages:
            break
    await asyncio.sleep(0)
    assert [t for t in asyncio.all_tasks() if "Range" in repr(t.get_coro())] == []


Listed = tuple[bytes, bytes, int]  # a listed key: key, value, mod revision


async def _listed_pages(
    etcd: AsyncClient,
    prefix: str,
    between: Callable[[list[Listed], list[int]], Awaitable[None]],
) -> tuple[list[int], list[Listed], set[int]]:
    """The pages of ``get_prefix_pages(prefix)``: their sizes, their keys, the revisions they
    said; ``between(seen, sizes)`` writes after each page (after the listing's revision, so in
    none of its pages)."""
    sizes: list[int] = []
    seen: list[Listed] = []
    revisions: set[int] = set()
    async for kvs, rev in etcd.get_prefix_pages(prefix):
        sizes.append(len(kvs))
        seen.extend((kv.key, kv.value, kv.mod_revision) for kv in kvs)
        revisions.add(rev)
        await between(seen, sizes)
    return sizes, seen, revisions


def _key_shapes(prefix: str) -> dict[str, list[bytes]]:
    """Keys a listing's guessed ranges (KeySpace) must cover whatever they guess."""
    import random

    rnd = random.Random(7)
    p = prefix.encode()
    return {
        "decimal": [p + b"k%05d" % i for i in range(400)],  # dense blocks between gaps
        "hex": [p + b"%040x" % rnd.getrandbits(160) for _ in range(400)],  # a gap in 9..a
        "bytes": [p + rnd.randbytes(rnd.randint(1, 12)) for _ in range(400)],  # \0, \xff
        "clusters": [p + b"a/%04d" % i for i in range(200)]
        + [p + b"z/%04d" % i for i in range(200)],
        "shared": [p + b"x" * 70 + b"%04d" % i for i in range(400)],  # past the widest number
        "ends": [p + bytes([i]) for i in range(256)] + [p + b"\xff" * n for n in range(2, 40)],
    }


@pytest.mark.parametrize("guesses", ["real", "on keys"])
@pytest.mark.parametrize("shape", ["decimal", "hex", "bytes", "clusters", "shared", "ends"])
async def test_listing_pages_from_guessed_ranges_cover_every_key_once(
    etcd: AsyncClient,
    etcd_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    shape: str,
    guesses: str,
) -> None:
    # Pages read from guessed ranges (KeySpace: etcd counts a range's every key, so a page
    # asked for to the end of the prefix costs a walk of all keys left). Scaled down so that
    # every page after the second is guessed: whatever the keys, the pages hold each key of
    # the listing's revision once, in order, in the pages the plan sizes, and most pages take
    # one request.
    from etcdkit._wire import kv as kv_module

    monkeypatch.setattr(kv_module, "FIRST_PAGE_KEYS", 10)
    monkeypatch.setattr(kv_module, "LAST_PAGE_KEYS", 4)
    keys = sorted(set(_key_shapes(etcd_prefix)[shape]))

    async def load() -> None:  # (afresh: a listing writes between its pages)
        await etcd.delete_range(etcd_prefix, prefix=True)
        for i in range(0, len(keys), 100):
            batch = keys[i : i + 100]
            await etcd.txn(success=[Op.put(k, b"%d" % n) for n, k in enumerate(batch)])

    end = prefix_range_end(etcd_prefix.encode())
    requests: list[bytes] = []
    read = etcd.core.kv._read

    def counted(what: str, service: str, method: str, req: Any) -> Any:
        if method == "Range":
            requests.append(req.range_end)
        return read(what, service, method, req)

    async def between(seen: list[Listed], sizes: list[int]) -> None:
        await etcd.put(seen[-1][0], "changed")
        await etcd.put(seen[0][0] + b"\0new", "new")
        await etcd.delete(seen[-1][0])

    async def listing() -> tuple[list[int], list[Listed], set[int]]:
        return await _listed_pages(etcd, etcd_prefix, between)

    monkeypatch.setattr(kv_module, "GUESS_REST_KEYS", 10**9)  # no guess: the plan alone
    await load()
    plain, _, _ = await listing()
    await load()
    want = await etcd.get_prefix(etcd_prefix)
    monkeypatch.setattr(kv_module, "GUESS_REST_KEYS", 0)
    monkeypatch.setattr(etcd.core.kv, "_read", counted)
    if guesses == "on keys":
        # range ends a guess could give, made to land where a slip shows: on a key, just
        # after one, on the start (an empty range) or far on
        import random

        rnd = random.Random(shape)

        def on_keys(space: Any, start: bytes, want: int, stop: bytes, misses: int = 0) -> bytes:
            after = [k for k in keys if k > start][: want * 2] or [stop]
            pick = rnd.choice(after)
            pick = rnd.choice([pick, pick + b"\0", start + b"\0", after[-1]])
            return pick if start < pick < stop else stop

        monkeypatch.setattr(kv_module.KeySpace, "guess", on_keys)
    sizes, seen, revisions = await listing()
    assert revisions == {want.revision}
    assert seen == [(kv.key, kv.value, kv.mod_revision) for kv in want.kvs]
    assert sizes == plain
    guessed = [stop for stop in requests if stop != end]
    if shape != "shared":  # (keys alike past the widest number read: nothing to guess from)
        assert guessed
    assert len(requests) <= 2 * len(sizes) + 2 * kv_module.GUESS_TRIES


async def test_a_listing_from_guessed_ranges_compacted_midway_raises_compacted_error(
    etcd: AsyncClient, etcd_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A guessed range is read at the listing's revision like any page: compacted past it,
    # the listing raises CompactedError (what watch_prefix relists on), never a short page.
    from etcdkit._wire import kv as kv_module

    monkeypatch.setattr(kv_module, "FIRST_PAGE_KEYS", 10)
    monkeypatch.setattr(kv_module, "LAST_PAGE_KEYS", 4)
    monkeypatch.setattr(kv_module, "GUESS_REST_KEYS", 0)
    for start in range(0, 300, 100):
        await etcd.txn(
            success=[Op.put(f"{etcd_prefix}{i:04x}", "v") for i in range(start, start + 100)]
        )
    seen = 0

    async def listing() -> None:
        nonlocal seen
        async for kvs, _rev in etcd.get_prefix_pages(etcd_prefix):
            seen += len(kvs)
            if seen >= 30:  # the pages from guessed ranges start with the third
                await etcd.put(etcd_prefix + "zz", "after")
                await etcd.compact(await etcd.get_revision())

    with pytest.raises(etcdkit.CompactedError):
        await listing()
    assert 30 <= seen < 300


async def test_listing_pages_grow_then_shrink_to_the_end(
    etcd: AsyncClient, etcd_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The default page plan, at a small scale: pages double from the first, and once etcd's
    # count says fewer keys are left, each takes half of the rest (down to the last page's
    # size, and no smaller page after it), so the caller's work on the last page, which overlaps
    # no read, stays small.
    monkeypatch.setattr("etcdkit._wire.kv.FIRST_PAGE_KEYS", 10)
    monkeypatch.setattr("etcdkit._wire.kv.LAST_PAGE_KEYS", 4)
    await etcd.txn(success=[Op.put(f"{etcd_prefix}k{i:03d}", str(i)) for i in range(100)])
    await etcd.txn(success=[Op.put(f"{etcd_prefix}k{i:03d}", str(i)) for i in range(100, 197)])
    want = await etcd.get_prefix(etcd_prefix)

    async def between(seen: list[Listed], sizes: list[int]) -> None:
        await etcd.put(f"{etcd_prefix}k{len(seen) - 1:03d}", "changed")
        await etcd.put(f"{etcd_prefix}k999-{len(sizes)}", "new")

    sizes, seen, revisions = await _listed_pages(etcd, etcd_prefix, between)
    assert sizes == [10, 20, 40, 64, 32, 16, 8, 7]  # not ..., 8, 4, 3
    assert revisions == {want.revision}
    assert seen == [(kv.key, kv.value, kv.mod_revision) for kv in want.kvs]
