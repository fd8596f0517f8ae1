"""The snapshot engine, without etcd: unit tests and a property test against a model dict."""

from __future__ import annotations

import copy
import logging
import pickle
import sys
import threading
from typing import Any, TypeAlias, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etcdkit import Change, ChangeKind, Snapshot
from etcdkit._snapshot import Pair, SnapshotEngine, Transform, Tree


def int_transform(key: bytes, value: bytes) -> tuple[str, int]:
    return key.decode(), int(value)


def folding_transform(key: bytes, value: bytes) -> tuple[str, int]:
    """Keys fold to lower case (so ``A`` and ``a`` collide); a value ``name:n`` files the record
    under ``name`` instead; a value that is not an integer is invalid."""
    text = value.decode()
    if ":" in text:
        name, _, number = text.partition(":")
        return name, int(number)
    return key.decode().lower(), int(text)


QUIET = logging.Logger("etcdkit-test-quiet", logging.CRITICAL)


def fresh_tree(
    transform: Transform[str, int], listing: list[tuple[bytes, bytes]]
) -> dict[str, int]:
    """What a new engine shows for a listing: the reference for any history."""
    e = SnapshotEngine(transform, logger=QUIET)
    e.reset(listing, 1)
    return dict(e.tree)


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


def test_a_rejected_value_put_again_is_not_counted_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The README: logged "once per record (not again while its value stays the same)".
    e = engine()
    with caplog.at_level(logging.WARNING, "etcdkit"):
        e.apply(1, [(b"bad", b"x")])
        e.apply(2, [(b"bad", b"x")])  # put again, same value: the same rejected record
        e.apply(3, [(b"bad", b"x"), (b"good", b"1")])
        assert e.invalid_records == 1
        e.apply(4, [(b"bad", b"y")])  # another value: a new rejection
        assert e.invalid_records == 2
        e.apply(5, [(b"bad", b"2")])  # valid, then the old bad value again: new again
        e.apply(6, [(b"bad", b"y")])
        assert e.invalid_records == 3
        e.apply(7, [(b"bad", None)])
        e.apply(8, [(b"bad", b"y")])  # deleted and put back: a new record
    assert e.invalid_records == 4
    assert sum("dropping invalid record" in r.getMessage() for r in caplog.records) == 4
    assert dict(e.tree) == {"good": 1}


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


@pytest.mark.parametrize("how", ["raises", "wrong shape"])
def test_a_rejected_record_calls_the_transform_once(
    how: str, caplog: pytest.LogCaptureFixture
) -> None:
    """In a listing and in an event: it was called a second time to say what was wrong (a
    slow or side-effecting transform paid twice; a changing one could pass the second time,
    and the message be of another call than the one that decided)."""
    calls: list[bytes] = []

    def counted(key: bytes, value: bytes) -> Any:
        calls.append(key)
        if value == b"bad":
            if how == "raises":
                raise ValueError("not a number")
            return ["a", "list"]
        return key.decode(), value

    e: SnapshotEngine[str, bytes] = SnapshotEngine(counted)
    with caplog.at_level(logging.WARNING, "etcdkit"):
        e.reset([(b"a", b"1"), (b"b", b"bad")], 1)
        e.apply(2, [(b"c", b"bad")])
    assert calls == [b"a", b"b", b"c"]
    assert e.invalid_records == 2
    assert ("ValueError: not a number" if how == "raises" else "got list") in caplog.text


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


# -- bounded pending state -------------------------------------------------------------------------


def test_keys_that_come_and_go_leave_no_pending_state() -> None:
    e = engine()
    e.reset([(b"long%d" % i, b"0") for i in range(5)], 1)
    delivered = dict(take(e).tree)
    model = dict(delivered)
    bound = len(delivered) + 7  # at most 7 long-lived keys and 1 short-lived key at any time
    rev = 1
    for i in range(100_000):
        key = b"tmp%d" % i
        rev += 1
        e.apply(rev, [(key, b"1")])
        rev += 1
        if i % 10_000 == 5_000:  # a long-lived key changes (or appears) with the delete
            long = b"long%d" % (i // 10_000 % 7)
            e.apply(rev, [(key, None), (long, b"%d" % i)])
            model[long.decode()] = i
        else:
            e.apply(rev, [(key, None)])
        if i % 1_000 == 0:
            assert e.pending <= len(delivered) + len(e.tree) <= bound
    rev += 1
    e.apply(rev, [(b"long4", None)])
    del model["long4"]
    rev += 1
    e.apply(rev, [(b"long6", None)])  # appeared since the delivery and went again: no change
    del model["long6"]
    assert e.pending <= len(delivered) + len(e.tree)
    s = take(e)
    assert (dict(s.tree), s.revision) == (model, rev)
    assert s.changes == {
        "long0": Change(ChangeKind.UPDATED, "long0", 0, 75_000),
        "long1": Change(ChangeKind.UPDATED, "long1", 0, 85_000),
        "long2": Change(ChangeKind.UPDATED, "long2", 0, 95_000),
        "long3": Change(ChangeKind.UPDATED, "long3", 0, 35_000),
        "long4": Change(ChangeKind.REMOVED, "long4", 0, None),
        "long5": Change(ChangeKind.ADDED, "long5", None, 55_000),
    }
    assert e.pending == 0


def test_changes_read_late_are_those_of_their_own_delivery() -> None:
    """A snapshot's changes are worked out when first read (a consumer of the tree alone
    never pays for them): read after later events, a relist and later deliveries, each is
    still the delta from the snapshot delivered before it, and equal however it is compared."""
    e = engine()
    e.reset([(b"a", b"1"), (b"b", b"2")], 1)
    take(e)
    e.apply(2, [(b"a", b"10"), (b"c", b"3")])
    first = take(e)
    e.apply(3, [(b"a", b"11"), (b"b", None)])
    second = take(e)
    e.reset([(b"a", b"11"), (b"d", b"4")], 5)
    third = take(e)
    e.apply(6, [(b"a", b"1"), (b"e", b"5")])  # the engine goes on; the snapshots are done
    assert third.changes == {
        "c": Change(ChangeKind.REMOVED, "c", 3, None),
        "d": Change(ChangeKind.ADDED, "d", None, 4),
    }
    assert second.changes == {
        "a": Change(ChangeKind.UPDATED, "a", 10, 11),
        "b": Change(ChangeKind.REMOVED, "b", 2, None),
    }
    want = {
        "a": Change(ChangeKind.UPDATED, "a", 1, 10),
        "c": Change(ChangeKind.ADDED, "c", None, 3),
    }
    assert first.changes == want
    assert want == first.changes
    assert dict(first.changes) == want
    assert sorted(first.changes) == ["a", "c"]
    assert "c" in first.changes
    assert "b" not in first.changes
    assert len(first.changes) == 2
    assert repr(first.changes) == repr(want)
    assert first.changes.items() == want.items()
    assert first.changes.keys() == {"a", "c"}
    assert list(first.changes.values()) == list(want.values())
    assert first.changes.get("c") == want["c"]
    assert first.changes.get("b", 7) == 7
    assert first == Snapshot(first.tree, 2, want)


def test_changes_not_read_yet_copy_and_pickle_as_their_dict() -> None:
    """Copied or pickled before anyone read them, a snapshot's changes are still its own
    (the engine's marker for "no value before" does not survive a copy as itself)."""
    want = {
        "a": Change(ChangeKind.UPDATED, "a", 1, 2),
        "b": Change(ChangeKind.ADDED, "b", None, 3),
    }

    def unread() -> Snapshot[str, int]:
        e = engine()
        e.reset([(b"a", b"1")], 1)
        take(e)
        e.apply(2, [(b"a", b"2"), (b"b", b"3")])
        return take(e)

    assert copy.copy(unread().changes) == want
    assert copy.deepcopy(unread().changes) == want
    assert pickle.loads(pickle.dumps(unread().changes)) == want
    assert copy.deepcopy(unread()).changes == want


def test_a_relist_forgets_keys_that_came_and_went() -> None:
    e = engine()
    e.reset([(b"a", b"1")], 1)
    take(e)
    e.apply(2, [(b"b", b"2"), (b"c", b"3")])
    assert e.pending == 2
    e.reset([(b"a", b"1"), (b"c", b"3")], 3)  # b was created and deleted meanwhile
    assert e.pending == 1
    assert take(e).changes == {"c": Change(ChangeKind.ADDED, "c", None, 3)}


def test_changes_that_cancel_out_still_deliver_the_revision() -> None:
    e = engine()
    e.reset([(b"a", b"1")], 1)
    take(e)
    e.apply(2, [(b"b", b"2")])
    e.apply(3, [(b"b", None)])
    assert e.pending == 0
    s = take(e)  # a consumer waiting for revision 3 gets it
    assert (dict(s.tree), s.revision, dict(s.changes)) == ({"a": 1}, 3, {})
    e.advance(4)
    assert e.take() is None  # progress alone delivers nothing


# -- colliding raw keys ----------------------------------------------------------------------------


def folding_engine() -> SnapshotEngine[str, int]:
    return SnapshotEngine(folding_transform, name="test")


class Checked:
    """Applies events to an engine and to a model of the raw records; checks the rule each time."""

    def __init__(self, listing: list[tuple[bytes, bytes]]) -> None:
        self.engine = folding_engine()
        self.raw = dict(listing)
        self.rev = 1
        self.engine.reset(listing, self.rev)
        self.check()

    def apply(self, *events: tuple[bytes, bytes | None]) -> Snapshot[str, int] | None:
        self.rev += 1
        for k, v in events:
            if v is None:
                del self.raw[k]
            else:
                self.raw[k] = v
        self.engine.apply(self.rev, events)
        self.check()
        return self.engine.take()

    def take(self, *events: tuple[bytes, bytes | None]) -> Snapshot[str, int]:
        snap = self.apply(*events)
        assert snap is not None
        return snap

    def check(self) -> None:
        tree = dict(self.engine.tree)
        assert tree == fresh_tree(folding_transform, sorted(self.raw.items()))
        assert tree == fresh_tree(folding_transform, sorted(self.raw.items(), reverse=True))
        check_internals(self.engine)


def test_colliding_raw_keys_the_smallest_one_wins_whatever_the_order() -> None:
    c = Checked([])
    take(c.engine)
    c.take((b"/c/A", b"1"))
    assert c.apply((b"/c/a", b"2")) is None  # b"/c/A" < b"/c/a": hidden, nothing to deliver
    assert dict(c.engine.tree) == {"/c/a": 1}
    s = c.take((b"/c/A", None))  # the hidden record comes back
    assert dict(s.tree) == {"/c/a": 2}
    assert s.changes == {"/c/a": Change(ChangeKind.UPDATED, "/c/a", 1, 2)}
    listing = [(b"/c/a", b"2"), (b"/c/A", b"1"), (b"/c/B", b"3"), (b"/c/b", b"4")]
    assert fresh_tree(folding_transform, listing) == {"/c/a": 1, "/c/b": 3}
    assert fresh_tree(folding_transform, listing[::-1]) == {"/c/a": 1, "/c/b": 3}


def test_a_hidden_record_takes_over_when_the_winner_goes() -> None:
    # b"AB" < b"Ab" < b"ab": all three are key "ab"
    c = Checked([(b"ab", b"3"), (b"Ab", b"2"), (b"AB", b"1")])
    assert dict(take(c.engine).tree) == {"ab": 1}
    s = c.take((b"AB", b"x"))  # the winner becomes invalid
    assert s.changes == {"ab": Change(ChangeKind.UPDATED, "ab", 1, 2)}
    s = c.take((b"Ab", None))  # the winner is deleted
    assert s.changes == {"ab": Change(ChangeKind.UPDATED, "ab", 2, 3)}
    s = c.take((b"AB", b"3"))  # valid again: takes over at once, with the same value
    assert (dict(s.tree), dict(s.changes)) == ({"ab": 3}, {})
    s = c.take((b"AB", b"zz:7"))  # the winner maps to another key
    assert dict(s.tree) == {"ab": 3, "zz": 7}
    assert s.changes == {"zz": Change(ChangeKind.ADDED, "zz", None, 7)}
    s = c.take((b"ab", None))
    assert s.changes == {"ab": Change(ChangeKind.REMOVED, "ab", 3, None)}
    assert c.apply((b"zz", b"8")) is None  # b"AB" < b"zz": hidden
    s = c.take((b"AB", None))
    assert s.changes == {"zz": Change(ChangeKind.UPDATED, "zz", 7, 8)}


def test_no_reverse_map_is_kept_while_no_two_records_collide() -> None:
    # The K -> raw key map is one dict entry per key: a prefix whose keys never collide (the
    # common case) goes without it; the first collision makes it, a listing without one drops it.
    c = Checked([(b"a", b"1"), (b"b", b"2")])
    take(c.engine)
    c.take((b"c", b"3"), (b"a", b"d:4"), (b"b", None))  # a new K, a moved one, a deleted one
    assert c.engine._owner is None
    c.take((b"C", b"5"))  # folds to "c", as b"c" does: b"C" < b"c" takes over
    assert c.engine._owner == {"c": b"C", "d": b"a"}
    c.take((b"a", None), (b"C", None), (b"c", None))
    assert c.engine._owner == {}
    c.engine.reset([(b"x", b"1")], c.rev)
    assert c.engine._owner is None
    c.engine.reset([(b"x", b"1"), (b"X", b"2")], c.rev)  # a listing with a collision
    assert c.engine._owner == {"x": b"X"}
    check_internals(c.engine)


def test_a_smaller_raw_key_takes_over_at_once() -> None:
    c = Checked([(b"b", b"1")])
    take(c.engine)
    s = c.take((b"B", b"2"))
    assert s.changes == {"b": Change(ChangeKind.UPDATED, "b", 1, 2)}
    s = c.take((b"A", b"b:2"))  # yet smaller, same value: no change
    assert (dict(s.tree), dict(s.changes)) == ({"b": 2}, {})
    s = c.take((b"B", None), (b"A", None), (b"b", b"5"))  # one revision, every step at once
    assert s.changes == {"b": Change(ChangeKind.UPDATED, "b", 2, 5)}
    assert c.engine.pending == 0


def test_hidden_records_are_counted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    e = folding_engine()
    with caplog.at_level(logging.WARNING, "etcdkit"):
        e.apply(1, [(b"a", b"1")])
        e.apply(2, [(b"A", b"2")])  # pushes b"a" out of the tree
        assert e.invalid_records == 1
        e.reset([(b"a", b"1"), (b"A", b"2")], 2)  # a relist finds it hidden again
        assert e.invalid_records == 1
        e.apply(3, [(b"A", None)])
        e.apply(4, [(b"A", b"2")])  # in and out again at the same value
        assert e.invalid_records == 1
        e.apply(5, [(b"a", b"5")])  # a new value, hidden
        e.apply(6, [(b"b", b"x")])  # and one the transform rejects
        assert e.invalid_records == 3
        e.reset([(b"a", b"5"), (b"A", b"2"), (b"b", b"x")], 6)
    assert e.invalid_records == 3
    assert dict(e.tree) == {"a": 2}
    assert [r.getMessage().count("b'a'") for r in caplog.records] == [1, 1, 0]


# -- one consistent (tree, revision) pair --------------------------------------------------------


def test_view_pairs_the_tree_with_its_revision() -> None:
    e = engine()
    e.reset([(b"a", b"1")], 5)
    first = e.view
    assert first[0] is e.tree
    assert first[1] == e.revision == 5
    e.apply(6, [(b"a", b"2")])
    assert (dict(first[0]), first[1]) == ({"a": 1}, 5)  # an old view stays intact
    assert (dict(e.view[0]), e.view[1]) == ({"a": 2}, 6)
    e.advance(9)
    assert e.view == (e.tree, 9)
    assert e.view[0] is e.tree


def test_a_reader_thread_never_sees_a_tree_with_another_revision() -> None:
    e = engine()
    e.reset([(b"rev", b"1")], 1)
    stop = threading.Event()
    torn: list[tuple[int, int]] = []

    def read() -> None:
        while not stop.is_set():
            tree, rev = e.view
            if tree["rev"] != rev:
                torn.append((tree["rev"], rev))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    reader = threading.Thread(target=read)
    reader.start()
    try:
        for rev in range(2, 20_000):
            e.apply(rev, [(b"rev", b"%d" % rev)])
    finally:
        stop.set()
        reader.join()
        sys.setswitchinterval(interval)
    assert torn == []


# -- property test: the engine against a model dict ----------------------------------------------

KEYS = [b"a", b"b", b"c", b"d", b"e"]
VALUES = [b"0", b"1", b"2", b"x"]  # "x" is rejected by the transform
FOLDING_KEYS = [b"a", b"A", b"b", b"B", b"ab", b"aB", b"Ab"]
FOLDING_VALUES = [b"0", b"1", b"2", b"x", b"b:1", b"b:2", b"m:0"]  # "b:1" collides with b and B

Step: TypeAlias = tuple[str, list[tuple[bytes, bytes | None]]]


def step_lists(keys: list[bytes], values: list[bytes]) -> st.SearchStrategy[list[Step]]:
    event = st.tuples(st.sampled_from(keys), st.one_of(st.none(), st.sampled_from(values)))
    step: st.SearchStrategy[Step] = st.one_of(
        st.tuples(st.just("apply"), st.lists(event, min_size=1, max_size=4)),
        st.tuples(st.just("take"), st.just([])),
        st.tuples(st.just("relist"), st.just([])),
        st.tuples(st.just("relist-reversed"), st.just([])),  # a listing in another order
        # the watch misses these events (history compacted): a relist finds their outcome
        st.tuples(st.just("compacted"), st.lists(event, min_size=1, max_size=4)),
        st.tuples(st.just("progress"), st.just([])),
    )
    return st.lists(step, max_size=40)


def model_tree(
    raw: dict[bytes, bytes], transform: Transform[str, int] = int_transform
) -> dict[str, int]:
    """The rule, written plainly: valid records only, the smallest raw key wins a collision."""
    out: dict[str, int] = {}
    for k, v in sorted(raw.items()):
        try:
            key, value = transform(k, v)
        except ValueError:
            continue
        out.setdefault(key, value)
    return out


def check_internals(e: SnapshotEngine[str, int]) -> None:
    """The engine's own maps agree with each other and with its tree: every valid raw key is
    in the index; the K -> raw map, when there is one, names the raw key in the tree for every
    K; without one no record is hidden and every K of the index is a distinct key of the
    tree."""
    tree = dict(e.tree)
    index, owner, losers, hidden = e._index, e._owner, e._losers, e._hidden
    if owner is None:
        assert not losers
        assert not hidden
        assert sorted(index.values()) == sorted(tree)
        return
    assert owner.keys() == tree.keys()
    assert all(index[raw] == k for k, raw in owner.items())
    for k, raws in losers.items():
        assert raws
        assert raws == sorted(raws)
        assert all(owner[k] < raw for raw in raws)
        assert all(index[raw] == k for raw in raws)
    assert sorted(hidden) == sorted(raw for raws in losers.values() for raw in raws)
    assert len(index) == len(owner) + len(hidden)


def check_against_model(transform: Transform[str, int], steps: list[Step]) -> None:
    e = SnapshotEngine(transform, name="test")
    raw: dict[bytes, bytes] = {}
    rev = 1
    e.reset([], rev)
    delivered: dict[str, int] = dict(take(e).tree)
    last_rev = rev
    for kind, events in steps:
        if kind in ("apply", "compacted"):
            rev += 1
            for k, v in events:
                if v is None:
                    raw.pop(k, None)
                else:
                    raw[k] = v
            if kind == "apply":
                e.apply(rev, events)
            else:
                e.reset(sorted(raw.items()), rev)
        elif kind == "relist":
            e.reset(sorted(raw.items()), rev)
        elif kind == "relist-reversed":
            e.reset(sorted(raw.items(), reverse=True), rev)
        elif kind == "progress":
            rev += 1
            e.advance(rev)
        assert dict(e.tree) == model_tree(raw, transform)
        assert dict(e.tree) == fresh_tree(transform, sorted(raw.items()))
        check_internals(e)
        assert e.view == (e.tree, e.revision)
        assert e.view[0] is e.tree
        assert e.pending <= len(delivered) + len(e.tree)
        if kind in ("take", "relist", "relist-reversed", "compacted"):
            snap = e.take()
            if snap is None:
                assert model_tree(raw, transform) == delivered
                continue
            assert snap.revision >= last_rev
            assert dict(snap.tree) == model_tree(raw, transform)
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
            assert e.pending == 0


@settings(max_examples=300, deadline=None)
@given(step_lists(KEYS, VALUES))
def test_engine_matches_a_model_dict(steps: list[Step]) -> None:
    check_against_model(int_transform, steps)


@settings(max_examples=300, deadline=None)
@given(step_lists(FOLDING_KEYS, FOLDING_VALUES))
def test_engine_with_colliding_keys_matches_a_model_dict(steps: list[Step]) -> None:
    check_against_model(folding_transform, steps)


def test_the_engine_makes_the_same_frozen_snapshots_and_changes_a_constructor_makes() -> None:
    """The engine sets the slots of its Snapshots and Changes directly (fast): they must be
    the objects the constructors make, equal, hashing alike, pickling and still frozen."""
    import dataclasses
    import pickle

    e = engine()
    e.reset([(b"a", b"1"), (b"c", b"5")], 10)
    take(e)
    e.apply(11, [(b"a", b"2"), (b"b", b"3"), (b"c", None)])
    snap = take(e)
    assert type(snap) is Snapshot
    assert snap == Snapshot(snap.tree, 11, snap.changes)
    assert repr(snap) == repr(Snapshot(snap.tree, 11, snap.changes))
    updated, added, removed = snap.changes["a"], snap.changes["b"], snap.changes["c"]
    assert type(updated) is Change
    assert updated == Change(ChangeKind.UPDATED, "a", 1, 2)
    assert added == Change(ChangeKind.ADDED, "b", None, 3)
    assert removed == Change(ChangeKind.REMOVED, "c", 5, None)
    assert hash(updated) == hash(Change(ChangeKind.UPDATED, "a", 1, 2))
    assert dataclasses.astuple(added) == (ChangeKind.ADDED, "b", None, 3)
    assert pickle.loads(pickle.dumps(updated)) == updated
    with pytest.raises(dataclasses.FrozenInstanceError):
        updated.new = 4  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.revision = 12  # type: ignore[misc]


def test_a_listing_retried_after_failing_half_way_counts_its_rejections_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A first listing loads a page with a rejected record, then its next read fails; the
    # retried listing meets the same record: it was counted and logged once, not twice (a
    # later value of it is a new rejection).
    caplog.set_level(logging.WARNING, logger="etcdkit")
    engine: SnapshotEngine[str, int] = SnapshotEngine(int_transform)
    first = engine.begin_reset()
    first.add(Pair(k, v) for k, v in [(b"a", b"1"), (b"bad", b"x")])
    assert engine.invalid_records == 1
    for _ in range(2):  # failed again half-way, then retried
        retry = engine.begin_reset()
        retry.add(Pair(k, v) for k, v in [(b"a", b"1"), (b"bad", b"x")])
    retry.add(Pair(k, v) for k, v in [(b"c", b"3"), (b"worse", b"y")])
    engine.finish_reset(retry, 5)
    assert dict(engine.view[0]) == {"a": 1, "c": 3}
    assert engine.invalid_records == 2
    assert sum("dropping invalid record" in r.getMessage() for r in caplog.records) == 2
    relist = engine.begin_reset()
    relist.add(Pair(k, v) for k, v in [(b"bad", b"z")])  # a new value: a new rejection
    engine.finish_reset(relist, 6)
    assert engine.invalid_records == 3
