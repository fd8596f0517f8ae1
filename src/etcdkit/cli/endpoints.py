"""``etcdkit endpoints TARGET``: the gRPC endpoints of a target as Go's etcd naming keeps them
(``target/...`` keys of ``{"Op":0,"Addr":...,"Metadata":...}``), live (rich) or as JSON lines;
``--add ADDR`` registers one until Ctrl-C."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from etcdkit import ChangeKind, PrefixWatch, Snapshot, WatchState
from etcdkit.cli.common import (
    EXIT_OK,
    ConnOptions,
    Stopper,
    UsageError,
    connected,
    emit,
    is_terminal,
    need_rich,
    pump,
)
from etcdkit.naming import Endpoint

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.live import Live

TICK = 0.5  # seconds between refreshes of the state line when nothing changes

View = Snapshot[str, Endpoint]
Watch = PrefixWatch[str, Endpoint]

MARKS = {ChangeKind.ADDED: "+", ChangeKind.UPDATED: "~", ChangeKind.REMOVED: "-"}

STATE_STYLE = {
    WatchState.SYNCING: "dim",
    WatchState.LIVE: "bold green",
    WatchState.STALE: "bold yellow",
    WatchState.CLOSED: "bold red",
}


def _keys(view: View, kind: ChangeKind) -> list[str]:
    return sorted(k for k, ch in view.changes.items() if ch.kind is kind)


class JsonView:
    """One JSON object per view and line; a change of the watch's state (LIVE <-> STALE)
    between views is a line too, with nothing added, updated or removed."""

    def __init__(self) -> None:
        self.last: View | None = None
        self.state: WatchState | None = None  # as the last line said

    def view(self, view: View, watch: Watch) -> None:
        self.last = view
        self.state = watch.state
        self._line(
            view.revision,
            _keys(view, ChangeKind.ADDED),
            _keys(view, ChangeKind.UPDATED),
            _keys(view, ChangeKind.REMOVED),
        )

    def tick(self, watch: Watch) -> None:
        state = watch.state
        if self.last is None or state is self.state:  # (no line before the first view)
            return
        self.state = state
        self._line(self.last.revision, [], [], [])

    def _line(
        self, revision: int, added: list[str], updated: list[str], removed: list[str]
    ) -> None:
        assert self.last is not None
        assert self.state is not None
        doc: dict[str, Any] = {
            "revision": revision,
            "state": self.state.value,
            "endpoints": {
                key: {"Addr": ep.addr, "Metadata": ep.metadata}
                for key, ep in sorted(self.last.tree.items())
            },
            "added": added,
            "updated": updated,
            "removed": removed,
        }
        emit(json.dumps(doc, ensure_ascii=False))


class LiveView:
    """A table of key, address and metadata, refreshed in place; added rows green, updated
    yellow, removed red until the next view."""

    def __init__(self, target: str, live: Live, console: Console) -> None:
        self.target = target
        self.live = live
        self.console = console
        self.last: View | None = None
        self._status = ""

    def view(self, view: View, watch: Watch) -> None:
        self.last = view
        self.render(watch)

    def tick(self, watch: Watch) -> None:
        if watch.state.name != self._status:
            self.render(watch)

    def render(self, watch: Watch) -> None:
        self._status = watch.state.name
        self.live.update(self._renderable(watch), refresh=True)

    def _renderable(self, watch: Watch) -> RenderableType:
        from rich import box
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        state = watch.state
        view = self.last
        head = Text.assemble(
            ("etcdkit endpoints ", "bold"),
            (self.target, "bold cyan"),
            "  revision ",
            (str(view.revision) if view is not None else "-", "bold"),
            "  ",
            (state.name, STATE_STYLE.get(state, "")),
        )
        if view is None:
            return Group(head, Text("loading the endpoints ...", style="dim"))
        head.append(f"  endpoints {len(view.tree)}")
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, expand=False)
        table.add_column("", width=1, no_wrap=True)
        table.add_column("key", no_wrap=True, overflow="fold", max_width=60)
        table.add_column("address", no_wrap=True, overflow="ellipsis", max_width=40)
        table.add_column("metadata", no_wrap=True, overflow="ellipsis", max_width=40)
        removed = {k: ch.old for k, ch in view.changes.items() if ch.kind is ChangeKind.REMOVED}
        rows = sorted({**view.tree, **{k: v for k, v in removed.items() if v is not None}}.items())
        room = max(3, self.console.size.height - 7)
        for key, ep in rows[:room]:
            change = view.changes.get(key)
            mark = MARKS[change.kind] if change is not None else " "
            style = {"-": "red strike", "+": "bold green", "~": "bold yellow"}.get(mark, "")
            meta = "" if ep.metadata is None else json.dumps(ep.metadata, ensure_ascii=False)
            table.add_row(mark, key, ep.addr, meta, style=style)
        more = f"... and {len(rows) - room} more.  " if len(rows) > room else ""
        return Group(head, table, Text(f"{more}Ctrl-C to quit", style="dim"))


def _metadata(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text  # a plain string, as Go's resolver wants it


async def run_endpoints(args: argparse.Namespace, opts: ConnOptions) -> int:
    target: str = args.target
    if not target or target.endswith("/"):
        raise UsageError('TARGET must be a non-empty name without a trailing "/", e.g. "svc/api"')
    if args.metadata is not None and args.add is None:
        raise UsageError("--metadata goes with --add ADDR (the endpoint it describes)")
    json_mode = bool(args.json) or not is_terminal(sys.stdout)
    if not json_mode:
        need_rich("the live view", " or use --json")
    async with connected(opts) as client, Stopper() as stop:
        eps = client.endpoint_manager(target)
        if args.add is not None:
            try:
                reg = eps.register(args.add, _metadata(args.metadata), ttl=args.ttl)
            except (TypeError, ValueError) as exc:
                raise UsageError(str(exc)) from None
            async with reg:
                return await _show(target, eps.watch(), json_mode, stop)
        return await _show(target, eps.watch(), json_mode, stop)


async def _show(target: str, watch: Watch, json_mode: bool, stop: Stopper) -> int:
    async with watch:
        if json_mode:
            jv = JsonView()

            async def show_json(view: View) -> None:
                jv.view(view, watch)

            await pump(watch, show_json, lambda: jv.tick(watch), stop, TICK)
            return EXIT_OK
        from rich.console import Console
        from rich.live import Live

        console = Console()
        with Live(
            console=console, auto_refresh=False, transient=False, vertical_overflow="ellipsis"
        ) as live:
            lv = LiveView(target, live, console)
            lv.render(watch)

            async def show_live(view: View) -> None:
                lv.view(view, watch)

            await pump(watch, show_live, lambda: lv.tick(watch), stop, TICK)
    return EXIT_OK
