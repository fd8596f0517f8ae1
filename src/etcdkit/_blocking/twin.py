"""One generic way to make a blocking twin of an asyncio object.

A twin holds the asyncio object (``.aio``) and the client's loop thread (a portal, as
``etcdkit._blocking.portal.Portal``), and forwards each call through the portal. Its methods are not
written out by hand: ``blocking(Async.method)`` makes the blocking method from the async one,
with the same parameters, return type and docstring (so the API reference lists it)::

    class SyncMembers(Twin[Members]):
        list = blocking(Members.list)
        add = blocking(Members.add)

mypy checks the result like the original (``ParamSpec``). Nothing is re-implemented.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable, Container, Coroutine
from types import TracebackType
from typing import Any, Concatenate, Generic, ParamSpec, Protocol, TypeVar, overload

from etcdkit._errors import ClosedError

__all__ = [
    "PortalLike",
    "SetOn",
    "SyncIterator",
    "Twin",
    "blocking",
    "blocking_read",
    "mirror",
]

A = TypeVar("A")
P = ParamSpec("P")
S = TypeVar("S")
T = TypeVar("T")


class PortalLike(Protocol):
    """What a twin needs of ``etcdkit._blocking.portal.Portal`` (the client's loop thread)."""

    @property
    def closed(self) -> bool: ...

    def call(
        self,
        coro: Coroutine[Any, Any, T],
        *,
        abandon: Callable[[T], Awaitable[object]] | None = None,
    ) -> T: ...

    def run_sync(self, fn: Callable[..., T], *args: Any) -> T: ...

    def read(self, fn: Callable[[], T]) -> T: ...

    def check_caller(self) -> None: ...


class Twin(Generic[A]):
    """The base of a blocking twin: ``aio`` is the asyncio object every call goes to, and
    ``portal`` the client's loop thread that runs it."""

    def __init__(self, portal: PortalLike, aio: A) -> None:
        self.portal = portal
        self.aio: A = aio

    def __repr__(self) -> str:
        text = self.portal.read(lambda: repr(self.aio))
        name = type(self.aio).__name__
        return text.replace(f"<{name}", f"<{type(self).__name__}", 1)


class SetOn(Generic[S]):
    """A state listener that sets ``event`` once it is called with one of ``states``: how a
    twin follows its asyncio object's state. It holds the event alone, not the twin: the
    asyncio object, which the client's loop keeps, keeps its listeners, and one that held the
    twin held its portal too, so a client dropped open was never collected nor closed."""

    __slots__ = ("event", "states")

    def __init__(self, event: threading.Event, states: Container[S]) -> None:
        self.event = event
        self.states = states

    def __call__(self, state: S) -> None:
        if state in self.states:
            self.event.set()


def blocking(
    fn: Callable[Concatenate[A, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[Twin[A], P], T]:
    """The blocking method of a twin, made from the async method ``fn`` of its class."""

    def method(self: Twin[A], /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self.portal.call(fn(self.aio, *args, **kwargs))

    functools.update_wrapper(method, fn)  # name, docstring, and the signature via __wrapped__
    return method


def blocking_read(fn: Callable[Concatenate[A, P], T]) -> Callable[Concatenate[Twin[A], P], T]:
    """A twin method for a plain (non-async) method of the asyncio object: it runs on the loop
    thread, so it sees the object's state as the loop does."""

    def method(self: Twin[A], /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self.portal.read(functools.partial(fn, self.aio, *args, **kwargs))

    functools.update_wrapper(method, fn)
    return method


class mirror(Generic[T]):
    """A read-only attribute of a twin that mirrors a property of the asyncio object, with its
    docstring and type: ``state = mirror(PrefixWatch.state)``.

    It is read on the loop thread (so it agrees with what the loop sees), or, with
    ``direct=True``, straight from the caller's thread: for immutable values the loop publishes
    in one assignment (a snapshot, an id fixed at open), which may be read from any thread.
    """

    def __init__(self, prop: Callable[[Any], T], *, direct: bool = False) -> None:
        fget: Callable[[Any], T] = prop.fget if isinstance(prop, property) else prop
        self._fget = fget
        self._direct = direct
        self.__doc__ = fget.__doc__
        self.__name__ = getattr(fget, "__name__", "mirror")

    @overload
    def __get__(self, obj: None, owner: type[Any]) -> mirror[T]: ...
    @overload
    def __get__(self, obj: Twin[Any], owner: type[Any]) -> T: ...
    def __get__(self, obj: Twin[Any] | None, owner: type[Any]) -> mirror[T] | T:
        if obj is None:
            return self
        if self._direct:
            return self._fget(obj.aio)
        return obj.portal.read(functools.partial(self._fget, obj.aio))


class SyncIterator(Generic[T]):
    """A plain iterator over an async generator that runs on the client's loop thread (e.g.
    :meth:`SyncElection.observe`, :meth:`Client.get_prefix_pages`).

    Unlike a generator it can be closed from any thread, also while another thread waits in
    ``next()`` on it: that ``next()`` then raises ``StopIteration`` (a ``for`` loop over it
    ends), as closing a watch does. ``close()`` ends the async generator (its ``finally``
    runs), is idempotent, and ``with`` closes it too; one dropped unclosed is closed by the
    loop (asyncio's async-generator hooks). One thread at a time may iterate it. A ``next()``
    interrupted (Ctrl-C) ends what it iterated: the next one raises RuntimeError saying so
    (never a StopIteration that would pass for the end)."""

    def __init__(self, portal: PortalLike, agen: AsyncGenerator[T, None]) -> None:
        self._portal = portal
        self._agen = agen
        self._closed = False  # (these two are read and set on the loop thread)
        self._step: asyncio.Future[T] | None = None  # the next() under way, if any
        self._interrupted = False  # a next() was given up on (Ctrl-C): the generator ended

    def __iter__(self) -> SyncIterator[T]:
        return self

    def __next__(self) -> T:
        try:
            return self._portal.call(self._next(), abandon=self._item_lost)
        except StopAsyncIteration:
            raise StopIteration from None

    async def _item_lost(self, item: T) -> None:
        """The waiting thread gave up (Ctrl-C) after its item was read: the item is lost, and
        the iteration with it (see _next)."""
        self._interrupted = True

    def close(self) -> None:
        """End the iteration, from any thread: a ``next()`` waiting in another raises
        ``StopIteration``; the async generator is closed before this returns."""
        if not self._portal.closed:
            with contextlib.suppress(ClosedError):
                self._portal.call(self._aclose())

    def __enter__(self) -> SyncIterator[T]:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def _next(self) -> T:
        if self._closed:
            raise StopAsyncIteration
        if self._interrupted:
            # (its generator was cancelled half-way, and so ended: a next() that ends the
            # iteration would pass for its end, a listing cut short for a whole one)
            raise RuntimeError(
                "an earlier next() on this iterator was interrupted (KeyboardInterrupt), which "
                "ended what it iterated: start a new one"
            )
        if self._step is not None and not self._step.done():
            raise RuntimeError("iterate this iterator from one thread at a time")
        step = self._step = asyncio.ensure_future(anext(self._agen))
        try:
            return await step
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if self._closed and (me is None or not me.cancelling()):
                raise StopAsyncIteration from None  # close() ended the step
            self._interrupted = True
            raise  # the client closing, or the waiting thread giving up

    async def _aclose(self) -> None:
        self._closed = True
        step = self._step
        if step is not None and not step.done():
            step.cancel()  # (the generator's finally runs)
            await asyncio.wait([step])
        await self._agen.aclose()
