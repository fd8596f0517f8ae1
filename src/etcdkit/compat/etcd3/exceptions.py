"""python-etcd3's exceptions, each raised from the etcdkit error it stands for.

::

    Etcd3Exception              every error this module raises on purpose
    ├── ConnectionFailedError   etcd unreachable        (etcdkit.ConnectionUnavailableError)
    ├── ConnectionTimeoutError  a deadline passed       (etcdkit.EtcdTimeoutError, and a
    │                           ConnectionUnavailableError whose endpoints never answered:
    │                           connection attempts that timed out rather than were refused)
    ├── InternalServerError     etcd reported an error  (etcdkit.ServerError)
    ├── PreconditionFailedError ... FAILED_PRECONDITION (etcdkit.ServerError)
    ├── RevisionCompactedError  history compacted       (etcdkit.CompactedError)
    ├── WatchTimedOut           watch_once saw nothing in time (also a TimeoutError)
    └── LockTimeout             ``with lock:`` did not acquire (also a TimeoutError)

Any other etcdkit error (auth, a lease not found, the client closed, ...) arrives as
:class:`Etcd3Exception` itself, where python-etcd3 let a raw ``grpc.RpcError`` through. The
etcdkit error stays available as ``__cause__``; the message is etcdkit's, which says what
happened and what to do. Argument checks raise ``TypeError`` / ``ValueError`` before any I/O.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import ParamSpec, TypeVar

from etcdkit import (
    CompactedError,
    ConnectionUnavailableError,
    EtcdkitError,
    EtcdTimeoutError,
    ServerError,
)

__all__ = [
    "ConnectionFailedError",
    "ConnectionTimeoutError",
    "Etcd3Exception",
    "InternalServerError",
    "LockTimeout",
    "PreconditionFailedError",
    "RevisionCompactedError",
    "WatchTimedOut",
    "handle_errors",
    "translate",
    "translated",
]

P = ParamSpec("P")
T = TypeVar("T")


class Etcd3Exception(Exception):
    """Base class of the errors of :mod:`etcdkit.compat.etcd3`."""


class WatchTimedOut(Etcd3Exception, TimeoutError):
    """``watch_once`` / ``watch_prefix_once`` saw no event within ``timeout``."""


class InternalServerError(Etcd3Exception):
    """etcd reported an error (gRPC INTERNAL in python-etcd3; here every server error that is
    not a precondition failure)."""


class ConnectionFailedError(Etcd3Exception):
    """etcd could not be reached within the client's timeout: its connections were refused
    (etcd down) or broke (python-etcd3: gRPC UNAVAILABLE)."""


class ConnectionTimeoutError(Etcd3Exception, TimeoutError):
    """The request's deadline (the client's ``timeout``) passed: etcd was slow or did not
    answer at all (hung, partitioned), also while connecting (python-etcd3: gRPC
    DEADLINE_EXCEEDED)."""


class PreconditionFailedError(Etcd3Exception):
    """etcd refused the request as FAILED_PRECONDITION (e.g. a peer URL already in use, a user
    or role that exists already or does not exist)."""


class RevisionCompactedError(Etcd3Exception):
    """The revision asked for (a watch's ``start_revision``, a read's ``revision``) was
    compacted. ``compacted_revision`` is the oldest revision etcd still has when etcd says it
    (a watch); 0 when it does not (a read)."""

    def __init__(self, compacted_revision: int, message: str = "") -> None:
        self.compacted_revision = compacted_revision
        super().__init__(
            message or f"revision compacted (etcd keeps history from {compacted_revision} on)"
        )


class LockTimeout(Etcd3Exception, TimeoutError):
    """``with lock:`` could not acquire the lock within the acquire's timeout, so the block
    did not run (python-etcd3 ran it anyway, unlocked)."""


def _grpc_code(exc: BaseException) -> str:
    """The gRPC status name an etcdkit error came from, if it says ("FAILED_PRECONDITION")."""
    code = getattr(exc.__cause__, "code", None)
    if callable(code):
        with contextlib.suppress(Exception):
            name = str(getattr(code(), "name", ""))
            if name:
                return name
    return "FAILED_PRECONDITION" if ": FAILED_PRECONDITION:" in str(exc) else ""


# What grpc says of a connection attempt that got no answer in time (a hung or black-holed
# etcd: the TCP connection is accepted, or its SYN dropped, and nothing more comes), as opposed
# to one refused (etcd down). python-etcd3's call then ran into its deadline:
# DEADLINE_EXCEEDED, ConnectionTimeoutError; a refusal failed at once: UNAVAILABLE. ("tcp
# handshaker shutdown": grpc gave up on a connection whose handshake never completed, e.g.
# its SYNs dropped.)
_NO_ANSWER_MARKS = ("timed out", "timeout", "deadline exceeded", "handshaker shutdown")


def _timed_out(exc: ConnectionUnavailableError) -> bool:
    """``exc`` says the client's deadline ran out while connection attempts went unanswered
    (etcdkit reports that as the endpoint being unavailable, ending with grpc's last error:
    "... failed: UNAVAILABLE: <grpc's details>"). Only grpc's part is read: the key named
    before it may say anything."""
    grpc_part = str(exc).rpartition(" failed: ")[2].lower()
    return any(mark in grpc_part for mark in _NO_ANSWER_MARKS)


def translate(exc: EtcdkitError) -> Etcd3Exception:
    """The python-etcd3 exception standing for ``exc`` (raise it ``from exc``)."""
    message = str(exc)
    if isinstance(exc, CompactedError):
        return RevisionCompactedError(exc.compact_revision, message)
    if isinstance(exc, EtcdTimeoutError):
        return ConnectionTimeoutError(message)
    if isinstance(exc, ConnectionUnavailableError):
        if _timed_out(exc):
            return ConnectionTimeoutError(message)
        return ConnectionFailedError(message)
    if isinstance(exc, ServerError):
        if _grpc_code(exc) == "FAILED_PRECONDITION":
            return PreconditionFailedError(message)
        return InternalServerError(message)
    return Etcd3Exception(f"{type(exc).__name__}: {message}")


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """Run the block, raising each etcdkit error as its python-etcd3 exception."""
    try:
        yield
    except EtcdkitError as exc:
        raise translate(exc) from exc


def handle_errors(fn: Callable[P, T]) -> Callable[P, T]:
    """Decorate a call so that each etcdkit error it raises arrives as its python-etcd3
    exception (as python-etcd3's own ``_handle_errors`` did with grpc's)."""

    @functools.wraps(fn)
    def call(*args: P.args, **kwargs: P.kwargs) -> T:
        with translated():
            return fn(*args, **kwargs)

    return call
