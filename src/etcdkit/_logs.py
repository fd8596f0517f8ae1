"""Rate-limited warnings, so that a flapping connection cannot flood a log.

Every etcdkit logger hangs under ``etcdkit`` (``etcdkit.client``, ``etcdkit.watch``,
``etcdkit.lease``, ...), so ``logging.getLogger("etcdkit").setLevel(...)`` tunes them all.
The warnings that a fault can repeat many times a second (an endpoint failing over, a watch
restarting, another writer fighting over a lease's key) go through a :class:`RateLimitedLog`:
the same message key at most once per interval; the next line of that key says how many were
left out in between (``"... (12 more suppressed)"``). Pure: no I/O but the logging call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable

__all__ = ["CALLBACK_ERRORS", "DEFAULT_INTERVAL", "Listeners", "RateLimitedLog"]

DEFAULT_INTERVAL = 30.0  # seconds between two lines of one message key
MAX_KEYS = 1024  # keys remembered at most; the oldest quiet ones are forgotten first

# What a user's callback (a listener, a python-etcd3 watch callback) may raise that is logged
# and skipped: any Exception, and CancelledError. A plain function cannot be cancelled, so a
# CancelledError out of one is its own; let through, it ended the task that called it (the
# client's shared Watch stream, a lock's or a lease's keeper) as if that task was cancelled.
CALLBACK_ERRORS = (Exception, asyncio.CancelledError)


class RateLimitedLog:
    """``logger``'s lines, at most one per ``key`` and ``interval`` seconds.

    ``warning(key, msg, *args)`` logs like ``logger.warning(msg, *args)`` unless a line of the
    same ``key`` was logged less than ``interval`` seconds ago; then it only counts. The next
    line of that key carries the count: ``"<msg> (k more suppressed)"``. Choose keys by what
    the reader must tell apart: the endpoint, the prefix, the lease's key.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = DEFAULT_INTERVAL,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not interval >= 0:
            raise ValueError(f"interval must be >= 0 seconds, got {interval!r}")
        self.logger = logger
        self.interval = interval
        self._clock = clock
        self._last: dict[Hashable, float] = {}  # key -> when its last line was logged
        self._suppressed: dict[Hashable, int] = {}  # key -> lines left out since then

    def warning(self, key: Hashable, msg: str, *args: object) -> bool:
        """Log a warning unless ``key`` logged one within the interval; ``True`` if logged."""
        return self.log(logging.WARNING, key, msg, *args)

    def log(self, level: int, key: Hashable, msg: str, *args: object) -> bool:
        if not self.logger.isEnabledFor(level):
            return False
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        left_out = self._suppressed.pop(key, 0)
        if left_out:
            msg += " (%d more suppressed)"
            args = (*args, left_out)
        self._last.pop(key, None)  # re-inserted last: the dict stays ordered by time
        self._last[key] = now
        if len(self._last) > MAX_KEYS:
            self._forget(now)
        self.logger.log(level, msg, *args, stacklevel=3)
        return True

    def suppressed(self, key: Hashable) -> int:
        """Lines of ``key`` left out since its last logged line."""
        return self._suppressed.get(key, 0)

    def _forget(self, now: float) -> None:
        # Oldest first; a key whose window has passed loses nothing by being forgotten but
        # its pending count, which a line of it would have reported.
        for key in list(self._last):
            if len(self._last) <= MAX_KEYS // 2:
                break
            if now - self._last[key] >= self.interval or len(self._last) > MAX_KEYS:
                del self._last[key]
                self._suppressed.pop(key, None)


class Listeners:
    """The ``callback()``s of an object that tells of news in the turn it arrives (a watch's
    batches, a keepalive's statuses): added and removed at any time (also from a callback),
    called in the order added; a failing one is logged on ``logger``, naming ``owner``, and
    never raised into the caller."""

    __slots__ = ("_callbacks", "_logger", "_owner")

    def __init__(self, owner: object, logger: logging.Logger) -> None:
        self._owner = owner
        self._logger = logger
        self._callbacks: tuple[Callable[[], None], ...] = ()

    def add(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Add ``callback``; returns a function that removes it (idempotent)."""
        if not callable(callback):
            raise TypeError(f"callback must be callable, got {callback!r:.80}")
        self._callbacks = (*self._callbacks, callback)

        def remove() -> None:
            self._callbacks = tuple(cb for cb in self._callbacks if cb is not callback)

        return remove

    def call(self) -> None:
        for callback in self._callbacks:
            try:
                callback()
            except CALLBACK_ERRORS:
                self._logger.exception("a listener of %r failed", self._owner)
