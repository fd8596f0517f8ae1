"""Read-write lock: readers share, a writer excludes everyone; on the key layout and waiting
rules of Go's ``contrib/recipes`` ``RWMutex`` (etcd 3.4; ``experimental/recipes`` in 3.5), so
that Go programs and ours share one lock.

Go's layout, under ``name + "/"``:

- a reader's key is ``name/read/<unique>``, a writer's ``name/write/<unique>``, each created
  once (``if version(key) == 0 then put``) on the holder's lease, with an empty value, and
  never modified: its create revision is its mod revision, which orders the line;
- a reader holds once no key under ``name/write`` is older than its own; until then it watches
  the newest such key (``WithLastRev`` + ``WithMaxModRev(own - 1)``) for its deletion;
- a writer holds once no key under ``name/`` is older than its own; until then it watches the
  newest such key for its deletion.

Go's ``<unique>`` is the time in nanoseconds; ours is the lease id in hex, since every
acquisition has a lease of its own (a retried create then finds its key instead of queuing
twice). Nothing reads the suffix: the order is the revision's.
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Literal

from etcdkit._blocking.twin import PortalLike, Twin, mirror
from etcdkit._errors import EtcdkitError, EtcdTimeoutError
from etcdkit._surface import Etcd
from etcdkit._types import Compare, HoldState, KeyValue, Op, RangeResult
from etcdkit.recipes._hold import (
    Gone,
    Hold,
    SyncHold,
    absent,
    check_timeout,
    check_ttl,
    deleted,
    name_prefix,
    ranges,
    watch_until,
)

__all__ = ["RWHold", "RWLock", "SyncRWHold", "SyncRWLock"]

log = logging.getLogger("etcdkit.recipes")

Mode = Literal["read", "write"]


class RWLock:
    """A distributed read-write lock on the keys under ``name + "/"``, shared with Go's
    ``recipe.RWMutex``: any number of readers at once, or one writer and nobody else.

    Create with :meth:`AsyncClient.rwlock` (no I/O), then ``async with rw.read() as hold:`` or
    ``async with rw.write() as hold:``. Each call of :meth:`read` / :meth:`write` is one
    acquisition of its own (an :class:`RWHold`, on an etcd lease of its own of ``ttl``
    seconds), so its release and its state belong to it alone. Waiting is first come, first
    served across readers and writers (a reader that comes after a waiting writer waits for
    it: writers do not starve). Acquiring waits up to ``timeout`` seconds (``None``: forever;
    ``0``: take it if free, else raise at once), then raises :class:`EtcdTimeoutError`; a
    timeout or a cancellation while waiting revokes the acquisition's lease: no key and no
    lease stay behind.

    **Fence** the writes a hold protects with :meth:`RWHold.guard` in their transaction; see
    ``docs/recipes/rwlock.md`` for the layout and a fault timeline.
    """

    def __init__(
        self, etcd: Etcd, name: str | bytes, ttl: int = 10, timeout: float | None = 30
    ) -> None:
        self._prefix = name_prefix(name)
        self._name = name
        self._ttl = check_ttl(ttl)
        self._timeout = check_timeout(timeout)
        self._etcd = etcd

    def __repr__(self) -> str:
        return f"<RWLock name={self._name!r} ttl={self._ttl}>"

    @property
    def name(self) -> str | bytes:
        """The lock's name: its keys are under ``name + "/"``."""
        return self._name

    @property
    def prefix(self) -> bytes:
        """``name + "/"``: every key of the lock is under it."""
        return self._prefix

    @property
    def ttl(self) -> int:
        """The TTL of each acquisition's lease, in seconds."""
        return self._ttl

    @property
    def timeout(self) -> float | None:
        """How long an acquisition waits (``None``: forever; ``0``: not at all)."""
        return self._timeout

    def read(self) -> RWHold:
        """A new read acquisition (no I/O): ``async with rw.read() as hold:`` waits until no
        writer is ahead of it, then shares the lock with the other readers."""
        return RWHold(self, self._etcd, "read")

    def write(self) -> RWHold:
        """A new write acquisition (no I/O): ``async with rw.write() as hold:`` waits until
        every reader and writer ahead of it is gone, then holds the lock alone."""
        return RWHold(self, self._etcd, "write")


class RWHold(Hold):
    """One read or write acquisition of an :class:`RWLock` (made by :meth:`RWLock.read` or
    :meth:`RWLock.write`): ``async with`` it, or :meth:`acquire` and :meth:`release` it.

    ``state`` is a :class:`HoldState`: ``SUSPENDED`` while etcd does not confirm the lease,
    ``LOST`` (and :attr:`lost` set) as soon as etcd may let a conflicting holder in: the key
    deleted, the lease revoked or expired, or unconfirmed until a margin before its TTL; the
    lease is then revoked at once. Guard every write the hold protects with :meth:`guard`.
    """

    def __init__(self, rwlock: RWLock, etcd: Etcd, mode: Mode) -> None:
        super().__init__(etcd, f"rwlock {rwlock.name!r} ({mode})", rwlock.ttl)
        self._rw = rwlock
        self._mode: Mode = mode

    @property
    def mode(self) -> Mode:
        """``"read"`` or ``"write"``."""
        return self._mode

    async def acquire(self) -> RWHold:
        """Wait until this acquisition holds (up to the lock's ``timeout``); returns it.
        Raises :class:`EtcdTimeoutError` on timeout (with ``timeout=0``: at once, unless it
        can hold at once), :class:`ClosedError` if the client closes or :meth:`release` is
        called meanwhile, ``RuntimeError`` if this acquisition was already made (call
        ``rw.read()`` / ``rw.write()`` again for another). Every failure leaves no key and no
        lease behind."""
        if not await self.acquire_with(self._take, self._rw.timeout):
            raise EtcdTimeoutError(f"{self.what}: not free (timeout=0: no wait); {self._behind}")
        return self

    async def __aenter__(self) -> RWHold:
        """:meth:`acquire`; the block's exit releases."""
        return await self.acquire()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.release()

    def _blocking(self) -> bytes:
        """The prefix of the keys that block us: writers for a reader, everyone for a writer
        (Go's ``pfx + "write"`` and ``pfx``)."""
        return self._rw.prefix + b"write" if self._mode == "read" else self._rw.prefix

    def _last_before(self, rev: int, *, limit: int = 1) -> Op:
        """Go's ``waitOnLastRev`` read: the newest blocking key by mod revision, among those
        modified at or before ``rev`` (0: all of them)."""
        return Op.range(
            self._blocking(),
            prefix=True,
            sort_target="mod",
            sort_order="descend",
            limit=limit,
            max_mod_revision=rev,
            keys_only=True,
        )

    async def _take(self, wait: bool) -> tuple[bytes, int, int] | None:
        etcd = self._etcd
        backoff = etcd.retry.backoff()
        entered = 0  # the lease our key was put with (0: not yet)
        rev = 0  # our key's create revision
        while True:
            try:
                session = await self.session_now()
                lease = session.lease_id
                key = self._rw.prefix + self._mode.encode() + b"/" + format(lease, "x").encode()
                if entered != lease:
                    rev, at, ahead = await self._enter(key, lease)
                    entered = lease
                else:
                    rev, at, ahead = await self._look(key, rev)
                self.in_line()
                if ahead is None:
                    return key, rev, at
                self._behind = f"waiting for {ahead.key!r} to go"
                if not wait:
                    return None
                await watch_until(etcd, ahead.key, at, session, deleted, settled=absent)
                self._wakeups += 1
            except Gone as gone:
                await self.requeue(str(gone))
                entered = rev = 0
                await backoff.wait()
            except EtcdkitError as exc:
                if not wait or not etcd.retry.is_retryable(exc):
                    raise  # (timeout=0 does not wait for etcd either)
                log.info("%s: etcd unreachable (%s); retrying", self.what, exc)
                await backoff.wait()

    async def _enter(self, key: bytes, lease: int) -> tuple[int, int, KeyValue | None]:
        """Put our key and read the key we wait for, in one transaction (or, when an earlier
        attempt of ours landed, find our key and look). ``(our revision, read revision, the
        key we wait for or None)``."""
        mine = self._mode == "write"  # our key is in the writer's read (the newest): skip it
        res = await self._etcd.txn(
            [Compare.create_revision(key, "==", 0)],
            [Op.put(key, b"", lease=lease), self._last_before(0, limit=2 if mine else 1)],
            [Op.get(key)],
        )
        read = res.responses[-1]
        assert isinstance(read, RangeResult)
        if not res.succeeded:
            if not read.kvs:
                raise Gone("our key is gone")
            return await self._look(key, read.kvs[0].create_revision)
        ahead = next((kv for kv in read.kvs if kv.key != key), None)
        return res.revision, res.revision, ahead

    async def _look(self, key: bytes, rev: int) -> tuple[int, int, KeyValue | None]:
        res = await self._etcd.txn([], [Op.get(key), self._last_before(rev - 1)])
        me, last = ranges(res.responses)
        if not me.kvs or me.kvs[0].create_revision != rev:
            raise Gone("our key is gone (deleted, or its lease expired or was revoked)")
        return rev, res.revision, last.kvs[0] if last.kvs else None


# -- the threaded face ----------------------------------------------------------------------------


class SyncRWHold(SyncHold[RWHold]):
    """Blocking view of an :class:`RWHold`: ``with rw.read() as hold:``; ``lost`` is a
    :class:`threading.Event` here."""

    mode: mirror[Mode] = mirror(RWHold.mode, direct=True)
    key: mirror[bytes] = mirror(RWHold.key)
    lease_id: mirror[int] = mirror(RWHold.lease_id)
    fencing_token: mirror[int] = mirror(RWHold.fencing_token)
    state: mirror[HoldState] = mirror(RWHold.state)
    wakeups: mirror[int] = mirror(RWHold.wakeups)
    requeues: mirror[int] = mirror(RWHold.requeues)

    def release(self) -> None:
        if not self.portal.closed:
            self.portal.call(self.aio.release())

    release.__doc__ = RWHold.release.__doc__

    def acquire(self) -> SyncRWHold:
        """See :meth:`RWHold.acquire`: blocks until held; returns this hold."""
        # (held for an acquire interrupted in this thread: released, nobody has it)
        self.portal.call(self.aio.acquire(), abandon=_release)
        return self

    def __enter__(self) -> SyncRWHold:
        """:meth:`acquire`; the block's exit releases."""
        return self.acquire()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self.portal.closed:
            self.release()


class SyncRWLock(Twin[RWLock]):
    """Blocking view of an :class:`RWLock`: ``with client.rwlock(name).write() as hold:``."""

    name: mirror[str | bytes] = mirror(RWLock.name, direct=True)
    prefix: mirror[bytes] = mirror(RWLock.prefix, direct=True)
    ttl: mirror[int] = mirror(RWLock.ttl, direct=True)
    timeout: mirror[float | None] = mirror(RWLock.timeout, direct=True)

    def __init__(self, portal: PortalLike, aio: RWLock) -> None:
        super().__init__(portal, aio)

    def read(self) -> SyncRWHold:
        """See :meth:`RWLock.read` (no I/O)."""
        return SyncRWHold(self.portal, self.portal.read(self.aio.read))

    def write(self) -> SyncRWHold:
        """See :meth:`RWLock.write` (no I/O)."""
        return SyncRWHold(self.portal, self.portal.read(self.aio.write))


async def _release(hold: RWHold) -> None:
    await hold.release()
