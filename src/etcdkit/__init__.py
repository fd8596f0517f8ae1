"""etcdkit: etcd v3 coordination recipes for asyncio and threads.

- :meth:`AsyncClient.wait_for` — return once a key exists (or is absent).
- :meth:`AsyncClient.watch_prefix` — exact, resumable snapshots of a prefix.
- :meth:`AsyncClient.persistent_lease` — a registration key that comes back by itself.
- :meth:`AsyncClient.session` — a lease kept alive (Go's ``concurrency.Session``).
- :meth:`AsyncClient.txn` — atomic compare-and-swap transactions (:class:`Compare`, :class:`Op`).

:class:`Client` is the blocking twin of :class:`AsyncClient`. Real etcd processes for
development and tests live in :mod:`etcdkit.testing`.
"""

from etcdkit._client import AsyncClient
from etcdkit._errors import (
    AuthError,
    ClosedError,
    CompactedError,
    ConnectionUnavailableError,
    EtcdkitError,
    EtcdTimeoutError,
    InvalidArgumentError,
    LeaseNotFoundError,
    PermissionDeniedError,
    ServerError,
    WatchEndedError,
    WrongContextError,
)
from etcdkit._persistent_lease import LeaseState, PersistentLease
from etcdkit._prefix_watch import PrefixWatch, WatchState, WatchStats
from etcdkit._retry import RetryPolicy
from etcdkit._session import Session, SessionState
from etcdkit._snapshot import Change, ChangeKind, Snapshot, default_transform
from etcdkit._sync import Client, SyncPersistentLease, SyncPrefixWatch, SyncSession
from etcdkit._types import (
    Compare,
    DeleteResult,
    EventType,
    KeyValue,
    LeaseGrant,
    Op,
    PutResult,
    RangeResult,
    TxnResult,
    WatchEvent,
)
from etcdkit._version import __version__

__all__ = [
    "AsyncClient",
    "AuthError",
    "Change",
    "ChangeKind",
    "Client",
    "ClosedError",
    "CompactedError",
    "Compare",
    "ConnectionUnavailableError",
    "DeleteResult",
    "EtcdTimeoutError",
    "EtcdkitError",
    "EventType",
    "InvalidArgumentError",
    "KeyValue",
    "LeaseGrant",
    "LeaseNotFoundError",
    "LeaseState",
    "Op",
    "PermissionDeniedError",
    "PersistentLease",
    "PrefixWatch",
    "PutResult",
    "RangeResult",
    "RetryPolicy",
    "ServerError",
    "Session",
    "SessionState",
    "Snapshot",
    "SyncPersistentLease",
    "SyncPrefixWatch",
    "SyncSession",
    "TxnResult",
    "WatchEndedError",
    "WatchEvent",
    "WatchState",
    "WatchStats",
    "WrongContextError",
    "__version__",
    "default_transform",
]
