"""The public client satisfies the Protocol the recipes are typed against (checked by mypy
here, and at run time for the names)."""

from __future__ import annotations

import inspect

import etcdkit
from etcdkit._surface import Etcd


def _is_a_surface(etcd: etcdkit.AsyncClient) -> Etcd:
    return etcd  # mypy --strict fails here if AsyncClient drifts from the Protocol


def test_every_surface_name_is_on_the_client() -> None:
    names = [n for n in vars(Etcd) if not n.startswith("_")]
    assert names
    for name in names:
        assert hasattr(etcdkit.AsyncClient, name), name
        ours = getattr(etcdkit.AsyncClient, name)
        if callable(ours):
            want = list(inspect.signature(getattr(Etcd, name)).parameters)
            assert list(inspect.signature(ours).parameters) == want, name


def test_import_defers_what_a_program_may_never_use() -> None:
    # A fresh interpreter: `import etcdkit` leaves the threaded face, administration, naming,
    # the cluster and the on-request recipes unloaded; each public name still resolves, to the
    # same object as its module's, and star-import and dir() list them all.
    import subprocess
    import sys

    code = (
        "import sys, etcdkit\n"
        "deferred = sorted({*etcdkit._LAZY.values(), 'etcdkit.cluster'})\n"
        "print(sorted(m for m in deferred if m in sys.modules))\n"
        "import etcdkit.cluster, inspect\n"
        "default = inspect.signature(etcdkit.AsyncClient.cluster).parameters['timeout'].default\n"
        "assert default == etcdkit.cluster.DEFAULT_OPEN_TIMEOUT\n"
        "import importlib\n"
        "for name, module in etcdkit._LAZY.items():\n"
        "    assert getattr(etcdkit, name) is getattr(importlib.import_module(module), name)\n"
        "ns = {}\n"
        "exec('from etcdkit import *', ns)\n"
        "assert set(etcdkit.__all__) <= set(ns) and set(etcdkit.__all__) <= set(dir(etcdkit))\n"
        "try:\n"
        "    etcdkit.NoSuchName\n"
        "except AttributeError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out == ["[]", "module 'etcdkit' has no attribute 'NoSuchName'"]
    assert {"Client", "Members", "Semaphore", "EndpointManager"} <= set(etcdkit._LAZY)
