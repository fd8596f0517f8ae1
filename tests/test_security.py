"""Security: the recipes over TLS (a CA made by the test) and under etcd auth (a user whose role
is limited to one prefix). Inside the permitted prefix everything works; outside it, and with
wrong credentials or a TLS mismatch, calls fail quickly with a clear, typed error.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aetcd import rpc

import etcdkit
from _helpers import fresh_client as client_of
from _helpers import quickly
from etcdkit import AsyncClient, Client, LeaseState, SessionState
from etcdkit.server import EtcdServer

WAIT = 20.0
APP = "/app/"  # the prefix alice's role may read and write
ROOT_PW = "root-pw"
ALICE_PW = "alice-pw"

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


# -- a throw-away PKI made with the openssl CLI ---------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here: trusting it must fail


def _openssl(cwd: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_ca(cwd: Path, name: str) -> None:
    _openssl(
        cwd,
        *("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
        *("-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}"),
        *("-addext", "basicConstraints=critical,CA:TRUE"),
        *("-addext", "keyUsage=critical,keyCertSign,cRLSign"),
    )


def _make_leaf(cwd: Path, name: str, ca: str, extensions: str) -> None:
    _openssl(
        cwd,
        *("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
        *("-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}"),
    )
    (cwd / f"{name}.ext").write_text(extensions)
    _openssl(
        cwd,
        *("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key"),
        *("-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext"),
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    _make_ca(d, "ca")
    _make_ca(d, "other-ca")
    _make_leaf(
        d,
        "server",
        "ca",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    _make_leaf(d, "client", "ca", "extendedKeyUsage=clientAuth\n")
    return Pki(
        d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem", d / "client.key",
        d / "other-ca.pem",
    )  # fmt: skip


# -- TLS ------------------------------------------------------------------------------------------


@pytest.fixture
def tls_server(etcd_server_factory: Callable[..., EtcdServer], pki: Pki) -> EtcdServer:
    return etcd_server_factory(
        tls=True,
        extra_args=[
            *("--cert-file", str(pki.server_cert), "--key-file", str(pki.server_key)),
            *("--trusted-ca-file", str(pki.ca), "--client-cert-auth"),
        ],
    )


def tls_kwargs(pki: Pki) -> dict[str, Any]:
    return {"ca_cert": pki.ca, "cert": pki.client_cert, "key": pki.client_key}


async def test_recipes_over_tls(tls_server: EtcdServer, pki: Pki) -> None:
    assert tls_server.endpoint.startswith("https://")
    async with client_of(tls_server.endpoint, **tls_kwargs(pki)) as client:
        await client.put("/tls/a", "1")
        assert (await client.get("/tls/a")).value == b"1"  # type: ignore[union-attr]
        async with client.watch_prefix("/tls/") as watch:
            snap = await watch.synced(timeout=WAIT)
            assert dict(snap.tree) == {"/tls/a": b"1"}
            waiter = asyncio.create_task(client.wait_for("/tls/node", timeout=WAIT))
            async with client.persistent_lease("/tls/node", "n", ttl=5) as lease:
                rev = await lease.registered(timeout=WAIT)
                assert await waiter >= rev
                async with asyncio.timeout(WAIT):
                    async for snap in watch:
                        if snap.revision >= rev:
                            break
                assert snap.tree["/tls/node"] == b"n"
        assert await client.get("/tls/node") is None  # revoked on close


def test_sync_client_over_tls(tls_server: EtcdServer, pki: Pki, no_leaked_threads: None) -> None:
    with Client(tls_server.endpoint, **tls_kwargs(pki)) as client:
        rev = client.put("/tls/sync", "1")
        assert client.wait_for("/tls/sync", timeout=WAIT) >= rev


@pytest.mark.parametrize(
    "variant", ["plain-client", "no-client-cert", "untrusted-ca", "system-roots"]
)
async def test_tls_mismatch_fails_fast(tls_server: EtcdServer, pki: Pki, variant: str) -> None:
    host_port = tls_server.endpoint.split("://", 1)[1]
    endpoint, kwargs = {
        "plain-client": (f"http://{host_port}", {}),
        "no-client-cert": (tls_server.endpoint, {"ca_cert": pki.ca}),
        "untrusted-ca": (
            tls_server.endpoint,
            {"ca_cert": pki.other_ca, "cert": pki.client_cert, "key": pki.client_key},
        ),
        "system-roots": (tls_server.endpoint, {}),
    }[variant]
    async with client_of(endpoint, timeout=2, **kwargs) as client:
        with (
            quickly(),
            pytest.raises((etcdkit.ConnectionUnavailableError, etcdkit.EtcdTimeoutError)),
        ):
            await client.get("/tls/a")
        with quickly(), pytest.raises(etcdkit.EtcdTimeoutError):
            await client.wait_for("/tls/a", timeout=1)


@pytest.mark.parametrize("face", [AsyncClient, Client])
@pytest.mark.parametrize("case", ["garbled-ca", "cert-with-another-key"])
def test_tls_files_tls_cannot_use_fail_at_construction(
    pki: Pki, tmp_path: Path, face: type[AsyncClient | Client], case: str
) -> None:
    """PEM blocks that do not load, or a certificate with a key not its own: grpc took them
    and failed every handshake, each call a timeout naming nothing."""
    garbled = tmp_path / "garbled.pem"
    garbled.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    cases: dict[str, tuple[dict[str, Any], str]] = {
        "garbled-ca": ({"ca_cert": garbled}, "holds no certificate TLS can load"),
        "cert-with-another-key": (
            {"ca_cert": pki.ca, "cert": pki.client_cert, "key": pki.server_key},
            "not a certificate and its private key",
        ),
    }
    kwargs, match = cases[case]
    with quickly(), pytest.raises(ValueError, match=match):
        face("https://127.0.0.1:1", **kwargs)


# -- auth -----------------------------------------------------------------------------------------


async def enable_auth(endpoint: str, *, token_ttl_hint: str = "") -> None:
    """root (role root), alice (role app: read-write on APP), bob (role viewer: read on APP)."""
    async with AsyncClient(endpoint) as admin:
        auth = admin.raw.auth
        await auth.UserAdd(rpc.AuthUserAddRequest(name="root", password=ROOT_PW), timeout=5)
        await auth.RoleAdd(rpc.AuthRoleAddRequest(name="root"), timeout=5)
        await auth.UserGrantRole(rpc.AuthUserGrantRoleRequest(user="root", role="root"), timeout=5)
        end = APP[:-1] + chr(ord(APP[-1]) + 1)
        for user, password, role, perm in [
            ("alice", ALICE_PW, "app", rpc.Permission.READWRITE),
            ("bob", "bob-pw", "viewer", rpc.Permission.READ),
        ]:
            await auth.UserAdd(rpc.AuthUserAddRequest(name=user, password=password), timeout=5)
            await auth.RoleAdd(rpc.AuthRoleAddRequest(name=role), timeout=5)
            permission = rpc.Permission(permType=perm, key=APP.encode(), range_end=end.encode())
            await auth.RoleGrantPermission(
                rpc.AuthRoleGrantPermissionRequest(name=role, perm=permission), timeout=5
            )
            await auth.UserGrantRole(rpc.AuthUserGrantRoleRequest(user=user, role=role), timeout=5)
        await auth.AuthEnable(rpc.AuthEnableRequest(), timeout=5)


@pytest.fixture
async def auth_server(etcd_server_factory: Callable[..., EtcdServer]) -> EtcdServer:
    # Short-lived tokens, so the tests also cover the refresh of an expired token.
    server = etcd_server_factory(extra_args=["--auth-token-ttl", "2"])
    await enable_auth(server.endpoint)
    return server


async def test_recipes_inside_the_permitted_prefix(auth_server: EtcdServer) -> None:
    async with client_of(auth_server.endpoint, username="alice", password=ALICE_PW) as alice:
        await alice.put(APP + "a", "1")
        assert (await alice.get(APP + "a")).value == b"1"  # type: ignore[union-attr]
        assert [kv.key for kv in (await alice.get_prefix(APP)).kvs] == [b"/app/a"]
        async with alice.watch_prefix(APP) as watch:
            snap = await watch.synced(timeout=WAIT)
            assert dict(snap.tree) == {"/app/a": b"1"}
            waiter = asyncio.create_task(alice.wait_for(APP + "node", timeout=WAIT))
            async with alice.persistent_lease(APP + "node", "n", ttl=5) as lease:
                rev = await lease.registered(timeout=WAIT)
                assert await waiter >= rev
                async with asyncio.timeout(WAIT):
                    async for snap in watch:
                        if snap.revision >= rev:
                            break
                assert snap.tree[APP + "node"] == b"n"
                await asyncio.sleep(3)  # past the token TTL: calls refresh it by themselves
                await alice.put(APP + "b", "2")
                assert lease.state is LeaseState.REGISTERED
            assert await alice.delete(APP + "a")
        assert await alice.get(APP + "node") is None  # revoked on close


async def test_a_session_comes_back_after_a_restart_with_only_keepalives(
    auth_server: EtcdServer,
) -> None:
    # Only the keepalive stream talks to etcd here: after a restart (every token forgotten,
    # and the client's one expired anyway) it must get a new token by itself, as the watch
    # stream and unary calls do, or the session goes LOST although etcd is back in time.
    async with client_of(auth_server.endpoint, username="alice", password=ALICE_PW) as alice:
        async with alice.session(ttl=10) as session:
            await asyncio.sleep(2.5)  # past the token TTL
            auth_server.kill()
            await asyncio.sleep(0.5)
            auth_server.restart()
            async with asyncio.timeout(WAIT):
                while (
                    session.state is not SessionState.ALIVE or not alice.stats.keepalive_reconnects
                ):
                    await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)
            assert session.state is SessionState.ALIVE


def test_sync_client_with_auth(auth_server: EtcdServer, no_leaked_threads: None) -> None:
    with Client(auth_server.endpoint, username="alice", password=ALICE_PW) as alice:
        rev = alice.put(APP + "sync", "1")
        assert alice.wait_for(APP + "sync", timeout=WAIT) >= rev
        with pytest.raises(etcdkit.PermissionDeniedError):
            alice.put("/elsewhere", "1")


OUTSIDE = [
    ("get", lambda c: c.get("/other/k")),
    ("get_prefix", lambda c: c.get_prefix("/other/")),
    ("put", lambda c: c.put("/other/k", "v")),
    ("delete", lambda c: c.delete("/other/k")),
    ("delete_prefix", lambda c: c.delete_prefix("/other/")),
    ("wait_for", lambda c: c.wait_for("/other/k", timeout=WAIT)),
    ("wait_for_absent", lambda c: c.wait_for("/other/k", exists=False, timeout=WAIT)),
    ("prefix_straddling", lambda c: c.get_prefix("/ap")),
]


@pytest.mark.parametrize(("name", "call"), OUTSIDE, ids=[n for n, _ in OUTSIDE])
async def test_permission_denied_outside_the_prefix(
    auth_server: EtcdServer, name: str, call: Callable[[AsyncClient], Any]
) -> None:
    async with client_of(auth_server.endpoint, username="alice", password=ALICE_PW) as alice:
        with quickly(), pytest.raises(etcdkit.PermissionDeniedError, match="permission denied"):
            await call(alice)
        await alice.put(APP + "still-works", "1")


async def test_watch_outside_the_prefix_is_denied(auth_server: EtcdServer) -> None:
    async with client_of(auth_server.endpoint, username="alice", password=ALICE_PW) as alice:
        async with alice.watch_prefix("/other/") as watch:
            with quickly(), pytest.raises(etcdkit.PermissionDeniedError):
                await watch.synced(timeout=WAIT)
            with pytest.raises(etcdkit.PermissionDeniedError):
                await anext(watch)


async def test_persistent_lease_outside_the_prefix_is_denied(auth_server: EtcdServer) -> None:
    async with client_of(auth_server.endpoint, username="alice", password=ALICE_PW) as alice:
        async with alice.persistent_lease("/other/node", "n", ttl=5) as lease:
            with quickly(), pytest.raises(etcdkit.PermissionDeniedError):
                await lease.registered(timeout=WAIT)
            assert lease.state is LeaseState.FAILED
            assert isinstance(lease.error, etcdkit.PermissionDeniedError)


async def test_read_only_role(auth_server: EtcdServer) -> None:
    async with client_of(auth_server.endpoint, username="alice", password=ALICE_PW) as alice:
        await alice.put(APP + "r", "1")
    async with client_of(auth_server.endpoint, username="bob", password="bob-pw") as bob:
        async with bob.watch_prefix(APP) as watch:
            snap = await watch.synced(timeout=WAIT)
            assert snap.tree[APP + "r"] == b"1"
        assert await bob.wait_for(APP + "r", timeout=WAIT) > 0
        with quickly(), pytest.raises(etcdkit.PermissionDeniedError):
            await bob.put(APP + "r", "2")


@pytest.mark.parametrize(
    ("username", "password"),
    [("alice", "wrong"), ("mallory", "whatever"), ("alice", "")],
    ids=["wrong-password", "unknown-user", "empty-password"],
)
async def test_wrong_credentials(auth_server: EtcdServer, username: str, password: str) -> None:
    async with client_of(auth_server.endpoint, username=username, password=password) as client:
        with quickly(), pytest.raises(etcdkit.AuthError, match="username and password"):
            await client.get(APP + "k")
        with quickly(), pytest.raises(etcdkit.AuthError):
            await client.wait_for(APP + "k", timeout=WAIT)
        async with client.watch_prefix(APP) as watch:
            with quickly(), pytest.raises(etcdkit.AuthError):
                await watch.synced(timeout=WAIT)


async def test_no_credentials_on_an_auth_server(auth_server: EtcdServer) -> None:
    async with client_of(auth_server.endpoint) as client:
        with quickly(), pytest.raises(etcdkit.AuthError):
            await client.get(APP + "k")
