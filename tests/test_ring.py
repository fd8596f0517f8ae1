"""HashRing: Go's ring tests (code-server pkg/cluster/ring) ported in spirit, plus the fixes.

Compatibility with Go is pinned three ways: murmur3 reference vectors of the Go library the ring
uses (spaolacci/murmur3), a reference model of Go's ``GetNode`` that every lookup must agree
with, and the known answers of Go's own consistency test.
"""

from __future__ import annotations

import random
from bisect import bisect_left

import mmh3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etcdkit.cluster import HashRing
from etcdkit.cluster._ring import token_hash

ITERATIONS = 500  # keys per frequency check, as in Go's verifyFrequency
DELTA = 0.10


def random_keys(n: int = ITERATIONS, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    return [str(rng.getrandbits(63)).encode() for _ in range(n)]


def frequencies(ring: HashRing, keys: list[bytes]) -> dict[str | None, float]:
    counts: dict[str | None, float] = {}
    for key in keys:
        owner = ring.node(key)
        counts[owner] = counts.get(owner, 0) + 1
    return {node: count / len(keys) for node, count in counts.items()}


def assert_frequencies(ring: HashRing, expected: dict[str, float], seed: int = 7) -> None:
    actual = frequencies(ring, random_keys(seed=seed))
    for node, want in expected.items():
        assert abs(actual.get(node, 0.0) - want) <= DELTA, (expected, actual)
        if want == 0:
            assert node not in actual


def go_owner(claims: dict[str, int], key: bytes) -> str | None:
    """Go's HashRing.GetNode on NewRingFromMap(claims), modelled from its code.

    Token i of node n is Sum64(n + strconv.Itoa(i)); on a token collision the owner map keeps
    the lexicographically greater node; a key goes to the first token >= Sum64(key), wrapping.
    """
    owners: dict[int, str] = {}
    for node, count in claims.items():
        for i in range(count):
            h = mmh3.hash64(f"{node}{i}".encode(), signed=False)[0]
            if h not in owners or owners[h] < node:
                owners[h] = node
    tokens = sorted(owners)
    if not tokens:
        return None
    i = bisect_left(tokens, mmh3.hash64(key, signed=False)[0])
    return owners[tokens[i % len(tokens)]]


# -- Go compatibility -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "sum64"),
    [
        # spaolacci/murmur3 murmur_test.go reference data (seed 0, h64_1): Go's murmur3.Sum64.
        (b"", 0x0000000000000000),
        (b"hello", 0xCBD8A7B341BD9B02),
        (b"hello, world", 0x342FAC623A5EBC8E),
        (b"19 Jan 2038 at 3:14:07 AM", 0xB89E5988B737AFFC),
        (b"The quick brown fox jumps over the lazy dog.", 0xCD99481F9EE902C9),
    ],
)
def test_token_hash_is_go_murmur3_sum64(data: bytes, sum64: int) -> None:
    assert token_hash(data) == sum64


@pytest.mark.parametrize(
    ("token", "sum64"),
    [
        # Token strings are node + decimal index, no separator (Go: node + strconv.Itoa(i)).
        ("nodeA0", 0x27AC188088A2503B),
        ("nodeA99", 0x321F93B4E2C8F89D),
        ("nodeB0", 0xA150248524DB4536),
        ("nodeC0", 0xDE4F044C6C40D4BA),
        ("a10", 0x8B7BD6726EDD0ECB),
    ],
)
def test_token_hash_known_answers(token: str, sum64: int) -> None:
    assert token_hash(token.encode()) == sum64


def test_lookup_agrees_with_go_model() -> None:
    claims = {"nodeA": 50, "nodeB": 50, "nodeC": 100, "a": 11, "a1": 1, "ü": 7}
    ring = HashRing(claims)
    keys = [*random_keys(2000), b"", b"a10", "ü0".encode(), b"nodeA0"]
    assert [ring.node(k) for k in keys] == [go_owner(claims, k) for k in keys]


def test_go_consistency_known_answers() -> None:
    # Go's TestHashRingConsistency: these keys map to nodeA, before and after nodeC leaves.
    ring = HashRing({"nodeA": 100, "nodeB": 100, "nodeC": 100})
    assert len(ring) == 300
    assert ring.node(b"testKey1") == "nodeA"
    assert ring.node(b"testKey2") == "nodeA"
    assert ring.with_claims("nodeC", 0).node(b"testKey1") == "nodeA"


def test_str_keys_are_hashed_as_utf8() -> None:
    ring = HashRing({"a": 100, "b": 100, "c": 100})
    for text in ["user-42", "é", "日本語", ""]:
        assert ring.node(text) == ring.node(text.encode())
        assert ring.nodes(text, 3) == ring.nodes(text.encode(), 3)


# -- Go's ring tests --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        ({"nodeA": 50, "nodeB": 50, "nodeC": 100}, {"nodeA": 0.25, "nodeB": 0.25, "nodeC": 0.5}),
        ({"nodeA": 0, "nodeB": 100, "nodeC": 100}, {"nodeA": 0.0, "nodeB": 0.5, "nodeC": 0.5}),
    ],
)
def test_balancing(claims: dict[str, int], expected: dict[str, float]) -> None:
    ring = HashRing(claims)
    assert len(ring) == sum(claims.values())
    assert_frequencies(ring, expected)


def test_empty_ring_has_no_owner() -> None:
    for ring in (HashRing(), HashRing({"nodeA": 0, "nodeB": 0, "nodeC": 0})):
        assert len(ring) == 0
        assert ring.node(b"key") is None
        assert ring.nodes(b"key", 3) == []
        assert dict(ring.claims) == {}


def test_claim_updates() -> None:
    ring = HashRing({"nodeA": 0, "nodeB": 100, "nodeC": 100})
    assert len(ring) == 200
    assert_frequencies(ring, {"nodeA": 0, "nodeB": 0.5, "nodeC": 0.5})

    ring = ring.with_claims("nodeA", 100)
    assert len(ring) == 300
    assert_frequencies(ring, {"nodeA": 0.333, "nodeB": 0.333, "nodeC": 0.333})

    ring = ring.with_claims("nodeB", 50).with_claims("nodeC", 50)
    assert len(ring) == 200
    assert_frequencies(ring, {"nodeA": 0.5, "nodeB": 0.25, "nodeC": 0.25})

    ring = ring.with_claims("nodeB", 0)
    assert len(ring) == 150
    assert "nodeB" not in ring
    assert_frequencies(ring, {"nodeA": 0.666, "nodeB": 0, "nodeC": 0.333})


def test_claim_update_moves_only_that_nodes_keys() -> None:
    keys = random_keys(5000)
    before = HashRing({"nodeA": 100, "nodeB": 100, "nodeC": 100})
    grown = before.with_claims("nodeA", 150)
    shrunk = before.with_claims("nodeA", 40)
    moved_to_a = moved_from_a = 0
    for key in keys:
        old = before.node(key)
        if grown.node(key) != old:
            assert grown.node(key) == "nodeA"
            moved_to_a += 1
        if shrunk.node(key) != old:
            assert old == "nodeA"
            moved_from_a += 1
    # About a sixth of the keys move each time (A: 1/3 -> 3/7, and 1/3 -> 2/12).
    assert 0.05 < moved_to_a / len(keys) < 0.2
    assert 0.05 < moved_from_a / len(keys) < 0.3


def test_same_claims_same_ring_whatever_the_history() -> None:
    keys = random_keys(2000)
    fresh = HashRing({"nodeA": 60, "nodeB": 80, "nodeC": 100})
    reordered = HashRing({"nodeC": 100, "nodeA": 60, "nodeB": 80})
    rebuilt = HashRing({"nodeB": 5}).with_claims("nodeC", 100).with_claims("nodeA", 90)
    rebuilt = rebuilt.with_claims("nodeB", 80).with_claims("nodeA", 60)
    assert fresh == reordered == rebuilt
    assert hash(fresh) == hash(rebuilt)
    for ring in (reordered, rebuilt):
        assert [ring.node(k) for k in keys] == [fresh.node(k) for k in keys]
        assert [ring.nodes(k, 3) for k in keys] == [fresh.nodes(k, 3) for k in keys]


def test_with_claims_leaves_the_ring_unchanged() -> None:
    ring = HashRing({"a": 10})
    bigger = ring.with_claims("b", 10)
    assert (len(ring), len(bigger)) == (10, 20)
    assert dict(ring.claims) == {"a": 10}
    assert dict(bigger.claims) == {"a": 10, "b": 10}
    assert ring.with_claims("zzz", 0) == ring
    assert repr(bigger) == "<HashRing nodes=2 tokens=20>"


# -- collisions (Go drops a node's token; we keep both) -------------------------------------


def test_token_collision_keeps_both_nodes() -> None:
    # Node "a" token 10 and node "a1" token 0 are the same string "a10": the same token.
    ring = HashRing({"a": 11, "a1": 1})
    assert len(ring) == 12
    assert ring.node(b"a10") == "a1"  # the greater id owns it, as in Go
    assert ring.node(b"a10") == go_owner({"a": 11, "a1": 1}, b"a10")
    assert ring.nodes(b"a10", 2) == ["a1", "a"]  # the loser is still on the ring
    assert ring == HashRing({"a1": 1, "a": 11})
    assert HashRing({"a1": 1, "a": 11}).nodes(b"a10", 2) == ["a1", "a"]
    # Either node leaving hands the token to the other (Go's SetClaims deletes its owner).
    assert ring.with_claims("a1", 0).node(b"a10") == "a"
    assert ring.with_claims("a", 0).node(b"a10") == "a1"
    assert ring.with_claims("a1", 0) == HashRing({"a": 11})


def test_collision_tie_break_is_by_node_id() -> None:
    # "ab" token 10 == "ab1" token 0 == "ab10"... node "ab1" > "ab": it wins in any order.
    for claims in ({"ab": 11, "ab1": 1}, {"ab1": 1, "ab": 11}):
        ring = HashRing(claims)
        assert ring.node(b"ab10") == "ab1"
        assert ring.nodes(b"ab10", 5) == ["ab1", "ab"]


# -- failover order ---------------------------------------------------------------------------


def test_nodes_are_distinct_and_start_at_the_owner() -> None:
    ring = HashRing({f"node-{i}": 50 for i in range(6)})
    for key in random_keys(300):
        order = ring.nodes(key, 6)
        assert len(order) == len(set(order)) == 6
        assert order[0] == ring.node(key)
        assert ring.nodes(key, 3) == order[:3]
        assert ring.nodes(key, 10) == order
        assert ring.nodes(key, 0) == []


def test_next_node_takes_over_when_the_owner_leaves() -> None:
    ring = HashRing({f"node-{i}": 50 for i in range(5)})
    for key in random_keys(300):
        owner, successor = ring.nodes(key, 2)
        assert ring.with_claims(owner, 0).node(key) == successor


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("claims", "error"),
    [
        ({"a": -1}, ValueError),
        ({"": 1}, ValueError),
        ({1: 1}, TypeError),
        ({"a": 1.5}, TypeError),
        ({"a": True}, TypeError),
        ({"a": "10"}, TypeError),
        ([("a", 1)], TypeError),
    ],
)
def test_bad_claims(claims: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="pass a mapping of node id"):
        HashRing(claims)  # type: ignore[arg-type]


def test_bad_lookups() -> None:
    ring = HashRing({"a": 10})
    with pytest.raises(TypeError, match=r"str .* or bytes"):
        ring.node(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"str .* or bytes"):
        ring.nodes(None, 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n must be an int >= 0"):
        ring.nodes(b"k", -1)
    with pytest.raises(TypeError, match="n must be an int >= 0"):
        ring.nodes(b"k", "2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="claims must be >= 0"):
        ring.with_claims("a", -5)
    with pytest.raises(TypeError, match="node ids must be str"):
        ring.with_claims(None, 5)  # type: ignore[arg-type]


# -- properties -------------------------------------------------------------------------------

# Short ids from a tiny alphabet, so that colliding token strings ("a"+"10" == "a1"+"0") occur.
node_ids = st.text(alphabet="ab1", min_size=1, max_size=3)
claim_maps = st.dictionaries(node_ids, st.integers(0, 40), max_size=5)
key_lists = st.lists(st.binary(max_size=12), min_size=1, max_size=60)


@settings(max_examples=150, deadline=None)
@given(claims=claim_maps, node=node_ids, count=st.integers(1, 40), keys=key_lists)
def test_adding_a_node_moves_keys_only_to_it(
    claims: dict[str, int], node: str, count: int, keys: list[bytes]
) -> None:
    claims.pop(node, None)
    before = HashRing(claims)
    after = before.with_claims(node, count)
    assert after == HashRing({**claims, node: count})
    for key in keys:
        assert after.node(key) in (before.node(key), node)
        assert after.node(key) == go_owner({**claims, node: count}, key)


@settings(max_examples=150, deadline=None)
@given(claims=claim_maps, data=st.data(), keys=key_lists)
def test_changing_claims_moves_only_that_nodes_keys(
    claims: dict[str, int], data: st.DataObject, keys: list[bytes]
) -> None:
    if not claims:
        return
    node = data.draw(st.sampled_from(sorted(claims)))
    count = data.draw(st.integers(0, 60))
    before = HashRing(claims)
    after = before.with_claims(node, count)
    for key in keys:
        old, new = before.node(key), after.node(key)
        if old != new:
            assert new == node if count > claims[node] else old == node
        assert after.nodes(key, 3)[:1] == ([new] if new is not None else [])
