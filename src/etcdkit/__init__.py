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

import importlib
from typing import TYPE_CHECKING

from etcdkit._blocking.twin import SyncIterator  # (loaded anyway: the recipes' twins use it)
from etcdkit._client import AsyncClient

if TYPE_CHECKING:  # imported on first use (see __getattr__ below)
    from etcdkit._admin_types import Alarm, AuthStatus, HashKV, Member, Permission, Status
    from etcdkit._blocking.admin import SyncAuth, SyncMaintenance, SyncMembers
    from etcdkit._blocking.client import (
        Client,
        SyncKeepAlive,
        SyncPersistentLease,
        SyncPrefixWatch,
        SyncSession,
        SyncWatch,
    )
    from etcdkit._blocking.locks import (
        SyncCampaign,
        SyncElection,
        SyncLeadership,
        SyncLock,
        SyncLockHold,
    )
    from etcdkit._wire.admin import Auth, Maintenance, Members
    from etcdkit.naming import Endpoint, EndpointManager, SyncEndpointManager
    from etcdkit.recipes.barrier import Barrier, SyncBarrier
    from etcdkit.recipes.counter import Counter, SyncCounter
    from etcdkit.recipes.double_barrier import BarrierFullError, DoubleBarrier, SyncDoubleBarrier
    from etcdkit.recipes.priority_queue import PriorityQueue, SyncPriorityQueue
    from etcdkit.recipes.queue import Queue, SyncQueue
    from etcdkit.recipes.rwlock import RWHold, RWLock, SyncRWHold, SyncRWLock
    from etcdkit.recipes.semaphore import Permit, Semaphore, SyncPermit, SyncSemaphore
from etcdkit._errors import (
    AuthError,
    ClosedError,
    CompactedError,
    ConflictError,
    ConnectionUnavailableError,
    EtcdkitError,
    EtcdTimeoutError,
    InvalidArgumentError,
    LeaseNotFoundError,
    NotHeldError,
    OutcomeUnknownError,
    PermissionDeniedError,
    ServerError,
    WatchEndedError,
    WrongContextError,
)
from etcdkit._metrics import ClientStats, LeaseStats
from etcdkit._retry import Backoff, RetryPolicy
from etcdkit._snapshot import Change, ChangeKind, Snapshot, Transform, default_transform
from etcdkit._surface import Etcd
from etcdkit._types import (
    Compare,
    DeleteResult,
    EventType,
    HoldState,
    KeepAliveStatus,
    KeyValue,
    KeyValueLike,
    LeaseGrant,
    LeaseInfo,
    Op,
    PutResult,
    RangeResult,
    ResponseHeader,
    SortOrder,
    SortTarget,
    TxnResult,
    WatchBatch,
    WatchEvent,
    WatchFilter,
)
from etcdkit._version import __version__
from etcdkit._watch import Watch
from etcdkit._wire.keepalive import KeepAlive
from etcdkit.recipes.election import Campaign, Election, Leader, Leadership
from etcdkit.recipes.lock import Lock, LockHold
from etcdkit.recipes.persistent_lease import LeaseState, PersistentLease
from etcdkit.recipes.prefix_watch import PrefixWatch, WatchState, WatchStats
from etcdkit.recipes.session import Session, SessionState
from etcdkit.recipes.stm import Isolation, Stm, SyncStm

__all__ = [
    "Alarm",
    "AsyncClient",
    "Auth",
    "AuthError",
    "AuthStatus",
    "Backoff",
    "Barrier",
    "BarrierFullError",
    "Campaign",
    "Change",
    "ChangeKind",
    "Client",
    "ClientStats",
    "ClosedError",
    "CompactedError",
    "Compare",
    "ConflictError",
    "ConnectionUnavailableError",
    "Counter",
    "DeleteResult",
    "DoubleBarrier",
    "Election",
    "Endpoint",
    "EndpointManager",
    "Etcd",
    "EtcdTimeoutError",
    "EtcdkitError",
    "EventType",
    "HashKV",
    "HoldState",
    "InvalidArgumentError",
    "Isolation",
    "KeepAlive",
    "KeepAliveStatus",
    "KeyValue",
    "KeyValueLike",
    "Leader",
    "Leadership",
    "LeaseGrant",
    "LeaseInfo",
    "LeaseNotFoundError",
    "LeaseState",
    "LeaseStats",
    "Lock",
    "LockHold",
    "Maintenance",
    "Member",
    "Members",
    "NotHeldError",
    "Op",
    "OutcomeUnknownError",
    "Permission",
    "PermissionDeniedError",
    "Permit",
    "PersistentLease",
    "PrefixWatch",
    "PriorityQueue",
    "PutResult",
    "Queue",
    "RWHold",
    "RWLock",
    "RangeResult",
    "ResponseHeader",
    "RetryPolicy",
    "Semaphore",
    "ServerError",
    "Session",
    "SessionState",
    "Snapshot",
    "SortOrder",
    "SortTarget",
    "Status",
    "Stm",
    "SyncAuth",
    "SyncBarrier",
    "SyncCampaign",
    "SyncCounter",
    "SyncDoubleBarrier",
    "SyncElection",
    "SyncEndpointManager",
    "SyncIterator",
    "SyncKeepAlive",
    "SyncLeadership",
    "SyncLock",
    "SyncLockHold",
    "SyncMaintenance",
    "SyncMembers",
    "SyncPermit",
    "SyncPersistentLease",
    "SyncPrefixWatch",
    "SyncPriorityQueue",
    "SyncQueue",
    "SyncRWHold",
    "SyncRWLock",
    "SyncSemaphore",
    "SyncSession",
    "SyncStm",
    "SyncWatch",
    "Transform",
    "TxnResult",
    "Watch",
    "WatchBatch",
    "WatchEndedError",
    "WatchEvent",
    "WatchFilter",
    "WatchState",
    "WatchStats",
    "WrongContextError",
    "__version__",
    "default_transform",
]


# The threaded face (Client and its Sync* twins), administration, naming and the recipes a
# client makes on request are imported when first used: a program that does not use them (one
# process of many, each starting up) does not pay for them.
_ON_FIRST_USE = {
    "etcdkit._admin_types": ("Alarm", "AuthStatus", "HashKV", "Member", "Permission", "Status"),
    "etcdkit._wire.admin": ("Auth", "Maintenance", "Members"),
    "etcdkit.naming": ("Endpoint", "EndpointManager", "SyncEndpointManager"),
    "etcdkit.recipes.barrier": ("Barrier", "SyncBarrier"),
    "etcdkit.recipes.counter": ("Counter", "SyncCounter"),
    "etcdkit.recipes.double_barrier": ("BarrierFullError", "DoubleBarrier", "SyncDoubleBarrier"),
    "etcdkit.recipes.priority_queue": ("PriorityQueue", "SyncPriorityQueue"),
    "etcdkit.recipes.queue": ("Queue", "SyncQueue"),
    "etcdkit.recipes.rwlock": ("RWHold", "RWLock", "SyncRWHold", "SyncRWLock"),
    "etcdkit.recipes.semaphore": ("Permit", "Semaphore", "SyncPermit", "SyncSemaphore"),
    "etcdkit._blocking.admin": ("SyncAuth", "SyncMaintenance", "SyncMembers"),
    "etcdkit._blocking.client": (
        "Client",
        "SyncKeepAlive",
        "SyncPersistentLease",
        "SyncPrefixWatch",
        "SyncSession",
        "SyncWatch",
    ),
    "etcdkit._blocking.locks": (
        "SyncCampaign",
        "SyncElection",
        "SyncLeadership",
        "SyncLock",
        "SyncLockHold",
    ),
}
_LAZY = {name: module for module, names in _ON_FIRST_USE.items() for name in names}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'etcdkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
