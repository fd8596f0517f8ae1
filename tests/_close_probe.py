"""The threaded ``Client.close()`` where only a process of its own can show it:
``python tests/_close_probe.py ENDPOINT ETCD_PID MODE``. Prints one JSON line.

- ``interrupt``: a Ctrl-C (SIGINT to this process's main thread) while ``close()`` waits for
  its revokes, etcd paused for a moment (SIGSTOP, then SIGCONT to ``ETCD_PID``): whether
  close() raised KeyboardInterrupt, and how long it took to; the caller's test then looks for
  the leases it held.
- ``fork``: a child forked from this process, which holds an open client, calls ``get()`` and
  then ``close()`` on it, then makes a client of its own (threaded, then asyncio) and reads:
  what each did there (the child ends itself if it hangs); then whether the parent's client
  still works.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

import etcdkit


def interrupt(endpoint: str, etcd_pid: int) -> dict[str, object]:
    client = etcdkit.Client(endpoint, timeout=5)
    client.session(ttl=60)
    client.lock("/close-probe/lock", ttl=60).acquire()
    os.kill(etcd_pid, signal.SIGSTOP)
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
    threading.Timer(0.8, os.kill, (etcd_pid, signal.SIGCONT)).start()
    started = time.monotonic()
    try:
        client.close()
        interrupted = False
    except KeyboardInterrupt:
        interrupted = True
    took = time.monotonic() - started
    client.close()  # waits for the close the interrupt left going on
    return {"interrupted": interrupted, "raised_after": took, "closed": client.closed}


def _says_forked(text: str) -> None:
    if "state=forked" not in text:
        raise AssertionError(text)


async def _async_get(endpoint: str) -> object:
    async with etcdkit.AsyncClient(endpoint, timeout=2) as client:
        return await client.get("/close-probe/k")


def fork(endpoint: str) -> dict[str, object]:
    client = etcdkit.Client(endpoint)
    client.put("/close-probe/k", "1")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running anything of the parent's
        signal.alarm(10)
        said: dict[str, str] = {}
        calls: dict[str, Callable[[], object]] = {
            "get": lambda: client.get("/close-probe/k"),
            "close": client.close,
            "repr": lambda: _says_forked(repr(client)),
            # a client of its own (grpc's core, which the parent started, does not survive
            # the fork: its calls would wait for ever, past any timeout)
            "new_client": lambda: etcdkit.Client(endpoint, timeout=2).get("/close-probe/k"),
            "new_async_client": lambda: asyncio.run(_async_get(endpoint)),
        }
        for name, call in calls.items():
            try:
                call()
                said[name] = "ok"
            except Exception as exc:  # (what it raised is the answer)
                said[name] = f"{type(exc).__name__}: {exc}"
        os.write(write, json.dumps(said).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        report = pipe.read()
    _, status = os.waitpid(pid, 0)
    kv = client.get("/close-probe/k")
    client.close()
    return {
        "child": json.loads(report) if report else None,
        "child_signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
        "parent_reads": None if kv is None else kv.value.decode(),
    }


def main() -> None:
    endpoint, etcd_pid, mode = sys.argv[1:]
    out = interrupt(endpoint, int(etcd_pid)) if mode == "interrupt" else fork(endpoint)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
