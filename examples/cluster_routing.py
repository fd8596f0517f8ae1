"""Route gRPC calls by user id over a cluster of servers that register themselves in etcd.

Three ways to run it (from the repository root, with etcdkit installed):

    python examples/cluster_routing.py demo
        # starts an etcd of its own, 3 servers and a client; kills one server (its users move
        # to the others within the TTL), then stops one gracefully (its users move at once)

    python examples/cluster_routing.py server --name a     # one server (until Ctrl-C/SIGTERM)
    python examples/cluster_routing.py client --users 12   # the client: one JSON line per round

(``--endpoints`` or ``$ETCDKIT_ENDPOINTS`` says where etcd is; ``etcdkit dev`` starts one.)

A server publishes ``NodeDescriptor(name, "127.0.0.1:PORT", weight=100)`` as its member data
under ``--root``; the client opens a :class:`RoutedChannel` on the same root, whose key
function makes the user id of each request its routing key, so every user's calls go to the
ring owner of that user. A server stopped with SIGTERM deregisters first, then drains its
calls: its users move at once. A killed server stays in the view until its lease expires
(``--ttl`` seconds); meanwhile calls to it fail UNAVAILABLE and go to the next ring node.

The service is defined with grpc's generic handlers (no protoc): ``/example.Users/Lookup``
takes a user id (bytes) and answers ``{"server": NAME, "user": ID}`` as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import grpc
import grpc.aio

import etcdkit
from etcdkit.cluster import NodeDescriptor
from etcdkit.cluster.grpc import RoutedChannel

METHOD = "/example.Users/Lookup"
DEFAULT_ROOT = "/examples/users"


def user_id(i: int) -> bytes:
    return b"user-%d" % i


# -- a server ---------------------------------------------------------------------------------


async def serve(name: str, root: str, ttl: int, endpoints: str | None) -> None:
    """Serve Lookup on a free loopback port and register under *root* until SIGTERM/SIGINT."""

    async def lookup(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return json.dumps({"server": name, "user": request.decode()}).encode()

    handler = grpc.method_handlers_generic_handler(
        "example.Users", {"Lookup": grpc.unary_unary_rpc_method_handler(lookup)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with etcdkit.AsyncClient(endpoints) as etcd, etcd.cluster(root, ttl=ttl) as cluster:
            me = cluster.membership(id=name)
            me.set_data(NodeDescriptor(name, f"127.0.0.1:{port}", weight=100).encode())
            await me.register(timeout=10)
            print(f"ready {name} 127.0.0.1:{port}", flush=True)
            await stop.wait()
            # Leave first (the clients' views drop us at once), then drain our calls.
            await me.deregister(timeout=5)
            print(f"left {name}", flush=True)
    finally:
        await server.stop(grace=2.0)


# -- the client -----------------------------------------------------------------------------


async def client(
    root: str, users: int, rounds: int | None, interval: float, endpoints: str | None
) -> None:
    """Ask for every user each round; print one JSON line per round: who answered each user,
    which node the view names as its owner, and the nodes in the view."""
    async with (
        etcdkit.AsyncClient(endpoints) as etcd,
        etcd.cluster(root) as cluster,
        RoutedChannel(cluster, key=lambda request: request) as channel,
    ):
        lookup = channel.unary_unary(METHOD)  # what a generated stub does
        n = 0
        while rounds is None or n < rounds:
            answered: dict[str, Any] = {}
            owners: dict[str, str | None] = {}
            for i in range(users):
                uid = user_id(i)
                owner = channel.owner(uid)
                owners[uid.decode()] = owner.id if owner is not None else None
                try:
                    reply = json.loads(await lookup(uid, timeout=2.0))
                    answered[uid.decode()] = reply["server"]
                except grpc.aio.AioRpcError as exc:
                    answered[uid.decode()] = {"error": exc.code().name}
            line = {
                "round": n,
                "t": round(time.monotonic(), 3),
                "nodes": sorted(channel.view.nodes),
                "answered": answered,
                "owners": owners,
            }
            print(json.dumps(line), flush=True)
            n += 1
            await asyncio.sleep(interval)


# -- the self-running demo -------------------------------------------------------------------


def _spawn(*args: str, endpoints: str) -> subprocess.Popen[str]:
    env = dict(os.environ, ETCDKIT_ENDPOINTS=endpoints)
    return subprocess.Popen(
        [sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True, env=env
    )


def _summary(line: dict[str, Any]) -> str:
    counts: dict[str, int] = {}
    for server in line["answered"].values():
        key = server if isinstance(server, str) else "error"
        counts[key] = counts.get(key, 0) + 1
    per = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
    return f"nodes {line['nodes']}  users per server {{{per}}}"


def demo(ttl: int) -> None:
    from etcdkit.testing import EtcdServer

    with EtcdServer() as etcd:
        print(f"etcd at {etcd.endpoint}; starting servers a, b, c (ttl {ttl} s)")
        servers = {
            n: _spawn("server", "--name", n, "--ttl", str(ttl), endpoints=etcd.endpoint)
            for n in "abc"
        }
        try:
            for proc in servers.values():
                assert proc.stdout is not None
                print("  " + proc.stdout.readline().strip())
            watcher = _spawn(
                "client", "--users", "12", "--interval", "0.25", endpoints=etcd.endpoint
            )
            assert watcher.stdout is not None
            try:

                def show(rounds: int, what: str) -> None:
                    for _ in range(rounds):
                        line = json.loads(watcher.stdout.readline())  # type: ignore[union-attr]
                        print(f"{what:<14}{_summary(line)}")

                show(3, "all up:")
                servers["a"].kill()
                print(
                    "killed a (SIGKILL): its users go to the next node at once (retries); "
                    f"a leaves the view when its lease expires (<= {ttl} s)"
                )
                show(int(ttl / 0.25) + 6, "a killed:")
                servers["b"].send_signal(signal.SIGTERM)
                print("stopped b (SIGTERM): it deregisters first, so it leaves at once")
                show(6, "b stopped:")
            finally:
                watcher.terminate()
                watcher.wait(10)
        finally:
            for proc in servers.values():
                if proc.poll() is None:
                    proc.terminate()
            for proc in servers.values():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoints", default=None, help="etcd endpoints ($ETCDKIT_ENDPOINTS)")
    parser.add_argument("--root", default=DEFAULT_ROOT, help=f"cluster root ({DEFAULT_ROOT})")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("server", help="serve and register until SIGTERM")
    p.add_argument("--name", required=True)
    p.add_argument("--ttl", type=int, default=3)
    p = sub.add_parser("client", help="route lookups by user id; JSON lines")
    p.add_argument("--users", type=int, default=12)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--interval", type=float, default=0.5)
    p = sub.add_parser("demo", help="etcd, 3 servers, a client, and two failures")
    p.add_argument("--ttl", type=int, default=3)
    args = parser.parse_args(argv)
    try:
        if args.command == "server":
            asyncio.run(serve(args.name, args.root, args.ttl, args.endpoints))
        elif args.command == "client":
            asyncio.run(client(args.root, args.users, args.rounds, args.interval, args.endpoints))
        else:
            demo(args.ttl)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
