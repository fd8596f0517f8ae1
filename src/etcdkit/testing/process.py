"""What the test kit's processes share: start with a log file, wait until healthy, stop by
signal, restart, close (an etcd member and an etcd gRPC proxy are both one)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
import weakref
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from etcdkit._errors import EtcdkitError

__all__ = ["EtcdServerError", "ManagedProcess", "end_all"]

log = logging.getLogger("etcdkit.server")

LOG_TAIL_LINES = 200
P = TypeVar("P", bound="ManagedProcess")


def stat_fields(pid: int | str) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command's name (state, parent pid, ...);
    ``None`` without it (the process gone, or no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def from_env(binary: str | os.PathLike[str]) -> bool:
    """Whether ``ETCDKIT_ETCD_BIN`` names ``binary`` (for errors that say where it came from)."""
    chosen = os.environ.get("ETCDKIT_ETCD_BIN")
    return chosen is not None and chosen != "" and Path(chosen) == Path(binary)


def _wait_stopped(pid: int, bound: float = 2.0) -> None:
    """Wait (bounded) until ``/proc/PID/stat`` shows the process stopped; no-op without /proc."""
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        fields = stat_fields(pid)
        if fields is None or fields[0] in ("T", "t"):
            return
        time.sleep(0.005)


def _signal(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Send ``sig`` to ``proc``'s process group (its own: ``start_new_session``): a binary
    that is a wrapper script starting etcd without ``exec`` has etcd as its child, and a
    signal to the script alone would leave etcd running (killed, or paused, in name only)."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)  # (the group is gone: only a zombie leader, if anything)


def _reap_group(pgid: int, bound: float = 10.0) -> None:
    """After the group's leader exited: wait (bounded) for the rest of its process group (a
    wrapper's etcd), then SIGKILL what is left of it."""
    deadline = time.monotonic() + bound
    while True:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
            return
        time.sleep(0.01)


def _end(children: list[subprocess.Popen[bytes]], work: Path, owner: int) -> None:
    """Kill what is left running of a process's children and remove its work dir; only in
    the process that started them (``owner``): a forked child (a test's multiprocessing
    worker, terminated or exiting) inherits the finalizers and the plugin's signal handler,
    and once removed its parent's running etcd's data and logs."""
    if os.getpid() != owner:
        return
    for proc in children:
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                _signal(proc, signal.SIGKILL)
                _signal(proc, signal.SIGCONT)  # (a paused one must not stay stopped)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        _reap_group(proc.pid, bound=2.0)
    shutil.rmtree(work, ignore_errors=True)


# Every process object not yet ended, for end_all (weakly: one dropped is ended by its finalizer).
_LIVE: weakref.WeakSet[ManagedProcess] = weakref.WeakSet()


def end_all() -> None:
    """Kill every process the test kit started that is still running, and remove their work
    dirs, as if each were closed (the pytest plugin calls it when the test run is killed by
    SIGTERM or SIGHUP: their processes run in sessions of their own, so nothing else stops
    them)."""
    for proc in list(_LIVE):
        proc._finalizer()


class EtcdServerError(EtcdkitError):
    """A test etcd process (or proxy) could not be started or controlled."""


class ManagedProcess:
    """One child process with a work dir and a log, healthy once ``health_url`` says so.

    Subclasses set ``binary``, ``start_timeout``, ``_work`` and ``log_path``, call
    ``super().__init__()``, and give ``_args()``, ``health_url`` and ``what``.
    """

    binary: Path
    start_timeout: float
    log_path: Path
    _work: Path

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._closed = False
        self._lock = threading.RLock()
        # What close() ends, ended too if it is never called: when this object is collected,
        # or at the interpreter's exit (a forgotten server must not outlive the test run; its
        # process is in a session of its own, so nothing else stops it).
        self._children: list[subprocess.Popen[bytes]] = []
        self._finalizer = weakref.finalize(self, _end, self._children, self._work, os.getpid())
        _LIVE.add(self)

    # -- what a subclass says ---------------------------------------------------------------------

    @property
    def what(self) -> str:
        raise NotImplementedError

    @property
    def health_url(self) -> str:
        raise NotImplementedError

    def _args(self) -> list[str]:
        raise NotImplementedError

    def _unhealthy_hint(self) -> str:
        return ""

    # -- facts ------------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def paused(self) -> bool:
        """Stopped by :meth:`pause` (SIGSTOP) and not resumed (nor killed since)."""
        return self._paused and self.running

    @property
    def running(self) -> bool:
        """The process exists and has not exited (a paused process is running)."""
        return self._proc is not None and self._proc.poll() is None

    def logs(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines the process wrote (all its runs; ``0``: none)."""
        if not isinstance(lines, int) or isinstance(lines, bool):
            raise TypeError(f"lines must be an int, got {lines!r:.40}")
        if lines < 0:
            raise ValueError(f"lines must be >= 0, got {lines}")
        if not lines:
            return ""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- lifecycle --------------------------------------------------------------------------------

    def __enter__(self: P) -> P:
        try:
            self.start()
        except BaseException:
            self.close()  # (__exit__ does not run when __enter__ raises)
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(self: P, *, wait: bool = True) -> P:
        """Start the process and (unless ``wait=False``) wait until it is healthy. A paused
        one is resumed (it waited out ``start_timeout``, then was killed as unhealthy)."""
        if self.paused:
            self.resume()
        self._spawn()
        if wait:
            try:
                self.wait_healthy()
            except BaseException:
                self.kill()  # not healthy in time: not left running either
                raise
        return self

    def _spawn(self) -> None:
        with self._lock:
            if self._closed:
                raise EtcdServerError(f"{self!r} is closed")
            if self.running:
                return
            self._work.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "ab") as out:
                out.write(f"--- etcdkit: starting {self.what} at {time.ctime()}\n".encode())
                out.flush()
                try:
                    self._proc = subprocess.Popen(
                        self._args(),
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # Ctrl-C in a terminal must not hit it first
                    )
                except OSError as exc:
                    raise EtcdServerError(f"cannot start {self.binary}: {exc}") from exc
            self._children[:] = [self._proc]
            self._paused = False
            log.debug("started %r (pid %s)", self, self._proc.pid)

    def healthy(self, timeout: float = 1.0) -> bool:
        """Whether ``/health`` answers ``true``."""
        try:
            with urllib.request.urlopen(self.health_url, timeout=timeout) as resp:
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
                    f"{self.what} exited (code {code}) while starting{self._binary_note()}; "
                    f"its log:\n{self.logs(40)}"
                )
            if self.healthy():
                return
            if time.monotonic() > deadline:
                raise EtcdServerError(
                    f"{self.what} was not healthy within {limit:.0f}s{self._unhealthy_hint()}"
                    f"{self._binary_note()}; its log:\n{self.logs(40)}"
                )
            time.sleep(0.05)

    def _binary_note(self) -> str:
        """Which binary ran, and whether ``ETCDKIT_ETCD_BIN`` chose it (a binary that is not
        etcd fails this way too)."""
        came = " from ETCDKIT_ETCD_BIN" if from_env(self.binary) else ""
        return f" (binary {str(self.binary)!r}{came})"

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
            _signal(proc, sig)
            if self._paused:
                _signal(proc, signal.SIGCONT)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal(proc, signal.SIGKILL)
                proc.wait(10)
            _reap_group(proc.pid, timeout)
            self._paused = False

    def restart(self) -> None:
        """Stop (if running) and start again on the same ports (and data dir)."""
        self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP the process: it keeps its sockets but answers nothing. Returns once the
        kernel reports it stopped (a signal is delivered asynchronously: a busy machine could
        otherwise let it answer a request sent right after this returns)."""
        with self._lock:
            if self.running and not self._paused:
                assert self._proc is not None
                _signal(self._proc, signal.SIGSTOP)
                self._paused = True
                _wait_stopped(self._proc.pid)

    def resume(self) -> None:
        """SIGCONT a paused process."""
        with self._lock:
            if self.running and self._paused:
                assert self._proc is not None
                _signal(self._proc, signal.SIGCONT)
            self._paused = False

    def close(self) -> None:
        """Kill the process and remove its temporary directory; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self.kill()
            # The work dir (log, and the data unless the caller gave a data_dir) is ours.
            self._finalizer()
            _LIVE.discard(self)
