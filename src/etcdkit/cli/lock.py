"""``etcdkit lock NAME -- CMD ARGS...``: run a command while holding a lock (as ``etcdctl
lock``, whose lock it shares)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys

from etcdkit.cli.common import (
    EXIT_ERROR,
    ConnOptions,
    Stopper,
    UsageError,
    connected,
    err,
    is_terminal,
    key_gone,
    raw,
    shown,
    shown_bytes,
    timestamp,
)

GRACE = 10.0  # seconds CMD gets to stop after SIGTERM before it is killed
EXIT_NOT_FOUND = 127  # the shells' codes for a command that cannot be run
EXIT_NOT_EXECUTABLE = 126


def command_of(args: argparse.Namespace) -> tuple[list[str], int]:
    """CMD and the ttl. argparse hands everything after NAME to CMD (so that CMD's own
    options stay CMD's), having dropped a ``--`` right after NAME. So options there (only
    ``--ttl S``) are ours up to the ``--`` that must follow them; anything else starts CMD,
    which keeps its own ``--`` (``git diff -- f``, ``kubectl exec pod -- sh``)."""
    rest: list[str] = list(args.cmd)
    ttl: int = args.ttl
    if rest and rest[0].startswith("-") and rest[0] != "--":
        if "--" not in rest:
            raise UsageError(
                f"put -- before the command: etcdkit lock NAME {rest[0]} ... -- CMD ARGS "
                f"(got {' '.join(rest)!r:.80})"
            )
        cut = rest.index("--")
        ours, rest = rest[:cut], rest[cut + 1 :]
        while ours:
            opt = ours.pop(0)
            if opt.startswith("--ttl="):
                text = opt.split("=", 1)[1]
            elif opt == "--ttl" and ours:
                text = ours.pop(0)
            else:
                raise UsageError(f"unexpected {opt!r} before --: only --ttl S goes there")
            if not text.isdigit() or not 1 <= int(text) <= 2**31:
                raise UsageError(f"--ttl: expected a whole number of seconds >= 1, got {text!r}")
            ttl = int(text)
    elif rest[:1] == ["--"]:  # (NAME -- -- CMD: the second one is ours to drop too)
        rest = rest[1:]
    if not rest:
        raise UsageError("give the command to run after --, e.g. etcdkit lock NAME -- ./job.sh")
    return rest, ttl


async def run_lock(args: argparse.Namespace, opts: ConnOptions) -> int:
    if not args.name:
        raise UsageError("NAME must not be empty")
    name = shown(args.name)
    cmd, ttl = command_of(args)
    async with connected(opts) as client, Stopper() as stop:
        lock = client.lock(raw(args.name), ttl=ttl, timeout=None)
        err(f"{timestamp()} waiting for lock {name}")
        await stop.run(lock.acquire())
        if stop.stopped:
            err(f"etcdkit: interrupted while waiting for lock {name}")
            await lock.release()
            return stop.exit_code
        # A hold can be lost as it is handed out (our session's lease near its expiry, the
        # keepalive not through yet after an outage): CMD must not start without the lock.
        # Nothing awaits from here to CMD's start, so the hold cannot be lost in between.
        if lock.lost.is_set():
            state = lock.state.value
            await lock.release()
            err(
                f"etcdkit: lock {name} was lost before {cmd[0]} started ({state}): another may "
                f"hold it now; {cmd[0]} was not run"
            )
            return EXIT_ERROR
        err(
            f"{timestamp()} holding lock {name} (key {shown_bytes(lock.key)}, "
            f"fencing token {lock.fencing_token}); running {cmd[0]}"
        )
        env = dict(os.environ)
        held = lock.key.decode("utf-8", "surrogateescape")  # (the environment's bytes: the key)
        env.update(
            ETCDKIT_LOCK_KEY=held,
            ETCDKIT_FENCING_TOKEN=str(lock.fencing_token),
            ETCD_LOCK_KEY=held,  # as etcdctl lock sets it
        )
        # Not from a terminal (cron, CI, a service), CMD gets a process group of its own, which
        # the signals go to: a job's children stop with it when the lock is lost, as with
        # coreutils' timeout. From a terminal it stays in ours (the terminal's group), so that
        # it may read the terminal; Ctrl-C reaches all of it there.
        group = not is_terminal(sys.stdin)
        try:
            proc = await asyncio.create_subprocess_exec(
                *cmd, env=env, process_group=0 if group else None
            )
        except FileNotFoundError:
            await lock.release()
            err(f"etcdkit: {cmd[0]}: command not found")
            return EXIT_NOT_FOUND
        except PermissionError:
            await lock.release()
            err(f"etcdkit: {cmd[0]}: permission denied")
            return EXIT_NOT_EXECUTABLE
        except OSError as exc:  # e.g. ENOEXEC: a script with no #! line, a foreign binary
            await lock.release()
            err(f"etcdkit: {cmd[0]}: cannot run it: {exc.strerror or exc}")
            return EXIT_NOT_EXECUTABLE
        try:
            code = await _supervise(proc, lock.lost, stop, group)
        finally:
            if proc.returncode is None:  # a second signal cancelled us: do not leave CMD behind
                _signal(proc, signal.SIGKILL, group)
                await proc.wait()
            lost = lock.lost.is_set()
            key = lock.key
            await lock.release()
        if lost:
            err(
                f"etcdkit: lock {name} was lost ({lock.state.value}): another may hold it now; "
                f"stopped {cmd[0]}"
            )
            return EXIT_ERROR
        if not await key_gone(client, key, opts):
            err(
                f"etcdkit: release of lock {name} not confirmed (the revoke went unanswered or "
                f"our key is still there): {shown_bytes(key)} may stay, and others "
                f"wait, until its lease (ttl {ttl} s) runs out; {cmd[0]} exited with {code}"
            )
            return code
        err(f"{timestamp()} released lock {name}; {cmd[0]} exited with {code}")
        return code


def _signal(proc: asyncio.subprocess.Process, sig: int, group: bool) -> None:
    """Send ``sig`` to CMD (its process group with ``group``). Not ``proc.send_signal()``:
    that polls first, and reaping a CMD that died meanwhile (the terminal's Ctrl-C reached it
    too) takes its status from asyncio's child watcher, which then says 255."""
    if proc.returncode is not None and not group:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group:
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid, sig)


async def _supervise(
    proc: asyncio.subprocess.Process, lost: asyncio.Event, stop: Stopper, group: bool
) -> int:
    """Wait for CMD; stop it (SIGTERM, then SIGKILL after :data:`GRACE`) if the lock is lost or
    we are asked to stop (it gets the same signal). CMD's exit status, shell style."""
    done = asyncio.ensure_future(proc.wait())
    on_lost = asyncio.ensure_future(lost.wait())
    on_stop = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({done, on_lost, on_stop}, return_when=asyncio.FIRST_COMPLETED)
        if not done.done():
            sig = stop.signal if on_stop.done() and stop.signal is not None else signal.SIGTERM
            _signal(proc, sig, group)
            try:
                async with asyncio.timeout(GRACE):
                    await asyncio.shield(done)
            except TimeoutError:
                _signal(proc, signal.SIGKILL, group)
        code = await done
    finally:
        for f in (done, on_lost, on_stop):
            f.cancel()
    return 128 - code if code < 0 else code
