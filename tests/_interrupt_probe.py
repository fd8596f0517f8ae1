"""A Ctrl-C in a thread blocked on a threaded recipe call, just as the call got what it waited
for: ``python tests/_interrupt_probe.py ENDPOINT KIND`` (KIND: lock, semaphore, rwlock,
election, double_barrier, queue, priority_queue, session). Run in a process of its own (a
SIGINT goes to its main thread). Prints one JSON line: ``interrupted`` (the call raised
KeyboardInterrupt) and, a moment later, ``left`` (the recipe's keys still in etcd; for the
queues, the items still queued).

The asyncio method the call runs is wrapped to send SIGINT to the process as it returns: the
signal is pending before the loop hands the result over, so the waiting thread raises
KeyboardInterrupt in its wait, after the result was made and before it got it. Whatever
that result holds (a lock, a permit, a leadership, a barrier place, a taken item, a
session's lease) must be undone: released, or put back where it was.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

import etcdkit
from etcdkit.recipes.double_barrier import DoubleBarrier
from etcdkit.recipes.election import Campaign
from etcdkit.recipes.lock import Lock
from etcdkit.recipes.queue import ItemLine
from etcdkit.recipes.rwlock import RWHold
from etcdkit.recipes.semaphore import Semaphore
from etcdkit.recipes.session import Session

TARGETS: dict[str, tuple[type, str]] = {
    "lock": (Lock, "acquire"),
    "semaphore": (Semaphore, "acquire"),
    "rwlock": (RWHold, "acquire"),
    "election": (Campaign, "__aenter__"),
    "double_barrier": (DoubleBarrier, "enter"),
    "queue": (ItemLine, "take_item"),
    "priority_queue": (ItemLine, "take_item"),
    "session": (Session, "open"),
}


def interrupting(fn: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = await fn(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, now that the result is made
        return result

    return wrapper


def main(endpoint: str, kind: str) -> dict[str, Any]:
    name = f"/interrupt/{kind}"
    with etcdkit.Client(endpoint) as client, etcdkit.Client(endpoint) as other:
        calls: dict[str, Callable[[], object]] = {
            "lock": lambda: client.lock(name, ttl=30).acquire(),
            "semaphore": lambda: client.semaphore(name, 1, ttl=30).acquire(),
            "rwlock": lambda: client.rwlock(name, ttl=30).write().acquire(),
            "election": lambda: client.election(name).campaign("me", ttl=30).__enter__(),
            "double_barrier": lambda: client.double_barrier(name, 1, ttl=30).enter(timeout=10),
            "queue": lambda: client.queue(name).get(timeout=10),
            "priority_queue": lambda: client.priority_queue(name).get(timeout=10),
            "session": lambda: client.session(30),
        }
        if kind == "queue":
            other.queue(name).put("the item")
        elif kind == "priority_queue":
            other.priority_queue(name).put("the item", 3)
        cls, method = TARGETS[kind]
        setattr(cls, method, interrupting(getattr(cls, method)))
        interrupted = False
        try:
            calls[kind]()
        except KeyboardInterrupt:
            interrupted = True
        time.sleep(1.0)  # the undo runs on the client's loop thread meanwhile
        left = other.get_prefix(name + "/")
        if kind == "session":  # its lease, kept alive for nobody
            keys = [f"{lease:#x}" for lease in other.leases()]
        elif kind.endswith("queue"):
            keys = [kv.value.decode() for kv in left.kvs]
        else:  # (a double barrier's ready key stays, as Go leaves it; participants must not)
            keys = [kv.key.decode() for kv in left.kvs if not kv.key.endswith(b"/ready")]
        return {"interrupted": interrupted, "left": keys}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])), flush=True)
