"""wait_for: return once a key exists (or is absent), with no gap between read and watch."""

from __future__ import annotations

import asyncio
import logging

from etcdkit._core import Core
from etcdkit._errors import CompactedError, EtcdkitError, EtcdTimeoutError
from etcdkit._types import EventType, WatchEvent, key_bytes

__all__ = ["wait_for"]

log = logging.getLogger("etcdkit.wait")


def _check_timeout(timeout: float | None) -> None:
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"timeout must be a number of seconds or None, got {timeout!r}")
    if not timeout >= 0:
        raise ValueError(f"timeout must be a number of seconds >= 0 or None, got {timeout!r}")


async def wait_for(
    core: Core, key: str | bytes, *, exists: bool = True, timeout: float | None = None
) -> int:
    """See :meth:`AsyncClient.wait_for`."""
    raw = key_bytes(key)
    if not isinstance(exists, bool):
        raise TypeError(f"exists must be True or False, got {exists!r}")
    _check_timeout(timeout)
    core.check_open()
    try:
        if timeout is not None and timeout <= 0:
            # No time to wait: one read (bounded by the client's timeout) answers.
            kv, rev = await core.kv.get(raw)
            if (kv is not None) == exists:
                return rev
            raise TimeoutError
        async with asyncio.timeout(timeout):
            return await _wait(core, raw, exists)
    except TimeoutError as exc:
        if isinstance(exc, EtcdkitError):
            raise
        want = "did not exist within" if exists else "still existed after"
        conn = core.conn
        if not conn.answered:
            why = (
                f"etcd never answered ({core.where}; last error: "
                f"{conn.last_error or 'none, no connection was made'})"
            )
        else:
            why = f"endpoints {core.where}"
        raise EtcdTimeoutError(f"key {raw!r} {want} {timeout} s ({why})") from None


async def _wait(core: Core, raw: bytes, exists: bool) -> int:
    backoff = core.retry.backoff()
    loop = asyncio.get_running_loop()
    while True:
        try:
            # One read gives both the answer and the revision it holds at; watching from the
            # next revision leaves no gap in between.
            kv, rev = await core.kv.get_coalesced(raw)
        except EtcdkitError as exc:
            if not core.retry.is_retryable(exc):
                raise
            log.debug("wait_for %r: read failed, retrying: %s", raw, exc)
            await core.conn.pause(backoff.next_delay() or 0.0)
            continue
        if (kv is not None) == exists:
            return rev
        done: asyncio.Future[int | None] = loop.create_future()

        def on_events(events: list[WatchEvent], done: asyncio.Future[int | None] = done) -> None:
            if done.done():
                return
            for ev in events:
                if (ev.type is EventType.PUT) == exists:
                    done.set_result(ev.kv.mod_revision)
                    return

        def on_end(err: EtcdkitError, done: asyncio.Future[int | None] = done) -> None:
            if done.done():
                return
            if isinstance(err, CompactedError):
                done.set_result(None)  # history gone: read again
            else:
                done.set_exception(err)

        sub = core.key_watches.watch(raw, rev + 1, on_events=on_events, on_end=on_end)
        try:
            result = await done
        finally:
            sub.cancel()
        if result is not None:
            return result
