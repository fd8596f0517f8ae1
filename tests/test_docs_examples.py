"""Every ```python block of README.md and docs/*.md runs against a real etcd (no copies that
can rot).

Blocks are extracted from the files at collection time, one test each. A block preceded by
``<!-- no-test: why -->`` is skipped (used sparingly). The literal endpoint
``127.0.0.1:2379`` is replaced by the test server's, which is also ``$ETCDKIT_ENDPOINTS``.

A block with top-level ``await`` runs in an event loop with ``etcd``, an open
:class:`AsyncClient`, as the docs say; other blocks run as plain programs (``asyncio.run`` and
the threaded ``Client`` work there). A block that defines ``async def test_*`` functions has
them called too, with the fixtures they name (``etcd``, ``etcd_prefix``,
``etcd_server_factory``). Every key under "/" is deleted between blocks.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import etcdkit
from etcdkit.testing import EtcdServer

ROOT = Path(__file__).resolve().parent.parent
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
ENDPOINT = "127.0.0.1:2379"
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
NO_TEST = re.compile(r"<!--\s*no-test:\s*(.+?)\s*-->\s*$")


def blocks() -> list[Any]:
    return list(_blocks())


def _blocks() -> Iterator[Any]:
    for path in FILES:
        text = path.read_text()
        for m in FENCE.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
            skip = NO_TEST.search(before)
            marks = [pytest.mark.skip(reason=f"no-test: {skip.group(1)}")] if skip else []
            name = f"{path.relative_to(ROOT)}:{line}"
            yield pytest.param(m.group(1), id=name, marks=marks)


def test_the_files_have_examples() -> None:
    found = list(blocks())
    assert len(found) >= 20
    skipped = [p for p in found if p.marks]
    assert len(skipped) <= 3, "no-test is for the rare block that cannot run here"


@pytest.fixture(scope="module")
def docs_server() -> Iterator[EtcdServer]:
    with EtcdServer() as server:
        yield server


@pytest.fixture
def endpoint(docs_server: EtcdServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    endpoint = docs_server.endpoint
    monkeypatch.setenv("ETCDKIT_ENDPOINTS", endpoint)
    yield endpoint
    with etcdkit.Client(endpoint) as etcd:
        etcd.delete_prefix("/")  # every key the examples write, for the next block


def in_thread(fn: Callable[[], None]) -> None:
    """Run ``fn`` on a fresh thread (no running loop: asyncio.run works there)."""
    error: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:
            error.append(exc)

    t = threading.Thread(target=run, name="docs-example")
    t.start()
    t.join()
    if error:
        raise error[0]


@pytest.mark.parametrize("source", blocks())
def test_example_runs(
    source: str, endpoint: str, etcd_server_factory: Callable[..., EtcdServer]
) -> None:
    source = source.replace(ENDPOINT, endpoint.removeprefix("http://"))
    code = compile(source, "<example>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    awaits = bool(code.co_flags & inspect.CO_COROUTINE)
    ns: dict[str, Any] = {"__name__": "__docs_example__"}

    async def with_client() -> None:
        async with etcdkit.AsyncClient(endpoint) as etcd:
            ns["etcd"] = etcd
            if awaits:
                await eval(code, ns)
            else:
                await asyncio.to_thread(exec, code, ns)
            tests = [f for n, f in ns.items() if n.startswith("test_") and callable(f)]
            fixtures = {
                "etcd": etcd,
                "etcd_prefix": f"/docs-test-{uuid.uuid4().hex[:8]}/",
                "etcd_server_factory": etcd_server_factory,
            }
            for fn in tests:
                wanted = inspect.signature(fn).parameters
                result = fn(**{p: fixtures[p] for p in wanted})
                if inspect.isawaitable(result):
                    await result

    in_thread(lambda: asyncio.run(with_client()))
