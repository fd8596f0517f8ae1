"""Signals and interpreter exit against the threaded Client, in a process of its own:
``python tests/_signal_probe.py ENDPOINT MODE``. Prints one JSON line; a hang is the failure
the caller looks for (it runs this with a timeout).

- ``handler``: Python runs a signal handler in the main thread between two bytecodes,
  perhaps in the middle of a call of the main thread's own. SIGUSR1 every millisecond, whose
  handler reads ``client.stats``, while the main thread makes calls; then rounds of the
  graceful-shutdown pattern, a SIGTERM handler that closes the client while the main thread
  makes calls.
- ``window``: a Ctrl-C (SIGINT) at a random moment of a loop of lock acquire / release, 100
  rounds: ``left`` counts the rounds that left the lock's key in etcd, held by nobody.
- ``exit``: a client closed from a ``__del__`` at interpreter exit: the process must end.
- ``dropped``: clients dropped open are closed, with a ResourceWarning, and their loop threads
  end.
- ``dropped_recipes``: clients dropped open after a recipe ran on them (a lock held or
  released, a session, a semaphore permit, a read-write lock, a leadership, a double
  barrier), the recipe's object dropped too: each closed, with a ResourceWarning, its loop
  thread ended, and what it held released.
- ``observe``: the ``next()`` after one interrupted by a Ctrl-C on a threaded iterator
  (``observe()``, whose generator the interrupt ended).
"""

from __future__ import annotations

import contextlib
import faulthandler
import functools
import gc
import json
import os
import random
import signal
import sys
import threading
import time
import warnings
from typing import Any

import etcdkit


def close_on_signal(client: etcdkit.Client, signum: int, frame: object) -> None:
    client.close()


def handler(endpoint: str) -> dict[str, Any]:
    with etcdkit.Client(endpoint) as client:
        handled = 0

        def on_usr1(signum: int, frame: object) -> None:
            nonlocal handled
            _ = client.stats
            handled += 1

        stop = threading.Event()

        def send() -> None:
            while not stop.is_set():
                os.kill(os.getpid(), signal.SIGUSR1)
                time.sleep(0.001)

        signal.signal(signal.SIGUSR1, on_usr1)
        sender = threading.Thread(target=send)
        sender.start()
        calls = 0
        try:
            end = time.monotonic() + 3
            while time.monotonic() < end:
                client.get("/signal/k")
                calls += 1
        finally:
            stop.set()
            sender.join()
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    closed_rounds = 0
    for _ in range(40):
        c = etcdkit.Client(endpoint)
        signal.signal(signal.SIGTERM, functools.partial(close_on_signal, c))
        threading.Timer(random.uniform(0.005, 0.03), os.kill, (os.getpid(), signal.SIGTERM)).start()
        try:
            while True:
                c.get("/signal/k")
        except etcdkit.ClosedError:
            closed_rounds += 1
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return {"calls": calls, "handled": handled, "closed_rounds": closed_rounds}


def window(endpoint: str) -> dict[str, Any]:
    left = interrupted = 0
    with etcdkit.Client(endpoint) as client, etcdkit.Client(endpoint) as probe:
        for i in range(100):
            lock = client.lock(f"/window/{i}", ttl=30)
            threading.Timer(random.uniform(0, 0.02), os.kill, (os.getpid(), signal.SIGINT)).start()
            try:
                while True:
                    lock.acquire()
                    lock.release()
            except KeyboardInterrupt:
                interrupted += 1
            time.sleep(0.05)
            if lock.state is etcdkit.HoldState.HELD:
                lock.release()
            deadline = time.monotonic() + 5
            while probe.get_prefix(f"/window/{i}/").kvs and time.monotonic() < deadline:
                time.sleep(0.05)  # (an undo under way)
            if probe.get_prefix(f"/window/{i}/").kvs:
                left += 1
    return {"interrupted": interrupted, "left": left}


class Service:
    def __init__(self, endpoint: str) -> None:
        self.client = etcdkit.Client(endpoint)

    def __del__(self) -> None:
        self.client.close()


SERVICES: list[Service] = []  # closed by their __del__ as the interpreter ends


def at_exit(endpoint: str) -> dict[str, Any]:
    SERVICES.append(Service(endpoint))
    SERVICES[0].client.put("/signal/exit", "x")
    return {"made": True}


def dropped(endpoint: str) -> dict[str, Any]:
    with etcdkit.Client(endpoint) as first:  # (grpc's own threads start with the first)
        first.put("/signal/dropped", "x")
    before = threading.active_count()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(5):
            etcdkit.Client(endpoint).put("/signal/dropped", "x")
        gc.collect()
    deadline = time.monotonic() + 10
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    resource = [w for w in caught if issubclass(w.category, ResourceWarning)]
    threads_left = threading.active_count() - before
    # A client dropped while an object made from it is still in use stays open until that
    # object goes too.
    with warnings.catch_warnings(record=True) as later:
        warnings.simplefilter("always")
        lock = etcdkit.Client(endpoint).lock("/signal/dropped-lock")
        gc.collect()
        lock.acquire()
        token = lock.fencing_token
        lock.release()
        in_use = [w for w in later if issubclass(w.category, ResourceWarning)]
    return {
        "threads_left": threads_left,
        "resource_warnings": len(resource),
        "says": str(resource[0].message) if resource else "",
        "lock_worked": token > 0,
        "warned_while_in_use": len(in_use),
    }


def _used(endpoint: str, kind: str, i: int) -> None:
    """A client, a recipe run on it, both dropped (the client unclosed; a hold maybe still
    held)."""
    client = etcdkit.Client(endpoint)
    name = f"/signal/recipes/{kind}/{i}"
    if kind == "lock_released":
        with client.lock(name):
            pass
    elif kind == "lock_held":
        client.lock(name).acquire()
    elif kind == "session":
        with client.session(10):
            pass
    elif kind == "session_open":
        client.session(10)
    elif kind == "semaphore":
        client.semaphore(name, 2).acquire()
    elif kind == "rwlock":
        client.rwlock(name).write().acquire()
    elif kind == "leadership":
        client.election(name).campaign("me").__enter__()
    elif kind == "double_barrier":
        client.double_barrier(name, 1).enter()
    else:
        raise ValueError(kind)


RECIPE_KINDS = (
    "lock_released",
    "lock_held",
    "session",
    "session_open",
    "semaphore",
    "rwlock",
    "leadership",
    "double_barrier",
)


def dropped_recipes(endpoint: str) -> dict[str, Any]:
    with etcdkit.Client(endpoint) as first:  # (grpc's own threads start with the first)
        first.put("/signal/dropped", "x")
        before = threading.active_count()
        out: dict[str, Any] = {}
        for kind in RECIPE_KINDS:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                _used(endpoint, kind, 0)
                gc.collect()
            deadline = time.monotonic() + 4
            while threading.active_count() > before and time.monotonic() < deadline:
                time.sleep(0.05)
            deadline = time.monotonic() + 4  # (the close revokes in the loop thread's last turns)
            while (
                len(first.get_prefix(f"/signal/recipes/{kind}/").kvs) > (kind == "double_barrier")
                and time.monotonic() < deadline
            ):
                time.sleep(0.05)
            # (a double barrier's ready key has no lease, as in Go's layout: it stays)
            left = [
                kv.key
                for kv in first.get_prefix(f"/signal/recipes/{kind}/").kvs
                if not kv.key.endswith(b"/ready")
            ]
            out[kind] = {
                "resource_warnings": sum(issubclass(w.category, ResourceWarning) for w in caught),
                "threads_left": threading.active_count() - before,
                "keys_left": len(left),
            }
    return out


def observe(endpoint: str) -> dict[str, Any]:
    with etcdkit.Client(endpoint) as client:
        leaders = client.election("/signal/nobody").observe()  # blocks: no leader
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
        with contextlib.suppress(KeyboardInterrupt):
            next(leaders)
        time.sleep(0.3)
        try:
            next(leaders)
            after = "an item"
        except StopIteration:
            after = "StopIteration"
        except RuntimeError as exc:
            after = str(exc)
        leaders.close()
    return {"after": after}


MODES = {
    "handler": handler,
    "window": window,
    "exit": at_exit,
    "dropped": dropped,
    "dropped_recipes": dropped_recipes,
    "observe": observe,
}

if __name__ == "__main__":
    endpoint, mode = sys.argv[1:]
    faulthandler.dump_traceback_later(90, exit=True)  # a hang: where every thread waits
    print(json.dumps(MODES[mode](endpoint)), flush=True)
