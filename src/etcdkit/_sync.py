"""The threaded facade: the asyncio core run on one private event-loop thread.

Nothing here re-implements behaviour: every call is forwarded to the asyncio object through
a :class:`Portal` (the model is anyio's ``BlockingPortal``) and blocks until it finishes.
A ``KeyboardInterrupt`` (or any exception) in the waiting thread cancels the coroutine.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import Future
from types import TracebackType
from typing import Any, Generic, TypeVar, overload

from etcdkit._client import DEFAULT_TIMEOUT, AsyncClient, KeyValue, LeaseGrant, RangeResult
from etcdkit._conn import Stubs
from etcdkit._errors import ClosedError
from etcdkit._lease import LeaseState, PersistentLease
from etcdkit._snapshot import Snapshot, Transform
from etcdkit._watch import PrefixWatch, WatchState, WatchStats

__all__ = ["Client", "Portal", "SyncPersistentLease", "SyncPrefixWatch"]

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")


class Portal:
    """Runs coroutines on a private event loop thread for blocking callers."""

    def __init__(self, name: str = "etcdkit-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro: Awaitable[T]) -> T:
        if threading.current_thread() is self._thread:
            raise RuntimeError("a blocking etcdkit call was made from its own event-loop thread")
        if self.loop.is_closed():
            if asyncio.iscoroutine(coro):
                coro.close()
            raise ClosedError("this etcdkit Client is closed; create a new one")

        async def run() -> T:
            return await coro

        fut: Future[T] = asyncio.run_coroutine_threadsafe(run(), self.loop)
        try:
            return fut.result()
        except BaseException:
            fut.cancel()
            raise

    def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        async def run() -> T:
            return fn(*args)

        return self.call(run())

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class Client:
    """The blocking twin of :class:`AsyncClient`: same arguments, same methods, same errors.

    Runs one :class:`AsyncClient` on a private event-loop thread, which ``close()`` stops.
    Use as ``with Client(...) as etcd:``.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str] | None = None,
        *,
        username: str | None = None,
        password: str | None = None,
        ca_cert: str | os.PathLike[str] | None = None,
        cert: str | os.PathLike[str] | None = None,
        key: str | os.PathLike[str] | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> None:
        self.aio = AsyncClient(
            endpoints,
            username=username,
            password=password,
            ca_cert=ca_cert,
            cert=cert,
            key=key,
            timeout=timeout,
        )
        self._portal = Portal()
        try:
            self._portal.call(self.aio.connect())
        except BaseException:
            self._portal.stop()
            raise

    def __repr__(self) -> str:
        return f"<Client endpoints={','.join(self.aio.endpoints)!r}>"

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close watches, leases and the connection, then stop the loop thread. Idempotent."""
        if not self._portal.loop.is_closed():
            self._portal.call(self.aio.close())
            self._portal.stop()

    @property
    def endpoints(self) -> list[str]:
        return self.aio.endpoints

    @property
    def raw(self) -> Stubs:
        """The async stubs (see :attr:`AsyncClient.raw`); run them with :meth:`run`."""
        return self.aio.raw

    def run(self, coro: Awaitable[T]) -> T:
        """Run a coroutine (e.g. a raw stub call) on the client's loop and return its result."""
        return self._portal.call(coro)

    def get(
        self, key: str | bytes, *, revision: int = 0, serializable: bool = False
    ) -> KeyValue | None:
        return self._portal.call(self.aio.get(key, revision=revision, serializable=serializable))

    def get_revision(self) -> int:
        return self._portal.call(self.aio.get_revision())

    def get_prefix(
        self,
        prefix: str | bytes,
        *,
        revision: int = 0,
        page_size: int = 1000,
        keys_only: bool = False,
    ) -> RangeResult:
        return self._portal.call(
            self.aio.get_prefix(prefix, revision=revision, page_size=page_size, keys_only=keys_only)
        )

    def put(self, key: str | bytes, value: str | bytes, *, lease: int = 0) -> int:
        return self._portal.call(self.aio.put(key, value, lease=lease))

    def delete(self, key: str | bytes) -> bool:
        return self._portal.call(self.aio.delete(key))

    def delete_prefix(self, prefix: str | bytes) -> int:
        return self._portal.call(self.aio.delete_prefix(prefix))

    def compact(self, revision: int, *, physical: bool = False) -> None:
        self._portal.call(self.aio.compact(revision, physical=physical))

    def grant(self, ttl: int) -> LeaseGrant:
        return self._portal.call(self.aio.grant(ttl))

    def revoke(self, lease_id: int) -> None:
        self._portal.call(self.aio.revoke(lease_id))

    def time_to_live(self, lease_id: int) -> int:
        return self._portal.call(self.aio.time_to_live(lease_id))

    def wait_for(self, key: str | bytes, exists: bool = True, timeout: float | None = None) -> int:
        return self._portal.call(self.aio.wait_for(key, exists=exists, timeout=timeout))

    @overload
    def watch_prefix(self, prefix: str | bytes) -> SyncPrefixWatch[str, bytes]: ...
    @overload
    def watch_prefix(
        self, prefix: str | bytes, transform: Transform[K, V]
    ) -> SyncPrefixWatch[K, V]: ...
    def watch_prefix(
        self, prefix: str | bytes, transform: Transform[Any, Any] | None = None
    ) -> SyncPrefixWatch[Any, Any]:
        """See :meth:`AsyncClient.watch_prefix`; iterate the result with a plain ``for``."""
        watch = self._portal.run_sync(self.aio.watch_prefix, prefix, transform)
        return SyncPrefixWatch(self._portal, watch)

    def persistent_lease(
        self, key: str | bytes, value: str | bytes, ttl: int = 10, *, own_lease: bool = False
    ) -> SyncPersistentLease:
        """See :meth:`AsyncClient.persistent_lease`; use with ``with``."""
        lease = self._portal.run_sync(
            functools.partial(self.aio.persistent_lease, own_lease=own_lease), key, value, ttl
        )
        return SyncPersistentLease(self._portal, lease)


class SyncPrefixWatch(Generic[K, V]):
    """Blocking view of a :class:`PrefixWatch`: ``with``, ``synced()``, ``for snap in watch``."""

    def __init__(self, portal: Portal, watch: PrefixWatch[K, V]) -> None:
        self._portal = portal
        self.aio = watch

    def __repr__(self) -> str:
        return repr(self.aio).replace("<PrefixWatch", "<SyncPrefixWatch", 1)

    def __enter__(self) -> SyncPrefixWatch[K, V]:
        self._portal.run_sync(self.aio.start)
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if not self._portal.loop.is_closed():
            self._portal.call(self.aio.aclose())

    def synced(self, timeout: float | None = None) -> Snapshot[K, V]:
        return self._portal.call(self.aio.synced(timeout))

    def __iter__(self) -> Iterator[Snapshot[K, V]]:
        return self

    def __next__(self) -> Snapshot[K, V]:
        try:
            return self._portal.call(self.aio.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    @property
    def snapshot(self) -> Snapshot[K, V] | None:
        return self.aio.snapshot

    @property
    def state(self) -> WatchState:
        return self.aio.state

    @property
    def age(self) -> float:
        return self.aio.age

    @property
    def stats(self) -> WatchStats:
        return self.aio.stats


class SyncPersistentLease:
    """Blocking view of a :class:`PersistentLease`."""

    def __init__(self, portal: Portal, lease: PersistentLease) -> None:
        self._portal = portal
        self.aio = lease

    def __repr__(self) -> str:
        return repr(self.aio)

    def __enter__(self) -> SyncPersistentLease:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(self) -> None:
        self._portal.run_sync(self.aio.start)

    def close(self) -> None:
        if not self._portal.loop.is_closed():
            self._portal.call(self.aio.aclose())

    def registered(self, timeout: float | None = None) -> int:
        return self._portal.call(self.aio.registered(timeout))

    def synced(self, timeout: float | None = None) -> int:
        return self._portal.call(self.aio.synced(timeout))

    def wait_state(self, *states: LeaseState, timeout: float | None = None) -> LeaseState:
        return self._portal.call(self.aio.wait_state(*states, timeout=timeout))

    def set_value(self, value: str | bytes) -> None:
        self._portal.run_sync(self.aio.set_value, value)

    def add_listener(self, callback: Callable[[LeaseState], None]) -> Callable[[], None]:
        """``callback`` runs on the client's loop thread; keep it quick."""
        return self._portal.run_sync(self.aio.add_listener, callback)

    @property
    def key(self) -> str | bytes:
        return self.aio.key

    @property
    def value(self) -> bytes:
        return self.aio.value

    @property
    def state(self) -> LeaseState:
        return self.aio.state

    @property
    def lease_id(self) -> int:
        return self.aio.lease_id

    @property
    def create_revision(self) -> int:
        return self.aio.create_revision

    @property
    def ttl(self) -> int:
        return self.aio.ttl
