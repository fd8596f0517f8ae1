"""wait_for: return once a key exists (or is absent), with no gap between read and watch."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from aetcd import rpc

from etcdkit._conn import key_bytes
from etcdkit._errors import (
    CompactedError,
    ConnectionUnavailableError,
    EtcdkitError,
    EtcdTimeoutError,
)
from etcdkit._retry import Backoff

if TYPE_CHECKING:
    from etcdkit._client import AsyncClient

log = logging.getLogger("etcdkit.wait")

_PUT = 0  # mvccpb.Event.EventType.PUT


async def wait_for(
    client: AsyncClient, key: str | bytes, *, exists: bool = True, timeout: float | None = None
) -> int:
    raw = key_bytes(key)
    if not isinstance(exists, bool):
        raise TypeError(f"exists must be True or False, got {exists!r}")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout >= 0
    ):
        raise ValueError(f"timeout must be a number of seconds >= 0 or None, got {timeout!r}")
    client._check_open()
    want = "did not exist within" if exists else "still existed after"
    try:
        if timeout is not None and timeout <= 0:
            # No time to wait: one read (bounded by the client's timeout) answers.
            present, rev = await _read(client, raw)
            if present == exists:
                return rev
            raise TimeoutError
        async with asyncio.timeout(timeout):
            return await _wait(client, raw, exists)
    except TimeoutError as exc:
        if isinstance(exc, EtcdkitError):
            raise
        raise EtcdTimeoutError(
            f"key {raw!r} {want} {timeout} s (endpoints {client._conn.where})"
        ) from None


async def _read(client: AsyncClient, raw: bytes) -> tuple[bool, int]:
    """Whether the key exists, and the revision that answer holds at."""
    resp = await client._call(f"get {raw!r}", "Range", "kv", rpc.RangeRequest(key=raw))
    return bool(resp.kvs), int(resp.header.revision)


async def _wait(client: AsyncClient, raw: bytes, exists: bool) -> int:
    backoff = Backoff(initial=0.05, cap=2.0)
    loop = asyncio.get_running_loop()
    while True:
        try:
            # One read gives both the answer and the revision it holds at; watching from the
            # next revision leaves no gap in between.
            present, rev = await _read(client, raw)
        except (ConnectionUnavailableError, EtcdTimeoutError) as exc:
            log.debug("wait_for %r: read failed, retrying: %s", raw, exc)
            await backoff.wait()
            continue
        if present == exists:
            return rev
        done: asyncio.Future[int | None] = loop.create_future()

        def on_events(resp: Any, done: asyncio.Future[int | None] = done) -> None:
            if done.done():
                return
            for ev in resp.events:
                if (ev.type == _PUT) == exists:
                    done.set_result(int(ev.kv.mod_revision))
                    return

        def on_end(err: EtcdkitError, done: asyncio.Future[int | None] = done) -> None:
            if done.done():
                return
            if isinstance(err, CompactedError):
                done.set_result(None)  # history gone: read again
            else:
                done.set_exception(err)

        sub = client._watches.watch(raw, b"", rev + 1, on_events=on_events, on_end=on_end)
        try:
            result = await done
        finally:
            sub.cancel()
        if result is not None:
            return result
