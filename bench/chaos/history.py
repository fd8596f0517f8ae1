"""The model of what a correct watch shows: the transform under test and the writer's history.

:func:`transform` is what every consumer applies; :func:`tree_of` is what a correct snapshot
holds for a set of records; :class:`History` is the data prefix's tree at every revision, as
the writer recorded it, for checks whose revision etcd has compacted away.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from collections.abc import Iterable

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
