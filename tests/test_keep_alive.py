"""The public keepalive stream, ``etcd.keep_alive(lease_id)`` (Go's ``Lease.KeepAlive``), against
real etcd on both faces: renewals, the lease's end (revoked, expired), cancel, the client's
close, a cut connection (suspended, then renewed), bad input; and :class:`Session`, the recipe
built on it, still reads its statuses."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from _helpers import fresh_client
from etcdkit import (
    AsyncClient,
    Client,
    ClosedError,
    KeepAliveStatus,
    LeaseNotFoundError,
    SessionState,
)
from etcdkit.server import EtcdServer, Proxy

WAIT = 20.0


async def test_a_kept_lease_outlives_its_ttl_and_each_renewal_is_reported(
    etcd: AsyncClient,
) -> None:
    lease = await etcd.grant(3)
    try:
        async with etcd.keep_alive(lease.id, ttl=lease.ttl) as ka:
            assert ka.lease_id == lease.id
            assert ka.expires is not None
            seen: list[KeepAliveStatus] = []
            t0 = time.monotonic()
            async with asyncio.timeout(WAIT):
                async for status in ka:
                    seen.append(status)
                    if time.monotonic() - t0 > 4.5:  # past the lease's own TTL
                        break
            assert seen
            assert all(s == KeepAliveStatus(3, False) for s in seen)
            assert len(seen) >= 2  # renewed about every second (a third of 3 s)
            assert (await etcd.lease_info(lease.id)).ttl > 0
            assert ka.ttl == 3
    finally:
        await etcd.revoke(lease.id)


async def test_without_a_ttl_the_first_renewal_goes_at_once_and_tells_it(
    etcd: AsyncClient,
) -> None:
    lease = await etcd.grant(30)
    try:
        ka = etcd.keep_alive(lease.id)
        assert ka.ttl == 0
        assert ka.expires is None  # not started
        async with ka, asyncio.timeout(5.0):
            status = await anext(ka)  # at once, not 10 s later
        assert status == KeepAliveStatus(30, False)
        assert ka.ttl == 30
        assert ka.expires is None  # cancelled: no longer kept
    finally:
        await etcd.revoke(lease.id)


@pytest.mark.parametrize("given", [None, 1], ids=["ttl-unknown", "ttl-1"])
async def test_a_short_ttl_is_renewed_a_few_times_a_second_not_in_a_flood(
    etcd: AsyncClient, given: int | None
) -> None:
    """A lease of TTL 1 (or one whose TTL is not known before the first answer) is renewed
    about twice a second, as Go's client checks every 500 ms: its next renewal used to fall
    back inside the window just sent, thousands of requests a second. (A count of answers
    over 2 s, bounded far above what is due and far below a flood: no speed is measured.)"""
    lease = await etcd.grant(1)
    answers = 0

    def count() -> None:
        nonlocal answers
        answers += 1

    async with etcd.keep_alive(lease.id, ttl=given) as kept:
        kept.add_listener(count)
        await asyncio.sleep(2.0)
    assert 1 <= answers <= 20, f"{answers} renewals answered in 2 s (TTL {lease.ttl})"
    await etcd.revoke(lease.id)


async def test_a_revoked_lease_ends_the_iteration_with_lease_not_found(
    etcd: AsyncClient,
) -> None:
    lease = await etcd.grant(3)
    async with etcd.keep_alive(lease.id, ttl=3) as ka:
        await etcd.revoke(lease.id)

        async def read_all() -> list[KeepAliveStatus]:
            return [s async for s in ka]

        with pytest.raises(LeaseNotFoundError, match="expired or was revoked"):
            await asyncio.wait_for(read_all(), WAIT)
        assert ka.expires is None


async def test_a_lease_that_expired_before_the_keepalive_started_is_reported_gone(
    etcd: AsyncClient,
) -> None:
    lease = await etcd.grant(30)
    await etcd.revoke(lease.id)
    with pytest.raises(LeaseNotFoundError):
        async with etcd.keep_alive(lease.id) as ka, asyncio.timeout(WAIT):
            await anext(ka)


async def test_cancel_ends_the_iteration_and_stops_renewing_without_revoking(
    etcd: AsyncClient,
) -> None:
    lease = await etcd.grant(3)
    ka = etcd.keep_alive(lease.id, ttl=3)
    ka.start()

    async def read_all() -> list[KeepAliveStatus]:
        return [s async for s in ka]

    reader = asyncio.create_task(read_all())
    await asyncio.sleep(1.5)
    ka.cancel()
    ka.cancel()  # idempotent
    async with asyncio.timeout(WAIT):
        got = await reader
    assert got  # it was renewed before
    assert (await etcd.lease_info(lease.id)).ttl > 0  # not revoked...
    async with asyncio.timeout(WAIT):
        while lease.id in await etcd.leases():  # ... and no longer renewed: it expires
            await asyncio.sleep(0.2)


async def test_closing_the_client_ends_the_iteration_with_closed_error(
    etcd_server: EtcdServer,
) -> None:
    async with fresh_client(etcd_server.endpoint) as admin:
        lease = await admin.grant(30)
        try:
            async with fresh_client(etcd_server.endpoint) as client:
                ka = client.keep_alive(lease.id)
                ka.start()

                async def read_all() -> None:
                    async for _ in ka:
                        pass

                reader = asyncio.create_task(read_all())
                await asyncio.sleep(0.3)
            with pytest.raises(ClosedError):
                async with asyncio.timeout(WAIT):
                    await reader
            with pytest.raises(ClosedError):
                client.keep_alive(lease.id)
        finally:
            await admin.revoke(lease.id)


async def test_one_keepalive_per_lease_and_client(etcd: AsyncClient) -> None:
    lease = await etcd.grant(30)
    try:
        async with etcd.keep_alive(lease.id):
            with pytest.raises(ValueError, match="already kept alive"):
                etcd.keep_alive(lease.id).start()
        async with etcd.keep_alive(lease.id) as again, asyncio.timeout(WAIT):  # free again
            assert (await anext(again)).ttl == 30
    finally:
        await etcd.revoke(lease.id)


async def test_a_cut_connection_says_suspended_then_renewed(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    server = etcd_server_factory()
    with Proxy(server.endpoint) as proxy:
        async with (
            AsyncClient(server.endpoint) as admin,
            AsyncClient(proxy.endpoint) as client,
        ):
            lease = await admin.grant(6)
            async with client.keep_alive(lease.id, ttl=6) as ka:
                async with asyncio.timeout(WAIT):
                    assert not (await anext(ka)).suspended  # renewed once through the proxy
                    proxy.cut()
                    while not (await anext(ka)).suspended:
                        pass
                    expires = ka.expires
                    assert expires is not None
                    assert expires - time.monotonic() < 6.0  # counted from the last answer
                    proxy.restore()
                    status = await anext(ka)
                    while status.suspended:
                        status = await anext(ka)
                assert status == KeepAliveStatus(6, False)
            assert (await admin.lease_info(lease.id)).ttl > 0
            await admin.revoke(lease.id)


async def test_a_listener_reads_each_status_in_its_turn_and_the_end(etcd: AsyncClient) -> None:
    # What a session does (no task of its own): statuses and the end, read with take().
    lease = await etcd.grant(3)
    ka = etcd.keep_alive(lease.id, ttl=3)
    seen: list[KeepAliveStatus | Exception] = []

    def on_news() -> None:
        try:
            status = ka.take()
        except LeaseNotFoundError as exc:
            seen.append(exc)
            return
        if status is not None:
            seen.append(status)

    remove = ka.add_listener(on_news)
    ka.start()
    async with asyncio.timeout(WAIT):
        while not seen:
            await asyncio.sleep(0.05)
    assert seen[0] == KeepAliveStatus(3, False)
    assert ka.take() is None  # the listener took it
    await etcd.revoke(lease.id)
    async with asyncio.timeout(WAIT):
        while not isinstance(seen[-1], LeaseNotFoundError):
            await asyncio.sleep(0.05)
    with pytest.raises(LeaseNotFoundError):
        ka.take()  # ended: as the iteration would say
    remove()
    ka.cancel()
    assert ka.take() is None
    with pytest.raises(TypeError, match="callable"):
        ka.add_listener(42)  # type: ignore[arg-type]


BAD: list[tuple[dict[str, Any], type[Exception]]] = [
    ({"lease_id": "1"}, TypeError),
    ({"lease_id": True}, TypeError),
    ({"lease_id": 0}, ValueError),
    ({"lease_id": -5}, ValueError),
    ({"lease_id": 5, "ttl": 0}, ValueError),
    ({"lease_id": 5, "ttl": 1.5}, TypeError),
]


@pytest.mark.parametrize(("kwargs", "error"), BAD)
async def test_bad_arguments_fail_before_any_io(
    kwargs: dict[str, Any], error: type[Exception]
) -> None:
    async with AsyncClient("127.0.0.1:1", timeout=0.5) as etcd:
        with pytest.raises(error):
            etcd.keep_alive(**kwargs)
        assert etcd.stats.calls == 0


async def test_a_session_follows_its_keepalive(etcd: AsyncClient) -> None:
    # Session is a recipe on keep_alive: a revoke by someone else makes it LOST.
    session = await etcd.session(5)
    assert session.state is SessionState.ALIVE
    assert session.expires is not None
    await etcd.revoke(session.lease_id)
    async with asyncio.timeout(WAIT):
        assert await session.wait_lost() is SessionState.LOST
    assert session.expires is None
    await session.close()


def test_threaded_face(etcd_sync: Client) -> None:
    lease = etcd_sync.grant(3)
    with etcd_sync.keep_alive(lease.id, ttl=3) as ka:
        assert ka.lease_id == lease.id
        first = next(iter(ka))
        assert first == KeepAliveStatus(3, False)
        assert ka.ttl == 3
        assert ka.expires is not None
        got_news = threading.Event()
        remove = ka.add_listener(got_news.set)  # (on the loop thread)
        assert got_news.wait(WAIT)  # the next renewal, about a second later
        remove()
        timer = threading.Timer(0.5, ka.cancel)  # from another thread
        timer.start()
        try:
            rest = list(ka)  # ends once cancelled
        finally:
            timer.join()
        assert all(not s.suspended for s in rest)
    etcd_sync.revoke(lease.id)
    with etcd_sync.keep_alive(lease.id) as gone, pytest.raises(LeaseNotFoundError):
        next(gone)


async def test_a_second_reader_of_one_keep_alive_is_refused(etcd: AsyncClient) -> None:
    lease = (await etcd.grant(30)).id
    try:
        async with etcd.keep_alive(lease) as kept:
            await anext(kept)  # (the first renewal goes at once)
            first = asyncio.create_task(anext(kept))
            await asyncio.sleep(0.05)
            with pytest.raises(RuntimeError, match="one reader at a time"):
                await anext(kept)
            kept.cancel()
            async with asyncio.timeout(2.0):
                with pytest.raises(StopAsyncIteration):
                    await first
    finally:
        await etcd.revoke(lease)
