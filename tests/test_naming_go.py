"""Interop with Go's etcd naming (etcd 3.4's ``clientv3/naming/endpoints`` and ``resolver``, as
Debian's golang-etcd-server-dev ships them): small Go programs under tests/go/naming_*, built in
GOPATH mode once per module. Skipped without Go or when the build fails (e.g. no Go sources).

- a Go ``AddEndpoint`` is read by our manager, our watch and our channel, and its bytes are
  what we write for the same endpoint;
- our ``register`` is seen by Go's ``List`` and ``NewWatchChannel``;
- a Go gRPC client resolving ``etcd:///target`` (round_robin) calls Python servers we register.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from etcdkit import AsyncClient, Endpoint
from etcdkit.naming import encode_endpoint
from etcdkit.naming.grpc import channel
from etcdkit.server import EtcdServer
from test_cluster_grpc import SERVICE, EchoStub, Node, owner_name

WAIT = 20.0
GO_DIR = Path(__file__).with_name("go")
GOPATH_DEBIAN = "/usr/share/gocode"


@pytest.fixture(scope="module")
def go_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    go = shutil.which("go")
    if go is None:
        pytest.skip("Go is not installed (apt install golang-go golang-etcd-server-dev)")
    out = tmp_path_factory.mktemp("naming-go")
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": f"{out / 'gopath'}:{os.environ.get('ETCDKIT_GOPATH', GOPATH_DEBIAN)}",
        "GOCACHE": str(out / "cache"),
        "GOFLAGS": "",
    }
    for name in ("naming_endpoints", "naming_resolver"):
        res = subprocess.run(
            [go, "build", "-o", str(out / name), "."],
            cwd=GO_DIR / name,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if res.returncode != 0:
            pytest.skip(
                f"cannot build tests/go/{name} (Go's etcd 3.4 sources?): {res.stderr[-500:]}"
            )
    return out


async def go(go_bin: Path, program: str, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        str(go_bin / program),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(60):
            out, err = await proc.communicate()
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode()
    return out.decode()


class GoWatch:
    """Go's ``NewWatchChannel`` in a process: one JSON list of updates per line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, go_bin: Path, endpoint: str, target: str) -> GoWatch:
        proc = await asyncio.create_subprocess_exec(
            str(go_bin / "naming_endpoints"),
            endpoint,
            target,
            "watch",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        watch = cls(proc)
        assert await watch.next() == {"ready": True}
        return watch

    async def next(self) -> Any:
        assert self.proc.stdout is not None
        async with asyncio.timeout(WAIT):
            line = await self.proc.stdout.readline()
        assert line, "Go's watch ended"
        return json.loads(line)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()  # the program cancels its watch and exits
            try:
                async with asyncio.timeout(5):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


@pytest.fixture
async def nodes() -> AsyncIterator[list[Node]]:
    made = [await Node(f"n{i}").start() for i in range(2)]
    try:
        yield made
    finally:
        for node in made:
            await node.stop()


async def until(check: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_go_add_endpoint_is_read_by_our_manager_watch_and_channel(
    go_bin: Path,
    etcd: AsyncClient,
    etcd_server: EtcdServer,
    etcd_prefix: str,
    nodes: list[Node],
) -> None:
    target = etcd_prefix + "go-svc"
    eps = etcd.endpoint_manager(target)
    async with eps.watch() as w:
        await w.synced(timeout=WAIT)
        for n in nodes:
            await go(
                go_bin,
                "naming_endpoints",
                etcd_server.endpoint,
                target,
                "add",
                f"{target}/{n.name}",
                n.address,
                json.dumps(n.name),
            )
        want = {f"{target}/{n.name}": Endpoint(n.address, n.name) for n in nodes}
        async with asyncio.timeout(WAIT):
            async for view in w:
                if dict(view.tree) == want:
                    break
    assert await eps.list() == want
    # byte for byte what we write for the same endpoint
    kv = await etcd.get(f"{target}/{nodes[0].name}")
    assert kv is not None
    assert kv.value.decode() == encode_endpoint(nodes[0].address, nodes[0].name)

    async with channel(etcd, target) as ch:
        stub = EchoStub(ch)
        seen = {owner_name(await stub.Who(b"py", timeout=WAIT)) for _ in range(10)}
        assert seen == {"n0", "n1"}
        await go(go_bin, "naming_endpoints", etcd_server.endpoint, target, "delete", f"{target}/n0")

        async def only_n1() -> bool:
            return {owner_name(await stub.Who(b"py", timeout=WAIT)) for _ in range(4)} == {"n1"}

        await until(only_n1, "the channel to drop the endpoint Go deleted")


async def test_our_register_is_seen_by_go_list_and_watch_channel(
    go_bin: Path, etcd: AsyncClient, etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    target = etcd_prefix + "py-svc"
    eps = etcd.endpoint_manager(target)
    watch = await GoWatch.start(go_bin, etcd_server.endpoint, target)
    try:
        async with eps.register("127.0.0.1:7001", "meta-1", ttl=5) as reg:
            await reg.registered(timeout=WAIT)
            listed = json.loads(
                await go(go_bin, "naming_endpoints", etcd_server.endpoint, target, "list")
            )
            assert listed == {
                f"{target}/127.0.0.1:7001": {"Addr": "127.0.0.1:7001", "Metadata": "meta-1"}
            }
            (added,) = await watch.next()
            assert added["Op"] == 0  # endpoints.Add
            assert added["Key"] == f"{target}/127.0.0.1:7001"
            assert added["Endpoint"] == {"Addr": "127.0.0.1:7001", "Metadata": "meta-1"}
        (deleted,) = await watch.next()  # leaving the block removed it
        assert deleted["Op"] == 1  # endpoints.Delete
        assert deleted["Key"] == f"{target}/127.0.0.1:7001"
    finally:
        await watch.stop()


async def test_a_go_grpc_client_resolving_etcd_calls_servers_we_register(
    go_bin: Path,
    etcd: AsyncClient,
    etcd_server: EtcdServer,
    etcd_prefix: str,
    nodes: list[Node],
) -> None:
    target = etcd_prefix + "mixed"
    eps = etcd.endpoint_manager(target)
    regs = [eps.register(n.address, n.name, ttl=5) for n in nodes]
    try:
        for reg in regs:
            await reg.registered(timeout=WAIT)
        out = await go(
            go_bin, "naming_resolver", etcd_server.endpoint, target, f"/{SERVICE}/Who", "20"
        )
    finally:
        for reg in regs:
            await reg.aclose()
    replies = out.split()
    assert len(replies) == 20
    assert {r.split(":")[0] for r in replies} == {"n0", "n1"}  # round_robin over both
    assert all(r.endswith(":go") for r in replies)
