"""``etcdkit wait`` and ``etcdkit register``: one key, from a shell script."""

from __future__ import annotations

import argparse
import asyncio
import sys

from etcdkit import EtcdTimeoutError, LeaseState
from etcdkit.cli.common import (
    EXIT_OK,
    EXIT_TIMEOUT,
    ConnOptions,
    Stopper,
    UsageError,
    connected,
    err,
    is_terminal,
    key_gone,
    out,
    raw,
    shown,
    timestamp,
)


async def run_wait(args: argparse.Namespace, opts: ConnOptions) -> int:
    if not args.key:
        raise UsageError("KEY must not be empty")
    key, raw_key = shown(args.key), raw(args.key)
    exists = not args.absent
    want = "exist" if exists else "be absent"
    state_now = "does not exist" if exists else "still exists"
    limit: float | None = args.wait_timeout
    async with connected(opts) as client, Stopper() as stop:
        if limit == 0:  # check once
            holds = (await client.get(raw_key) is not None) == exists
            if not holds:
                err(f"etcdkit: {key} {state_now} (checked once: --timeout 0)")
            return EXIT_OK if holds else EXIT_TIMEOUT
        progress = (
            _Progress(f"waiting for {key} to {want}", limit) if is_terminal(sys.stderr) else None
        )
        try:
            if progress is not None:
                progress.start()
            revision = await stop.run(client.wait_for(raw_key, exists=exists, timeout=limit))
        except EtcdTimeoutError:
            if progress is not None:
                progress.stop()
            err(f"etcdkit: timed out after {limit:g} s waiting for {key} to {want}")
            return EXIT_TIMEOUT
        finally:
            if progress is not None:
                progress.stop()
        if stop.stopped:
            err(f"etcdkit: interrupted while waiting for {key} to {want}")
            return stop.exit_code
        if progress is not None:
            err(f"etcdkit: {key} {'exists' if exists else 'is absent'} (revision {revision})")
        return EXIT_OK


class _Progress:
    """A one-line spinner with the elapsed time on a terminal's stderr."""

    FRAMES = "|/-\\"

    def __init__(self, what: str, limit: float | None) -> None:
        self.what = what
        self.limit = limit
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        i = 0
        while True:
            elapsed = loop.time() - t0
            of = f" of {self.limit:g} s" if self.limit is not None else ""
            frame = self.FRAMES[i % len(self.FRAMES)]
            err(f"\r\033[K{frame} {self.what} ({elapsed:.1f} s{of})", end="")
            i += 1
            await asyncio.sleep(0.1)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
            err("\r\033[K", end="")


async def run_register(args: argparse.Namespace, opts: ConnOptions) -> int:
    if not args.key:
        raise UsageError("KEY must not be empty")
    key, raw_key, value = shown(args.key), raw(args.key), shown(args.value)
    async with connected(opts) as client, Stopper() as stop:
        lease = client.persistent_lease(raw_key, raw(args.value), ttl=args.ttl)
        changes: asyncio.Queue[LeaseState] = asyncio.Queue()
        lease.add_listener(changes.put_nowait)
        previous = lease.state
        out(f"{timestamp()} connecting: {key}={value} (ttl {args.ttl} s)")
        async with lease:
            while True:
                state = await stop.run(changes.get())
                if state is None:
                    break
                if state is LeaseState.REGISTERED:
                    what = {
                        LeaseState.CONNECTING: "registered",
                        LeaseState.SUSPENDED: "resumed",  # etcd answers again; same lease
                    }.get(previous, "re-registered")
                    out(
                        f"{timestamp()} {what}: {key} (lease {lease.lease_id:#x}, "
                        f"ttl {lease.ttl} s)"
                    )
                elif state is LeaseState.SUSPENDED:
                    out(
                        f"{timestamp()} suspended: etcd unreachable; the key stays until the "
                        f"lease TTL ({lease.ttl} s) runs out"
                    )
                elif state is LeaseState.LOST:
                    out(
                        f"{timestamp()} lost: the key was deleted, overwritten, or its lease "
                        "expired or was revoked; re-registering"
                    )
                elif lease.error is not None:
                    raise lease.error
                else:
                    out(f"{timestamp()} {state.value}")
                previous = state
        # Leaving the block revoked the lease (bounded in time); say whether the key is gone.
        if await key_gone(client, raw_key, opts):
            out(f"{timestamp()} closed: lease revoked, {key} removed")
        else:
            out(f"{timestamp()} closed: {key} goes away when its lease TTL runs out")
    return EXIT_OK
