"""The snapshot engine, without etcd: unit tests and a property test against a model dict."""

from __future__ import annotations

import contextlib
import logging
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etcdkit import Change, ChangeKind, Snapshot
from etcdkit._snapshot import SnapshotEngine, Tree


def int_transform(key: bytes, value: bytes) -> tuple[str, int]:
    return key.decode(), int(value)


def engine() -> SnapshotEngine[str, int]:
    return SnapshotEngine(int_transform, name="test")


def take(e: SnapshotEngine[str, int]) -> Snapshot[str, int]:
    snap = e.take()
    assert snap is not None
    return snap


def kinds(snap: Snapshot[str, int]) -> dict[str, ChangeKind]:
    return {k: c.kind for k, c in snap.changes.items()}


def test_reset_then_events_give_the_seed_trees_in_order() -> None:
    e = engine()
    e.reset([(b"a", b"1"), (b"b", b"2"), (b"c", b"3")], 10)
    s = take(e)
    assert (dict(s.tree), s.revision) == ({"a": 1, "b": 2, "c": 3}, 10)
    assert kinds(s) == dict.fromkeys("abc", ChangeKind.ADDED)
    assert e.take() is None  # nothing new
    e.apply(11, [(b"a", None)])
    assert dict(take(e).tree) == {"b": 2, "c": 3}
    e.apply(12, [(b"b", b"20")])
    s = take(e)
    assert s.changes["b"] == Change(ChangeKind.UPDATED, "b", 2, 20)
    e.apply(13, [(b"d", b"4")])
    s = take(e)
    assert (dict(s.tree), s.revision, kinds(s)) == (
        {"b": 20, "c": 3, "d": 4},
        13,
        {"d": ChangeKind.ADDED},
    )


def test_old_revisions_are_ignored_and_never_delivered_going_back() -> None:
    e = engine()
    e.reset([(b"a", b"1")], 10)
    take(e)
    assert not e.apply(10, [(b"a", b"2")])
    assert not e.apply(9, [(b"a", b"3")])
    assert e.take() is None
    e.reset([(b"a", b"0")], 5)  # a relist answered by a member that is behind
    assert e.take() is None
    e.reset([(b"a", b"1")], 12)
    assert take(e).revision == 12


def test_changes_are_merged_per_key_since_the_last_delivery() -> None:
    e = engine()
    e.reset([(b"a", b"1")], 1)
    take(e)
    e.apply(2, [(b"a", b"2")])
    e.apply(3, [(b"a", None)])
    e.apply(4, [(b"a", b"3"), (b"b", b"1")])
    e.apply(5, [(b"b", None)])
    e.apply(6, [(b"c", b"1")])
    e.apply(7, [(b"c", b"2")])
    s = take(e)
    assert s.revision == 7
    assert s.changes == {
        "a": Change(ChangeKind.UPDATED, "a", 1, 3),
        "c": Change(ChangeKind.ADDED, "c", None, 2),
    }  # "b" came and went: no change


def test_invalid_records_are_dropped_counted_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    e = engine()
    with caplog.at_level(logging.WARNING, "etcdkit"):
        e.reset([(b"good", b"1"), (b"bad", b"x")], 1)
        e.reset([(b"good", b"1"), (b"bad", b"x")], 2)  # relist: same bad value, no new warning
    assert dict(take(e).tree) == {"good": 1}
    assert e.invalid_records == 1
    assert len(caplog.records) == 1
    assert "bad" in caplog.text
    assert "ValueError" in caplog.text
    e.apply(3, [(b"good", b"oops")])  # update to invalid: removed, not left stale
    s = take(e)
    assert dict(s.tree) == {}
    assert s.changes["good"].kind is ChangeKind.REMOVED
    e.apply(4, [(b"bad", None)])  # deleting an invalid record: nothing to show
    assert e.take() is None
    assert e.invalid_records == 2


def test_deletes_never_call_the_transform() -> None:
    calls: list[bytes] = []

    def once_only(key: bytes, value: bytes) -> tuple[str, bytes]:
        if key in calls:
            raise AssertionError("transform called again")
        calls.append(key)
        return key.decode().upper(), value

    e: SnapshotEngine[str, bytes] = SnapshotEngine(once_only)
    e.apply(1, [(b"x", b"1")])
    e.apply(2, [(b"x", None)])
    assert dict(e.tree) == {}


def test_two_raw_keys_on_one_transformed_key_is_a_collision() -> None:
    e: SnapshotEngine[str, bytes] = SnapshotEngine(lambda k, v: (k.decode().lower(), v))
    e.apply(1, [(b"A", b"1")])
    e.apply(2, [(b"a", b"2")])
    assert dict(e.tree) == {"a": b"1"}
    assert e.invalid_records == 1


@pytest.mark.parametrize(
    "out",
    [None, "ab", ("k", 1, 2), (["unhashable"], 1), 42],
    ids=["none", "str", "triple", "unhashable", "int"],
)
def test_wrong_shapes_are_invalid(out: Any) -> None:
    e: SnapshotEngine[Any, Any] = SnapshotEngine(lambda k, v: out)
    e.apply(1, [(b"k", b"v")])
    assert dict(e.tree) == {}
    assert e.invalid_records == 1


def test_reset_synthesizes_deletes_against_the_old_tree() -> None:
    e = engine()
    e.reset([(b"a", b"1"), (b"b", b"2")], 1)
    take(e)
    e.reset([(b"b", b"3"), (b"c", b"4")], 9)
    s = take(e)
    assert kinds(s) == {
        "a": ChangeKind.REMOVED,
        "b": ChangeKind.UPDATED,
        "c": ChangeKind.ADDED,
    }


def test_reset_always_delivers_even_when_nothing_changed() -> None:
    e = engine()
    e.reset([], 3)
    s = take(e)
    assert (dict(s.tree), s.revision, dict(s.changes)) == ({}, 3, {})


def test_old_snapshots_stay_intact_and_tree_compares_like_a_dict() -> None:
    e = engine()
    e.reset([(b"a", b"1")], 1)
    first = take(e)
    e.apply(2, [(b"a", b"2"), (b"b", b"3")])
    second = take(e)
    assert first.tree == {"a": 1}
    assert second.tree == {"a": 2, "b": 3}
    assert first.tree != second.tree
    assert isinstance(second.tree, Tree)
    assert "b" in second.tree
    assert second.tree.get("z") is None
    with pytest.raises(TypeError):
        second.tree["c"] = 1  # type: ignore[index]


# -- property test: the engine against a model dict ----------------------------------------------

KEYS = [b"a", b"b", b"c", b"d", b"e"]
VALUES = [b"0", b"1", b"2", b"x"]  # "x" is rejected by the transform

event = st.tuples(st.sampled_from(KEYS), st.one_of(st.none(), st.sampled_from(VALUES)))
step: st.SearchStrategy[tuple[str, list[tuple[bytes, bytes | None]]]] = st.one_of(
    st.tuples(st.just("apply"), st.lists(event, min_size=1, max_size=4)),
    st.tuples(st.just("take"), st.just([])),
    st.tuples(st.just("relist"), st.just([])),
    st.tuples(st.just("progress"), st.just([])),
)


def model_tree(raw: dict[bytes, bytes]) -> dict[str, int]:
    out: dict[str, int] = {}
    for k, v in raw.items():
        with contextlib.suppress(ValueError):
            out[k.decode()] = int(v)
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(step, max_size=40))
def test_engine_matches_a_model_dict(
    steps: list[tuple[str, list[tuple[bytes, bytes | None]]]],
) -> None:
    e = engine()
    raw: dict[bytes, bytes] = {}
    rev = 1
    e.reset([], rev)
    delivered: dict[str, int] = dict(take(e).tree)
    last_rev = rev
    for kind, events in steps:
        if kind == "apply":
            rev += 1
            for k, v in events:
                if v is None:
                    raw.pop(k, None)
                else:
                    raw[k] = v
            e.apply(rev, events)
        elif kind == "relist":
            e.reset(sorted(raw.items()), rev)
        elif kind == "progress":
            rev += 1
            e.advance(rev)
        assert dict(e.tree) == model_tree(raw)
        if kind == "take" or kind == "relist":
            snap = e.take()
            if snap is None:
                assert model_tree(raw) == delivered
                continue
            assert snap.revision >= last_rev
            assert dict(snap.tree) == model_tree(raw)
            # the changes turn the previously delivered tree into this one, one per key
            applied = dict(delivered)
            for ck, c in snap.changes.items():
                assert c.key == ck
                if c.kind is ChangeKind.ADDED:
                    assert ck not in applied
                    assert c.old is None
                    applied[ck] = cast(int, c.new)
                elif c.kind is ChangeKind.UPDATED:
                    assert applied[ck] == c.old != c.new
                    applied[ck] = cast(int, c.new)
                else:
                    assert applied.pop(ck) == c.old
                    assert c.new is None
            assert applied == dict(snap.tree)
            delivered, last_rev = dict(snap.tree), snap.revision
