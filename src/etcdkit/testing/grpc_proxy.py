"""etcd's own gRPC proxy (``etcd grpc-proxy start``) on loopback, in front of real etcd.

The proxy coalesces identical watches of many clients into one etcd watcher and forwards
everything else; it is how etcd scales watch fan-out. :class:`GrpcProxy` runs one (the same
etcd binary as :class:`~etcdkit.testing.EtcdServer`) for tests and benchmarks, with the same
controls: ``kill()``, ``stop()``, ``restart()`` (same port), ``logs()``, context manager.

Nothing here listens anywhere but 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from etcdkit.testing.ports import HOST, free_port
from etcdkit.testing.server import (
    LOG_TAIL_LINES,
    EtcdCluster,
    EtcdServer,
    EtcdServerError,
    etcd_version,
    find_etcd_binary,
)

__all__ = ["GrpcProxy"]

log = logging.getLogger("etcdkit.server")


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


class GrpcProxy:
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
        self._proc: subprocess.Popen[bytes] | None = None
        self._closed = False
        self._lock = threading.RLock()

    # -- facts ------------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def version(self) -> str:
        return etcd_version(self.binary)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<GrpcProxy {self.endpoint} -> {','.join(self.targets)} {state}>"

    def logs(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines the proxy wrote (all its runs)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def metrics(self) -> str:
        """The proxy's Prometheus metrics text (``/metrics`` on its own port)."""
        with urllib.request.urlopen(f"{self.endpoint}/metrics", timeout=2.0) as resp:
            return str(resp.read().decode())

    # -- lifecycle --------------------------------------------------------------------------------

    def __enter__(self) -> GrpcProxy:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

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

    def start(self, *, wait: bool = True) -> GrpcProxy:
        """Start the proxy and (unless ``wait=False``) wait until it answers through to etcd."""
        with self._lock:
            if self._closed:
                raise EtcdServerError(f"{self!r} is closed")
            if not self.running:
                self._work.mkdir(parents=True, exist_ok=True)
                with open(self.log_path, "ab") as out:
                    out.write(f"--- etcdkit: starting grpc-proxy at {time.ctime()}\n".encode())
                    out.flush()
                    try:
                        self._proc = subprocess.Popen(
                            self._args(),
                            stdin=subprocess.DEVNULL,
                            stdout=out,
                            stderr=subprocess.STDOUT,
                            start_new_session=True,
                        )
                    except OSError as exc:
                        raise EtcdServerError(f"cannot start {self.binary}: {exc}") from exc
                log.debug("started %r (pid %s)", self, self._proc.pid)
        if wait:
            self.wait_healthy()
        return self

    def healthy(self, timeout: float = 1.0) -> bool:
        """Whether the proxy's ``/health`` answers ``true`` (it reads from etcd to say so)."""
        try:
            with urllib.request.urlopen(f"{self.endpoint}/health", timeout=timeout) as resp:
                body = json.loads(resp.read() or b"{}")
        except (OSError, ValueError, urllib.error.URLError):
            return False
        return str(body.get("health")) == "true"

    def wait_healthy(self, timeout: float | None = None) -> None:
        """Block until healthy; on failure raise :class:`EtcdServerError` with the log tail."""
        limit = timeout if timeout is not None else self.start_timeout
        deadline = time.monotonic() + limit
        while True:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                code = proc.returncode if proc is not None else None
                raise EtcdServerError(
                    f"grpc-proxy at {self.endpoint} exited (code {code}) while starting; "
                    f"its log:\n{self.logs(40)}"
                )
            if self.healthy():
                return
            if time.monotonic() > deadline:
                raise EtcdServerError(
                    f"grpc-proxy at {self.endpoint} was not healthy within {limit:.0f}s "
                    f"(is etcd at {','.join(self.targets)} up?); its log:\n{self.logs(40)}"
                )
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the proxy and reap it: every client connection breaks at once."""
        self._signal_stop(signal.SIGKILL, 10.0)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the proxy and wait; SIGKILL after ``timeout``."""
        self._signal_stop(signal.SIGTERM, timeout)

    def _signal_stop(self, sig: signal.Signals, timeout: float) -> None:
        with self._lock:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                return
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def restart(self) -> None:
        """Stop (if running) and start again on the same port."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Kill the proxy and remove its temporary directory; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self.kill()
            shutil.rmtree(self._work, ignore_errors=True)
