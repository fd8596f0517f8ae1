"""What a recipe may call: the public asyncio client, as a :class:`typing.Protocol`.

Recipes (``etcdkit.recipes``, ``etcdkit.naming``, ...) are typed against :class:`Etcd`, not
against :class:`etcdkit.AsyncClient` itself: the client imports the recipes to offer
``etcd.semaphore(...)`` and friends (as kazoo's client does with ``partial(Lock, self)``), so the
recipes cannot import the client back. The Protocol also proves the point of the layout: any
object with these public methods runs the recipes, a user's own wrapper included
(``tests/test_surface.py`` checks that :class:`AsyncClient` satisfies it).

A recipe imports only this module, the pure modules (``_types``, ``_errors``, ``_retry``) and
other recipes; an import-linter contract in ``pyproject.toml`` keeps it so.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, overload

from etcdkit._metrics import ClientStats
from etcdkit._retry import RetryPolicy
from etcdkit._snapshot import Transform
from etcdkit._types import (
    Compare,
    DeleteResult,
    KeyValue,
    KeyValueLike,
    LeaseGrant,
    LeaseInfo,
    Op,
    PutResult,
    RangeResult,
    SortOrder,
    SortTarget,
    TxnResult,
    WatchFilter,
)

if TYPE_CHECKING:
    from etcdkit._watch import Watch
    from etcdkit._wire.keepalive import KeepAlive
    from etcdkit.recipes.persistent_lease import PersistentLease
    from etcdkit.recipes.prefix_watch import PrefixWatch
    from etcdkit.recipes.session import Session

__all__ = ["Etcd"]

K = TypeVar("K")
V = TypeVar("V")


class Etcd(Protocol):
    """The public asyncio client's data plane (see :class:`etcdkit.AsyncClient` for each
    method's contract)."""

    @property
    def retry(self) -> RetryPolicy: ...

    @property
    def endpoints(self) -> list[str]: ...

    @property
    def stats(self) -> ClientStats: ...

    async def get(
        self, key: str | bytes, *, revision: int = 0, serializable: bool = False
    ) -> KeyValue | None: ...

    async def get_revision(self) -> int: ...

    def get_prefix_pages(
        self,
        prefix: str | bytes,
        *,
        revision: int = 0,
        page_size: int | None = None,
        keys_only: bool = False,
    ) -> AsyncGenerator[tuple[Sequence[KeyValueLike], int], None]: ...

    def adopt(self, child: object, close: Callable[[], Awaitable[None]]) -> None: ...

    def disown(self, child: object) -> None: ...

    async def range(
        self,
        key: str | bytes,
        range_end: str | bytes | None = None,
        *,
        prefix: bool = False,
        revision: int = 0,
        limit: int = 0,
        sort_order: SortOrder | None = None,
        sort_target: SortTarget = "key",
        serializable: bool = False,
        keys_only: bool = False,
        count_only: bool = False,
        min_mod_revision: int = 0,
        max_mod_revision: int = 0,
        min_create_revision: int = 0,
        max_create_revision: int = 0,
    ) -> RangeResult: ...

    @overload
    async def put(
        self,
        key: str | bytes,
        value: str | bytes,
        *,
        lease: int = 0,
        prev_kv: Literal[False] = False,
        ignore_value: bool = False,
        ignore_lease: bool = False,
    ) -> int: ...
    @overload
    async def put(
        self,
        key: str | bytes,
        value: str | bytes,
        *,
        lease: int = 0,
        prev_kv: Literal[True],
        ignore_value: bool = False,
        ignore_lease: bool = False,
    ) -> PutResult: ...
    async def put(
        self,
        key: str | bytes,
        value: str | bytes,
        *,
        lease: int = 0,
        prev_kv: bool = False,
        ignore_value: bool = False,
        ignore_lease: bool = False,
    ) -> int | PutResult: ...

    async def delete(self, key: str | bytes) -> bool: ...

    async def delete_range(
        self,
        key: str | bytes,
        range_end: str | bytes | None = None,
        *,
        prefix: bool = False,
        prev_kv: bool = False,
    ) -> DeleteResult: ...

    async def txn(
        self,
        compare: Sequence[Compare] = (),
        success: Sequence[Op] = (),
        failure: Sequence[Op] = (),
    ) -> TxnResult: ...

    async def grant(self, ttl: int, *, lease_id: int = 0) -> LeaseGrant: ...

    async def revoke(self, lease_id: int) -> None: ...

    async def lease_info(self, lease_id: int, *, keys: bool = False) -> LeaseInfo: ...

    async def keep_alive_once(self, lease_id: int) -> int: ...

    def keep_alive(self, lease_id: int, *, ttl: int | None = None) -> KeepAlive: ...

    def session(self, ttl: int = 60) -> Session: ...

    async def shared_session(self, user: object, ttl: int) -> Session: ...

    def release_session(self, user: object, session: Session) -> bool: ...

    @property
    def closed(self) -> bool: ...

    def watch(
        self,
        key: str | bytes,
        range_end: str | bytes | None = None,
        *,
        prefix: bool = False,
        start_revision: int = 0,
        prev_kv: bool = False,
        filters: Sequence[WatchFilter] = (),
        progress_notify: bool = False,
    ) -> Watch: ...

    async def wait_for(
        self, key: str | bytes, exists: bool = True, timeout: float | None = None
    ) -> int: ...

    def persistent_lease(
        self, key: str | bytes, value: str | bytes, ttl: int = 10, *, own_lease: bool = False
    ) -> PersistentLease: ...

    @overload
    def watch_prefix(self, prefix: str | bytes) -> PrefixWatch[str, bytes]: ...
    @overload
    def watch_prefix(
        self, prefix: str | bytes, transform: Transform[K, V]
    ) -> PrefixWatch[K, V]: ...
    def watch_prefix(
        self, prefix: str | bytes, transform: Transform[Any, Any] | None = None
    ) -> PrefixWatch[Any, Any]: ...
