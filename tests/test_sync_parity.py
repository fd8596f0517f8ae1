"""The threaded face cannot drift from the asyncio one: same public names, same parameters."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

import etcdkit
import etcdkit.cluster
from etcdkit._blocking.twin import mirror

# what the recipes built on recipes/_hold.Hold call on it (no threaded use)
HOLD_HOOKS = {"acquire_with", "session_now", "requeue", "in_line", "stop_watching"}

# (asyncio class, threaded twin, names only the asyncio face has, names only the threaded has)
PAIRS: list[tuple[type[Any], type[Any], set[str], set[str]]] = [
    # adopt/disown, shared_session/release_session: for asyncio recipes that own background
    # work (threaded twins of recipes forward to the asyncio recipe, adopted on the loop)
    (
        etcdkit.AsyncClient,
        etcdkit.Client,
        {"aclose", "connect", "core", "adopt", "disown", "shared_session", "release_session"},
        {"aio", "run", "blocks_running_loops"},
    ),
    (etcdkit.PrefixWatch, etcdkit.SyncPrefixWatch, {"aclose"}, {"aio"}),
    (etcdkit.Watch, etcdkit.SyncWatch, set(), {"aio"}),
    (etcdkit.KeepAlive, etcdkit.SyncKeepAlive, set(), {"aio"}),
    (etcdkit.PersistentLease, etcdkit.SyncPersistentLease, {"aclose"}, {"aio"}),
    (etcdkit.Session, etcdkit.SyncSession, set(), {"aio"}),
    (etcdkit.cluster.EtcdBackedCluster, etcdkit.cluster.SyncCluster, {"aclose", "client"}, {"aio"}),
    (etcdkit.cluster.EtcdMembership, etcdkit.cluster.SyncMembership, set(), {"aio"}),
    (etcdkit.cluster.MemberWatch, etcdkit.cluster.SyncMemberWatch, {"aclose"}, {"aio"}),
    (etcdkit.Lock, etcdkit.SyncLock, set(), {"aio"}),
    (etcdkit.LockHold, etcdkit.SyncLockHold, set(), {"aio"}),
    (etcdkit.Election, etcdkit.SyncElection, set(), {"aio"}),
    (etcdkit.Campaign, etcdkit.SyncCampaign, set(), {"aio"}),
    (etcdkit.Leadership, etcdkit.SyncLeadership, set(), {"aio"}),
    (etcdkit.Members, etcdkit.SyncMembers, set(), {"aio"}),
    (etcdkit.Maintenance, etcdkit.SyncMaintenance, set(), {"aio"}),
    (etcdkit.Auth, etcdkit.SyncAuth, set(), {"aio"}),
    (etcdkit.Semaphore, etcdkit.SyncSemaphore, set(), {"aio"}),
    (etcdkit.Permit, etcdkit.SyncPermit, HOLD_HOOKS, {"aio"}),
    (etcdkit.RWLock, etcdkit.SyncRWLock, set(), {"aio"}),
    (etcdkit.RWHold, etcdkit.SyncRWHold, HOLD_HOOKS, {"aio"}),
    (etcdkit.Barrier, etcdkit.SyncBarrier, set(), {"aio"}),
    (etcdkit.DoubleBarrier, etcdkit.SyncDoubleBarrier, set(), {"aio"}),
    (etcdkit.Queue, etcdkit.SyncQueue, set(), {"aio"}),
    (etcdkit.PriorityQueue, etcdkit.SyncPriorityQueue, set(), {"aio"}),
    (etcdkit.Counter, etcdkit.SyncCounter, set(), {"aio"}),
    (etcdkit.Stm, etcdkit.SyncStm, set(), {"aio"}),
    (etcdkit.EndpointManager, etcdkit.SyncEndpointManager, set(), {"aio"}),
]

# asyncio protocol names and their blocking counterparts
DUNDERS = {
    "__aenter__": "__enter__",
    "__aexit__": "__exit__",
    "__aiter__": "__iter__",
    "__anext__": "__next__",
}


def public(cls: type[Any]) -> dict[str, Any]:
    names: dict[str, Any] = {}
    for klass in reversed(cls.__mro__[:-1]):
        for name, value in vars(klass).items():
            if not name.startswith("_") or name in DUNDERS or name in DUNDERS.values():
                names[name] = value
    names.pop("__await__", None)
    return names


def params(fn: Any) -> list[tuple[str, Any, Any]]:
    if isinstance(fn, property | mirror):
        return []
    sig = inspect.signature(fn)
    return [(p.name, p.kind, p.default) for p in sig.parameters.values() if p.name != "self"]


@pytest.mark.parametrize(("aio", "sync", "aio_only", "sync_only"), PAIRS)
def test_names_and_signatures_match(
    aio: type[Any], sync: type[Any], aio_only: set[str], sync_only: set[str]
) -> None:
    a = {DUNDERS.get(n, n): v for n, v in public(aio).items() if n not in aio_only}
    s = {n: v for n, v in public(sync).items() if n not in sync_only}
    a.pop("__init__", None)
    s.pop("__init__", None)
    assert sorted(set(a) - set(s)) == [], f"{sync.__name__} lacks these of {aio.__name__}"
    assert sorted(set(s) - set(a)) == [], f"{sync.__name__} has names {aio.__name__} lacks"
    for name in a:
        if name in ("__exit__", "__enter__", "__iter__", "__next__"):
            continue
        # a twin mirrors a property with etcdkit._blocking.twin.mirror
        assert isinstance(a[name], property) == isinstance(s[name], property | mirror), name
        assert params(a[name]) == params(s[name]), f"{sync.__name__}.{name} parameters differ"


def test_client_constructors_match() -> None:
    assert params(etcdkit.AsyncClient.__init__) == params(etcdkit.Client.__init__)


@pytest.mark.parametrize(("aio", "sync", "aio_only", "sync_only"), PAIRS)
def test_mirrored_attributes_declare_their_type(
    aio: type[Any], sync: type[Any], aio_only: set[str], sync_only: set[str]
) -> None:
    """Each ``mirror`` declares ``name: mirror[T]``, the same ``T`` as the property it mirrors
    returns: mypy infers ``T`` from the property, other type checkers (pyright, Pylance)
    cannot (a ``property`` is not generic) and saw the attribute as unknown."""
    for klass in sync.__mro__[:-1]:
        for name, value in vars(klass).items():
            if not isinstance(value, mirror):
                continue
            declared = klass.__annotations__.get(name)
            assert declared is not None, f"{klass.__name__}.{name}: no `{name}: mirror[T]`"
            returns = value._fget.__annotations__["return"]
            assert declared == f"mirror[{returns}]", f"{klass.__name__}.{name}"
