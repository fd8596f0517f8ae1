"""Lock: mutual exclusion with a fencing token, interoperable with Go's ``concurrency.Mutex``
and ``etcdctl lock``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from types import TracebackType

from etcdkit._core import Core, SupportsCore, core_of
from etcdkit._errors import EtcdkitError, EtcdTimeoutError, NotHeldError
from etcdkit._queue import Contender, HoldState, check_timeout, check_ttl, prefix_of
from etcdkit._types import Compare

__all__ = ["Lock"]

log = logging.getLogger("etcdkit.lock")


class Lock:
    """A distributed lock (Go's ``concurrency.Mutex``) on the keys under ``name + "/"``.

    Create with :meth:`AsyncClient.lock` (no I/O), then ``async with lock:`` (or
    :meth:`acquire` / :meth:`release`, or :meth:`try_acquire`, which does not wait). Each
    acquisition puts our key ``name/<lease id in hex>`` on an etcd lease of its own (``ttl``
    seconds, kept alive meanwhile); the oldest key holds, as in Go, so ``etcdctl lock name`` and
    Go programs exclude us and we them. Waiters queue in order and each watches only the key
    just before its own: a release wakes one waiter. :meth:`acquire` waits up to ``timeout``
    seconds (``None``: forever), then raises :class:`EtcdTimeoutError`; a timeout, a
    cancellation or an error while waiting removes our key (no orphan). A Lock may be acquired
    again after release; it is not re-entrant.

    **Why fence.** Holding a lock in etcd does not stop the holder's own writes elsewhere from
    being late: a process paused (GC, swap, SIGSTOP) or cut off past the TTL can wake up still
    "holding" while etcd has given the lock to the next one. So guard every write the lock
    protects with the fencing token: in etcd, put :meth:`guard` in the write's transaction
    (``etcd.txn(compare=[lock.guard()], success=[...])`` lands only while our key exists,
    that is, while we hold); elsewhere, pass :attr:`fencing_token` along and have the resource
    refuse tokens lower than the highest it has seen (tokens strictly increase from holder to
    holder).

    **Faults.** ``state`` (a :class:`HoldState`) is ``SUSPENDED`` while etcd does not confirm
    our lease; :attr:`lost` (an :class:`asyncio.Event`) is set, and ``state`` is ``LOST``, as
    soon as etcd may give the lock to another: our key deleted, its lease revoked or expired,
    or unconfirmed for the TTL (less a margin). Closing the client releases the lock.
    """

    def __init__(
        self,
        client: SupportsCore | Core,
        name: str | bytes,
        ttl: int = 10,
        timeout: float | None = 30,
    ) -> None:
        self._prefix = prefix_of(name)
        self._name = name
        self._ttl = check_ttl(ttl)
        self._timeout = check_timeout(timeout)
        self._core = core_of(client)
        self._listeners: list[Callable[[HoldState], None]] = []
        self._c = self._contender()
        # The key and token of the last acquisition: they stay after a release or a loss, so
        # that a stale holder's guard() fails in etcd instead of raising here.
        self._token = 0
        self._token_key = b""

    def __repr__(self) -> str:
        return f"<Lock name={self._name!r} {self._c!r}>"

    # -- facts (no I/O) ---------------------------------------------------------------------------

    @property
    def name(self) -> str | bytes:
        return self._name

    @property
    def ttl(self) -> int:
        return self._ttl

    @property
    def timeout(self) -> float | None:
        return self._timeout

    @property
    def key(self) -> bytes:
        """Our key in etcd (``name/<lease id hex>``) once we have one, else ``b""``."""
        return self._c.key

    @property
    def fencing_token(self) -> int:
        """The create revision of our key when we acquired the lock (0 before): strictly higher
        for each later holder. It stays after a release or a loss."""
        return self._token

    @property
    def lease_id(self) -> int:
        """The lease our key is on (0 when there is none)."""
        return self._c.lease_id

    @property
    def state(self) -> HoldState:
        return self._c.state

    @property
    def lost(self) -> asyncio.Event:
        """Set when this acquisition can no longer be trusted (LOST) or was released."""
        return self._c.lost

    @property
    def wakeups(self) -> int:
        """How many times the deletion of the key just before ours woke this acquisition (one
        per acquisition that waited, unless waiters ahead gave up): no herd."""
        return self._c.wakeups

    def guard(self) -> Compare:
        """A :class:`Compare` that holds only while we hold this lock: our key exists with the
        create revision we acquired it at. Put it in the ``compare`` of every write the lock
        protects. Raises :class:`NotHeldError` if the lock was never acquired."""
        if not self._token:
            raise NotHeldError(f"lock {self._name!r} was never acquired: nothing to guard with")
        return Compare.create_revision(self._token_key, "==", self._token)

    def add_listener(self, callback: Callable[[HoldState], None]) -> Callable[[], None]:
        """Call ``callback(state)`` on every state change (on the event loop), for this and
        later acquisitions; returns a function that removes it. Errors are logged."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    # -- acquiring and releasing ------------------------------------------------------------------

    async def acquire(self) -> None:
        """Wait until we hold the lock (up to ``timeout`` seconds). Raises
        :class:`EtcdTimeoutError` on timeout, :class:`ClosedError` if the client closes or the
        lock is released meanwhile; our key is removed on every failure."""
        self._begin()
        c = self._c
        try:
            async with asyncio.timeout(self._timeout):
                await c.acquire(wait=True)
        except TimeoutError as exc:
            if isinstance(exc, EtcdkitError):
                raise
            ahead = c.ahead
            who = f"; waiting behind {ahead.key!r} (lease {ahead.lease:#x})" if ahead else ""
            raise EtcdTimeoutError(
                f"lock {self._name!r} not acquired within {self._timeout:g} s{who} "
                f"(endpoints {self._core.where})"
            ) from None
        self._token, self._token_key = c.token, c.key

    async def try_acquire(self) -> bool:
        """Take the lock if nobody holds it, without waiting: ``True`` if we hold it now
        (release it with :meth:`release`), ``False`` if another holds it (our key is removed
        again, as Go's ``TryLock`` does)."""
        self._begin()
        c = self._c
        if not await c.acquire(wait=False):
            return False
        self._token, self._token_key = c.token, c.key
        return True

    async def release(self) -> None:
        """Release the lock (our key goes with its lease; the next waiter takes over at once).
        Idempotent; bounded when etcd is down (the key then expires with its TTL). Called while
        another task waits in :meth:`acquire`, that acquisition ends with :class:`ClosedError`."""
        await self._c.release()

    async def __aenter__(self) -> Lock:
        await self.acquire()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.release()

    # -- internals --------------------------------------------------------------------------------

    def _contender(self) -> Contender:
        return Contender(
            self._core,
            self._prefix,
            b"",  # Go's Mutex stores an empty value
            self._ttl,
            what=f"lock {self._name!r}",
            on_state=self._on_state,
        )

    def _begin(self) -> None:
        if self._c.state in (HoldState.WAITING, HoldState.HELD, HoldState.SUSPENDED):
            raise RuntimeError(
                f"lock {self._name!r} is already {self._c.state.name.lower()} by this Lock "
                "object (Locks are not re-entrant); release() it first"
            )
        self._c = self._contender()  # a new acquisition: a new key, a new lost event

    def _on_state(self, state: HoldState) -> None:
        for cb in list(self._listeners):
            try:
                cb(state)
            except Exception:
                log.exception("lock %r: state listener failed", self._name)
