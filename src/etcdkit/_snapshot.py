"""The snapshot engine: applies etcd watch events to an immutable, structure-sharing tree.

Free of I/O. :class:`SnapshotEngine` keeps

- ``tree``: an :class:`immutables.Map` (a HAMT) of the transformed records, so that producing a
  snapshot costs O(changes), never O(tree);
- a raw-key -> K index, so a delete never depends on transforming the old value;
- the pending deltas since the last *delivered* snapshot (``take()``), merged per key, so a slow
  consumer always gets the newest snapshot next with one change per key, in bounded memory.

A record whose transform raises (or returns something that is not a ``(key, value)`` tuple with a
hashable key) is invalid: it is left out of the tree, counted and logged once with its key and
error. Two raw keys that transform to the same K are a collision: the second is invalid.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeAlias, TypeVar, cast

import immutables

K = TypeVar("K")
V = TypeVar("V")

Transform: TypeAlias = Callable[[bytes, bytes], tuple[K, V]]
"""``transform(key, value) -> (K, V)``; raising any exception marks the record invalid."""

_log = logging.getLogger("etcdkit.snapshot")


def default_transform(key: bytes, value: bytes) -> tuple[str, bytes]:
    """The default transform: the key decoded as UTF-8, the value as raw bytes."""
    return key.decode(), value


class ChangeKind(enum.Enum):
    """What happened to a key between two delivered snapshots."""

    ADDED = "added"
    UPDATED = "updated"
    REMOVED = "removed"


@dataclass(frozen=True, slots=True)
class Change(Generic[K, V]):
    """One key's delta: ``old`` is ``None`` for ADDED, ``new`` is ``None`` for REMOVED."""

    kind: ChangeKind
    key: K
    old: V | None
    new: V | None


class Tree(Mapping[K, V]):
    """A read-only view of a persistent map; equal to any mapping with the same items.

    Wrapping costs O(1): the map is shared, never copied. (``immutables.Map`` itself only
    compares equal to another ``Map``; this view compares like a ``dict``.)
    """

    __slots__ = ("_map",)

    def __init__(self, m: immutables.Map[K, V]) -> None:
        self._map = m

    def __getitem__(self, key: K) -> V:
        return self._map[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._map)

    def __contains__(self, key: object) -> bool:
        return key in self._map

    def get(self, key: K, default: Any = None) -> Any:
        return self._map.get(key, default)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Tree):
            return bool(self._map == other._map)
        if not isinstance(other, Mapping):
            return NotImplemented
        return len(self._map) == len(other) and all(
            k in other and _same(other[k], v) for k, v in self._map.items()
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        items = ", ".join(f"{k!r}: {v!r}" for k, v in list(self._map.items())[:20])
        more = ", ..." if len(self._map) > 20 else ""
        return f"Tree({{{items}{more}}})"


@dataclass(frozen=True, slots=True)
class Snapshot(Generic[K, V]):
    """Every valid record under a prefix at exactly one etcd revision.

    ``tree`` is a read-only mapping (shared structure: keeping old snapshots is cheap);
    ``changes`` holds, per key, the delta since the previously delivered snapshot.
    """

    tree: Mapping[K, V]
    revision: int
    changes: Mapping[K, Change[K, V]]


class _Absent:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<absent>"


_ABSENT: Any = _Absent()


def _same(old: object, new: object) -> bool:
    if old is new:
        return True
    try:
        return bool(old == new)
    except Exception:  # a value type whose == is not a bool (e.g. arrays)
        return False


class SnapshotEngine(Generic[K, V]):
    """Applies listings and watch events to a persistent map; see the module docstring."""

    def __init__(
        self,
        transform: Transform[K, V],
        *,
        logger: logging.Logger | None = None,
        name: str = "",
    ) -> None:
        self._transform = transform
        self._log = logger or _log
        self._name = name
        self._tree: immutables.Map[K, V] = immutables.Map()
        self._index: dict[bytes, K] = {}  # raw key -> K of every valid record
        self._owner: dict[K, bytes] = {}  # K -> raw key (to detect collisions)
        self._invalid: dict[bytes, bytes] = {}  # raw key -> its rejected value
        self._invalid_count = 0
        self._revision = 0
        self._pending: dict[K, Any] = {}  # K -> value at the last delivery (or _ABSENT)
        self._fresh = False  # a reset happened since the last take()
        self._delivered = 0

    # -- read side ------------------------------------------------------------------------------

    @property
    def revision(self) -> int:
        """The revision the tree is exact at."""
        return self._revision

    @property
    def tree(self) -> immutables.Map[K, V]:
        return self._tree

    @property
    def invalid_records(self) -> int:
        """How many records the transform rejected so far (each rejected value counts once)."""
        return self._invalid_count

    @property
    def pending(self) -> int:
        """How many keys changed since the last delivered snapshot."""
        return len(self._pending)

    # -- write side -----------------------------------------------------------------------------

    def reset(self, kvs: Iterable[tuple[bytes, bytes]], revision: int) -> None:
        """Replace the tree with a full listing at ``revision``.

        Keys that disappeared become synthesized REMOVED changes, so deltas stay consistent across
        a relist. The next :meth:`take` always returns a snapshot.
        """
        old_tree = self._tree
        old_invalid = self._invalid
        self._index = {}
        self._owner = {}
        self._invalid = {}
        mm = immutables.Map[K, V]().mutate()
        for raw, value in kvs:
            rec = self._convert(raw, value, known_bad=old_invalid.get(raw))
            if rec is None:
                continue
            k, v = rec
            owner = self._owner.get(k)
            if owner is not None:
                self._reject(raw, value, f"its key {k!r} collides with {owner!r}")
                continue
            self._index[raw] = k
            self._owner[k] = raw
            mm[k] = v
        new_tree = mm.finish()
        pending = self._pending
        for k, old in old_tree.items():
            if k not in new_tree:
                pending.setdefault(k, old)
        for k, v in new_tree.items():
            if k not in pending:
                old = old_tree.get(k, _ABSENT)
                if old is _ABSENT or not _same(old, v):
                    pending[k] = old
        self._tree = new_tree
        self._revision = revision
        self._fresh = True

    def apply(self, revision: int, events: Iterable[tuple[bytes, bytes | None]]) -> bool:
        """Apply every event of one etcd revision at once; ``value=None`` means a delete.

        Events at or below the current revision are ignored (a resumed watch may repeat them).
        Returns whether anything was applied.
        """
        if revision <= self._revision:
            return False
        mm = self._tree.mutate()
        index = self._index
        owner = self._owner
        pending = self._pending
        for raw, value in events:
            old_k = index.get(raw, _ABSENT)
            if value is None:
                self._invalid.pop(raw, None)
                if old_k is not _ABSENT:
                    del index[raw]
                    del owner[old_k]
                    if old_k not in pending:
                        pending[old_k] = mm.get(old_k, _ABSENT)
                    del mm[old_k]
                continue
            rec = self._convert(raw, value, known_bad=None)
            if rec is not None:
                k, v = rec
                other = owner.get(k)
                if other is not None and other != raw:
                    self._reject(raw, value, f"its key {k!r} collides with {other!r}")
                    rec = None
            if old_k is not _ABSENT and (rec is None or rec[0] != old_k):
                # the record became invalid, or now maps to another K: the old K goes away
                del index[raw]
                del owner[old_k]
                if old_k not in pending:
                    pending[old_k] = mm.get(old_k, _ABSENT)
                del mm[old_k]
            if rec is None:
                continue
            k, v = rec
            self._invalid.pop(raw, None)
            if k not in pending:
                pending[k] = mm.get(k, _ABSENT)
            index[raw] = k
            owner[k] = raw
            mm[k] = v
        self._tree = mm.finish()
        self._revision = revision
        return True

    def advance(self, revision: int) -> None:
        """Nothing under the prefix changed up to ``revision`` (a progress notification)."""
        if revision > self._revision:
            self._revision = revision

    def take(self) -> Snapshot[K, V] | None:
        """The snapshot to deliver next, or ``None`` when nothing changed since the last one."""
        if not self._pending and not self._fresh:
            return None
        if self._revision < self._delivered:
            return None  # a relist answered at an older revision: never deliver going back
        tree = self._tree
        changes: dict[K, Change[K, V]] = {}
        for k, old in self._pending.items():
            new = tree.get(k, _ABSENT)
            if old is _ABSENT:
                if new is not _ABSENT:
                    changes[k] = Change(ChangeKind.ADDED, k, None, new)
            elif new is _ABSENT:
                changes[k] = Change(ChangeKind.REMOVED, k, old, None)
            elif not _same(old, new):
                changes[k] = Change(ChangeKind.UPDATED, k, old, new)
        self._pending = {}
        self._fresh = False
        self._delivered = self._revision
        return Snapshot(Tree(tree), self._revision, changes)

    # -- internals ------------------------------------------------------------------------------

    def _convert(self, raw: bytes, value: bytes, *, known_bad: bytes | None) -> tuple[K, V] | None:
        try:
            out = self._transform(raw, value)
            if not isinstance(out, tuple) or len(out) != 2:
                raise TypeError(
                    f"the transform must return a (key, value) tuple, got {type(out).__name__}"
                    f" {out!r:.60}"
                )
            hash(cast(Hashable, out[0]))
        except Exception as exc:
            if known_bad is not None and known_bad == value:
                self._invalid[raw] = value  # same rejected value as before a relist: no new warning
                return None
            self._reject(raw, value, f"{type(exc).__name__}: {exc}")
            return None
        return out

    def _reject(self, raw: bytes, value: bytes, why: str) -> None:
        self._invalid[raw] = value
        self._invalid_count += 1
        self._log.warning(
            "watch %s: dropping invalid record %r (%d value bytes): %s",
            self._name,
            raw,
            len(value),
            why,
        )
