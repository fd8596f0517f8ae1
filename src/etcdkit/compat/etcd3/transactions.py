"""python-etcd3's transaction building blocks, turned into etcdkit's :class:`~etcdkit.Compare`
and :class:`~etcdkit.Op`.

Compares are written as in python-etcd3: ``client.transactions.value(key) == b"v"``,
``.version(key) > 0``, ``.create(key) == 0``, ``.mod(key) < rev``, ``.lease(key) == lease_id``,
with ``==``, ``!=``, ``<`` and ``>``; operations as ``client.transactions.put(key, value,
lease=None, prev_kv=False)``, ``.get(key, range_end=None)``, ``.delete(key, range_end=None,
prev_kv=False)``, and ``.txn(compare, success, failure)``: a transaction nested in another
(etcd 3.3+; etcdkit's :meth:`~etcdkit.Op.txn`), whose response is a ``ResponseOp`` with
``response_txn``: ``succeeded``, and a ``ResponseOp`` per operation in ``responses`` (a get's
has ``response_range``), as in python-etcd3.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Literal

from etcdkit import Compare, Op

if TYPE_CHECKING:
    from etcdkit.compat.etcd3.leases import Lease as LeaseObject

__all__ = [
    "BaseCompare",
    "Create",
    "Delete",
    "Get",
    "Lease",
    "Mod",
    "Put",
    "Txn",
    "Value",
    "Version",
    "lease_to_id",
    "to_bytes",
]

Target = Literal["value", "version", "create", "mod", "lease"]
CompareOp = Literal["==", "!=", "<", ">"]


def seconds_or_none(timeout: object) -> float | None:
    """A ``timeout`` argument checked (``None`` stays ``None``): ``TypeError`` for what is
    not a number (a bool either), ``ValueError`` for NaN. Each caller then applies its own
    call's rule to a negative or a huge one."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(
            f"timeout must be a number of seconds or None, got {type(timeout).__name__}: "
            f"{timeout!r:.40}"
        )
    if isinstance(timeout, float) and math.isnan(timeout):
        raise ValueError("timeout must be a number of seconds or None, got nan")
    return timeout  # (an int as it is: one past a float's range is still "huge")


def to_bytes(value: str | bytes, what: str = "key") -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise TypeError(f"{what} must be str or bytes, got {type(value).__name__}: {value!r:.80}")


def end_of(range_end: str | bytes | None) -> str | bytes | None:
    """A range end as etcdkit takes it: python-etcd3 sent an empty one as it was, which etcd
    reads as "no range end" (the one key); etcdkit refuses an empty one, so it is ``None``."""
    return None if range_end in ("", b"") else range_end


def lease_to_id(lease: LeaseObject | int | str | None) -> int:
    """A lease id from a :class:`~etcdkit.compat.etcd3.Lease`, an int id, its decimal digits
    as a str (python-etcd3 took ``int(lease)``), or ``None`` (0)."""
    if lease is None:
        return 0
    if isinstance(lease, int) and not isinstance(lease, bool):
        return lease
    if isinstance(lease, str) and lease.isascii() and lease.isdigit():
        return int(lease)
    lease_id = getattr(lease, "id", None)
    if isinstance(lease_id, int):
        return lease_id
    raise TypeError(
        f"lease must be a Lease, an int lease id (or its digits) or None, got {lease!r:.80}"
    )


class BaseCompare:
    """One condition of a transaction; completed by a comparison operator (which returns the
    compare itself, as in python-etcd3)."""

    target: Target = "value"

    def __init__(self, key: str | bytes, range_end: str | bytes | None = None) -> None:
        self.key = key
        self.range_end = range_end
        self.value: object = None
        self.op: CompareOp | None = None

    def _set(self, op: CompareOp, other: object) -> BaseCompare:
        self.op = op
        self.value = other
        return self

    def __eq__(self, other: object) -> BaseCompare:  # type: ignore[override]
        return self._set("==", other)

    def __ne__(self, other: object) -> BaseCompare:  # type: ignore[override]
        return self._set("!=", other)

    def __lt__(self, other: object) -> BaseCompare:
        return self._set("<", other)

    def __gt__(self, other: object) -> BaseCompare:
        return self._set(">", other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        keys = self.key if self.range_end is None else f"[{self.key!r}, {self.range_end!r})"
        return f"<{type(self).__name__} {keys!r} {self.op or '?'} {self.value!r}>"

    def to_compare(self) -> Compare:
        """etcdkit's :class:`~etcdkit.Compare` for this condition."""
        if self.op is None:
            raise ValueError(
                f"{self!r} has no comparison: write e.g. transactions.{self.target}(key) == x"
            )
        key = to_bytes(self.key)
        if not key:
            raise ValueError("a compare's key must not be empty")
        end = b"" if self.range_end is None else to_bytes(self.range_end, "range_end")
        operand: bytes | int
        if self.target == "value":
            if not isinstance(self.value, str | bytes):
                raise TypeError(f"a value compare needs str or bytes, got {self.value!r:.80}")
            operand = to_bytes(self.value, "value")
        elif self.target == "lease":
            operand = lease_to_id(self.value)  # type: ignore[arg-type]
        else:
            try:
                operand = int(self.value)  # type: ignore[call-overload]
            except (TypeError, ValueError):
                raise TypeError(
                    f"a {self.target} compare needs an int, got {self.value!r:.80}"
                ) from None
        return Compare(key, self.target, self.op, operand, end)


class Value(BaseCompare):
    """Compare the key's value."""

    target: Target = "value"


class Version(BaseCompare):
    """Compare the key's version (0: the key does not exist)."""

    target: Target = "version"


class Create(BaseCompare):
    """Compare the key's create revision (0: the key does not exist)."""

    target: Target = "create"


class Mod(BaseCompare):
    """Compare the key's mod revision."""

    target: Target = "mod"


class Lease(BaseCompare):
    """Compare the key's lease id (a Lease or an int)."""

    target: Target = "lease"


class Put:
    """Write ``key=value`` (on ``lease``, a Lease or an id), inside a transaction."""

    def __init__(
        self,
        key: str | bytes,
        value: str | bytes,
        lease: LeaseObject | int | str | None = None,
        prev_kv: bool = False,
    ) -> None:
        self.key = key
        self.value = value
        self.lease = lease
        self.prev_kv = prev_kv

    def to_op(self) -> Op:
        return Op.put(self.key, self.value, lease=lease_to_id(self.lease), prev_kv=self.prev_kv)


class Get:
    """Read ``key`` (or ``[key, range_end)``) inside a transaction."""

    def __init__(self, key: str | bytes, range_end: str | bytes | None = None) -> None:
        self.key = key
        self.range_end = range_end

    def to_op(self) -> Op:
        return Op.range(self.key, end_of(self.range_end))


class Delete:
    """Delete ``key`` (or ``[key, range_end)``) inside a transaction."""

    def __init__(
        self, key: str | bytes, range_end: str | bytes | None = None, prev_kv: bool = False
    ) -> None:
        self.key = key
        self.range_end = range_end
        self.prev_kv = prev_kv

    def to_op(self) -> Op:
        return Op.delete_range(self.key, end_of(self.range_end), prev_kv=self.prev_kv)


class Txn:
    """A transaction nested in another (etcd 3.3+): its response is a ``ResponseOp`` whose
    ``response_txn`` holds ``succeeded`` and its ``responses``."""

    def __init__(
        self,
        compare: Sequence[BaseCompare],
        success: Sequence[object] | None = None,
        failure: Sequence[object] | None = None,
    ) -> None:
        self.compare = compare
        self.success = success
        self.failure = failure

    def to_op(self) -> Op:
        return Op.txn(
            to_compares(self.compare),
            to_ops(self.success, "success"),  # type: ignore[arg-type]
            to_ops(self.failure, "failure"),  # type: ignore[arg-type]
        )


Operation = Put | Get | Delete | Txn


def to_ops(ops: Iterable[Operation] | None, what: str) -> list[Op]:
    """etcdkit's :class:`~etcdkit.Op` for each python-etcd3 operation (TypeError for others)."""
    if ops is None:
        return []
    if isinstance(ops, str | bytes) or not isinstance(ops, Iterable):
        raise TypeError(f"{what} must be a list of transactions.put/get/delete, got {ops!r:.80}")
    out = []
    for op in ops:
        if not isinstance(op, Put | Get | Delete | Txn):
            raise TypeError(
                f"each {what} operation must be transactions.put/get/delete, got {op!r:.80}"
            )
        out.append(op.to_op())
    return out


def to_compares(compare: Iterable[BaseCompare] | None) -> list[Compare]:
    """etcdkit's :class:`~etcdkit.Compare` for each python-etcd3 compare."""
    if compare is None:
        return []
    if isinstance(compare, str | bytes) or not isinstance(compare, Iterable):
        raise TypeError(f"compare must be a list of transactions compares, got {compare!r:.80}")
    out = []
    for c in compare:
        if not isinstance(c, BaseCompare):
            raise TypeError(
                f"each compare must be e.g. transactions.value(key) == v, got {c!r:.80}"
            )
        out.append(c.to_compare())
    return out
