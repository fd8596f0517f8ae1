"""The watch scenario's writer, in its own process so it does not share the watcher's CPU.

``python -m bench._writer ENDPOINT PREFIX N UPDATES IN_FLIGHT`` puts UPDATES new integer values
to the N existing keys under PREFIX (round robin), IN_FLIGHT at a time, through the public
``AsyncClient.put``, and prints one JSON object: ``t_start``/``t_end`` (``time.monotonic()``,
which is system-wide on Linux, so the watcher can compare), ``first_revision``,
``last_revision`` and ``puts``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

from bench._common import key_of, run_async
from etcdkit import AsyncClient


async def write(endpoint: str, prefix: bytes, n: int, updates: int, in_flight: int) -> Any:
    async with AsyncClient(endpoint, timeout=30.0) as client:
        await client.get_revision()  # connected before the clock starts
        revisions: list[int] = []
        counter = iter(range(updates))

        async def worker() -> None:
            for i in counter:
                revisions.append(await client.put(key_of(prefix, i % n), b"%d" % (i + 1)))

        t_start = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        t_end = time.monotonic()
    return {
        "t_start": t_start,
        "t_end": t_end,
        "first_revision": min(revisions),
        "last_revision": max(revisions),
        "puts": len(revisions),
    }


def main(argv: list[str]) -> int:
    endpoint, prefix, n, updates, in_flight = argv
    out = run_async(
        f"writer-n{n}-{os.getpid()}",
        write(endpoint, prefix.encode(), int(n), int(updates), int(in_flight)),
    )
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
