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
        self._gate: asyncio.Future[None] | None = None  # waiting for the first view

    def _begin(self, kind: str) -> None:
        """Start the first attempt, or, while the channel has no first view yet, wait for it
        (as grpc's calls wait for a new channel's first name resolution): the attempt then
        starts in :meth:`_await_first_view`, when the call is awaited."""
        first = self._attempts.nodes.first_view
        if first is None or first.done():
            self._start(kind)
            return
        gate = self._gate = asyncio.get_running_loop().create_future()

        def open_gate(_: object) -> None:
            if not gate.done():
                gate.set_result(None)

        first.add_done_callback(open_gate)

    async def _await_first_view(self, kind: str) -> None:
        """The wait :meth:`_begin` put off: for the first view, at most the call's deadline
        and the channel's timeout; then the first attempt starts (it fails on no node or no
        time left, as a call made then would). Cancelling the call ends the wait."""
        gate = self._gate
        if gate is None:
            return
        limits = [self._attempts.time_left(), self._attempts.nodes.first_view_timeout]
        bound = min((t for t in limits if t is not None), default=None)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(gate, max(0.0, bound) if bound is not None else None)
        self._gate = None
        self._start(kind)

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
        if self._gate is not None:
            self._gate.cancel()
        if self._call is not None:
            self._call.cancel()
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
        if self._call is not None:
            await self._call.wait_for_connection()

    async def _settle(self) -> None:
        raise NotImplementedError


class RoutedUnaryUnaryCall(RoutedCall, grpc.aio.UnaryUnaryCall):  # type: ignore[misc]
    """A unary call that moves to the next node of the ring on UNAVAILABLE. The first attempt
    starts at once (as grpc's calls do); retries happen while it is awaited."""

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
        self._begin("unary_unary")

    def done(self) -> bool:
        if self._outcome is not None:
            return True
        if self._awaited or self._gate is not None:
            return False
        return self._call is None or self._call.done()

    def __await__(self) -> Generator[Any, None, Any]:
        if self._awaited:
            if self._outcome is None:
                if self._settled is None:
                    self._settled = asyncio.Event()
                yield from self._settled.wait().__await__()
            assert self._outcome is not None
            ok, value = self._outcome
            if ok:
                return value
            raise value
        self._awaited = True
        try:
            if self._gate is not None:
                yield from self._await_first_view("unary_unary").__await__()
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
        if self._gate is not None:
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
            if self._gate is not None:
                await self._await_first_view("unary_stream")
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
