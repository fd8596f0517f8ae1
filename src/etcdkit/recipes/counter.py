"""Counter: an integer in one etcd key, added to by many without losing an update.

The value is stored as **decimal ASCII** (``b"42"``, ``b"-7"``): what ``etcdctl get`` shows
and ``etcdctl put KEY 100`` sets, and what any client can read. A missing key counts as 0.

An add is compare-and-swap: read the key, then a transaction that writes the new value only
if the key's mod revision is still the one read (0 for a missing key), and otherwise reads the
key again in the same round trip. A lost race tries again at once with what it read, then
after short pauses (a few ms, doubling up to 50 ms, with jitter: a lost race means another
add won, so it is no reason to wait as for a fault). Go's recipes have no counter; this layout
is ours.
"""

from __future__ import annotations

import re
import sys

from etcdkit._blocking.twin import Twin, blocking, mirror
from etcdkit._errors import OutcomeUnknownError
from etcdkit._surface import Etcd
from etcdkit._types import Compare, KeyValue, Op, RangeResult, key_bytes
from etcdkit.recipes.cas import contention_backoff, guarded_txn

__all__ = ["Counter", "SyncCounter"]

_DECIMAL = re.compile(rb"-?[0-9]+")


def _value_of(key: bytes, kv: KeyValue | None) -> int:
    if kv is None:
        return 0
    if not _DECIMAL.fullmatch(kv.value):
        raise ValueError(
            f"counter {key!r:.200} holds {kv.value!r:.60}, not a decimal integer (fix it with "
            f"'etcdctl put {key.decode(errors='replace'):.200} 0')"
        )
    try:
        return int(kv.value)
    except ValueError:  # past sys.get_int_max_str_digits()
        raise ValueError(
            f"counter {key!r:.200} holds a decimal of {len(kv.value.lstrip(b'-'))} digits, "
            f"more than the {sys.get_int_max_str_digits()} this Python converts "
            "(sys.set_int_max_str_digits)"
        ) from None


def _text_of(key: bytes, value: int) -> str:
    try:
        return str(value)
    except ValueError:  # past sys.get_int_max_str_digits()
        raise ValueError(
            f"counter {key!r:.200}: the new value has more digits than this Python converts "
            f"({sys.get_int_max_str_digits()}, sys.set_int_max_str_digits); nothing written"
        ) from None


class Counter:
    """An integer in the etcd key ``key``, as decimal ASCII (a missing key is 0).

    ``await c.add(n)`` adds ``n`` (negative subtracts) and returns the new value;
    ``await c.value()`` reads it. No update is lost under contention: every add is a
    compare-and-swap on the key's mod revision, retried until it wins.

    On faults: an add whose write gets no answer is sent again, unchanged (its compare lets
    at most one copy apply); if no answer settles it, the add raises
    :class:`OutcomeUnknownError`: it may or may not have been applied, and it is not applied
    again. Any other error means it was not applied. A cancelled ``add`` may or may not have
    been applied. The key carries no lease.
    """

    def __init__(self, etcd: Etcd, key: str | bytes) -> None:
        self._etcd = etcd
        self._key = key_bytes(key)

    @property
    def key(self) -> bytes:
        """The etcd key that holds the value."""
        return self._key

    def __repr__(self) -> str:
        return f"<Counter key={self._key!r}>"

    async def value(self) -> int:
        """The current value (a linearizable read; 0 when the key is missing). Raises
        ``ValueError`` when the key holds something other than a decimal integer."""
        return _value_of(self._key, await self._etcd.get(self._key))

    async def add(self, n: int = 1) -> int:
        """Add ``n`` (any int; negative subtracts) and return the value it made.

        Raises :class:`OutcomeUnknownError` when it cannot tell whether the add was applied
        (see the class), ``ValueError`` when the key holds something other than a decimal
        integer (nothing written)."""
        if not isinstance(n, int) or isinstance(n, bool):
            raise TypeError(f"n must be an int, got {type(n).__name__}: {n!r:.40}")
        _text_of(self._key, n)  # (one this Python cannot write: refused before any I/O)
        backoff = contention_backoff(self._etcd.retry)
        kv = await self._etcd.get(self._key)
        lost = 0
        while True:
            new = _value_of(self._key, kv) + n
            answer = await guarded_txn(
                self._etcd,
                [Compare.mod_revision(self._key, "==", kv.mod_revision if kv else 0)],
                [Op.put(self._key, _text_of(self._key, new))],
                [Op.get(self._key)],
                what=f"counter {self._key!r}: add {n}",
            )
            if answer.succeeded:
                return new
            if answer.maybe_ours:
                raise OutcomeUnknownError(
                    f"counter {self._key!r}: adding {n} got no answer at first, and then the "
                    "value had changed: the add may or may not have been applied"
                )
            now = answer.result.responses[0]
            assert isinstance(now, RangeResult)
            kv = now.kvs[0] if now.kvs else None
            lost += 1
            if lost > 1:  # the first retry goes at once, with the value just read
                await backoff.wait()


class SyncCounter(Twin[Counter]):
    """Blocking view of a :class:`Counter` (``client.counter(key)`` on the threaded
    :class:`~etcdkit.Client`)."""

    key: mirror[bytes] = mirror(Counter.key, direct=True)
    value = blocking(Counter.value)
    add = blocking(Counter.add)
