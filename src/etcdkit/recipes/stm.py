"""STM: software transactional memory over etcd, as Go's ``concurrency.NewSTM`` (etcd 3.4
``clientv3/concurrency/stm.go``), with Go's four isolation levels.

``await etcd.stm(fn)`` runs ``fn(stm)``, which reads with ``await stm.get(key)`` and writes
with ``stm.put(key, value)`` / ``stm.delete(key)`` (buffered: nothing is written while ``fn``
runs). Then one transaction commits the writes if the reads still hold, by the rules of the
isolation level; if they do not, ``fn`` runs again on fresh reads. What each level reads and
compares (Go's rules, to the letter):

=========================  ===============================  =================================
level                      reads                            the commit's compares
=========================  ===============================  =================================
``serializable_snapshot``  the first at the latest          every key read: mod revision
                           revision (linearizable); the     unchanged; every key written: not
                           rest at that snapshot revision   modified after the snapshot
``serializable``           as above                         every key read: unchanged
``repeatable_reads``       each at the latest revision of   every key read: unchanged
                           the member (serializable read)
``read_committed``         as above                         none (the writes always land)
=========================  ===============================  =================================

A failed commit of the two snapshot levels reads the keys read again in the same round trip
(its ``else`` branch), and the next attempt starts from those values (Go's prefetch).

:class:`StmState` holds the read set, the write set and the commit's transaction: it does no
I/O and serves both faces. The asyncio face drives it from :func:`run_stm`; the threaded face
(:func:`run_stm_blocking`) runs the user's plain ``fn`` in the calling thread, its reads going
through the client's loop thread.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Literal, TypeVar

from etcdkit._blocking.twin import PortalLike, Twin, blocking, blocking_read, mirror
from etcdkit._errors import (
    ClosedError,
    CompactedError,
    ConflictError,
    InvalidArgumentError,
    OutcomeUnknownError,
)
from etcdkit._retry import Backoff, RetryPolicy
from etcdkit._surface import Etcd
from etcdkit._types import Compare, Op, OpResult, RangeResult, TxnResult, key_bytes, to_bytes
from etcdkit.recipes.cas import RESEND_WINDOW, contention_backoff, guarded_txn

__all__ = [
    "DEFAULT_ATTEMPTS",
    "ISOLATIONS",
    "Isolation",
    "Stm",
    "StmState",
    "SyncStm",
    "run_stm",
    "run_stm_blocking",
]

T = TypeVar("T")

Isolation = Literal["serializable_snapshot", "serializable", "repeatable_reads", "read_committed"]
ISOLATIONS: tuple[Isolation, ...] = (
    "serializable_snapshot",
    "serializable",
    "repeatable_reads",
    "read_committed",
)
_SNAPSHOT: tuple[Isolation, ...] = ("serializable_snapshot", "serializable")
DEFAULT_ATTEMPTS = 32
UNREACHABLE_ATTEMPTS = 2  # attempts in a row with etcd unreachable before its error is raised


def _value(result: RangeResult) -> bytes | None:
    return result.kvs[0].value if result.kvs else None


class StmState:
    """One STM's read set, write set and commit, by its isolation level (Go's ``stm`` and
    ``stmSerializable``). Pure: the drivers do the reads and the commit it asks for."""

    def __init__(self, isolation: Isolation) -> None:
        self.isolation: Isolation = isolation
        self._reads: dict[bytes, RangeResult] = {}
        self._writes: dict[bytes, tuple[bytes | None, Op]] = {}
        self._prefetched: dict[bytes, RangeResult] = {}
        self._snapshot = 0

    @property
    def snapshot(self) -> int:
        """The revision the snapshot levels read at (that of the attempt's first read; 0
        before it, and always 0 for the other levels)."""
        return self._snapshot

    def reset(self) -> None:
        """Start an attempt: no reads, no writes, no snapshot (what a failed commit read is
        kept for it)."""
        self._reads = {}
        self._writes = {}
        self._snapshot = 0

    def forget(self) -> None:
        """Drop what a failed commit read (after a read failed: start from scratch)."""
        self._prefetched = {}

    def known(self, key: bytes) -> tuple[bool, bytes | None]:
        """``(True, value)`` when a get of ``key`` needs no read: this attempt wrote it (a
        delete reads as ``None``), read it, or (snapshot levels) the failed commit before it
        read it at the revision this attempt reads at."""
        if key in self._writes:
            return True, self._writes[key][0]
        if not self.has_read(key):
            return False, None
        return True, _value(self._reads[key])

    def has_read(self, key: bytes) -> bool:
        """Whether this attempt read ``key`` (taking it from what the failed commit before
        read, when that fits the snapshot)."""
        if key in self._reads:
            return True
        pre = self._prefetched.get(key) if self.isolation in _SNAPSHOT else None
        if pre is None or self._snapshot not in (0, pre.revision):
            return False
        del self._prefetched[key]
        self._record(key, pre)
        return True

    def read_ops(self, keys: Sequence[bytes], *, from_leader: bool = False) -> list[Op]:
        """The reads of ``keys`` this level makes (one read-only transaction, one revision).
        ``from_leader``: a linearizable read at the snapshot, for when the member we asked
        has not reached it yet."""
        if self.isolation in _SNAPSHOT:
            if not self._snapshot:
                return [Op.get(k) for k in keys]
            return [Op.get(k, revision=self._snapshot, serializable=not from_leader) for k in keys]
        return [Op.get(k, serializable=not from_leader) for k in keys]

    def record(self, keys: Sequence[bytes], results: Sequence[OpResult]) -> None:
        for key, result in zip(keys, results, strict=True):
            assert isinstance(result, RangeResult)
            self._record(key, result)

    def _record(self, key: bytes, result: RangeResult) -> None:
        self._reads[key] = result
        if self.isolation in _SNAPSHOT and not self._snapshot:
            self._snapshot = result.revision

    def value(self, key: bytes) -> bytes | None:
        return _value(self._reads[key])

    def rev(self, key: bytes) -> int:
        """The mod revision ``key`` was read at (0: it did not exist)."""
        got = self._reads[key]
        return got.kvs[0].mod_revision if got.kvs else 0

    def put(self, key: bytes, value: bytes, lease: int) -> None:
        self._writes[key] = (value, Op.put(key, value, lease=lease))

    def delete(self, key: bytes) -> None:
        self._writes[key] = (None, Op.delete(key))

    def commit(self) -> tuple[list[Compare], list[Op], list[Op]]:
        """The commit's transaction: ``(compares, writes, reads on failure)``."""
        compares: list[Compare] = []
        if self.isolation != "read_committed":
            for key, got in self._reads.items():
                rev = got.kvs[0].mod_revision if got.kvs else 0
                compares.append(Compare.mod_revision(key, "==", rev))
        if self.isolation == "serializable_snapshot" and self._reads:
            first = min(got.revision for got in self._reads.values())
            compares.extend(Compare.mod_revision(k, "<", first + 1) for k in self._writes)
        writes = [op for _, op in self._writes.values()]
        reread = [Op.get(k) for k in self._reads] if self.isolation in _SNAPSHOT else []
        return compares, writes, reread

    def resend_safe(self) -> bool:
        """Whether the commit may be sent again when its answer is lost: when a first copy
        that applied makes the compares of every later copy fail. It does for a key the
        commit both read and writes (its mod revision compared, except under
        ``read_committed``), and, under ``serializable_snapshot`` with reads, for every
        written key (its mod revision compared below the snapshot's). A key written without
        such a compare (a blind write) would be written again, over what another
        transaction committed in between."""
        if self.isolation == "serializable_snapshot" and self._reads:
            return True
        if self.isolation == "read_committed":
            return not self._writes
        return all(key in self._reads for key in self._writes)

    def conflicted(self, result: TxnResult) -> None:
        """The commit failed: keep what its ``else`` branch read for the next attempt."""
        if self.isolation in _SNAPSHOT:
            self._prefetched = {}
            for key, got in zip(self._reads, result.responses, strict=True):
                assert isinstance(got, RangeResult)
                self._prefetched[key] = got


class Stm:
    """What ``fn`` gets in :meth:`AsyncClient.stm`: reads go to etcd (or to this attempt's
    read and write sets), writes are buffered until the commit. Valid for one attempt of
    ``fn``; used after it, every method raises :class:`ClosedError`."""

    def __init__(self, etcd: Etcd, state: StmState) -> None:
        self._etcd = etcd
        self._state = state
        self._open = True
        self._read_error: Exception | None = None  # a read that failed (fn may have caught it)

    @property
    def isolation(self) -> Isolation:
        """The isolation level this STM runs at."""
        return self._state.isolation

    def __repr__(self) -> str:
        state = "open" if self._open else "over"
        return f"<Stm isolation={self._state.isolation} {state}>"

    async def get(self, key: str | bytes) -> bytes | None:
        """The value of ``key`` (``None``: no such key) as this attempt sees it: what it
        wrote, else what it read, else read now by the isolation level's rules. A read that
        fails raises; the STM then runs ``fn`` again when the error is retryable."""
        raw = key_bytes(key)
        self._check()
        hit, value = self._state.known(raw)
        if hit:
            return value
        await self._fetch([raw])
        return self._state.value(raw)

    async def rev(self, key: str | bytes) -> int:
        """The mod revision ``key`` was read at (0: no such key); reads it if it was not."""
        raw = key_bytes(key)
        self._check()
        if not self._state.has_read(raw):
            await self._fetch([raw])
        return self._state.rev(raw)

    def put(self, key: str | bytes, value: str | bytes, *, lease: int = 0) -> None:
        """Write ``key = value`` (on ``lease``, if not 0) at the commit."""
        raw, val = key_bytes(key), to_bytes(value, "value")
        self._check()
        self._state.put(raw, val, lease)

    def delete(self, key: str | bytes) -> None:
        """Delete ``key`` at the commit."""
        raw = key_bytes(key)
        self._check()
        self._state.delete(raw)

    def _check(self) -> None:
        if not self._open:
            raise ClosedError("this STM attempt is over; use the stm passed to the current fn")

    async def _read(self, keys: Sequence[bytes]) -> None:
        missing = [k for k in keys if not self._state.known(k)[0]]
        if missing:
            await self._fetch(missing)

    async def _fetch(self, keys: list[bytes]) -> None:
        state = self._state
        try:
            try:
                result = await self._etcd.txn((), state.read_ops(keys))
            except InvalidArgumentError:
                if not state.snapshot:
                    raise
                # "a future revision": the member we asked has not reached the snapshot yet
                result = await self._etcd.txn((), state.read_ops(keys, from_leader=True))
        except Exception as exc:
            self._read_error = exc
            raise
        state.record(keys, result.responses)


class SyncStm(Twin[Stm]):
    """What ``fn`` gets in the threaded :meth:`Client.stm`: :class:`Stm`, blocking."""

    isolation: mirror[Isolation] = mirror(Stm.isolation, direct=True)
    get = blocking(Stm.get)
    rev = blocking(Stm.rev)
    put = blocking_read(Stm.put)
    delete = blocking_read(Stm.delete)


# -- the drivers ----------------------------------------------------------------------------------


def _check(
    fn: object, isolation: object, prefetch: object, attempts: object
) -> tuple[Isolation, list[bytes]]:
    if not callable(fn):
        raise TypeError(f"fn must be a function that takes the stm, got {fn!r:.60}")
    if not isinstance(isolation, str):
        raise TypeError(
            f"isolation must be a str, one of {', '.join(ISOLATIONS)}; got {isolation!r:.60}"
        )
    if isolation not in ISOLATIONS:
        raise ValueError(f"isolation must be one of {', '.join(ISOLATIONS)}; got {isolation!r}")
    if isinstance(prefetch, str | bytes) or not isinstance(prefetch, Sequence):
        raise TypeError(f"prefetch must be a list of keys, got {prefetch!r:.60}")
    keys = [key_bytes(k, "prefetch key") for k in prefetch]
    if not isinstance(attempts, int) or isinstance(attempts, bool):
        raise TypeError(
            f"attempts must be an int >= 1, got {type(attempts).__name__}: {attempts!r:.40}"
        )
    if attempts < 1:
        raise ValueError(f"attempts must be an int >= 1, got {attempts!r}")
    return isolation, keys


class _Attempts:
    """When an STM runs ``fn`` again, and how long it pauses first (pure)."""

    def __init__(self, attempts: int, retry: RetryPolicy) -> None:
        self.limit = attempts
        self.retry = retry
        self.backoff: Backoff = contention_backoff(retry)
        self.made = 0
        self.last: Exception | None = None
        self.unreachable = 0  # attempts in a row whose read failed with etcd unreachable

    def restartable(self, stm: Stm, state: StmState, exc: Exception) -> bool:
        """A read of the attempt failed (so ``fn`` raised it, or went on without it):
        retryable errors and a compacted snapshot run ``fn`` again; etcd unreachable for
        :data:`UNREACHABLE_ATTEMPTS` attempts in a row (each already retried within the
        client's timeout) raises the read's error instead: an outage is not a conflict."""
        if stm._read_error is None or exc is not stm._read_error:
            return False
        if isinstance(exc, CompactedError):
            self.unreachable = 0
        elif self.retry.is_retryable(exc):
            self.unreachable += 1
            if self.unreachable >= UNREACHABLE_ATTEMPTS:
                return False
        else:
            return False
        state.forget()
        self.last = exc
        return True

    def pause(self) -> float:
        """The pause before the next attempt; :class:`ConflictError` when none is left. The
        first rerun after a conflict goes at once (its reads are fresh), later ones back off."""
        self.made += 1
        if self.made >= self.limit:
            why = f" (last read error: {self.last})" if self.last is not None else ""
            raise ConflictError(
                f"STM gave up after {self.made} attempts: every commit conflicted with "
                f"concurrent writes{why}; nothing was written"
            )
        if self.made == 1 and self.last is None:
            return 0.0
        return self.backoff.next_delay() or 0.0


async def _commit(etcd: Etcd, state: StmState) -> bool:
    compares, writes, reread = state.commit()
    if not compares and not writes:
        return True
    # A commit that writes a key no compare guards is sent once: a second copy could write
    # over another transaction's commit (see StmState.resend_safe).
    answer = await guarded_txn(
        etcd,
        compares,
        writes,
        reread,
        what="STM commit (fn is not run again)",
        window=RESEND_WINDOW if state.resend_safe() else 0.0,
    )
    if answer.succeeded:
        return True
    if answer.maybe_ours:
        raise OutcomeUnknownError(
            "STM commit got no answer at first, and then its compares failed: fn's writes "
            "may or may not have been applied (fn is not run again)"
        )
    state.conflicted(answer.result)
    return False


async def run_stm(
    etcd: Etcd,
    fn: Callable[[Stm], Awaitable[T]],
    isolation: Isolation = "serializable_snapshot",
    *,
    prefetch: Sequence[str | bytes] = (),
    attempts: int = DEFAULT_ATTEMPTS,
) -> T:
    """See :meth:`AsyncClient.stm`."""
    level, keys = _check(fn, isolation, prefetch, attempts)
    state = StmState(level)
    tries = _Attempts(attempts, etcd.retry)
    while True:
        state.reset()
        stm = Stm(etcd, state)
        try:
            if keys:
                await stm._read(keys)
            pending = fn(stm)
            if not inspect.isawaitable(pending):
                raise TypeError(
                    f"fn must be an async def fn(stm) (it returned {pending!r:.60}); "
                    "the threaded Client.stm takes a plain def"
                )
            result = await pending
            if stm._read_error is not None:
                raise stm._read_error  # fn went on without a read it asked for
            done = await _commit(etcd, state)
        except Exception as exc:
            if not tries.restartable(stm, state, exc):
                raise
            done = False
        finally:
            stm._open = False
        if done:
            return result
        delay = tries.pause()
        if delay:
            await tries.backoff.sleep(delay)


def run_stm_blocking(
    portal: PortalLike,
    etcd: Etcd,
    fn: Callable[[SyncStm], T],
    isolation: Isolation = "serializable_snapshot",
    *,
    prefetch: Sequence[str | bytes] = (),
    attempts: int = DEFAULT_ATTEMPTS,
) -> T:
    """See :meth:`Client.stm`: ``fn`` runs in the calling thread."""
    level, keys = _check(fn, isolation, prefetch, attempts)
    if inspect.iscoroutinefunction(fn):
        raise TypeError(
            "Client.stm takes a plain def fn(stm); use AsyncClient.stm for an async def"
        )
    state = StmState(level)
    tries = _Attempts(attempts, etcd.retry)
    while True:
        state.reset()
        stm = Stm(etcd, state)
        try:
            if keys:
                portal.call(stm._read(keys))
            result = fn(SyncStm(portal, stm))
            if inspect.isawaitable(result):
                if inspect.iscoroutine(result):
                    result.close()
                raise TypeError(
                    "Client.stm takes a plain def fn(stm) (it returned an awaitable); use "
                    "AsyncClient.stm for an async def"
                )
            if stm._read_error is not None:
                raise stm._read_error
            done = portal.call(_commit(etcd, state))
        except Exception as exc:
            if not tries.restartable(stm, state, exc):
                raise
            done = False
        finally:
            stm._open = False
        if done:
            return result
        delay = tries.pause()
        if delay:
            time.sleep(delay)
