"""python-etcd3's :class:`Lock`, implemented on etcdkit's lock (:meth:`etcdkit.Client.lock`).

As in python-etcd3, the lock expires ``ttl`` seconds after it was acquired unless
:meth:`Lock.refresh` is called in time, a second :meth:`Lock.acquire` on a Lock that holds
returns ``False``, and :meth:`Lock.release` returns whether it released the lock.

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

import logging
import threading
from types import TracebackType
from typing import TYPE_CHECKING

from etcdkit import EtcdkitError, EtcdTimeoutError, HoldState
from etcdkit.compat.etcd3.exceptions import LockTimeout, translate, translated
from etcdkit.compat.etcd3.leases import Lease, LeaseKeepAliveResponse

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
    :ivar lease: the :class:`Lease` of the current acquisition, else ``None``
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
        free lock). ``True`` once acquired, ``False`` when the time ran out, and ``False`` at
        once when this Lock already holds it."""
        client = self._client()
        if self._holding():
            return False
        try:
            hold = client.native.lock(self.key, self.ttl, timeout).acquire()
        except EtcdTimeoutError:
            return False
        except EtcdkitError as exc:
            raise translate(exc) from exc
        with self._mutex:
            self._hold = hold
            self.lease = Lease(hold.lease_id, self.ttl, client)
            self._arm(hold)
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
            self._hold = None
            self.lease = None
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
            self.lease = None
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
        :class:`LeaseKeepAliveResponse`. ``ValueError`` when it is not held."""
        with self._mutex:
            lease, hold = self.lease, self._hold
        if lease is None or hold is None:
            raise ValueError(
                "No lease associated with this lock - have you acquired the lock yet? (it may "
                "also have been released, or have expired after its ttl)"
            )
        responses = lease.refresh()
        with self._mutex:
            if self._hold is hold and hold.state in _HOLDING:
                self._arm(hold)
        return responses

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
