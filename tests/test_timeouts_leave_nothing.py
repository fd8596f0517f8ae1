"""A wait that times out leaves nothing behind (election-lock.md "A timeout...", semaphore.md,
rwlock.md), on the threaded face: a lock, a semaphore, an rwlock's read and an election's
campaign, with ``timeout=0`` and a short timeout, against what another client holds. No key
of theirs stays under the prefix and no lease of theirs in etcd."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

import etcdkit
from etcdkit import Client
from etcdkit.testing import EtcdServer


def test_threaded_timeouts_leave_no_key_and_no_lease(
    etcd_server: EtcdServer, etcd_sync: Client, etcd_prefix: str
) -> None:
    p = etcd_prefix
    with Client(etcd_server.endpoint) as holder:
        holder.lock(p + "lock", ttl=30).acquire()
        holder.semaphore(p + "sem", 1, ttl=30).acquire()
        holder.rwlock(p + "rw", ttl=30).write().acquire()
        campaign = holder.election(p + "el").campaign("holder", ttl=30)
        campaign.__enter__()
        try:

            def state() -> tuple[list[int], list[bytes]]:
                return sorted(holder.leases()), [kv.key for kv in holder.get_prefix(p).kvs]

            def campaign_for(timeout: float) -> None:
                with etcd_sync.election(p + "el").campaign("waiter", timeout=timeout):
                    pass

            waits: dict[str, Callable[[float], Any]] = {
                "lock": lambda t: etcd_sync.lock(p + "lock", timeout=t).acquire(),
                "semaphore": lambda t: etcd_sync.semaphore(p + "sem", 1, timeout=t).acquire(),
                "rwlock read": lambda t: etcd_sync.rwlock(p + "rw", timeout=t).read().acquire(),
                "campaign": campaign_for,
            }
            before = state()
            for name, wait in waits.items():
                for timeout in (0, 0.3):
                    with pytest.raises(etcdkit.EtcdTimeoutError):
                        wait(timeout)
                    deadline = time.monotonic() + 2.0  # (a lease's revoke may still be on its way)
                    while state() != before and time.monotonic() < deadline:
                        time.sleep(0.02)
                    assert state() == before, (name, timeout)
        finally:
            campaign.__exit__(None, None, None)
