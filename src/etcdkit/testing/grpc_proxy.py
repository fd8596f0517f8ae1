"""etcd's own gRPC proxy (``etcd grpc-proxy start``) on loopback, in front of real etcd.

The proxy coalesces identical watches of many clients into one etcd watcher and forwards
everything else; it is how etcd scales watch fan-out. :class:`GrpcProxy` runs one (the same
etcd binary as :class:`~etcdkit.testing.EtcdServer`) for tests and benchmarks, with the same
controls: ``kill()``, ``stop()``, ``restart()`` (same port), ``logs()``, context manager.

Nothing here listens anywhere but 127.0.0.1.
"""

from __future__ import annotations

import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from etcdkit.testing.ports import HOST, free_port
from etcdkit.testing.process import ManagedProcess
from etcdkit.testing.server import (
    EtcdCluster,
    EtcdServer,
    check_args,
    etcd_version,
    find_etcd_binary,
)

__all__ = ["GrpcProxy"]


def _target_endpoints(target: EtcdServer | EtcdCluster | str | Sequence[str]) -> list[str]:
    if isinstance(target, EtcdServer):
        return [target.endpoint]
    if isinstance(target, EtcdCluster):
        return list(target.endpoints)
    if isinstance(target, str):
        found = [e.strip() for e in target.split(",") if e.strip()]
    elif isinstance(target, Sequence) and all(isinstance(e, str) for e in target):
        found = [e.strip() for e in target if e.strip()]
    else:
        raise TypeError(
            f"target must be an EtcdServer, an EtcdCluster, or endpoints, got {target!r:.80}"
        )
    if not found:
        raise ValueError("target names no endpoint")
    return found


class GrpcProxy(ManagedProcess):
    """``etcd grpc-proxy start`` on a free loopback port in front of ``target``.

    ``target`` is an :class:`EtcdServer`, an :class:`EtcdCluster` (all its members) or
    endpoints. ``GrpcProxy(target)`` does not start anything; ``start()`` (or ``with``) does, and
    returns once the proxy answers ``/health`` through to etcd (so ``target`` must be up).
    ``endpoint`` is ``"http://127.0.0.1:PORT"`` and stays the same across ``restart()``.
    ``extra_args`` go to ``etcd grpc-proxy start`` unchanged.
    """

    def __init__(
        self,
        target: EtcdServer | EtcdCluster | str | Sequence[str],
        *,
        binary: str | os.PathLike[str] | None = None,
        port: int | None = None,
        extra_args: Sequence[str] = (),
        start_timeout: float = 30.0,
    ) -> None:
        check_args(binary=binary, data_dir=None, name="grpc-proxy", extra_args=extra_args,
                    start_timeout=start_timeout, ports=(("port", port),))  # fmt: skip
        self.targets = _target_endpoints(target)
        if binary is None:
            if isinstance(target, EtcdServer):
                binary = target.binary
            elif isinstance(target, EtcdCluster):
                binary = target.members[0].binary
            else:
                binary = find_etcd_binary()
        self.binary = Path(binary)
        self.port = port or free_port()
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        self._work = Path(tempfile.mkdtemp(prefix="etcdkit-grpc-proxy-"))
        self.log_path = self._work / "grpc-proxy.log"
        super().__init__()

    # -- facts ------------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def version(self) -> str:
        return etcd_version(self.binary)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<GrpcProxy {self.endpoint} -> {','.join(self.targets)} {state}>"

    @property
    def what(self) -> str:
        return f"grpc-proxy at {self.endpoint}"

    @property
    def health_url(self) -> str:
        """The proxy's ``/health`` (it reads from etcd to say so)."""
        return f"{self.endpoint}/health"

    def _unhealthy_hint(self) -> str:
        return f" (is etcd at {','.join(self.targets)} up?)"

    def metrics(self) -> str:
        """The proxy's Prometheus metrics text (``/metrics`` on its own port)."""
        with urllib.request.urlopen(f"{self.endpoint}/metrics", timeout=2.0) as resp:
            return str(resp.read().decode())

    # -- lifecycle --------------------------------------------------------------------------------

    def _args(self) -> list[str]:
        addr = f"{HOST}:{self.port}"
        return [
            str(self.binary), "grpc-proxy", "start",
            "--endpoints", ",".join(self.targets),
            "--listen-addr", addr,
            # The proxy dials its own advertised address for its lock and election services;
            # the default (127.0.0.1:23790) could be somebody else's proxy.
            "--advertise-client-url", addr,
            "--data-dir", str(self._work / "data"),
            *self.extra_args,
        ]  # fmt: skip
