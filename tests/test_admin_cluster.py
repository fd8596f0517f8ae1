"""The administration API on a real 3-member cluster of this module's own (membership changes
must not touch the shared ``etcd_cluster``): each member's status and hash, moving the
leadership, and a learner that joins for real, catches up, is promoted, moves its peer URL and
is removed; on both faces."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import pytest

import etcdkit
from _helpers import fresh_client
from etcdkit import AsyncClient, Client, Member
from etcdkit.testing import HOST, EtcdCluster, EtcdServer, free_port

pytestmark = pytest.mark.cluster

T = TypeVar("T")
WAIT = 30.0  # etcd refuses membership changes in a cluster up for less than 5 s, then agrees
TRANSIENT = (  # refusals that pass: a cluster not up 5 s, a learner behind, a revision not applied
    etcdkit.ServerError,
    etcdkit.ConnectionUnavailableError,
    etcdkit.InvalidArgumentError,
)


@pytest.fixture(scope="module")
def cluster() -> Iterator[EtcdCluster]:
    with EtcdCluster(size=3) as cluster:
        yield cluster


async def eventually(call: Callable[[], Awaitable[T]], *, bound: float = WAIT) -> T:
    """``call()``'s result, once etcd stops refusing it (transient refusals only)."""
    deadline = time.monotonic() + bound
    while True:
        try:
            return await call()
        except TRANSIENT:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def voters(members: list[Member]) -> list[int]:
    return sorted(m.id for m in members if not m.is_learner)


async def test_status_and_hash_of_each_member(cluster: EtcdCluster) -> None:
    async with fresh_client(cluster.endpoints) as etcd:
        members = await etcd.members.list()
        assert sorted(m.name for m in members) == ["m0", "m1", "m2"]
        assert not any(m.is_learner for m in members)
        assert sorted(url for m in members for url in m.client_urls) == sorted(cluster.endpoints)
        statuses = [await etcd.maintenance.status(e) for e in cluster.endpoints]
        assert sorted(s.header.member_id for s in statuses) == voters(members)
        assert len({s.leader for s in statuses}) == 1
        assert statuses[0].leader in voters(members)

        revision = await etcd.put("/admin-cluster/k", "v")

        async def hashes() -> set[int]:
            return {(await etcd.maintenance.hash_kv(e, revision)).hash for e in cluster.endpoints}

        assert len(await eventually(hashes)) == 1  # every member agrees at that revision
        await etcd.maintenance.defragment(cluster.endpoints[1])


async def test_move_leader(cluster: EtcdCluster) -> None:
    async with fresh_client(cluster.endpoints) as etcd:
        leader = (await etcd.maintenance.status()).leader
        target = next(i for i in voters(await etcd.members.list()) if i != leader)
        await etcd.maintenance.move_leader(target)  # returns once the target leads
        assert (await etcd.maintenance.status(cluster.leader().endpoint)).leader == target
        await etcd.maintenance.move_leader(target)  # already the leader: nothing to do
        with pytest.raises(etcdkit.ServerError, match="bad leader transferee"):
            await etcd.maintenance.move_leader(target ^ 1)  # not a member

        # a client that cannot reach the leader says so
        follower = next(m for m in cluster.members if m.endpoint != cluster.leader().endpoint)
        async with fresh_client(follower.endpoint) as partial:
            with pytest.raises(etcdkit.ConnectionUnavailableError, match="not among"):
                await partial.maintenance.move_leader(target)


def test_move_leader_threaded(cluster: EtcdCluster, no_leaked_threads: None) -> None:
    with Client(cluster.endpoints) as etcd:
        leader = etcd.maintenance.status().leader
        target = next(i for i in voters(etcd.members.list()) if i != leader)
        etcd.maintenance.move_leader(target)
        assert etcd.maintenance.status(cluster.leader().endpoint).leader == target


async def test_learner_joins_is_promoted_moves_and_leaves(
    cluster: EtcdCluster, etcd_server_factory: Callable[..., EtcdServer]
) -> None:
    client_port, peer_port, new_peer_port = free_port(), free_port(), free_port()
    peer, new_peer = f"http://{HOST}:{peer_port}", f"http://{HOST}:{new_peer_port}"
    endpoint = f"http://{HOST}:{client_port}"
    async with fresh_client([*cluster.endpoints, endpoint]) as etcd:
        before = await etcd.members.list()
        learner = await eventually(lambda: etcd.members.add(peer, learner=True))
        assert learner.peer_urls == [peer]
        assert (learner.name, learner.client_urls, learner.is_learner) == ("", [], True)
        assert learner in await etcd.members.list()
        with pytest.raises(etcdkit.ServerError, match="already exist"):
            await etcd.members.add(peer)

        # a real etcd joins as that learner; it also listens on the URL it moves to later
        initial = ",".join(f"{m.name}={m.peer_urls[0]}" for m in before) + f",m3={peer}"
        server = etcd_server_factory(
            name="m3",
            client_port=client_port,
            peer_port=peer_port,
            extra_args=[
                "--initial-cluster", initial,
                "--initial-cluster-state", "existing",
                "--listen-peer-urls", f"{peer},{new_peer}",
            ],
        )  # fmt: skip
        status = await etcd.maintenance.status(endpoint)
        assert status.is_learner is True
        assert status.header.member_id == learner.id
        joined = {m.id: m for m in await etcd.members.list()}[learner.id]
        assert (joined.name, joined.client_urls) == ("m3", [endpoint])

        await eventually(lambda: etcd.members.promote(learner.id))  # once it caught up
        promoted = {m.id: m for m in await etcd.members.list()}[learner.id]
        assert promoted.is_learner is False
        with pytest.raises(etcdkit.ServerError, match="can only promote a learner member"):
            await etcd.members.promote(learner.id)

        await etcd.members.update(learner.id, [new_peer])
        moved = {m.id: m for m in await etcd.members.list()}[learner.id]
        assert moved.peer_urls == [new_peer]
        revision = await etcd.put("/admin-cluster/after-move", "v")
        hash_kv = await eventually(lambda: etcd.maintenance.hash_kv(endpoint, revision))
        assert hash_kv.header.member_id == learner.id  # it follows the log at its new URL

        await etcd.members.remove(learner.id)
        assert sorted(m.id for m in await etcd.members.list()) == sorted(m.id for m in before)
        with pytest.raises(etcdkit.ServerError, match="member not found"):
            await etcd.members.remove(learner.id)
        deadline = time.monotonic() + WAIT
        while server.running and time.monotonic() < deadline:  # a removed member stops itself
            await asyncio.sleep(0.1)
        assert not server.running


def test_unstarted_member_threaded(cluster: EtcdCluster, no_leaked_threads: None) -> None:
    """A member added but never started, changed and removed on the threaded face."""
    with Client(cluster.endpoints) as etcd:
        peer = f"http://{HOST}:{free_port()}"
        before = etcd.members.list()
        learner = etcd.members.add([peer], learner=True)
        assert learner.is_learner
        etcd.members.update(learner.id, f"http://{HOST}:{free_port()}")
        with pytest.raises(etcdkit.ServerError, match="in sync with leader"):
            etcd.members.promote(learner.id)  # it never started: never caught up
        etcd.members.remove(learner.id)
        assert etcd.members.list() == before


async def test_cluster_still_serves(cluster: EtcdCluster) -> None:
    async with AsyncClient(cluster.endpoints) as etcd:
        assert len(await etcd.members.list()) == 3
        await etcd.put("/admin-cluster/last", "v")
        assert await etcd.maintenance.alarms() == []
