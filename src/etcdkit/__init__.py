"""etcdkit: etcd v3 coordination recipes for asyncio and threads.

- :meth:`AsyncClient.wait_for` — return once a key exists (or is absent).
- :meth:`AsyncClient.watch_prefix` — exact, resumable snapshots of a prefix.
- :meth:`AsyncClient.persistent_lease` — a registration key that comes back by itself.
- :meth:`AsyncClient.session` — a lease kept alive (Go's ``concurrency.Session``).
- :meth:`AsyncClient.txn` — atomic compare-and-swap transactions (:class:`Compare`, :class:`Op`).
- :meth:`AsyncClient.lock` / :meth:`AsyncClient.election` — locks with fencing tokens and leader
  elections, on the keys of Go's ``concurrency`` package (``etcdctl lock`` / ``elect``).

:class:`Client` is the blocking twin of :class:`AsyncClient`. Real etcd processes for
development and tests live in :mod:`etcdkit.testing`.
"""

from etcdkit._client import AsyncClient
from etcdkit._election import Campaign, Election, Leader, Leadership
from etcdkit._errors import (
    AuthError,
    ClosedError,
    CompactedError,
    ConnectionUnavailableError,
    EtcdkitError,
    EtcdTimeoutError,
    InvalidArgumentError,
    LeaseNotFoundError,
    NotHeldError,
    PermissionDeniedError,
    ServerError,
    WatchEndedError,
    WrongContextError,
)
from etcdkit._lock import Lock
from etcdkit._metrics import ClientStats, LeaseStats
from etcdkit._persistent_lease import LeaseState, PersistentLease
from etcdkit._prefix_watch import PrefixWatch, WatchState, WatchStats
from etcdkit._queue import HoldState
from etcdkit._retry import RetryPolicy
from etcdkit._session import Session, SessionState
from etcdkit._snapshot import Change, ChangeKind, Snapshot, default_transform
from etcdkit._sync import Client, SyncPersistentLease, SyncPrefixWatch, SyncSession, SyncWatch
from etcdkit._sync_locks import SyncCampaign, SyncElection, SyncLeadership, SyncLock
from etcdkit._types import (
    Compare,
    DeleteResult,
    EventType,
    KeyValue,
    LeaseGrant,
    LeaseInfo,
    Op,
    PutResult,
    RangeResult,
    ResponseHeader,
    TxnResult,
    WatchBatch,
    WatchEvent,
)
from etcdkit._version import __version__
from etcdkit._watch import Watch

__all__ = [
    "AsyncClient",
    "AuthError",
    "Campaign",
    "Change",
    "ChangeKind",
    "Client",
    "ClientStats",
    "ClosedError",
    "CompactedError",
    "Compare",
    "ConnectionUnavailableError",
    "DeleteResult",
    "Election",
    "EtcdTimeoutError",
    "EtcdkitError",
    "EventType",
    "HoldState",
    "InvalidArgumentError",
    "KeyValue",
    "Leader",
    "Leadership",
    "LeaseGrant",
    "LeaseInfo",
    "LeaseNotFoundError",
    "LeaseState",
    "LeaseStats",
    "Lock",
    "NotHeldError",
    "Op",
    "PermissionDeniedError",
    "PersistentLease",
    "PrefixWatch",
    "PutResult",
    "RangeResult",
    "ResponseHeader",
    "RetryPolicy",
    "ServerError",
    "Session",
    "SessionState",
    "Snapshot",
    "SyncCampaign",
    "SyncElection",
    "SyncLeadership",
    "SyncLock",
    "SyncPersistentLease",
    "SyncPrefixWatch",
    "SyncSession",
    "SyncWatch",
    "TxnResult",
    "Watch",
    "WatchBatch",
    "WatchEndedError",
    "WatchEvent",
    "WatchState",
    "WatchStats",
    "WrongContextError",
    "__version__",
    "default_transform",
]
