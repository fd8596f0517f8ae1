"""``confirmed()``: may a hold begin on a session whose turn just came? A pure rule over the
session's state, tested on a stand-in session (the state a real one shows after an etcd
outage, its keep-alive not yet back, is timing-dependent to reach: see the lock tests for
the real thing under faults).

The case it is for: a waiter's turn came through a read just after etcd came back, while its
keep-alive had gone unanswered for nearly the lease's TTL. The hold it got was LOST in the
same turn (its expiry timer due at once): ``etcdkit lock`` said "holding", started CMD and
stopped it at once. Now the turn waits for the keep-alive's next word: ALIVE, hold; else
queue again with a new lease."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, cast

import pytest

from etcdkit import SessionState
from etcdkit.recipes._hold import confirmed, lost_margin


class StandIn:
    """What ``confirmed`` reads of a Session: ``lost``, ``state``, ``expires`` (monotonic),
    ``add_listener``."""

    def __init__(self, state: SessionState, expires_in: float | None) -> None:
        self.lost = asyncio.Event()
        self.state = state
        self.expires = None if expires_in is None else time.monotonic() + expires_in
        self.listeners: list[Callable[[SessionState], None]] = []

    def add_listener(self, callback: Callable[[SessionState], None]) -> Callable[[], None]:
        self.listeners.append(callback)
        return lambda: self.listeners.remove(callback)

    def become(self, state: SessionState) -> None:
        self.state = state
        if state is SessionState.LOST:
            self.lost.set()
        for cb in list(self.listeners):
            cb(state)


def check(session: StandIn, ttl: int = 5) -> Any:
    return confirmed(cast(Any, session), ttl)


async def test_an_alive_session_holds_at_once_and_a_lost_one_never() -> None:
    assert await check(StandIn(SessionState.ALIVE, 5.0)) is True
    lost = StandIn(SessionState.LOST, None)
    lost.lost.set()
    assert await check(lost) is False
    assert await check(StandIn(SessionState.CLOSED, None)) is False


async def test_a_suspended_session_with_time_left_holds_at_once() -> None:
    """As before: the hold begins SUSPENDED, LOST only if etcd stays silent until the margin."""
    assert await check(StandIn(SessionState.SUSPENDED, lost_margin(5) + 2.0)) is True


@pytest.mark.parametrize(
    ("then", "holds"),
    [(SessionState.ALIVE, True), (SessionState.LOST, False), (SessionState.CLOSED, False)],
)
async def test_a_suspended_session_about_to_expire_waits_for_the_keep_alives_word(
    then: SessionState, holds: bool
) -> None:
    session = StandIn(SessionState.SUSPENDED, lost_margin(5) / 2)
    waiting = asyncio.create_task(check(session))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # (before, the hold began here, LOST in the same turn)
    session.become(then)
    async with asyncio.timeout(1.0):
        assert await waiting is holds
    assert session.listeners == []


async def test_a_keep_alive_that_never_answers_is_not_waited_for_past_the_expiry() -> None:
    session = StandIn(SessionState.SUSPENDED, 0.0)
    t0 = time.monotonic()
    assert await check(session) is False
    assert time.monotonic() - t0 < 3.0
    assert session.listeners == []
    assert await check(StandIn(SessionState.SUSPENDED, None)) is False
