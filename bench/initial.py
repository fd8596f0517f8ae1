"""Scenario ``initial``: the first sync of ``watch_prefix`` on a big tree, time and memory.

The job's process preloads N small keys (``k0000042`` = ``42``), times a bare paged listing of
them on the raw KV stub (pages of 2,000 read at one revision, nothing kept: the floor), then
starts a fresh process (``python -m bench.initial ENDPOINT N``) that opens
``watch_prefix(prefix, transform)`` and waits for ``synced()``. That process reports the
seconds to the first snapshot and its own RSS before and its peak (``ru_maxrss``), so the
peak is the sync's alone (plus the interpreter and imports, shown as ``rss_before_mb``).
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from typing import Any

from aetcd import rpc

from bench._common import (
    Env,
    Job,
    key_of,
    peak_rss_mb,
    preload,
    progress,
    result,
    rss_mb,
    run_async,
    run_probe,
    transform,
)
from etcdkit import AsyncClient

PREFIX = b"/bench/initial/"
PAGE = 10_000


def jobs(quick: bool) -> list[Job]:
    sizes = (100_000,) if quick else (100_000, 1_000_000)
    return [Job("initial", {"n": n}) for n in sizes]


async def raw_listing(client: AsyncClient, n: int) -> float:
    """Seconds to page through the prefix on the raw stub at one revision, keeping nothing."""
    end = PREFIX[:-1] + bytes([PREFIX[-1] + 1])
    start, revision, seen = PREFIX, 0, 0
    t0 = time.monotonic()
    while True:
        req = rpc.RangeRequest(key=start, range_end=end, limit=PAGE, revision=revision)
        resp = await client.raw.kv.Range(req, timeout=60.0)
        revision = revision or resp.header.revision
        seen += len(resp.kvs)
        if not resp.more or not resp.kvs:
            break
        start = resp.kvs[-1].key + b"\0"
    if seen != n:
        raise RuntimeError(f"raw listing saw {seen} keys, expected {n}")
    return time.monotonic() - t0


async def run(env: Env, params: dict[str, Any]) -> None:
    n = int(params["n"])
    async with AsyncClient(env.endpoint, timeout=60.0) as client:
        progress(f"initial: preloading {n:,} keys")
        await preload(client, ((key_of(PREFIX, i), b"%d" % i) for i in range(n)), what="keys")
        raw_s = await raw_listing(client, n)
    progress(f"initial n={n:,}: raw listing {raw_s:.2f} s; syncing in a fresh process")
    probe = await run_probe("bench.initial", [env.endpoint, str(n)], timeout=900.0)
    figures = {
        "seconds": round(probe["seconds"], 3),
        "keys_per_s": round(n / probe["seconds"], 1),
        "peak_rss_mb": probe["peak_rss_mb"],
        "rss_before_mb": probe["rss_before_mb"],
        "rss_after_mb": probe["rss_after_mb"],
        "rss_after_gc_mb": probe["rss_after_gc_mb"],
        "raw_listing_s": round(raw_s, 3),
    }
    progress(f"initial n={n:,}: {figures}")
    env.emit(
        result(
            "initial",
            f"n={n}",
            {**params, "page_size_raw": PAGE},
            figures,
            notes="seconds/RSS measured in a fresh process that only syncs; rss_after_mb holds "
            "the snapshot; raw_listing_s = paged raw Range, nothing kept (the floor)",
        )
    )


async def probe(endpoint: str, n: int) -> dict[str, Any]:
    """The measuring process: open the watch, wait for the first snapshot."""
    async with AsyncClient(endpoint, timeout=60.0) as client:
        await client.get_revision()  # connected before the clock starts
        rss_before = rss_mb()
        t0 = time.monotonic()
        async with client.watch_prefix(PREFIX, transform) as watch:
            snap = await watch.synced(timeout=900.0)
            seconds = time.monotonic() - t0
            if len(snap.tree) != n:
                raise RuntimeError(f"synced tree has {len(snap.tree)} keys, expected {n}")
            rss_after = rss_mb()
            gc.collect()
            rss_after_gc = rss_mb()
    return {
        "seconds": seconds,
        "rss_before_mb": rss_before,
        "rss_after_mb": rss_after,
        "rss_after_gc_mb": rss_after_gc,
        "peak_rss_mb": peak_rss_mb(),
    }


def main(argv: list[str]) -> int:
    endpoint, n = argv
    out = run_async(f"initial-probe-n{n}-{os.getpid()}", probe(endpoint, int(n)))
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m bench.initial ENDPOINT N  (the sync probe; see bench/run.py)")
    sys.exit(main(sys.argv[1:]))
