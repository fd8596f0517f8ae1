"""``etcdkit dev``: a local etcd (one member or a real 3-member cluster) until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from pathlib import Path

from etcdkit.cli.common import EXIT_ERROR, EXIT_OK, CliError, ConnOptions, Stopper, UsageError, out
from etcdkit.testing import HOST, EtcdCluster, EtcdServer, etcd_version, find_etcd_binary

log = logging.getLogger("etcdkit.cli")

DEFAULT_CLIENT_PORT = 2379
DEFAULT_PEER_PORT = 2380
POLL = 0.5


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _make_target(
    members: int, data_dir: str | None, port: int | None, binary: Path
) -> EtcdServer | EtcdCluster:
    if members != 1:
        return EtcdCluster(size=members, binary=binary)
    if port is None:
        port = DEFAULT_CLIENT_PORT if _port_free(DEFAULT_CLIENT_PORT) else 0
    elif port and not _port_free(port):
        raise CliError(f"port {port} on {HOST} is in use; pick another or --port 0")
    peer = DEFAULT_PEER_PORT if port == DEFAULT_CLIENT_PORT else 0
    if peer and not _port_free(peer):
        peer = 0
    data = Path(data_dir).expanduser().resolve() if data_dir is not None else None
    if data is not None:
        data.parent.mkdir(parents=True, exist_ok=True)
    return EtcdServer(
        binary=binary, data_dir=data, client_port=port or None, peer_port=peer or None
    )


def _members(target: EtcdServer | EtcdCluster) -> list[EtcdServer]:
    return target.members if isinstance(target, EtcdCluster) else [target]


def _shutdown(target: EtcdServer | EtcdCluster) -> None:
    """SIGTERM every member and wait (etcd flushes and exits), then remove temporary dirs."""
    for m in _members(target):
        try:
            m.stop()
        except Exception as exc:  # still close the others
            log.warning("stopping %r failed: %s", m, exc)
    target.close()


async def run_dev(args: argparse.Namespace, opts: ConnOptions) -> int:
    members: int = args.members
    data_dir: str | None = args.data_dir
    port: int | None = args.port
    if members != 1 and data_dir is not None:
        raise UsageError("--data-dir works with --members 1 only (cluster data is temporary)")
    if members != 1 and port is not None:
        raise UsageError("--port works with --members 1 only (cluster ports are chosen free)")
    binary = find_etcd_binary()
    version = await asyncio.to_thread(etcd_version, binary)

    target = _make_target(members, data_dir, port, binary)

    async with Stopper() as stop:
        start: Callable[[], object] = target.start
        starting = asyncio.ensure_future(asyncio.to_thread(start))
        try:
            # A signal while starting: let the start finish (a thread cannot be interrupted),
            # then stop as asked.
            await asyncio.shield(starting)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await starting
            await asyncio.to_thread(_shutdown, target)
            raise
        except BaseException:
            await asyncio.to_thread(_shutdown, target)
            raise
        try:
            if not stop.stopped:
                _announce(target, version, data_dir)
            return await _supervise(target, stop)
        finally:
            # (stdout may be gone, e.g. `| grep` ended: out() drops it, etcd is stopped all
            # the same)
            out("stopping etcd ...")
            await asyncio.to_thread(_shutdown, target)
            out("etcd stopped")


def _announce(target: EtcdServer | EtcdCluster, version: str, data_dir: str | None) -> None:
    ms = _members(target)
    endpoints = ",".join(m.endpoint for m in ms)
    kind = "1 member" if len(ms) == 1 else f"a {len(ms)}-member cluster"
    out(f"etcd {version} running on {HOST} ({kind})")
    for m in ms:
        out(f"  {m.name}: {m.endpoint}  (log: {m.log_path})")
    if data_dir is not None:
        out(f"  data kept in {ms[0].data_dir}")
    else:
        out("  data is temporary (removed on exit)")
    out(f"export ETCDKIT_ENDPOINTS={endpoints}")
    out("Press Ctrl-C to stop.")


async def _supervise(target: EtcdServer | EtcdCluster, stop: Stopper) -> int:
    """Run until a stop signal; fail if a member exits by itself."""
    while not stop.stopped:
        dead = [m for m in _members(target) if not m.running]
        if dead:
            m = dead[0]
            raise CliError(
                f"etcd {m.name} at {m.endpoint} exited unexpectedly; its log:\n{m.logs(20)}",
                EXIT_ERROR,
            )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(POLL):
                await stop.wait()
    return EXIT_OK
