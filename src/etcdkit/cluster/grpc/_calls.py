"""The calls a :class:`RoutedChannel` returns: grpc.aio calls that move to the next node."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Generator
from typing import Any

import grpc
import grpc.aio

from etcdkit.cluster.grpc._routing import Attempts, Targets

__all__ = ["RoutedCall", "RoutedUnaryStreamCall", "RoutedUnaryUnaryCall"]

log = logging.getLogger("etcdkit.cluster.grpc")


class RoutedCall:
    """What both routed call kinds share: the attempt in flight, and the grpc.aio.Call API
    answered from it (metadata, code and details are those of the last attempt)."""

    def __init__(
        self,
        targets: Targets,
        attempts: Attempts,
        request: Any,
        options: dict[str, Any],
    ) -> None:
        self._targets = targets
        self._attempts = attempts
        self._request = request
        self._options = options
        self._call: Any = None
        self._node = ""
        self._used: Any = None  # the node channel of the attempt in flight
        self._error: Exception | None = None  # a failure of ours (no call to ask)
        self._cancelled = False
        self._callbacks: list[Callable[[Any], None]] = []
        self._fired = False
        self._starter: asyncio.Task[None] | None = None  # starting once there is a view

    def _begin(self, kind: str) -> None:
        """Start the first attempt now, as grpc's calls start. While the channel has no first
        view yet (and no node), a task starts it once the view came, within the call's
        deadline, as grpc's calls wait for a new channel's first name resolution."""
        nodes = self._attempts.nodes
        first = nodes.first_view
        if first is None or first.done() or nodes.channels:
            self._start(kind)
            return
        self._starter = asyncio.get_running_loop().create_task(
            self._start_after(first, kind), name="etcdkit-routed-call-start"
        )
        self._starter.add_done_callback(self._on_started)

    async def _start_after(self, first: asyncio.Future[None], kind: str) -> None:
        left = self._attempts.time_left()
        with contextlib.suppress(TimeoutError):  # (shield: the view is not this call's to end)
            await asyncio.wait_for(asyncio.shield(first), None if left is None else max(0.0, left))
        if not self._cancelled:
            self._start(kind)  # (fails on no node or no time left, as a call made now would)

    def _on_started(self, starter: asyncio.Task[None]) -> None:
        if starter.cancelled() and self._call is None:
            self._cancel_unstarted()
        elif self.done():
            self._fire()

    def _cancel_unstarted(self) -> None:
        """The call ends cancelled before its first attempt started (at once, as grpc's)."""
        self._cancelled = True
        if self._error is None:
            self._error = grpc.aio.AioRpcError(
                grpc.StatusCode.CANCELLED,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(),
                details="cancelled before the channel had a view to route on",
            )
        self._fire()

    def _waiting(self) -> bool:
        """Whether the first attempt waits for the channel's first view."""
        return self._starter is not None and not self._starter.done() and not self._cancelled

    async def _started(self) -> None:
        """Return once the first attempt started (or the call ended before it could)."""
        starter = self._starter
        if starter is not None and not starter.done():
            await asyncio.wait({starter})

    async def _await_start(self) -> None:
        """(In ``__await__``/``_stream``) wait until the first attempt started; a cancelled
        wait cancels the call. Raises CancelledError for a call cancelled before it started."""
        try:
            await self._started()
        except asyncio.CancelledError:
            self.cancel()
            raise
        if self._cancelled and self._call is None:
            raise asyncio.CancelledError()

    def _start(self, kind: str) -> bool:
        """Start the next attempt; False (with ``_error`` set) when there is none."""
        try:
            node, channel, timeout = self._attempts.next()
        except grpc.aio.AioRpcError as exc:
            self._error = exc
            return False
        self._node, self._used = node, channel
        try:
            self._call = self._targets.get(kind, channel)(
                self._request, timeout=timeout, **self._options
            )
        except (grpc.aio.UsageError, ValueError):  # its channel closed under us: node left
            self._attempts.node_left(node)
            return self._start(kind)
        if self._callbacks:
            self._call.add_done_callback(self._on_attempt_done)
        return True

    def _retryable(self, exc: BaseException) -> bool:
        """Whether the attempt that failed with *exc* may be repeated on another node."""
        if self._cancelled:
            return False
        if isinstance(exc, grpc.aio.AioRpcError):
            if exc.code() is grpc.StatusCode.UNAVAILABLE:
                self._attempts.failed(exc)
                return True
            return False
        if isinstance(exc, asyncio.CancelledError | grpc.aio.UsageError):
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                return False  # the caller is being cancelled
            if self._attempts.nodes.closed:  # (its close ended the call: it says so)
                self._error = grpc.aio.AioRpcError(
                    grpc.StatusCode.CANCELLED,
                    grpc.aio.Metadata(),
                    grpc.aio.Metadata(),
                    details="the RoutedChannel was closed during the call",
                )
                return False
            if self._attempts.nodes.left(self._node, self._used):
                self._attempts.node_left(self._node)
                return True
        return False

    def _on_attempt_done(self, call: Any) -> None:
        if self.done():
            self._fire()

    def _fire(self) -> None:
        if not self._fired:
            self._fired = True
            for cb in self._callbacks:
                try:
                    cb(self)
                except Exception:
                    log.exception("routed call: done callback failed")

    # -- grpc.aio.Call ----------------------------------------------------------------------------

    def cancel(self) -> bool:
        if self.done():
            return False
        self._cancelled = True
        if self._starter is not None:
            self._starter.cancel()
        if self._call is not None:
            self._call.cancel()
        else:
            self._cancel_unstarted()
        return True

    def cancelled(self) -> bool:
        return self._cancelled or (self._call is not None and self._call.cancelled())

    def done(self) -> bool:
        raise NotImplementedError

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if self.done():
            callback(self)
            return
        if not self._callbacks and self._call is not None:
            self._call.add_done_callback(self._on_attempt_done)
        self._callbacks.append(callback)

    def time_remaining(self) -> float | None:
        return self._attempts.time_left()

    async def initial_metadata(self) -> Any:
        await self._started()
        if self._call is None:
            return grpc.aio.Metadata()
        return await self._call.initial_metadata()

    async def trailing_metadata(self) -> Any:
        await self._settle()
        if self._error is not None or self._call is None:
            return grpc.aio.Metadata()
        return await self._call.trailing_metadata()

    async def code(self) -> grpc.StatusCode:
        await self._settle()
        if isinstance(self._error, grpc.aio.AioRpcError):
            return self._error.code()
        return await self._call.code()

    async def details(self) -> str:
        await self._settle()
        if isinstance(self._error, grpc.aio.AioRpcError):
            return self._error.details() or ""
        return str(await self._call.details())

    async def wait_for_connection(self) -> None:
        await self._started()
        if self._call is not None:
            await self._call.wait_for_connection()

    async def _settle(self) -> None:
        raise NotImplementedError


class RoutedUnaryUnaryCall(RoutedCall, grpc.aio.UnaryUnaryCall):  # type: ignore[misc]
    """A unary call that moves to the next node of the ring on UNAVAILABLE. The first attempt
    starts at once (as grpc's calls do); retries happen while it is awaited, or, for a call
    not awaited whose attempt ended, in a task of its own once ``done()`` is asked or a done
    callback waits: ``done()`` and the callbacks mean the final outcome, as grpc's do."""

    def __init__(
        self,
        targets: Targets,
        attempts: Attempts,
        request: Any,
        options: dict[str, Any],
    ) -> None:
        super().__init__(targets, attempts, request, options)
        self._outcome: tuple[bool, Any] | None = None
        self._awaited = False
        self._settled: asyncio.Event | None = None  # made for a second awaiter
        self._driver: asyncio.Task[None] | None = None  # retries for a caller not awaiting
        self._begin("unary_unary")

    def done(self) -> bool:
        """Whether the call has its final outcome: not while an attempt that failed may
        still be retried on the next node (as grpc's, done callbacks fire then)."""
        if self._outcome is not None:
            return True
        if self._awaited or self._waiting():
            return False
        if self._call is None:
            return True  # (no attempt could start: that failure is the outcome)
        if not self._call.done():
            return False
        # The attempt ended and nobody awaits the call, whose retries run while it is
        # awaited: a task of its own awaits it now; its outcome makes the call done.
        self._drive()
        return self._outcome is not None

    def _drive(self) -> None:
        if self._driver is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # (asked outside its loop: it can only say not yet)
                return
            self._driver = loop.create_task(self._settle(), name="etcdkit-routed-call-retry")

    def __await__(self) -> Generator[Any, None, Any]:
        if self._awaited:
            if self._outcome is None:
                if self._settled is None:
                    self._settled = asyncio.Event()
                try:
                    yield from self._settled.wait().__await__()
                except asyncio.CancelledError:
                    if self._driver is not None:  # (the caller's own await: as grpc's)
                        self.cancel()
                    raise
            assert self._outcome is not None
            ok, value = self._outcome
            if ok:
                return value
            raise value
        self._awaited = True
        try:
            yield from self._await_start().__await__()
            while True:
                if self._call is None:
                    assert self._error is not None
                    raise self._error
                try:
                    value = yield from self._call.__await__()
                except (asyncio.CancelledError, grpc.aio.AioRpcError, grpc.aio.UsageError) as exc:
                    if not self._retryable(exc) or not self._start("unary_unary"):
                        if isinstance(exc, grpc.aio.AioRpcError) or self._error is None:
                            raise
                        raise self._error from exc
                    continue
                self._outcome = (True, value)
                return value
        except BaseException as exc:
            if self._outcome is None:
                self._outcome = (False, exc)
            raise
        finally:
            if self._settled is not None:
                self._settled.set()
            self._fire()

    async def _settle(self) -> None:
        if self._outcome is None:
            async with _outcome_only():
                await self


class RoutedUnaryStreamCall(RoutedCall, grpc.aio.UnaryStreamCall):  # type: ignore[misc]
    """A server-streaming call: moves to the next node on UNAVAILABLE until the first response
    arrived; after that a failure ends it (responses cannot be taken back)."""

    def __init__(
        self,
        targets: Targets,
        attempts: Attempts,
        request: Any,
        options: dict[str, Any],
    ) -> None:
        super().__init__(targets, attempts, request, options)
        self._responses: AsyncIterator[Any] | None = None
        self._finished = False
        self._begin("unary_stream")

    def done(self) -> bool:
        if self._finished:
            return True
        if self._waiting():
            return False
        return self._call is None or (self._call.done() and self._responses is None)

    def __aiter__(self) -> AsyncIterator[Any]:
        if self._responses is None:
            self._responses = self._stream()
        return self._responses

    async def read(self) -> Any:
        try:
            return await anext(self.__aiter__())
        except StopAsyncIteration:
            return grpc.aio.EOF

    async def _stream(self) -> AsyncIterator[Any]:
        got_one = False
        try:
            await self._await_start()
            while True:
                if self._call is None:
                    assert self._error is not None
                    raise self._error
                try:
                    async for response in self._call:
                        got_one = True
                        yield response
                    return
                except (asyncio.CancelledError, grpc.aio.AioRpcError, grpc.aio.UsageError) as exc:
                    if got_one or not self._retryable(exc) or not self._start("unary_stream"):
                        if isinstance(exc, grpc.aio.AioRpcError) or self._error is None:
                            raise
                        raise self._error from exc
        finally:
            self._finished = True
            self._fire()

    async def _settle(self) -> None:
        if not self._finished:
            async with _outcome_only():
                if self._responses is None and self._call is not None:
                    await self._call.code()
                else:
                    async for _ in self.__aiter__():
                        pass


@contextlib.asynccontextmanager
async def _outcome_only() -> AsyncIterator[None]:
    """Waiting for a call's outcome to report it: its failure (or its own cancellation) is
    the outcome, not an error of the wait; a cancellation of the waiting task still is."""
    try:
        yield
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
    except Exception:
        pass
