"""python-etcd3's :class:`Etcd3Client`, each call made through etcdkit's threaded
:class:`etcdkit.Client` (``client.native``), its errors raised as python-etcd3's
(:mod:`etcdkit.compat.etcd3.exceptions`).

Results keep python-etcd3's shapes: ``get`` returns ``(value, KVMetadata)``; listings are
iterators of ``(value, KVMetadata)``; ``put`` returns a response with ``header`` and
``prev_kv``; ``delete(return_response=True)`` and ``delete_prefix`` a response with
``deleted``, ``prev_kvs`` and ``header``; ``transaction`` returns ``(succeeded, responses)``.
Requests are made when the call is made (python-etcd3 made some only once their generator
was iterated).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import threading
import weakref
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from types import TracebackType
from typing import IO, Any

from etcdkit import Alarm as KitAlarm
from etcdkit import (
    Client,
    ClosedError,
    DeleteResult,
    EtcdkitError,
    LeaseNotFoundError,
    PutResult,
    RangeResult,
    ResponseHeader,
    RetryPolicy,
    TxnResult,
)
from etcdkit.compat.etcd3 import transactions
from etcdkit.compat.etcd3.events import NO_KV, Event
from etcdkit.compat.etcd3.exceptions import (
    ConnectionFailedError,
    Etcd3Exception,
    handle_errors,
    translate,
    translated,
)
from etcdkit.compat.etcd3.leases import Lease, LeaseKeepAliveResponse, LeaseTimeToLiveResponse
from etcdkit.compat.etcd3.locks import Lock
from etcdkit.compat.etcd3.members import Member
from etcdkit.compat.etcd3.results import (
    Alarm,
    KVMetadata,
    PutResponse,
    ResponseOp,
    Status,
    TxnResponse,
    header_or_revision,
    pairs,
)
from etcdkit.compat.etcd3.transactions import end_of, lease_to_id, to_compares, to_ops
from etcdkit.compat.etcd3.watch import Watcher, WatchResponse, first_response, once_timeout

__all__ = [
    "Alarm",
    "Etcd3Client",
    "KVMetadata",
    "PutResponse",
    "ResponseOp",
    "Status",
    "Transactions",
    "client",
]

log = logging.getLogger("etcdkit.compat.etcd3")

DEFAULT_TIMEOUT = 5.0  # seconds, for timeout=None (python-etcd3: no deadline, no retry)
ALARM_TYPES = {"NONE": 0, "NOSPACE": 1, "CORRUPT": 2}  # etcd's AlarmType numbers
_RANGE_OPTIONS = {
    "limit": 0,
    "revision": 0,
    "sort_order": None,
    "sort_target": "key",
    "serializable": False,
    "keys_only": False,
    "count_only": False,
    "min_mod_revision": 0,
    "max_mod_revision": 0,
    "min_create_revision": 0,
    "max_create_revision": 0,
}


class Transactions:
    """``client.transactions``: the compares and operations of :meth:`Etcd3Client.transaction`."""

    def __init__(self) -> None:
        self.value = transactions.Value
        self.version = transactions.Version
        self.create = transactions.Create
        self.mod = transactions.Mod
        self.lease = transactions.Lease
        self.put = transactions.Put
        self.get = transactions.Get
        self.delete = transactions.Delete
        self.txn = transactions.Txn


class _NativeClient(Client):
    """The :class:`etcdkit.Client` under a compat client (``native``): its calls made inside a
    running asyncio event loop block that loop, as python-etcd3's plain grpc calls did (an
    ``async def`` handler of a web framework, a Jupyter cell), where etcdkit's own Client
    refuses them."""

    blocks_running_loops = True


class _UntilRefused(RetryPolicy):
    """etcdkit's retries, but none once etcd refused the connection (it is down): with no
    timeout etcdkit would retry until it is back, where python-etcd3's call, with no
    wait-for-ready, failed at once. A connection attempt that went unanswered (a hung or
    busy etcd) is tried again, as python-etcd3's call waited on its open connection."""

    def is_retryable(self, exc: BaseException) -> bool:
        if isinstance(exc, EtcdkitError) and isinstance(translate(exc), ConnectionFailedError):
            return False
        return super().is_retryable(exc)


class Etcd3Client:
    """python-etcd3's client, on an :class:`etcdkit.Client` (``native``).

    ``timeout=None`` means etcdkit's default of 5 s (python-etcd3 had no deadline but failed
    at once when etcd was unreachable; here a call waits that long for etcd, retrying what is
    safe). ``grpc_options`` is ignored (etcdkit sets its channels up itself). TLS as in
    python-etcd3: ``ca_cert`` alone, or with both ``cert_cert`` and ``cert_key`` (one of them
    alone is a ``ValueError``); without ``ca_cert`` the channel is insecure and a client
    certificate given is ignored (logged as a warning). With ``user`` and ``password`` it logs
    in before it returns, as python-etcd3's did: bad credentials raise here.
    """

    def __init__(
        self,
        host: str = "localhost",
        port: int = 2379,
        ca_cert: str | None = None,
        cert_key: str | None = None,
        cert_cert: str | None = None,
        timeout: float | None = None,
        user: str | None = None,
        password: str | None = None,
        grpc_options: Sequence[tuple[str, Any]] | None = None,
    ) -> None:
        if ca_cert is None and (cert_key is not None or cert_cert is not None):
            # python-etcd3 made an insecure channel then, ignoring the client certificate
            log.warning(
                "cert_key/cert_cert ignored: without ca_cert the channel is insecure (plain "
                "HTTP/2, no TLS), as in python-etcd3; pass ca_cert as well to use TLS"
            )
            cert_key = cert_cert = None
        elif (cert_key is None) != (cert_cert is None):
            raise ValueError(
                "to use a secure channel ca_cert is required by itself, or cert_cert and "
                "cert_key must both be specified."
            )
        if (user is None) != (password is None):
            raise ValueError("pass both user and password for authentication, or neither")
        if grpc_options:
            log.info("grpc_options %r ignored: etcdkit configures its own channels", grpc_options)
        scheme = "https" if ca_cert is not None else "http"
        if isinstance(host, str) and ":" in host and not host.startswith("["):
            host = f"[{host}]"  # an IPv6 address: "::1" is "[::1]" in an endpoint
        for path in (ca_cert, cert_key, cert_cert):
            if path is not None:  # as python-etcd3 read them: a missing one is an OSError
                with open(path, "rb"):
                    pass
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float)
        ):
            raise TypeError(
                f"timeout must be a number of seconds or None, got {type(timeout).__name__}: "
                f"{timeout!r:.40}"
            )
        if timeout is not None and not timeout > 0:
            raise ValueError(
                "timeout must be a positive number of seconds, or None (etcdkit's default of "
                f"{DEFAULT_TIMEOUT:g} s), not {timeout!r:.40}"
            )
        self.timeout = timeout
        # (defragment() with timeout=None opens a client of these with no timeout)
        self._args: dict[str, Any] = {
            "endpoints": f"{scheme}://{host}:{port}",
            "username": user,
            "password": password,
            "ca_cert": ca_cert,
            "cert": cert_cert,
            "key": cert_key,
        }
        with translated():
            self.native: Client = _NativeClient(
                **self._args, timeout=DEFAULT_TIMEOUT if timeout is None else timeout
            )
        if user is not None:
            # python-etcd3's client() logs in before it returns: bad credentials (or etcd out
            # of reach) fail here, not at the first call
            try:
                with translated():
                    self.native.auth_metadata()
            except BaseException:
                self.native.close()
                raise
        self.transactions = Transactions()
        self.watcher = Watcher(self.native)
        self._locks: weakref.WeakSet[Lock] = weakref.WeakSet()
        self._locks_mutex = threading.Lock()
        # the clients of defragment() calls under way (timeout=None), which close() ends
        self._patients: set[Client] = set()
        self._closing = False

    def __repr__(self) -> str:
        return f"<Etcd3Client on {self.native!r}>"

    def close(self) -> None:
        """End the watches, stop the locks' ttl countdowns, and close the etcdkit client
        (which releases the locks still held and revokes what it kept alive); a
        ``defragment()`` under way raises :class:`Etcd3Exception`."""
        with self._locks_mutex:
            self._closing = True
            patients = list(self._patients)
        for patient in patients:
            patient.close()
        self.watcher.close()
        with self._locks_mutex:
            locks = list(self._locks)
        for lock in locks:
            lock.stop_timer()
        self.native.close()

    def __del__(self) -> None:
        # As python-etcd3's: a client dropped without close() is closed when collected (a
        # client made per request would else keep a thread and its sockets for good). Not at
        # exit: the threads a close waits for can no longer run then (the process ends, and
        # what it kept alive expires by its ttl, as python-etcd3's leases did).
        if sys.is_finalizing():
            return
        with contextlib.suppress(Exception):
            self.close()

    def __enter__(self) -> Etcd3Client:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def track_lock(self, lock: Lock) -> None:
        """Remember ``lock`` so that :meth:`close` stops its ttl countdown."""
        with self._locks_mutex:
            self._locks.add(lock)

    # -- reads --------------------------------------------------------------------------------

    def _range(
        self,
        key: str | bytes,
        range_end: str | bytes | None = None,
        *,
        prefix: bool = False,
        **options: Any,
    ) -> RangeResult:
        unknown = set(options) - set(_RANGE_OPTIONS)
        if unknown:
            raise TypeError(f"unexpected keyword argument(s): {', '.join(sorted(unknown))}")
        args: dict[str, Any] = {
            name: default if options.get(name) is None else options[name]
            for name, default in _RANGE_OPTIONS.items()
        }
        with translated():
            return self.native.range(key, end_of(range_end), prefix=prefix, **args)

    def get_response(self, key: str | bytes, serializable: bool = False) -> RangeResult:
        """etcd's answer for one key: ``kvs``, ``count``, ``more``, ``header``."""
        return self._range(key, serializable=serializable)

    def get(
        self, key: str | bytes, serializable: bool = False
    ) -> tuple[bytes, KVMetadata] | tuple[None, None]:
        """The key's ``(value, KVMetadata)``, or ``(None, None)`` when it does not exist."""
        result = self.get_response(key, serializable=serializable)
        if not result.kvs:
            return None, None
        kv = result.kvs[0]
        return kv.value, KVMetadata(kv, result.header)

    def get_prefix_response(self, key_prefix: str | bytes, **kwargs: Any) -> RangeResult:
        """etcd's answer for the keys starting with ``key_prefix``."""
        if "key" in kwargs or "range_end" in kwargs:
            raise TypeError("Don't use key or range_end with prefix")
        return self._range(_prefix(key_prefix), prefix=True, **kwargs)

    def get_prefix(
        self, key_prefix: str | bytes, **kwargs: Any
    ) -> Generator[tuple[bytes, KVMetadata], None, None]:
        """``(value, KVMetadata)`` of every key starting with ``key_prefix``; options:
        ``sort_order`` ("ascend"/"descend"), ``sort_target`` ("key", "version", "create",
        "mod", "value"), ``keys_only``, ``limit``, ``revision``, ``serializable``, ..."""
        return pairs(self.get_prefix_response(key_prefix, **kwargs))

    def get_range_response(
        self,
        range_start: str | bytes,
        range_end: str | bytes,
        sort_order: str | None = None,
        sort_target: str = "key",
        **kwargs: Any,
    ) -> RangeResult:
        """etcd's answer for the keys in ``[range_start, range_end)``."""
        return self._range(
            range_start, range_end, sort_order=sort_order, sort_target=sort_target, **kwargs
        )

    def get_range(
        self, range_start: str | bytes, range_end: str | bytes, **kwargs: Any
    ) -> Generator[tuple[bytes, KVMetadata], None, None]:
        """``(value, KVMetadata)`` of every key in ``[range_start, range_end)``."""
        return pairs(self.get_range_response(range_start, range_end, **kwargs))

    def get_all_response(
        self,
        sort_order: str | None = None,
        sort_target: str = "key",
        keys_only: bool = False,
        **kwargs: Any,
    ) -> RangeResult:
        """etcd's answer for every key."""
        return self._range(
            b"\0",
            b"\0",
            sort_order=sort_order,
            sort_target=sort_target,
            keys_only=keys_only,
            **kwargs,
        )

    def get_all(self, **kwargs: Any) -> Generator[tuple[bytes, KVMetadata], None, None]:
        """``(value, KVMetadata)`` of every key in etcd."""
        return pairs(self.get_all_response(**kwargs))

    # -- writes -------------------------------------------------------------------------------

    @handle_errors
    def put(
        self,
        key: str | bytes,
        value: str | bytes,
        lease: Lease | int | str | None = None,
        prev_kv: bool = False,
    ) -> PutResponse:
        """Store ``key=value`` (on ``lease``, a Lease or an id); a :class:`PutResponse`."""
        lease_id = lease_to_id(lease)
        if prev_kv:
            result = self.native.put(key, value, lease=lease_id, prev_kv=True)
            header = header_or_revision(result.header, result.revision)
            return PutResponse(header, result.prev_kv or NO_KV)
        revision = self.native.put(key, value, lease=lease_id)
        return PutResponse(ResponseHeader(0, 0, revision, 0), NO_KV)

    def put_if_not_exists(
        self, key: str | bytes, value: str | bytes, lease: Lease | int | str | None = None
    ) -> bool:
        """Store ``key=value`` only if the key does not exist; whether it did."""
        status, _ = self.transaction(
            compare=[self.transactions.create(key) == 0],
            success=[self.transactions.put(key, value, lease=lease)],
            failure=[],
        )
        return status

    def replace(self, key: str | bytes, initial_value: str | bytes, new_value: str | bytes) -> bool:
        """Set the key to ``new_value`` only if its value is ``initial_value``; whether it
        was."""
        status, _ = self.transaction(
            compare=[self.transactions.value(key) == initial_value],
            success=[self.transactions.put(key, new_value)],
            failure=[],
        )
        return status

    @handle_errors
    def delete(
        self, key: str | bytes, prev_kv: bool = False, return_response: bool = False
    ) -> bool | DeleteResult:
        """Delete one key: whether it existed, or with ``return_response=True`` etcd's
        answer (``deleted``, ``prev_kvs`` with ``prev_kv=True``, ``header``)."""
        result = self.native.delete_range(key, prev_kv=prev_kv)
        return result if return_response else result.deleted >= 1

    @handle_errors
    def delete_prefix(self, prefix: str | bytes) -> DeleteResult:
        """Delete every key starting with ``prefix``; etcd's answer (``deleted``, ...)."""
        return self.native.delete_range(_prefix(prefix), prefix=True)

    # -- transactions -------------------------------------------------------------------------

    def transaction(
        self,
        compare: Iterable[transactions.BaseCompare],
        success: Iterable[transactions.Operation] | None = None,
        failure: Iterable[transactions.Operation] | None = None,
    ) -> tuple[bool, list[Any]]:
        """One atomic transaction: ``(succeeded, responses)``, one response per operation run
        (a get's is a list of ``(value, KVMetadata)``; a put's, delete's or nested
        transaction's a :class:`ResponseOp`, and inside a nested transaction's
        ``response_txn.responses`` every response is a ResponseOp, a get's with
        ``response_range``)."""
        compares = to_compares(compare)
        ok, bad = to_ops(success, "success"), to_ops(failure, "failure")
        with translated():
            result = self.native.txn(compares, ok, bad)
        return result.succeeded, _responses(result)

    # -- watches ------------------------------------------------------------------------------

    def add_watch_callback(
        self,
        key: str | bytes,
        callback: Callable[[Any], object],
        range_end: str | bytes | None = None,
        start_revision: int | None = None,
        progress_notify: bool = False,
        filters: Sequence[object] | None = None,
        prev_kv: bool = False,
    ) -> int:
        """Watch ``key`` (or ``[key, range_end)``), from ``start_revision`` on, calling
        ``callback`` with each :class:`WatchResponse` (or once with the error that ended it);
        returns the watch id for :meth:`cancel_watch`. The arguments, positional or by
        name, are python-etcd3's ``Watcher.add_callback``'s."""
        return self.watcher.add_callback(
            key, callback, range_end, start_revision, progress_notify, filters, prev_kv, keep=self
        )

    def add_watch_prefix_callback(
        self, key_prefix: str | bytes, callback: Callable[[Any], object], **kwargs: Any
    ) -> int:
        """:meth:`add_watch_callback` for every key starting with ``key_prefix``."""
        kwargs.pop("range_end", None)
        return self.watcher.add_callback(
            _prefix(key_prefix), callback, prefix=True, keep=self, **kwargs
        )

    def cancel_watch(self, watch_id: int) -> None:
        """End the callback watch ``watch_id``."""
        self.watcher.cancel(watch_id)

    def _responses(
        self, key: str | bytes, prefix: bool, kwargs: dict[str, Any]
    ) -> tuple[Iterator[WatchResponse], Callable[[], None]]:
        if prefix:
            kwargs.pop("range_end", None)
            key = _prefix(key)
        watch = self.watcher.open(key, prefix=prefix, **kwargs)

        # (both hold the client, as python-etcd3's do: it is not collected, and closed, while
        # its watch is iterated or may be cancelled)
        def responses(client: Etcd3Client = self) -> Iterator[WatchResponse]:
            try:
                for batch in watch:
                    yield WatchResponse.of(batch)
            except EtcdkitError as exc:
                raise translate(exc) from exc

        def cancel(client: Etcd3Client = self) -> None:
            watch.cancel()

        return responses(), cancel

    def watch_response(
        self, key: str | bytes, **kwargs: Any
    ) -> tuple[Iterator[WatchResponse], Callable[[], None]]:
        """``(responses_iterator, cancel)``: each :class:`WatchResponse` on ``key``."""
        return self._responses(key, False, kwargs)

    def watch(self, key: str | bytes, **kwargs: Any) -> tuple[Iterator[Event], Callable[[], None]]:
        """``(events_iterator, cancel)``: each :class:`PutEvent` / :class:`DeleteEvent` on
        ``key``, from the call on (or from ``start_revision``); ``cancel()`` ends the
        iteration."""
        responses, cancel = self._responses(key, False, kwargs)
        return (e for r in responses for e in r.events), cancel

    def watch_prefix_response(
        self, key_prefix: str | bytes, **kwargs: Any
    ) -> tuple[Iterator[WatchResponse], Callable[[], None]]:
        """:meth:`watch_response` for every key starting with ``key_prefix``."""
        return self._responses(key_prefix, True, kwargs)

    def watch_prefix(
        self, key_prefix: str | bytes, **kwargs: Any
    ) -> tuple[Iterator[Event], Callable[[], None]]:
        """:meth:`watch` for every key starting with ``key_prefix``."""
        responses, cancel = self._responses(key_prefix, True, kwargs)
        return (e for r in responses for e in r.events), cancel

    def watch_once_response(
        self, key: str | bytes, timeout: float | None = None, **kwargs: Any
    ) -> WatchResponse:
        """The first :class:`WatchResponse` with events on ``key``; :class:`WatchTimedOut`
        when none came within ``timeout`` seconds (a ``timeout`` not a number is a
        ``TypeError``, a negative one a ``ValueError``, as in python-etcd3, before anything
        is sent)."""
        wait = once_timeout(timeout)
        return first_response(self.watcher.open(key, **kwargs), wait)

    def watch_once(self, key: str | bytes, timeout: float | None = None, **kwargs: Any) -> Event:
        """The first event on ``key``; :class:`WatchTimedOut` after ``timeout`` seconds."""
        return self.watch_once_response(key, timeout, **kwargs).events[0]

    def watch_prefix_once_response(
        self, key_prefix: str | bytes, timeout: float | None = None, **kwargs: Any
    ) -> WatchResponse:
        """:meth:`watch_once_response` for every key starting with ``key_prefix``."""
        wait = once_timeout(timeout)
        kwargs.pop("range_end", None)
        watch = self.watcher.open(_prefix(key_prefix), prefix=True, **kwargs)
        return first_response(watch, wait)

    def watch_prefix_once(
        self, key_prefix: str | bytes, timeout: float | None = None, **kwargs: Any
    ) -> Event:
        """:meth:`watch_once` for every key starting with ``key_prefix``."""
        return self.watch_prefix_once_response(key_prefix, timeout, **kwargs).events[0]

    # -- leases and locks ---------------------------------------------------------------------

    @handle_errors
    def lease(self, ttl: int, lease_id: int | None = None) -> Lease:
        """Grant a lease of ``ttl`` seconds (not kept alive: :meth:`Lease.refresh` it), with
        the id ``lease_id`` when given (etcd refuses one in use), else one etcd chooses."""
        grant = self.native.grant(ttl, lease_id=lease_id or 0)
        return Lease(grant.id, grant.ttl, self)

    @handle_errors
    def revoke_lease(self, lease_id: int) -> None:
        """Revoke a lease: every key attached to it is deleted."""
        self.native.revoke(lease_id)

    @handle_errors
    def refresh_lease(self, lease_id: int) -> Iterator[LeaseKeepAliveResponse]:
        """Refresh a lease once, now (python-etcd3 did it only once the result was
        iterated); an iterator of one :class:`LeaseKeepAliveResponse` (``TTL`` 0 when the
        lease is gone)."""
        try:
            ttl = self.native.keep_alive_once(lease_id)
        except LeaseNotFoundError:
            ttl = 0
        if ttl > 0:  # a lock on this lease has its ttl started again, as it would in etcd
            with self._locks_mutex:
                locks = list(self._locks)
            for lock in locks:
                lock.lease_refreshed(lease_id)
        return iter([LeaseKeepAliveResponse(lease_id, ttl)])

    @handle_errors
    def get_lease_info(self, lease_id: int) -> LeaseTimeToLiveResponse:
        """A lease as etcd reports it, with its keys (``TTL`` -1 when it does not exist)."""
        try:
            info = self.native.lease_info(lease_id, keys=True)
        except LeaseNotFoundError:
            return LeaseTimeToLiveResponse(lease_id, -1, 0, [])
        return LeaseTimeToLiveResponse(info.id, info.ttl, info.granted_ttl, info.keys, info.header)

    def lock(self, name: str | bytes, ttl: int = 60) -> Lock:
        """A :class:`Lock` named ``name`` that expires ``ttl`` seconds after it was acquired
        or refreshed (no I/O here)."""
        return Lock(name, ttl=ttl, etcd_client=self)

    # -- cluster ------------------------------------------------------------------------------

    def _member(self, m: Any) -> Member:
        return Member(m.id, m.name, m.peer_urls, m.client_urls, etcd_client=self)

    @handle_errors
    def add_member(self, urls: str | Sequence[str]) -> Member:
        """Add a member with these peer URLs to the cluster; the new :class:`Member`."""
        return self._member(self.native.members.add(urls))

    @handle_errors
    def remove_member(self, member_id: int) -> None:
        """Remove a member from the cluster."""
        self.native.members.remove(member_id)

    @handle_errors
    def update_member(self, member_id: int, peer_urls: str | Sequence[str]) -> None:
        """Change a member's peer URLs."""
        self.native.members.update(member_id, peer_urls)

    @property
    def members(self) -> Iterator[Member]:
        """The cluster's members (an iterator of :class:`Member`; one request, answered by
        the member the client talks to, with or without a leader, as python-etcd3's was)."""
        with translated():
            listed = self.native.members.list(serializable=True)
        return iter([self._member(m) for m in listed])

    @handle_errors
    def status(self) -> Status:
        """The :class:`Status` of the member the client talks to."""
        st = self.native.maintenance.status()
        leader = next((m for m in self.members if m.id == st.leader), None)
        return Status(st.version, st.db_size, leader, st.raft_index, st.raft_term)

    @handle_errors
    def compact(self, revision: int, physical: bool = False) -> None:
        """Compact the history up to ``revision``."""
        self.native.compact(revision, physical=physical)

    @handle_errors
    def defragment(self) -> None:
        """Defragment the backend of the member the client talks to. With ``timeout=None``
        it waits as long as etcd takes, as python-etcd3's did (a large backend takes longer
        than etcdkit's default 5 s), on a client of its own, with no timeout (a hung etcd too);
        and as python-etcd3's, it raises :class:`ConnectionFailedError` at once when etcd
        refuses the connection (it does not wait for etcd to come back). :meth:`close` ends
        it."""
        if self.timeout is not None:
            self.native.maintenance.defragment(self.native.endpoints[0])
            return
        patient = _NativeClient(**self._args, timeout=None, retry=_UntilRefused())
        try:
            with self._locks_mutex:
                closing = self._closing
                if not closing:
                    self._patients.add(patient)
            if closing:
                raise ClosedError("defragment: the client was closed")
            patient.maintenance.defragment(patient.endpoints[0])
        finally:
            with self._locks_mutex:
                self._patients.discard(patient)
            patient.close()

    @handle_errors
    def hash(self) -> int:
        """The hash of the whole backend of the member the client talks to (etcd's Hash, as
        python-etcd3 asked for it)."""
        return self.native.maintenance.hash(self.native.endpoints[0])

    @handle_errors
    def create_alarm(self, member_id: int = 0) -> list[Alarm]:
        """Raise the NOSPACE alarm of member ``member_id`` by hand (0: of every member): etcd
        then refuses writes until it is disarmed. Returns the alarms raised, one per member.

        (python-etcd3 sent member id 0 as it was, which etcd records as one alarm of a member
        with id 0 and returned as ``[Alarm(1, 0)]``; etcdkit names real members only.)"""
        targets = [m.id for m in self.native.members.list()] if member_id == 0 else [member_id]
        raised = []
        for mid in targets:
            raised += self.native.maintenance.activate(KitAlarm(mid, "NOSPACE"))
        return [Alarm(ALARM_TYPES.get(a.kind, 0), a.member_id) for a in raised]

    @handle_errors
    def list_alarms(self, member_id: int = 0, alarm_type: str = "none") -> Iterator[Alarm]:
        """The active alarms (of member ``member_id``; 0: of every member), of
        ``alarm_type`` "no space" only, or of every type for "none"."""
        if alarm_type not in ("none", "no space"):
            raise ValueError(f"Unknown alarm type: {alarm_type}")
        found = [
            Alarm(ALARM_TYPES.get(a.kind, 0), a.member_id)
            for a in self.native.maintenance.alarms()
            if member_id in (0, a.member_id) and (alarm_type == "none" or a.kind == "NOSPACE")
        ]
        return iter(found)

    @handle_errors
    def disarm_alarm(self, member_id: int = 0) -> list[Alarm]:
        """Disarm the NOSPACE alarm of member ``member_id`` (0: of every member); the
        alarms disarmed."""
        done, stray = [], 0
        for a in self.native.maintenance.alarms():
            if a.kind != "NOSPACE" or member_id not in (0, a.member_id):
                continue
            if a.member_id == 0:  # raised by python-etcd3's create_alarm(): see the docs
                stray += 1
                continue
            self.native.maintenance.disarm(KitAlarm(a.member_id, a.kind))
            done.append(Alarm(ALARM_TYPES["NOSPACE"], a.member_id))
        if stray:
            raise Etcd3Exception(
                "a NOSPACE alarm of member id 0 (raised by python-etcd3's create_alarm()) is "
                "active; etcdkit disarms the alarms of real members only: disarm it with "
                "`etcdctl alarm disarm`"
                + (f" (disarmed meanwhile: {[hex(a.member_id) for a in done]})" if done else "")
            )
        return done

    @handle_errors
    def snapshot(self, file_obj: IO[bytes]) -> None:
        """Write a snapshot of the backend (what ``etcdctl snapshot save`` writes) into
        ``file_obj``, a binary file open for writing."""
        with tempfile.TemporaryDirectory(prefix="etcdkit-compat-") as tmp:
            path = os.path.join(tmp, "snapshot.db")
            self.native.maintenance.snapshot(path)
            with open(path, "rb") as f:
                shutil.copyfileobj(f, file_obj)


def client(
    host: str = "localhost",
    port: int = 2379,
    ca_cert: str | None = None,
    cert_key: str | None = None,
    cert_cert: str | None = None,
    timeout: float | None = None,
    user: str | None = None,
    password: str | None = None,
    grpc_options: Sequence[tuple[str, Any]] | None = None,
) -> Etcd3Client:
    """An :class:`Etcd3Client` (python-etcd3's ``etcd3.client()``)."""
    return Etcd3Client(
        host=host,
        port=port,
        ca_cert=ca_cert,
        cert_key=cert_key,
        cert_cert=cert_cert,
        timeout=timeout,
        user=user,
        password=password,
        grpc_options=grpc_options,
    )


def _prefix(prefix: str | bytes) -> str | bytes:
    """``prefix``, refused when empty as python-etcd3 refused it (IndexError, before anything
    was sent): here an empty prefix would be every key (``delete_prefix("")`` deleted them
    all)."""
    if isinstance(prefix, str | bytes) and not prefix:
        raise IndexError(
            "an empty prefix (python-etcd3 refused it with IndexError too); every key is get_all()"
        )
    return prefix


def _responses(result: TxnResult) -> list[Any]:
    """python-etcd3's shapes of a transaction's responses: a get's is a list of ``(value,
    KVMetadata)``, any other a :class:`ResponseOp`."""
    return [
        [(kv.value, KVMetadata(kv, result.header)) for kv in res.kvs]
        if isinstance(res, RangeResult)
        else _response_op(res, result.header)
        for res in result.responses
    ]


def _response_op(
    res: RangeResult | PutResult | DeleteResult | TxnResult, header: ResponseHeader | None
) -> ResponseOp:
    """The :class:`ResponseOp` of one operation's result (a nested transaction's responses are
    all ResponseOps, as etcd's messages were in python-etcd3)."""
    if isinstance(res, RangeResult):
        return ResponseOp(response_range=res)
    if isinstance(res, PutResult):
        put_header = header_or_revision(res.header or header, res.revision)
        return ResponseOp(response_put=PutResponse(put_header, res.prev_kv or NO_KV))
    if isinstance(res, TxnResult):
        inner = [_response_op(r, res.header or header) for r in res.responses]
        return ResponseOp(response_txn=TxnResponse(res.succeeded, inner, res.header))
    return ResponseOp(response_delete_range=res)
