"""The endpoint record: Go's ``naming/endpoints`` JSON, written and read byte-compatibly.

Go's ``endpoints.Manager`` (etcd 3.4+: ``go.etcd.io/etcd/clientv3/naming/endpoints``, 3.5+:
``go.etcd.io/etcd/client/v3/naming/endpoints``) stores one endpoint per key as the JSON of its
``internal.Update`` struct, which must stay a superset of grpc-go's old ``naming.Update``::

    {"Op":0,"Addr":"10.0.0.5:8080","Metadata":null}

Writing: exactly those three fields in that order, compact, as ``json.Marshal`` writes them:
``<``, ``>``, ``&``, U+2028 and U+2029 escaped (``\\u003c``...), maps with their keys sorted,
floats in Go's shortest form (``1`` for 1.0, ``1e-7``, ``1e+21``). ``Op`` is always 0 (Add):
a delete is a deleted key, never a record.

Reading follows ``json.Unmarshal`` into that struct, as Go's ``List``, ``NewWatchChannel``
and the ``etcd:///`` resolver do: field names match case-insensitively (the last occurrence
wins), unknown fields are ignored, ``null`` leaves a field empty, ``Op`` must be a uint8 as
``strconv.ParseUint`` reads one: digits only, 0 to 255 (so not ``-0``, ``0.0``, ``0e0`` or
``1e2``; every occurrence of the field is checked, as Go checks each; its value is ignored, as
Go ignores it), ``Addr`` a string, ``Metadata`` any JSON value (objects become dicts; numbers
the float64 Go holds, so Go's bytes come out again: an integer literal up to 2**53 in size
stays an int, a bigger one is rounded to a float, ``-0`` is -0.0). A document that is JSON
``null`` decodes to an empty endpoint, as in Go. Anything else Go would refuse raises
ValueError: Go skips such records with a warning, and so do we (counted).

One difference: Go reads arrays and objects nested up to 10,000 levels; we read up to
``MAX_DEPTH`` (256, the record's own object being level 1) and refuse a deeper record with
ValueError, as one Go would refuse (Python's data structures recurse: comparing or printing a
value 10,000 levels deep raises RecursionError). Writing refuses metadata that deep too.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from etcdkit.cluster._gojson import GoObject, MinusZero, field, go_text, loads_object, parse_int

__all__ = ["MAX_DEPTH", "Endpoint", "decode_endpoint", "encode_endpoint", "metadata_is_safe"]

MAX_DEPTH = 256
"""How deeply a record may nest (its own object is level 1; Go reads up to 10,000)."""

_WHAT = "endpoint record (Go's naming/endpoints JSON)"
_GO_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}
_GO_ESCAPED = re.compile("[<>&\u2028\u2029]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_JSON_SPACE = " \t\n\r"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One endpoint of a target, as Go's ``endpoints.Endpoint``: ``Endpoint(addr, metadata)``.

    ``addr`` is the address a gRPC client dials (``"10.0.0.5:8080"``); ``metadata`` any JSON
    value (None, str, bool, int, float, list, dict with str keys). Keep metadata a string or
    None: Go's resolver puts it into gRPC's address attributes, and a map there crashes Go
    clients (etcd-io/etcd#19700).
    """

    addr: str
    metadata: Any = None

    def encode(self) -> str:
        """The record Go's ``AddEndpoint`` would store for this endpoint (see module doc)."""
        return encode_endpoint(self.addr, self.metadata)


def encode_endpoint(addr: str, metadata: Any = None) -> str:
    """``{"Op":0,"Addr":addr,"Metadata":metadata}`` byte for byte as Go's ``json.Marshal``.

    Raises TypeError for an *addr* that is not a str or *metadata* that is not JSON (say what
    to pass), ValueError for an empty *addr*, a NaN or infinite float, an int beyond a float64
    (Go reads every number as one), a lone surrogate, or metadata nested deeper than the
    record may be (:data:`MAX_DEPTH`; or cyclic).
    """
    if not isinstance(addr, str):
        raise TypeError(f'addr must be a str such as "10.0.0.5:8080", got {addr!r:.80}')
    if not addr:
        raise ValueError('addr must not be empty; pass the address to dial, e.g. "10.0.0.5:8080"')
    return f'{{"Op":0,"Addr":{_dump(addr, 1)},"Metadata":{_dump(metadata, 1)}}}'


def decode_endpoint(value: str | bytes) -> Endpoint:
    """Read a record as Go's ``json.Unmarshal`` does (see module doc); ValueError when Go
    would refuse it, or when it nests deeper than :data:`MAX_DEPTH`. Never RecursionError."""
    text = go_text(value) if isinstance(value, bytes) else value
    if text.strip(_JSON_SPACE) == "null":
        return Endpoint("", None)  # Go: unmarshalling null into a struct leaves it empty
    obj = loads_object(text, _WHAT, parse_int=parse_int, max_depth=MAX_DEPTH)
    metadata: Any = None
    for key, item in obj:
        name = key.lower()
        if name == "op" and item is not None:
            _check_op(item)
        elif name == "metadata":
            try:
                metadata = _plain(item)  # null too: Go sets an interface{} field to nil
            except RecursionError as exc:  # (not within MAX_DEPTH, but a caller's deep stack)
                raise ValueError(f"not a valid {_WHAT}: nested too deeply to read") from exc
    addr = field(obj, "addr", str, _WHAT) or ""
    return Endpoint(addr, metadata)


def metadata_is_safe(metadata: object) -> bool:
    """Whether *metadata* is what Go programs expect of it: a string or null. (Go's resolver
    puts it into gRPC address attributes: a map or a list there crashes Go clients; a number
    or a bool is carried, but is no string to Go code reading it.)"""
    return metadata is None or isinstance(metadata, str)


# -- writing ---------------------------------------------------------------------------------------


def _dump(value: Any, level: int) -> str:
    """*value* as Go writes it, inside an array or object at nesting *level*."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        if _SURROGATE.search(value):
            raise ValueError(f"{value!r:.80} contains a lone surrogate; pass text UTF-8 can hold")
        text = json.dumps(value, ensure_ascii=False)
        return _GO_ESCAPED.sub(lambda m: _GO_ESCAPES[m.group()], text)
    if isinstance(value, int):
        value = int(value)  # (an int subclass, an IntEnum: its number)
        if not -_GO_EXACT_INT <= value <= _GO_EXACT_INT:
            try:
                float(value)
            except OverflowError:
                raise ValueError(
                    f"an int of {value.bit_length()} bits is beyond a float64, as which Go "
                    "(and etcdkit) reads every number of metadata: the record could not be "
                    "read back; pass a smaller number or a string"
                ) from None
        return str(value)
    if isinstance(value, float):
        return _go_float(value)
    if isinstance(value, list | tuple | Mapping):
        level += 1
        if level > MAX_DEPTH:
            raise ValueError(
                f"metadata nested deeper than {MAX_DEPTH - 1} levels (or cyclic) cannot be "
                f"read back: etcdkit reads records nested up to {MAX_DEPTH} levels; flatten it"
            )
        parts = []  # (a loop, not a generator: one frame per level)
        if not isinstance(value, Mapping):
            for v in value:
                parts.append(_dump(v, level))
            return "[" + ",".join(parts) + "]"
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"metadata maps must have str keys, got {value!r:.80}")
        # Go marshals a map[string]any with its keys sorted (UTF-8 byte order = code points)
        for k in sorted(value):
            parts.append(_dump(k, level) + ":" + _dump(value[k], level))
        return "{" + ",".join(parts) + "}"
    raise TypeError(
        "metadata must be JSON: None, str, bool, int, float, list or dict with str keys "
        f"(best a str or None), got {type(value).__name__}"
    )


def _go_float(f: float) -> str:
    """A float64 as Go's ``encoding/json`` writes it: the shortest digits that read back, in
    plain notation unless below 1e-6 or from 1e21 (then ``1e-7``, ``1.5e+21``)."""
    if not math.isfinite(f):
        raise ValueError(f"metadata cannot hold {f!r}: JSON has no NaN or infinity")
    import decimal  # (here: 0.4 MB, for float metadata only)

    digits = decimal.Decimal(repr(f)).normalize()  # repr: the shortest round-trip digits
    size = abs(f)
    if size == 0 or 1e-6 <= size < 1e21:
        return format(digits, "f")
    sign, numerals, exponent = digits.as_tuple()
    assert isinstance(exponent, int)
    text = "".join(map(str, numerals))
    power = exponent + len(text) - 1
    mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
    return f"{'-' if sign else ''}{mantissa}e{'-' if power < 0 else '+'}{abs(power):02d}".replace(
        "e-0", "e-"
    )


# -- reading ---------------------------------------------------------------------------------------


_GO_EXACT_INT = 2**53  # the integers a float64 holds exactly (and any between them)


def _check_op(item: Any) -> None:
    """One ``Op`` value as Go's ``literalStore`` reads it into a uint8: ``strconv.ParseUint(s,
    10, 64)`` of the literal (digits only: no sign, fraction or exponent), then at most 255.
    Go records the first failure and still fails the record, so every occurrence counts."""
    if type(item) is not int or not 0 <= item <= 255:  # (-0 is a MinusZero; True a bool)
        raise ValueError(
            f"not a valid {_WHAT}: 'Op' must be a uint8 (digits only, 0 to 255), got {item!r:.40}"
        )


def _plain(item: Any) -> Any:
    """A decoded JSON value as Go's ``interface{}`` holds it: objects as dicts (the last of
    duplicate keys wins), lone surrogate escapes as U+FFFD, numbers as a float64 holds them
    (an int where it is exact)."""
    if isinstance(item, GoObject):  # (loops, not comprehensions: one frame per level)
        plain: dict[str, Any] = {}
        for k, v in item:
            plain[_SURROGATE.sub("\ufffd", k)] = _plain(v)
        return plain
    if isinstance(item, list):
        values = []
        for v in item:
            values.append(_plain(v))
        return values
    if isinstance(item, str):
        return _SURROGATE.sub("\ufffd", item)
    if type(item) is MinusZero:
        return -0.0
    if type(item) is int and not -_GO_EXACT_INT <= item <= _GO_EXACT_INT:
        try:
            item = float(item)  # rounded, as Go's float64 rounds it
        except OverflowError:
            item = math.inf  # refused below, as a float literal that overflows
    if isinstance(item, float) and not math.isfinite(item):
        raise ValueError(f"not a valid {_WHAT}: a number in 'Metadata' overflows a float64")
    return item
