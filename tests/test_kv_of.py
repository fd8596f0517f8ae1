"""kv_of builds KeyValue objects by filling in their slots directly (fast); they must be the
same objects a constructor call makes."""

from __future__ import annotations

import copy
import dataclasses
import pickle

import pytest
from aetcd import rpc

from etcdkit import KeyValue
from etcdkit._wire.kv import kv_of


def test_kv_of_makes_the_same_frozen_key_value() -> None:
    pb = rpc.KeyValue(
        key=b"/k", value=b"v", create_revision=3, mod_revision=7, version=2, lease=0x1F
    )
    kv = kv_of(pb)
    made = KeyValue(b"/k", b"v", 3, 7, 2, 0x1F)
    assert type(kv) is KeyValue
    assert kv == made
    assert hash(kv) == hash(made)
    assert repr(kv) == repr(made)
    assert dataclasses.astuple(kv) == (b"/k", b"v", 3, 7, 2, 0x1F)
    assert pickle.loads(pickle.dumps(kv)) == made
    assert copy.copy(kv) == made
    assert dataclasses.replace(kv, value=b"w") == KeyValue(b"/k", b"w", 3, 7, 2, 0x1F)
    assert not hasattr(kv, "__dict__")
    with pytest.raises(dataclasses.FrozenInstanceError):
        kv.value = b"w"  # type: ignore[misc]


def test_kv_of_an_empty_message_has_every_field() -> None:
    assert kv_of(rpc.KeyValue()) == KeyValue(b"", b"", 0, 0, 0, 0)


def test_a_key_never_changed_holds_one_int_for_both_revisions() -> None:
    """Memory, not behaviour: a key whose create and mod revisions are equal shares one int
    (python -m bench.micro, kv_of_mb); unequal ones keep their own values."""
    once = kv_of(rpc.KeyValue(key=b"/k", create_revision=70_001, mod_revision=70_001, version=1))
    assert once.create_revision == once.mod_revision == 70_001
    assert once.create_revision is once.mod_revision
    changed = kv_of(rpc.KeyValue(key=b"/k", create_revision=70_001, mod_revision=70_002))
    assert (changed.create_revision, changed.mod_revision) == (70_001, 70_002)
