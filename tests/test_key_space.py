"""KeySpace, the guess of where the next N keys of a listing end (pure logic). A guess is only
ever a range end, so what must hold whatever the keys are: it is after the page's start and no
further than the prefix's end, it grows with the keys wanted and with each empty range before
it, and keys that tell nothing give no KeySpace. tests/test_core.py lists real keys with it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from etcdkit._types import prefix_range_end
from etcdkit._wire.kv import GUESS_SLACK, KeySpace

PREFIX = b"/p/"
END = prefix_range_end(PREFIX)

suffixes = st.binary(min_size=1, max_size=24)


def test_evenly_spread_keys_are_guessed_about_right() -> None:
    # (as numbers: keys in decimal are dense blocks between gaps, which two pages even out)
    keys = [PREFIX + (i * 7919).to_bytes(4, "big") for i in range(1000)]
    space = KeySpace.of(PREFIX, keys[0], keys[99], 100)
    assert space is not None
    stop = space.guess(keys[99] + b"\0", 200, END)
    held = [k for k in keys if keys[99] + b"\0" <= k < stop]
    assert 200 <= len(held) <= 200 * GUESS_SLACK + 2


def test_keys_that_tell_nothing_give_no_space() -> None:
    assert KeySpace.of(PREFIX, PREFIX + b"a", PREFIX + b"a", 5) is None  # one key
    assert KeySpace.of(PREFIX, PREFIX + b"a", PREFIX + b"b", 1) is None
    long = PREFIX + b"x" * 100
    # differing only past the widest number read: all keys read as one number
    assert KeySpace.of(PREFIX, long + b"1", long + b"2", 10) is None


def test_a_guess_past_the_keys_numbers_is_the_prefix_end() -> None:
    space = KeySpace.of(PREFIX, PREFIX + b"\x00", PREFIX + b"\xf0", 2)
    assert space is not None
    assert space.guess(PREFIX + b"\xf0\x00", 10, END) is END
    assert space.guess(PREFIX + b"\xff" * 9, 1, END) is END


@given(
    keys=st.lists(suffixes, min_size=2, max_size=50, unique=True),
    start=suffixes,
    want=st.integers(1, 10**6),
    misses=st.integers(0, 8),
)
def test_a_guess_is_after_the_start_and_within_the_prefix(
    keys: list[bytes], start: bytes, want: int, misses: int
) -> None:
    keys = sorted(PREFIX + k for k in keys)
    space = KeySpace.of(PREFIX, keys[0], keys[-1], len(keys))
    if space is None:
        return
    stop = space.guess(PREFIX + start, want, END, misses)
    assert PREFIX + start < stop <= END
    assert stop == END or stop.startswith(PREFIX)


@given(
    keys=st.lists(suffixes, min_size=2, max_size=50, unique=True),
    start=suffixes,
    want=st.integers(1, 10**5),
)
def test_a_guess_reaches_further_for_more_keys_and_after_a_miss(
    keys: list[bytes], start: bytes, want: int
) -> None:
    keys = sorted(PREFIX + k for k in keys)
    space = KeySpace.of(PREFIX, keys[0], keys[-1], len(keys))
    if space is None:
        return
    at = PREFIX + start
    assert space.guess(at, want, END) <= space.guess(at, want * 2, END)
    assert space.guess(at, want, END) <= space.guess(at, want, END, misses=1)
