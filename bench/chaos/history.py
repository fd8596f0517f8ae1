"""The model of what a correct watch shows: the transform under test and the writer's history.

:func:`transform` is what every consumer applies; :func:`tree_of` is what a correct snapshot
holds for a set of records; :class:`History` is the data prefix's tree at every revision, as
the writer recorded it, for checks whose revision etcd has compacted away; :class:`EventLog`
is every :class:`Event` under the data prefix, in etcd's order, what a raw watch must deliver.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from collections.abc import Iterable
from typing import NamedTuple

Tree = dict[str, int]


def transform(key: bytes, value: bytes) -> tuple[str, int]:
    """The transform under test: the key's last path segment, and the value as an int."""
    return key.rsplit(b"/", 1)[-1].decode(), int(value)


def tree_of(kvs: Iterable[tuple[bytes, bytes]]) -> Tree:
    """What a correct watch shows for these records: transformed, rejected ones left out."""
    out: Tree = {}
    for key, value in kvs:
        try:
            name, number = transform(key, value)
        except ValueError:
            continue
        out[name] = number
    return out


class History:
    """The data prefix's transformed tree at every revision since the start, as written.

    ``covered`` is the revision up to which the record is complete: the tree at any revision
    ``r <= covered`` is the one recorded at the greatest revision ``<= r``.
    """

    def __init__(self) -> None:
        self._revs: list[int] = []
        self._trees: list[Tree] = []
        self.covered = 0
        self._grew = asyncio.Event()

    def record(self, revision: int, tree: Tree) -> None:
        if self._revs and revision <= self._revs[-1]:
            raise AssertionError(f"history went back: {revision} after {self._revs[-1]}")
        if revision <= self.covered and tree != self.at(revision):
            raise AssertionError(
                f"history changed at {revision}, which was already covered up to {self.covered}"
            )
        if not self._trees or tree != self._trees[-1]:
            self._revs.append(revision)
            self._trees.append(dict(tree))
        self.cover(revision)

    def cover(self, revision: int) -> None:
        if revision > self.covered:
            self.covered = revision
            self._grew.set()

    @property
    def last(self) -> tuple[int, Tree]:
        return self._revs[-1], self._trees[-1]

    def at(self, revision: int) -> Tree | None:
        if revision > self.covered or not self._revs or revision < self._revs[0]:
            return None
        return self._trees[bisect.bisect_right(self._revs, revision) - 1]

    async def wait_at(self, revision: int, timeout: float) -> Tree | None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while revision > self.covered:
                    self._grew.clear()
                    await self._grew.wait()
        return self.at(revision)

    def prune(self, below: int) -> None:
        """Forget what no check can ask for any more (revisions below ``below``)."""
        i = bisect.bisect_right(self._revs, below) - 1
        if i > 0:
            del self._revs[:i]
            del self._trees[:i]


class Event(NamedTuple):
    """One change under the data prefix, as etcd's watch reports it; ``prev`` is the value
    before it (``None``: the key did not exist), as a watch with ``prev_kv=True`` reports it."""

    type: str  # "put" or "delete"
    key: bytes
    revision: int  # the event's mod_revision
    value: bytes  # b"" for a delete
    prev: bytes | None = None

    @property
    def row(self) -> tuple[str, bytes, int, bytes]:
        """What every raw watch must report: ``(type, key, mod_revision, value)``."""
        return self.type, self.key, self.revision, self.value


class EventLog:
    """Every event under the data prefix after revision :attr:`start`, in etcd's order
    (revision, then place in the transaction), as the writer made them.

    Complete up to ``History.covered``: the writer appends an op's events before it covers the
    op's revision. Indexes are absolute: forgetting old events (:meth:`prune`) moves none.
    """

    def __init__(self) -> None:
        self.start = 0  # the revision the writer started at
        self._events: list[Event] = []
        self._revs: list[int] = []
        self._base = 0  # the index of self._events[0]

    def __len__(self) -> int:
        return self._base + len(self._events)

    def extend(self, events: Iterable[Event]) -> None:
        for ev in events:
            if ev.revision <= self.start or (self._revs and ev.revision < self._revs[-1]):
                raise AssertionError(f"event log went back: {ev} after {self.last_revision}")
            self._events.append(ev)
            self._revs.append(ev.revision)

    @property
    def last_revision(self) -> int:
        """The revision of the newest event (:attr:`start` while there is none)."""
        return self._revs[-1] if self._revs else self.start

    def get(self, index: int) -> Event | None:
        """The event at ``index``; ``None`` past the newest one."""
        i = index - self._base
        if i < 0:
            raise IndexError(f"event #{index} was pruned (the log starts at #{self._base})")
        return self._events[i] if i < len(self._events) else None

    def index_after(self, revision: int) -> int:
        """The index of the first event after ``revision``."""
        return self._base + bisect.bisect_right(self._revs, revision)

    def find(self, revision: int, key: bytes) -> int | None:
        """The index of the event of ``key`` at ``revision``, if the log holds one."""
        i = bisect.bisect_left(self._revs, revision)
        while i < len(self._revs) and self._revs[i] == revision:
            if self._events[i].key == key:
                return self._base + i
            i += 1
        return None

    def prune(self, below: int) -> None:
        """Forget the events before index ``below``."""
        n = below - self._base
        if n > 0:
            del self._events[:n]
            del self._revs[:n]
            self._base = below
