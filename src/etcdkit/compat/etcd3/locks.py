"""python-etcd3's :class:`Lock`, implemented on etcdkit's lock (:meth:`etcdkit.Client.lock`).

As in python-etcd3, the lock expires ``ttl`` seconds after it was acquired unless
:meth:`Lock.refresh` is called in time (a refresh once it expired, or was released, answers
``TTL`` 0), a second :meth:`Lock.acquire` on a Lock that holds returns ``False``,
:meth:`Lock.release` returns whether it released the lock, and an acquire with etcd
unreachable raises :class:`~etcdkit.compat.etcd3.exceptions.ConnectionFailedError` (within
the client's timeout, where python-etcd3 raised at once).

What etcdkit's lock changes:

- Waiters queue in order, and each waits on the deletion of the key just before its own (no
  polling, no herd); the lock is released, and its lease revoked, when released or expired
  (python-etcd3 left one lease behind per acquisition).
- ``with lock:`` raises :class:`~etcdkit.compat.etcd3.exceptions.LockTimeout` when the lock
  could not be acquired in time (python-etcd3 ran the block anyway, unlocked).
- The keys are those of Go's ``concurrency.Mutex`` under ``/locks/<name>/`` (``etcdctl lock
  /locks/<name>`` excludes us and we it), not python-etcd3's single key ``/locks/<name>``:
  python-etcd3 processes and these do not exclude each other, so move every process that
  shares a lock at once.
- A process that dies loses the lock when its lease expires, ``ttl`` seconds later, as in
  python-etcd3; one that lives but does not refresh loses it after ``ttl`` seconds too
  (etcdkit keeps the lease alive meanwhile, and releases the lock then).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING

from etcdkit import EtcdkitError, EtcdTimeoutError, HoldState
from etcdkit.compat.etcd3.exceptions import LockTimeout, translate, translated
from etcdkit.compat.etcd3.leases import Lease, LeaseKeepAliveResponse
from etcdkit.compat.etcd3.transactions import seconds_or_none

if TYPE_CHECKING:
    from etcdkit import SyncLockHold
    from etcdkit.compat.etcd3.client import Etcd3Client

__all__ = ["Lock"]

log = logging.getLogger("etcdkit.compat.etcd3")

_HOLDING = (HoldState.HELD, HoldState.SUSPENDED)
DEFAULT_ACQUIRE_TIMEOUT = 10


class Lock:
    """A distributed lock: ``with client.lock("name", ttl=20) as lock:``.

    :ivar name: the lock's name
    :ivar ttl: seconds the lock lives after it was acquired or last refreshed
    :ivar key: ``/locks/<name>``, the prefix of the lock's keys (each acquisition puts its own
        key ``/locks/<name>/<lease id in hex>`` under it)
    :ivar lease: the :class:`Lease` of the latest acquisition (kept after a release or an
        expiry, when etcd no longer has it, as in python-etcd3), else ``None``
    """

    lock_prefix = "/locks/"

    def __init__(
        self, name: str | bytes, ttl: int = 60, etcd_client: Etcd3Client | None = None
    ) -> None:
        if not isinstance(name, str | bytes) or not name:
            raise TypeError(f"name must be a non-empty str or bytes, got {name!r:.80}")
        if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl < 1:
            raise ValueError(f"ttl must be a whole number of seconds >= 1, got {ttl!r:.40}")
        self.name = name
        self.ttl = ttl
        self.key: str | bytes = (
            self.lock_prefix + name if isinstance(name, str) else self.lock_prefix.encode() + name
        )
        self.lease: Lease | None = None
        self.etcd_client = etcd_client
        self._mutex = threading.Lock()
        self._hold: SyncLockHold | None = None
        self._timer: threading.Timer | None = None

    def __repr__(self) -> str:
        return f"<Lock name={self.name!r} ttl={self.ttl} held={self._holding()}>"

    def _client(self) -> Etcd3Client:
        if self.etcd_client is None:
            raise ValueError("this Lock has no etcd_client: make it with client.lock(name)")
        return self.etcd_client

    def _holding(self) -> bool:
        hold = self._hold
        return hold is not None and hold.state in _HOLDING

    def acquire(self, timeout: float | None = DEFAULT_ACQUIRE_TIMEOUT) -> bool:
        """Acquire the lock, waiting up to ``timeout`` seconds (``None``: for ever; 0: only a
        free lock; a negative one too, as in python-etcd3). ``True`` once acquired, ``False``
        when the time ran out, and ``False`` at once when this Lock already holds it. A
        ``timeout`` that is not a number raises ``TypeError`` before anything is sent.

        As in python-etcd3, an etcd that cannot be reached raises instead of waiting:
        :class:`ConnectionFailedError` (or :class:`ConnectionTimeoutError` for one that does
        not answer), within the client's timeout whatever ``timeout`` is. Once etcd answered
        that another holds the lock, the wait rides out faults (etcdkit's lock retries) until
        ``timeout``."""
        # (checked before the look below, which may take the lock: a bad timeout found after
        # it left the lock held by nobody)
        wait = _wait(timeout)
        client = self._client()
        if self._holding():
            return False
        started = time.monotonic()
        # One look first: python-etcd3 began with a lease grant, which raised at once when
        # etcd was unreachable, where etcdkit's waiting acquire retries until its timeout.
        with translated():
            probe = client.native.lock(self.key, self.ttl, 0)
            hold = probe.hold if probe.try_acquire() else None
        try:
            left = None if wait is None else max(0.0, wait - (time.monotonic() - started))
            if hold is None and left != 0:
                try:
                    hold = client.native.lock(self.key, self.ttl, left).acquire()
                except EtcdTimeoutError:
                    hold = None
                except EtcdkitError as exc:
                    raise translate(exc) from exc
            if hold is None:
                self.lease = None  # (python-etcd3 too forgot its lease when it did not acquire)
                return False
            with self._mutex:
                self._hold = hold
                self.lease = Lease(hold.lease_id, self.ttl, client)
                self._arm(hold)
        except BaseException:
            if hold is not None and self._hold is not hold:  # (held, by nobody: let it go)
                with contextlib.suppress(EtcdkitError):
                    hold.release()
            raise
        client.track_lock(self)
        return True

    def _arm(self, hold: SyncLockHold) -> None:
        """(Re)start the ttl countdown of ``hold`` (under ``_mutex``)."""
        if self._timer is not None:
            self._timer.cancel()
        timer = threading.Timer(self.ttl, self._expire, args=(hold,))
        timer.name = f"etcdkit-compat-lock-ttl-{self.name!r}"
        timer.daemon = True
        self._timer = timer
        timer.start()

    def _expire(self, hold: SyncLockHold) -> None:
        with self._mutex:
            if self._hold is not hold:
                return
            self._hold = None  # (self.lease stays: refresh() answers TTL 0, as python-etcd3's)
            self._timer = None
        log.info("lock %r: not refreshed within its ttl of %s s, released", self.name, self.ttl)
        try:
            hold.release()
        except EtcdkitError as exc:  # the key then expires with its lease
            log.warning("lock %r: releasing it on expiry failed: %s", self.name, exc)

    def release(self) -> bool:
        """Release the lock: ``True`` if this Lock held it (and now does not), else
        ``False`` (never acquired, released already, or expired)."""
        with self._mutex:
            hold, self._hold = self._hold, None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        if hold is None or hold.state not in _HOLDING:
            return False
        with translated():
            hold.release()
        return True

    def refresh(self) -> list[LeaseKeepAliveResponse]:
        """Restart the lock's ttl (and refresh its lease once); a list of one
        :class:`LeaseKeepAliveResponse`. As in python-etcd3, once the lock was released or its
        ttl ran out the lease is gone and its ``TTL`` is 0 (the lock is not taken again);
        ``ValueError`` when this Lock never acquired (or its last acquire failed)."""
        with self._mutex:
            lease = self.lease
        if lease is None:
            raise ValueError("No lease associated with this lock - have you acquired the lock yet?")
        return lease.refresh()  # (the client restarts our ttl: see lease_refreshed)

    def lease_refreshed(self, lease_id: int) -> None:
        """The lease ``lease_id`` was refreshed (by :meth:`refresh`, ``lock.lease.refresh()``
        or ``refresh_lease(id)``: python-etcd3's ``refresh()`` is its lease's): if it is this
        Lock's and the Lock holds, its ttl starts again."""
        with self._mutex:
            hold = self._hold
            if hold is not None and hold.lease_id == lease_id and hold.state in _HOLDING:
                self._arm(hold)

    def is_acquired(self) -> bool:
        """Whether this Lock holds the lock now: its key is still in etcd (one read)."""
        hold = self._hold
        if hold is None or hold.state not in _HOLDING:
            return False
        with translated():
            kv = self._client().native.get(hold.key)
        return kv is not None and kv.create_revision == hold.fencing_token

    def stop_timer(self) -> None:
        """Stop the ttl countdown without releasing (the client is closing: it releases)."""
        with self._mutex:
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
            if timer is not threading.current_thread():
                timer.join()

    def __enter__(self) -> Lock:
        if not self.acquire(DEFAULT_ACQUIRE_TIMEOUT):
            raise LockTimeout(
                f"lock {self.name!r} was not acquired within {DEFAULT_ACQUIRE_TIMEOUT} s, so "
                "the block did not run (call acquire(timeout) for another wait)"
            )
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _wait(timeout: object) -> float | None:
    """``acquire()``'s ``timeout`` as seconds to wait (``None``: for ever): a negative one is
    0 (one look, as tenacity's ``stop_after_delay`` gave in python-etcd3), an infinite one
    ``None``; what is not a number is a TypeError (python-etcd3's last code raised it before
    anything was sent)."""
    seconds = seconds_or_none(timeout)
    if seconds is None or seconds >= 2**53:  # (infinity too: no wait reaches it)
        return None
    return max(0.0, float(seconds))
