"""The conformance suite every etcdkit.cluster implementation must pass.

Ported from Go's code-server ``pkg/cluster/tests`` (happy path, watchers, blocked watcher), with
our latest-wins watch semantics, plus invalid input, foreign records and several processes.
Each ``check_*`` takes a :class:`ClusterFactory`; a test module parametrizes over ``CHECKS``::

    @pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
    async def test_conformance(check: Check, factory: MyFactory) -> None:
        await check(factory)

The caller closes whatever the factory created, even when a check fails.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

import pytest

from etcdkit import ClosedError
from etcdkit.cluster import Cluster, Member, MemberWatch, member_key

BOUND = 5.0  # seconds any change may take to reach a view
QUIET = 0.2  # seconds to wait when checking that nothing arrives

View = tuple[Member, ...]


class ClusterFactory(Protocol):
    """Makes clusters on one shared keyspace ("processes"), and writes to it as others would."""

    @property
    def root(self) -> str: ...

    async def __call__(self) -> Cluster:
        """A new cluster on the shared keyspace, as a new process would open it."""
        ...

    async def put_raw(self, key: bytes, value: bytes) -> None: ...

    async def delete_raw(self, key: bytes) -> None: ...


Check = Callable[[ClusterFactory], Awaitable[None]]


async def next_view(watch: MemberWatch, timeout: float = BOUND) -> View | None:
    """The watch's next view, or None once it ended."""
    try:
        return await asyncio.wait_for(anext(watch), timeout)
    except StopAsyncIteration:
        return None


async def view_where(cluster: Cluster, done: Callable[[View], bool]) -> View:
    """The first view of *cluster* (current or later) for which ``done(view)`` holds."""
    async with cluster.watch_members() as watch:
        while True:
            view = await next_view(watch)
            assert view is not None, "the watch ended"
            if done(view):
                return view


async def nothing_arrives(watch: MemberWatch) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(anext(watch), QUIET)


async def check_happy_path(new_cluster: ClusterFactory) -> None:
    """Ten members register, change their data and deregister; each step is one new view."""
    cluster = await new_cluster()
    revisions = [cluster.revision]

    async with cluster.watch_members() as watch:

        async def await_members() -> View:
            view = await next_view(watch)
            assert view is not None
            assert view == cluster.members
            assert list(view) == sorted(view, key=lambda m: m.id)
            revisions.append(cluster.revision)
            return view

        memberships = sorted((cluster.membership() for _ in range(10)), key=lambda m: m.id)
        assert all(not m.registered and m.data == "" for m in memberships)
        expected: list[Member] = []
        assert await await_members() == ()

        for i, m in enumerate(memberships):
            m.set_data(f"node-{i}")
            expected.append(Member(m.id, m.data))
            rev = await m.register(timeout=BOUND)
            assert await m.register(timeout=BOUND) >= rev  # a no-op
            assert m.registered
            assert await await_members() == tuple(expected)

        for i, m in enumerate(memberships):
            m.set_data(f"node-{10 + i}")
            expected[i] = m.member
            await m.synced(timeout=BOUND)
            assert await await_members() == tuple(expected)

        while memberships:
            m = memberships.pop(0)
            await m.deregister(timeout=BOUND)
            await m.deregister(timeout=BOUND)  # a no-op
            assert not m.registered
            expected.pop(0)
            assert await await_members() == tuple(expected)

        await nothing_arrives(watch)
    assert revisions[1:] == sorted(set(revisions[1:])), f"revisions went back: {revisions}"
    await cluster.aclose()


async def check_watchers(new_cluster: ClusterFactory) -> None:
    """Five watches follow one member; closing some ends only those; closing the cluster ends
    all (a reader waiting at that moment too), and the closed cluster refuses new work."""
    cluster = await new_cluster()
    watches = [cluster.watch_members() for _ in range(5)]
    for w in watches:
        assert await next_view(w) == ()

    member = cluster.membership()
    await member.register(timeout=BOUND)
    for w in watches:
        assert await next_view(w) == (member.member,)

    for w in watches[::2]:
        await w.aclose()
        await w.aclose()  # idempotent
    member.set_data("my data")
    await member.synced(timeout=BOUND)
    for i, w in enumerate(watches):
        if i % 2 == 0:
            assert await next_view(w) is None
        else:
            assert await next_view(w) == (Member(member.id, "my data"),)

    waiting = asyncio.create_task(next_view(watches[1]))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    await cluster.aclose()
    assert await asyncio.wait_for(waiting, BOUND) is None
    for w in watches:
        assert await next_view(w) is None

    await cluster.aclose()  # idempotent
    assert not member.registered
    with pytest.raises(ClosedError):
        cluster.watch_members()
    with pytest.raises(ClosedError):
        cluster.membership()
    with pytest.raises(ClosedError):
        member.set_data("after close")
    with pytest.raises(ClosedError):
        await member.register(timeout=BOUND)


async def check_slow_watcher(new_cluster: ClusterFactory) -> None:
    """Watches that do not read block nobody, and skip to the newest view when they do."""
    cluster = await new_cluster()
    watches = [cluster.watch_members() for _ in range(5)]
    for w in watches:
        assert await next_view(w) == ()

    member = cluster.membership("0")
    await member.register(timeout=BOUND)
    expected = (member.member,)
    # Phase 1: only the even watches read; the odd ones fall behind.
    for i in range(5):
        for w in watches[::2]:
            assert await next_view(w) == expected
        member.set_data(str(i + 1))
        await member.synced(timeout=BOUND)
        expected = (member.member,)

    # Phase 2: everybody gets the newest view; the slow ones skipped "0" to "4".
    for w in watches:
        assert await next_view(w) == expected == (Member(member.id, "5"),)
        await nothing_arrives(w)

    # Phase 3: and all keep following.
    member.set_data("6")
    await member.synced(timeout=BOUND)
    for w in watches:
        assert await next_view(w) == (Member(member.id, "6"),)
    await cluster.aclose()


async def check_invalid_values(new_cluster: ClusterFactory) -> None:
    """Bad arguments are refused before any I/O; records that are not valid members (written
    by others) stay out of the view, and valid ones in Go's format join it."""
    cluster = await new_cluster()
    with pytest.raises(TypeError):
        cluster.membership(1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        cluster.membership(id=5)  # type: ignore[arg-type]
    for bad_id in ("", "a/b"):
        with pytest.raises(ValueError, match="member id"):
            cluster.membership(id=bad_id)
    with pytest.raises(ValueError, match="surrogate"):
        cluster.membership("\ud800")
    m = cluster.membership("ok")
    with pytest.raises(TypeError):
        m.set_data(None)  # type: ignore[arg-type]
    for bad_timeout, error in ((-1, ValueError), (float("nan"), ValueError), ("1", TypeError)):
        with pytest.raises(error, match="timeout"):
            await m.register(timeout=bad_timeout)  # type: ignore[arg-type]
    assert m.data == "ok"
    assert not m.registered
    assert cluster.members == ()

    root = new_cluster.root
    await new_cluster.put_raw(member_key(root, "bogus"), b"not json")
    await new_cluster.put_raw(member_key(root, "x"), b'{"id":"y","data":""}')
    await new_cluster.put_raw(member_key(root, "n"), b'{"id":"n","data":5}')
    await new_cluster.put_raw(member_key(root, "z"), b'["z"]')
    await new_cluster.put_raw(member_key(root, "go-1"), b'{"id":"go-1","data":"10.0.0.9:80"}')
    view = await view_where(cluster, lambda v: len(v) > 0)
    assert view == (Member("go-1", "10.0.0.9:80"),)

    # Go's json.Unmarshal matches field names case-insensitively.
    await new_cluster.put_raw(member_key(root, "go-2"), b'{"ID":"go-2","Data":"d","x":1}')
    view = await view_where(cluster, lambda v: len(v) == 2)
    assert view == (Member("go-1", "10.0.0.9:80"), Member("go-2", "d"))

    # A record that turns invalid leaves the view; a valid one comes back.
    await new_cluster.put_raw(member_key(root, "go-1"), b"{")
    assert await view_where(cluster, lambda v: len(v) == 1) == (Member("go-2", "d"),)
    await new_cluster.put_raw(member_key(root, "x"), b'{"id":"x","data":"fixed"}')
    view = await view_where(cluster, lambda v: len(v) == 2)
    assert view == (Member("go-2", "d"), Member("x", "fixed"))
    for key in ("bogus", "x", "n", "z", "go-1", "go-2"):
        await new_cluster.delete_raw(member_key(root, key))
    assert await view_where(cluster, lambda v: not v) == ()
    await cluster.aclose()


async def check_processes(new_cluster: ClusterFactory) -> None:
    """Two clusters on one keyspace see each other's members; closing one removes its members
    from the other's view (the views on the way only ever lose members)."""
    a, b = await new_cluster(), await new_cluster()
    mine = [a.membership(f"a{i}") for i in range(3)]
    theirs = b.membership("b0")
    for m in (*mine, theirs):
        await m.register(timeout=BOUND)
    everyone = tuple(sorted(m.member for m in (*mine, theirs)))
    assert await view_where(a, lambda v: len(v) == 4) == everyone
    assert await view_where(b, lambda v: len(v) == 4) == everyone

    async with b.watch_members() as watch:
        assert await next_view(watch) == everyone
        await a.aclose()
        assert not any(m.registered for m in mine)
        view = everyone
        while view != (theirs.member,):
            smaller = await next_view(watch)
            assert smaller is not None
            assert set(smaller) < set(view), (view, smaller)
            view = smaller
        await nothing_arrives(watch)
    await b.aclose()


CHECKS: list[Check] = [
    check_happy_path,
    check_watchers,
    check_slow_watcher,
    check_invalid_values,
    check_processes,
]
