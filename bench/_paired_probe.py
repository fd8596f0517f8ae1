"""The processes of ``python -m bench.paired``, one per side and role, each run with its side's
``src`` first on ``PYTHONPATH``. They use only what the compared revisions share: the public
``AsyncClient``, ``cluster(root)`` with ``membership``/``register``/``deregister``/
``watch_members``, and ``lock(name)``; nothing else of the bench is imported.

- ``observe ENDPOINT ROOT``: prints ``ready``, then ``+ID T`` / ``-ID T`` when a member appears
  in / leaves the cluster view (``T``: ``time.monotonic()``, one clock for the machine).
- ``serve ENDPOINT ROOT``: prints ``ready``, then answers each command on stdin with one JSON
  line: ``register ID`` -> ``{"t0": .., "t1": ..}`` (before ``register()`` was called, when it
  returned), ``deregister ID`` -> ``{}``, ``lock NAME`` -> ``{"acquire_s": .., "release_s": ..}``
  (an uncontended acquire and its release), ``kv KEY`` -> ``{"put_s": .., "get_s": ..}`` (a
  plain put of a 16-byte value, then a plain get of it), ``quit``.
- ``follow ENDPOINT PREFIX``: ``watch_prefix(PREFIX)``; prints ``ready`` once synced, then,
  when the key ``PREFIX + "~done"`` is in a snapshot, one JSON line: ``cpu_s`` (this
  process's CPU seconds from ready on), ``events`` and ``snapshots``.
- ``live ENDPOINT PREFIX``: reads a count N from stdin, opens N ``watch_prefix`` on
  ``PREFIX + "w%05d/"`` (one client) and prints ``{"seconds": ..}`` once every one is
  ``synced()`` (listed, and its watch confirmed by etcd).
- ``replay ENDPOINT PREFIX``: reads a count N from stdin; prints ``ready``, then
  ``{"watch_prefix_us": .., "watch_us": ..}``: this process's CPU microseconds per event when
  N single-event watch responses are handed to the client's watch stream reader, one per loop
  turn, for a ``watch_prefix(PREFIX)`` and for a ``watch(PREFIX, prefix=True)`` (when the
  revision has one). The one role that reaches inside the client (its stream reader).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from etcdkit import AsyncClient

TTL = 10
VALUE = b"%016d" % 42  # the peers scenario's value size
LOCK_HOLD_S = 0.002  # how long the lock command holds (not timed)


async def observe(endpoint: str, root: str) -> None:
    async with AsyncClient(endpoint) as etcd, etcd.cluster(root, ttl=TTL) as cluster:
        print("ready", flush=True)
        seen: set[str] = set()
        async for members in cluster.watch_members():
            t = time.monotonic()
            now = {m.id for m in members}
            for new in sorted(now - seen):
                print(f"+{new} {t:.9f}", flush=True)
            for gone in sorted(seen - now):
                print(f"-{gone} {t:.9f}", flush=True)
            seen = now


async def serve(endpoint: str, root: str) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with AsyncClient(endpoint) as etcd, etcd.cluster(root, ttl=TTL) as cluster:
        members: dict[str, Any] = {}
        print("ready", flush=True)
        while line := (await reader.readline()).decode().split():
            command, arg = line[0], line[1] if len(line) > 1 else ""
            answer: dict[str, float] = {}
            if command == "register":
                m = members[arg] = cluster.membership("10.0.0.1:80", id=arg)
                answer["t0"] = time.monotonic()
                await m.register(timeout=10.0)
                answer["t1"] = time.monotonic()
            elif command == "deregister":
                await members.pop(arg).deregister(timeout=10.0)
            elif command == "lock":
                lock = etcd.lock(arg, ttl=TTL)
                t0 = time.monotonic()
                await lock.acquire()
                t1 = time.monotonic()
                # held as a short critical section is (a hold released in the turn it began
                # never starts its watch of its key: not what a lock is for)
                await asyncio.sleep(LOCK_HOLD_S)
                t2 = time.monotonic()
                await lock.release()
                answer = {"acquire_s": t1 - t0, "release_s": time.monotonic() - t2}
            elif command == "kv":
                t0 = time.monotonic()
                await etcd.put(arg, VALUE)
                t1 = time.monotonic()
                await etcd.get(arg)
                answer = {"put_s": t1 - t0, "get_s": time.monotonic() - t1}
            elif command == "quit":
                break
            else:
                raise SystemExit(f"paired probe: unknown command {command!r}")
            print(json.dumps(answer), flush=True)


async def follow(endpoint: str, prefix: str) -> None:
    done = prefix + "~done"
    async with AsyncClient(endpoint) as etcd, etcd.watch_prefix(prefix) as watch:
        await watch.synced(timeout=60.0)
        print("ready", flush=True)
        cpu0 = time.process_time()
        snapshots = 0
        async for snap in watch:
            snapshots += 1
            if done in snap.tree:
                break
        cpu = time.process_time() - cpu0
        print(json.dumps({"cpu_s": cpu, "events": watch.stats.events, "snapshots": snapshots}))


async def live(endpoint: str, prefix: str) -> None:
    count = int(sys.stdin.readline())
    async with AsyncClient(endpoint, timeout=60.0) as etcd:
        await etcd.get_revision()  # connected before the clock starts
        print("ready", flush=True)
        t0 = time.monotonic()
        opened = [etcd.watch_prefix(f"{prefix}w{i:05d}/") for i in range(count)]
        try:
            await asyncio.gather(*(w.synced(timeout=120.0) for w in opened))
            seconds = time.monotonic() - t0
        finally:
            await asyncio.gather(*(w.aclose() for w in opened))
    print(json.dumps({"seconds": seconds}), flush=True)


async def replay(endpoint: str, prefix: str) -> None:
    """The client's own CPU per watch event, without etcd's or grpc's: N single-event watch
    responses, made and parsed beforehand, handed to the client's watch stream reader one per
    loop turn (as the stream delivers them), the consumer taking every batch or snapshot."""
    count = int(sys.stdin.readline())
    async with AsyncClient(endpoint, timeout=60.0) as etcd:
        await etcd.put(prefix + "k00000", "0")
        print("ready", flush=True)
        out = {"watch_prefix_us": await _replay(etcd, prefix, count, prefix_watch=True)}
        if hasattr(etcd, "watch"):  # the raw watch (issue 22 on)
            out["watch_us"] = await _replay(etcd, prefix, count, prefix_watch=False)
    print(json.dumps(out), flush=True)


async def _replay(etcd: AsyncClient, prefix: str, count: int, *, prefix_watch: bool) -> float:
    # The one place this reaches inside the client: its watch stream's reader (``_dispatch``)
    # and the watch ids it knows (``_by_id``), the same in every revision compared so far.
    from aetcd import rpc

    hub: Any = etcd._core.watches
    known = set(hub._by_id.values())
    rev0 = await etcd.get_revision()
    raw = prefix.encode()
    ctx: Any = (
        etcd.watch_prefix(prefix)
        if prefix_watch
        else etcd.watch(prefix, prefix=True, start_revision=rev0 + 1)
    )
    async with ctx as w:
        if prefix_watch:
            await w.synced(timeout=60.0)
        else:
            await w.start()
        async with asyncio.timeout(30.0):
            while not (ours := [i for i, sub in hub._by_id.items() if sub not in known]):  # noqa: ASYNC110 (no event to wait on: the client's state, polled)
                await asyncio.sleep(0.01)  # until etcd confirmed this watch
        (wid,) = ours
        responses = []
        for i in range(count):
            r = rev0 + 1 + i
            kv = rpc.KeyValue(
                key=raw + b"k%05d" % (i % 1000), value=b"%d" % r, create_revision=r,
                mod_revision=r, version=1,
            )  # fmt: skip
            msg = rpc.WatchResponse(
                header=rpc.ResponseHeader(revision=r), watch_id=wid, events=[rpc.Event(kv=kv)]
            )
            responses.append(rpc.WatchResponse.FromString(msg.SerializeToString()))
        last = rev0 + count

        async def consume() -> None:
            async for item in w:
                if item.revision >= last:
                    return

        consumer = asyncio.create_task(consume())
        await asyncio.sleep(0)
        dispatch = hub._dispatch
        cpu0 = time.process_time()
        for resp in responses:
            dispatch(resp, None)  # (the backoff is only reset by a "created" response)
            await asyncio.sleep(0)
        async with asyncio.timeout(30.0):
            await consumer
        cpu = time.process_time() - cpu0
    return cpu / count * 1e6


ROLES = {"observe": observe, "serve": serve, "follow": follow, "live": live, "replay": replay}

if __name__ == "__main__":
    role, endpoint_, root_ = sys.argv[1:4]
    asyncio.run(ROLES[role](endpoint_, root_))
