"""Helpers shared by the test modules (not fixtures: plain functions and context managers)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any
from urllib.parse import urlsplit

import etcdkit.compat.etcd3 as etcd3
from etcdkit import AsyncClient
from etcdkit.testing import EtcdServer

BOUND = 5.0  # a refusal must arrive within this


def etcdkit_tasks() -> list[str]:
    return sorted(t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("etcdkit"))


@asynccontextmanager
async def fresh_client(endpoints: str | list[str], **kwargs: Any) -> AsyncIterator[AsyncClient]:
    """A client of the test's own; after it closes no etcdkit task may be left."""
    async with AsyncClient(endpoints, **kwargs) as client:
        yield client
    await asyncio.sleep(0)
    assert etcdkit_tasks() == []


@contextmanager
def quickly(bound: float = BOUND) -> Iterator[None]:
    t0 = time.monotonic()
    yield
    took = time.monotonic() - t0
    assert took < bound, f"took {took:.1f} s, more than {bound} s"


def compat(server: EtcdServer, **kwargs: Any) -> etcd3.Etcd3Client:
    """A python-etcd3 compat client (``etcd3.client(host, port, ...)``) of ``server``."""
    url = urlsplit(server.endpoint)
    assert url.hostname is not None
    assert url.port is not None
    return etcd3.client(url.hostname, url.port, **kwargs)
