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
