"""Barrier: hold processes at a point until someone lets them through, on the key layout of
Go's ``contrib/recipes`` ``Barrier`` (etcd 3.4; ``experimental/recipes`` in 3.5): the barrier is
up while the key ``name`` itself exists.

- ``hold()`` creates the key if it is absent (Go: ``if version(name) == 0 then put(name, "")``,
  no lease);
- ``release()`` deletes it;
- ``wait()`` reads the key; absent, it returns; present, it watches the key from the revision
  after that read and returns at its deletion.

Go 3.4's ``Barrier.Wait`` watches from the read's revision itself and waits for a PUT and then
a DELETE: when any other key was written after the barrier's creation, no PUT comes, and it
misses the release (it also reads with ``WithFirstKey``, a prefix read). Ours waits for the
deletion alone, of this key alone, from the revision after the read: nothing written elsewhere
can hide it.
"""

from __future__ import annotations

import asyncio
import logging

from etcdkit._blocking.twin import Twin, blocking, mirror
from etcdkit._errors import CompactedError, EtcdkitError, EtcdTimeoutError
from etcdkit._surface import Etcd
from etcdkit._types import Compare, EventType, Op, check_int64, key_bytes
from etcdkit.recipes._hold import check_timeout

__all__ = ["Barrier", "SyncBarrier"]

log = logging.getLogger("etcdkit.recipes")


class Barrier:
    """A barrier on the key ``name`` (shared with Go's ``recipe.Barrier``): :meth:`hold` puts it
    up, :meth:`release` takes it down, :meth:`wait` returns once it is down.

    Create with :meth:`AsyncClient.barrier` (no I/O). The key has no lease unless
    :meth:`hold` is given one (as in Go): a barrier held by a process that dies stays up
    until someone releases it. Waiting creates no key, so a cancelled or timed-out
    :meth:`wait` leaves nothing behind. See ``docs/recipes/barrier.md``.
    """

    def __init__(self, etcd: Etcd, name: str | bytes) -> None:
        self._key = key_bytes(name, "name")
        self._name = name
        self._etcd = etcd

    def __repr__(self) -> str:
        return f"<Barrier key={self._key!r}>"

    @property
    def name(self) -> str | bytes:
        """The name given: the barrier's key."""
        return self._name

    @property
    def key(self) -> bytes:
        """The barrier's key: ``name`` itself."""
        return self._key

    async def hold(self, *, lease: int = 0) -> bool:
        """Put the barrier up: create its key (on ``lease``, if non-zero, so that it goes
        with that lease). Returns ``True`` if this call put it up, ``False`` if it was up
        already (Go's ``Hold`` returns ``ErrKeyExists`` then)."""
        check_int64(lease, "lease", hint=" (a lease id, 0 = none)")
        res = await self._etcd.txn(
            [Compare.create_revision(self._key, "==", 0)],
            [Op.put(self._key, b"", lease=lease)],
        )
        return res.succeeded

    async def release(self) -> bool:
        """Take the barrier down (delete its key): every :meth:`wait` returns. Returns
        ``True`` if it was up."""
        return (await self._etcd.delete_range(self._key)).deleted > 0

    async def wait(self, timeout: float | None = None) -> int:
        """Return once the barrier is down: at once if its key is absent, else at the key's
        deletion, whatever else is written meanwhile (a release missed while history was
        compacted counts: the key found up again is another barrier's). Returns the revision
        at which it was seen down. Raises :class:`EtcdTimeoutError` after ``timeout``
        seconds (``None``: no limit; ``0``: one read), :class:`ClosedError` if the client
        closes meanwhile."""
        limit = check_timeout(timeout)
        try:
            if limit == 0:
                now = await self._etcd.range(self._key)
                if not now.kvs:
                    return now.revision
                raise TimeoutError
            async with asyncio.timeout(limit):
                return await self._wait()
        except TimeoutError as exc:
            if isinstance(exc, EtcdkitError):
                raise
            raise EtcdTimeoutError(
                f"barrier {self._key!r} still up after {limit:g} s "
                f"(endpoints {', '.join(self._etcd.endpoints)})"
            ) from None

    async def _wait(self) -> int:
        backoff = self._etcd.retry.backoff()
        up = 0  # the create revision of the barrier waited on (its key's first read)
        while True:
            try:
                now = await self._etcd.range(self._key)
                if not now.kvs:
                    return now.revision
                created = now.kvs[0].create_revision
                if up and created != up:
                    # Another barrier: the one waited on went while its watch could not resume
                    # (compacted). Just before this one was created, the key was absent.
                    return created - 1
                up = created
                async with self._etcd.watch(
                    self._key, start_revision=now.revision + 1, filters=("noput",)
                ) as watch:
                    # A watch created once etcd is past its start waits up to 100 ms (etcd's
                    # "unsynced" watchers): a release between our read and the create is seen
                    # at once by this second read instead.
                    again = await self._etcd.range(self._key, serializable=True)
                    if not again.kvs and again.revision > now.revision:
                        return again.revision
                    async for batch in watch:
                        for ev in batch.events:
                            if ev.type is EventType.DELETE:
                                return ev.kv.mod_revision
            except EtcdkitError as exc:  # (CompactedError included: read again)
                compacted = isinstance(exc, CompactedError)
                if not compacted and not self._etcd.retry.is_retryable(exc):
                    raise
                log.info("barrier %r: %s; reading again", self._key, exc)
                if not compacted:
                    await backoff.wait()


class SyncBarrier(Twin[Barrier]):
    """Blocking view of a :class:`Barrier`."""

    name: mirror[str | bytes] = mirror(Barrier.name, direct=True)
    key: mirror[bytes] = mirror(Barrier.key, direct=True)
    hold = blocking(Barrier.hold)
    release = blocking(Barrier.release)
    wait = blocking(Barrier.wait)
