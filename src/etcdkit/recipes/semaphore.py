"""Semaphore: at most ``permits`` holders at once, first come first served, each with a fencing
token (Curator's ``InterProcessSemaphoreV2``; Go's etcd recipes have none, so the layout is
ours, and ``docs/recipes/semaphore.md`` draws it).

Keys under ``name + "/"``, each on the lease of the acquisition it stands for:

- ``name/waiters/<lease hex>``: an acquisition in line. The line is ordered by create revision.
- ``name/holders/<lease hex>``: an acquisition that holds a permit. Its create revision is the
  permit's fencing token.

Rules:

- A waiter with another waiter ahead of it watches only the one just ahead (the newest older
  waiter key) for its deletion: a promotion or a cancellation ahead wakes one waiter.
- The first waiter reads the holders. While there are ``permits`` of them it watches the
  holders' range for deletions; as soon as fewer remain it promotes itself in one transaction:
  *if* its waiter key still exists *and* no holder key was created since its read, *then* delete
  the waiter key and put the holder key. Only the first waiter promotes, so the order is first
  come, first served; the compare on the whole holders range makes "fewer than ``permits``"
  hold at the moment etcd applies the promotion, so there are never more than ``permits``
  holder keys.

A release revokes the acquisition's lease (its key goes at once): the first waiter wakes and
promotes itself, which wakes the waiter behind it, which starts to watch the holders. Two
wake-ups per release, however many wait: no herd.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from etcdkit._blocking.twin import PortalLike, Twin, mirror
from etcdkit._errors import EtcdkitError, EtcdTimeoutError
from etcdkit._surface import Etcd
from etcdkit._types import Compare, EventType, HoldState, KeyValue, Op, RangeResult, WatchEvent
from etcdkit.recipes._hold import (
    Gone,
    Hold,
    SyncHold,
    absent,
    check_count,
    check_timeout,
    check_ttl,
    deleted,
    name_prefix,
    ranges,
    watch_until,
)

if TYPE_CHECKING:
    from etcdkit.recipes.session import Session

__all__ = ["Permit", "Semaphore", "SyncPermit", "SyncSemaphore"]

log = logging.getLogger("etcdkit.recipes")


class Semaphore:
    """A distributed counting semaphore on the keys under ``name + "/"``: at most ``permits``
    holders at any moment, served first come, first served.

    Create with :meth:`AsyncClient.semaphore` (no I/O), then ``async with sem as permit:``, or
    ``permit = await sem.acquire()`` and ``await permit.release()``. Each acquisition is its
    own :class:`Permit`, on an etcd lease of its own (``ttl`` seconds, kept alive meanwhile):
    its release and its state belong to it, never to another acquisition through the same
    Semaphore object (``async with`` releases the permit its own task entered with).
    :meth:`acquire` waits up to ``timeout`` seconds (``None``: forever; ``0``: take a permit
    if one is free, else raise at once), then raises :class:`EtcdTimeoutError`; a timeout or
    cancellation while waiting revokes the acquisition's lease: no key, no lease left behind.
    Every process must use the same ``permits`` for one name.

    **Fence** what the permit protects: ``etcd.txn(compare=[permit.guard()], success=[...])``
    lands only while the permit's key exists (a paused or cut-off holder cannot write late),
    and :attr:`Permit.fencing_token` rises with every new holder. See
    ``docs/recipes/semaphore.md`` for the layout and a fault timeline.
    """

    def __init__(
        self,
        etcd: Etcd,
        name: str | bytes,
        permits: int,
        ttl: int = 10,
        timeout: float | None = 30,
    ) -> None:
        self._prefix = name_prefix(name)
        self._name = name
        self._permits = check_count(permits, "permits")
        self._ttl = check_ttl(ttl)
        self._timeout = check_timeout(timeout)
        self._etcd = etcd
        self._entered: dict[asyncio.Task[Any], list[Permit]] = {}
        self._listeners: list[Callable[[HoldState], None]] = []

    def __repr__(self) -> str:
        return f"<Semaphore name={self._name!r} permits={self._permits} ttl={self._ttl}>"

    @property
    def name(self) -> str | bytes:
        """The semaphore's name: its keys are under ``name + "/"``."""
        return self._name

    @property
    def permits(self) -> int:
        """How many acquisitions may hold at once."""
        return self._permits

    @property
    def ttl(self) -> int:
        """The TTL of each acquisition's lease, in seconds."""
        return self._ttl

    @property
    def timeout(self) -> float | None:
        """How long :meth:`acquire` waits (``None``: forever; ``0``: not at all)."""
        return self._timeout

    @property
    def holders_prefix(self) -> bytes:
        """``name/holders/``: one key per holder, on its lease."""
        return self._prefix + b"holders/"

    @property
    def waiters_prefix(self) -> bytes:
        """``name/waiters/``: one key per waiter, on its lease, in line by create revision."""
        return self._prefix + b"waiters/"

    def add_listener(self, callback: Callable[[HoldState], None]) -> Callable[[], None]:
        """Call ``callback(state)`` on every state change of every acquisition made through this
        Semaphore from now on, waiting ones included (``WAITING``, ``REQUEUED``, ...), on the
        event loop; returns a function that removes it. Errors in it are logged."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    async def acquire(self) -> Permit:
        """Wait for a permit (up to :attr:`timeout` seconds) and return it, held: a
        :class:`Permit` of its own. Raises :class:`EtcdTimeoutError` on timeout (with
        ``timeout=0``: at once, unless a permit is free), :class:`ClosedError` if the client
        closes meanwhile; every failure leaves no key and no lease behind."""
        permit = Permit(self, self._etcd)
        await permit._acquire(self._timeout)
        return permit

    async def __aenter__(self) -> Permit:
        """:meth:`acquire`, remembered for this task: the block's exit releases this permit."""
        permit = await self.acquire()
        self._entered.setdefault(_task(), []).append(permit)
        return permit

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Release the permit this task entered with (the newest, when nested)."""
        task = _task()
        entered = self._entered.get(task)
        if not entered:
            raise RuntimeError("Semaphore.__aexit__ without __aenter__ in this task")
        permit = entered.pop()
        if not entered:
            del self._entered[task]
        await permit.release()


def _task() -> asyncio.Task[Any]:
    task = asyncio.current_task()
    if task is None:
        raise RuntimeError("a Semaphore is entered from a task")
    return task


@dataclass(frozen=True, slots=True)
class _Line:
    """One read of the line, at ``revision``."""

    revision: int
    mine: KeyValue | None  # our waiter key
    held: KeyValue | None  # our holder key (an earlier promotion of ours landed)
    ahead: KeyValue | None  # the waiter just before ours
    holders: frozenset[bytes]


class Permit(Hold):
    """One acquisition of a :class:`Semaphore`: held from :meth:`Semaphore.acquire` until
    :meth:`release` (or the end of its ``async with`` block), or until it is lost.

    ``state`` is a :class:`HoldState`: ``SUSPENDED`` while etcd does not confirm the lease,
    ``LOST`` (and :attr:`lost` set) as soon as etcd may give the permit to another: the key
    deleted, the lease revoked or expired, or unconfirmed until a margin before its TTL; the
    lease is then revoked at once. Guard every write the permit protects with :meth:`guard`.
    """

    def __init__(self, semaphore: Semaphore, etcd: Etcd) -> None:
        what = f"semaphore {semaphore.name!r} ({semaphore.permits} permits)"
        super().__init__(etcd, what, semaphore.ttl, semaphore._listeners)
        self._sem = semaphore

    async def __aenter__(self) -> Permit:
        """The permit itself (held already); the block's exit releases it."""
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.release()

    async def _acquire(self, timeout: float | None) -> None:
        if not await self.acquire_with(self._take, timeout):
            raise EtcdTimeoutError(
                f"{self.what}: no permit free (timeout=0: no wait); {self._behind}"
            )

    async def _take(self, wait: bool) -> tuple[bytes, int, int] | None:
        etcd = self._etcd
        backoff = etcd.retry.backoff()
        entered = 0  # the lease our waiter key was put with (0: not yet)
        rev = 0  # our waiter key's create revision (0: not known)
        while True:
            try:
                session = await self.session_now()
                lease = session.lease_id
                mine = self._sem.waiters_prefix + format(lease, "x").encode()
                held = self._sem.holders_prefix + format(lease, "x").encode()
                if entered != lease:
                    line = await self._enter(mine, held, lease)
                    entered = lease
                else:
                    line = await self._look(mine, held, rev)
                if line.held is not None:  # a promotion of ours landed; its answer was lost
                    return held, line.held.create_revision, line.revision
                if line.mine is None:
                    raise Gone("our waiter key is gone (deleted, or its lease expired or revoked)")
                rev = line.mine.create_revision
                self.in_line()
                ahead = line.ahead
                if ahead is not None:
                    self._behind = f"in line behind {ahead.key!r}"
                    if not wait:
                        return None
                    await watch_until(
                        etcd, ahead.key, line.revision, session, deleted, settled=absent
                    )
                    self._wakeups += 1
                    continue
                self._behind = f"first in line; all {self._sem.permits} permits held"
                if len(line.holders) >= self._sem.permits:
                    if not wait:
                        return None
                    await self._wait_for_a_release(line, session)
                got = await self._promote(mine, held, lease, line)
                if got is not None:
                    return got
                # a holder key appeared since our read (or ours went): look again
            except Gone as gone:
                await self.requeue(str(gone))
                entered = rev = 0
                await backoff.wait()
            except EtcdkitError as exc:
                if not wait or not etcd.retry.is_retryable(exc):
                    raise  # (timeout=0 does not wait for etcd either)
                log.info("%s: etcd unreachable (%s); retrying", self.what, exc)
                await backoff.wait()

    def _reads(self, mine: bytes, held: bytes, before: int) -> list[Op]:
        """Our two keys, the waiter just before ours (created at or before ``before``; 0:
        the newest two waiters) and the holders."""
        return [
            Op.get(mine),
            Op.get(held),
            Op.range(
                self._sem.waiters_prefix,
                prefix=True,
                sort_target="create",
                sort_order="descend",
                limit=1 if before else 2,
                max_create_revision=before,
                keys_only=True,
            ),
            Op.range(self._sem.holders_prefix, prefix=True, keys_only=True),
        ]

    async def _enter(self, mine: bytes, held: bytes, lease: int) -> _Line:
        """Put our waiter key and read the line in one transaction (or, when an earlier attempt
        of ours landed, read it as it is)."""
        res = await self._etcd.txn(
            [Compare.create_revision(mine, "==", 0), Compare.create_revision(held, "==", 0)],
            [Op.put(mine, b"", lease=lease), *self._reads(mine, held, 0)[2:]],
        )
        if not res.succeeded:
            return await self._look(mine, held, 0)
        newest, holders = ranges(res.responses[1:])
        me = next((kv for kv in newest.kvs if kv.key == mine), None)
        ahead = next((kv for kv in newest.kvs if kv.key != mine), None)
        return _Line(res.revision, me, None, ahead, frozenset(kv.key for kv in holders.kvs))

    async def _look(self, mine: bytes, held: bytes, rev: int) -> _Line:
        """The line as it is, read in one transaction (``rev``: our waiter key's create
        revision; 0 when not known, after an attempt whose answer was lost)."""
        if not rev:
            got = await self._etcd.get(mine)
            rev = got.create_revision if got is not None else 0
        if not rev:
            ours = await self._etcd.get(held)
            return _Line(0, None, ours, None, frozenset())
        res = await self._etcd.txn([], self._reads(mine, held, rev - 1))
        me, ours_now, ahead, holders = ranges(res.responses)
        still = me.kvs and me.kvs[0].create_revision == rev  # (not a key put anew since)
        return _Line(
            res.revision,
            me.kvs[0] if still else None,
            ours_now.kvs[0] if ours_now.kvs else None,
            ahead.kvs[0] if ahead.kvs else None,
            frozenset(kv.key for kv in holders.kvs),
        )

    async def _wait_for_a_release(self, line: _Line, session: Session) -> None:
        """First in line with every permit held: wait until fewer than ``permits`` of the
        holders read at ``line.revision`` remain (a release wakes us, and only us)."""
        left = set(line.holders)

        def done(events: list[WatchEvent]) -> bool:
            for ev in events:
                if ev.type is EventType.DELETE:
                    left.discard(ev.kv.key)
            return len(left) < self._sem.permits

        def fewer(now: RangeResult) -> bool:
            return sum(kv.key in line.holders for kv in now.kvs) < self._sem.permits

        await watch_until(
            self._etcd,
            self._sem.holders_prefix,
            line.revision,
            session,
            done,
            prefix=True,
            settled=fewer,
        )
        self._wakeups += 1

    async def _promote(
        self, mine: bytes, held: bytes, lease: int, line: _Line
    ) -> tuple[bytes, int, int] | None:
        assert line.mine is not None
        res = await self._etcd.txn(
            [
                Compare.create_revision(mine, "==", line.mine.create_revision),
                # no holder key created since our read: there are fewer than `permits` now
                Compare.create_revision(
                    self._sem.holders_prefix, "<", line.revision + 1, prefix=True
                ),
            ],
            [Op.delete(mine), Op.put(held, b"", lease=lease)],
        )
        if not res.succeeded:
            return None
        return held, res.revision, res.revision


# -- the threaded face ----------------------------------------------------------------------------


class SyncPermit(SyncHold[Permit]):
    """Blocking view of a :class:`Permit`; ``lost`` is a :class:`threading.Event` here."""

    key: mirror[bytes] = mirror(Permit.key)
    lease_id: mirror[int] = mirror(Permit.lease_id)
    fencing_token: mirror[int] = mirror(Permit.fencing_token)
    state: mirror[HoldState] = mirror(Permit.state)
    wakeups: mirror[int] = mirror(Permit.wakeups)
    requeues: mirror[int] = mirror(Permit.requeues)

    def release(self) -> None:
        if not self.portal.closed:
            self.portal.call(self.aio.release())

    release.__doc__ = Permit.release.__doc__

    def __enter__(self) -> SyncPermit:
        """The permit itself (held already); the block's exit releases it."""
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self.portal.closed:
            self.release()


class SyncSemaphore(Twin[Semaphore]):
    """Blocking view of a :class:`Semaphore`: ``with client.semaphore(name, 3) as permit:``
    (each thread's ``with`` releases the permit it entered with)."""

    def __init__(self, portal: PortalLike, aio: Semaphore) -> None:
        super().__init__(portal, aio)
        self._entered = threading.local()

    name: mirror[str | bytes] = mirror(Semaphore.name, direct=True)
    permits: mirror[int] = mirror(Semaphore.permits, direct=True)
    ttl: mirror[int] = mirror(Semaphore.ttl, direct=True)
    timeout: mirror[float | None] = mirror(Semaphore.timeout, direct=True)
    holders_prefix: mirror[bytes] = mirror(Semaphore.holders_prefix, direct=True)
    waiters_prefix: mirror[bytes] = mirror(Semaphore.waiters_prefix, direct=True)

    def add_listener(self, callback: Callable[[HoldState], None]) -> Callable[[], None]:
        """``callback`` runs on the client's loop thread; keep it quick."""
        return self.portal.read(lambda: self.aio.add_listener(callback))

    def acquire(self) -> SyncPermit:
        """See :meth:`Semaphore.acquire`: blocks until a permit is held; returns it."""

        async def acquired() -> SyncPermit:
            # (its twin made on the loop: no second trip there that an interrupt could cut)
            return SyncPermit(self.portal, await self.aio.acquire())

        # a permit acquired for an acquire interrupted in this thread is released: nobody has it
        return self.portal.call(acquired(), abandon=_release)

    def __enter__(self) -> SyncPermit:
        """:meth:`acquire`, remembered for this thread: the block's exit releases it."""
        permit = self.acquire()
        stack: list[SyncPermit] = getattr(self._entered, "stack", None) or []
        stack.append(permit)
        self._entered.stack = stack
        return permit

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        stack: list[SyncPermit] | None = getattr(self._entered, "stack", None)
        if not stack:
            raise RuntimeError("SyncSemaphore.__exit__ without __enter__ in this thread")
        permit = stack.pop()
        if not self.portal.closed:
            permit.release()


async def _release(permit: SyncPermit) -> None:
    await permit.aio.release()
