"""A Ctrl-C (KeyboardInterrupt) in a thread blocked on a threaded recipe call, as the call got
what it waited for: what was made for it is undone, since nobody will have it. A lock,
permit, read-write hold, leadership or double-barrier place is released; a queue's taken item
goes back. Each case runs ``tests/_interrupt_probe.py`` in a process of its own (the SIGINT
goes to that process's main thread), against a real etcd."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from etcdkit.testing import EtcdServer

PROBE = Path(__file__).resolve().parent / "_interrupt_probe.py"


@pytest.mark.parametrize(
    "kind",
    ["lock", "semaphore", "rwlock", "election", "double_barrier", "queue", "priority_queue"],
)
def test_an_interrupted_threaded_call_leaves_nothing_held_and_loses_no_item(
    etcd_server: EtcdServer, kind: str
) -> None:
    proc = subprocess.run(
        [sys.executable, str(PROBE), etcd_server.endpoint, kind],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["interrupted"], "the call was not interrupted: the probe did not work"
    expected = ["the item"] if kind.endswith("queue") else []
    assert out["left"] == expected
