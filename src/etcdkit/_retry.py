"""Retry policy: exponential backoff with full jitter, a cap and an optional deadline.

Pure logic: the clock, the random source and the sleep function are injected, so the policy is
unit-tested without waiting. Deadlines use the monotonic clock, never wall-clock time.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

__all__ = ["Backoff"]


@dataclass
class Backoff:
    """Exponential backoff: the n-th delay is drawn from ``[d/2, d]`` with
    ``d = min(cap, initial * multiplier**n)`` ("equal jitter": never zero, never above the cap).

    ``reset()`` after a success starts again from ``initial``. ``deadline`` (seconds from the
    first ``next_delay()`` after a reset, on ``clock``) makes ``next_delay()`` return ``None``
    once the time is up, so callers stop retrying instead of sleeping past it.
    """

    initial: float = 0.05
    cap: float = 2.0
    multiplier: float = 2.0
    deadline: float | None = None
    clock: Callable[[], float] = time.monotonic
    rand: Callable[[], float] = random.random
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    _attempt: int = field(default=0, init=False)
    _started: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.cap < self.initial or self.multiplier < 1:
            raise ValueError(
                "Backoff needs 0 < initial <= cap and multiplier >= 1, got "
                f"initial={self.initial!r} cap={self.cap!r} multiplier={self.multiplier!r}"
            )

    @property
    def attempt(self) -> int:
        """How many delays were handed out since the last reset."""
        return self._attempt

    def reset(self) -> None:
        self._attempt = 0
        self._started = None

    def next_delay(self) -> float | None:
        """The next delay in seconds, or ``None`` when the deadline has passed."""
        now = self.clock()
        if self._started is None:
            self._started = now
        ceiling = min(self.cap, self.initial * self.multiplier ** min(self._attempt, 64))
        delay = ceiling / 2 + self.rand() * ceiling / 2
        if self.deadline is not None:
            left = self._started + self.deadline - now
            if left <= 0:
                return None
            delay = min(delay, left)
        self._attempt += 1
        return delay

    async def wait(self) -> bool:
        """Sleep for the next delay; ``False`` (without sleeping) once the deadline passed."""
        delay = self.next_delay()
        if delay is None:
            return False
        await self.sleep(delay)
        return True
