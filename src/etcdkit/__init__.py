"""etcdkit: etcd v3 coordination recipes for asyncio and threads.

- :meth:`AsyncClient.wait_for` — return once a key exists (or is absent).
- :meth:`AsyncClient.watch_prefix` — exact, resumable snapshots of a prefix.
- :meth:`AsyncClient.persistent_lease` — a registration key that comes back by itself.

:class:`Client` is the blocking twin of :class:`AsyncClient`. Real etcd processes for
development and tests live in :mod:`etcdkit.server`.
"""

from etcdkit._client import AsyncClient, KeyValue, LeaseGrant, RangeResult
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
)
from etcdkit._lease import LeaseState, PersistentLease
from etcdkit._snapshot import Change, ChangeKind, Snapshot, default_transform
from etcdkit._sync import Client, SyncPersistentLease, SyncPrefixWatch
from etcdkit._version import __version__
from etcdkit._watch import PrefixWatch, WatchState, WatchStats

__all__ = [
    "AsyncClient",
    "AuthError",
    "Change",
    "ChangeKind",
    "Client",
    "ClosedError",
    "CompactedError",
    "ConnectionUnavailableError",
    "EtcdTimeoutError",
    "EtcdkitError",
    "InvalidArgumentError",
    "KeyValue",
    "LeaseGrant",
    "LeaseNotFoundError",
    "LeaseState",
    "PermissionDeniedError",
    "PersistentLease",
    "PrefixWatch",
    "RangeResult",
    "ServerError",
    "Snapshot",
    "SyncPersistentLease",
    "SyncPrefixWatch",
    "WatchEndedError",
    "WatchState",
    "WatchStats",
    "__version__",
    "default_transform",
]
