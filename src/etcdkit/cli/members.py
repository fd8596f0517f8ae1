"""``etcdkit members``: the members of an etcdkit.cluster root, live (rich) or as JSON lines."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from etcdkit import WatchState
from etcdkit.cli.common import (
    EXIT_OK,
    ConnOptions,
    Stopper,
    connected,
    emit,
    is_terminal,
    need_rich,
    pump,
)
from etcdkit.cluster import (
    DEFAULT_OPEN_TIMEOUT,
    EtcdBackedCluster,
    Member,
    MemberWatch,
    NodeDescriptor,
    RegistryView,
)

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.live import Live

TICK = 0.5  # seconds between refreshes of the state line when nothing changes

View = tuple[Member, ...]

STATE_STYLE = {
    WatchState.SYNCING: "dim",
    WatchState.LIVE: "bold green",
    WatchState.STALE: "bold yellow",
    WatchState.CLOSED: "bold red",
}


def diff(old: View, new: View) -> tuple[list[str], list[str], list[str]]:
    """The ids added, updated (other data) and removed from *old* to *new*."""
    before = {m.id: m.data for m in old}
    after = {m.id: m.data for m in new}
    added = sorted(after.keys() - before.keys())
    removed = sorted(before.keys() - after.keys())
    updated = sorted(k for k in after.keys() & before.keys() if after[k] != before[k])
    return added, updated, removed


def describe(member: Member) -> NodeDescriptor | None:
    try:
        return NodeDescriptor.from_member(member)
    except ValueError:
        return None


class JsonView:
    """One JSON object per view and line; a change of the view's state (LIVE <-> STALE)
    between views is a line too, with nothing added, updated or removed."""

    def __init__(self) -> None:
        self.last: View = ()
        self.revision = 0
        self.state: WatchState | None = None  # as the last line said

    def view(self, members: View, revision: int, cluster: EtcdBackedCluster) -> None:
        added, updated, removed = diff(self.last, members)
        self.last = members
        self.revision = revision
        self.state = cluster.state
        self._line(added, updated, removed)

    def tick(self, cluster: EtcdBackedCluster) -> None:
        state = cluster.state
        if self.state is None or state is self.state:  # (no line before the first view)
            return
        self.state = state
        self._line([], [], [])

    def _line(self, added: list[str], updated: list[str], removed: list[str]) -> None:
        assert self.state is not None
        doc: dict[str, Any] = {
            "revision": self.revision,
            "state": self.state.value,
            "members": [{"id": m.id, "data": m.data} for m in self.last],
            "added": added,
            "updated": updated,
            "removed": removed,
        }
        emit(json.dumps(doc, ensure_ascii=False))


class LiveView:
    """A table of the members (and, for node descriptors, address, weight and ring share),
    refreshed in place; added rows green, updated yellow, removed red until the next view."""

    def __init__(self, root: str, live: Live, console: Console) -> None:
        self.root = root
        self.live = live
        self.console = console
        self.members: View | None = None
        self.revision = 0
        self.changes: dict[str, str] = {}
        self.removed: dict[str, Member] = {}
        self._status = ""

    def view(self, members: View, revision: int, cluster: EtcdBackedCluster) -> None:
        old = self.members or ()
        added, updated, removed = diff(old, members)
        self.changes = {**dict.fromkeys(added, "+"), **dict.fromkeys(updated, "~")}
        self.removed = {m.id: m for m in old if m.id in removed}
        self.members = members
        self.revision = revision
        self.render(cluster)

    def tick(self, cluster: EtcdBackedCluster) -> None:
        if self._status_text(cluster) != self._status:
            self.render(cluster)

    def _status_text(self, cluster: EtcdBackedCluster) -> str:
        return cluster.state.name

    def render(self, cluster: EtcdBackedCluster) -> None:
        self._status = self._status_text(cluster)
        self.live.update(self._renderable(cluster), refresh=True)

    def _renderable(self, cluster: EtcdBackedCluster) -> RenderableType:
        from rich import box
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        state = cluster.state
        head = Text.assemble(
            ("etcdkit members ", "bold"),
            (self.root, "bold cyan"),
            "  revision ",
            (str(self.revision) if self.members is not None else "-", "bold"),
            "  ",
            (state.name, STATE_STYLE.get(state, "")),
        )
        members = self.members
        if members is None:
            return Group(head, Text("loading the members ...", style="dim"))
        head.append(f"  members {len(members)}")
        registry = RegistryView.from_members(members, self.revision)
        shares = registry.ring.shares()
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, expand=False)
        table.add_column("", width=1, no_wrap=True)
        table.add_column("id", no_wrap=True, overflow="fold", max_width=40)
        table.add_column("address / data", no_wrap=True, overflow="ellipsis", max_width=60)
        table.add_column("weight", justify="right", no_wrap=True)
        table.add_column("keys", justify="right", no_wrap=True)
        room = max(3, self.console.size.height - 7)
        rows = sorted([*members, *self.removed.values()])[:room]
        for m in rows:
            gone = m.id in self.removed
            mark = "-" if gone else self.changes.get(m.id, " ")
            style = {"-": "red strike", "+": "bold green", "~": "bold yellow"}.get(mark, "")
            node = describe(m)
            if node is not None:
                share = shares.get(m.id, 0.0)
                cells = [node.address, str(node.weight), "" if gone else f"{share:.1%}"]
            else:
                cells = [m.data, "", ""]
            table.add_row(mark, m.id, *cells, style=style)
        total = len(members) + len(self.removed)
        more = f"... and {total - len(rows)} more.  " if total > len(rows) else ""
        return Group(head, table, Text(f"{more}Ctrl-C to quit", style="dim"))


async def _pump(cluster: EtcdBackedCluster, view: JsonView | LiveView, stop: Stopper) -> None:
    watch: MemberWatch = cluster.watch_members()

    async def show(members: View) -> None:
        view.view(members, watch.revision, cluster)

    try:
        await pump(watch, show, lambda: view.tick(cluster), stop, TICK)
    finally:
        await watch.aclose()


async def run_members(args: argparse.Namespace, opts: ConnOptions) -> int:
    root: str = args.root
    json_mode = bool(args.json) or not is_terminal(sys.stdout)
    if not json_mode:
        need_rich("the live view", " or use --json")
    async with (
        connected(opts) as client,
        Stopper() as stop,
        # etcd answered (connected() checked): give the first view more than one request's time
        client.cluster(root, timeout=max(opts.timeout, DEFAULT_OPEN_TIMEOUT)) as cluster,
    ):
        if json_mode:
            await _pump(cluster, JsonView(), stop)
            return EXIT_OK
        from rich.console import Console
        from rich.live import Live

        console = Console()
        with Live(
            console=console, auto_refresh=False, transient=False, vertical_overflow="ellipsis"
        ) as live:
            view = LiveView(root, live, console)
            view.render(cluster)
            await _pump(cluster, view, stop)
    return EXIT_OK
