"""``etcdkit watch``: a live table of a prefix in a terminal, or one JSON line per snapshot."""

from __future__ import annotations

import argparse
import asyncio
import base64
import heapq
import json
import logging
import re
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from etcdkit import (
    AsyncClient,
    ChangeKind,
    CompactedError,
    EtcdkitError,
    PrefixWatch,
    Snapshot,
    WatchState,
)
from etcdkit.cli.common import (
    EXIT_OK,
    ConnOptions,
    Stopper,
    connected,
    emit,
    is_terminal,
    need_rich,
    pump,
    raw,
    shown,
)

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.live import Live

log = logging.getLogger("etcdkit.cli")

TICK = 0.5  # seconds between refreshes of the state line when nothing changes
META_TIMEOUT = 2.0
META_BATCH = 100  # above this many changed keys, one prefix listing instead of per-key reads


# -- transforms ------------------------------------------------------------------------------------
# Keys are decoded with surrogateescape, so that ``key.encode("utf-8", "surrogateescape")`` gives
# the raw key back (for the mod revision / lease look-ups); for valid UTF-8 it is the plain text.


def _key(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def text_transform(key: bytes, value: bytes) -> tuple[str, str]:
    # Never rejects a value: a rejected record leaves the view, and a key whose value stopped
    # being UTF-8 was reported as removed. Bytes that are not UTF-8 show as \xNN, as etcdctl
    # prints them raw.
    return _key(key), value.decode("utf-8", "backslashreplace")


def json_transform(key: bytes, value: bytes) -> tuple[str, Any]:
    return _key(key), json.loads(value)


def raw_transform(key: bytes, value: bytes) -> tuple[str, bytes]:
    return _key(key), value


TRANSFORMS: dict[str, Callable[[bytes, bytes], tuple[str, Any]]] = {
    "text": text_transform,
    "json": json_transform,
    "raw": raw_transform,
}


_LONE_SURROGATE = re.compile("[\udc80-\udcff]")


def json_line(doc: Any) -> str:
    """``doc`` as one JSON line. Keys are text; a byte that is not UTF-8 is written as the
    escape ``\\udc80``..``\\udcff`` (Python's surrogateescape), which no UTF-8 text can
    contain, so ``key.encode("utf-8", "surrogateescape")`` gives the raw key back exactly."""
    text = json.dumps(doc, ensure_ascii=False)
    return _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def json_value(value: Any, mode: str) -> Any:
    if value is None:
        return None
    if mode == "raw":
        return base64.b64encode(value).decode("ascii")
    return value


def table_value(value: Any, mode: str) -> str:
    if mode == "raw":
        return repr(value)
    if mode == "json":
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return str(value)


# -- views -----------------------------------------------------------------------------------------


class View(Protocol):
    async def snapshot(self, snap: Snapshot[str, Any], watch: PrefixWatch[str, Any]) -> None: ...

    def tick(self, watch: PrefixWatch[str, Any]) -> None: ...


class JsonView:
    """One JSON object per snapshot and line; the first one carries the whole tree. A change
    of the watch's state (LIVE <-> STALE) between snapshots is a line too, with no changes:
    without it a reader kept "live" for data etcd no longer confirmed (the terminal view
    re-renders its state line on its tick)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.first = True
        self.state: WatchState | None = None  # as the last line said
        self.keys = 0

    async def snapshot(self, snap: Snapshot[str, Any], watch: PrefixWatch[str, Any]) -> None:
        mode = self.mode
        self.state = watch.state
        self.keys = len(snap.tree)
        doc: dict[str, Any] = {
            "revision": snap.revision,
            "state": self.state.value,
            "keys": len(snap.tree),
            "changes": [
                {
                    "kind": ch.kind.value,
                    "key": ch.key,
                    "old": json_value(ch.old, mode),
                    "new": json_value(ch.new, mode),
                }
                for ch in sorted(snap.changes.values(), key=lambda c: c.key)
            ],
        }
        if self.first:
            doc["tree"] = {k: json_value(v, mode) for k, v in sorted(snap.tree.items())}
            self.first = False
        emit(json_line(doc))

    def tick(self, watch: PrefixWatch[str, Any]) -> None:
        state = watch.state
        if self.state is None or state is self.state:  # (no line before the first snapshot)
            return
        self.state = state
        # (the watch's own revision: also past progress notifications, which deliver no
        # snapshot; the tree is exact there too)
        doc: dict[str, Any] = {
            "revision": watch.revision,
            "state": state.value,
            "keys": self.keys,
            "changes": [],
        }
        emit(json_line(doc))


STATE_STYLE = {
    WatchState.SYNCING: "dim",
    WatchState.LIVE: "bold green",
    WatchState.STALE: "bold yellow",
    WatchState.CLOSED: "bold red",
}
KIND_STYLE = {
    ChangeKind.ADDED: ("+", "bold green"),
    ChangeKind.UPDATED: ("~", "bold yellow"),
    ChangeKind.REMOVED: ("-", "red strike"),
}


class LiveView:
    """A rich table refreshed in place: key, value, mod revision and lease of every key.

    The mod revision and lease are not part of a snapshot (the transform sees key and value
    only): they are read once for the whole prefix, then per changed key at the snapshot's
    revision. A put that does not change the value makes no change, so its new mod revision
    shows with the next change of that key.
    """

    def __init__(
        self, client: AsyncClient, prefix: str, mode: str, live: Live, console: Console
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.mode = mode
        self.live = live
        self.console = console
        self.meta: dict[str, tuple[int, int]] = {}  # key -> (mod_revision, lease)
        self.snap: Snapshot[str, Any] | None = None
        self.removed: dict[str, Any] = {}
        self._status = ""
        self._meta_loaded = False

    async def snapshot(self, snap: Snapshot[str, Any], watch: PrefixWatch[str, Any]) -> None:
        self.snap = snap
        self.removed = {
            k: ch.old for k, ch in snap.changes.items() if ch.kind is ChangeKind.REMOVED
        }
        await self._load_meta(snap)
        self.render(watch)

    def tick(self, watch: PrefixWatch[str, Any]) -> None:
        if self._status_text(watch) != self._status:
            self.render(watch)

    async def _load_meta(self, snap: Snapshot[str, Any]) -> None:
        for k in self.removed:
            self.meta.pop(k, None)
        changed = [k for k, ch in snap.changes.items() if ch.kind is not ChangeKind.REMOVED]
        if not changed:
            return
        revision = snap.revision
        for _ in range(2):
            try:
                async with asyncio.timeout(META_TIMEOUT):
                    if not self._meta_loaded or len(changed) > META_BATCH:
                        res = await self.client.get_prefix(
                            self.prefix, revision=revision, keys_only=True
                        )
                        self.meta = {_key(kv.key): (kv.mod_revision, kv.lease) for kv in res.kvs}
                        self._meta_loaded = True
                    else:
                        kvs = await asyncio.gather(
                            *(
                                self.client.get(
                                    k.encode("utf-8", "surrogateescape"), revision=revision
                                )
                                for k in changed
                            )
                        )
                        for k, kv in zip(changed, kvs):
                            if kv is not None:
                                self.meta[k] = (kv.mod_revision, kv.lease)
                return
            except CompactedError:
                revision = 0  # that revision is gone: the newest is close enough for display
            except (EtcdkitError, TimeoutError) as exc:
                log.debug("watch: reading mod revisions failed: %s", exc)
                return

    def _status_text(self, watch: PrefixWatch[str, Any]) -> str:
        # The watch's own revision: also past changes the transform dropped and progress
        # notifications, which deliver no snapshot (the tree is exact there too).
        state = watch.state
        extra = ""
        if state is WatchState.STALE:
            extra = f" (unconfirmed for {watch.age:.0f} s)"
        return f"{watch.revision}|{state.name}{extra}"

    def render(self, watch: PrefixWatch[str, Any]) -> None:
        self._status = self._status_text(watch)
        self.live.update(self._renderable(watch), refresh=True)

    def _renderable(self, watch: PrefixWatch[str, Any]) -> RenderableType:
        from rich import box
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        snap = self.snap
        state = watch.state
        revision, _, status = self._status.partition("|")
        head = Text.assemble(
            ("etcdkit watch ", "bold"),
            (shown(self.prefix), "bold cyan"),
            "  revision ",
            (revision if snap is not None else "-", "bold"),
            "  ",
            (status, STATE_STYLE.get(state, "")),
        )
        if snap is None:
            return Group(head, Text("listing the prefix ...", style="dim"))
        changes: Mapping[str, Any] = snap.changes
        counts = {kind: 0 for kind in ChangeKind}
        for ch in changes.values():
            counts[ch.kind] += 1
        head.append(f"  keys {len(snap.tree)}")
        if changes:
            head.append(
                f"  (+{counts[ChangeKind.ADDED]} ~{counts[ChangeKind.UPDATED]} "
                f"-{counts[ChangeKind.REMOVED]})",
                style="dim",
            )

        room = max(3, self.console.size.height - 7)
        keys = heapq.nsmallest(room, [*snap.tree.keys(), *self.removed.keys()])
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, expand=False)
        table.add_column("", width=1, no_wrap=True)
        table.add_column("key", no_wrap=True, overflow="fold", max_width=60)
        table.add_column("value", no_wrap=True, overflow="ellipsis", max_width=80)
        table.add_column("mod rev", justify="right", no_wrap=True)
        table.add_column("lease", justify="right", no_wrap=True)
        for k in keys:
            ch = changes.get(k)
            mark, style = KIND_STYLE[ch.kind] if ch is not None else (" ", "")
            value = self.removed[k] if k in self.removed else snap.tree[k]
            mod, lease = self.meta.get(k, (0, 0))
            table.add_row(
                mark,
                self._short(k),
                table_value(value, self.mode),
                str(mod) if mod else ("" if k in self.removed else "?"),
                f"{lease:#x}" if lease else "-",
                style=style,
            )
        total = len(snap.tree) + len(self.removed)
        foot = Text("Ctrl-C to quit", style="dim")
        if total > len(keys):
            foot = Text(f"... and {total - len(keys)} more keys.  Ctrl-C to quit", style="dim")
        return Group(head, table, foot)

    def _short(self, key: str) -> str:
        """The key relative to the watched prefix (the header shows the prefix)."""
        if key.startswith(self.prefix) and len(key) > len(self.prefix):
            return shown(key[len(self.prefix) :])
        return shown(key)


# -- the command -----------------------------------------------------------------------------------


async def _pump(watch: PrefixWatch[str, Any], view: View, stop: Stopper) -> None:
    async def show(snap: Snapshot[str, Any]) -> None:
        await view.snapshot(snap, watch)

    await pump(watch, show, lambda: view.tick(watch), stop, TICK)


async def run_watch(args: argparse.Namespace, opts: ConnOptions) -> int:
    prefix: str = args.prefix
    mode: str = args.transform
    json_mode = bool(args.json) or not is_terminal(sys.stdout)
    if not json_mode:
        need_rich("the live view", " or use --json")
    async with (
        connected(opts) as client,
        Stopper() as stop,
        client.watch_prefix(raw(prefix), TRANSFORMS[mode]) as watch,
    ):
        if json_mode:
            await _pump(watch, JsonView(mode), stop)
            return EXIT_OK
        from rich.console import Console
        from rich.live import Live

        console = Console()
        with Live(
            console=console,
            auto_refresh=False,
            transient=False,
            vertical_overflow="ellipsis",
        ) as live:
            view = LiveView(client, prefix, mode, live, console)
            view.render(watch)
            await _pump(watch, view, stop)
    return EXIT_OK
