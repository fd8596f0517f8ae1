"""``etcdkit demo``: a service registry that heals itself, with every recovery timed.

N workers keep a key each under ``/demo/workers/`` with a :class:`PersistentLease`; a live
membership view (``watch_prefix``) follows them. Then things go wrong on purpose: an outside
delete, a lease revoke, and (when the demo started etcd itself) a kill -9 and restart of etcd.
After each, the demo waits until the view is complete again: LIVE (confirmed current by
etcd), every worker present with its value and every lease registered; after a delete or a
revoke also at or past the revision of the worker's new registration, after a restart only
once the view has noticed the outage and resumed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from etcdkit import (
    AsyncClient,
    LeaseState,
    PersistentLease,
    PrefixWatch,
    WatchState,
)
from etcdkit.cli.common import (
    EXIT_OK,
    CliError,
    ConnOptions,
    Stopper,
    connected,
    need_rich,
)
from etcdkit.cli.watch import text_transform

if TYPE_CHECKING:
    from rich.console import Console

    from etcdkit.testing.server import EtcdServer

PREFIX = "/demo/workers/"
TTL = 5
RECOVERY_TIMEOUT = 15.0
POLL = 0.005
PAUSE = 0.5  # between the steps, to let a human follow


class Scene:
    def __init__(self, client: AsyncClient, console: Console, workers: int) -> None:
        self.client = client
        self.console = console
        self.t0 = time.monotonic()
        self.expected = {f"{PREFIX}w{i}": f"10.0.0.{i + 1}:8080" for i in range(workers)}
        self.leases: list[PersistentLease] = []
        self.watch: PrefixWatch[str, str] | None = None
        self.results: list[tuple[str, float]] = []
        self.registrations: dict[str, int] = {}  # key -> REGISTERED transitions seen
        self.muted = False  # stdout went away

    # -- output -----------------------------------------------------------------------------------

    def say(self, text: str, style: str = "") -> None:
        from rich.text import Text

        line = Text(f"{time.monotonic() - self.t0:7.3f}s  ", style="dim")
        line.append(text, style=style)
        self.print(line)

    def print(self, *objects: object, style: str = "") -> None:
        if self.muted:
            return
        try:
            self.console.print(*objects, style=style or None, highlight=False)
        except (OSError, SystemExit):  # rich exits on a broken pipe (`| head`): go quiet
            self.muted = True

    def step(self, text: str) -> None:
        self.say(f"* {text}", "bold")

    @staticmethod
    def name(key: str | bytes) -> str:
        text = key if isinstance(key, str) else key.decode()
        return text[len(PREFIX) :] if text.startswith(PREFIX) else text

    # -- the live view ----------------------------------------------------------------------------

    async def follow(self, watch: PrefixWatch[str, str]) -> None:
        """Print every snapshot of the membership view."""
        marks = {"added": "+", "removed": "-", "updated": "~"}
        async for snap in watch:
            members = " ".join(self.name(k) for k in sorted(snap.tree) if k in self.expected)
            changed = " ".join(
                f"{marks[ch.kind.value]}{self.name(k)}" for k, ch in sorted(snap.changes.items())
            )
            present = sum(1 for k in self.expected if k in snap.tree)
            self.say(
                f"  view  rev {snap.revision}  {watch.state.name}  "
                f"{present}/{len(self.expected)} workers: {members or '(none)'}"
                + (f"   [{changed}]" if changed else ""),
                "cyan",
            )

    def on_lease(self, lease: PersistentLease) -> Callable[[LeaseState], None]:
        key = str(lease.key)

        def cb(state: LeaseState) -> None:
            detail = ""
            if state is LeaseState.REGISTERED:
                self.registrations[key] = self.registrations.get(key, 0) + 1
                detail = f" (lease {lease.lease_id:#x})"
            self.say(f"  {self.name(key)}  lease {state.name}{detail}", "magenta")

        return cb

    # -- recovery ---------------------------------------------------------------------------------

    def complete(self) -> bool:
        """The view is LIVE and shows every worker with its value; every lease is REGISTERED."""
        watch = self.watch
        assert watch is not None
        snap = watch.snapshot
        if snap is None or watch.state is not WatchState.LIVE:
            return False
        for lease in self.leases:
            if lease.error is not None:
                raise CliError(f"worker {lease.key!r} failed: {lease.error}")
            if lease.state is not LeaseState.REGISTERED:
                return False
        return all(snap.tree.get(k) == v for k, v in self.expected.items())

    async def until(self, what: str, t0: float, ready: Callable[[], bool]) -> None:
        deadline = t0 + RECOVERY_TIMEOUT
        while not ready():
            if time.monotonic() > deadline:
                raise CliError(
                    f"demo: the view did not recover from {what} within {RECOVERY_TIMEOUT:g} s"
                )
            await asyncio.sleep(POLL)

    async def recovered(
        self, what: str, t0: float, lease: PersistentLease | None = None, before: int = 0
    ) -> None:
        """Wait until complete again; with ``lease``: until it registered more than ``before``
        times and the view reached the revision of that new registration."""
        if lease is not None:
            key = str(lease.key)
            await self.until(what, t0, lambda: self.registrations.get(key, 0) > before)
            revision = await lease.registered(timeout=RECOVERY_TIMEOUT)
            watch = self.watch
            assert watch is not None
            await self.until(what, t0, lambda: watch.revision >= revision)
        await self.until(what, t0, self.complete)
        ms = (time.monotonic() - t0) * 1000
        self.results.append((what, ms))
        self.say(f"ok: recovered from {what} in {ms:.0f} ms", "bold green")

    # -- the scene --------------------------------------------------------------------------------

    async def play(self, server: EtcdServer | None) -> None:
        watch = self.watch
        assert watch is not None
        n = len(self.expected)
        self.step(f"registering {n} workers under {PREFIX} (PersistentLease, ttl {TTL} s)")
        t0 = time.monotonic()
        for key, value in self.expected.items():
            lease = self.client.persistent_lease(key, value, ttl=TTL)
            lease.add_listener(self.on_lease(lease))
            self.leases.append(lease)
            lease.start()
        await self.recovered("registration", t0)

        await asyncio.sleep(PAUSE)
        lease = self.leases[min(1, n - 1)]
        self.step(f"deleting {PREFIX}{self.name(lease.key)} from outside (an operator's mistake)")
        t0 = time.monotonic()
        before = self.registrations.get(str(lease.key), 0)
        await self.client.delete(lease.key)
        await self.recovered("an outside delete", t0, lease, before)

        await asyncio.sleep(PAUSE)
        lease = self.leases[min(2, n - 1)]
        old = lease.lease_id
        self.step(
            f"revoking the lease {old:#x} of {self.name(lease.key)} (as an expiry would; the"
            " workers share it, like a session: every key on it goes, and comes back)"
        )
        t0 = time.monotonic()
        before = self.registrations.get(str(lease.key), 0)
        await self.client.revoke(old)
        await self.recovered("a lease revoke", t0, lease, before)

        await asyncio.sleep(PAUSE)
        if server is None:
            self.step("skipping the etcd restart: this etcd was not started by the demo")
        else:
            self.step("killing etcd (kill -9), then starting it again on the same data")
            disconnects = watch.stats.disconnects
            t0 = time.monotonic()
            await asyncio.to_thread(server.kill)
            self.say("  etcd killed", "red")
            await asyncio.to_thread(server.restart)
            self.say(f"  etcd healthy again after {(time.monotonic() - t0) * 1000:.0f} ms", "red")
            # The view must have noticed the outage (and resumed since) to count as recovered.
            await self.until("an etcd restart", t0, lambda: watch.stats.disconnects > disconnects)
            await self.recovered("an etcd restart", t0)

        await asyncio.sleep(PAUSE)
        self.step("closing the workers (each key goes at once; the last one revokes the lease)")
        t0 = time.monotonic()
        for lease in self.leases:
            await lease.aclose()

        def gone() -> bool:
            snap = watch.snapshot
            return snap is not None and not any(k in snap.tree for k in self.expected)

        await self.until("closing the workers", t0, gone)
        ms = (time.monotonic() - t0) * 1000
        self.results.append(("deregistration", ms))
        self.say(f"ok: all workers gone from the view in {ms:.0f} ms", "bold green")

    def summary(self) -> None:
        self.print()
        self.print("recovery times (fault -> view complete, LIVE):")
        for what, ms in self.results:
            self.print(f"  {what:<22} {ms:8.0f} ms")
        self.print(f"demo finished in {time.monotonic() - self.t0:.1f} s", style="bold")


async def run_demo(args: argparse.Namespace, opts: ConnOptions) -> int:
    need_rich("etcdkit demo")
    from rich.console import Console

    from etcdkit.testing.server import EtcdServer

    console = Console(highlight=False, soft_wrap=True)
    server: EtcdServer | None = None
    async with Stopper() as stop:
        try:
            if not opts.configured:
                console.print("no endpoint configured: starting a local etcd for the demo ...")
                t0 = time.monotonic()
                server = EtcdServer()
                await stop.run(asyncio.to_thread(server.start))
                console.print(
                    f"etcd {server.version} at {server.endpoint} "
                    f"(started in {(time.monotonic() - t0) * 1000:.0f} ms)"
                )
                opts = opts.with_endpoints(server.endpoint)
            if stop.stopped:
                return stop.exit_code
            async with connected(opts) as client:
                scene = Scene(client, console, args.workers)
                async with client.watch_prefix(PREFIX, text_transform) as watch:
                    scene.watch = watch
                    follower = asyncio.ensure_future(scene.follow(watch))
                    try:
                        await stop.run(scene.play(server))
                    finally:
                        follower.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await follower
                        for lease in scene.leases:
                            await lease.aclose()
                if stop.stopped:
                    console.print("interrupted")
                    return stop.exit_code
                scene.summary()
        finally:
            if server is not None:
                await asyncio.to_thread(server.close)
    return EXIT_OK
