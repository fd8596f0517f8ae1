"""The snapshot engine: applies etcd watch events to an immutable, structure-sharing tree.

Free of I/O. :class:`SnapshotEngine` keeps

- ``tree``: a persistent map (:class:`~etcdkit._pmap.PMap`: a frozen dict from the last listing
  plus a HAMT of the changes since) of the transformed records, so that producing a
  snapshot costs O(changes), never O(tree);
- a raw-key -> K index, so a delete never depends on transforming the old value;
- the pending deltas since the last *delivered* snapshot (``take()``), merged per key, so a slow
  consumer always gets the newest snapshot next with one change per key. A key added and removed
  again between two deliveries leaves nothing behind, so the pending deltas never outnumber the
  keys of the last delivered tree plus those of the current one, however many keys came and went.

A record whose transform raises (or returns something that is not a ``(key, value)`` tuple with a
hashable key) is invalid: it is left out of the tree, counted and logged once with its key and
error.

Two raw keys that transform to the same K collide. Among all valid records of one K, the one with
the smallest raw key (bytes order) is in the tree; the others are kept hidden (their transformed
values, one sorted list of raw keys per colliding K). When the record in the tree is deleted,
becomes invalid or maps to another K, the smallest hidden one takes over; a new record with a
smaller raw key takes over at once. So the tree never depends on the order of events: it always
equals what a fresh engine builds from a listing at the same revision.

``invalid_records`` counts the records left out, each with one warning:

- every value the transform rejects, once while the record keeps it (a put of the same value
  again, or a relist finding it, does not count again; a put of another value does);
- every put the first time it is hidden by a collision, whether it arrives hidden or is pushed
  out of the tree later by a smaller raw key. Taking over and being pushed out again, or being
  found hidden again by a relist (at the same value), does not count again; a new put does.
"""

from __future__ import annotations

import bisect
import enum
import logging
from collections.abc import (
    Callable,
    Hashable,
    ItemsView,
    Iterable,
    Iterator,
    KeysView,
    Mapping,
    ValuesView,
)
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, Protocol, TypeAlias, TypeVar, cast

from etcdkit._pmap import PMap, PMapMutation

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

    Wrapping costs O(1): the map is shared, never copied; the view compares like a ``dict``.
    """

    __slots__ = ("_map",)

    def __init__(self, m: PMap[K, V]) -> None:
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
    ``changes`` holds, per key, the delta since the previously delivered snapshot (a
    read-only mapping, worked out when first read).
    """

    tree: Mapping[K, V]
    revision: int
    changes: Mapping[K, Change[K, V]]


# Snapshots and Changes are made once per delivered revision (one per event on a busy prefix):
# their slots are set directly, as kv_of does for KeyValue, where the frozen dataclass's
# __init__ goes through object.__setattr__ per field (0.42 -> 0.26 us a Snapshot, 0.68 -> 0.36
# us a Change). Same type, fields, equality and hash; still frozen.
_new_object = object.__new__
_SNAP_TREE, _SNAP_REVISION, _SNAP_CHANGES = (
    Snapshot.__dict__[name].__set__ for name in ("tree", "revision", "changes")
)
_CHANGE_KIND, _CHANGE_KEY, _CHANGE_OLD, _CHANGE_NEW = (
    Change.__dict__[name].__set__ for name in ("kind", "key", "old", "new")
)


def _snapshot(tree: PMap[K, V], revision: int, changes: Mapping[K, Change[K, V]]) -> Snapshot[K, V]:
    snap: Snapshot[K, V] = _new_object(Snapshot)
    _SNAP_TREE(snap, Tree(tree))
    _SNAP_REVISION(snap, revision)
    _SNAP_CHANGES(snap, changes)
    return snap


def _change(kind: ChangeKind, key: K, old: V | None, new: V | None) -> Change[K, V]:
    change: Change[K, V] = _new_object(Change)
    _CHANGE_KIND(change, kind)
    _CHANGE_KEY(change, key)
    _CHANGE_OLD(change, old)
    _CHANGE_NEW(change, new)
    return change


class _Absent:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<absent>"


_ABSENT: Any = _Absent()
_ADDED, _UPDATED, _REMOVED = ChangeKind.ADDED, ChangeKind.UPDATED, ChangeKind.REMOVED


def _same(old: object, new: object) -> bool:
    if old is new:
        return True
    try:
        return bool(old == new)
    except Exception:  # a value type whose == is not a bool (e.g. arrays)
        return False


class _AllAdded(Mapping[K, "Change[K, V]"]):
    """The changes from an empty tree to ``tree``: every key ADDED, made on access."""

    __slots__ = ("_tree",)

    def __init__(self, tree: PMap[K, V]) -> None:
        self._tree = tree

    def __getitem__(self, key: K) -> Change[K, V]:
        return Change(ChangeKind.ADDED, key, None, self._tree[key])

    def __iter__(self) -> Iterator[K]:
        return iter(self._tree)

    def __len__(self) -> int:
        return len(self._tree)

    def __contains__(self, key: object) -> bool:
        return key in self._tree

    def __repr__(self) -> str:
        return f"<{len(self._tree)} changes, all ADDED>"


class _Changes(Mapping[K, "Change[K, V]"]):
    """The changes since the delivery before, worked out on first access: from each key's
    value at that delivery (``pending``: ``_ABSENT`` for a key it did not have) and ``tree``,
    both fixed for good once handed over. A consumer that only reads the tree never pays for
    them."""

    __slots__ = ("_made", "_pending", "_tree")

    def __init__(self, pending: dict[K, Any], tree: PMap[K, V]) -> None:
        self._pending = pending
        self._tree = tree
        self._made: dict[K, Change[K, V]] | None = None

    def _changes(self) -> dict[K, Change[K, V]]:
        made = self._made
        if made is None:
            # (threads that get here at once make equal dicts: whichever is kept will do)
            made = self._made = _changes_between(self._pending, self._tree)
        return made

    def __getitem__(self, key: K) -> Change[K, V]:
        return self._changes()[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._changes())

    def __len__(self) -> int:
        return len(self._changes())

    def __contains__(self, key: object) -> bool:
        return key in self._changes()

    # the dict's own views and get, at C speed (Mapping's go through __getitem__ per key)
    def keys(self) -> KeysView[K]:
        return self._changes().keys()

    def items(self) -> ItemsView[K, Change[K, V]]:
        return self._changes().items()

    def values(self) -> ValuesView[Change[K, V]]:
        return self._changes().values()

    def get(self, key: K, default: Any = None) -> Any:
        return self._changes().get(key, default)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _Changes):
            other = other._changes()
        return self._changes() == other

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self._changes())

    def __reduce__(self) -> tuple[Any, ...]:
        # copied or pickled as the dict it stands for (its pending values hold a marker
        # that only this module's identity checks know)
        return (dict, (self._changes(),))


def _changes_between(pending: dict[K, Any], tree: PMap[K, V]) -> dict[K, Change[K, V]]:
    changes: dict[K, Change[K, V]] = {}
    for k, old in pending.items():
        new = tree.get(k, _ABSENT)
        if old is _ABSENT:
            if new is not _ABSENT:
                changes[k] = _change(_ADDED, k, None, new)
        elif new is _ABSENT:
            changes[k] = _change(_REMOVED, k, old, None)
        elif not _same(old, new):
            changes[k] = _change(_UPDATED, k, old, new)
    return changes


class Record(Protocol):
    """A listed key: anything with ``key`` and ``value`` bytes (a :class:`KeyValue`, etcd's
    ``mvccpb.KeyValue`` message, a :class:`Pair`)."""

    @property
    def key(self) -> bytes: ...

    @property
    def value(self) -> bytes: ...


class _Refused:
    """What a transform that raised returned, for :meth:`SnapshotEngine._convert`."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


class Pair(NamedTuple):
    """A :class:`Record` made from a ``(key, value)`` pair."""

    key: bytes
    value: bytes


def _owners(index: dict[bytes, K]) -> dict[K, bytes]:
    """K -> raw key, from an index in which no two raw keys share a K (no collision so far):
    the index turned around."""
    return {k: raw for raw, k in index.items()}


class Listing(Generic[K, V]):
    """A full listing being loaded page by page (see :meth:`SnapshotEngine.begin_reset`)."""

    __slots__ = (
        "_convert",
        "_transform",
        "hidden",
        "index",
        "invalid",
        "losers",
        "mm",
        "old_invalid",
        "owner",
    )

    def __init__(self, engine: SnapshotEngine[K, V], old_invalid: dict[bytes, bytes]) -> None:
        self._convert = engine._convert
        self._transform = engine._transform
        self.old_invalid = old_invalid  # rejected records already counted (and logged)
        self.invalid: dict[bytes, bytes] = {}
        self.index: dict[bytes, K] = {}
        # K -> raw key in the tree, made at the first collision (see SnapshotEngine._owner)
        self.owner: dict[K, bytes] | None = None
        self.losers: dict[K, list[bytes]] = {}
        self.hidden: dict[bytes, V] = {}
        self.mm: dict[K, V] = {}

    def add(self, records: Iterable[Record]) -> None:
        """Load the next page: records with ``.key`` and ``.value`` (raw keys in any order, each
        at most once per listing). etcd's own messages qualify: a page is read straight from
        the answer, with no pair made per key."""
        index, mm, old_invalid = self.index, self.mm, self.old_invalid
        transform, convert, invalid = self._transform, self._convert, self.invalid
        for record in records:
            raw = record.key
            value = record.value
            try:
                out: Any = transform(raw, value)
            except Exception as exc:
                out = _Refused(exc)  # (convert() says so; the transform is not called again)
            try:
                # The common case, inline: a (K, V) tuple whose K is hashable (``in`` hashes
                # it) and not yet taken. (Another length fails to unpack: convert() below then
                # says what is wrong.)
                if type(out) is not tuple:
                    raise TypeError
                k, v = out
                taken = k in mm
            except Exception:
                known_bad = old_invalid.get(raw) if old_invalid else None
                rec = convert(raw, value, out, known_bad=known_bad, invalid=invalid)
                if rec is None:
                    continue
                k, v = rec
                taken = k in mm
            if taken:
                self._collide(raw, k, v)
            else:
                index[raw] = k
                mm[k] = v
                if self.owner is not None:
                    self.owner[k] = raw

    def _collide(self, raw: bytes, k: K, v: V) -> None:
        """``raw -> (k, v)`` meets the record holding ``k``: the smallest raw key wins."""
        owner = self.owner
        if owner is None:  # the first collision: until now every K had one raw key
            owner = self.owner = _owners(self.index)
        cur = owner[k]
        self.index[raw] = k
        if raw < cur:
            bisect.insort(self.losers.setdefault(k, []), cur)
            self.hidden[cur] = self.mm[k]
            owner[k] = raw
            self.mm[k] = v
        else:
            bisect.insort(self.losers.setdefault(k, []), raw)
            self.hidden[raw] = v


class SnapshotEngine(Generic[K, V]):
    """Applies listings and watch events to a persistent map; see the module docstring.

    Invariant: after any sequence of :meth:`reset` and :meth:`apply`, ``tree`` equals the tree
    a fresh engine builds from ``reset(<the raw listing at that revision>)``.
    """

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
        # (tree, revision), replaced in one assignment so a reader never pairs two revisions
        self._view: tuple[PMap[K, V], int] = (PMap(), 0)
        self._index: dict[bytes, K] = {}  # raw key -> K of every valid record, hidden or not
        # K -> raw key of the record in the tree; None while no two valid records share a K
        # (every valid record is then in the tree: the owner of K is the one raw key whose
        # index entry is K). Made at the first collision, kept until a listing without one:
        # a prefix whose keys never collide keeps one map per key fewer. Made in one go, from
        # the index: O(keys) once (about 0.2 s of the loop at a million keys, when an event
        # makes the first collision; a listing's page of 100k keys takes half of that).
        self._owner: dict[K, bytes] | None = None
        self._losers: dict[K, list[bytes]] = {}  # K -> sorted raw keys of its hidden records
        self._hidden: dict[bytes, V] = {}  # raw key of a hidden record -> its value
        self._reported: dict[bytes, Any] = {}  # raw key -> the value it was counted hidden at
        self._invalid: dict[bytes, bytes] = {}  # raw key -> its rejected value
        self._begun: Listing[K, V] | None = None  # a listing begun and not finished
        self._invalid_count = 0
        self._pending: dict[K, Any] = {}  # K -> value at the last delivery (or _ABSENT)
        self._dirty = False  # a listing, or an event that touched the tree, since the last take()
        self._delivered = 0
        self._base_empty = True  # the last delivered tree was empty (or none was delivered)

    # -- read side ------------------------------------------------------------------------------

    @property
    def view(self) -> tuple[PMap[K, V], int]:
        """``(tree, revision)`` as one consistent pair, safe to read from another thread."""
        return self._view

    @property
    def revision(self) -> int:
        """The revision the tree is exact at."""
        return self._view[1]

    @property
    def tree(self) -> PMap[K, V]:
        return self._view[0]

    @property
    def invalid_records(self) -> int:
        """Records left out so far: see the module docstring for what counts."""
        return self._invalid_count

    @property
    def pending(self) -> int:
        """Keys that may have changed since the last delivered snapshot.

        At most the size of the last delivered tree plus the size of the current tree, however
        many keys came and went in between.
        """
        return len(self._pending)

    # -- write side -----------------------------------------------------------------------------

    def reset(self, kvs: Iterable[tuple[bytes, bytes]], revision: int) -> None:
        """Replace the tree with a full listing at ``revision`` (each raw key at most once).

        Keys that disappeared become synthesized REMOVED changes, so deltas stay consistent across
        a relist. The next :meth:`take` always returns a snapshot.
        """
        listing = self.begin_reset()
        listing.add(Pair(key, value) for key, value in kvs)
        self.finish_reset(listing, revision)

    def begin_reset(self) -> Listing[K, V]:
        """Start a listing that arrives page by page: ``add()`` each page, then
        :meth:`finish_reset`. The tree stays as it is until then; no page is kept. A listing
        begun before and never finished (its reads failed) counted and logged the records
        it rejected: this one does not again, at the same value."""
        last = self._begun
        known = self._invalid if last is None else {**last.old_invalid, **last.invalid}
        listing = self._begun = Listing(self, known)
        return listing

    def finish_reset(self, listing: Listing[K, V], revision: int) -> None:
        """Replace the tree with ``listing`` at ``revision`` (see :meth:`reset`)."""
        if listing is self._begun:
            self._begun = None
        old_tree = self._view[0]
        old_reported = self._reported
        new_tree = PMap.from_dict(listing.mm)
        index, hidden = listing.index, listing.hidden
        self._index, self._owner, self._losers, self._hidden = (
            index,
            listing.owner,
            listing.losers,
            hidden,
        )
        self._invalid = listing.invalid
        # a record hidden before the relist at the same value was counted already
        self._reported = {}
        for raw, was in old_reported.items():
            k = index.get(raw, _ABSENT)
            if k is not _ABSENT and _same(was, hidden[raw] if raw in hidden else new_tree[k]):
                self._reported[raw] = was
        for raw, v in hidden.items():
            self._report_hidden(raw, v, index[raw])
        if self._base_empty:
            self._pending = {}  # every key of the next snapshot is ADDED: nothing to remember
        else:
            pending = self._pending
            for k, old in old_tree.items():
                if k not in new_tree:
                    pending.setdefault(k, old)
            for k, v in new_tree.items():
                if k not in pending:
                    old = old_tree.get(k, _ABSENT)
                    if old is _ABSENT or not _same(old, v):
                        pending[k] = old
            for k in [k for k, old in pending.items() if old is _ABSENT and k not in new_tree]:
                del pending[k]  # came and went since the last delivery: no change at all
        self._dirty = True
        self._view = (new_tree, revision)

    def apply(self, revision: int, events: Iterable[tuple[bytes, bytes | None]]) -> bool:
        """Apply every event of one etcd revision at once; ``value=None`` means a delete.

        Events at or below the current revision are ignored (a resumed watch may repeat them).
        Returns whether anything was applied.
        """
        tree, current = self._view
        if revision <= current:
            return False
        mm = tree.mutate()
        transform = self._transform
        index = self._index
        losers = self._losers
        pending = self._pending
        invalid = self._invalid
        reported = self._reported
        touched = False
        for raw, value in events:
            old_k = index.get(raw, _ABSENT)
            if reported:
                reported.pop(raw, None)  # a new value (or none): a new record to count
            if value is None:
                if invalid:
                    invalid.pop(raw, None)
                if old_k is _ABSENT:
                    continue
                del index[raw]
                if losers:
                    touched = self._withdraw(mm, raw, old_k) or touched
                    continue
                # no collision anywhere: every valid record is in the tree
                owner = self._owner  # (made by a collision earlier in this loop, maybe)
                if owner is not None:
                    del owner[old_k]
                if old_k not in pending:
                    pending[old_k] = mm[old_k]
                elif pending[old_k] is _ABSENT:
                    del pending[old_k]  # came and went since the last delivery: no change
                del mm[old_k]
                touched = True
                continue
            # The common case inline, as Listing.add has it: a (K, V) tuple whose K hashes;
            # anything else goes through _convert, which says what is wrong.
            try:
                out: Any = transform(raw, value)
            except Exception as exc:
                out = _Refused(exc)
            try:
                if type(out) is not tuple:
                    raise TypeError
                k, v = out
                hash(k)
            except Exception:
                # (a put of the value it already rejected is the same record: not again)
                known_bad = invalid.get(raw) if invalid else None
                rec = self._convert(raw, value, out, known_bad=known_bad)
                if rec is None:
                    if old_k is not _ABSENT:
                        del index[raw]
                        touched = self._withdraw(mm, raw, old_k) or touched
                    continue
                k, v = rec
            owner = self._owner
            if owner is not None:
                cur = owner.get(k)
            elif old_k is not _ABSENT and old_k == k:
                cur = raw  # (no collision anywhere: raw's record is the one filed under k)
            else:
                cur = self._holder(mm, k)
            if invalid:
                invalid.pop(raw, None)
            if old_k is not _ABSENT and old_k != k:
                del index[raw]
                touched = self._withdraw(mm, raw, old_k) or touched
                # (the withdrawal may have changed who holds k)
                owner = self._owner
                cur = owner.get(k) if owner is not None else self._holder(mm, k)
            if cur is None or cur == raw:
                if cur is None:
                    index[raw] = k
                    if self._owner is not None:
                        self._owner[k] = raw
                old = mm.swap(k, v, _ABSENT)
                if k not in pending:
                    pending[k] = old
                touched = True
            else:
                touched = self._contend(mm, raw, k, v, cur) or touched
        if touched:
            self._dirty = True
        self._view = (mm.finish(), revision)
        return True

    def advance(self, revision: int) -> None:
        """Nothing under the prefix changed up to ``revision`` (a progress notification)."""
        tree, current = self._view
        if revision > current:
            self._view = (tree, revision)

    def take(self) -> Snapshot[K, V] | None:
        """The snapshot to deliver next, or ``None`` when nothing arrived since the last one.

        A listing, or any event that touched the tree, yields a snapshot, even when its changes
        cancelled out (its ``changes`` are then empty); a progress notification alone does not.
        """
        if not self._dirty and not self._pending:
            return None
        tree, revision = self._view
        if revision < self._delivered:
            return None  # a relist answered at an older revision: never deliver going back
        changes: Mapping[K, Change[K, V]]
        if self._base_empty:
            # The consumer had an empty tree: every key is ADDED. Built on demand, so a first
            # snapshot of a million keys costs nothing here.
            changes = _AllAdded(tree)
            self._pending = {}
            self._dirty = False
            self._delivered = revision
            self._base_empty = len(tree) == 0
            return _snapshot(tree, revision, changes)
        changes = _Changes(self._pending, tree)
        self._pending = {}
        self._dirty = False
        self._delivered = revision
        self._base_empty = len(tree) == 0
        return _snapshot(tree, revision, changes)

    # -- internals ------------------------------------------------------------------------------

    def _set(self, mm: PMapMutation[K, V], k: K, v: V) -> None:
        if k not in self._pending:
            self._pending[k] = mm.get(k, _ABSENT)
        mm[k] = v

    def _withdraw(self, mm: PMapMutation[K, V], raw: bytes, k: K) -> bool:
        """``raw`` (already out of the index) no longer holds a record for ``k``.

        Returns whether the tree changed: the next hidden record takes over, or ``k`` goes.
        """
        owner = self._owner
        if owner is None:  # no collision anywhere: raw held k alone
            return self._remove(mm, k)
        losers = self._losers.get(k)
        if owner[k] != raw:
            assert losers is not None
            del losers[bisect.bisect_left(losers, raw)]
            if not losers:
                del self._losers[k]
            del self._hidden[raw]
            return False
        if losers:
            nxt = losers.pop(0)
            if not losers:
                del self._losers[k]
            owner[k] = nxt
            self._set(mm, k, self._hidden.pop(nxt))
            return True
        del owner[k]
        return self._remove(mm, k)

    def _remove(self, mm: PMapMutation[K, V], k: K) -> bool:
        """``k`` leaves the tree (no record holds it any more)."""
        pending = self._pending
        if k not in pending:
            pending[k] = mm[k]
        elif pending[k] is _ABSENT:
            del pending[k]
        del mm[k]
        return True

    def _holder(self, mm: PMapMutation[K, V], k: K) -> bytes | None:
        """With no reverse map yet: ``None`` if ``k`` is not in the tree; else a record meets
        the one holding ``k``, the first collision, which makes the map: the raw key holding
        ``k``. (Until then every valid record is in the tree under its own K: the map is the
        index turned around.)"""
        if k not in mm:
            return None
        owner = self._owner = _owners(self._index)
        return owner[k]

    def _contend(self, mm: PMapMutation[K, V], raw: bytes, k: K, v: V, cur: bytes) -> bool:
        """A valid record ``raw -> (k, v)`` meets ``cur``, the raw key holding ``k`` now.

        The smallest raw key wins. Returns whether the tree changed.
        """
        self._index[raw] = k
        hidden = self._hidden
        if cur < raw:  # raw stays hidden, or goes hidden (a hidden raw key is never the smallest)
            if raw not in hidden:
                bisect.insort(self._losers.setdefault(k, []), raw)
            hidden[raw] = v
            self._report_hidden(raw, v, k)
            return False
        # raw takes over: the record in the tree goes hidden
        was = mm[k]
        bisect.insort(self._losers.setdefault(k, []), cur)
        hidden[cur] = was
        assert self._owner is not None  # (made by the collision that brought us here)
        self._owner[k] = raw
        self._set(mm, k, v)
        self._report_hidden(cur, was, k)
        return True

    def _report_hidden(self, raw: bytes, v: V, k: K) -> None:
        was = self._reported.get(raw, _ABSENT)
        if was is not _ABSENT and _same(was, v):
            return
        self._reported[raw] = v
        self._invalid_count += 1
        assert self._owner is not None  # (made by the collision that hides raw)
        self._log.warning(
            "watch %s: hiding record %r: its key %r is also the key of %r, which wins"
            " (the smallest raw key does)",
            self._name,
            raw,
            k,
            self._owner[k],
        )

    def _convert(
        self,
        raw: bytes,
        value: bytes,
        out: object,
        *,
        known_bad: bytes | None,
        invalid: dict[bytes, bytes] | None = None,
    ) -> tuple[K, V] | None:
        """``(K, V)`` of a record from what the transform returned for it (``out``; a
        :class:`_Refused` if it raised), or ``None`` when that is no such pair; rejected
        records go into ``invalid`` (the engine's own by default; a listing's while it
        loads)."""
        try:
            if isinstance(out, _Refused):
                raise out.error
            if not isinstance(out, tuple) or len(out) != 2:
                raise TypeError(
                    f"the transform must return a (key, value) tuple, got {type(out).__name__}"
                    f" {out!r:.60}"
                )
            hash(cast(Hashable, out[0]))
        except Exception as exc:
            into = self._invalid if invalid is None else invalid
            if known_bad is not None and known_bad == value:
                into[raw] = value  # same rejected value as before a relist: no new warning
                return None
            self._reject(raw, value, f"{type(exc).__name__}: {exc}", into)
            return None
        return cast("tuple[K, V]", out)

    def _reject(
        self, raw: bytes, value: bytes, why: str, invalid: dict[bytes, bytes] | None = None
    ) -> None:
        (self._invalid if invalid is None else invalid)[raw] = value
        self._invalid_count += 1
        self._log.warning(
            "watch %s: dropping invalid record %r (%d value bytes): %s",
            self._name,
            raw,
            len(value),
            why,
        )
