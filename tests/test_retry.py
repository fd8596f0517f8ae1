"""The retry policy, without waiting: injected clock, random source and sleep."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from etcdkit._retry import Backoff


def test_delays_grow_to_the_cap_with_jitter_in_the_upper_half() -> None:
    b = Backoff(initial=0.1, cap=1.0, rand=lambda: 1.0)
    assert [b.next_delay() for _ in range(6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    b = Backoff(initial=0.1, cap=1.0, rand=lambda: 0.0)
    assert [b.next_delay() for _ in range(5)] == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.5])


def test_reset_starts_over() -> None:
    b = Backoff(initial=0.1, cap=1.0, rand=lambda: 1.0)
    for _ in range(5):
        b.next_delay()
    b.reset()
    assert b.attempt == 0
    assert b.next_delay() == pytest.approx(0.1)


def test_deadline_clips_then_stops() -> None:
    now = [0.0]
    b = Backoff(initial=1.0, cap=10.0, deadline=2.5, clock=lambda: now[0], rand=lambda: 1.0)
    assert b.next_delay() == pytest.approx(1.0)
    now[0] = 1.0
    assert b.next_delay() == pytest.approx(1.5)  # 2.0 clipped to what is left
    now[0] = 2.5
    assert b.next_delay() is None


async def test_wait_sleeps_the_delay_and_reports_the_deadline() -> None:
    slept: list[float] = []

    async def sleep(d: float) -> None:
        slept.append(d)

    now = [0.0]
    b = Backoff(
        initial=0.5, cap=0.5, deadline=1.0, clock=lambda: now[0], rand=lambda: 1.0, sleep=sleep
    )
    assert await b.wait()
    now[0] = 1.0
    assert not await b.wait()
    assert slept == [0.5]


@pytest.mark.parametrize(
    "kwargs", [{"initial": 0}, {"initial": -1}, {"initial": 2, "cap": 1}, {"multiplier": 0.5}]
)
def test_bad_parameters(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="Backoff needs"):
        Backoff(**kwargs)  # type: ignore[arg-type]


@given(
    st.floats(0.001, 10),
    st.floats(1, 100),
    st.floats(1, 4),
    st.lists(st.floats(0, 1), min_size=1, max_size=80),
)
def test_delays_are_positive_bounded_and_never_above_the_cap(
    initial: float, factor: float, multiplier: float, rands: list[float]
) -> None:
    cap = initial * factor
    it = iter(rands)
    b = Backoff(initial=initial, cap=cap, multiplier=multiplier, rand=lambda: next(it))
    for _ in rands:
        d = b.next_delay()
        assert d is not None
        assert 0 < d <= cap * (1 + 1e-9)
