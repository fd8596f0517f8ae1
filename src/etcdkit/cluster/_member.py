"""A cluster member and its record in etcd, in the wire format of Go's ``pkg/cluster``.

A member with id ``ID`` under the root ``/services/api`` is the key ``/services/api/ID`` holding
the JSON ``{"id":"ID","data":"..."}`` (Go's ``cluster.Member`` marshalled by ``encoding/json``),
so Python and Go processes can share one cluster.
"""

from __future__ import annotations

from dataclasses import dataclass

from etcdkit.cluster import _gojson

__all__ = [
    "Member",
    "check_id",
    "check_root",
    "decode_member",
    "encode_member",
    "member_key",
    "member_prefix",
]


@dataclass(frozen=True, order=True, slots=True)
class Member:
    """One member of a cluster as everybody sees it: its id and its data.

    ``id`` is a non-empty string without ``/`` (by default the canonical text of a UUID4, stable
    across register/deregister cycles); ``data`` is any text the member publishes about itself,
    e.g. its address or a :class:`NodeDescriptor`'s JSON. Members order (and views list them)
    by id. Raises TypeError / ValueError on a bad id or data.
    """

    id: str
    data: str = ""

    def __post_init__(self) -> None:
        check_id(self.id)
        if not isinstance(self.data, str):
            raise TypeError(f"Member data must be a str, got {type(self.data).__name__}")


def check_id(id: object) -> str:
    """Return *id* if it can name a member (non-empty str, no ``/``); else TypeError/ValueError."""
    if not isinstance(id, str):
        raise TypeError(f"a member id must be a str such as str(uuid.uuid4()), got {id!r}")
    if not id or "/" in id:
        raise ValueError(
            f"a member id must be a non-empty string without '/' (it is the last segment of "
            f"its etcd key), got {id!r}"
        )
    return id


def check_root(root: object) -> str:
    """Return *root* without trailing ``/`` (``"/"`` stays ``""``); TypeError/ValueError if bad."""
    if not isinstance(root, str):
        raise TypeError(f"the cluster root must be a str such as '/services/api', got {root!r}")
    if not root:
        raise ValueError("the cluster root must be a non-empty key prefix such as '/services/api'")
    return root.rstrip("/")


def member_prefix(root: str) -> bytes:
    """The etcd key prefix of every member under *root*: ``root + "/"`` as UTF-8.

    A trailing ``/`` on *root* is ignored, as Go's ``path.Join`` does.
    """
    return (check_root(root) + "/").encode()


def member_key(root: str, id: str) -> bytes:
    """The etcd key of member *id* under *root*: ``root + "/" + id`` (Go: ``path.Join``)."""
    return member_prefix(root) + check_id(id).encode()


def encode_member(member: Member) -> bytes:
    """The etcd value of *member*: ``{"id":...,"data":...}`` exactly as Go's json.Marshal.

    Raises TypeError if *member* is not a Member, ValueError if its text cannot be UTF-8.
    """
    if not isinstance(member, Member):
        raise TypeError(f"encode_member takes a Member, got {type(member).__name__}")
    return _gojson.dumps({"id": member.id, "data": member.data}).encode()


def decode_member(root: str, key: bytes, value: bytes) -> Member:
    """The member stored as (*key*, *value*) under *root*; ValueError if it is not a valid one.

    Valid means: *key* is ``root + "/" + id`` for a valid id, and *value* is a JSON object whose
    ``"id"`` equals that id (read like Go's json.Unmarshal: keys matched as Go folds case, the
    long s U+017F as "s" and the Kelvin sign as "k" too, unknown keys ignored, a missing or
    null ``"data"`` is ``""``). Fit for a watch transform: a record it rejects is left out of
    the view.
    """
    prefix = member_prefix(root)
    if isinstance(key, str):
        key = key.encode()
    if not isinstance(key, bytes) or not isinstance(value, bytes | str):
        raise TypeError("decode_member takes the key and value as bytes")
    if not key.startswith(prefix):
        raise ValueError(f"key {key!r} is not under the cluster root {prefix!r}")
    try:
        key_id = key[len(prefix) :].decode()
        check_id(key_id)
    except ValueError as exc:
        raise ValueError(f"key {key!r} is not {prefix!r} followed by a member id") from exc
    obj = _gojson.loads_object(value, "member record")
    id = _gojson.field(obj, "id", str, "member record")
    data = _gojson.field(obj, "data", str, "member record")
    if id != key_id:
        raise ValueError(
            f"member record under key {key!r} has id {id!r}; the id must equal the key's last "
            f"segment {key_id!r}"
        )
    return Member(id, data or "")
