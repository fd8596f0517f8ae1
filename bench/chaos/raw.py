"""The raw watch under test: etcd's event stream, checked event by event.

Raw consumers read ``client.watch(data/, prefix=True, start_revision=...)`` on the client under
test (through the proxies, on the Watch stream the ``watch_prefix`` consumers share), from the
revision after the writer's start:

- ``raw``, with ``progress_notify=True``: a batch with no events says "every change up to its
  revision was delivered", and is checked for that.
- ``raw-slow``, with ``prev_kv=True``, stops reading for seconds now and then (not past a
  heal), so that its watch falls more than its buffer bound behind, steps off the stream and
  back on (:attr:`ChaosConfig.raw_buffer`).

Every event must be the next one of the writer's :class:`~bench.chaos.history.EventLog`:
``(type, key, mod_revision, value)``, and the value before it for ``raw-slow``; in order, none
lost, none repeated. In a batch the events are in revision order and none is above
``batch.revision``; a revision (a transaction's events) is never split between batches.

The log is itself checked against etcd (:meth:`RawChecker.verify_log`): before each compaction
and at the end, with no fault running and after a write of the writer's own
(:meth:`Writer.mark`), etcd's replay of the span not yet verified, read from a direct client,
must equal it, previous values included. The compaction fault compacts no revision a raw watch
may still resume from (:meth:`RawChecker.compactable`): a raw watch cannot relist, and a
compacted resume revision is its documented end (``CompactedError``). After each heal every
raw consumer reaches the newest event within a bound; at the end each has checked every event
of the log.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

import etcdkit
from bench.chaos.history import Event
from bench.chaos.state import Run
from etcdkit import AsyncClient, Watch, WatchBatch, WatchEvent

PRUNE_MARGIN = 1000  # events kept before the oldest one a consumer still needs


@dataclass
class RawConsumer:
    """One raw watch and where its check stands."""

    name: str
    watch: Watch
    prev_kv: bool = False
    slow: bool = False
    pos: int = 0  # the index in the event log of the next event due
    reached: int = 0  # the revision of the newest event received
    failed: bool = False  # the watch raised (a mismatch already)
    ended: bool = False


def event_of(ev: WatchEvent) -> Event:
    prev = None if ev.prev_kv is None else ev.prev_kv.value
    return Event(ev.type.value, ev.kv.key, ev.kv.mod_revision, ev.kv.value, prev)


class RawChecker:
    """The raw consumers, their checks, and the check of the event log against etcd."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.consumers: list[RawConsumer] = []
        self.verified = 0  # the revision up to which the log equals etcd's replay

    def open(self, client: AsyncClient) -> list[RawConsumer]:
        """The raw consumers' watches on ``client`` (to be entered), from the writer's start."""
        start = self.run.events.start + 1
        self.verified = self.run.events.start
        specs = [("raw", False, False, True), ("raw-slow", True, True, False)]
        for name, prev_kv, slow, progress in specs[: self.run.cfg.raw_watchers]:
            watch = client.watch(
                self.run.data,
                prefix=True,
                start_revision=start,
                prev_kv=prev_kv,
                progress_notify=progress,
            )
            self.consumers.append(RawConsumer(name, watch, prev_kv=prev_kv, slow=slow))
        return self.consumers

    # -- the consumers ----------------------------------------------------------------------------

    async def consume(self, c: RawConsumer) -> None:
        rng = random.Random(f"{self.run.seed}/raw/{c.name}")
        cfg = self.run.cfg
        try:
            async for batch in c.watch:
                await self.check_batch(c, batch)
                if c.slow and rng.random() < cfg.raw_pause_chance:
                    await self.nap(rng.uniform(*cfg.raw_pause))
                    # (the repr shows the watch's live state: stepped off its stream or not)
                    self.run.report.raw_stepped_off += "paused" in repr(c.watch)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            c.failed = True
            self.run.mismatch("raw-watch-error", c.name, c.reached, f"the watch raised {exc!r}")
        finally:
            c.ended = True

    async def nap(self, seconds: float) -> None:
        """Read nothing for ``seconds``, but not past a heal: the catch-up after it is bounded
        as every consumer's, so the faults keep their pace."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self.run.context.startswith(("after", "final")):
                return
            await asyncio.sleep(0.05)

    async def check_batch(self, c: RawConsumer, batch: WatchBatch) -> None:
        revs = [ev.kv.mod_revision for ev in batch.events]
        if not revs:
            await self.check_progress(c, batch.revision)
            return
        if revs != sorted(revs) or batch.revision < revs[-1] or revs[0] <= c.reached:
            self.run.mismatch(
                "raw-batch",
                c.name,
                batch.revision,
                f"a batch at revision {batch.revision} with events at {revs[:10]} after one at "
                f"{c.reached}: out of order, above the batch, or a revision split or repeated",
            )
        for ev in batch.events:
            await self.check_event(c, event_of(ev))
        c.reached = max(c.reached, revs[-1])

    async def covered(self, revision: int) -> bool:
        """Whether the writer's log is complete up to ``revision`` (waiting a bounded time)."""
        history = self.run.history
        if revision > history.covered:
            await history.wait_at(revision, timeout=self.run.cfg.history_wait)
        return revision <= history.covered

    async def check_event(self, c: RawConsumer, got: Event) -> None:
        run = self.run
        log = run.events
        if not await self.covered(got.revision):
            run.mismatch("raw-event", c.name, got.revision, f"{got.row}: no write of the writer")
            return
        due = log.get(c.pos)
        if due is not None and got.row == due.row:
            c.pos += 1
            report = run.report
            report.raw_events_checked += 1
            report.raw_per_consumer[c.name] = report.raw_per_consumer.get(c.name, 0) + 1
            if c.prev_kv and got.prev != due.prev:
                run.mismatch(
                    "raw-prev-kv",
                    c.name,
                    got.revision,
                    f"{got.row}: value before {got.prev!r}, want {due.prev!r}",
                )
            return
        found = log.find(got.revision, got.key)
        due_row = None if due is None else due.row
        if found is not None and found < c.pos:
            detail = f"repeated {got.row} (event #{found}; #{c.pos} {due_row} is due)"
        else:
            there = None if found is None else log.get(found)
            if found is not None and there is not None and there.row == got.row:
                detail = f"lost {found - c.pos} events before {got.row}, from #{c.pos} {due_row}"
            else:
                want = None if there is None else there.row
                detail = f"got {got.row}, etcd has {want} there; #{c.pos} {due_row} is due"
            if found is not None:
                c.pos = found + 1  # check on from here: one mismatch per fault, not thousands
        run.mismatch("raw-event", c.name, got.revision, detail)

    async def check_progress(self, c: RawConsumer, revision: int) -> None:
        """A batch with no events: every event up to ``revision`` must have been delivered."""
        if not await self.covered(revision):
            return  # etcd's revision ran ahead of every data write meanwhile: nothing to check
        self.run.report.raw_progress_checked += 1
        due = self.run.events.get(c.pos)
        if due is not None and due.revision <= revision:
            self.run.mismatch(
                "raw-progress",
                c.name,
                revision,
                f"a batch with no events says every change up to {revision} was delivered; "
                f"{due.row} was not",
            )

    # -- after each heal, before a compaction, at the end ------------------------------------------

    async def catch_up(self, healed: float) -> list[float]:
        """Every raw consumer reaches the newest event within a bound after a heal."""
        cfg = self.run.cfg
        target = self.run.events.last_revision
        times: list[float] = []
        limit = cfg.catch_up_bound
        for c in self.consumers:
            while c.reached < target and not c.failed:
                if c.ended or time.monotonic() - healed > limit:
                    self.run.mismatch(
                        "raw-catch-up", c.name, target, f"at {c.reached} {limit:.0f} s after heal"
                    )
                    break
                await asyncio.sleep(0.05)
            else:
                times.append(time.monotonic() - healed)
        self.run.report.raw_catch_up.extend(times)
        return times

    async def compactable(self, rev: int) -> int:
        """The revision the compaction fault may compact to (the writer held at its gate):
        at most ``rev``, no later than the log was verified up to (the next replay starts after
        it), and before every raw watch's resume revision: its ``revision`` + 1 must stay
        readable, and more than the compaction (etcd drops a delete *at* the compaction
        revision from a watch that starts there)."""
        with_watch = [c for c in self.consumers if not c.ended]
        target = min(rev, self.verified)
        deadline = time.monotonic() + 1.0  # (not for the slow one's naps: the gate is held)
        while any(c.watch.revision < target for c in with_watch):
            if time.monotonic() > deadline:
                break  # one that did not get there resumes from where it is: compact no further
            await asyncio.sleep(0.05)
        return min([target, *(c.watch.revision for c in with_watch)])

    async def verify_log(self) -> None:
        """etcd's own replay of the log's span after :attr:`verified` equals it (call with
        the writer held at its gate and no fault running)."""
        run = self.run
        log = run.events
        first = log.index_after(self.verified)
        want = [ev for i in range(first, len(log)) if (ev := log.get(i)) is not None]
        if not want:
            return
        end = want[-1].revision
        got: list[Event] = []
        try:
            async with (
                asyncio.timeout(30.0),
                run.direct.watch(
                    run.data, prefix=True, start_revision=self.verified + 1, prev_kv=True
                ) as w,
            ):
                async for batch in w:
                    got += [event_of(ev) for ev in batch.events]
                    if got and got[-1].revision >= end:
                        break
        except (TimeoutError, etcdkit.EtcdkitError) as exc:
            run.mismatch(
                "raw-model", "writer", end, f"no replay of ({self.verified}, {end}]: {exc!r}"
            )
            return
        if got != want:
            i = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), len(want))
            run.mismatch(
                "raw-model",
                "writer",
                end,
                f"the writer's event log differs from etcd's replay of ({self.verified}, {end}] "
                f"at its event {i}: etcd {got[i] if i < len(got) else None}, log "
                f"{want[i] if i < len(want) else None}",
            )
        run.report.raw_log_verified += len(want)
        self.verified = end
        keep = min([log.index_after(end), *(c.pos for c in self.consumers)])
        log.prune(keep - PRUNE_MARGIN)

    async def converge(self) -> None:
        """At the end (the writer stopped): every raw consumer checked every event."""
        n = len(self.run.events)
        start = time.monotonic()
        for c in self.consumers:
            while c.pos < n and not c.failed:
                if c.ended or time.monotonic() - start > self.run.cfg.converge_bound:
                    self.run.mismatch(
                        "raw-converge", c.name, c.reached, f"checked {c.pos} of {n} events"
                    )
                    break
                await asyncio.sleep(0.05)
