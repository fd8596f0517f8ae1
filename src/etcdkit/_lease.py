"""PersistentLease: a key that stays registered under a lease, and comes back by itself."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from aetcd import rpc

from etcdkit._conn import key_bytes, to_bytes
from etcdkit._errors import (
    AuthError,
    ClosedError,
    CompactedError,
    EtcdkitError,
    EtcdTimeoutError,
    InvalidArgumentError,
    LeaseNotFoundError,
)
from etcdkit._retry import Backoff
from etcdkit._watchstream import WatchSub

if TYPE_CHECKING:
    from etcdkit._client import AsyncClient

__all__ = ["LeaseState", "PersistentLease"]

log = logging.getLogger("etcdkit.lease")

T = TypeVar("T")

_DELETE = 1  # mvccpb.Event.EventType.DELETE
REVOKE_TIMEOUT = 2.0


class LeaseState(enum.Enum):
    """Health of a :class:`PersistentLease`, as its owner should read it.

    - ``CONNECTING``: not registered yet (first grant/put in flight, or etcd unreachable since
      the start). Nobody sees the key yet.
    - ``REGISTERED``: the key holds our value under a lease that etcd confirmed alive. Others
      see us.
    - ``SUSPENDED``: etcd is unreachable; our lease may still be alive until its TTL runs out,
      so others may or may not see us. Do not assume you are registered; keep going.
    - ``LOST``: the key is known to be gone or not ours (deleted, lease revoked or expired,
      overwritten by another writer). Another process may already see you gone and act on it
      (e.g. take over your work). Re-registration is under way; it becomes REGISTERED again
      with a new ``lease_id`` / ``create_revision``.
    - ``FAILED``: stopped on a permanent error that retrying cannot fix (wrong credentials,
      no permission for the key, a TTL etcd refuses); :attr:`PersistentLease.error` says which,
      and the waiting methods raise it. The key is not held. Close the lease.
    - ``CLOSED``: closed; the lease was revoked (or will expire by itself if etcd was down).
    """

    CONNECTING = "connecting"
    REGISTERED = "registered"
    SUSPENDED = "suspended"
    LOST = "lost"
    FAILED = "failed"
    CLOSED = "closed"


class _Shared:
    """One etcd lease and the PersistentLeases whose keys hang on it."""

    __slots__ = ("lease_id", "pooled_as", "ttl", "users")

    def __init__(self, lease_id: int, ttl: int) -> None:
        self.lease_id = lease_id
        self.ttl = ttl  # as granted
        self.pooled_as: int | None = None  # the requested TTL it is shared under, if shared
        self.users: set[PersistentLease] = set()


class LeasePool:
    """Hands out etcd leases to one client's PersistentLeases: by default one lease per TTL,
    shared by every PersistentLease asking for that TTL (like an etcd ``concurrency.Session``
    or a ZooKeeper session with its ephemeral nodes), so a thousand registrations cost one
    keepalive message per ttl/3, not a thousand. Keepalive outcomes fan out to every user.
    """

    def __init__(self, client: AsyncClient) -> None:
        self._client = client
        self._by_ttl: dict[int, _Shared] = {}
        self._by_id: dict[int, _Shared] = {}
        self._locks: dict[int, asyncio.Lock] = {}

    async def acquire(self, user: PersistentLease, ttl: int, *, shared: bool) -> tuple[int, int]:
        """A live lease for ``user``: (lease id, granted TTL)."""
        if not shared:
            lease = await self._grant(ttl, user)
        else:
            async with self._locks.setdefault(ttl, asyncio.Lock()):
                found = self._by_ttl.get(ttl)
                lease = found if found is not None else await self._grant(ttl, user)
                lease.pooled_as = ttl
                self._by_ttl[ttl] = lease
        lease.users.add(user)
        return lease.lease_id, lease.ttl

    def release(self, user: PersistentLease, lease_id: int) -> bool:
        """``user`` leaves the lease; ``True`` when nobody is left on it (revoke it then)."""
        lease = self._by_id.get(lease_id)
        if lease is None:
            return True
        lease.users.discard(user)
        if lease.users:
            return False
        self._drop(lease)
        return True

    def invalidate(self, lease_id: int) -> None:
        """etcd no longer knows ``lease_id`` (revoked or expired): never hand it out again."""
        lease = self._by_id.get(lease_id)
        if lease is not None:
            self._drop(lease)

    def _drop(self, lease: _Shared) -> None:
        self._by_id.pop(lease.lease_id, None)
        if lease.pooled_as is not None and self._by_ttl.get(lease.pooled_as) is lease:
            del self._by_ttl[lease.pooled_as]
        self._client._keepalives.remove(lease.lease_id)

    async def _grant(self, ttl: int, user: PersistentLease) -> _Shared:
        grant = await self._client.grant(ttl)
        if grant.ttl != ttl:
            log.warning(
                "lease %r: etcd granted ttl %d s instead of the requested %d s "
                "(its minimum lease TTL)",
                user.key,
                grant.ttl,
                ttl,
            )
        lease = _Shared(grant.id, grant.ttl)
        self._by_id[grant.id] = lease

        def on_alive(remaining: int) -> None:
            for u in list(lease.users):
                u._on_alive(remaining)

        def on_lost() -> None:
            self._drop(lease)
            for u in list(lease.users):
                u._on_expired(lease.lease_id)

        def on_suspended() -> None:
            for u in list(lease.users):
                u._on_suspended()

        self._client._keepalives.add(
            grant.id, grant.ttl, on_alive=on_alive, on_lost=on_lost, on_suspended=on_suspended
        )
        return lease


def _pool(client: AsyncClient) -> LeasePool:
    pool = client._lease_pool
    if pool is None:
        pool = client._lease_pool = LeasePool(client)
    assert isinstance(pool, LeasePool)
    return pool


class PersistentLease:
    """Keeps ``key=value`` in etcd under a lease of ``ttl`` seconds while open.

    Create with :meth:`AsyncClient.persistent_lease` (or ``PersistentLease(client, key, value,
    ttl)``) and use as an async context manager, or call :meth:`aclose` when done. Created
    inside a running event loop it starts at once; otherwise on :meth:`start`, ``async with``
    or the first wait. The key is put back, immediately on detection,
    after an external delete, a revoke, an expiry, an outage, a leader change or a cut
    connection; detection watches the key from the revision of our own put, so no delete is
    missed. Backoff applies only while etcd is unreachable.

    Another writer: if someone else overwrites the key (other value or lease), the lease goes
    LOST, logs a warning and re-asserts its value at backoff pace (0.5 s doubling to 30 s),
    never in a hot loop.

    One etcd lease per TTL is shared by all PersistentLeases of a client (a session, as in
    etcd's Go ``concurrency`` package or ZooKeeper): one keepalive message per ttl/3 for all of
    them. Revoking that lease deletes all their keys; each puts its key back at once.
    ``own_lease=True`` gives this PersistentLease an etcd lease of its own instead.

    Fencing: ``create_revision`` identifies this registration (with ``lease_id``, which is
    shared unless ``own_lease``); guard writes with a txn comparing them. ``close()`` removes
    the key at once (it revokes the lease when no other key of the client hangs on it, else
    deletes the key if it still holds our lease); it is idempotent, bounded in time when etcd
    is down, and safe after the client closed.
    """

    def __init__(
        self,
        client: AsyncClient,
        key: str | bytes,
        value: str | bytes,
        ttl: int = 10,
        *,
        own_lease: bool = False,
    ) -> None:
        self._raw_key = key_bytes(key)
        self._key = key
        self._value = to_bytes(value, "value")
        if not isinstance(ttl, int) or isinstance(ttl, bool):
            raise TypeError(f"ttl must be a whole number of seconds (int), got {ttl!r}")
        if ttl < 1:
            raise ValueError(f"ttl must be >= 1 second, got {ttl}")
        if not isinstance(own_lease, bool):
            raise TypeError(f"own_lease must be True or False, got {own_lease!r}")
        self._client = client
        self._ttl = ttl
        self._own_lease = own_lease
        self._granted_ttl = 0
        self._state = LeaseState.CONNECTING
        self._lease_id = 0
        self._create_revision = 0
        self._put_revision = 0  # revision of our newest own put
        self._written: bytes | None = None  # value of that put
        self._need_put = True
        self._conflict_at = 0.0  # monotonic time a conflicting write may be overwritten
        self._conflicts = Backoff(initial=0.5, cap=30.0)
        self._sub: WatchSub | None = None
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self._listeners: list[Callable[[LeaseState], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._error: EtcdkitError | None = None
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass  # no loop yet: starts on start(), ``async with`` or the first wait
        else:
            self.start()  # starts at once, as the seed's constructor did

    def __repr__(self) -> str:
        return (
            f"<PersistentLease key={self._key!r} state={self._state.name} "
            f"lease={self._lease_id:#x} ttl={self._ttl}>"
        )

    # -- public -----------------------------------------------------------------------------------

    @property
    def key(self) -> str | bytes:
        return self._key

    @property
    def value(self) -> bytes:
        """The value to keep (the newest passed to ``set_value``)."""
        return self._value

    @property
    def ttl(self) -> int:
        """The TTL etcd granted (may be above the requested one); the requested before that."""
        return self._granted_ttl or self._ttl

    @property
    def state(self) -> LeaseState:
        return self._state

    @property
    def lease_id(self) -> int:
        """The current lease id (0 while none is granted)."""
        return self._lease_id

    @property
    def create_revision(self) -> int:
        """The key's create_revision of the current registration (0 while unregistered)."""
        return self._create_revision

    @property
    def error(self) -> EtcdkitError | None:
        """The permanent error that stopped this lease (state FAILED), else ``None``."""
        return self._error

    def add_listener(self, callback: Callable[[LeaseState], None]) -> Callable[[], None]:
        """Call ``callback(state)`` on every state change (on the event loop); returns a
        function that removes it. Callback errors are logged, not raised."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    async def wait_state(self, *states: LeaseState, timeout: float | None = None) -> LeaseState:
        """Wait until the state is one of ``states``; returns it."""
        if not states:
            raise ValueError("pass at least one LeaseState to wait for")
        return await self._until(
            lambda: self._state if self._state in states else None,
            timeout,
            f"state {'/'.join(s.name for s in states)}",
        )

    async def registered(self, timeout: float | None = None) -> int:
        """Wait until the key is in etcd under a live lease; returns the revision of that put."""
        return await self._until(
            lambda: self._put_revision if self._state is LeaseState.REGISTERED else None,
            timeout,
            "registration",
        )

    async def synced(self, timeout: float | None = None) -> int:
        """Wait until the *current* value is in etcd under a live lease; returns the revision."""
        return await self._until(
            lambda: (
                self._put_revision
                if self._state is LeaseState.REGISTERED
                and self._written == self._value
                and not self._need_put
                else None
            ),
            timeout,
            "the current value to be stored",
        )

    def set_value(self, value: str | bytes) -> None:
        """Change the value; non-blocking, the latest value wins."""
        if self._closing:
            raise ClosedError(f"set_value on a closed PersistentLease for {self._key!r}")
        self._value = to_bytes(value, "value")
        self._need_put = True
        self._wake.set()

    async def __aenter__(self) -> PersistentLease:
        self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def start(self) -> None:
        """Start keeping the key (idempotent); needs a running event loop."""
        if self._closing:
            raise ClosedError("this PersistentLease is closed; create a new one")
        if self._task is None:
            self._client._check_open()
            self._client._children.add(self)
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"etcdkit-lease {self._key!r}"
            )

    async def aclose(self) -> None:
        """Revoke the lease (key gone at once) and stop; idempotent, bounded when etcd is down."""
        if self._closing:
            return
        self._closing = True
        self._client._children.discard(self)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._sub is not None:
            self._sub.cancel()
        lease_id = self._lease_id
        if lease_id and self._client._state in ("open", "closing"):
            last = _pool(self._client).release(self, lease_id)
            try:
                async with asyncio.timeout(REVOKE_TIMEOUT):
                    if last:
                        await self._client.revoke(lease_id)
                    else:  # others still hang on this lease: delete our key, if still ours
                        await self._delete_own_key(lease_id)
            except (EtcdkitError, TimeoutError) as exc:
                log.warning(
                    "lease %r: could not remove the key on close (%s); it goes away when "
                    "lease %#x ends (TTL %d s after its last refresh)",
                    self._key,
                    exc,
                    lease_id,
                    self.ttl,
                )
        self._set_state(LeaseState.CLOSED)

    close = aclose

    async def _delete_own_key(self, lease_id: int) -> None:
        own = rpc.Compare(
            key=self._raw_key,
            target=rpc.Compare.CompareTarget.LEASE,
            result=rpc.Compare.CompareResult.EQUAL,
            lease=lease_id,
        )
        delete = rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=self._raw_key))
        req = rpc.TxnRequest(compare=[own], success=[delete])
        await self._client._call(f"delete {self._raw_key!r} on close", "Txn", "kv", req)

    # -- internals --------------------------------------------------------------------------------

    async def _until(self, pick: Callable[[], T | None], timeout: float | None, what: str) -> T:
        if not self._closing:
            self.start()
        try:
            async with asyncio.timeout(timeout):
                while True:
                    got = pick()
                    if got is not None:
                        return got
                    if self._error is not None:
                        raise self._error
                    if self._state is LeaseState.CLOSED or self._closing:
                        raise ClosedError(f"PersistentLease for {self._key!r} is closed")
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError as exc:
            if isinstance(exc, EtcdkitError):
                raise
            raise EtcdTimeoutError(
                f"PersistentLease {self._key!r}: no {what} within {timeout} s "
                f"(state {self._state.name}; endpoints {self._client._conn.where})"
            ) from None

    def _set_state(self, state: LeaseState) -> None:
        if state is self._state:
            self._changed.set()
            return
        log.info("lease %r: %s -> %s", self._key, self._state.name, state.name)
        self._state = state
        self._changed.set()
        for cb in list(self._listeners):
            try:
                cb(state)
            except Exception:
                log.exception("lease %r: state listener failed", self._key)

    def _lost(self, why: str) -> None:
        if self._closing:
            return
        log.info("lease %r: %s; re-registering", self._key, why)
        self._need_put = True
        self._create_revision = 0
        self._set_state(LeaseState.LOST)
        self._wake.set()

    # keepalive hub callbacks
    def _on_alive(self, ttl: int) -> None:
        if self._state is LeaseState.SUSPENDED and not self._need_put:
            self._set_state(LeaseState.REGISTERED)

    def _on_expired(self, lease_id: int) -> None:
        if lease_id != self._lease_id:
            return  # an older lease of ours, already replaced
        self._lease_id = 0
        self._lost("lease expired or was revoked")

    def _on_suspended(self) -> None:
        if self._state is LeaseState.REGISTERED:
            self._set_state(LeaseState.SUSPENDED)
        self._wake.set()

    # key watch callbacks
    def _on_key_events(self, resp: Any) -> None:
        for ev in resp.events:
            kv = ev.kv
            if kv.mod_revision <= self._put_revision:
                continue
            if ev.type == _DELETE:
                self._lost("key was deleted (externally, or its lease revoked or expired)")
            elif kv.lease != self._lease_id:  # our lease is only ever used by us
                log.warning(
                    "lease %r: another writer put value %r with lease %#x over ours; "
                    "re-asserting at backoff pace",
                    self._key,
                    kv.value[:80],
                    kv.lease,
                )
                delay = self._conflicts.next_delay() or 0.0
                self._conflict_at = time.monotonic() + delay
                self._lost("key overwritten by another writer")

    def _on_watch_end(self, err: EtcdkitError) -> None:
        self._sub = None
        if isinstance(err, CompactedError):
            self._need_put = True  # history gone: re-put, then watch from our new revision
            self._wake.set()
        else:
            log.warning("lease %r: key watch ended: %s", self._key, err)
            self._wake.set()

    async def _run(self) -> None:
        try:
            await self._keep()
        except (AuthError, InvalidArgumentError) as exc:  # permanent: retrying cannot help
            log.error("lease %r: giving up: %s", self._key, exc)
            self._error = exc
            self._set_state(LeaseState.FAILED)
        except ClosedError as exc:  # the client closed under us
            self._error = exc
            self._changed.set()

    async def _keep(self) -> None:
        backoff = Backoff(initial=0.05, cap=2.0)
        keepalives = self._client._keepalives
        while True:
            try:
                if self._need_put:
                    wait = self._conflict_at - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    await self._register(keepalives)
                    backoff.reset()
                elif self._sub is None:
                    self._need_put = True
                    continue
                timeout = None
                if self._state is LeaseState.SUSPENDED:
                    expires = keepalives.expires(self._lease_id)
                    timeout = None if expires is None else max(0.0, expires - time.monotonic())
                self._wake.clear()
                if not self._need_put:
                    try:
                        async with asyncio.timeout(timeout):
                            await self._wake.wait()
                    except TimeoutError:
                        self._lost(f"no keepalive answer for the lease's TTL ({self.ttl} s)")
            except LeaseNotFoundError:
                _pool(self._client).invalidate(self._lease_id)
                self._lease_id = 0
                self._lost("lease not found (revoked or expired)")
            except (AuthError, ClosedError, InvalidArgumentError):
                raise
            except EtcdkitError as exc:
                log.info("lease %r: etcd unreachable (%s); retrying", self._key, exc)
                if self._state is LeaseState.REGISTERED:
                    self._set_state(LeaseState.SUSPENDED)
                await backoff.wait()

    async def _register(self, keepalives: Any) -> None:
        if not self._lease_id:
            self._lease_id, self._granted_ttl = await _pool(self._client).acquire(
                self, self._ttl, shared=not self._own_lease
            )
        value = self._value
        req = rpc.PutRequest(key=self._raw_key, value=value, lease=self._lease_id, prev_kv=True)
        self._need_put = False
        try:
            resp = await self._client._call(f"put {self._raw_key!r}", "Put", "kv", req)
        except BaseException:
            self._need_put = True
            raise
        rev = int(resp.header.revision)
        prev = resp.prev_kv
        if not prev.key or prev.lease != self._lease_id or not self._create_revision:
            self._create_revision = (
                rev if not prev.key or prev.lease != self._lease_id else int(prev.create_revision)
            )
        self._put_revision = rev
        self._written = value
        if self._sub is None or self._sub.ended:
            self._sub = self._client._watches.watch(
                self._raw_key,
                b"",
                rev + 1,
                on_events=self._on_key_events,
                on_end=self._on_watch_end,
            )
        if not self._need_put:
            self._conflicts.reset() if time.monotonic() > self._conflict_at + 60 else None
            self._set_state(LeaseState.REGISTERED)
