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

__all__ = ["Backoff", "RetryPolicy"]


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


def _default_retryable() -> tuple[type[BaseException], ...]:
    from etcdkit._errors import ConnectionUnavailableError, EtcdTimeoutError

    return (ConnectionUnavailableError, EtcdTimeoutError)


@dataclass(frozen=True)
class RetryPolicy:
    """How etcdkit retries: one object, injected into the client, used by every recipe.

    ``retryable`` names the errors worth retrying (an allow-list: by default the connection
    being unavailable and a deadline passing; auth, permission and bad-request errors are
    permanent). ``backoff()`` makes a fresh :class:`Backoff` with this policy's pacing; the
    recipes keep one per loop and reset it after each success. ``call_cap`` caps the pause
    between attempts of one unary call (which retries only within its own timeout).
    """

    initial: float = 0.05
    cap: float = 2.0
    multiplier: float = 2.0
    call_cap: float = 0.5
    retryable: tuple[type[BaseException], ...] = field(default_factory=_default_retryable)
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    def __post_init__(self) -> None:
        Backoff(self.initial, self.cap, self.multiplier)  # validates the numbers
        if not self.call_cap > 0:
            raise ValueError(f"RetryPolicy.call_cap must be > 0, got {self.call_cap!r}")

    def is_retryable(self, exc: BaseException) -> bool:
        return isinstance(exc, self.retryable)

    def backoff(self, *, cap: float | None = None, deadline: float | None = None) -> Backoff:
        c = self.cap if cap is None else max(cap, self.initial)
        return Backoff(self.initial, c, self.multiplier, deadline=deadline, sleep=self.sleep)
