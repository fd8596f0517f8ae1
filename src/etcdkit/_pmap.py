"""A persistent map built for big listings: a frozen ``dict`` base plus a HAMT overlay.

Pure, no I/O. A snapshot tree must be persistent (each snapshot keeps its own version; making
the next costs O(changes), never O(tree)). ``immutables.Map`` alone is that, but building one
of a million keys costs ~3 µs a key, most of a first sync's time. Here a full listing becomes a
plain ``dict`` (~0.1 µs a key), never mutated afterwards and shared by every later version;
changes go into an ``immutables.Map`` overlay (a removed key is a tombstone there). When the
overlay grows past half the base, the next version folds it into a new base (O(n), once per
~n/2 changes: amortized O(1) a change).

:class:`PMap` offers the read side of a mapping; :meth:`PMap.mutate` gives a
:class:`PMapMutation` (``m[k] = v``, ``del m[k]``, ``m.get``), and ``finish()`` the new version.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Generic, TypeVar, cast

import immutables

__all__ = ["PMap", "PMapMutation"]

K = TypeVar("K")
V = TypeVar("V")


class _Tombstone:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<removed>"


_GONE: Any = _Tombstone()
_MISSING: Any = object()
FOLD_MIN = 1024  # an overlay this small is never folded
_new_object = object.__new__


class PMap(Mapping[K, V], Generic[K, V]):
    """An immutable mapping: ``base`` (never mutated) overridden by ``over``."""

    __slots__ = ("_base", "_over", "_size")

    def __init__(
        self,
        base: dict[K, V] | None = None,
        over: immutables.Map[K, Any] | None = None,
        size: int | None = None,
    ) -> None:
        self._base: dict[K, V] = {} if base is None else base
        self._over: immutables.Map[K, Any] = immutables.Map() if over is None else over
        self._size = len(self._base) if size is None else size

    @classmethod
    def from_dict(cls, base: dict[K, V]) -> PMap[K, V]:
        """A map owning ``base`` (the caller must not mutate it afterwards)."""
        return cls(base)

    def __getitem__(self, key: K) -> V:
        v = self._over.get(key, _MISSING)
        if v is _MISSING:
            return self._base[key]
        if v is _GONE:
            raise KeyError(key)
        return cast(V, v)

    def get(self, key: K, default: Any = None) -> Any:
        v = self._over.get(key, _MISSING)
        if v is _MISSING:
            return self._base.get(key, default)
        return default if v is _GONE else v

    def __contains__(self, key: object) -> bool:
        v = self._over.get(cast(K, key), _MISSING)
        if v is _MISSING:
            return key in self._base
        return v is not _GONE

    def __iter__(self) -> Iterator[K]:
        over = self._over
        if not over:
            yield from self._base
            return
        for k in self._base:
            if k not in over:
                yield k
        for k, v in over.items():
            if v is not _GONE:
                yield k

    def __len__(self) -> int:
        return self._size

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PMap) and other._base is self._base and other._over == self._over:
            return True
        if not isinstance(other, Mapping):
            return NotImplemented
        if len(self) != len(other):
            return False
        try:
            return all(k in other and other[k] == v for k, v in self.items())
        except Exception:  # values whose == is not a bool (e.g. arrays)
            return False

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"PMap({len(self)} keys, {len(self._over)} in the overlay)"

    def mutate(self) -> PMapMutation[K, V]:
        mm: PMapMutation[K, V] = _new_object(PMapMutation)
        mm._base, mm._over, mm._size = self._base, self._over.mutate(), self._size
        return mm


class PMapMutation(Generic[K, V]):
    """Changes to a :class:`PMap` under way; ``finish()`` gives the new version."""

    __slots__ = ("_base", "_over", "_size")

    def __init__(self, base: dict[K, V], over: Any, size: int) -> None:
        self._base = base
        self._over = over  # an immutables.MapMutation
        self._size = size

    def get(self, key: K, default: Any = None) -> Any:
        v = self._over.get(key, _MISSING)
        if v is _MISSING:
            return self._base.get(key, default)
        return default if v is _GONE else v

    def __getitem__(self, key: K) -> V:
        v = self.get(key, _MISSING)
        if v is _MISSING:
            raise KeyError(key)
        return cast(V, v)

    def __contains__(self, key: object) -> bool:
        return self.get(key, _MISSING) is not _MISSING  # type: ignore[arg-type]

    def __setitem__(self, key: K, value: V) -> None:
        self.swap(key, value)

    def swap(self, key: K, value: V, default: Any = None) -> Any:
        """``self[key] = value``; returns the value it replaced (``default`` if none): one
        lookup where ``get`` then ``[key] =`` make two."""
        over = self._over
        old = over.get(key, _MISSING)
        if old is _MISSING:
            old = self._base.get(key, _MISSING)
        elif old is _GONE:
            old = _MISSING
        over[key] = value
        if old is _MISSING:
            self._size += 1
            return default
        return old

    def __delitem__(self, key: K) -> None:
        if self.get(key, _MISSING) is _MISSING:
            raise KeyError(key)
        self._size -= 1
        if key in self._base:
            self._over[key] = _GONE
        else:
            del self._over[key]

    def finish(self) -> PMap[K, V]:
        over = self._over.finish()
        if len(over) > max(FOLD_MIN, len(self._base) // 2):
            base = dict(self._base)
            for k, v in over.items():
                if v is _GONE:
                    del base[k]
                else:
                    base[k] = v
            return PMap(base)
        # (one version per watch event: made without __init__'s defaults)
        pm: PMap[K, V] = _new_object(PMap)
        pm._base, pm._over, pm._size = self._base, over, self._size
        return pm
