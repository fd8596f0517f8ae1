"""The etcdkit error tree.

Every error etcdkit raises on purpose derives from :class:`EtcdkitError`::

    EtcdkitError
    ├── ConnectionUnavailableError   no etcd endpoint answered (down, partitioned, refused)
    ├── EtcdTimeoutError             a deadline passed (also a built-in TimeoutError)
    ├── CompactedError               the requested revision was compacted away
    ├── AuthError                    authentication failed (bad user/password, expired token)
    │   └── PermissionDeniedError    authenticated, but the role may not touch that key
    ├── InvalidArgumentError         etcd rejected a request as malformed (also a ValueError)
    ├── LeaseNotFoundError           the lease expired or was revoked
    ├── ClosedError                  the client, watch or lease was closed (also while in flight)
    ├── WrongContextError            used from the wrong event loop, or a blocking call made
    │                                inside a running event loop (also a RuntimeError)
    ├── WatchEndedError              a watch ended for a reason other than close or success
    ├── NotHeldError                 a lock or leadership is not held (never taken, released, lost)
    ├── OutcomeUnknownError          a write was sent but never answered: it may or may not have
    │                                been applied (a recipe could not settle which)
    ├── ConflictError                a transaction kept losing to concurrent writers (STM)
    └── ServerError                  any other error reported by etcd

Errors from grpc are converted at the boundary (``raise ... from exc``) so the original gRPC
status stays available as ``__cause__``. Argument checks done before any I/O raise the plain
built-in ``TypeError`` / ``ValueError`` with a message that says what to pass instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

__all__ = [
    "AuthError",
    "ClosedError",
    "CompactedError",
    "ConflictError",
    "ConnectionUnavailableError",
    "EtcdTimeoutError",
    "EtcdkitError",
    "InvalidArgumentError",
    "LeaseNotFoundError",
    "NotHeldError",
    "OutcomeUnknownError",
    "PermissionDeniedError",
    "ServerError",
    "WatchEndedError",
    "WrongContextError",
]


class EtcdkitError(Exception):
    """Base class of every error etcdkit raises on purpose."""


class ConnectionUnavailableError(EtcdkitError):
    """No etcd endpoint could serve the request (down, refused, partitioned, no leader)."""


class EtcdTimeoutError(EtcdkitError, TimeoutError):
    """A deadline passed before the operation finished."""


class CompactedError(EtcdkitError):
    """The requested revision is older than the store's compaction point."""

    def __init__(self, message: str, *, compact_revision: int = 0) -> None:
        super().__init__(message)
        self.compact_revision = compact_revision


class AuthError(EtcdkitError):
    """Authentication failed: wrong user name or password, or auth misconfigured."""


class PermissionDeniedError(AuthError):
    """The user is authenticated but its roles do not allow this key range."""


class InvalidArgumentError(EtcdkitError, ValueError):
    """etcd rejected the request as malformed (empty key, value too large, ...)."""


class LeaseNotFoundError(EtcdkitError):
    """The lease does not exist any more: it expired or was revoked."""


class ClosedError(EtcdkitError):
    """The object was already closed; create a new one."""


class WrongContextError(EtcdkitError, RuntimeError):
    """An object was used where it cannot work: an AsyncClient from another event loop than its
    own, or a blocking Client call inside a running event loop (it would block that loop)."""


class WatchEndedError(EtcdkitError):
    """A watch ended for a reason other than being closed (e.g. canceled by the server)."""


class NotHeldError(EtcdkitError):
    """An operation needs a lock or leadership that is not held: never acquired, released, or
    lost (its key deleted, its lease expired or revoked). Another holder may exist now."""


class OutcomeUnknownError(EtcdkitError):
    """A write was sent but no answer came (connection lost, deadline passed, member hung): it
    may or may not have been applied, and the recipe that sent it could not settle which (it
    never re-sends a write that could then apply twice). The message says what was at stake;
    ``__cause__`` is the error of the last attempt. A queue's item at stake is in ``key`` and
    ``value`` (a take that may have removed it: the item is lost unless you act on it; a put
    that may or may not have added it); ``None`` otherwise."""

    def __init__(
        self, message: str, *, key: bytes | None = None, value: bytes | None = None
    ) -> None:
        super().__init__(message)
        self.key = key
        self.value = value


class ConflictError(EtcdkitError):
    """A transaction lost to concurrent writers on every attempt it was allowed (an STM's
    ``attempts``); nothing of it was written. Retry later, or with fewer keys in contention."""


class ServerError(EtcdkitError):
    """etcd reported an error that has no more specific class."""


def mark_retrieved(task: asyncio.Future[Any]) -> None:
    """A done callback for a task nobody may await any more (its caller gave up, or it runs
    on alone): its error counts as read, so asyncio does not report it as "never retrieved".
    Whoever still awaits it gets the error all the same."""
    if not task.cancelled():
        task.exception()
