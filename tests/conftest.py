"""Test-suite settings; the fixtures come from etcdkit.pytest_plugin (pytest11 entry point)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest

# asyncio debug mode for every loop the tests create (slow callbacks, never-awaited coroutines).
os.environ.setdefault("PYTHONASYNCIODEBUG", "1")


@pytest.fixture
def no_leaked_threads() -> Iterator[None]:
    """Fails the test if an etcdkit thread outlives it."""
    before = {t.ident for t in threading.enumerate()}
    yield
    leaked = [
        t.name
        for t in threading.enumerate()
        if t.ident not in before and t.name.startswith("etcdkit") and t.is_alive()
    ]
    assert not leaked, f"threads left running: {leaked}"
