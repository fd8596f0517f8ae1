"""wait_for: return once a key exists (or is absent), with no gap between read and watch.

Written on the public client only: one read (``etcd.range(key)``) gives the answer and the
revision it holds at; a watch of the key from the next revision (``etcd.watch(key,
start_revision=rev + 1)``) then sees every change after the read. A compacted history means
reading again. In bulk, the client does the sharing: plain reads of single keys asked for
together go out in transactions of 128, and single-key watches started together under one
parent share etcd watches.
"""

from __future__ import annotations

import asyncio
import logging

from etcdkit._errors import CompactedError, EtcdkitError, EtcdTimeoutError
from etcdkit._surface import Etcd
from etcdkit._types import EventType, check_timeout, key_bytes

__all__ = ["wait_for"]

log = logging.getLogger("etcdkit.wait")


async def wait_for(
    etcd: Etcd, key: str | bytes, *, exists: bool = True, timeout: float | None = None
) -> int:
    """See :meth:`AsyncClient.wait_for`."""
    raw = key_bytes(key)
    if not isinstance(exists, bool):
        raise TypeError(f"exists must be True or False, got {exists!r}")
    if timeout is not None:
        check_timeout(timeout)
    try:
        if timeout is not None and timeout <= 0:
            # No time to wait: one read (bounded by the client's timeout) answers.
            now = await etcd.range(raw)
            if bool(now.kvs) == exists:
                return now.revision
            raise TimeoutError
        async with asyncio.timeout(timeout):
            return await _wait(etcd, raw, exists)
    except TimeoutError as exc:
        if isinstance(exc, EtcdkitError):
            raise
        want = "did not exist within" if exists else "still existed after"
        stats = etcd.stats
        if not stats.answered:
            why = (
                f"etcd never answered ({', '.join(etcd.endpoints)}; last error: "
                f"{stats.last_error or 'none, no connection was made'})"
            )
        else:  # (the connection may have failed since: then its newest error says how)
            why = f"endpoints {', '.join(etcd.endpoints)}"
            if stats.last_error:
                why += f"; etcd answered before; last connection error: {stats.last_error}"
        raise EtcdTimeoutError(f"key {raw!r} {want} {timeout} s ({why})") from None


async def _wait(etcd: Etcd, raw: bytes, exists: bool) -> int:
    backoff = None  # made at the first failure (ten thousand waits start at once)
    while True:
        try:
            now = await etcd.range(raw)
        except EtcdkitError as exc:
            retry = etcd.retry
            if not retry.is_retryable(exc):
                raise
            log.debug("wait_for %r: read failed, retrying: %s", raw, exc)
            backoff = backoff or retry.backoff()
            await backoff.wait()
            continue
        if bool(now.kvs) == exists:
            return now.revision
        try:
            async with etcd.watch(raw, start_revision=now.revision + 1) as w:
                async for batch in w:
                    for ev in batch.events:
                        if (ev.type is EventType.PUT) == exists:
                            return ev.kv.mod_revision
        except CompactedError:
            continue  # the history since our read is gone: read again
        raise AssertionError("unreachable: a watch ends only with an error")  # pragma: no cover
