"""The portal: a private event-loop thread that runs the asyncio core for blocking callers (the
model is anyio's ``BlockingPortal``). Every threaded twin (``etcdkit._blocking.twin.Twin``)
forwards its calls through one."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
import warnings
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from etcdkit._errors import ClosedError, WrongContextError, mark_retrieved

__all__ = ["SHUTDOWN_BOUND", "Portal"]

T = TypeVar("T")

SHUTDOWN_BOUND = 1.0  # seconds a stopping portal waits for cancelled work to finish


class Portal:
    """Runs coroutines on a private event loop thread for blocking callers.

    ``stop()`` ends every call still in flight: its caller gets :class:`ClosedError`, never a
    raw ``CancelledError`` and never an endless wait.

    A process forked from the one that made it has no loop thread: there every call raises
    :class:`WrongContextError` and ``stop()`` does nothing (what the loop holds is the
    parent's).

    ``blocks_running_loops``: a call made inside a running event loop (another thread's
    loop, not this one's) blocks that loop until it returns, as a plain blocking library
    does, where it is refused by default (see :meth:`check_caller`).
    """

    def __init__(self, name: str = "etcdkit-loop", *, blocks_running_loops: bool = False) -> None:
        self.blocks_running_loops = blocks_running_loops
        self.loop = asyncio.new_event_loop()
        self._pid = os.getpid()
        # Re-entrant: a signal handler (SIGTERM -> close(), say) runs in the main thread
        # between two bytecodes of a call of its own, maybe while it holds this lock.
        self._lock = threading.RLock()
        self._calls: set[_Call] = set()  # the calls threads wait for
        self._stopping = False
        self._shutting_down = False  # (on the loop thread) the shutdown has begun
        self._ended = threading.Event()  # the loop thread is done and the loop closed
        # (the thread holds no reference to the portal: a portal nothing uses any more is
        # collected, and its finalizer, see close_when_dropped, stops the thread)
        self._thread = threading.Thread(
            target=_run_loop, args=(self.loop, self._ended, self._calls), name=name, daemon=True
        )
        self._thread.start()
        self._finalizer: weakref.finalize[Any, Any] | None = None

    def close_when_dropped(
        self, close: Callable[[], Coroutine[Any, Any, object]], what: str
    ) -> None:
        """Once nothing refers to this portal any more (its client and every object made
        from it dropped unclosed), run ``close()`` on the loop, stop the loop thread, and warn
        (ResourceWarning, as an open file or socket does); not at interpreter exit, where
        the thread can run no more. :meth:`stop` cancels this."""
        self._finalizer = weakref.finalize(self, _close_dropped, self.loop, self._pid, close, what)
        self._finalizer.atexit = False  # (at exit the loop thread, a daemon, just ends)

    @property
    def forked(self) -> bool:
        """This is a process forked from the one that made the portal."""
        return os.getpid() != self._pid

    @property
    def closed(self) -> bool:
        """Stopping or stopped: no call is taken any more."""
        return self._stopping or self.loop.is_closed() or self.forked

    @property
    def stopped(self) -> bool:
        """The loop thread is done (or, forked, not in this process)."""
        return self._ended.is_set() or self.forked

    def in_loop_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def check_caller(self) -> None:
        """Raise :class:`WrongContextError` where a blocking call would block the loop (or
        deadlock on it): on the client's loop thread, or inside any running event loop
        (unless ``blocks_running_loops``: then it blocks that loop; never this one's, which
        would wait for itself)."""
        if self.in_loop_thread():
            raise WrongContextError(
                "a blocking etcdkit call was made from the client's own event-loop thread "
                "(e.g. inside a listener callback); do the call from another thread"
            )
        if self.blocks_running_loops:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        raise WrongContextError(
            "a blocking etcdkit.Client call was made inside a running event loop, which it "
            "would block; use etcdkit.AsyncClient (await its methods) there, or run the "
            "blocking call in a thread (await asyncio.to_thread(...))"
        )

    def call(
        self,
        coro: Coroutine[Any, Any, T],
        *,
        abandon: Callable[[T], Awaitable[object]] | None = None,
        in_a_loop_ok: bool = False,
    ) -> T:
        """Run ``coro`` on the loop and wait for it. ``abandon``: what undoes its result (e.g.
        releases a lock it acquired) when the waiting thread gave up on the call (a
        ``KeyboardInterrupt``) after the result was made but before it got it: else that
        result would be held by nobody. ``in_a_loop_ok``: the caller may be inside a running
        event loop (a read, which waits for no I/O; never on the loop thread itself)."""
        try:
            if self.forked:
                raise WrongContextError(
                    "this etcdkit Client was made in another process (this one was forked from "
                    "it): its connection and loop thread are that process's. grpc does not "
                    "survive a fork once a process used it: start worker processes with "
                    "multiprocessing's 'spawn' or 'forkserver' method and make a Client in each"
                )
            if not in_a_loop_ok:
                self.check_caller()
            if sys.is_finalizing():
                # (e.g. a close() from a __del__ at exit): the loop thread, a daemon, can run
                # no more, and waiting for it would keep the process from ever ending
                raise ClosedError(
                    "the interpreter is shutting down: the etcdkit Client's loop thread has "
                    "stopped (close the client before the program ends)"
                )
        except BaseException:
            coro.close()
            raise
        # The call, its task, and whether the waiting thread gave up on it (set and read on
        # the loop). The waiting thread waits on a lock of its own that the loop releases:
        # no lock the loop may need is held by the waiting thread, so that a signal handler
        # (which runs in the main thread, between any two of its bytecodes) may use the
        # client, close it included (a concurrent future's condition, held by the waiting
        # thread as it looks at the future's state, would stop the loop that must set it).
        call = _Call()
        task: asyncio.Task[Any] | None = None
        gave_up = False

        async def run() -> T:
            try:
                result = await coro
            except asyncio.CancelledError:
                if self._stopping:
                    raise ClosedError("the etcdkit Client was closed during this call") from None
                raise
            if gave_up and abandon is not None:
                await abandon(result)  # nobody takes it
            return result

        runner = run()

        def drop() -> None:  # (a call that never runs: neither coroutine is "never awaited")
            runner.close()
            coro.close()

        def start() -> None:
            nonlocal task
            if gave_up:  # (interrupted while it was being scheduled: see give_up)
                drop()
                return
            task = self.loop.create_task(runner)
            task.add_done_callback(call.finish)

        def give_up() -> None:
            """On the loop (so the call is suspended or done, never half-way): cancel it, or
            undo what it made if it is done. Not started, it never starts: its start, if it
            was scheduled at all, was scheduled before this, from the same thread."""
            nonlocal gave_up
            gave_up = True
            if task is None:
                return
            if not task.done():
                task.cancel()
            elif abandon is not None and not task.cancelled() and task.exception() is None:
                undo = asyncio.ensure_future(abandon(task.result()))
                undo.add_done_callback(mark_retrieved)

        try:
            with self._lock:
                if self.closed:
                    drop()
                    raise ClosedError("this etcdkit Client is closed; create a new one")
                try:
                    self.loop.call_soon_threadsafe(start)
                except RuntimeError:  # the loop closed (a signal handler in this thread?)
                    drop()
                    raise ClosedError("this etcdkit Client is closed; create a new one") from None
                self._calls.add(call)
                if self._stopping:
                    # Stopped while this was being scheduled (by a signal handler in this
                    # thread, the lock being re-entrant): the start may have come too late
                    # for the loop, which would then never end the call.
                    call.end()
                    if self.loop.is_closed():  # (then it never starts)
                        drop()
            try:
                call.done.acquire()
            finally:
                with self._lock:
                    self._calls.discard(call)
        except ClosedError:
            raise
        except BaseException:
            # (a KeyboardInterrupt in this thread): cancel the call on the loop, or undo it
            with contextlib.suppress(RuntimeError):  # (the loop stopped meanwhile)
                self.loop.call_soon_threadsafe(give_up)
            raise
        return call.outcome()  # type: ignore[no-any-return]

    def run_sync(self, fn: Callable[..., T], *args: Any, in_a_loop_ok: bool = False) -> T:
        """Call ``fn(*args)`` on the loop thread and return its result (directly when called
        on it, e.g. from a listener: ``fn`` does no I/O and never waits). ``in_a_loop_ok``:
        see :meth:`call`."""
        if self.in_loop_thread():
            return fn(*args)

        async def run() -> T:
            return fn(*args)

        return self.call(run(), in_a_loop_ok=in_a_loop_ok)

    def read(self, fn: Callable[[], T]) -> T:
        """Read a value on the loop thread (directly once the loop is gone, or from inside it,
        or from inside another running event loop, which waiting would block: a state, the
        stats, a repr in a log line of async code)."""
        if self.closed or self.in_loop_thread():
            return fn()
        try:
            return self.run_sync(fn, in_a_loop_ok=True)
        except ClosedError:
            return fn()

    def stop(self, *, after: Coroutine[Any, Any, object] | None = None) -> None:
        """Cancel what still runs (bounded), stop the loop thread and close the loop; return
        once that is done, also when another thread began it. ``after``: run that to its end
        first, and return at once (the loop thread ends by itself once it is done; e.g. a
        close its caller was interrupted in)."""
        if self.forked:
            if after is not None:
                after.close()
            return
        with self._lock:
            first = not self._stopping
            self._stopping = True
            pending = list(self._calls) if first else []
            if self._finalizer is not None:
                finalizer, self._finalizer = self._finalizer, None
                finalizer.detach()
        if self.in_loop_thread() or self._ended.is_set():
            # (the loop's own thread: it cannot wait for itself; or the loop thread died
            # already, of a SystemExit on it)
            if after is not None:
                after.close()
            for waiting in pending:
                waiting.end()
            return
        if not first and after is not None:
            after.close()  # (the first stop() runs the shutdown; a close under way with it)
            after = None
        # Every stop() asks the loop to shut down; the loop starts that once. A stop()
        # interrupted before it asked (a Ctrl-C, or a signal handler that closes the client
        # inside this thread's own stop()) thus leaves no later stop() waiting for a
        # shutdown nobody asked for.
        with contextlib.suppress(RuntimeError):  # (the loop closed meanwhile)
            self.loop.call_soon_threadsafe(self._shut_down, after)
        if after is None:
            self._ended.wait()
        for waiting in pending:
            waiting.end()

    def _shut_down(self, after: Coroutine[Any, Any, object] | None) -> None:
        """On the loop: start the shutdown (run ``after``, cancel the rest, stop the loop),
        the first time only (a later ``after`` is closed unrun: the shutdown under way cancels
        whatever it would wait for)."""
        if self._shutting_down:
            if after is not None:
                after.close()
            return
        self._shutting_down = True
        task = self.loop.create_task(_shutdown(after))
        # (the loop stops once the shutdown is done: stopped before, nothing would run it)
        task.add_done_callback(lambda _: self.loop.stop())


def _run_loop(loop: asyncio.AbstractEventLoop, ended: threading.Event, calls: set[_Call]) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        loop.close()
        ended.set()
        for waiting in list(calls):  # (the loop ended otherwise than by stop(): a SystemExit)
            waiting.end()


async def _shutdown(after: Coroutine[Any, Any, object] | None) -> None:
    """On the loop: run ``after`` (a close), then cancel what still runs (bounded)."""
    if after is not None:
        with contextlib.suppress(Exception):
            await after
    me = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not me]
    for t in tasks:
        t.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=SHUTDOWN_BOUND)


def _close_dropped(
    loop: asyncio.AbstractEventLoop,
    pid: int,
    close: Callable[[], Coroutine[Any, Any, object]],
    what: str,
) -> None:
    """A dropped portal's finalizer (see Portal.close_when_dropped): it holds no reference to
    the portal, nor does the loop thread."""
    if sys.is_finalizing() or os.getpid() != pid or loop.is_closed():
        return

    def start() -> None:
        task = loop.create_task(_shutdown(close()))
        task.add_done_callback(lambda _: loop.stop())

    try:
        loop.call_soon_threadsafe(start)
    except RuntimeError:  # (closed meanwhile)
        return
    warnings.warn(
        f"unclosed {what}: close() it, or use `with`; it was closed as it was collected",
        ResourceWarning,
        stacklevel=2,
    )


class _Call:
    """What a thread waits for in :meth:`Portal.call`: ``done`` is released once the task
    ended (``finish``, on the loop) or the portal stopped (``end``, a ClosedError), whichever
    comes first; ``outcome()`` then returns the result or raises the error."""

    __slots__ = ("_claim", "_error", "_result", "done")

    def __init__(self) -> None:
        self.done = threading.Lock()
        self.done.acquire()
        self._claim = threading.Lock()  # taken by the first to settle the call
        self._result: Any = None
        self._error: BaseException | None = None

    def finish(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            self.end()
            return
        error = task.exception()
        self._settle(None if error is not None else task.result(), error)

    def end(self) -> None:
        self._settle(None, ClosedError("the etcdkit Client was closed during this call"))

    def _settle(self, result: Any, error: BaseException | None) -> None:
        if not self._claim.acquire(False):  # (the loop and a stopping thread may both come)
            return
        self._result, self._error = result, error
        self.done.release()

    def outcome(self) -> Any:
        if self._error is not None:
            raise self._error
        return self._result
