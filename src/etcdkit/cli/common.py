"""Shared plumbing of the ``etcdkit`` command: errors, connection, signals, output helpers."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, TypeVar

from etcdkit import AsyncClient
from etcdkit._errors import (
    AuthError,
    ConnectionUnavailableError,
    EtcdkitError,
    EtcdTimeoutError,
    PermissionDeniedError,
)

log = logging.getLogger("etcdkit.cli")

T = TypeVar("T")

ENV_ENDPOINTS = "ETCDKIT_ENDPOINTS"
ENV_PASSWORD = "ETCDKIT_PASSWORD"

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """An expected failure: printed as one line ``etcdkit: <message>``, exit ``code``."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


class UsageError(CliError):
    """A bad argument found after parsing (exit 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_USAGE)


@dataclass(frozen=True)
class ConnOptions:
    """The global connection options, as given on the command line."""

    endpoints: str | None
    user: str | None
    password: str | None
    cacert: str | None
    cert: str | None
    key: str | None
    timeout: float

    @property
    def configured(self) -> bool:
        """Whether an endpoint was given (``--endpoints`` or ``$ETCDKIT_ENDPOINTS``)."""
        return bool(self.endpoints or os.environ.get(ENV_ENDPOINTS))

    def with_endpoints(self, endpoints: str) -> ConnOptions:
        return replace(self, endpoints=endpoints)


def make_client(opts: ConnOptions) -> AsyncClient:
    """An AsyncClient for ``opts``; bad values become a :class:`UsageError` (no I/O)."""
    try:
        return AsyncClient(
            opts.endpoints,
            username=opts.user,
            password=opts.password,
            ca_cert=opts.cacert,
            cert=opts.cert,
            key=opts.key,
            timeout=opts.timeout,
        )
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from exc


def _short_reason(exc: BaseException) -> str:
    """The last clause of a gRPC failure ("Connection refused"), for a one-line message."""
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    text = str(exc).replace(" (is etcd running and reachable?)", "").strip()
    reason = text.rsplit(": ", 1)[-1].strip()
    return reason[:100] or type(exc).__name__


async def check_reachable(client: AsyncClient, opts: ConnOptions) -> None:
    """One bounded read, so that commands fail at once (never hang) when etcd is not there."""
    where = ",".join(client.endpoints)
    try:
        # (the client's own timeout ends the read first, with its reason: connection refused,
        # a failed TLS handshake...; this one is a safety net)
        async with asyncio.timeout(opts.timeout + 2.0):
            await client.get_revision()
    except PermissionDeniedError:
        return  # authenticated and answering; the role just may not read that key
    except AuthError as exc:
        if opts.user:
            raise CliError(str(exc)) from exc
        # (the library's own hint names its arguments: the command's options instead)
        text = str(exc).removesuffix(" (pass username and password)")
        raise CliError(f"{text}; pass --user NAME --password PASSWORD") from exc
    except (ConnectionUnavailableError, EtcdTimeoutError, TimeoutError) as exc:
        log.debug("connectivity check failed: %r", exc)
        what = "" if opts.configured else " (the default endpoint)"
        raise CliError(
            f"cannot reach etcd at {where}{what}: {_short_reason(exc)}; "
            "start one with `etcdkit dev` or pass --endpoints"
        ) from exc


def raw(arg: str) -> bytes:
    """A command-line argument's bytes: Python decoded them with surrogateescape, so a key
    or value that is not UTF-8 (as etcdctl takes them) comes back exactly."""
    return arg.encode("utf-8", "surrogateescape")


# Control characters as escapes: a newline in a key split a status line, or a table row into
# what looked like two keys.
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)} | {
    0x09: "\\t",
    0x0A: "\\n",
    0x0D: "\\r",
}


def shown_bytes(data: bytes) -> str:
    """Bytes (a key, a value) as one line of printable text: undecodable bytes and control
    characters as escapes (\\xff, \\n), the same way wherever they are shown."""
    return data.decode("utf-8", "backslashreplace").translate(_CONTROL)


def shown(text: str) -> str:
    """A key (an argument, or decoded with surrogateescape) as one line of printable text
    (see :func:`shown_bytes`; printing a lone surrogate raises)."""
    return shown_bytes(raw(text))


async def key_gone(client: AsyncClient, key: str | bytes, opts: ConnOptions) -> bool:
    """Whether etcd confirms (in at most 2 s) that ``key`` is gone. Closing a lease, a lock or
    a leadership revokes its lease, and a revoke etcd did not answer is only logged: the key
    then stays until its lease's TTL runs out, and the command must not say it is gone."""
    try:
        async with asyncio.timeout(min(opts.timeout, 2.0)):
            return await client.get(key) is None
    except (EtcdkitError, TimeoutError):
        return False


@contextlib.asynccontextmanager
async def connected(opts: ConnOptions) -> AsyncIterator[AsyncClient]:
    """An open client whose endpoint answered (see :func:`check_reachable`)."""
    client = make_client(opts)
    async with client:
        await check_reachable(client, opts)
        yield client


class Stopper:
    """SIGINT / SIGTERM / SIGHUP ask the command to stop cleanly; a second signal cancels it
    outright.

    Use as ``async with Stopper() as stop:``; ``await stop.wait()`` returns the signal.
    """

    def __init__(self) -> None:
        self.signal: signal.Signals | None = None
        self._event = asyncio.Event()
        self._task: asyncio.Task[object] | None = None
        self._installed: list[signal.Signals] = []

    @property
    def stopped(self) -> bool:
        return self._event.is_set()

    async def __aenter__(self) -> Stopper:
        loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        # (SIGHUP: the terminal closed; as SIGTERM, not Python's default death, which left
        # `etcdkit dev`'s etcd running, and a lock's command)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, self._on_signal, sig)
            self._installed.append(sig)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        loop = asyncio.get_running_loop()
        for sig in self._installed:
            loop.remove_signal_handler(sig)
        self._installed.clear()

    def _on_signal(self, sig: signal.Signals) -> None:
        if self._event.is_set():
            log.info("second %s: aborting", sig.name)
            if self._task is not None:
                self._task.cancel()
            return
        log.info("%s: stopping", sig.name)
        self.signal = sig
        self._event.set()

    async def wait(self) -> signal.Signals:
        await self._event.wait()
        assert self.signal is not None
        return self.signal

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by this signal (128 + number)."""
        return 128 + int(self.signal) if self.signal is not None else EXIT_INTERRUPTED

    async def run(self, aw: Awaitable[T]) -> T | None:
        """Await ``aw`` unless a stop signal comes first (then cancel it and return ``None``)."""
        task = asyncio.ensure_future(aw)
        waiter = asyncio.ensure_future(self._event.wait())
        interrupted = False
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            if not task.done():
                interrupted = True
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        return None if interrupted else task.result()


class StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is *now* (rich's live view redirects it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:
            self.handleError(record)
            return
        err(text)


class _NotRaisedAgain(logging.Filter):
    """Drops the library's error lines for a watch or lease that gave up: the error also
    reaches the command, which prints it as its own one-line message."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.levelno == logging.ERROR
            and record.exc_info is None
            and record.name in ("etcdkit.lease", "etcdkit.watch")
        )


def setup_logging(level: str) -> None:
    handler = StderrHandler()
    if level in ("warning", "error"):
        handler.addFilter(_NotRaisedAgain())
    fmt = "etcdkit: %(levelname)s %(name)s: %(message)s"
    if level == "debug":
        fmt = "%(asctime)s " + fmt
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # the level is etcdkit's; other libraries (asyncio, grpc) show their warnings only
    wanted = logging.getLevelNamesMapping()[level.upper()]
    root.setLevel(max(wanted, logging.WARNING))
    logging.getLogger("etcdkit").setLevel(wanted)


def timestamp() -> str:
    """Local wall-clock time for status lines, e.g. ``2024-05-01 12:00:00.123``."""
    return datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


# Streams a status line could not be written to: nothing more is written there.
_dropped: set[str] = set()


def nowhere(name: str) -> None:
    """Point ``sys.<name>``'s file descriptor at /dev/null: what is left in its buffer, and
    anything written later, goes nowhere, so the flush at exit cannot fail again (Python would
    print "Exception ignored ..." and exit 120)."""
    stream = getattr(sys, name)
    try:
        fd = stream.fileno()
    except (AttributeError, ValueError, OSError):  # (None, closed, or not a file)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    except OSError:  # (EBADF: the descriptor itself was closed)
        pass
    finally:
        os.close(devnull)


def _status(name: str, text: str) -> None:
    """Best effort: a status line tells what a command does, it never decides it. A reader
    gone (`2>&1 | head -1`), a full disk or a closed descriptor drops the stream from then
    on; the command goes on (a lock's CMD still runs, a registration stays)."""
    if name in _dropped:
        return
    stream = getattr(sys, name)
    if stream is None:  # (started with it closed: `>&-`)
        _dropped.add(name)
        return
    try:
        stream.write(text)
        stream.flush()
    except UnicodeError:  # (a character the stream's encoding lacks: escaped, not dropped)
        encoding = getattr(stream, "encoding", None) or "utf-8"
        _status(name, text.encode(encoding, "backslashreplace").decode(encoding))
    except (OSError, ValueError) as exc:  # (ValueError: the file object was closed)
        _dropped.add(name)
        nowhere(name)
        if name == "stdout":
            log.info("status lines on stdout dropped: %s", exc)


def out(line: str) -> None:
    """A status line on stdout, flushed at once (the output may be a pipe); best effort (see
    :func:`_status`). A command's data lines go through :func:`emit`."""
    _status("stdout", line + "\n")


def err(line: str, end: str = "\n") -> None:
    """A status line (or a message) on stderr; best effort (see :func:`_status`)."""
    _status("stderr", line + end)


def emit(line: str) -> None:
    """One line of a command's data output (``watch``/``members``/``endpoints --json``,
    ``elect --listen``), written whole. Not through ``sys.stdout.write``: with unbuffered
    output (``PYTHONUNBUFFERED``, ``python -u``) its binary layer is a raw file, and a write
    a signal interrupts after a part of the line returns short; the text layer drops the rest
    (a cut JSON line). Unlike a status line, an error here ends the command: a reader gone
    (BrokenPipeError) quietly with exit 0, another error (ENOSPC) with its message."""
    stream = sys.stdout
    if stream is None:
        raise CliError("stdout is closed (>&-): give the output somewhere to go, e.g. > FILE")
    data = (line + "\n").encode(
        getattr(stream, "encoding", None) or "utf-8", getattr(stream, "errors", None) or "strict"
    )
    try:
        fd = stream.fileno()
    except (AttributeError, ValueError, OSError):  # (not a file: written as it takes it)
        stream.write(line + "\n")
        stream.flush()
        return
    stream.flush()  # (what a status line left there goes first)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def is_terminal(stream: object) -> bool:
    """Whether ``stream`` (``sys.stdout``...) is a terminal; not when it is closed (``>&-``:
    ``None``) or not a file."""
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError, OSError):
        return False


def need_rich(what: str, hint: str = "") -> None:
    """Raise a one-line :class:`CliError` when the optional ``rich`` package is missing."""
    try:
        import rich  # noqa: F401
    except ImportError as exc:
        raise CliError(
            f"{what} needs the 'rich' package: install etcdkit[cli] "
            f"(pip install 'etcdkit[cli]'){hint}"
        ) from exc


async def pump(
    items: AsyncIterator[T],
    on_item: Callable[[T], Awaitable[None]],
    on_tick: Callable[[], None],
    stop: Stopper,
    tick: float,
) -> None:
    """Hand each item of ``items`` to ``on_item``; call ``on_tick`` every ``tick`` seconds
    nothing comes; return when ``items`` ends or ``stop`` is asked (a live view's loop)."""
    stopped = asyncio.ensure_future(stop.wait())
    nxt: asyncio.Future[T] | None = None
    try:
        while True:
            if nxt is None:
                nxt = asyncio.ensure_future(items.__anext__())
            either: set[asyncio.Future[Any]] = {nxt, stopped}
            done, _ = await asyncio.wait(either, timeout=tick, return_when=asyncio.FIRST_COMPLETED)
            if stopped in done:
                return
            if nxt in done:
                task, nxt = nxt, None
                try:
                    item = task.result()
                except StopAsyncIteration:
                    return
                await on_item(item)
            else:
                on_tick()
    finally:
        stopped.cancel()
        if nxt is not None:
            nxt.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await nxt
