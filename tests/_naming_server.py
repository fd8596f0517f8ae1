"""A gRPC echo server that registers itself under a target with etcdkit.naming, run as its own
process by tests/test_naming_grpc.py, tests/test_naming_go.py and the bench (so that it can be
killed with SIGKILL, leaving its lease to expire as a crashed server's would).

    python tests/_naming_server.py ENDPOINT TARGET NAME [TTL]

Serves ``/test.Echo/Who`` (replies ``NAME:request``) on a free port of 127.0.0.1, registers
``TARGET/127.0.0.1:PORT`` (metadata NAME), prints ``registered ADDR TTL`` once etcd holds it,
and serves until killed (SIGTERM: deregisters first).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

import grpc
import grpc.aio

from etcdkit import AsyncClient


async def main(endpoint: str, target: str, name: str, ttl: int) -> None:
    async def who(request: bytes, context: Any) -> bytes:
        return name.encode() + b":" + request

    handler = grpc.method_handlers_generic_handler(
        "test.Echo", {"Who": grpc.unary_unary_rpc_method_handler(who)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    addr = f"127.0.0.1:{port}"
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with AsyncClient(endpoint) as etcd:
        async with etcd.endpoint_manager(target).register(addr, name, ttl=ttl) as reg:
            await reg.registered(timeout=30)
            print(f"registered {addr} {reg.ttl}", flush=True)
            await stop.wait()
    await server.stop(None)


if __name__ == "__main__":
    args = sys.argv[1:]
    asyncio.run(main(args[0], args[1], args[2], int(args[3]) if len(args) > 3 else 5))
