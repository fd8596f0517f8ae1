"""The processes of ``python -m bench.paired``, one per side and role, each run with its side's
``src`` first on ``PYTHONPATH``. They use only what the compared revisions share: the public
``AsyncClient``, ``cluster(root)`` with ``membership``/``register``/``deregister``/
``watch_members``, and ``lock(name)``; nothing else of the bench is imported.

- ``observe ENDPOINT ROOT``: prints ``ready``, then ``+ID T`` / ``-ID T`` when a member appears
  in / leaves the cluster view (``T``: ``time.monotonic()``, one clock for the machine).
- ``serve ENDPOINT ROOT``: prints ``ready``, then answers each command on stdin with one JSON
  line: ``register ID`` -> ``{"t0": .., "t1": ..}`` (before ``register()`` was called, when it
  returned), ``deregister ID`` -> ``{}``, ``lock NAME`` -> ``{"acquire_s": .., "release_s": ..}``
  (an uncontended acquire and its release), ``quit``.
- ``follow ENDPOINT PREFIX``: ``watch_prefix(PREFIX)``; prints ``ready`` once synced, then,
  when the key ``PREFIX + "~done"`` is in a snapshot, one JSON line: ``cpu_s`` (this
  process's CPU seconds from ready on), ``events`` and ``snapshots``.
- ``live ENDPOINT PREFIX``: reads a count N from stdin, opens N ``watch_prefix`` on
  ``PREFIX + "w%05d/"`` (one client) and prints ``{"seconds": ..}`` once every one is
  ``synced()`` (listed, and its watch confirmed by etcd).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from etcdkit import AsyncClient

TTL = 10


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
                await lock.release()
                answer = {"acquire_s": t1 - t0, "release_s": time.monotonic() - t1}
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


ROLES = {"observe": observe, "serve": serve, "follow": follow, "live": live}

if __name__ == "__main__":
    role, endpoint_, root_ = sys.argv[1:4]
    asyncio.run(ROLES[role](endpoint_, root_))
