"""JSON as Go's ``encoding/json`` writes and reads it, for the records Go processes share.

Writing: compact, fields in declaration order, UTF-8 text as is, and ``<``, ``>``, ``&``,
U+2028, U+2029 escaped as ``\\u003c``-style escapes, as ``json.Marshal`` does, so a Python
process writes byte-for-byte the value a Go process would (a compare-and-swap on the value, or a
diff in ``etcdctl``, sees no difference). (The bytes are Go 1.22's and later's: before 1.22, Go
wrote backspace and form feed as ``\\u0008`` and ``\\u000c``, where it now writes ``\\b`` and
``\\f``, as Python does; the same JSON either way.)

Reading follows ``json.Unmarshal`` into a struct: object keys match field names as Go folds
case (Unicode simple case folding, as ``bytes.EqualFold``: besides ASCII case, the long s
U+017F matches ``s`` and the Kelvin sign U+212A matches ``k``; nothing else, not the sharp s
U+00DF for ``ss``; the last occurrence wins), unknown keys are ignored, ``null`` leaves a field
at its zero value, a value of the wrong JSON type is an error, and invalid UTF-8 (or a lone
surrogate escape) reads as U+FFFD, one for each byte that is not part of a valid character (as
Go counts them: Python's own ``errors="replace"`` puts one for a whole broken sequence). A
document nested deeper than Go's limit (10,000 levels), or than a reader's own lower limit, is
an error too, never a RecursionError.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable
from itertools import accumulate
from typing import Any

__all__ = [
    "GO_MAX_DEPTH",
    "GoObject",
    "MinusZero",
    "dumps",
    "field",
    "go_text",
    "loads_object",
    "parse_int",
]

GO_MAX_DEPTH = 10_000
"""How deep ``json.Unmarshal`` reads: its scanner refuses an array or object nested deeper
(``maxNestingDepth`` in Go's ``encoding/json/scanner.go``: "exceeded max depth")."""

_GO_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}
_GO_ESCAPED = re.compile("[<>&\u2028\u2029]")
_SURROGATE = re.compile("[\ud800-\udfff]")
# A JSON string (an unterminated one runs to the end: one linear pass, no retries), then
# everything that is not a bracket.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_BRACKET_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
# The only characters outside ASCII whose simple case folding orbit holds an ASCII letter
# (Unicode's CaseFolding.txt, C and S entries): Go's encoding/json matches them to a field
# name's "s" and "k" (equalFoldRight in Go's fold.go). Python's casefold() would also fold
# U+00DF to "ss" and lower() leaves U+017F alone: neither is Go's rule.
_GO_ASCII_FOLDS = str.maketrans({"\u017f": "s", "\u212a": "k"})


class GoObject(list[tuple[str, Any]]):
    """A decoded JSON object as its (key, value) pairs in document order, duplicates kept."""


class MinusZero(int):
    """JSON's ``-0`` as :func:`parse_int` reads it: Go's ``strconv.ParseUint`` refuses it (a
    uint field), a signed int reads 0, and an ``interface{}`` holds -0.0 (a float64, which
    ``json.Marshal`` writes as ``-0`` again)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "-0"


_MINUS_ZERO = MinusZero(0)


def parse_int(text: str) -> int | float:
    """A ``parse_int`` for :func:`loads_object` that tells ``-0`` (a :class:`MinusZero`) from
    ``0``, for the readers that must treat it as Go does."""
    return _MINUS_ZERO if text == "-0" else _int(text)


def _int(text: str) -> int | float:
    """``int(text)``; a number of more digits than Python turns into an int (``sys.
    get_int_max_str_digits()``, 4,300 by default) is a float, ``inf``: it is far beyond a
    float64, which Go refuses where it reads the value (an ``Op``, ``Metadata``) and ignores
    in an unknown field, as the readers do with ``inf``."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def _go_replace(exc: UnicodeError) -> tuple[str, int]:
    """One U+FFFD for the first byte of an invalid sequence; decoding goes on at the next."""
    assert isinstance(exc, UnicodeDecodeError)
    return "\ufffd", exc.start + 1


_GO_REPLACE = "etcdkit.go-replace"
codecs.register_error(_GO_REPLACE, _go_replace)


def go_text(data: bytes) -> str:
    """``data`` decoded as UTF-8 as Go's ``encoding/json`` reads it: each byte that is not part
    of a valid character reads as one U+FFFD."""
    return data.decode("utf-8", errors=_GO_REPLACE)


def dumps(obj: dict[str, Any]) -> str:
    """Encode *obj* (str/int/dict values, keys in field order) as Go's ``json.Marshal`` would.

    Raises ValueError for a string that is not valid Unicode text (a lone surrogate).
    """
    for text in _strings(obj):
        if _SURROGATE.search(text):
            raise ValueError(
                f"{text!r} contains a lone surrogate; pass text that can be encoded as UTF-8"
            )
    # The characters Go escapes cannot occur outside strings in JSON, so a textual replace
    # after dumping touches only string contents.
    out = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return _GO_ESCAPED.sub(lambda m: _GO_ESCAPES[m.group()], out)


def loads_object(
    data: str | bytes,
    what: str,
    *,
    parse_int: Callable[[str], Any] = _int,
    max_depth: int = GO_MAX_DEPTH,
) -> GoObject:
    """Parse *data* as one JSON object; ValueError (saying it is not a valid *what*) otherwise.
    *parse_int* makes the value of a number written with no fraction or exponent.

    A document with arrays or objects nested deeper than *max_depth* levels (the document's
    own object is level 1, as Go counts) is a ValueError, and so is one nested too deeply for
    Python's recursive ``json`` (RecursionError): one bad record never fails its reader.
    """
    text = go_text(data) if isinstance(data, bytes) else data
    # (two scans in C; the brackets are counted only when there are more than max_depth)
    if text.count("[") + text.count("{") > max_depth and (depth := _depth(text)) > max_depth:
        raise ValueError(f"not a valid {what}: nested {depth} levels deep, more than {max_depth}")
    try:
        obj = json.loads(
            text, object_pairs_hook=GoObject, parse_constant=_no_constant, parse_int=parse_int
        )
    except ValueError as exc:  # json.JSONDecodeError and our NaN refusal
        raise ValueError(f"not a valid {what}: invalid JSON ({exc})") from exc
    except RecursionError as exc:  # Python's json recurses per level; Go's scanner does not
        raise ValueError(f"not a valid {what}: nested too deeply to read ({exc})") from exc
    if not isinstance(obj, GoObject):
        raise ValueError(f"not a valid {what}: expected a JSON object, got {text[:80]!r}")
    return obj


def _depth(text: str) -> int:
    """How deeply the arrays and objects of JSON *text* nest (brackets in strings do not
    count), in linear time and without recursion."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return max(accumulate(map(_BRACKET_STEP.__getitem__, brackets)), default=0)


def field(obj: GoObject, name: str, kind: type, what: str) -> Any:
    """The value of field *name* (lower-case ASCII) in *obj*, as ``json.Unmarshal`` would fill
    it: a key matches as Go folds it (see the module docstring).

    Returns None when the field is absent or null. Raises ValueError when its value is not of
    *kind* (``bool`` never counts as ``int``).
    """
    value: Any = None
    for key, item in obj:
        if item is None or not _go_name_match(key, name):
            continue
        if not isinstance(item, kind) or (kind is int and isinstance(item, bool)):
            raise ValueError(
                f"not a valid {what}: {name!r} must be a JSON {_json_type(kind)}, got {item!r}"
            )
        value = _SURROGATE.sub("\ufffd", item) if isinstance(item, str) else item
    return value


def _go_name_match(key: str, name: str) -> bool:
    """Whether JSON object key *key* names the field *name* (lower-case ASCII) for Go."""
    if not key.isascii():
        key = key.translate(_GO_ASCII_FOLDS)
        if not key.isascii():  # (no other character folds to an ASCII letter)
            return False
    return key.lower() == name


def _strings(obj: Any) -> list[str]:
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for k, v in obj.items() for s in (*_strings(k), *_strings(v))]
    return []


def _json_type(kind: type) -> str:
    return {str: "string", int: "integer", GoObject: "object"}.get(kind, kind.__name__)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
