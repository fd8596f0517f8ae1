"""A Ctrl-C (KeyboardInterrupt) in a thread blocked on a threaded recipe call, as the call got
what it waited for: what was made for it is undone, since nobody will have it. A lock,
permit, read-write hold, leadership or double-barrier place is released; a queue's taken item
goes back; a session's granted lease is revoked. Each case runs ``tests/_interrupt_probe.py``
in a process of its own (the SIGINT goes to that process's main thread), against a real
etcd."""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from etcdkit import Client, ClosedError, HoldState, WrongContextError
from etcdkit.testing import EtcdServer

TraceFunction = Callable[[FrameType, str, Any], Any]

PROBE = Path(__file__).resolve().parent / "_interrupt_probe.py"


@pytest.mark.parametrize(
    "kind",
    [
        "lock",
        "semaphore",
        "rwlock",
        "election",
        "double_barrier",
        "queue",
        "priority_queue",
        "session",
    ],
)
def test_an_interrupted_threaded_call_leaves_nothing_held_and_loses_no_item(
    etcd_server: EtcdServer, kind: str
) -> None:
    proc = subprocess.run(
        [sys.executable, str(PROBE), etcd_server.endpoint, kind],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["interrupted"], "the call was not interrupted: the probe did not work"
    expected = ["the item"] if kind.endswith("queue") else []
    assert out["left"] == expected


SIGNALS = Path(__file__).resolve().parent / "_signal_probe.py"


def signal_probe(endpoint: str, mode: str, timeout: float) -> dict[str, object]:
    try:
        proc = subprocess.run(
            [sys.executable, str(SIGNALS), endpoint, mode],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{mode}: the process hung ({exc.stderr!r:.2000})") from None
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_a_signal_handler_that_uses_the_client_does_not_deadlock_the_main_thread(
    etcd_server: EtcdServer,
) -> None:
    """A handler runs in the main thread, maybe in the middle of a call of its own: one that
    reads the client's stats, a thousand times a second, and SIGTERM handlers that close it
    (the graceful-shutdown pattern) while the main thread makes calls. Before, the handler
    waited for a lock its own thread held (in 1 round of ~30 of the close, every run of the
    reads)."""
    out = signal_probe(etcd_server.endpoint, "handler", timeout=120)
    assert isinstance(out["handled"], int)
    assert out["handled"] > 100
    assert out["closed_rounds"] == 40


def test_a_ctrl_c_as_a_call_is_scheduled_leaves_no_lock_held_by_nobody(
    etcd_server: EtcdServer,
) -> None:
    """A KeyboardInterrupt landing while a threaded call is handed to the loop (before its
    wait began) cancels or undoes it like one in the wait (before, about 1 round in 50 left
    an acquired lock held by nobody until the client closed)."""
    out = signal_probe(etcd_server.endpoint, "window", timeout=240)
    assert out["interrupted"] == 100
    assert out["left"] == 0


def test_a_close_from_a_del_at_exit_lets_the_process_end(etcd_server: EtcdServer) -> None:
    assert signal_probe(etcd_server.endpoint, "exit", timeout=60) == {"made": True}


def test_a_client_dropped_open_is_closed_with_a_resource_warning(etcd_server: EtcdServer) -> None:
    out = signal_probe(etcd_server.endpoint, "dropped", timeout=60)
    assert out["threads_left"] == 0
    assert out["resource_warnings"] == 5
    assert "unclosed etcdkit.Client(" in str(out["says"])
    # one dropped while a lock made from it is in use: not closed under it
    assert out["lock_worked"] is True
    assert out["warned_while_in_use"] == 0


def test_a_client_dropped_open_after_a_recipe_ran_on_it_is_closed_too(
    etcd_server: EtcdServer,
) -> None:
    """A recipe's threaded object follows its asyncio object's state through a listener the
    client's loop keeps; that listener kept the object, and through it the client, alive: a
    client dropped open after a lock, a session, a permit, a leadership... was never closed
    (no warning; its loop thread, connection and lease kept for nobody, a lock still held
    held until the process ended)."""
    out = signal_probe(etcd_server.endpoint, "dropped_recipes", timeout=180)
    for kind, seen in out.items():
        assert seen == {"resource_warnings": 1, "threads_left": 0, "keys_left": 0}, kind


def test_a_coroutine_run_refuses_is_closed_not_left_never_awaited(etcd_server: EtcdServer) -> None:
    client = Client(etcd_server.endpoint)
    client.close()

    async def work() -> int:
        return 1

    coro = work()
    with pytest.raises(ClosedError):
        client.run(coro)
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED  # (it warned "never awaited")


def test_an_iterator_whose_next_was_interrupted_says_so(etcd_server: EtcdServer) -> None:
    """Its generator ended with the interrupted next(): the next one raises an error that
    says so, not StopIteration (a listing cut short passed for a whole one, an observe()
    for an election that ended) nor "iterate from one thread at a time"."""
    out = signal_probe(etcd_server.endpoint, "observe", timeout=60)
    assert "interrupted" in str(out["after"])
    assert "start a new one" in str(out["after"])


async def test_reads_of_the_threaded_face_work_inside_a_running_loop(
    etcd_server: EtcdServer,
) -> None:
    """Reads do no I/O and wait for nothing: async code handed a Client may read its state
    and log it (``%r``), where a blocking call raises WrongContextError."""
    client = await asyncio.to_thread(Client, etcd_server.endpoint)
    try:
        lock = await asyncio.to_thread(client.lock, "/reads/lock")
        assert client.closed is False
        assert client.stats is not None
        assert lock.state is HoldState.IDLE
        assert repr(lock).startswith("<")
        with pytest.raises(WrongContextError):
            client.get("/reads/k")
    finally:
        await asyncio.to_thread(client.close)


def _at_shutdown_scheduling(action: Callable[[], object], where: str) -> TraceFunction:
    """A trace function that runs ``action()`` once, as a signal handler would run, in the
    stopping thread after :meth:`Portal.stop` marked the portal stopping and before the loop
    was asked to shut down: a handler landing there, or a Ctrl-C raised there. ``where``:
    ``marked``, the first line after the portal was marked; ``asking``, the line that asks
    the loop (``..._threadsafe(``)."""
    from etcdkit._blocking import portal

    code = portal.Portal.stop.__code__
    lines, first = inspect.getsourcelines(portal.Portal.stop)
    marked = next(i for i, line in enumerate(lines) if "self._stopping = True" in line)
    if where == "marked":
        at = next(  # (the first statement after the ``with`` block that marked it)
            i
            for i in range(marked + 1, len(lines))
            if lines[i].startswith(" " * 8) and lines[i][8] not in " #\n"
        )
    else:
        at = next(i for i in range(marked + 1, len(lines)) if "_threadsafe(" in lines[i])
    target = first + at
    fired = False

    def local(frame: FrameType, event: str, arg: Any) -> TraceFunction:
        nonlocal fired
        if event == "line" and not fired and frame.f_lineno == target:
            fired = True
            action()
        return local

    def tracer(frame: FrameType, event: str, arg: Any) -> TraceFunction | None:
        return local if frame.f_code is code else None

    return tracer


def _close_traced(client: Client, action: Callable[[], object], where: str) -> None:
    """``client.close()``, with ``action()`` run inside it at ``where`` (see
    :func:`_at_shutdown_scheduling`)."""
    sys.settrace(_at_shutdown_scheduling(action, where))
    try:
        client.close()
    finally:
        sys.settrace(None)


def _in_a_thread(fn: Callable[[], object], timeout: float = 20.0) -> BaseException | None:
    """Run ``fn`` in a thread of its own (traced there only); what it raised; fail if it
    hangs."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # (handed to the test)
            raised.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "the close hung"
    return raised[0] if raised else None


@pytest.mark.parametrize("where", ["marked", "asking"])
def test_a_handler_that_closes_the_client_inside_its_threads_own_close_does_not_hang(
    etcd_server: EtcdServer, where: str
) -> None:
    """A SIGTERM handler that closes the client, run in the thread whose own close() has just
    marked the portal stopping and not yet scheduled its shutdown: the nested close waited for
    a shutdown that only the frame it interrupted would schedule (a hang). Now it returns, and
    the interrupted close finishes the job."""
    client = Client(etcd_server.endpoint)
    client.put(b"/sync-interrupt/handler-window", b"v")

    handled: list[str] = []

    def handler() -> None:
        client.close()
        handled.append("closed")

    assert _in_a_thread(functools.partial(_close_traced, client, handler, where)) is None
    assert handled == ["closed"]
    assert client.closed
    assert client.portal.stopped


@pytest.mark.parametrize("where", ["marked", "asking"])
def test_a_ctrl_c_as_close_schedules_the_shutdown_leaves_a_close_that_finishes(
    etcd_server: EtcdServer, where: str
) -> None:
    """A KeyboardInterrupt raised just before stop() schedules the loop's shutdown: the
    portal stayed marked stopping with nothing to end its loop thread, and every later
    close() waited for it forever. Now the next close() stops it."""
    client = Client(etcd_server.endpoint)
    client.put(b"/sync-interrupt/ctrl-c-window", b"v")

    def interrupt() -> None:
        raise KeyboardInterrupt

    raised = _in_a_thread(functools.partial(_close_traced, client, interrupt, where))
    assert isinstance(raised, KeyboardInterrupt)
    assert _in_a_thread(client.close) is None
    assert client.closed
    assert client.portal.stopped
