"""Helpers shared by the raw watch tests (test_raw_watch*.py): read a watch up to a revision,
checking what every batch promises, and compare streams with a message that says what differs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from etcdkit import AsyncClient, SyncWatch, Watch, WatchBatch, WatchEvent

WAIT = 10.0
Row = tuple[str, bytes, int, bytes]  # (type, key, mod_revision, value): one event as compared


def row(ev: WatchEvent) -> Row:
    return ev.type.value, ev.kv.key, ev.kv.mod_revision, ev.kv.value


def check_batch(batch: WatchBatch, after: int = 0) -> int:
    """What every batch promises: events in revision order, none after ``batch.revision``, and
    none at or before ``after`` (the last event's revision in the batches before: a revision,
    such as a txn's, is never split between batches, nor repeated). Returns the new ``after``."""
    revs = [ev.kv.mod_revision for ev in batch.events]
    assert revs == sorted(revs), f"events out of order in one batch: {revs}"
    assert all(batch.revision >= r for r in revs), f"batch.revision {batch.revision} < {revs}"
    if not revs:
        return after
    assert revs[0] > after, f"an event at {revs[0]} after one at {after}: split or repeated"
    return revs[-1]


async def batches_until(w: Watch, revision: int, timeout: float = WAIT) -> list[WatchBatch]:
    """Batches (progress ones included) until an event at ``revision`` or later arrives."""
    out: list[WatchBatch] = []
    async with asyncio.timeout(timeout):
        last = 0
        async for batch in w:
            last = check_batch(batch, last)
            out.append(batch)
            if batch.events and batch.events[-1].kv.mod_revision >= revision:
                return out
    raise AssertionError(f"the watch ended before revision {revision}: {out}")


async def events_until(w: Watch, revision: int, timeout: float = WAIT) -> list[WatchEvent]:
    return [ev for b in await batches_until(w, revision, timeout) for ev in b.events]


def sync_events_until(w: SyncWatch, revision: int) -> list[WatchEvent]:
    out: list[WatchEvent] = []
    last = 0
    for batch in w:
        last = check_batch(batch, last)
        out.extend(batch.events)
        if batch.events and batch.events[-1].kv.mod_revision >= revision:
            return out
    raise AssertionError(f"the watch ended before revision {revision}")


async def until(what: str, check: Callable[[], bool], bound: float = WAIT) -> None:
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > bound:
            raise AssertionError(f"{what} did not happen within {bound} s")
        await asyncio.sleep(0.01)


async def confirmed(client: AsyncClient, watches: int = 1) -> None:
    """Until etcd has confirmed the client's ``watches`` etcd watches."""
    await until(
        f"{watches} confirmed watches",
        lambda: client.stats.watches == watches and client.stats.watches_unconfirmed == 0,
    )


def assert_same_stream(got: list[Row], want: list[Row]) -> None:
    """``got == want``, with a message that says what was lost, repeated or reordered."""
    if got == want:
        return
    repeated = sorted({r for r in got if got.count(r) > 1})
    lost = [r for r in want if r not in got]
    extra = [r for r in got if r not in want]
    first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    raise AssertionError(
        f"stream differs from etcd's history at index {first} (got {len(got)} events, want "
        f"{len(want)}): lost {lost[:5]}, repeated {repeated[:5]}, not in history {extra[:5]}"
    )
