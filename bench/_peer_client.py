"""One client library's side of the ``peers`` scenario, in a process of its own.

``python -m bench._peer_client CLIENT CASE ENDPOINT PARAMS_JSON`` runs one case with one
client (``etcdkit``, ``aetcd``, ``etcd3aio`` or ``python-etcd3``) and prints JSON lines on
stdout: for the watch cases a ``{"ready": ...}`` line once the watch is on (the scenario then
starts its writer process) and the figures last. Only the standard library is imported at
module level, so that this also runs under python-etcd3's own venv (it needs
protobuf <= 3.20, which cannot share the project's venv); each library is imported by its
adapter. Every adapter does the same work: the library's documented calls, nothing of another
library's, and each consumer reads the key and value of every entry or event it is handed.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

MAX_MESSAGE = 2**31 - 1  # the gRPC receive limit every adapter sets (a 100k-key answer > 4 MB)


def out(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def host_port(endpoint: str) -> tuple[str, int]:
    hostport = endpoint.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    return host, int(port)


def prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


def watch_responses(prefix: bytes, watch_id: int, first: int, count: int) -> list[Any]:
    """``count`` single-event watch responses (a put of one of 1,000 keys under ``prefix`` at
    revisions ``first``, ``first + 1``...), made and parsed the way a stream parses them."""
    from aetcd import rpc

    out = []
    for i in range(count):
        r = first + i
        kv = rpc.KeyValue(
            key=prefix + b"k%05d" % (i % 1000), value=b"%d" % r, create_revision=r,
            mod_revision=r, version=1,
        )  # fmt: skip
        msg = rpc.WatchResponse(
            header=rpc.ResponseHeader(revision=r), watch_id=watch_id, events=[rpc.Event(kv=kv)]
        )
        out.append(rpc.WatchResponse.FromString(msg.SerializeToString()))
    return out


async def take_until(w: Any, last: int) -> None:
    """Iterate an etcdkit watch (batches) or watch_prefix (snapshots) up to revision ``last``,
    reading every event's key and value."""
    async for item in w:
        for ev in getattr(item, "events", ()):
            kv = ev.kv
            len(kv.key) + len(kv.value)
        if item.revision >= last:
            return


async def drive(
    responses: list[Any], handle: Callable[[Any], Any], consumer: Any, is_async: bool
) -> float:
    """Hand ``responses`` to a library's stream handler one per loop turn (as its stream reader
    would) while ``consumer`` (a coroutine) takes what it delivers; CPU µs per response."""
    task = asyncio.create_task(consumer)
    await asyncio.sleep(0)
    gc.collect()
    cpu0 = time.process_time()
    for resp in responses:
        if is_async:
            await handle(resp)
        else:
            handle(resp)
        await asyncio.sleep(0)
    async with asyncio.timeout(60.0):
        await task
    return (time.process_time() - cpu0) / len(responses) * 1e6


# -- adapters: one per library --------------------------------------------------------------------


class Adapter:
    """The calls a case needs, each done the way the library's documentation shows."""

    async def open(self, endpoint: str) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def revision(self) -> int:
        raise NotImplementedError

    async def put(self, key: bytes, value: bytes) -> None:
        raise NotImplementedError

    async def get(self, key: bytes) -> bytes | None:
        raise NotImplementedError

    async def range_prefix(self, prefix: bytes) -> Any:
        """One unpaged read of every key under ``prefix``, as the library returns it."""
        raise NotImplementedError

    def entries(self, result: Any) -> list[tuple[bytes, bytes]]:
        """The ``(key, value)`` of every entry of a :meth:`range_prefix` result."""
        raise NotImplementedError

    async def watch(
        self, prefix: bytes, start: int, target: int, ready: Callable[[], None]
    ) -> tuple[int, int]:
        """Watch ``prefix`` from revision ``start``; call ``ready()`` once the watch is on;
        return ``(events, bytes of keys and values)`` once an event at ``target`` arrived."""
        raise NotImplementedError

    def lock(self, name: str, ttl: int) -> Any:
        """An object with ``async acquire()`` and ``async release()``."""
        raise NotImplementedError

    async def replay(self, prefix: bytes, count: int) -> dict[str, float]:
        """The library's own CPU µs per watch event (see :func:`replay_case`), by watch kind.
        Only etcdkit's and aetcd's adapters have it: it reaches inside the library."""
        raise NotImplementedError


class EtcdkitAdapter(Adapter):
    async def open(self, endpoint: str) -> None:
        from etcdkit import AsyncClient

        self.c = AsyncClient(endpoint, timeout=60.0)
        await self.c.connect()

    async def close(self) -> None:
        await self.c.close()

    async def revision(self) -> int:
        return await self.c.get_revision()

    async def put(self, key: bytes, value: bytes) -> None:
        await self.c.put(key, value)

    async def get(self, key: bytes) -> bytes | None:
        kv = await self.c.get(key)
        return None if kv is None else kv.value

    async def range_prefix(self, prefix: bytes) -> Any:
        return await self.c.range(prefix, prefix=True)

    def entries(self, result: Any) -> list[tuple[bytes, bytes]]:
        return [(kv.key, kv.value) for kv in result.kvs]

    async def get_prefix(self, prefix: bytes) -> Any:
        """The same keys through ``get_prefix``: typed ``KeyValue`` objects, as ``range()``
        returns them, read in pages at one revision (the next asked for while one is made)."""
        return await self.c.get_prefix(prefix)

    async def pages(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        """The same keys through ``get_prefix_pages`` (its default pages, all at one
        revision): no object made per key; each page is read while the next is on its way."""
        entries: list[tuple[bytes, bytes]] = []
        async for kvs, _ in self.c.get_prefix_pages(prefix):
            entries += [(kv.key, kv.value) for kv in kvs]
        return entries

    async def watch(
        self, prefix: bytes, start: int, target: int, ready: Callable[[], None]
    ) -> tuple[int, int]:
        events = nbytes = 0
        async with self.c.watch(prefix, prefix=True, start_revision=start) as w:
            ready()
            async for batch in w:
                for ev in batch.events:
                    kv = ev.kv
                    nbytes += len(kv.key) + len(kv.value)
                events += len(batch.events)
                if batch.revision >= target:
                    break
        return events, nbytes

    async def watch_prefix(
        self, prefix: bytes, updates: int, ready: Callable[[int], None]
    ) -> tuple[int, int]:
        """``watch_prefix`` (an exact snapshot of the prefix) until it holds the writer's
        last revision: ``(events applied, snapshots taken)``."""
        snapshots = 0
        async with self.c.watch_prefix(prefix) as watch:
            snap = await watch.synced(timeout=120.0)
            target = snap.revision + updates  # nobody but the writer writes meanwhile
            ready(snap.revision)
            async for snap in watch:
                snapshots += 1
                if snap.revision >= target:
                    break
            return watch.stats.events, snapshots

    def lock(self, name: str, ttl: int) -> Any:
        return self.c.lock(name, ttl=ttl, timeout=60)

    async def replay(self, prefix: bytes, count: int) -> dict[str, float]:
        # The stream reader's handler (``_dispatch``) and the ids of its watches (``_by_id``).
        hub: Any = self.c._core.watches
        out = {}
        for kind in ("watch", "watch_prefix"):
            known = set(hub._by_id.values())
            rev = await self.revision()
            if kind == "watch":
                ctx: Any = self.c.watch(prefix, prefix=True, start_revision=rev + 1)
            else:
                ctx = self.c.watch_prefix(prefix)
            async with ctx as w:
                if kind == "watch":
                    await w.start()
                else:
                    await w.synced(timeout=60.0)
                    rev = w.revision
                async with asyncio.timeout(30.0):
                    while not (ours := [i for i, sub in hub._by_id.items() if sub not in known]):  # noqa: ASYNC110 (its state, polled)
                        await asyncio.sleep(0.01)
                (wid,) = ours
                responses = watch_responses(prefix, wid, rev + 1, count)
                out[f"{kind}_us"] = await drive(
                    responses, lambda r: hub._dispatch(r, None), take_until(w, rev + count),
                    is_async=False,
                )  # fmt: skip
        return out


class AetcdAdapter(Adapter):
    async def open(self, endpoint: str) -> None:
        import aetcd

        host, port = host_port(endpoint)
        self.c = aetcd.Client(
            host,
            port,
            timeout=60,
            options={"grpc.max_receive_message_length": MAX_MESSAGE},
        )
        await self.c.connect()

    async def close(self) -> None:
        await self.c.close()

    async def revision(self) -> int:
        resp = await self.c.get_prefix(b"\0", keys_only=True)  # no such keys: just the header
        return int(resp.header.revision)

    async def put(self, key: bytes, value: bytes) -> None:
        await self.c.put(key, value)

    async def get(self, key: bytes) -> bytes | None:
        got = await self.c.get(key)
        return None if got is None else got.value

    async def range_prefix(self, prefix: bytes) -> Any:
        return await self.c.get_prefix(prefix)

    def entries(self, result: Any) -> list[tuple[bytes, bytes]]:
        return [(kv.key, kv.value) for kv in result]

    async def watch(
        self, prefix: bytes, start: int, target: int, ready: Callable[[], None]
    ) -> tuple[int, int]:
        events = nbytes = 0
        w = await self.c.watch_prefix(prefix, start_revision=start)  # returns once created
        ready()
        async for ev in w:
            kv = ev.kv
            nbytes += len(kv.key) + len(kv.value)
            events += 1
            if kv.mod_revision >= target:
                break
        await w.cancel()
        return events, nbytes

    def lock(self, name: str, ttl: int) -> Any:
        lock = self.c.lock(name.encode(), ttl=ttl)

        class Waiting:  # aetcd's acquire(timeout=...) returns False on timeout: make it raise
            async def acquire(self) -> None:
                if not await lock.acquire(timeout=60):
                    raise TimeoutError("aetcd lock not acquired within 60 s")

            async def release(self) -> None:
                await lock.release()

        return Waiting()

    async def replay(self, prefix: bytes, count: int) -> dict[str, float]:
        # The stream reader's handler (``_handle_response``) and its watches (``_callbacks``).
        watcher: Any = self.c._watcher
        known = set(watcher._callbacks)
        rev = await self.revision()
        w = await self.c.watch_prefix(prefix, start_revision=rev + 1)
        (wid,) = set(watcher._callbacks) - known
        last = rev + count

        async def consume() -> None:
            async for ev in w:
                kv = ev.kv
                len(kv.key) + len(kv.value)
                if kv.mod_revision >= last:
                    return

        responses = watch_responses(prefix, wid, rev + 1, count)
        try:
            return {
                "watch_us": await drive(
                    responses, watcher._handle_response, consume(), is_async=True
                )
            }
        finally:
            await w.cancel()


class Etcd3aioAdapter(Adapter):
    async def open(self, endpoint: str) -> None:
        import etcd3aio

        host, port = host_port(endpoint)
        self.c = etcd3aio.Etcd3Client([f"{host}:{port}"])
        # Its ConnectionManager takes no channel options; the 4 MB default refuses 100k keys.
        self.c._manager.grpc_options.append(("grpc.max_receive_message_length", MAX_MESSAGE))
        await self.c.connect()
        self.range_end = etcd3aio.prefix_range_end

    async def close(self) -> None:
        await self.c.close()

    async def revision(self) -> int:
        resp = await self.c.kv.get(b"\0", count_only=True)
        return int(resp.header.revision)

    async def put(self, key: bytes, value: bytes) -> None:
        await self.c.kv.put(key, value)

    async def get(self, key: bytes) -> bytes | None:
        resp = await self.c.kv.get(key)
        return resp.kvs[0].value if resp.kvs else None

    async def range_prefix(self, prefix: bytes) -> Any:
        return await self.c.kv.get(prefix, range_end=self.range_end(prefix))

    def entries(self, result: Any) -> list[tuple[bytes, bytes]]:
        return [(kv.key, kv.value) for kv in result.kvs]

    async def watch(
        self, prefix: bytes, start: int, target: int, ready: Callable[[], None]
    ) -> tuple[int, int]:
        events = nbytes = 0
        stream = self.c.watch.watch(prefix, range_end=self.range_end(prefix), start_revision=start)
        try:
            async for resp in stream:
                if resp.created:
                    ready()
                for ev in resp.events:
                    kv = ev.kv
                    nbytes += len(kv.key) + len(kv.value)
                events += len(resp.events)
                if resp.events and resp.events[-1].kv.mod_revision >= target:
                    break
        finally:
            await stream.aclose()
        return events, nbytes

    def lock(self, name: str, ttl: int) -> Any:
        return self.c.lock(name, ttl=ttl)


class PythonEtcd3Adapter(Adapter):
    """python-etcd3 is blocking (a thread per watch stream): its calls run on this process's
    only thread, which has nothing else to do meanwhile."""

    async def open(self, endpoint: str) -> None:
        import etcd3

        host, port = host_port(endpoint)
        self.c = etcd3.client(
            host, port, timeout=60, grpc_options=[("grpc.max_receive_message_length", MAX_MESSAGE)]
        )

    async def close(self) -> None:
        self.c.close()

    async def revision(self) -> int:
        return int(self.c.get_response(b"\0").header.revision)

    async def put(self, key: bytes, value: bytes) -> None:
        self.c.put(key, value)

    async def get(self, key: bytes) -> bytes | None:
        value, _meta = self.c.get(key)
        return value  # type: ignore[no-any-return]

    async def range_prefix(self, prefix: bytes) -> Any:
        return list(self.c.get_prefix(prefix))  # a generator over one Range's answer

    def entries(self, result: Any) -> list[tuple[bytes, bytes]]:
        return [(meta.key, value) for value, meta in result]

    async def watch(
        self, prefix: bytes, start: int, target: int, ready: Callable[[], None]
    ) -> tuple[int, int]:
        events = nbytes = 0
        it, cancel = self.c.watch_prefix(prefix, start_revision=start)  # returns once created
        ready()
        for ev in it:
            nbytes += len(ev.key) + len(ev.value)
            events += 1
            if ev.mod_revision >= target:
                break
        cancel()
        return events, nbytes

    def lock(self, name: str, ttl: int) -> Any:
        lock = self.c.lock(name, ttl=ttl)

        class Blocking:
            async def acquire(self) -> None:
                if not lock.acquire(timeout=60):
                    raise TimeoutError("python-etcd3 lock not acquired within 60 s")

            async def release(self) -> None:
                lock.release()

        return Blocking()


ADAPTERS: dict[str, Callable[[], Adapter]] = {
    "etcdkit": EtcdkitAdapter,
    "aetcd": AetcdAdapter,
    "etcd3aio": Etcd3aioAdapter,
    "python-etcd3": PythonEtcd3Adapter,
}


# -- cases ----------------------------------------------------------------------------------------


async def put_get(a: Adapter, p: dict[str, Any]) -> None:
    """``ops`` sequential puts, then ``ops`` sequential gets of the same keys (after a
    warm-up of each): every call's duration."""
    ops, warmup, prefix = int(p["ops"]), int(p["warmup"]), p["prefix"].encode()
    keys = [prefix + b"k%05d" % (i % 1000) for i in range(warmup + ops)]
    value = b"v" * int(p["value_bytes"])
    puts: list[float] = []
    gets: list[float] = []
    clock = time.perf_counter
    for i, key in enumerate(keys):
        t0 = clock()
        await a.put(key, value)
        if i >= warmup:
            puts.append(clock() - t0)
    for i, key in enumerate(keys):
        t0 = clock()
        got = await a.get(key)
        if i >= warmup:
            gets.append(clock() - t0)
        if got != value:
            raise RuntimeError(f"get {key!r} returned {got!r:.40}")
    out(put_s=puts, get_s=gets)


async def range_case(a: Adapter, p: dict[str, Any]) -> None:
    """One unpaged read of the whole prefix, then one pass over every key and value: the
    seconds of each, and the process's peak RSS."""
    await _read_whole(a, p, a.range_prefix, entries_of=a.entries)


async def range_get_prefix_case(a: Adapter, p: dict[str, Any]) -> None:
    """etcdkit's ``get_prefix`` (the same typed result as ``range()``, read in pages at one
    revision; no peer has it), measured as :func:`range_case` measures."""
    if not isinstance(a, EtcdkitAdapter):
        raise ValueError("get_prefix is measured for etcdkit only")
    await _read_whole(a, p, a.get_prefix, "get_prefix", a.entries)


async def _read_whole(
    a: Adapter,
    p: dict[str, Any],
    read: Callable[[bytes], Any],
    what: str = "range",
    entries_of: Callable[[Any], list[tuple[bytes, bytes]]] | None = None,
) -> None:
    """Time ``read(prefix)`` and then ``entries_of`` its result (the adapter's ``entries``;
    ``None``: the read returns the entries itself, so there is no pass after it), and check
    every key was read."""
    prefix, n = p["prefix"].encode(), int(p["n"])
    await a.get(prefix + b"warm-up")  # connected before the clock starts
    gc.collect()
    before = rss_mb()
    t0 = time.perf_counter()
    result = await read(prefix)
    t1 = time.perf_counter()
    entries = result if entries_of is None else entries_of(result)
    t2 = t1 if entries_of is None else time.perf_counter()
    if len(entries) != n or entries[-1][1] != b"%016d" % (n - 1):
        raise RuntimeError(f"{what} returned {len(entries)} entries, expected {n}")
    out(call_s=t1 - t0, read_s=t2 - t1, seconds=t2 - t0, rss_before_mb=before,
        peak_rss_mb=peak_rss_mb())  # fmt: skip


async def range_pages_case(a: Adapter, p: dict[str, Any]) -> None:
    """etcdkit's read of the same prefix with no object made per key (``get_prefix_pages``,
    pages at one revision; no peer has it), measured as :func:`range_case` measures: the
    seconds until every key and value was read, and the peak RSS. ``call_s`` is the same
    figure: the reading happens while the pages arrive."""
    if not isinstance(a, EtcdkitAdapter):
        raise ValueError("get_prefix_pages is etcdkit's only")
    await _read_whole(a, p, a.pages, "get_prefix_pages")


async def watch_case(a: Adapter, p: dict[str, Any]) -> None:
    """The library's own prefix watch, from now, until the event at the writer's last
    revision: CPU seconds from "ready" on, and when that event arrived (``time.monotonic``,
    one clock for every process of the machine)."""
    prefix, updates = p["prefix"].encode(), int(p["updates"])
    rev = await a.revision()
    cpu0 = 0.0

    def ready() -> None:
        nonlocal cpu0
        cpu0 = time.process_time()
        out(ready=True, revision=rev)

    events, nbytes = await a.watch(prefix, rev + 1, rev + updates, ready)
    t_done = time.monotonic()
    cpu = time.process_time() - cpu0
    if events != updates:
        raise RuntimeError(f"{events} events, expected {updates}")
    out(t_done=t_done, cpu_s=cpu, events=events, bytes=nbytes)


async def watch_prefix_case(a: Adapter, p: dict[str, Any]) -> None:
    """etcdkit's ``watch_prefix`` (no peer has one): as :func:`watch_case`, from its first
    snapshot on."""
    if not isinstance(a, EtcdkitAdapter):
        raise ValueError("watch_prefix is etcdkit's only")
    prefix, updates = p["prefix"].encode(), int(p["updates"])
    cpu0 = 0.0

    def ready(revision: int) -> None:
        nonlocal cpu0
        cpu0 = time.process_time()
        out(ready=True, revision=revision)

    events, snapshots = await a.watch_prefix(prefix, updates, ready)
    t_done = time.monotonic()
    cpu = time.process_time() - cpu0
    if events != updates:
        raise RuntimeError(f"{events} events applied, expected {updates}")
    out(t_done=t_done, cpu_s=cpu, events=events, snapshots=snapshots)


async def lock_case(a: Adapter, p: dict[str, Any]) -> None:
    """One of two contenders: ``rounds`` turns of acquire, hold ``hold_ms``, release, pause
    ``gap_ms``, printing when each acquire returned and each release was called."""
    lock = a.lock(p["name"], int(p["ttl"]))
    hold, gap = float(p["hold_ms"]) / 1000.0, float(p["gap_ms"]) / 1000.0
    deadline = time.monotonic() + float(p["seconds"])
    out(ready=True)
    for _ in range(int(p["rounds"])):
        if time.monotonic() > deadline:
            break
        await lock.acquire()
        out(acquired=time.monotonic())
        await asyncio.sleep(hold)
        out(released=time.monotonic())
        await lock.release()
        await asyncio.sleep(gap)


async def replay_case(a: Adapter, p: dict[str, Any]) -> None:
    """The library's own CPU per watch event, with no etcd or grpc in the measured part: the
    library's watch of a prefix is on (etcd confirmed it), then ``events`` single-event watch
    responses, made beforehand, are handed to the handler its stream reader calls, one per
    loop turn, while a consumer takes what the watch delivers (reading every key and value).
    etcdkit: ``watch()`` and ``watch_prefix``; aetcd: its ``watch_prefix``. The grpc stream's
    own cost per event (the same for every library) is what the ``watch`` case adds to this."""
    out(**await a.replay(p["prefix"].encode(), int(p["events"])))


CASES = {
    "put_get": put_get,
    "range": range_case,
    "range_pages": range_pages_case,
    "range_get_prefix": range_get_prefix_case,
    "watch": watch_case,
    "watch_prefix": watch_prefix_case,
    "lock": lock_case,
    "replay": replay_case,
}


async def main(client: str, case: str, endpoint: str, params: dict[str, Any]) -> None:
    adapter = ADAPTERS[client]()
    await adapter.open(endpoint)
    try:
        await CASES[case](adapter, params)
    finally:
        await adapter.close()


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit("usage: python -m bench._peer_client CLIENT CASE ENDPOINT PARAMS_JSON")
    _, client_, case_, endpoint_, params_ = sys.argv
    coro = main(client_, case_, endpoint_, json.loads(params_))
    prof_dir = os.environ.get("ETCDKIT_BENCH_PROFILE")  # bench/run.py --profile DIR
    if not prof_dir:
        asyncio.run(coro)
    else:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
        try:
            asyncio.run(coro)
        finally:
            prof.disable()
            os.makedirs(prof_dir, exist_ok=True)
            prof.dump_stats(os.path.join(prof_dir, f"peer-{client_}-{case_}-{os.getpid()}.pstats"))
