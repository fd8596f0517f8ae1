"""PriorityQueue: a queue whose lower priority numbers are served first, on the keys of Go's
``contrib/recipes`` ``PriorityQueue`` (etcd 3.4; ``client/v3/experimental/recipes`` in 3.5),
so that Go programs and ours share one queue in both directions.

- **An item** of priority ``p`` is the key ``name/%05d/%016d`` (``p``, then a sequence number
  per priority) holding the value. The sequence number is one more than the last key of that
  priority (0 when there is none); the transaction that creates the item also writes the
  bookkeeping key ``__name/%05d`` and compares its mod revision with the revision of the read,
  so two producers never get the same number (Go's ``newSequentialKV``). The bookkeeping keys
  stay behind (one per priority ever used); they are outside ``name/``.
- **Taking** reads the first keys under ``name/`` in key order (so the lowest priority number,
  then the oldest of that priority) and deletes the first in a transaction guarded by its mod
  revision: exactly one consumer gets each item (see :class:`~etcdkit.Queue`).
"""

from __future__ import annotations

from etcdkit._blocking.twin import Twin, blocking, mirror
from etcdkit._errors import OutcomeUnknownError
from etcdkit._surface import Etcd
from etcdkit._types import Compare, KeyValue, Op, key_bytes, to_bytes
from etcdkit.recipes.cas import guarded_txn
from etcdkit.recipes.queue import ItemLine

__all__ = ["MAX_PRIORITY", "PriorityQueue", "SyncPriorityQueue"]

MAX_PRIORITY = 65535  # Go's Enqueue takes a uint16, formatted with %05d


def check_priority(priority: object) -> int:
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise TypeError(
            f"priority must be an int from 0 (served first) to {MAX_PRIORITY}, got "
            f"{type(priority).__name__}: {priority!r:.40}"
        )
    if not 0 <= priority <= MAX_PRIORITY:
        raise ValueError(
            f"priority must be from 0 (served first) to {MAX_PRIORITY} (Go's uint16), "
            f"got {priority!r}"
        )
    return priority


class PriorityQueue:
    """A queue on etcd served by priority, then in order, that Go's ``recipe.PriorityQueue``
    shares (same keys, same rules).

    ``await pq.put(value, priority)`` adds an item: ``priority`` is an int from 0 to 65535
    (Go's ``uint16``); **a lower number is served first**, and items of equal priority in the
    order they were put. ``await pq.get(timeout=None)`` removes the first item and returns its
    value, waiting for one when the queue is empty.

    The guarantees of :class:`~etcdkit.Queue` hold: exactly one consumer gets each item, at
    most once (an item whose consumer dies after taking it is gone), a ``get`` that is
    cancelled or times out takes nothing (an item whose delete was in flight is put back
    under its own key, so at its place), and consumers sharing one object take turns.

    On faults: a put that gets no answer is sent again (the bookkeeping key's compare lets at
    most one copy apply); if a later copy is refused after an unanswered one, the put raises
    :class:`OutcomeUnknownError` (the item may or may not be in the queue). Takes are as in
    :class:`~etcdkit.Queue`.
    """

    def __init__(self, etcd: Etcd, name: str | bytes) -> None:
        self._etcd = etcd
        self._name = key_bytes(name, "name")
        self._prefix = self._name + b"/"
        self._line = ItemLine(etcd, self._prefix, "key", self._put_back, f"priority queue {name!r}")

    @property
    def name(self) -> bytes:
        """The queue's name; its items are the keys under ``name + b"/"``."""
        return self._name

    def __repr__(self) -> str:
        return f"<PriorityQueue name={self._name!r} waiting={self._line.waiting}>"

    async def put(self, value: str | bytes, priority: int) -> bytes:
        """Add an item with ``priority`` (0..65535; lower is served first; equal ones in
        order); returns its key.

        Raises :class:`OutcomeUnknownError` when no answer settled whether it was added.
        Other errors mean it was not added."""
        raw = to_bytes(value, "value")
        level = self._prefix + b"%05d" % check_priority(priority)
        while True:
            last = await self._etcd.range(
                level + b"/", prefix=True, sort_order="descend", sort_target="key", limit=1
            )
            seq = 0
            if last.kvs:
                seq = int(last.kvs[0].key.rsplit(b"/", 1)[-1]) + 1
            key = level + b"/%016d" % seq
            answer = await guarded_txn(
                self._etcd,
                [Compare.mod_revision(b"__" + level, "<", last.revision + 1)],
                [Op.put(b"__" + level, b""), Op.put(key, raw)],
                what=f"priority queue {self._name!r}: adding item {key!r}",
            )
            if answer.succeeded:
                return key
            if answer.maybe_ours:
                raise OutcomeUnknownError(
                    f"priority queue {self._name!r}: adding item {key!r} got no answer at "
                    "first, and a later try was refused: it may or may not be in the queue",
                    key=key,
                    value=raw,
                )

    async def get(self, timeout: float | None = None) -> bytes:
        """Remove the first item (lowest priority number, then oldest) and return its value;
        wait for one while the queue is empty.

        ``timeout`` (seconds; ``None``: no limit; ``0``: take one if there is one, else raise
        at once) raises :class:`EtcdTimeoutError` and takes nothing. A cancelled ``get`` takes
        nothing either. :class:`OutcomeUnknownError`: a take went unanswered and the item was
        then gone (it may be lost)."""
        return await self._line.take(timeout)

    async def _put_back(self, kv: KeyValue) -> None:
        level = kv.key.rsplit(b"/", 1)[0]
        # Bump the bookkeeping key too: a producer that read the line before we put the item
        # back must not take its number.
        res = await self._etcd.txn(
            [Compare.version(kv.key, "==", 0)],
            [Op.put(b"__" + level, b""), Op.put(kv.key, kv.value)],
        )
        if not res.succeeded:  # a producer took its number meanwhile: a new one, then
            await self.put(kv.value, int(level.rsplit(b"/", 1)[-1]))


class SyncPriorityQueue(Twin[PriorityQueue]):
    """Blocking view of a :class:`PriorityQueue` (``client.priority_queue(name)`` on the
    threaded :class:`~etcdkit.Client`); a ``KeyboardInterrupt`` in ``get`` takes nothing."""

    name: mirror[bytes] = mirror(PriorityQueue.name, direct=True)
    put = blocking(PriorityQueue.put)

    def get(self, timeout: float | None = None) -> bytes:
        # (the item taken for a get interrupted in this thread goes back in its place)
        line = self.aio._line
        return self.portal.call(line.take_item(timeout), abandon=line.put_back).value

    get.__doc__ = PriorityQueue.get.__doc__
