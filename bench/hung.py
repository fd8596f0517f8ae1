"""Scenario ``hung``: one member of three hangs (SIGSTOP); how long until the client moves on.

A 3-member cluster of its own (the job's single etcd is not used). One client under test,
given all three endpoints, holds a ``watch_prefix``, a PersistentLease (ttl 5) and, per round,
a ``wait_for`` on a key not written yet. Each round pauses one member (in turn, so every member
is paused, the one serving the client's streams included), writes through the two others, and
measures from the pause: the watch holding the write's revision, ``wait_for`` returning, and the
lease REGISTERED again (it may never have left). Then the member resumes and the cluster settles.
Goal (issue 17): p99 of each ≤ 5 s, with nothing lost (the watch's tree equals etcd's at its
revision after every round).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench._common import Env, Goal, Job, percentile, progress, result
from etcdkit import AsyncClient, ConnectionUnavailableError, EtcdTimeoutError, LeaseState
from etcdkit.testing import EtcdCluster

PREFIX = "/bench/hung/"
BOUND = 30.0  # a round that takes longer is a failure, not a figure


def jobs(quick: bool) -> list[Job]:
    return [Job("hung", {"rounds": 3 if quick else 9})]


async def _put(client: AsyncClient, key: str, value: str) -> int:
    while True:
        try:
            return await client.put(key, value)
        except (ConnectionUnavailableError, EtcdTimeoutError):
            await asyncio.sleep(0.05)  # an election among the other two


async def _until(check: Any, t0: float) -> float:
    async with asyncio.timeout(BOUND):
        while not check():  # noqa: ASYNC110 - polls state another task changes
            await asyncio.sleep(0.01)
    return time.monotonic() - t0


async def run(env: Env, params: dict[str, Any]) -> None:
    rounds = int(params["rounds"])
    watch_s: list[float] = []
    wait_s: list[float] = []
    lease_s: list[float] = []
    mismatches = 0
    with EtcdCluster(size=3) as cluster:
        members = cluster.members
        async with (
            AsyncClient(cluster.endpoints, timeout=2) as client,
            client.watch_prefix(PREFIX) as watch,
            client.persistent_lease(PREFIX + "lease", "v", ttl=5) as lease,
        ):
            await watch.synced(timeout=30)
            await lease.registered(timeout=30)
            for r in range(rounds):
                hung = members[r % len(members)]
                others = [m.endpoint for m in members if m is not hung]
                async with AsyncClient(others, timeout=2) as writer:
                    progress(f"hung: round {r + 1}/{rounds}: pausing {hung.name}")
                    hung.pause()
                    t0 = time.monotonic()
                    try:
                        waiter = asyncio.create_task(
                            client.wait_for(f"{PREFIX}w{r}", timeout=BOUND)
                        )
                        rev = await _put(writer, f"{PREFIX}w{r}", str(r))
                        watch_s.append(await _until(lambda r=rev: watch.revision >= r, t0))
                        await waiter
                        wait_s.append(time.monotonic() - t0)
                        lease_s.append(
                            await _until(lambda: lease.state is LeaseState.REGISTERED, t0)
                        )
                        snap = watch.snapshot
                        assert snap is not None
                        truth = await writer.get_prefix(PREFIX, revision=snap.revision)
                        if dict(snap.tree) != {kv.key.decode(): kv.value for kv in truth.kvs}:
                            mismatches += 1
                    finally:
                        hung.resume()
                await asyncio.sleep(1.0)  # let the member rejoin before the next round
            failovers = client.core.conn.failovers

    figures: dict[str, Any] = {"rounds": rounds, "failovers": failovers, "mismatches": mismatches}
    for name, xs in (("watch", watch_s), ("wait_for", wait_s), ("lease", lease_s)):
        figures[f"{name}_p50_s"] = round(percentile(xs, 50), 3)
        figures[f"{name}_p99_s"] = round(percentile(xs, 99), 3)
        figures[f"{name}_max_s"] = round(max(xs), 3)
    env.emit(
        result(
            "hung",
            f"rounds={rounds}",
            params,
            figures,
            [
                Goal("watch_p99_s", "<=", 5.0),
                Goal("wait_for_p99_s", "<=", 5.0),
                Goal("lease_p99_s", "<=", 5.0),
                Goal("mismatches", "<=", 0),
            ],
        )
    )
