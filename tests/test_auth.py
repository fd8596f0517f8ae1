"""The auth API on a real etcd of the test's own (never the shared server, which must not be left
with auth on): root user and role, auth on, a user limited to one prefix by its role (allowed
inside, PermissionDeniedError outside), permissions changed live, passwords changed, auth off
again; on both faces. etcd's refusals arrive typed; bad input fails before any I/O."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

import etcdkit
from _helpers import fresh_client, quickly
from etcdkit import AsyncClient, AuthStatus, Client, Permission
from etcdkit.testing import HOST, EtcdServer

ROOT_PW = "root-pw"
ALICE_PW = "alice-pw"
WAIT = 20.0
APP = "/app/"  # the prefix alice's role may use


def has_auth_status(server: EtcdServer) -> bool:
    """etcd added the AuthStatus call in 3.5 (the suite also runs on Debian's etcd 3.4)."""
    major, minor = (int(part) for part in server.version.split(".")[:2])
    return (major, minor) >= (3, 5)


async def check_enabled(server: EtcdServer, etcd: AsyncClient, want: bool) -> None:
    """``auth.status().enabled is want``; on an etcd without AuthStatus, that status() says so
    (a ServerError, not an AuthError that would send the user after credentials)."""
    if has_auth_status(server):
        assert (await etcd.auth.status()).enabled is want
        return
    with pytest.raises(etcdkit.ServerError, match=r"UNIMPLEMENTED.*later etcd version") as info:
        await etcd.auth.status()
    assert not isinstance(info.value, etcdkit.AuthError)


async def add_root(etcd: AsyncClient) -> None:
    await etcd.auth.user_add("root", ROOT_PW)
    await etcd.auth.role_add("root")
    await etcd.auth.user_grant_role("root", "root")


async def test_auth_round_trip(etcd_server_factory: Callable[..., EtcdServer]) -> None:
    server = etcd_server_factory()
    endpoint = server.endpoint
    async with fresh_client(endpoint) as admin:
        status = await admin.auth.status() if has_auth_status(server) else None
        assert status is None or isinstance(status, AuthStatus)
        await check_enabled(server, admin, False)
        await add_root(admin)
        await admin.auth.role_add("app")
        await admin.auth.role_grant_permission("app", APP, prefix=True)
        await admin.auth.role_grant_permission("app", "/shared", perm="read")
        await admin.auth.user_add("alice", ALICE_PW)
        await admin.auth.user_grant_role("alice", "app")
        assert await admin.auth.role_get("app") == [
            Permission("readwrite", b"/app/", b"/app0"),
            Permission("read", b"/shared", b""),
        ]
        assert await admin.auth.user_get("alice") == ["app"]
        assert await admin.auth.user_get("root") == ["root"]
        assert await admin.auth.user_list() == ["alice", "root"]
        assert await admin.auth.role_list() == ["app", "root"]
        await admin.put("/shared", "for everyone")

        await admin.auth.enable()
        with quickly(), pytest.raises(etcdkit.AuthError, match="username and password"):
            await admin.get("/shared")  # no credentials any more

    async with fresh_client(endpoint, username="root", password=ROOT_PW) as root:
        await check_enabled(server, root, True)
        if status is not None:
            assert (await root.auth.status()).auth_revision > status.auth_revision
        async with fresh_client(endpoint, username="alice", password=ALICE_PW) as alice:
            await alice.put(APP + "x", "1")
            kv = await alice.get(APP + "x")
            assert kv is not None
            assert kv.value == b"1"
            assert (await alice.get("/shared")) is not None
            for denied in (
                lambda: alice.put("/other", "v"),
                lambda: alice.get("/other"),
                lambda: alice.put("/shared", "mine"),  # read only
                lambda: alice.auth.user_list(),  # changing users needs the root role
                lambda: alice.auth.role_add("mine"),
            ):
                with quickly(), pytest.raises(etcdkit.PermissionDeniedError):
                    await denied()

            # permissions change live
            await root.auth.role_revoke_permission("app", APP, prefix=True)
            await root.auth.role_grant_permission("app", APP, prefix=True, perm="read")
            assert (await alice.get(APP + "x")) is not None
            with pytest.raises(etcdkit.PermissionDeniedError):
                await alice.put(APP + "x", "2")
            await root.auth.user_revoke_role("alice", "app")
            assert await root.auth.user_get("alice") == []
            with pytest.raises(etcdkit.PermissionDeniedError):
                await alice.get(APP + "x")

            # a new password: the old one no longer authenticates
            await root.auth.user_grant_role("alice", "app")
            await root.auth.user_change_password("alice", "new-pw")
        async with fresh_client(endpoint, username="alice", password=ALICE_PW) as old:
            with quickly(), pytest.raises(etcdkit.AuthError, match="authentication"):
                await old.get(APP + "x")
        async with fresh_client(endpoint, username="alice", password="new-pw") as alice:
            assert (await alice.get(APP + "x")) is not None

        await root.auth.user_delete("alice")
        await root.auth.role_delete("app")
        assert await root.auth.user_list() == ["root"]
        assert await root.auth.role_list() == ["root"]
        await root.auth.disable()

    async with fresh_client(endpoint) as anyone:  # auth off: no credentials needed again
        await check_enabled(server, anyone, False)
        await anyone.put("/other", "v")


async def test_a_logged_in_client_goes_on_when_auth_goes_off_and_on(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    """Auth turned off under a client that logged in: its calls go on without a token (as Go's
    client does); turned on again, it logs in again."""
    server = etcd_server_factory()
    async with fresh_client(server.endpoint) as admin:
        await add_root(admin)
        await admin.auth.enable()
    async with fresh_client(server.endpoint, username="root", password=ROOT_PW) as root:
        first = await root.put("/k", "1")
        await root.auth.disable()
        for value in ("2", "3"):
            await root.put("/k", value)
            kv = await root.get("/k")
            assert kv is not None
            assert kv.value == value.encode()
        await root.auth.enable()
        last = await root.put("/k", "4")  # without a token: it logs in again
        values = []
        async with root.watch("/k", start_revision=first) as w, asyncio.timeout(WAIT):
            async for batch in w:
                values += [e.kv.value for e in batch.events]
                if batch.events and batch.events[-1].kv.mod_revision >= last:
                    break
        assert values == [b"1", b"2", b"3", b"4"]
        await root.auth.disable()
    async with fresh_client(server.endpoint) as anyone:
        await check_enabled(server, anyone, False)


async def test_a_user_limited_to_a_prefix_watches_it_from_now(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    """A watch from "now" reads the current revision on its own first key, which the user may
    read (``get_revision()`` reads a key outside its prefix: refused, as documented)."""
    server = etcd_server_factory()
    async with fresh_client(server.endpoint) as admin:
        await add_root(admin)
        await admin.auth.role_add("app")
        await admin.auth.role_grant_permission("app", APP, prefix=True)
        await admin.auth.user_add("alice", ALICE_PW)
        await admin.auth.user_grant_role("alice", "app")
        await admin.auth.enable()
    async with fresh_client(server.endpoint, username="alice", password=ALICE_PW) as alice:
        async with alice.watch(APP, prefix=True) as w, alice.watch(APP + "x") as one:
            rev = await alice.put(APP + "x", "1")
            for watch in (w, one):
                async with asyncio.timeout(WAIT):
                    batch = await watch.__anext__()
                assert [e.kv.mod_revision for e in batch.events] == [rev]
        with quickly(), pytest.raises(etcdkit.PermissionDeniedError):
            await alice.get_revision()

        def threaded() -> None:
            with (
                Client(server.endpoint, username="alice", password=ALICE_PW) as sync_alice,
                sync_alice.watch(APP, prefix=True) as sw,
            ):
                rev = sync_alice.put(APP + "y", "1")
                assert [e.kv.mod_revision for e in next(iter(sw)).events] == [rev]

        await asyncio.to_thread(threaded)
    async with fresh_client(server.endpoint, username="root", password=ROOT_PW) as root:
        await root.auth.disable()


def test_auth_threaded(
    etcd_server_factory: Callable[..., EtcdServer], no_leaked_threads: None
) -> None:
    server = etcd_server_factory()
    with Client(server.endpoint) as admin:
        assert admin.auth is admin.auth
        assert repr(admin.auth).startswith("<SyncAuth of ")
        admin.auth.user_add("root", ROOT_PW)
        admin.auth.role_add("root")
        admin.auth.user_grant_role("root", "root")
        admin.auth.role_add("app")
        admin.auth.role_grant_permission("app", APP, prefix=True, perm="readwrite")
        admin.auth.user_add("alice", ALICE_PW)
        admin.auth.user_grant_role("alice", "app")
        admin.auth.enable()
    with Client(server.endpoint, username="root", password=ROOT_PW) as root:
        if has_auth_status(server):
            assert root.auth.status().enabled
        else:
            with pytest.raises(etcdkit.ServerError, match="later etcd version"):
                root.auth.status()
        with Client(server.endpoint, username="alice", password=ALICE_PW) as alice:
            alice.put(APP + "k", "v")
            with pytest.raises(etcdkit.PermissionDeniedError):
                alice.put("/elsewhere", "v")
        assert root.auth.role_get("app") == [Permission("readwrite", b"/app/", b"/app0")]
        root.auth.disable()
    with Client(server.endpoint) as anyone:
        assert not has_auth_status(server) or not anyone.auth.status().enabled
        anyone.put("/after", "auth off")


async def test_refusals_are_typed(etcd_server_factory: Callable[..., EtcdServer]) -> None:
    server = etcd_server_factory()
    async with fresh_client(server.endpoint) as etcd:
        auth = etcd.auth
        with pytest.raises(etcdkit.ServerError, match=r"user 'root'.*role 'root'"):
            await auth.enable()  # no root user yet: the error says what to do
        with pytest.raises(etcdkit.ServerError, match="role name not found"):
            await auth.role_get("nobody")
        with pytest.raises(etcdkit.ServerError, match="user name not found"):
            await auth.user_get("nobody")
        await auth.role_add("r")
        with pytest.raises(etcdkit.ServerError, match="role name already exists"):
            await auth.role_add("r")
        with pytest.raises(etcdkit.ServerError, match="permission is not granted"):
            await auth.role_revoke_permission("r", "/k")
        await auth.user_add("u", "pw")
        with pytest.raises(etcdkit.ServerError, match="user name already exists"):
            await auth.user_add("u", "pw")
        with pytest.raises(etcdkit.ServerError, match="role name not found"):
            await auth.user_grant_role("u", "nobody")
        await auth.user_add("cert-only", None)  # authenticates by TLS common name only
        assert await auth.user_list() == ["cert-only", "u"]
        # every key: etcd spells the empty prefix as ["\0", "\0")
        await auth.role_grant_permission("r", "", prefix=True, perm="read")
        await auth.role_grant_permission("r", "/a", "/b", perm="write")
        assert await auth.role_get("r") == [
            Permission("read", b"\0", b"\0"),
            Permission("write", b"/a", b"/b"),
        ]
        await auth.role_revoke_permission("r", b"", prefix=True)
        await auth.role_revoke_permission("r", "/a", b"/b")
        assert await auth.role_get("r") == []
        await check_enabled(server, etcd, False)


# -- bad input: refused before any I/O ------------------------------------------------------------

BAD_INPUT: list[Any] = [
    ("role_grant_permission", ("r", "/k"), {"perm": "rw"}, ValueError, "'read', 'write'"),
    ("role_grant_permission", ("r", "/k"), {"perm": 2}, TypeError, "perm must be one of"),
    ("role_grant_permission", ("r", "/k", "/l"), {"prefix": True}, ValueError, "not both"),
    ("role_grant_permission", ("r", ""), {}, ValueError, "key must not be empty"),
    ("role_grant_permission", ("r", 5), {}, TypeError, "key must be str or bytes"),
    ("role_grant_permission", ("r", "/k", 5), {}, TypeError, "range_end must be str or bytes"),
    ("role_grant_permission", ("r", "/k"), {"prefix": "yes"}, TypeError, "prefix must be True"),
    ("role_grant_permission", ("", "/k"), {}, ValueError, "role must not be empty"),
    ("role_revoke_permission", (None, "/k"), {}, TypeError, "role must be a str"),
    ("role_revoke_permission", ("r", "/k", "/l"), {"prefix": True}, ValueError, "not both"),
    ("user_add", ("", "pw"), {}, ValueError, "name must not be empty"),
    ("user_add", (5, "pw"), {}, TypeError, "name must be a str"),
    ("user_add", ("u", ""), {}, ValueError, "None for a user without password"),
    ("user_add", ("u", b"pw"), {}, TypeError, "password"),
    ("user_get", (b"u",), {}, TypeError, "name must be a str"),
    ("user_delete", ("",), {}, ValueError, "must not be empty"),
    ("user_change_password", ("u", ""), {}, ValueError, "password must not be empty"),
    ("user_grant_role", ("u", 3), {}, TypeError, "role must be a str"),
    ("user_revoke_role", (["u"], "r"), {}, TypeError, "user must be a str"),
    ("role_add", (None,), {}, TypeError, "name must be a str"),
    ("role_get", ("",), {}, ValueError, "must not be empty"),
    ("role_delete", (1,), {}, TypeError, "name must be a str"),
]

ENDPOINT = f"{HOST}:1"  # nobody listens: any I/O would fail with ConnectionUnavailableError


def _id(case: tuple[Any, ...]) -> str:
    method, args, kwargs, _exc, _match = case
    shown = [repr(a)[:12] for a in args] + [f"{k}={v!r:.12}" for k, v in kwargs.items()]
    return f"{method}({','.join(shown)})"


@pytest.mark.parametrize(
    ("method", "args", "kwargs", "exc", "match"), BAD_INPUT, ids=[_id(c) for c in BAD_INPUT]
)
async def test_bad_input_async(
    method: str, args: tuple[Any, ...], kwargs: dict[str, Any], exc: type[Exception], match: str
) -> None:
    async with fresh_client(ENDPOINT) as etcd:
        with quickly(1.0), pytest.raises(exc, match=match):
            await getattr(etcd.auth, method)(*args, **kwargs)


@pytest.mark.parametrize(
    ("method", "args", "kwargs", "exc", "match"),
    BAD_INPUT[::3],
    ids=[_id(c) for c in BAD_INPUT[::3]],
)
def test_bad_input_threaded(
    method: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    exc: type[Exception],
    match: str,
    no_leaked_threads: None,
) -> None:
    with Client(ENDPOINT) as etcd:
        with quickly(1.0), pytest.raises(exc, match=match):
            getattr(etcd.auth, method)(*args, **kwargs)


@pytest.mark.parametrize("method", ["user_add", "user_change_password"])
async def test_a_password_of_the_wrong_type_is_not_shown_in_the_error(method: str) -> None:
    """The error names the type, never the value (errors end up in logs)."""
    async with fresh_client(ENDPOINT) as etcd:
        with quickly(1.0), pytest.raises(TypeError, match="password") as info:
            await getattr(etcd.auth, method)("u", b"s3cret-pw")
    assert "s3cret" not in str(info.value)
