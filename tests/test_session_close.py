"""``Session.close()`` while the lease grant is still in flight, against real etcd servers.

``open()`` runs ``_grant`` in a task of its own (``etcdkit-session-grant``) and awaits it through
``asyncio.shield``. A ``close()`` meanwhile waits up to ``GRANT_WAIT`` for the grant's answer,
then cancels it; if etcd granted a lease, close revokes it, so no lease is left behind to expire
on its own. Each test uses an etcd of its own (``etcd_server_factory``): some pause it
(SIGSTOP: it keeps its sockets, so a request sent meanwhile waits in the kernel, unanswered,
until SIGCONT), and "no lease left" is checked by listing the server's leases with an
independent client.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from _helpers import etcdkit_tasks, fresh_client
from etcdkit import AsyncClient, ClosedError, EtcdTimeoutError, SessionState
from etcdkit.recipes.session import GRANT_WAIT, REVOKE_TIMEOUT, Session
from etcdkit.testing import HOST, EtcdServer, free_port

GRANT_TASK = "etcdkit-session-grant"
BOUND = GRANT_WAIT + REVOKE_TIMEOUT + 5.0  # close must return within this (generous: no hang)
PAUSE = 0.5  # how long a "grant answered in time" test keeps etcd stopped (< GRANT_WAIT)


@contextlib.contextmanager
def paused(server: EtcdServer) -> Iterator[None]:
    """SIGSTOP ``server`` for the block; SIGCONT it however the block ends."""
    server.pause()
    try:
        yield
    finally:
        server.resume()


class AnswerGate:
    """A TCP proxy on loopback (in the test's event loop) that always forwards what the client
    sends but holds etcd's answers while ``answers`` is clear: etcd does the work, the client
    hears nothing (a request answered too late). Stops with every connection it made."""

    def __init__(self, target: EtcdServer) -> None:
        self._port = target.client_port
        self.answers = asyncio.Event()
        self.answers.set()
        self._writers: list[asyncio.StreamWriter] = []
        self._pumps: set[asyncio.Task[None]] = set()
        self.endpoint = ""

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[AnswerGate]:
        server = await asyncio.start_server(self._connect, "127.0.0.1", 0)
        self.endpoint = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        try:
            yield self
        finally:
            server.close()
            for task in self._pumps:
                task.cancel()
            await asyncio.gather(*self._pumps, return_exceptions=True)
            for w in self._writers:
                w.close()
            for w in self._writers:
                with contextlib.suppress(OSError):
                    await w.wait_closed()
            await server.wait_closed()

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._port)
        self._writers.append(up_writer)
        for src, dst, gate in ((reader, up_writer, None), (up_reader, writer, self.answers)):
            task = asyncio.create_task(self._pump(src, dst, gate), name="test-gate-pump")
            self._pumps.add(task)

    @staticmethod
    async def _pump(
        src: asyncio.StreamReader, dst: asyncio.StreamWriter, gate: asyncio.Event | None
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await src.read(65536):
                if gate is not None:
                    await gate.wait()
                dst.write(data)
                await dst.drain()
        dst.close()


async def _connected(client: AsyncClient) -> set[int]:
    """Make sure the client's connection is up (a request sent while etcd is paused then sits
    in the socket, unanswered); returns the leases etcd holds now."""
    return set(await client.leases())


@contextlib.asynccontextmanager
async def _connected_pair(
    server: EtcdServer,
) -> AsyncIterator[tuple[AsyncClient, AsyncClient, set[int]]]:
    """An admin client and a client, both connected; and the leases etcd holds before."""
    async with fresh_client(server.endpoint) as admin, fresh_client(server.endpoint) as client:
        before = await _connected(admin)
        await _connected(client)
        yield admin, client, before


async def _grant_in_flight(s: Session) -> asyncio.Task[Session]:
    """Start ``s.open()`` as a task and let it start its grant (one turn of the loop: the open
    task runs up to ``await shield(grant)``); the grant has no answer yet."""
    opener = asyncio.create_task(s.open())
    await asyncio.sleep(0)
    assert not opener.done()
    assert state_of(s) is SessionState.OPENING
    assert s.lease_id == 0
    assert GRANT_TASK in etcdkit_tasks()  # the grant runs in a task of its own
    return opener


async def _wait_sent() -> None:
    """Let the grant task run far enough to send its request (etcd is paused: it stays
    unanswered). A few turns and a short sleep: the request goes out in the first turns."""
    for _ in range(5):
        await asyncio.sleep(0)
    await asyncio.sleep(0.2)


def state_of(s: Session) -> SessionState:
    """``s.state`` read anew (mypy would keep it narrowed by an earlier assert across awaits)."""
    return s.state


def _no_grant_task() -> None:
    assert GRANT_TASK not in etcdkit_tasks(), f"grant task left running: {etcdkit_tasks()}"


async def _closed_and_revoked(s: Session, admin: AsyncClient, before: set[int]) -> None:
    """``s`` is CLOSED, etcd granted it a lease and close revoked it: etcd holds the leases it
    held ``before``, and no grant task is left."""
    assert state_of(s) is SessionState.CLOSED
    assert s.lease_id != 0  # etcd granted one...
    leases = set(await admin.leases())
    assert s.lease_id not in leases  # ... and close revoked it
    assert leases == before
    _no_grant_task()


async def test_close_before_open_ran_sends_no_grant(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    # close() right after creating the open task, with no await between: open() has not run a
    # step yet, so there is no grant in flight. close() ends the session at once; the open
    # task then raises ClosedError (it never grants: no lease is made at all).
    server = etcd_server_factory()
    async with fresh_client(server.endpoint) as admin, fresh_client(server.endpoint) as client:
        before = await _connected(admin)
        s = client.session(5)
        opener = asyncio.create_task(s.open())
        async with asyncio.timeout(BOUND):
            await s.close()
        assert state_of(s) is SessionState.CLOSED
        assert s.lost.is_set()
        with pytest.raises(ClosedError):
            await opener
        assert s.lease_id == 0
        _no_grant_task()
        assert set(await admin.leases()) == before


async def test_close_during_a_grant_answered_at_once_revokes_it(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    # The grant is in flight (sent, etcd healthy): close() waits for its answer (well within
    # GRANT_WAIT), then revokes the lease it got. open() itself returns the session (its grant
    # succeeded), which is CLOSED by then.
    server = etcd_server_factory()
    async with fresh_client(server.endpoint) as admin, fresh_client(server.endpoint) as client:
        before = await _connected(admin)
        s = client.session(30)
        opener = await _grant_in_flight(s)
        async with asyncio.timeout(BOUND):
            await s.close()
            got = await opener
        assert got is s  # open() returned (not raised, not cancelled)
        assert s.lost.is_set()
        await _closed_and_revoked(s, admin, before)
        await s.close()  # idempotent
        assert state_of(s) is SessionState.CLOSED


async def test_close_waits_for_a_paused_etcd_then_revokes(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    # etcd is stopped when the grant goes out and resumed PAUSE s later, while close() waits
    # for the answer (PAUSE < GRANT_WAIT): close gets the lease and revokes it.
    server = etcd_server_factory()
    async with _connected_pair(server) as (admin, client, before):
        s = client.session(30)
        with paused(server):
            opener = await _grant_in_flight(s)
            await _wait_sent()
            assert state_of(s) is SessionState.OPENING  # no answer while etcd is stopped
            asyncio.get_running_loop().call_later(PAUSE, server.resume)
            async with asyncio.timeout(BOUND):
                await s.close()
                got = await opener
        assert got is s  # open() returned: its grant was answered
        await _closed_and_revoked(s, admin, before)


@pytest.mark.slow
async def test_close_gives_up_on_a_grant_never_answered(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    # etcd stays stopped longer than GRANT_WAIT: close() waits GRANT_WAIT for the answer, then
    # cancels the grant and returns (bounded, not hanging), CLOSED, no lease id known, nothing
    # to revoke. The open() task ends with ClosedError, not cancelled: nobody cancelled it (its
    # `await shield(grant)` saw the grant task cancelled by close).
    #
    # The grant request was already in etcd's socket when close gave up. After SIGCONT etcd may
    # still grant that lease (or drop the request, as the stream was reset meanwhile): a lease
    # nobody knows about, never renewed, which etcd expires after its TTL. So a short TTL, and
    # the test checks that any lease made meanwhile is gone within TTL + a few seconds.
    ttl = 2
    server = etcd_server_factory()
    async with _connected_pair(server) as (admin, client, before):
        s = client.session(ttl)
        with paused(server):
            opener = await _grant_in_flight(s)
            await _wait_sent()
            t0 = time.monotonic()
            async with asyncio.timeout(BOUND):  # bounded: a hang fails here, not by pytest-timeout
                await s.close()
            took = time.monotonic() - t0
            # close did wait for the grant (it cannot be answered while etcd is stopped)
            assert took >= GRANT_WAIT * 0.9, f"close returned after {took:.2f} s"
            assert state_of(s) is SessionState.CLOSED
            assert s.lost.is_set()
            assert s.lease_id == 0
            await asyncio.sleep(0)
            assert opener.done()
            assert not opener.cancelled()
            assert isinstance(opener.exception(), ClosedError)
            _no_grant_task()
            with pytest.raises(ClosedError):  # a closed session without a lease stays closed
                await s.open()
        # etcd runs again: whatever lease it grants for the abandoned request expires by itself
        async with asyncio.timeout(ttl + 6.0):
            while set(await admin.leases()) - before:
                await asyncio.sleep(0.2)
        assert state_of(s) is SessionState.CLOSED
        _no_grant_task()


async def test_a_cancelled_open_keeps_granting_and_close_revokes(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    # The caller cancels its open() while the grant is in flight: the shield in open() keeps
    # the grant running (it ends ALIVE, with a lease), and close() revokes that lease.
    server = etcd_server_factory()
    async with _connected_pair(server) as (admin, client, before):
        s = client.session(30)
        with paused(server):
            opener = await _grant_in_flight(s)
            await _wait_sent()
            opener.cancel()
            with pytest.raises(asyncio.CancelledError):
                await opener
            assert GRANT_TASK in etcdkit_tasks()  # the grant goes on
            assert state_of(s) is SessionState.OPENING
        async with asyncio.timeout(BOUND):  # etcd answers now
            while state_of(s) is SessionState.OPENING:
                await asyncio.sleep(0.02)
        assert state_of(s) is SessionState.ALIVE
        assert s.lease_id != 0
        assert s.lease_id in await admin.leases()  # the lease exists...
        async with asyncio.timeout(BOUND):
            await s.close()
        await _closed_and_revoked(s, admin, before)  # the lease is gone once closed


async def test_a_cancelled_open_then_close_during_the_grant_revokes(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    # As above, but close() comes while the (shielded) grant is still unanswered: close waits
    # for it (etcd resumes PAUSE s later), then revokes the lease it got.
    server = etcd_server_factory()
    async with _connected_pair(server) as (admin, client, before):
        s = client.session(30)
        with paused(server):
            opener = await _grant_in_flight(s)
            await _wait_sent()
            opener.cancel()
            with pytest.raises(asyncio.CancelledError):
                await opener
            assert GRANT_TASK in etcdkit_tasks()
            asyncio.get_running_loop().call_later(PAUSE, server.resume)
            async with asyncio.timeout(BOUND):
                await s.close()
        await _closed_and_revoked(s, admin, before)  # granted while close waited, revoked


@pytest.mark.slow
async def test_a_grant_answered_after_close_gave_up_expires_after_its_ttl(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    # What close() cannot clean up: etcd grants the lease, but its answer reaches the client
    # only after GRANT_WAIT (held here by a proxy). close() gives up on the grant (cancels
    # it: the session never learns the lease id, so there is nothing to revoke) and returns;
    # the lease etcd made is left behind, never renewed, and expires after its TTL. (A TTL
    # above GRANT_WAIT, so that the lease is surely still there when close returns.)
    ttl = 5
    server = etcd_server_factory()
    async with (
        AnswerGate(server).running() as gate,
        fresh_client(server.endpoint) as admin,
        fresh_client(gate.endpoint) as client,
    ):
        before = await _connected(admin)
        await _connected(client)
        s = client.session(ttl)
        gate.answers.clear()
        opener = await _grant_in_flight(s)
        async with asyncio.timeout(BOUND):
            while not set(await admin.leases()) - before:  # etcd granted it...
                await asyncio.sleep(0.05)
        orphans = set(await admin.leases()) - before
        assert len(orphans) == 1
        assert state_of(s) is SessionState.OPENING  # ... the client has not heard of it
        async with asyncio.timeout(BOUND):
            await s.close()
        assert state_of(s) is SessionState.CLOSED
        assert s.lease_id == 0  # close never learnt the lease id: nothing revoked
        await asyncio.sleep(0)
        assert isinstance(opener.exception(), ClosedError)  # (closed, not cancelled)
        _no_grant_task()
        gate.answers.set()  # the late answer now reaches a cancelled call: ignored
        assert orphans <= set(await admin.leases())  # left behind...
        async with asyncio.timeout(ttl + 6.0):
            while orphans & set(await admin.leases()):  # ... until it expires by itself
                await asyncio.sleep(0.2)
        assert state_of(s) is SessionState.CLOSED
        assert s.lease_id == 0


@pytest.mark.parametrize("own_lease", [False, True], ids=["pooled", "own"])
async def test_a_persistent_lease_closed_during_its_grant_leaves_no_lease(
    etcd_server_factory: Callable[..., EtcdServer], own_lease: bool
) -> None:
    """A PersistentLease closed while its session's grant is unanswered (a pooled session,
    or with ``own_lease=True`` one of its own): the close returns (bounded), and the session
    it was opening is abandoned, not left to come alive when etcd answers with nobody to
    close it (each once kept a lease alive until the client closed)."""
    server = etcd_server_factory()
    async with _connected_pair(server) as (admin, client, before):
        with paused(server):
            lease = client.persistent_lease("/pl-closed-in-grant", "v", ttl=2, own_lease=own_lease)
            lease.start()
            await _wait_sent()
            assert GRANT_TASK in etcdkit_tasks()  # its grant is out, unanswered
            async with asyncio.timeout(BOUND):
                await lease.aclose()
        async with asyncio.timeout(BOUND):  # etcd answers the grant: it is revoked
            while set(await admin.leases()) != before or GRANT_TASK in etcdkit_tasks():
                await asyncio.sleep(0.05)
        await asyncio.sleep(3 * 2 / 3)  # a keepalive period of that ttl: still none
        assert set(await admin.leases()) == before
        assert not [t for t in etcdkit_tasks() if "session" in t]  # (the client's shared
        assert await admin.get("/pl-closed-in-grant") is None  # keepalive stream may stay)


async def test_a_persistent_lease_closed_with_etcd_down_leaves_no_task(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    """etcd stays down: the close returns, and the grant in flight ends with the session's
    own bounded wait (no task left, no exception left unretrieved)."""
    server = etcd_server_factory()
    async with _connected_pair(server) as (_admin, client, _before):
        with paused(server):
            lease = client.persistent_lease("/pl-closed-down", "v", ttl=2)
            lease.start()
            await _wait_sent()
            async with asyncio.timeout(BOUND):
                await lease.aclose()
                while GRANT_TASK in etcdkit_tasks():
                    await asyncio.sleep(0.05)
        assert not [t for t in etcdkit_tasks() if "abandon" in t or "session" in t]


async def test_a_grant_failing_after_its_open_was_cancelled_is_no_unretrieved_error() -> None:
    """The caller gives up on ``open()`` (a lock's timeout) and the grant, which goes on, fails
    a moment later (nobody listens; the client's deadline ends it): ``close()`` comes after
    and nobody awaits the grant any more. Its error is nobody's: asyncio must not report it
    as "Task exception was never retrieved" (found when a lock's timeout equalled the
    client's: both ended in one turn of the loop)."""
    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        async with fresh_client(f"{HOST}:{free_port()}", timeout=0.5) as client:  # nobody there
            s = client.session(10)
            opener = asyncio.create_task(s.open())
            for _ in range(5):
                await asyncio.sleep(0)
            assert GRANT_TASK in etcdkit_tasks()
            opener.cancel()
            with pytest.raises(asyncio.CancelledError):
                await opener
            async with asyncio.timeout(BOUND):  # the grant fails on its own
                while GRANT_TASK in etcdkit_tasks():
                    await asyncio.sleep(0.02)
            async with asyncio.timeout(BOUND):
                await s.close()
            assert state_of(s) is SessionState.CLOSED
            del s, opener
            gc.collect()  # a task's unretrieved error is reported when the task goes
        gc.collect()
    finally:
        loop.set_exception_handler(None)
    assert reported == []


async def test_a_session_whose_async_with_was_cancelled_leaves_no_lease(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    """``async with client.session(30):`` cancelled while its grant is unanswered: the block
    never runs and nobody gets the session to close; its lease, granted once etcd answers,
    is revoked (it was kept alive until the client closed)."""
    server = etcd_server_factory()
    async with _connected_pair(server) as (admin, client, before):

        async def use() -> None:
            async with client.session(30):
                raise AssertionError("the block must not run")

        with paused(server):
            user = asyncio.create_task(use())
            await _wait_sent()
            assert GRANT_TASK in etcdkit_tasks()  # its grant is out, unanswered
            user.cancel()
            with pytest.raises(asyncio.CancelledError):
                await user
        async with asyncio.timeout(BOUND):  # etcd answers the grant: it is revoked
            while set(await admin.leases()) != before or GRANT_TASK in etcdkit_tasks():
                await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # (nothing comes back: no keepalive brought it to life)
        assert set(await admin.leases()) == before


@pytest.mark.slow
async def test_a_session_whose_await_was_cancelled_leaves_no_lease(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    """``s = await client.session(30)`` cancelled while its grant is unanswered: the caller
    never gets the session to close, as with ``async with``; its lease, granted once etcd
    answers, is revoked (it was kept alive, refreshed, until the client closed)."""
    server = etcd_server_factory()
    async with _connected_pair(server) as (admin, client, before):

        async def use() -> Session:
            return await client.session(30)

        with paused(server):
            user = asyncio.create_task(use())
            await _wait_sent()
            assert GRANT_TASK in etcdkit_tasks()
            user.cancel()
            with pytest.raises(asyncio.CancelledError):
                await user
        async with asyncio.timeout(BOUND):
            while set(await admin.leases()) != before or GRANT_TASK in etcdkit_tasks():
                await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        assert set(await admin.leases()) == before


@pytest.mark.parametrize("what", ["session", "persistent_lease", "persistent_lease_own"])
async def test_a_close_whose_caller_is_cancelled_goes_on_to_its_end(
    etcd_server: EtcdServer, etcd_prefix: str, what: str
) -> None:
    """The caller of a close is cancelled after 1..8 turns of the loop (a timeout around an
    ``async with`` block, a TaskGroup cancelling a task that is leaving it): the close goes on
    to its end, and the key and lease are gone, with no second close. They stayed for the
    lease's TTL: the close was cut short, and marked the object closed (a second close, and
    the client's, did nothing)."""
    async with fresh_client(etcd_server.endpoint) as admin:
        before = set(await admin.leases())
        for turns in range(1, 9):
            key = f"{etcd_prefix}{what}/{turns}"
            async with fresh_client(etcd_server.endpoint) as client:
                close: Callable[[], Awaitable[None]]
                if what == "session":
                    s = await client.session(60)
                    await client.put(key, "v", lease=s.lease_id)
                    close = s.close
                else:
                    pl = client.persistent_lease(
                        key, "v", ttl=60, own_lease=what == "persistent_lease_own"
                    )
                    await pl.registered(timeout=10)
                    close = pl.aclose
                closing = asyncio.ensure_future(close())
                for _ in range(turns):
                    await asyncio.sleep(0)
                closing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await closing
                async with asyncio.timeout(BOUND):
                    while await admin.get(key) is not None or set(await admin.leases()) != before:
                        await asyncio.sleep(0.02)
                async with asyncio.timeout(BOUND):
                    await close()  # a second close: at once, nothing left to do


async def test_an_await_that_failed_may_be_retried_and_one_cancelled_leaves_the_others(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    """``await session`` that fails (etcd did not answer within the client's timeout: no
    lease) may be awaited again, as ``open()`` may; and of two tasks awaiting one session,
    the one cancelled does not close it for the other (which got a CLOSED session)."""
    server = etcd_server_factory()
    async with fresh_client(server.endpoint, timeout=0.5) as client:
        await _connected(client)
        s = client.session(30)
        with paused(server), pytest.raises(EtcdTimeoutError):
            await s
        async with asyncio.timeout(BOUND):
            assert await s is s
        assert state_of(s) is SessionState.ALIVE
        await s.close()

        shared = client.session(30)
        with paused(server):
            impatient = asyncio.create_task(asyncio.wait_for(shared, 0.3))
            patient = asyncio.create_task(asyncio.wait_for(shared, BOUND))
            with pytest.raises(TimeoutError):
                await impatient
        got = await patient
        assert got is shared
        assert state_of(shared) is SessionState.ALIVE
        await shared.close()


async def test_an_open_after_the_close_raises_closed_error(etcd_server: EtcdServer) -> None:
    """``open()`` (or ``await``) of a session closed after etcd granted its lease raises
    ClosedError, as documented: it returned the CLOSED session, as if open."""
    async with fresh_client(etcd_server.endpoint) as client:
        s = await client.session(30)
        await s.close()
        with pytest.raises(ClosedError, match="closed"):
            await s.open()
        with pytest.raises(ClosedError, match="closed"):
            await s
