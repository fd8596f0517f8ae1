"""Election: one leader at a time, interoperable with Go's ``concurrency.Election`` and
``etcdctl elect``. Written on the public client only (:class:`etcdkit._surface.Etcd`)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable
from types import TracebackType
from typing import NamedTuple

from etcdkit._errors import (
    ClosedError,
    CompactedError,
    EtcdkitError,
    EtcdTimeoutError,
    NotHeldError,
)
from etcdkit._logs import CALLBACK_ERRORS
from etcdkit._surface import Etcd
from etcdkit._types import Compare, EventType, KeyValue, Op, to_bytes
from etcdkit.recipes._hold import fence
from etcdkit.recipes._line import Contender, HoldState, check_timeout, check_ttl, prefix_of

__all__ = ["Campaign", "Election", "Leader", "Leadership"]

log = logging.getLogger("etcdkit.election")


class Leader(NamedTuple):
    """The current leader of an election: its key, its value, and its key's create revision
    (the leader's fencing token)."""

    key: bytes
    value: bytes
    revision: int


def _leader(kv: KeyValue) -> Leader:
    return Leader(kv.key, kv.value, kv.create_revision)


class Election:
    """A leader election (Go's ``concurrency.Election``) on the keys under ``name + "/"``.

    Create with :meth:`AsyncClient.election` (no I/O). Candidates :meth:`campaign`; anyone can
    ask for the :meth:`leader` or :meth:`observe` it. Keys and order are Go's: a candidate's
    key is ``name/<lease id in hex>`` with its value, on a lease of its own; the oldest key
    leads. So ``etcdctl elect name`` and Go programs take part in the same election.
    """

    def __init__(self, client: Etcd, name: str | bytes) -> None:
        self._prefix = prefix_of(name)
        self._name = name
        self._etcd = client

    def __repr__(self) -> str:
        return f"<Election name={self._name!r}>"

    @property
    def name(self) -> str | bytes:
        return self._name

    @property
    def prefix(self) -> bytes:
        """``name + "/"``: the candidates' keys are directly under it."""
        return self._prefix

    def campaign(self, value: str | bytes, ttl: int = 10, timeout: float | None = None) -> Campaign:
        """Stand for leader with ``value``: ``async with election.campaign(value) as
        leadership:`` returns once we lead (see :class:`Leadership`) and resigns on leaving
        the block. Waits up to ``timeout`` seconds (``None``: for ever; ``0``: not at all, we
        lead only if nobody does), then raises :class:`EtcdTimeoutError`; a timeout, a
        cancellation or an error while waiting removes our key and revokes our lease. ``ttl``:
        our lease's TTL in seconds (how long a crashed leader stays leader). Each campaign is
        one term, entered once: its leadership is its own, and leaving its block resigns
        only that.
        """
        return Campaign(self._etcd, self._name, self._prefix, value, ttl, timeout)

    async def leader(self) -> Leader | None:
        """The current leader (the oldest candidate key), or ``None`` when there is none."""
        # the oldest candidate key by create revision (Go's ``WithFirstCreate``)
        res = await self._etcd.range(
            self._prefix, prefix=True, sort_target="create", sort_order="ascend", limit=1
        )
        return _leader(res.kvs[0]) if res.kvs else None

    async def observe(self) -> AsyncGenerator[Leader, None]:
        """Each leader, and each new value of the leader (:meth:`Leadership.proclaim`), as
        they change; latest wins within a leader's term (a slow consumer skips to its newest
        value), but no leader is skipped: one that leads briefly, and goes before the
        consumer asks again, is still yielded (the consumer more than
        :data:`OBSERVE_BACKLOG` leaders behind skips the oldest). Like Go's ``Observe``,
        nothing is yielded while there is no leader: the next leader comes next. One watch
        of the election's keys, from the revision they were read at, so a quick succession
        of leaders is followed as it happens. Survives disconnects and compaction (after a
        compaction the keys are read again: a leader that came and went in the compacted
        history is not yielded); raises :class:`ClosedError` when the client closes. ``async
        for leader in election.observe():``; break to stop (the watch ends)."""
        etcd = self._etcd
        backoff = etcd.retry.backoff()
        last: Leader | None = None
        while True:
            try:
                res = await etcd.range(self._prefix, prefix=True)
                backoff.reset()
            except EtcdkitError as exc:
                if not etcd.retry.is_retryable(exc):
                    raise
                await asyncio.sleep(backoff.next_delay() or 0.0)
                if etcd.closed:
                    raise ClosedError(
                        f"observing election {self._name!r}: the client closed"
                    ) from exc
                continue
            terms = _Terms(etcd, self._prefix, res.kvs, res.revision)
            try:
                while True:
                    if terms.leaders:
                        head = terms.leaders[0]
                        if head != last:
                            last = head
                            yield head
                            continue
                        if len(terms.leaders) > 1:  # its term ended: the next leader's
                            terms.leaders.popleft()
                            continue
                    if terms.ended:
                        break
                    await terms.changed()
            finally:
                await terms.aclose()


OBSERVE_BACKLOG = 1024  # leaders an observer may be behind before it skips the oldest


class _Terms:
    """The leaders of an election from a revision on, in order, each with its newest value:
    the oldest candidate key leads (Go's order), followed through one watch of every
    candidate key."""

    def __init__(self, etcd: Etcd, prefix: bytes, kvs: list[KeyValue], rev: int) -> None:
        self._candidates = {kv.key: kv for kv in kvs}
        self.leaders: collections.deque[Leader] = collections.deque(maxlen=OBSERVE_BACKLOG)
        self._note_leader()
        self.ended = False
        self._error: EtcdkitError | None = None
        self._event = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(
            self._run(etcd, prefix, rev), name=f"etcdkit-observe {prefix!r}"
        )

    def _note_leader(self) -> None:
        if not self._candidates:
            return  # no leader: nothing to yield until the next one
        oldest = _leader(min(self._candidates.values(), key=_created))
        leaders = self.leaders
        if leaders and (leaders[-1].key, leaders[-1].revision) == (oldest.key, oldest.revision):
            if leaders[-1] != oldest:
                leaders[-1] = oldest  # a new value in the same term: latest wins
        else:
            leaders.append(oldest)

    async def _run(self, etcd: Etcd, prefix: bytes, rev: int) -> None:
        try:
            async with etcd.watch(prefix, prefix=True, start_revision=rev + 1) as w:
                async for batch in w:
                    if not batch.events:
                        continue
                    at = batch.events[0].kv.mod_revision
                    for ev in batch.events:
                        # the leader after each revision (a batch may hold several; a
                        # transaction's changes, of one revision, are seen together)
                        if ev.kv.mod_revision != at:
                            at = ev.kv.mod_revision
                            self._note_leader()
                        if ev.type is EventType.DELETE:
                            self._candidates.pop(ev.kv.key, None)
                        else:
                            self._candidates[ev.kv.key] = ev.kv
                    self._note_leader()
                    self._event.set()
        except CompactedError:
            pass  # read the keys again
        except EtcdkitError as err:  # closed or failed: raised by changed()
            self._error = err
        finally:
            self.ended = True
            self._event.set()

    async def changed(self) -> None:
        self._event.clear()
        if not self.ended:
            await self._event.wait()
        if self._error is not None:
            raise self._error

    async def aclose(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def _created(kv: KeyValue) -> int:
    return kv.create_revision


class Campaign:
    """What :meth:`Election.campaign` returns: ``async with`` it to lead (see there). Single
    use: it makes one :class:`Leadership`, and leaving the block resigns that one only.
    :attr:`state` and :meth:`add_listener` follow it from the start, while waiting too
    (``WAITING``, ``REQUEUED``)."""

    def __init__(
        self,
        etcd: Etcd,
        name: str | bytes,
        prefix: bytes,
        value: str | bytes,
        ttl: int,
        timeout: float | None,
    ) -> None:
        self._value = to_bytes(value, "value")
        self._ttl = check_ttl(ttl)
        self._timeout = check_timeout(timeout)
        self._etcd = etcd
        self._name = name
        self._prefix = prefix
        self._leadership: Leadership | None = None
        self._listeners: list[Callable[[HoldState], None]] = []

    def __repr__(self) -> str:
        return f"<Campaign election={self._name!r} state={self.state.name}>"

    @property
    def state(self) -> HoldState:
        """Where this campaign stands: ``IDLE`` before it is entered, then its leadership's
        state (``WAITING``, ``REQUEUED``, ``HELD``, ...)."""
        return self._leadership.state if self._leadership is not None else HoldState.IDLE

    def add_listener(self, callback: Callable[[HoldState], None]) -> Callable[[], None]:
        """Call ``callback(state)`` on every state change of this campaign, waiting included
        (on the event loop); returns a function that removes it. Errors are logged."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    async def __aenter__(self) -> Leadership:
        if self._leadership is not None:
            raise RuntimeError("this campaign was entered already; call campaign() again")
        leadership = Leadership(
            self._etcd, self._name, self._prefix, self._value, self._ttl, self._listeners
        )
        self._leadership = leadership
        await leadership._win(self._timeout)
        return leadership

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._leadership is not None:
            await self._leadership.resign()


class Leadership:
    """Our term as leader, from :meth:`Election.campaign`.

    ``key`` (``name/<lease id hex>``), ``revision`` (its create revision: the fencing token,
    higher for each later leader) and ``lease_id`` say who we are; ``value`` is what we
    proclaimed last. ``state`` is a :class:`HoldState`; :attr:`lost` (an
    :class:`asyncio.Event`) is set once leadership can no longer be trusted: our key deleted,
    our lease revoked, expired or unconfirmed for its TTL (less a margin), or we resigned.
    Guard what only the leader may write with :meth:`guard` (see :class:`Lock` for why).
    """

    def __init__(
        self,
        etcd: Etcd,
        name: str | bytes,
        prefix: bytes,
        value: bytes,
        ttl: int,
        campaign_listeners: list[Callable[[HoldState], None]] | None = None,
    ) -> None:
        self._etcd = etcd
        self._name = name
        self._value = value
        self._listeners: list[Callable[[HoldState], None]] = []
        self._campaign_listeners = campaign_listeners if campaign_listeners is not None else []
        self._c = Contender(
            etcd,
            prefix,
            value,
            ttl,
            what=f"leadership of {name!r}",
            kind="election",
            on_state=self._on_state,
        )

    def __repr__(self) -> str:
        return f"<Leadership election={self._name!r} {self._c!r}>"

    async def _win(self, timeout: float | None) -> None:
        c = self._c
        if timeout == 0:
            if await c.acquire(wait=False):
                return
            ahead = c.ahead
            who = f"; {ahead.key!r} = {ahead.value[:80]!r} is ahead" if ahead else ""
            raise EtcdTimeoutError(
                f"not elected in {self._name!r}: another leads and timeout=0 does not wait{who} "
                f"(endpoints {', '.join(self._etcd.endpoints)})"
            )
        try:
            async with asyncio.timeout(timeout):
                await c.acquire(wait=True)
        except TimeoutError as exc:
            if isinstance(exc, EtcdkitError):
                raise
            ahead = c.ahead
            who = f"; waiting behind {ahead.key!r} = {ahead.value[:80]!r}" if ahead else ""
            raise EtcdTimeoutError(
                f"not elected in {self._name!r} within {timeout:g} s{who} "
                f"(endpoints {', '.join(self._etcd.endpoints)})"
            ) from None

    @property
    def key(self) -> bytes:
        """Our candidate key in etcd (``name/<lease id hex>``)."""
        return self._c.key

    @property
    def revision(self) -> int:
        """Our key's create revision: the fencing token of this term."""
        return self._c.token

    @property
    def lease_id(self) -> int:
        """The lease our candidate key is on."""
        return self._c.lease_id

    @property
    def value(self) -> bytes:
        """The value we campaigned (or last proclaimed) with."""
        return self._value

    @property
    def state(self) -> HoldState:
        """Where this leadership stands (a :class:`HoldState`: ``HELD`` while we lead)."""
        return self._c.state

    @property
    def lost(self) -> asyncio.Event:
        return self._c.lost

    @property
    def requeues(self) -> int:
        """How many times this campaign lost its place in line while waiting (its key or lease
        vanished) and queued again at the back (state ``REQUEUED``)."""
        return self._c.requeues

    def guard(self) -> Compare:
        """A :class:`Compare` that holds only while we lead (our key exists with our create
        revision): put it in the ``compare`` of every write only the leader may make (asked for
        once this leadership is ``LOST`` or ``RELEASED``, it holds for no key)."""
        return fence(self._c.key, self._c.token, self._c.state)

    def add_listener(self, callback: Callable[[HoldState], None]) -> Callable[[], None]:
        """Call ``callback(state)`` on every state change (on the event loop); returns a
        function that removes it. Errors are logged."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    async def proclaim(self, value: str | bytes) -> None:
        """Announce a new value without a new election (observers see it). Raises
        :class:`NotHeldError` (and sets :attr:`lost`) if we no longer lead."""
        raw = to_bytes(value, "value")
        c = self._c
        if c.state not in (HoldState.HELD, HoldState.SUSPENDED):
            raise NotHeldError(f"not the leader of {self._name!r} (state {c.state.name})")
        res = await self._etcd.txn(
            [Compare.create_revision(c.key, "==", c.token)],
            [Op.put(c.key, raw, lease=c.lease_id)],
        )
        if not res.succeeded:
            c.lose("our key is gone (found by proclaim)")
            raise NotHeldError(f"no longer the leader of {self._name!r}: our key is gone")
        self._value = raw

    async def resign(self) -> None:
        """Stop leading: our key goes with its lease, the next candidate leads at once.
        Idempotent; bounded when etcd is down."""
        await self._c.release()

    def _on_state(self, state: HoldState) -> None:
        for cb in [*self._listeners, *self._campaign_listeners]:
            try:
                cb(state)
            except CALLBACK_ERRORS:
                log.exception("leadership of %r: state listener failed", self._name)
