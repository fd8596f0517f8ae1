"""Double barrier: ``count`` participants enter together, and leave together, on the key layout
and waiting rules of Go's ``contrib/recipes`` ``DoubleBarrier`` (etcd 3.4;
``experimental/recipes`` in 3.5), so that Go programs and ours meet at one barrier.

Go's layout, under ``name + "/"``:

- ``name/waiters/<unique>``: one key per participant, on its lease, empty, never modified (Go's
  ``<unique>`` is the time in nanoseconds; ours is the lease id in hex: every participant of
  ours has a lease of its own);
- ``name/ready``: put (no lease) by the participant whose key made the count (counted over the
  prefix ``name/waiters``); the others wait for that put, watching from their key's revision.

Leaving (Go's ``Leave``): read the waiters; none left, done; one left, delete ``name/ready`` and
our key, done; the oldest key (by mod revision) waits for the newest to go; every other
participant deletes its key and waits for the oldest to go; then each reads again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from etcdkit._blocking.twin import blocking, mirror
from etcdkit._errors import EtcdkitError, EtcdTimeoutError
from etcdkit._surface import Etcd
from etcdkit._types import Compare, EventType, HoldState, Op, RangeResult, WatchEvent
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
    watch_until,
)

__all__ = ["BarrierFullError", "DoubleBarrier", "SyncDoubleBarrier"]

log = logging.getLogger("etcdkit.recipes")


class BarrierFullError(EtcdkitError):
    """More participants entered a :class:`DoubleBarrier` than its ``count`` (Go's
    ``ErrTooManyClients``): this one did not enter (its key was removed)."""


def _ready_or_gone(
    ready: bytes, mine: bytes, since: int, seen: list[bool]
) -> tuple[Callable[[list[WatchEvent]], bool], Callable[[RangeResult], bool]]:
    """For ``watch_until`` on the barrier's keys: the ``ready`` key put at or after revision
    ``since`` (then ``seen[0]`` is set: we are in, whether or not it was deleted since, as
    Go's ``Enter`` returns on that put), or our own key ``mine`` deleted (events; a read of
    the keys)."""

    def done(events: list[WatchEvent]) -> bool:
        if any(
            ev.kv.key == ready and ev.type is EventType.PUT and ev.kv.mod_revision >= since
            for ev in events
        ):
            seen[0] = True
            return True
        return any(ev.kv.key == mine and ev.type is EventType.DELETE for ev in events)

    def settled(now: RangeResult) -> bool:
        found = {kv.key: kv.mod_revision for kv in now.kvs}
        return found.get(ready, 0) >= since or mine not in found

    return done, settled


class DoubleBarrier:
    """One participant of a double barrier on the keys under ``name + "/"``, shared with Go's
    ``recipe.DoubleBarrier``: :meth:`enter` returns once ``count`` participants have entered,
    :meth:`leave` once every one of them has left.

    Create with :meth:`AsyncClient.double_barrier` (no I/O), one object per participant.
    The participant's key is on an etcd lease of its own (``ttl`` seconds, kept alive from
    :meth:`enter` to the end of :meth:`leave`): a participant that dies is counted out when
    its lease expires. ``lost`` is set, and ``state`` is ``LOST``, if that lease or key goes
    while inside (revoked, expired, deleted): the others no longer count this one. A timeout
    or a cancellation in :meth:`enter` or :meth:`leave` revokes the lease: no key stays
    behind. See ``docs/recipes/barrier.md``.
    """

    def __init__(self, etcd: Etcd, name: str | bytes, count: int, ttl: int = 10) -> None:
        self._prefix = name_prefix(name)
        self._name = name
        self._count = check_count(count, "count")
        self._ttl = check_ttl(ttl)
        self._etcd = etcd
        self._place = Hold(etcd, f"double barrier {name!r} ({count} participants)", self._ttl)
        self._place._verb = "entered"

    def __repr__(self) -> str:
        return f"<DoubleBarrier name={self._name!r} count={self._count} {self._place!r}>"

    # -- facts (no I/O) ---------------------------------------------------------------------------

    @property
    def name(self) -> str | bytes:
        """The barrier's name: its keys are under ``name + "/"``."""
        return self._name

    @property
    def count(self) -> int:
        """How many participants enter together."""
        return self._count

    @property
    def ttl(self) -> int:
        """The TTL of this participant's lease, in seconds."""
        return self._ttl

    @property
    def ready_key(self) -> bytes:
        """``name/ready``: put when the count is reached."""
        return self._prefix + b"ready"

    @property
    def waiters_prefix(self) -> bytes:
        """``name/waiters``: the participants' keys, counted over this prefix (as Go does)."""
        return self._prefix + b"waiters"

    @property
    def key(self) -> bytes:
        """This participant's key once inside (``b""`` before)."""
        return self._place.key

    @property
    def lease_id(self) -> int:
        """The lease this participant's key is on (0 outside the barrier)."""
        return self._place.lease_id

    @property
    def state(self) -> HoldState:
        """IDLE before :meth:`enter`, WAITING in it, HELD (or SUSPENDED) inside, LOST if this
        participant's key or lease went while inside, RELEASED once it left."""
        return self._place.state

    @property
    def lost(self) -> asyncio.Event:
        """Set once this participant's place can no longer be trusted (LOST), or it left."""
        return self._place.lost

    def guard(self) -> Compare:
        """A :class:`Compare` that holds only while this participant's key is in the barrier
        (see :meth:`Permit.guard`). Raises :class:`NotHeldError` before :meth:`enter`."""
        return self._place.guard()

    def add_listener(self, callback: Callable[[HoldState], None]) -> Callable[[], None]:
        """Call ``callback(state)`` on every state change (on the event loop); returns a
        function that removes it."""
        return self._place.add_listener(callback)

    # -- entering ---------------------------------------------------------------------------------

    async def enter(self, timeout: float | None = None) -> None:
        """Put this participant's key and wait until ``count`` have entered. Raises
        :class:`EtcdTimeoutError` after ``timeout`` seconds (``None``: no limit; ``0``: only
        if this one completes the count), :class:`BarrierFullError` if more than ``count``
        are in, ``RuntimeError`` if this participant entered already. Every failure removes
        its key."""
        limit = check_timeout(timeout)
        if not await self._place.acquire_with(self._take, limit):
            raise EtcdTimeoutError(
                f"{self._place.what}: not everyone is in (timeout=0: no wait); "
                f"{self._place._behind}"
            )

    async def _take(self, wait: bool) -> tuple[bytes, int, int] | None:
        etcd = self._etcd
        place = self._place
        backoff = etcd.retry.backoff()
        entered = 0  # the lease our key was put with
        first = 0  # the revision of our first key: a ready put after it lets us in
        # our keys of leases given up on (their revoke may not have reached etcd): deleted
        # with the put of the next, which would be counted beside them
        stale: list[bytes] = []
        since = 0  # the watch goes on from here (the last read's revision)
        while True:
            try:
                session = await place.session_now()
                lease = session.lease_id
                key = self.waiters_prefix + b"/" + format(lease, "x").encode()
                count = Op.range(self.waiters_prefix, prefix=True, count_only=True)
                if entered != lease:
                    res = await etcd.txn(
                        [Compare.create_revision(key, "==", 0)],
                        [*(Op.delete(k) for k in stale), Op.put(key, b"", lease=lease), count],
                        [Op.get(key), count],
                    )
                    entered = lease
                    if res.succeeded:
                        stale.clear()
                else:
                    res = await etcd.txn([], [Op.get(key), count])
                mine, counted = res.responses[-2:]
                assert isinstance(counted, RangeResult)
                if isinstance(mine, RangeResult):
                    if not mine.kvs:
                        raise Gone("our key is gone (deleted, or its lease expired or was revoked)")
                    rev = mine.kvs[0].create_revision
                else:
                    rev = res.revision
                first = first or rev
                place.in_line()
                n = counted.count
                if n > self._count:
                    raise BarrierFullError(
                        f"{place.what}: {n} participants are in, more than {self._count}"
                    )
                if n == self._count:
                    await etcd.put(self.ready_key, b"")
                    return key, rev, res.revision
                place._behind = f"{n} of {self._count} are in"
                if not wait:
                    return None

                # Until the ready key is put since we came, or our own key goes (deleted:
                # we queue again with a new one, or the others count one too few for ever).
                seen = [False]
                done, settled = _ready_or_gone(self.ready_key, key, first, seen)
                await watch_until(
                    etcd,
                    self._prefix,
                    max(first - 1, since),
                    session,
                    done,
                    prefix=True,
                    filters=(),
                    settled=settled,
                )
                if seen[0]:  # the ready put after our first key: we are in
                    return key, rev, res.revision
                # which was it (or did etcd compact what the watch was to show)?
                got = await etcd.txn([], [Op.get(self.ready_key), Op.get(key)])
                ready_now, mine_now = got.responses
                assert isinstance(ready_now, RangeResult)
                assert isinstance(mine_now, RangeResult)
                if ready_now.kvs and ready_now.kvs[0].mod_revision >= first:
                    return key, rev, res.revision
                if not mine_now.kvs:
                    raise Gone("our key was deleted")
                since = got.revision  # (what came before is read: watch on from here)
            except Gone as gone:
                await place.requeue(str(gone))
                if entered:
                    stale.append(self.waiters_prefix + b"/" + format(entered, "x").encode())
                entered = 0
                await backoff.wait()
            except EtcdkitError as exc:
                if (
                    isinstance(exc, BarrierFullError)
                    or not wait
                    or not etcd.retry.is_retryable(exc)
                ):
                    raise
                log.info("%s: etcd unreachable (%s); retrying", place.what, exc)
                await backoff.wait()

    # -- leaving ----------------------------------------------------------------------------------

    async def leave(self, timeout: float | None = None) -> None:
        """Leave, and wait until every participant has left (Go's rules: the oldest leaves
        last). Revokes this participant's lease at the end. Raises :class:`EtcdTimeoutError`
        after ``timeout`` seconds (``None``: no limit; ``0``: only if nobody else is left),
        ``RuntimeError`` if this participant did not enter; on any failure its key is
        removed all the same."""
        limit = check_timeout(timeout)
        place = self._place
        if place.state in (HoldState.IDLE, HoldState.WAITING):
            raise RuntimeError(f"{place.what}: leave() before enter() returned")
        if place.state is HoldState.RELEASED:
            raise RuntimeError(f"{place.what}: this participant has left already")
        place.stop_watching()  # we delete our own key on the way out: that is no loss
        try:
            if limit == 0:
                await self._leave(wait=False)
            else:
                async with asyncio.timeout(limit):
                    await self._leave(wait=True)
        except TimeoutError as exc:
            if isinstance(exc, EtcdkitError):
                raise
            raise EtcdTimeoutError(
                f"{place.what}: not everyone left within {limit:g} s; {place._behind}"
            ) from None
        finally:
            await place.release()

    async def _leave(self, wait: bool) -> None:
        etcd = self._etcd
        mine = self._place.key
        gone = False  # our key deleted by us
        backoff = etcd.retry.backoff()
        while True:
            try:
                now = await etcd.range(self.waiters_prefix, prefix=True, keys_only=True)
                if not now.kvs:
                    return
                lowest = min(now.kvs, key=lambda kv: kv.mod_revision)
                highest = max(now.kvs, key=lambda kv: kv.mod_revision)
                if len(now.kvs) == 1 and now.kvs[0].key == mine:  # the last one: finish up
                    await etcd.delete_range(self.ready_key)
                    await etcd.delete_range(mine)
                    return
                # (one key left that is not ours: we left, it has yet to: wait for it, as for
                # the oldest; a read after a reconnect or a compaction may see just that)
                if lowest.key == mine:  # the oldest leaves last: wait for the newest
                    target = highest.key
                else:
                    if not gone:
                        await etcd.delete_range(mine)
                        gone = True
                    target = lowest.key
                self._place._behind = f"{len(now.kvs)} still in; waiting for {target!r} to go"
                if not wait:
                    raise TimeoutError
                await watch_until(etcd, target, now.revision, None, deleted, settled=absent)
            except EtcdkitError as exc:
                if not wait or not etcd.retry.is_retryable(exc):
                    raise  # (timeout=0 does not wait for etcd either)
                log.info("%s: etcd unreachable (%s); retrying", self._place.what, exc)
                await backoff.wait()


class SyncDoubleBarrier(SyncHold[DoubleBarrier]):
    """Blocking view of a :class:`DoubleBarrier`; ``lost`` is a :class:`threading.Event`."""

    name: mirror[str | bytes] = mirror(DoubleBarrier.name, direct=True)
    count: mirror[int] = mirror(DoubleBarrier.count, direct=True)
    ttl: mirror[int] = mirror(DoubleBarrier.ttl, direct=True)
    ready_key: mirror[bytes] = mirror(DoubleBarrier.ready_key, direct=True)
    waiters_prefix: mirror[bytes] = mirror(DoubleBarrier.waiters_prefix, direct=True)
    key: mirror[bytes] = mirror(DoubleBarrier.key)
    lease_id: mirror[int] = mirror(DoubleBarrier.lease_id)
    state: mirror[HoldState] = mirror(DoubleBarrier.state)

    def enter(self, timeout: float | None = None) -> None:
        # (entered for an enter interrupted in this thread: it leaves, its key removed)
        self.portal.call(self.aio.enter(timeout), abandon=lambda _: self.aio.leave(0))

    enter.__doc__ = DoubleBarrier.enter.__doc__
    leave = blocking(DoubleBarrier.leave)
