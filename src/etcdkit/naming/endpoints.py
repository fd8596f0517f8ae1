"""EndpointManager: the endpoints of a gRPC target in etcd, as Go's ``endpoints.Manager``.

``etcd.endpoint_manager(target)`` stands for Go's ``endpoints.NewManager(client, target)``:
one key per endpoint under ``target + "/"``, valued with Go's JSON record (see
:mod:`etcdkit.naming._record`). Go's ``etcd:///target`` resolver and Go's ``List`` /
``NewWatchChannel`` read what it writes, and it reads what they write.

Written on the public client only (:class:`etcdkit._surface.Etcd`): ``put`` / ``delete`` /
``range`` for the manager's calls, ``watch_prefix`` for its exact views, ``persistent_lease``
for a registration that comes back by itself.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from etcdkit._blocking.twin import PortalLike, Twin, blocking, mirror
from etcdkit._surface import Etcd
from etcdkit._types import check_int64
from etcdkit.naming._record import Endpoint, decode_endpoint, encode_endpoint, metadata_is_safe
from etcdkit.recipes.persistent_lease import PersistentLease

if TYPE_CHECKING:
    from etcdkit import PrefixWatch, SyncPersistentLease, SyncPrefixWatch

__all__ = ["EndpointManager", "SyncEndpointManager", "endpoint_item"]

log = logging.getLogger("etcdkit.naming")

_METADATA_WARNING = (
    "endpoint metadata for target %r is a %s, not a string: Go's etcd resolver puts it into "
    "gRPC address attributes, where a map or a list crashes Go clients (etcd-io/etcd#19700) "
    "and any other value is no string to Go code reading it. Pass a string (e.g. JSON text) "
    "if Go services resolve this target."
)


def _same(addr: str, value: bytes) -> bool:
    """Whether ``value`` is an endpoint record of ``addr`` (another registration of it)."""
    try:
        return decode_endpoint(value).addr == addr
    except ValueError:
        return False


def endpoint_item(key: bytes, value: bytes) -> tuple[str, Endpoint]:
    """The ``watch_prefix`` transform of endpoint records: (the key as text, its
    :class:`Endpoint`). Raises ValueError for a record Go would skip (or a key that is not
    UTF-8), which the watch leaves out and counts."""
    return key.decode(), decode_endpoint(value)


class EndpointManager:
    """The endpoints of *target*, as Go's ``endpoints.Manager`` keeps them in etcd.

    Create with ``etcd.endpoint_manager(target)`` (no I/O). Keys are ``target + "/" + ...``
    (``register`` uses ``target + "/" + addr``, as Go's docs do); values are Go's JSON
    ``{"Op":0,"Addr":...,"Metadata":...}``.

    - ``await add(key, addr, metadata=None, lease=0)`` / ``await delete(key)``: Go's
      ``AddEndpoint`` / ``DeleteEndpoint``.
    - ``await list()``: ``{key: Endpoint}``, Go's ``List``.
    - ``watch()``: exact views of the endpoints with the changes since the last one.
    - ``register(addr, metadata=None, ttl=10)``: keep one endpoint registered while open.

    Records that do not decode (Go would skip them too) are left out, logged once and counted
    (``skipped`` for ``list()``, ``watch.stats.invalid_records`` for a watch); so are records
    nested deeper than we read (256 levels; Go reads 10,000). One record never fails a call.

    Go's ``List`` and ``NewWatchChannel`` (and so its resolver) read the prefix *target*
    without the slash: a Go client of ``svc`` also picks up keys under ``svc-v2/`` or a key
    ``svc`` itself. We read ``target + "/"`` only. Name targets so that none is a prefix of
    another, and both sides see the same endpoints.
    """

    def __init__(self, etcd: Etcd, target: str) -> None:
        if not isinstance(target, str):
            raise TypeError(f'target must be a str such as "services/api", got {target!r:.80}')
        if not target:
            raise ValueError('target must not be empty; pass a name such as "services/api"')
        self._etcd = etcd
        self._target = target
        self._prefix = target + "/"
        self._skipped = 0
        self._logged: set[tuple[bytes, int]] = set()  # skipped records logged: (key, mod_rev)
        self._warned_metadata = False

    def __repr__(self) -> str:
        return f"<EndpointManager target={self._target!r}>"

    @property
    def target(self) -> str:
        """The target: its endpoints are the keys under ``target + "/"``."""
        return self._target

    @property
    def prefix(self) -> str:
        """``target + "/"``: the key prefix of the endpoints."""
        return self._prefix

    @property
    def skipped(self) -> int:
        """How many records ``list()`` left out so far because they do not decode."""
        return self._skipped

    def key_for(self, addr: str) -> str:
        """The key :meth:`register` keeps for *addr*: ``target + "/" + addr``."""
        encode_endpoint(addr)  # the checks of addr: TypeError / ValueError
        return self._prefix + addr

    async def add(self, key: str, addr: str, metadata: Any = None, *, lease: int = 0) -> int:
        """Store endpoint ``Endpoint(addr, metadata)`` at *key* (Go's ``AddEndpoint``), under
        lease *lease* if not 0; returns the revision of the write.

        Raises ValueError when *key* does not start with ``target + "/"`` (as Go does), and
        TypeError / ValueError for an *addr* or *metadata* that cannot be a record or a *lease*
        that is not an int / not an int64 >= 0 (as ``put`` does), before any I/O; the client's
        errors (EtcdTimeoutError, LeaseNotFoundError, ...) otherwise.
        Metadata that is not a string or None is written, with a warning logged once.
        """
        self._check_key(key)
        value = self._encode(addr, metadata)
        check_int64(lease, "lease", hint=" (a lease id, 0 = none)")  # the checks of put()
        return await self._etcd.put(key, value, lease=lease)

    async def delete(self, key: str) -> bool:
        """Delete the endpoint at *key* (Go's ``DeleteEndpoint``); True if it existed.

        Raises ValueError when *key* does not start with ``target + "/"``, before any I/O.
        """
        self._check_key(key)
        return await self._etcd.delete(key)

    async def list(self) -> dict[str, Endpoint]:
        """Every endpoint of the target, ``{key: Endpoint(addr, metadata)}`` (Go's ``List``),
        read at one revision. Records that do not decode are left out, logged once each and
        counted in :attr:`skipped`. Raises the client's errors."""
        result = await self._etcd.range(self._prefix, prefix=True)
        endpoints: dict[str, Endpoint] = {}
        for kv in result.kvs:
            try:
                key, endpoint = endpoint_item(kv.key, kv.value)
            except (ValueError, RecursionError) as exc:  # (the codec makes the latter a ValueError)
                self._skipped += 1
                if (kv.key, kv.mod_revision) not in self._logged:
                    if len(self._logged) > 1000:  # bounded: a flood is logged again, not kept
                        self._logged.clear()
                    self._logged.add((kv.key, kv.mod_revision))
                    log.warning("endpoint record %r left out: %s", kv.key, exc)
                continue
            endpoints[key] = endpoint
        return endpoints

    def watch(self) -> PrefixWatch[str, Endpoint]:
        """Exact views of the endpoints: ``async with eps.watch() as w: async for view in w:``.

        Each view is a :class:`etcdkit.Snapshot`: ``view.tree`` is ``{key: Endpoint}`` at
        ``view.revision``, ``view.changes`` what changed since the view before (ADDED /
        UPDATED / REMOVED). It is a ``watch_prefix`` on ``target + "/"``: it resumes after
        faults without losing a change, and a slow reader gets the newest view next.
        ``w.synced(timeout)`` waits for the first view. Records that do not decode are left out
        and counted (``w.stats.invalid_records``).
        """
        return self._etcd.watch_prefix(self._prefix, endpoint_item)

    def register(self, addr: str, metadata: Any = None, ttl: int = 10) -> PersistentLease:
        """Keep ``target/addr`` registered with ``Endpoint(addr, metadata)`` while open:
        ``async with eps.register(addr) as reg:`` (``await reg.registered(timeout)`` waits
        for etcd to hold it).

        A :class:`etcdkit.PersistentLease` of *ttl* seconds: the key comes back after a
        delete, a lease revoke or expiry, or an outage; leaving the block removes it at once.
        Another registration of the same address (another process's, say) takes the key over
        and keeps it (the last one wins, as in Go): this one then stands by (LOST) and puts it
        back at once when the key goes.
        Raises TypeError / ValueError for a bad *addr*, *metadata* or *ttl* (no I/O).
        """
        value = self._encode(addr, metadata)
        # Two registrations of one address (an old and a new process overlapping on one
        # host:port): the last one registered keeps the key, as with Go's endpoints.Manager;
        # the other stands by and puts its own back at once when that one goes. (Each put its
        # own back over the other's, at backoff pace, for as long as both were open.)
        return PersistentLease(
            self._etcd, self._prefix + addr, value, ttl, yield_to=functools.partial(_same, addr)
        )

    def _check_key(self, key: object) -> None:
        if not isinstance(key, str):
            raise TypeError(f"key must be a str starting with {self._prefix!r}, got {key!r:.80}")
        if not key.startswith(self._prefix):
            raise ValueError(
                f"endpoint key must start with the target and a slash, {self._prefix!r} "
                f"(as Go's endpoints.Manager requires), got {key!r:.80}"
            )

    def _encode(self, addr: str, metadata: Any) -> str:
        value = encode_endpoint(addr, metadata)
        if not metadata_is_safe(metadata) and not self._warned_metadata:
            self._warned_metadata = True
            log.warning(_METADATA_WARNING, self._target, type(metadata).__name__)
        return value


class SyncEndpointManager(Twin[EndpointManager]):
    """The blocking twin of :class:`EndpointManager` (``etcdkit.Client.endpoint_manager``):
    ``add``, ``delete`` and ``list`` block; ``watch()`` is a plain iterator (``with eps.watch()
    as w: for view in w:``), ``register()`` a context manager (``with eps.register(addr):``).
    """

    def __init__(
        self,
        portal: PortalLike,
        aio: EndpointManager,
        *,
        watch_twin: Callable[
            [PortalLike, PrefixWatch[str, Endpoint]], SyncPrefixWatch[str, Endpoint]
        ],
        lease_twin: Callable[[PortalLike, PersistentLease], SyncPersistentLease],
    ) -> None:
        super().__init__(portal, aio)
        self._watch_twin = watch_twin
        self._lease_twin = lease_twin

    target: mirror[str] = mirror(EndpointManager.target, direct=True)
    prefix: mirror[str] = mirror(EndpointManager.prefix, direct=True)
    skipped: mirror[int] = mirror(EndpointManager.skipped)
    add = blocking(EndpointManager.add)
    delete = blocking(EndpointManager.delete)
    list = blocking(EndpointManager.list)

    def key_for(self, addr: str) -> str:
        """See :meth:`EndpointManager.key_for`."""
        return self.aio.key_for(addr)

    def watch(self) -> SyncPrefixWatch[str, Endpoint]:
        """See :meth:`EndpointManager.watch`; iterate with a plain ``for``."""
        return self._watch_twin(self.portal, self.portal.run_sync(self.aio.watch))

    def register(self, addr: str, metadata: Any = None, ttl: int = 10) -> SyncPersistentLease:
        """See :meth:`EndpointManager.register`; use with ``with``."""
        lease = self.portal.run_sync(functools.partial(self.aio.register, addr, metadata, ttl))
        return self._lease_twin(self.portal, lease)
