"""Watches under etcd auth, through what makes a token stale: an etcd restart (it forgets every
simple token), a token that expired while the watch stream stayed open, a JWT older than the
last change to users and roles. The watch stream carries the token it was opened with, so a
watcher etcd refuses for it must be asked for again on a new stream with a new token, as Go's
client does since 3.5.5, while a refusal that a new token does not change (no permission)
still ends the watcher, at once. A wrong password ends it with AuthError; a persistent lease
whose key watch etcd keeps refusing re-asserts at backoff pace, not in a loop."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

import etcdkit
from _helpers import fresh_client
from etcdkit import Client, LeaseState, WatchState
from etcdkit._wire import watch_hub
from etcdkit.testing import EtcdServer

ROOT_PW = "root-pw"
ALICE_PW = "alice-pw"
WAIT = 20.0
APP = "/app/"  # the prefix alice's role may read and write
DROP = "/drop/"  # the prefix alice's role may write, not read


async def enable_auth(server: EtcdServer) -> None:
    async with fresh_client(server.endpoint) as admin:
        await admin.auth.user_add("root", ROOT_PW)
        await admin.auth.role_add("root")
        await admin.auth.user_grant_role("root", "root")
        await admin.auth.role_add("app")
        await admin.auth.role_grant_permission("app", APP, prefix=True)
        await admin.auth.role_grant_permission("app", DROP, prefix=True, perm="write")
        await admin.auth.user_add("alice", ALICE_PW)
        await admin.auth.user_grant_role("alice", "app")
        await admin.auth.enable()


def alice(server: EtcdServer) -> AbstractAsyncContextManager[etcdkit.AsyncClient]:
    return fresh_client(server.endpoint, username="alice", password=ALICE_PW)


def root(server: EtcdServer) -> etcdkit.AsyncClient:
    """(Not a fresh_client: that one checks, once closed, that no client's task is left.)"""
    return etcdkit.AsyncClient(server.endpoint, username="root", password=ROOT_PW)


async def live(watch: etcdkit.PrefixWatch[str, bytes]) -> None:
    async with asyncio.timeout(WAIT):
        while watch.state is not WatchState.LIVE:
            await asyncio.sleep(0.05)


async def test_watches_go_on_after_a_restart_forgot_every_token(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    server = etcd_server_factory()
    await enable_auth(server)
    async with alice(server) as etcd:
        await etcd.put(APP + "a", "1")
        async with etcd.watch_prefix(APP) as prefix, etcd.watch(APP + "b") as raw:
            await prefix.synced(timeout=WAIT)
            waiter = asyncio.create_task(etcd.wait_for(APP + "b", timeout=WAIT))
            await asyncio.sleep(0.3)  # (its watch is on)
            server.kill()
            await asyncio.sleep(0.5)
            server.restart()
            await live(prefix)
            rev = await etcd.put(APP + "b", "2")
            assert await waiter == rev
            async with asyncio.timeout(WAIT):
                batch = await raw.__anext__()
                async for snap in prefix:
                    if snap.revision >= rev:
                        break
            assert [e.kv.mod_revision for e in batch.events] == [rev]
            assert dict(snap.tree) == {APP + "a": b"1", APP + "b": b"2"}
            assert prefix.state is WatchState.LIVE


def test_watches_go_on_after_a_restart_threaded(
    etcd_server_factory: Callable[..., EtcdServer], no_leaked_threads: None
) -> None:
    server = etcd_server_factory()
    asyncio.run(enable_auth(server))
    with (
        Client(server.endpoint, username="alice", password=ALICE_PW) as etcd,
        etcd.watch_prefix(APP) as prefix,
    ):
        etcd.put(APP + "a", "1")
        prefix.synced(timeout=WAIT)
        server.kill()
        time.sleep(0.5)
        server.restart()
        time.sleep(1.5)  # (the watch stream is back, with the token it had, before any call)
        rev = etcd.put(APP + "b", "2")
        for snap in prefix:
            if snap.revision >= rev:
                break
        assert dict(snap.tree) == {APP + "a": b"1", APP + "b": b"2"}


async def test_a_new_watch_on_a_stream_whose_token_expired(
    etcd_server_factory: Callable[..., EtcdServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stream stays open (one watch on it) while its token expires. A new watch on it is
    refused for that token: after a call that logged in again (the client's token is newer),
    and with no call at all (the stream's token is old enough to be the cause)."""
    server = etcd_server_factory(extra_args=["--auth-token-ttl", "1"])
    await enable_auth(server)
    monkeypatch.setattr(watch_hub, "TOKEN_TRUSTED", 2.0)  # (etcd's default TTL is 300 s)
    async with alice(server) as etcd:
        async with etcd.watch_prefix(APP) as first:
            await first.synced(timeout=WAIT)
            await asyncio.sleep(1.5)
            await etcd.put(APP + "a", "1")  # logs in again
            async with etcd.watch_prefix(APP) as second:
                assert dict((await second.synced(timeout=WAIT)).tree) == {APP + "a": b"1"}
            await asyncio.sleep(2.5)
            async with etcd.watch(APP + "a") as raw:
                rev = await etcd.put(APP + "a", "2")
                async with asyncio.timeout(WAIT):
                    batch = await raw.__anext__()
                assert [e.kv.mod_revision for e in batch.events] == [rev]
            assert first.state is WatchState.LIVE


async def test_a_watch_without_the_permission_still_ends_at_once(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    """etcd 3.5.0-3.5.4 say "permission denied" of a forgotten token too: a refusal with a
    fresh token stands (no new login, no stream restarted for the others)."""
    server = etcd_server_factory()
    await enable_auth(server)
    async with alice(server) as etcd, etcd.watch_prefix(APP) as prefix:
        await prefix.synced(timeout=WAIT)
        reconnects = etcd.stats.watch_reconnects
        with pytest.raises(etcdkit.WatchEndedError, match="permission denied"):
            async with asyncio.timeout(5), etcd.watch(DROP + "k", start_revision=1) as denied:
                await denied.__anext__()
        assert etcd.stats.watch_reconnects == reconnects
        assert prefix.state is WatchState.LIVE


async def test_a_watch_whose_login_is_refused_ends_with_auth_error(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    """The watch stream is all such a watch needs (it starts at a given revision): a wrong
    password ends it with AuthError, as it fails any other call, instead of retrying."""
    server = etcd_server_factory()
    await enable_auth(server)
    async with fresh_client(server.endpoint, username="alice", password="wrong") as etcd:
        with pytest.raises(etcdkit.AuthError, match="check username and password"):
            async with asyncio.timeout(5), etcd.watch(APP + "k", start_revision=1) as w:
                await w.__anext__()
        assert etcd.stats.watch_reconnects == 0


async def test_a_persistent_lease_whose_key_watch_is_refused_puts_at_backoff_pace(
    etcd_server_factory: Callable[..., EtcdServer],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its puts go, each watch on its key is refused (what a stale token did before watches
    logged in again; made so here by asking etcd to watch, for that key, one alice may not
    read). It keeps its key, re-asserting at backoff pace, as after a conflict, with a
    warning per interval, not one per refusal."""
    server = etcd_server_factory()
    await enable_auth(server)
    key = APP + "k"
    create_request = watch_hub.WatchSub.create_request

    def refused(sub: watch_hub.WatchSub, watch_id: int = 0) -> Any:
        request = create_request(sub, watch_id)
        if sub.key == key.encode():
            request.create_request.key = (DROP + "k").encode()
        return request

    monkeypatch.setattr(watch_hub.WatchSub, "create_request", refused)
    caplog.set_level(logging.WARNING, logger="etcdkit.lease")
    async with alice(server) as etcd, etcd.persistent_lease(key, "v", ttl=10) as lease:
        async with root(server) as admin:
            start = await admin.get_revision()
            await asyncio.sleep(3.0)
            puts = await admin.get_revision() - start
            kv = await admin.get(key)
        assert kv is not None
        assert kv.value == b"v"
        assert lease.state is not LeaseState.FAILED
    # 0.5 s, doubling: about 3 puts in 3 s (without the pace: thousands)
    assert 1 <= puts <= 8, puts
    warned = [r.getMessage() for r in caplog.records if "key watch ended" in r.getMessage()]
    assert 1 <= len(warned) <= 2, warned


@pytest.fixture
def jwt_token(tmp_path: Path) -> str:
    """etcd's --auth-token for JWTs signed with an RSA key made here."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl CLI")
    key, pub = tmp_path / "jwt.key", tmp_path / "jwt.pub"
    for args in (["genrsa", "-out", key, "2048"], ["rsa", "-in", key, "-pubout", "-out", pub]):
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)
    return f"jwt,pub-key={pub},priv-key={key},sign-method=RS256,ttl=60s"


async def test_a_jwt_older_than_a_change_to_users_is_replaced(
    etcd_server_factory: Callable[..., EtcdServer], jwt_token: str
) -> None:
    """A JWT names the auth store's revision; once users or roles change, etcd refuses it
    ("revision in header is old", or "of auth store is old" in later releases) until it
    expires. Calls and watches log in again, as Go's client does."""
    server = etcd_server_factory(extra_args=["--auth-token", jwt_token])
    await enable_auth(server)
    async with alice(server) as etcd, etcd.watch_prefix(APP) as prefix:
        await prefix.synced(timeout=WAIT)
        async with root(server) as admin:
            await admin.auth.user_add("carol", "carol-pw")
        rev = await etcd.put(APP + "a", "1")
        assert (await etcd.get(APP + "a")) is not None
        async with etcd.watch(APP + "a", start_revision=rev) as raw:
            async with asyncio.timeout(WAIT):
                batch = await raw.__anext__()
            assert [e.kv.mod_revision for e in batch.events] == [rev]
        async with root(server) as admin:
            await admin.auth.user_delete("carol")
        await etcd.delete(APP + "a")
        await live(prefix)
