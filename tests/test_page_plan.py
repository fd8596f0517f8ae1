"""The sizes of the pages a library-sized listing asks for (``next_page_keys``), as pure logic:
they grow from the first page, shrink toward the end once etcd's count says few keys are left,
and never leave a runt page. tests/test_core.py lists real keys with the same plan."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from etcdkit._wire.kv import FIRST_PAGE_KEYS, LAST_PAGE_KEYS, next_page_keys


def plan(total: int, first: int, cap: int) -> list[int]:
    """The pages of a listing of ``total`` keys, as _pb_pages asks for them."""
    pages, limit, rest = [], first, total
    while rest > 0:
        page = min(limit, rest)
        pages.append(page)
        rest -= page
        if rest:
            limit = next_page_keys(limit, cap, rest)
            assert 1 <= limit <= cap
    return pages


def test_a_100k_listing_grows_then_shrinks() -> None:
    assert plan(100_000, 10_000, 110_000) == [
        10_000, 20_000, 35_000, 17_500, 8_750, 4_375, 2_188, 2_187
    ]  # fmt: skip


def test_the_smallest_cap_is_over_three_last_pages() -> None:
    assert FIRST_PAGE_KEYS > 3 * LAST_PAGE_KEYS  # (what the property below takes for given)


def test_a_server_that_leaves_its_count_out_gets_the_doubling() -> None:
    assert next_page_keys(10_000, 110_000, 0) == 20_000
    assert next_page_keys(80_000, 110_000, -5) == 110_000


@given(
    total=st.integers(1, 3_000_000),
    first=st.integers(1, 20_000),
    # the cap is at least FIRST_PAGE_KEYS (10,000), over 3 x LAST_PAGE_KEYS: under that, a
    # rest between cap and cap + LAST_PAGE_KEYS could leave a runt
    cap=st.integers(3 * LAST_PAGE_KEYS, 500_000),
)
def test_pages_cover_the_listing_and_leave_no_runt(total: int, first: int, cap: int) -> None:
    first = min(first, cap)
    pages = plan(total, first, cap)
    assert sum(pages) == total
    assert all(1 <= p <= cap for p in pages)
    # no runt: a last page smaller than LAST_PAGE_KEYS comes only after a page that grew (it
    # is what was left, not a piece split off a bigger rest)
    if len(pages) >= 2 and pages[-1] < LAST_PAGE_KEYS:
        grown = first if len(pages) == 2 else min(cap, 2 * pages[-3])
        assert pages[-2] == grown, pages
    # they grow, then shrink: once a page is smaller than the one before, none is bigger
    falling = False
    for before, page in itertools.pairwise(pages):
        if page < before:
            falling = True
        assert not (falling and page > before), pages


@given(
    total=st.integers(1, 200_000),
    first=st.integers(1, 20_000),
    cap=st.integers(100, 3 * LAST_PAGE_KEYS),  # big values: a few MB are fewer keys
)
def test_small_caps_still_cover_the_listing_within_the_cap(
    total: int, first: int, cap: int
) -> None:
    first = min(first, cap)
    pages = plan(total, first, cap)
    assert sum(pages) == total
    assert all(1 <= p <= cap for p in pages)
