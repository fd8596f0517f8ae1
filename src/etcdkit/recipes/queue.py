"""Queue: a multi-producer, multi-consumer FIFO queue on etcd, on the keys of Go's
``contrib/recipes`` ``Queue`` (etcd 3.4; ``client/v3/experimental/recipes`` in 3.5), so that Go
programs and ours share one queue in both directions.

- **An item** is one key ``name + "/" + <Unix time in ns, decimal>`` holding the value, created
  by a transaction that compares ``version == 0`` (a clash in the same nanosecond takes the
  next one): Go's ``newUniqueKV``.
- **Taking** reads the oldest keys under ``name/`` by create revision and deletes the first in a
  transaction guarded by its mod revision (Go's ``deleteRevKey``): of all consumers racing for
  it, exactly one delete applies, so exactly one consumer gets the item. An empty queue is
  watched from the revision of the read on, for puts only.

:class:`ItemLine` is the consumer half, shared with :mod:`etcdkit.recipes.priority_queue`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

from etcdkit._blocking.twin import Twin, blocking, mirror
from etcdkit._errors import (
    ClosedError,
    CompactedError,
    EtcdkitError,
    EtcdTimeoutError,
    OutcomeUnknownError,
    WatchEndedError,
)
from etcdkit._retry import Backoff
from etcdkit._surface import Etcd
from etcdkit._types import Compare, EventType, KeyValue, Op, check_timeout, key_bytes, to_bytes
from etcdkit.recipes.cas import guarded_txn

__all__ = ["READ_BATCH", "ItemLine", "Queue", "SyncQueue"]

log = logging.getLogger("etcdkit.queue")

T = TypeVar("T")

READ_BATCH = 8  # keys read at once from the head: a lost race tries the next without a read


async def _finish(aw: Awaitable[T]) -> T:
    """Await ``aw`` to its end even when the caller is cancelled meanwhile; the caller is
    handling a cancellation already and raises it afterwards. Used where stopping half-way
    would lose an item: a take whose delete is in flight, and the put-back after it. Bounded:
    what it awaits is made of client calls, each bounded by the client's timeout."""
    task = asyncio.ensure_future(aw)
    while True:
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled():
                raise  # the task itself was cancelled: the loop is shutting down


class ItemLine:
    """The consumer half of a queue: take the first item under ``prefix`` in the given order
    (``"create"``: create revision, Go's ``Queue``; ``"key"``: key order, Go's
    ``PriorityQueue``), waiting for one when there is none.

    Consumers that share one object take turns (first come, first served): one reads and
    watches at a time, the others wait in the process, so a put wakes one consumer per object
    instead of all of them. Consumers in other objects or processes do race for the head; the
    mod-revision guard makes exactly one of them win each item.
    """

    def __init__(
        self,
        etcd: Etcd,
        prefix: bytes,
        order: Literal["create", "key"],
        restore: Callable[[KeyValue], Awaitable[object]],
        label: str,
    ) -> None:
        self._etcd = etcd
        self._prefix = prefix
        self._order: Literal["create", "key"] = order
        self._restore = restore
        self._label = label
        self._turn = asyncio.Lock()
        self.waiting = 0  # consumers of this object inside take()

    def _rank(self, kv: KeyValue) -> tuple[int, bytes]:
        return (0, kv.key) if self._order == "key" else (kv.create_revision, kv.key)

    async def take(self, timeout: float | None) -> bytes:
        """The value of the first item, which this call removed from the queue."""
        return (await self.take_item(timeout)).value

    async def take_item(self, timeout: float | None) -> KeyValue:
        """The first item, which this call removed from the queue (:meth:`put_back` puts it
        back in its place)."""
        check_timeout(timeout)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        self.waiting += 1
        try:
            if timeout == 0:
                # No wait for a turn: a get that never waits reads and claims at once (the
                # turns only keep waiting consumers from all watching), racing the others as
                # other objects' consumers do; the mod-revision guard decides each item.
                return await self._take(deadline, timeout)
            try:
                async with asyncio.timeout_at(deadline):
                    await self._turn.acquire()
            except TimeoutError:
                raise self._timed_out(timeout, None) from None
            try:
                return await self._take(deadline, timeout)
            finally:
                self._turn.release()
        finally:
            self.waiting -= 1

    async def _take(self, deadline: float | None, timeout: float | None) -> KeyValue:
        loop = asyncio.get_running_loop()
        retry = self._etcd.retry
        backoff = retry.backoff()
        # timeout=0: one read (bounded by the client's own timeout) answers; no waiting
        bound = deadline if timeout else None
        last: EtcdkitError | None = None
        while True:
            try:
                async with asyncio.timeout_at(bound):
                    head = await self._etcd.range(
                        self._prefix,
                        prefix=True,
                        sort_order="ascend",
                        sort_target=self._order,
                        limit=READ_BATCH,
                    )
            except EtcdkitError as exc:
                if not retry.is_retryable(exc) or timeout == 0:
                    raise
                last = exc
                log.debug("%s: reading the head failed, retrying: %s", self._label, exc)
                await self._pause(backoff, deadline, timeout, last)
                continue
            except TimeoutError:
                raise self._timed_out(timeout, last) from None
            backoff.reset()
            for kv in head.kvs:
                if await self._claim(kv):
                    return kv
            if head.kvs or head.more:
                continue  # others took what we read: read on
            if deadline is not None and loop.time() >= deadline:
                raise self._timed_out(timeout, None)
            new = await self._next_put(head.revision, deadline, timeout)
            if new is not None and await self._claim(new):
                return new

    async def _pause(
        self, backoff: Backoff, deadline: float | None, timeout: float | None, last: EtcdkitError
    ) -> None:
        delay = backoff.next_delay() or 0.0
        if deadline is not None:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise self._timed_out(timeout, last)
            delay = min(delay, left)
        await backoff.sleep(delay)

    async def _next_put(
        self, revision: int, deadline: float | None, timeout: float | None
    ) -> KeyValue | None:
        """The first item put after ``revision`` (by this line's order, among the puts of
        etcd's first answer), or ``None`` to read the head again."""
        try:
            async with asyncio.timeout_at(deadline):
                async with self._etcd.watch(
                    self._prefix, prefix=True, start_revision=revision + 1, filters=("nodelete",)
                ) as watch:
                    async for batch in watch:
                        puts = [ev.kv for ev in batch.events if ev.type is EventType.PUT]
                        if puts:
                            return min(puts, key=self._rank)
        except (CompactedError, WatchEndedError):
            return None
        except EtcdkitError:
            raise
        except TimeoutError:
            raise self._timed_out(timeout, None) from None
        return None  # pragma: no cover - a watch ends only with an error

    async def _claim(self, kv: KeyValue) -> bool:
        """Delete ``kv`` if nobody else took it (True: the item is ours). A cancellation while
        the delete is in flight waits for its answer, and puts back an item it took."""
        attempt = asyncio.ensure_future(self._claim_once(kv))
        try:
            return await asyncio.shield(attempt)
        except asyncio.CancelledError:
            if attempt.cancelled():
                raise
            await self._settle(attempt, kv)
            raise
        except ClosedError:
            # The client closed with the delete in flight: it was cut off unanswered, and
            # etcd may have applied it (nobody can put the item back now).
            log.warning(
                "%s: the client closed while taking %r, with no answer: if the take landed, "
                "that item is lost",
                self._label,
                kv.key,
            )
            raise

    async def _claim_once(self, kv: KeyValue) -> bool:
        answer = await guarded_txn(
            self._etcd,
            [Compare.mod_revision(kv.key, "==", kv.mod_revision)],
            [Op.delete(kv.key)],
            what=f"{self._label}: taking item {kv.key!r}",
        )
        if answer.maybe_ours:
            raise OutcomeUnknownError(
                f"{self._label}: taking item {kv.key!r} got no answer at first, and then the "
                "item was gone: if our first try took it, the item is lost (a queue delivers "
                "each item at most once; the error's key and value are the item's)",
                key=kv.key,
                value=kv.value,
            )
        return answer.succeeded

    async def _settle(self, attempt: asyncio.Future[bool], kv: KeyValue) -> None:
        try:
            took = await _finish(attempt)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(
                "%s: a get was cancelled while taking %r, and the take's outcome is unknown "
                "(%s): if it landed, that item is lost",
                self._label,
                kv.key,
                exc,
            )
            return
        if took:
            await self.put_back(kv)

    async def put_back(self, kv: KeyValue) -> None:
        """Put back, in its place, an item taken for a get that nobody awaits any more (it
        was cancelled; on the threaded face, interrupted); a failure is logged."""
        try:
            await _finish(self._restore(kv))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(
                "%s: a get was given up after it took %r, and putting the item back failed "
                "(%s): it may be lost",
                self._label,
                kv.key,
                exc,
            )
        else:
            log.debug("%s: a get given up put %r back", self._label, kv.key)

    def _timed_out(self, timeout: float | None, last: EtcdkitError | None) -> EtcdTimeoutError:
        why = f"; last error: {last}" if last is not None else ""
        return EtcdTimeoutError(f"{self._label}: no item within {timeout} s{why}")


class Queue:
    """A FIFO queue on etcd that Go's ``recipe.Queue`` shares (same keys, same rules).

    ``await q.put(value)`` adds an item; ``await q.get(timeout=None)`` removes the oldest and
    returns its value, waiting for one when the queue is empty.

    Guarantees:

    - **Exactly one consumer gets each item**, however many take at once, here or in Go: a
      take is a delete guarded by the item's mod revision, and only one applies.
    - **At most once.** An item is removed when it is taken, before the consumer uses it: if
      the consumer dies after ``get`` returned (or while its take was in flight), the item is
      gone, as with Go's ``Dequeue``. A ``get`` that is cancelled or times out takes nothing:
      if its delete was in flight, it waits for the answer and puts an item it took back
      (same key; being new, it then comes after the items put meanwhile).
    - **FIFO** by create revision: a take gets the oldest item not yet taken. With several
      consumers, items are taken in order but may be *used* out of order.
    - Consumers sharing one :class:`Queue` object take turns: a put wakes one of them, not all
      (separate objects and processes each have one consumer awake per object; losing a race
      costs one transaction and tries the next item).

    On faults: reads and watches are retried (``get`` keeps waiting until its timeout). A put
    that gets no answer raises :class:`OutcomeUnknownError`: the item may or may not be in the
    queue, and is not sent again (a second copy could be delivered twice). A take that gets
    no answer is sent again (its guard makes that safe); if the item was gone by then,
    ``get`` raises :class:`OutcomeUnknownError` naming it (the first try may have taken it:
    then it is lost).
    """

    def __init__(self, etcd: Etcd, name: str | bytes) -> None:
        self._etcd = etcd
        self._name = key_bytes(name, "name")
        self._prefix = self._name + b"/"
        self._line = ItemLine(etcd, self._prefix, "create", self._put_back, f"queue {name!r}")

    @property
    def name(self) -> bytes:
        """The queue's name; its items are the keys under ``name + b"/"``."""
        return self._name

    def __repr__(self) -> str:
        return f"<Queue name={self._name!r} waiting={self._line.waiting}>"

    async def put(self, value: str | bytes) -> bytes:
        """Add an item at the end of the queue; returns its key.

        Raises :class:`OutcomeUnknownError` when etcd did not answer: the item may or may not
        have been added (it is not sent again). Other errors mean it was not added."""
        raw = to_bytes(value, "value")
        while True:
            key = self._prefix + str(time.time_ns()).encode()
            try:
                res = await self._etcd.txn([Compare.version(key, "==", 0)], [Op.put(key, raw)])
            except EtcdkitError as exc:
                if self._etcd.retry.is_retryable(exc):
                    raise OutcomeUnknownError(
                        f"queue {self._name!r}: adding item {key!r} got no answer: it may or may "
                        "not be in the queue (not sent again: a second copy could be delivered "
                        "twice)",
                        key=key,
                        value=raw,
                    ) from exc
                raise
            if res.succeeded:
                return key

    async def get(self, timeout: float | None = None) -> bytes:
        """Remove the oldest item and return its value; wait for one while the queue is empty.

        ``timeout`` (seconds; ``None``: no limit; ``0``: take one if there is one, else raise
        at once) raises :class:`EtcdTimeoutError` and takes nothing. A cancelled ``get`` takes
        nothing either. :class:`OutcomeUnknownError`: a take went unanswered and the item was
        then gone (it may be lost; see the class)."""
        return await self._line.take(timeout)

    async def _put_back(self, kv: KeyValue) -> None:
        res = await self._etcd.txn([Compare.version(kv.key, "==", 0)], [Op.put(kv.key, kv.value)])
        if not res.succeeded:  # the key was made again meanwhile (a clash): a new key, then
            await self.put(kv.value)


class SyncQueue(Twin[Queue]):
    """Blocking view of a :class:`Queue` (``client.queue(name)`` on the threaded
    :class:`~etcdkit.Client`); a ``KeyboardInterrupt`` in ``get`` takes nothing."""

    name: mirror[bytes] = mirror(Queue.name, direct=True)
    put = blocking(Queue.put)

    def get(self, timeout: float | None = None) -> bytes:
        # (the item taken for a get interrupted in this thread goes back in its place)
        line = self.aio._line
        return self.portal.call(line.take_item(timeout), abandon=line.put_back).value

    get.__doc__ = Queue.get.__doc__
