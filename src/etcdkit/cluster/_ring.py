"""HashRing: consistent hashing with weighted virtual nodes, compatible with Go's ``ring`` package.

Token ``i`` of node ``n`` is the 64-bit MurmurHash3 (x64-128, seed 0, first half; Go's
``murmur3.Sum64``) of the UTF-8 bytes of ``n + str(i)``, for ``i`` in ``range(claims)``. A key is
hashed the same way (its own bytes, nothing added) and belongs to the node of the first token at
or after its hash, wrapping around. Given the same claims, this picks the same owner as Go's
``HashRing.GetNode`` for every key.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping
from types import MappingProxyType

import mmh3

__all__ = ["HashRing", "token_hash"]

_CLAIMS_HELP = "pass a mapping of node id (non-empty str) to claims (int >= 0)"


def token_hash(data: bytes) -> int:
    """Go's ``murmur3.Sum64(data)``: the first 64 bits of MurmurHash3 x64-128 with seed 0."""
    return mmh3.hash64(data, signed=False)[0]


class HashRing:
    """An immutable consistent-hash ring: ``HashRing({"a": 100, "b": 100})``.

    Claims are a node's number of virtual nodes (tokens), i.e. its weight: ``{"a": 50, "b":
    100}`` gives ``b`` about two thirds of the keys. Use ~100 or more per node, as murmur3 tokens
    spread unevenly in small numbers. A node with 0 claims is not on the ring.

    - ``ring.node(key)``: the owner of *key* (str as UTF-8, or bytes), None on an empty ring.
    - ``ring.nodes(key, n)``: the owner, then the next distinct nodes clockwise: a failover
      order that moves as little as the owner does.
    - ``len(ring)``: the number of tokens (the sum of claims).
    - ``ring.with_claims(node, claims)``: a new ring with one node's claims changed, reusing
      the other nodes' tokens. Only keys of the changed node move: to it when it grows, from it
      when it shrinks.

    Building one hashes and sorts every token (about a microsecond each: 100,000 tokens take
    ~0.1 s), so a registry caps a node's weight (:attr:`NodeDescriptor.MAX_WEIGHT`).
    Lookups bisect a sorted list of ints (about a microsecond) and take no lock: a ring never
    changes, so share it between tasks and threads and swap in a new one on membership changes.

    Collisions: two nodes can own the same token, by a 64-bit hash collision or because their
    token strings coincide (node ``"a"`` token 10 and node ``"a1"`` token 0 are both ``"a10"``).
    The lexicographically greater node id owns the token, as the code of Go's ring decides it (its
    comment says the smaller; the code keeps the greater). Unlike Go's ring, the other node keeps
    its token too, just after the winner's and owning no keys of its own: it stays in
    :meth:`nodes` failover lists, ``len(ring)`` is still the sum of claims, and removing either
    node gives the token back to the other.
    """

    __slots__ = ("_claims", "_hashes", "_owners", "_tokens")

    def __init__(self, claims: Mapping[str, int] | None = None) -> None:
        if claims is None:
            claims = {}
        if not isinstance(claims, Mapping):
            raise TypeError(f"HashRing takes claims; {_CLAIMS_HELP}, got {claims!r}")
        self._claims: dict[str, int] = {}
        self._tokens: dict[str, list[int]] = {}
        for node, count in claims.items():
            if _check_claims(node, count):
                self._claims[node] = count
                self._tokens[node] = _tokens(node, 0, count)
        self._hashes: list[int] = []
        self._owners: list[str] = []
        self._build()

    # -- lookups ---------------------------------------------------------------------------------

    def node(self, key: str | bytes) -> str | None:
        """The node that owns *key*, or None if the ring has no tokens."""
        if type(key) is not bytes:
            key = _key_bytes(key)
        hashes = self._hashes
        if not hashes:
            return None
        i = bisect_left(hashes, mmh3.hash64(key, signed=False)[0])
        return self._owners[i if i < len(hashes) else 0]

    def nodes(self, key: str | bytes, n: int) -> list[str]:
        """Up to *n* distinct nodes for *key*: its owner first, then the next ones clockwise.

        Fewer than *n* when the ring has fewer nodes; ``[]`` on an empty ring or for ``n=0``.
        """
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"n must be an int >= 0 (how many nodes to return), got {n!r}")
        if n < 0:
            raise ValueError(f"n must be an int >= 0 (how many nodes to return), got {n}")
        key = _key_bytes(key)
        want = min(n, len(self._claims))
        if want == 0:
            return []
        owners = self._owners
        size = len(owners)
        start = bisect_left(self._hashes, token_hash(key))
        found: list[str] = []
        for j in range(start, start + size):
            owner = owners[j % size]
            if owner not in found:
                found.append(owner)
                if len(found) == want:
                    break
        return found

    def shares(self) -> dict[str, float]:
        """Each node's exact share of the hash space (the part of all keys it owns), by node;
        they sum to 1.0 (a node whose tokens are all taken by collisions owns 0.0)."""
        shares = dict.fromkeys(self._claims, 0)
        hashes, owners = self._hashes, self._owners
        if not hashes:
            return {}
        previous = hashes[-1] - 2**64  # the first token owns the arc that wraps around
        for h, owner in zip(hashes, owners):
            shares[owner] += h - previous
            previous = h
        return {node: arc / 2**64 for node, arc in shares.items()}

    # -- the ring as data ------------------------------------------------------------------------

    @property
    def claims(self) -> Mapping[str, int]:
        """The nodes on the ring and their claims (read-only; nodes with 0 claims left out)."""
        return MappingProxyType(self._claims)

    def with_claims(self, node: str, claims: int) -> HashRing:
        """A new ring where *node* has *claims* tokens (0 removes it); this ring is unchanged."""
        _check_claims(node, claims)
        ring = HashRing.__new__(HashRing)
        ring._claims = dict(self._claims)
        ring._tokens = dict(self._tokens)
        have = self._tokens.get(node, [])
        if claims == 0:
            ring._claims.pop(node, None)
            ring._tokens.pop(node, None)
        else:
            ring._claims[node] = claims
            ring._tokens[node] = have[:claims] + _tokens(node, len(have), claims)
        ring._build()
        return ring

    def __len__(self) -> int:
        return len(self._hashes)

    def __contains__(self, node: object) -> bool:
        return node in self._claims

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HashRing):
            return NotImplemented
        return self._claims == other._claims

    def __hash__(self) -> int:
        return hash(frozenset(self._claims.items()))

    def __repr__(self) -> str:
        return f"<HashRing nodes={len(self._claims)} tokens={len(self._hashes)}>"

    def _build(self) -> None:
        entries = [(h, node) for node, hashes in self._tokens.items() for h in hashes]
        # Equal hashes: the greater node id first, so that bisect_left lands on it (Go's
        # winner) and the other node's token follows, owning an empty arc.
        entries.sort(key=lambda e: e[1], reverse=True)
        entries.sort(key=lambda e: e[0])
        self._hashes = [h for h, _ in entries]
        self._owners = [node for _, node in entries]


def _check_claims(node: object, claims: object) -> bool:
    """Validate one (node, claims) pair; True if the node is on the ring (claims > 0)."""
    if not isinstance(node, str):
        raise TypeError(f"node ids must be str; {_CLAIMS_HELP}, got node {node!r}")
    if not node:
        raise ValueError(f"node ids must be non-empty; {_CLAIMS_HELP}")
    if isinstance(claims, bool) or not isinstance(claims, int):
        raise TypeError(f"claims must be int; {_CLAIMS_HELP}, got {node!r}: {claims!r}")
    if claims < 0:
        raise ValueError(f"claims must be >= 0; {_CLAIMS_HELP}, got {node!r}: {claims}")
    return claims > 0


def _key_bytes(key: object) -> bytes:
    if isinstance(key, str):
        return key.encode()
    if isinstance(key, bytes):
        return bytes(key)
    raise TypeError(f"a ring key must be str (hashed as UTF-8) or bytes, got {type(key).__name__}")


def _tokens(node: str, start: int, stop: int) -> list[int]:
    return [token_hash(f"{node}{i}".encode()) for i in range(start, stop)]
