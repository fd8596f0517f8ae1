"""The retry rule of a transaction, against a real member that stops answering mid-call.

A transaction that only reads is sent again elsewhere when its member stops answering; one that
writes is not (it may have been applied), and the error says so. The rule lives in one place
(``Op.writes``); these tests drive it on a 3-member cluster with one member SIGSTOPped while the
transactions are in flight on it.
"""

from __future__ import annotations

import asyncio

import pytest

from _helpers import fresh_client
from etcdkit import (
    AsyncClient,
    Compare,
    ConnectionUnavailableError,
    EtcdTimeoutError,
    Op,
    RangeResult,
)
from etcdkit.testing import EtcdCluster

# The client's channel options detect a hung peer within keepalive_time + keepalive_timeout
# (5 s + 3 s); the calls' deadline must be longer, so that the connection's end, not the
# deadline, is what the calls in flight meet.
DEADLINE = 30.0


@pytest.mark.cluster
@pytest.mark.slow
async def test_a_read_only_txn_is_sent_again_and_a_writing_one_is_not(
    etcd_cluster: EtcdCluster, etcd_prefix: str
) -> None:
    p = etcd_prefix
    members = etcd_cluster.members
    hung = members[0]  # the client prefers the first endpoint: its calls go there
    async with (
        fresh_client(etcd_cluster.endpoints, timeout=DEADLINE) as client,
        AsyncClient([m.endpoint for m in members[1:]], timeout=10) as other,
    ):
        await client.put(p + "k", "1")
        before = await client.range(p + "k")
        assert before.header is not None
        hung_id = before.header.member_id  # the member the client's calls go to
        async with AsyncClient(hung.endpoint) as direct:
            there = await direct.range(p + "k")
        assert there.header is not None
        assert hung_id == there.header.member_id
        hung.pause()
        try:
            read = asyncio.create_task(
                client.txn([Compare.value(p + "k", "==", "1")], [Op.get(p + "k")], [])
            )
            write = asyncio.create_task(client.txn([], [Op.put(p + "w", "x")], []))
            async with asyncio.timeout(DEADLINE - 5):
                res = await read
                with pytest.raises(ConnectionUnavailableError) as raised:
                    await write
            assert res.succeeded
            (got,) = res.responses
            assert isinstance(got, RangeResult)
            assert [kv.value for kv in got.kvs] == [b"1"]
            assert res.header is not None
            assert res.header.member_id != hung_id  # answered by another member
            msg = str(raised.value)
            assert "txn" in msg
            assert "may or may not have been applied" in msg, msg
            # the client is usable at once, on the live members
            assert await client.txn([], [Op.put(p + "after", "y")], [])
        finally:
            hung.resume()
        # The write was not sent again: applied once or not at all (the hung member may still
        # apply what it had received before its connection was dropped, once it resumes).
        kv = await other.get(p + "w")
        assert kv is None or (kv.value, kv.version) == (b"x", 1)


@pytest.mark.cluster
@pytest.mark.slow
async def test_a_txn_past_its_deadline_on_a_hung_member_says_so(
    etcd_cluster: EtcdCluster, etcd_prefix: str
) -> None:
    p = etcd_prefix
    hung = etcd_cluster.members[0]
    async with fresh_client(etcd_cluster.endpoints, timeout=1.0) as client:
        await client.put(p + "k", "1")
        hung.pause()
        try:
            with pytest.raises(EtcdTimeoutError) as raised:
                await client.txn([], [Op.put(p + "w", "x")], [])
            assert "may or may not have been applied" in str(raised.value)
            # a read-only one is not retried past its deadline either, but the next call goes
            # to a live member (the deadline counted as the member's failure)
            res = await client.txn([], [Op.get(p + "k")], [])
            (got,) = res.responses
            assert isinstance(got, RangeResult)
            assert [kv.value for kv in got.kvs] == [b"1"]
        finally:
            hung.resume()
