"""Many watches of single keys carried by few etcd watches (what ``wait_for`` waits on).

One etcd watch per waiting key costs a create message and an answer each (~0.1 ms of our CPU
through grpc.aio) and a watcher in etcd. When many keys under one parent start waiting in
the same turn of the event loop (10,000 ``wait_for`` calls started together: their reads come
back in transactions of 128), they share: the keys are sorted and cut into runs of
:data:`KEYS_PER_WATCH`, and each run is one etcd watch over ``[first key, last key]``, from the
oldest start revision among them. Its events are handed to the watchers of their key, each
from its own start revision on: what each watcher sees is exactly what its own watch would have
shown. The price: events of other keys inside a run are received and dropped (Kubernetes'
informers make the same trade at a larger scale). Fewer than :data:`GROUP_MIN` keys under a
parent keep a watch each, exactly as before, and so does the first watch of each turn, asked
for at once (a lone watch is not held back for company that may never come).

Keys asked for in different turns are kept apart: a key inside the range of a shared watch
already open joins it (no new etcd watch) when that watch has delivered nothing from the key's
start revision on, so it will show the key everything a watch of its own would; and a new run
is cut where it would reach over a shared watch already open. Otherwise reads answered out of
order (10,000 ``wait_for`` calls: their transactions come back in any order, two or three in
one turn) would make runs that span other runs' keys, and events received twice.

An error that ends a shared watch ends all its watchers with it, but for a compaction: the
shared watch starts at its oldest watcher's revision (or resumes at its own next one), and a
watcher whose own next revision etcd still has goes on, on an etcd watch of its own, as its
own watch would have; only the others get the :class:`CompactedError`. And but for a
permission denied: etcd's auth allows a watch only when the user may read its whole range,
which a user allowed each watched key but not the keys between is not. Every watcher then
goes on, on an etcd watch of its own (allowed or refused as it would have been), and the
client's key watches share no more.
"""

from __future__ import annotations

import asyncio
import logging
from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable

from etcdkit._errors import CompactedError, EtcdkitError, WatchEndedError
from etcdkit._types import WatchEvent
from etcdkit._wire.watch_hub import WatchHub, WatchSub

__all__ = ["GROUP_MIN", "KEYS_PER_WATCH", "KeyWatch", "KeyWatches"]

GROUP_MIN = 32  # keys under one parent, asked for in one turn, before they share etcd watches
KEYS_PER_WATCH = 128  # keys per shared etcd watch at most

log = logging.getLogger("etcdkit.watch")

EventsCallback = Callable[[list[WatchEvent]], None]
EndCallback = Callable[[EtcdkitError], None]


def parent_of(key: bytes) -> bytes:
    """``b"/a/b/c"`` -> ``b"/a/b/"``; a key without "/" has the parent ``b""``."""
    return key[: key.rfind(b"/") + 1]


class KeyWatch:
    """One key's watch from ``start`` on. Create with :meth:`KeyWatches.watch`."""

    __slots__ = (
        "_base",
        "_before",
        "_group",
        "_owner",
        "_sub",
        "ended",
        "key",
        "on_end",
        "on_events",
        "start",
    )

    def __init__(
        self,
        owner: KeyWatches,
        key: bytes,
        start: int,
        on_events: EventsCallback,
        on_end: EndCallback,
    ) -> None:
        self._owner = owner
        self.key = key
        self.start = start
        self.on_events = on_events
        self.on_end = on_end
        self.ended = False
        self._sub: WatchSub | None = None  # its own etcd watch, or
        self._group: _Group | None = None  # ... the shared one it is carried by
        self._base = 0  # its carrier's disconnects when it joined it
        self._before = 0  # disconnects under earlier carriers

    def carrier(self) -> WatchSub | None:
        """The etcd watch that carries it (its own or a shared one); ``None`` before the
        next turn's flush gives it one, and once it ended."""
        if self._sub is not None:
            return self._sub
        group = self._group
        return group.sub if group is not None else None

    @property
    def disconnects(self) -> int:
        """Times the stream broke under it (under every etcd watch that carried it)."""
        c = self.carrier()
        return self._before + (c.disconnects - self._base if c is not None else 0)

    def _carried_by(self, sub: WatchSub | None) -> None:
        """It moves to ``sub`` (a shared watch it joins or its own): count on from there."""
        old = self.carrier()
        if old is not None:
            self._before += old.disconnects - self._base
        self._base = sub.disconnects if sub is not None else 0

    def cancel(self) -> None:
        """Stop watching; idempotent, no callback is called afterwards."""
        if self.ended:
            return
        self.ended = True
        self._owner.live -= 1
        if self._sub is not None:
            self._sub.cancel()
        elif self._group is not None:
            self._group.leave(self)
        # still waiting for the flush: it skips ended watches

    def _end(self, err: EtcdkitError) -> None:
        """Its etcd watch ended (an error, a compaction, the client closed): say so, once."""
        if not self.ended:
            self.ended = True
            self._owner.live -= 1
            self.on_end(err)


def _first_key(group: _Group) -> bytes:
    return group.first


class _Group:
    """One etcd watch over a run of sorted keys, ``[first, last]``, and the watchers it
    carries, by key. ``owner`` (absent in unit tests) keeps it findable while it is open."""

    __slots__ = ("count", "first", "last", "members", "owner", "sub")

    def __init__(self, run: list[KeyWatch], owner: KeyWatches | None = None) -> None:
        self.members: dict[bytes, list[KeyWatch]] = {}
        for w in run:
            self.members.setdefault(w.key, []).append(w)
            w._group = self
        self.count = len(run)
        self.first = run[0].key
        self.last = run[-1].key
        self.owner = owner
        self.sub: WatchSub | None = None

    def join(self, w: KeyWatch) -> None:
        """Carry ``w`` too (its key is in ``[first, last]``; see :meth:`KeyWatches._join`)."""
        self.members.setdefault(w.key, []).append(w)
        w._carried_by(self.sub)
        w._group = self
        self.count += 1

    def on_events(self, events: list[WatchEvent]) -> None:
        members = self.members
        out: dict[KeyWatch, list[WatchEvent]] = {}
        for ev in events:
            ws = members.get(ev.kv.key)
            if ws is None:
                continue  # another key inside the run
            rev = ev.kv.mod_revision
            for w in ws:
                if rev >= w.start:
                    out.setdefault(w, []).append(ev)
        for w, evs in out.items():
            if not w.ended:  # (an earlier watcher's callback may have cancelled it)
                w.on_events(evs)

    def on_end(self, err: EtcdkitError) -> None:
        members, self.members = self.members, {}
        self.count = 0
        owner = self.owner
        if owner is not None:
            owner._closed(self)
        compacted = err.compact_revision if isinstance(err, CompactedError) else 0
        denied = isinstance(err, WatchEndedError) and "permission denied" in str(err).lower()
        if denied and owner is not None and owner.share:
            owner.share = False
            log.info("single-key watches share etcd watches no more: %s", err)
        # (where the shared watch was to resume: it delivered everything before it)
        resume = self.sub.next_rev if self.sub is not None else 0
        for ws in members.values():
            for w in ws:
                start = max(w.start, resume)
                if (
                    owner is not None
                    and not w.ended
                    and (denied or (compacted and start >= compacted))
                ):
                    # etcd still has this watcher's history: it goes on, on a watch of its own
                    w.start = start
                    w._carried_by(None)
                    w._group = None
                    owner._alone(w)
                else:
                    w._end(err)

    def leave(self, w: KeyWatch) -> None:
        ws = self.members.get(w.key)
        if ws is None or w not in ws:
            return
        ws.remove(w)
        if not ws:
            del self.members[w.key]
        self.count -= 1
        if not self.count and self.sub is not None:
            self.sub.cancel()
            if self.owner is not None:
                self.owner._closed(self)


class KeyWatches:
    """Watches of single keys for one client, on its :class:`WatchHub` (see the module
    docstring)."""

    def __init__(self, hub: WatchHub) -> None:
        self._hub = hub
        self._pending: list[KeyWatch] = []
        self._turn = False  # a watch was asked for in this turn of the event loop
        self._groups: dict[bytes, list[_Group]] = {}  # open shared watches by parent, by first
        self.live = 0  # watches neither cancelled nor ended
        self.share = True  # until etcd refuses a shared watch (see the module docstring)

    def waiting(self) -> int:
        """Watches neither cancelled nor ended whose etcd watch has been asked for."""
        return self.live - sum(1 for w in self._pending if not w.ended)

    def watch(
        self, key: bytes, start_revision: int, *, on_events: EventsCallback, on_end: EndCallback
    ) -> KeyWatch:
        """Watch ``key`` from ``start_revision`` (> 0) until cancelled. The first watch asked
        for in a turn of the event loop gets its etcd watch at once (a lone watch, as a
        PersistentLease's, reaches etcd before the caller's next request does: one created
        after the changes it starts from waits for etcd's 100 ms catch-up loop); those asked for
        later in the same turn get theirs at the next turn, together, sharing where many."""
        w = KeyWatch(self, key, start_revision, on_events, on_end)
        self.live += 1
        if self._join(w):
            return w
        if not self._turn:
            self._turn = True
            asyncio.get_running_loop().call_soon(self._flush)
            self._alone(w)
        else:
            self._pending.append(w)
        return w

    def _flush(self) -> None:
        self._turn = False
        pending, self._pending = self._pending, []
        by_parent: dict[bytes, list[KeyWatch]] = {}
        for w in pending:
            if not w.ended and not self._join(w):
                by_parent.setdefault(parent_of(w.key), []).append(w)
        for parent, ws in by_parent.items():
            if len(ws) < GROUP_MIN or not self.share:
                for w in ws:
                    self._alone(w)
                continue
            ws.sort(key=lambda w: w.key)
            for run in self._runs(parent, ws):
                self._share(run)

    def _join(self, w: KeyWatch) -> bool:
        """Carry ``w`` on the open shared watch whose range holds its key, if there is one
        and it has delivered nothing from ``w.start`` on (its next revision is not past it):
        all it delivers from now on, filtered from ``w.start``, is then exactly what a watch
        of ``w``'s own would show. (A reconnect resumes it from that next revision, too.)"""
        groups = self._groups.get(parent_of(w.key))
        if not groups:
            return False
        i = bisect_right(groups, w.key, key=_first_key) - 1
        if i < 0:
            return False
        group = groups[i]
        sub = group.sub
        if w.key > group.last or sub is None or sub.ended or sub.next_rev > w.start:
            return False
        if group.count >= KEYS_PER_WATCH:
            return False  # full: at most KEYS_PER_WATCH watchers per shared watch
        group.join(w)
        return True

    def _runs(self, parent: bytes, ws: list[KeyWatch]) -> list[list[KeyWatch]]:
        """``ws`` (sorted by key) cut into runs of at most :data:`KEYS_PER_WATCH`, and also
        wherever the next key lies past the first key of an open shared watch: no run reaches
        over one."""
        firsts = [g.first for g in self._groups.get(parent, ())]
        runs: list[list[KeyWatch]] = []
        run: list[KeyWatch] = []
        for w in ws:
            if run and (
                len(run) == KEYS_PER_WATCH
                or (firsts and bisect_right(firsts, run[-1].key) < bisect_left(firsts, w.key))
            ):
                runs.append(run)
                run = []
            run.append(w)
        runs.append(run)
        return runs

    def _closed(self, group: _Group) -> None:
        """``group``'s etcd watch ended or was cancelled: no key joins it any more."""
        group.owner = None
        parent = parent_of(group.first)
        groups = self._groups[parent]
        groups.remove(group)  # (a _Group equals only itself)
        if not groups:
            del self._groups[parent]

    def _alone(self, w: KeyWatch) -> None:
        try:
            w._sub = self._hub.watch(w.key, b"", w.start, on_events=w.on_events, on_end=w._end)
        except EtcdkitError as exc:  # the client closed meanwhile
            w._end(exc)

    def _share(self, run: list[KeyWatch]) -> None:
        group = _Group(run, self)
        insort(self._groups.setdefault(parent_of(group.first), []), group, key=_first_key)
        start = min(w.start for w in run)
        try:
            group.sub = self._hub.watch(
                run[0].key,
                run[-1].key + b"\0",
                start,
                on_events=group.on_events,
                on_end=group.on_end,
            )
        except EtcdkitError as exc:  # the client closed meanwhile
            group.on_end(exc)
