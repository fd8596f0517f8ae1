"""NodeDescriptor: what a routable node publishes as its member data (Go's ``registry`` format).

The JSON is Go's ``registry.NodeDescriptor`` as ``encoding/json`` writes it::

    {"id":"<member id>","address":{"ip":"10.0.0.5","port":8080},"weight":100}

``weight`` (a uint32, the node's claims on the hash ring) is left out when it is 0
(``omitempty``). Go takes any uint32, but the ring holds one token per unit of weight, built
at once by every process that routes (about 1 µs a token here): one record of weight 2**32-1
would stall each of them for hours. So a weight is at most :data:`MAX_WEIGHT` (65,535, about
0.1 s to build), written or read; a record above it is no descriptor (a registry leaves that
member out and logs it). Rings of weights up to it are Go's, token for token.

Go's registry splits the address on ``":"`` and its router dials
``fmt.Sprintf("%s:%d", ip, port)``, so it knows no IPv6; we write an IPv6 host *with* its
brackets (``"ip":"[::1]"``), which makes that same Sprintf dial the right address, and read a
bare IPv6 ``ip`` too. A record without an ip or with port 0 is refused, as Go's router drops it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, ClassVar

from etcdkit.cluster import _gojson
from etcdkit.cluster._member import Member, check_id

__all__ = ["MAX_WEIGHT", "NodeDescriptor"]

MAX_WEIGHT = 65_535
"""The greatest weight a :class:`NodeDescriptor` takes (and a registry reads): the ring has a
token per unit of weight, built in every routing process's event loop (see the module)."""
_WEIGHT_HELP = f"weight must be an int from 0 to {MAX_WEIGHT} (NodeDescriptor.MAX_WEIGHT)"
_ADDRESS_HELP = 'pass "host:port", e.g. "10.0.0.5:8080", "db-1:5432" or "[::1]:8080"'


@dataclass(frozen=True, slots=True)
class NodeDescriptor:
    """A node's id, its ``"host:port"`` address and its ring weight, validated on creation.

    ``id`` is the member id; ``address`` is ``"host:port"`` with an IPv6 host in brackets
    (``"[::1]:80"``) and a port from 1 to 65535; ``weight`` an int from 0 to
    :attr:`MAX_WEIGHT` (65,535: the node's claims on a :class:`HashRing`, one token each; 0
    takes no keys). Raises TypeError / ValueError.

    ``encode()`` gives the member data to publish; ``NodeDescriptor.decode(member.data,
    id=member.id)`` (or ``from_member(member)``) reads one back, whoever wrote it.
    """

    MAX_WEIGHT: ClassVar[int] = MAX_WEIGHT

    id: str
    address: str
    weight: int = 0

    def __post_init__(self) -> None:
        check_id(self.id)
        _split_address(self.address)
        if isinstance(self.weight, bool) or not isinstance(self.weight, int):
            raise TypeError(f"{_WEIGHT_HELP}, got {self.weight!r}")
        if not 0 <= self.weight <= MAX_WEIGHT:
            raise ValueError(f"{_WEIGHT_HELP}, got {self.weight}")

    @property
    def host(self) -> str:
        """The host without IPv6 brackets: ``"::1"`` for ``"[::1]:80"``."""
        return _split_address(self.address)[0].strip("[]")

    @property
    def port(self) -> int:
        return _split_address(self.address)[1]

    def encode(self) -> str:
        """The member data for this node, byte for byte what Go's registry writes."""
        ip, port = _split_address(self.address)
        obj: dict[str, Any] = {"id": self.id, "address": {"ip": ip, "port": port}}
        if self.weight:
            obj["weight"] = self.weight
        return _gojson.dumps(obj)

    @classmethod
    def decode(cls, data: str | bytes, *, id: str | None = None) -> NodeDescriptor:
        """Read a descriptor from member data; *id* (the member's id) wins over the JSON's.

        Raises ValueError when *data* is not a descriptor a router could use.
        """
        what = "node descriptor"
        if id is not None:
            check_id(id)
        obj = _gojson.loads_object(data, what, parse_int=_gojson.parse_int)
        if id is None:
            id = _gojson.field(obj, "id", str, what) or ""
            if not id:
                raise ValueError(f"not a valid {what}: it has no 'id' (pass id=member.id)")
        address = _gojson.field(obj, "address", _gojson.GoObject, what)
        if address is None:
            raise ValueError(f"not a valid {what}: it has no 'address'")
        ip = _gojson.field(address, "ip", str, what) or ""
        port = _gojson.field(address, "port", int, what) or 0
        weight = _gojson.field(obj, "weight", int, what)
        if isinstance(weight, _gojson.MinusZero):  # (Go's uint32 refuses "-0"; an int takes it)
            raise ValueError(f"not a valid {what}: 'weight' must be an unsigned integer, got -0")
        weight = weight or 0
        if ":" in ip and not ip.startswith("["):
            ip = f"[{ip}]"
        try:
            return cls(id, f"{ip}:{port}", weight)
        except ValueError as exc:
            raise ValueError(f"not a valid {what}: {exc}") from exc

    @classmethod
    def from_member(cls, member: Member) -> NodeDescriptor:
        """The descriptor a member publishes, with the member's id (as Go's registry reads it)."""
        if not isinstance(member, Member):
            raise TypeError(f"from_member takes a Member, got {type(member).__name__}")
        return cls.decode(member.data, id=member.id)


def _split_address(address: object) -> tuple[str, int]:
    """``"host:port"`` as (host as written, brackets kept, port); TypeError/ValueError if bad."""
    if not isinstance(address, str):
        raise TypeError(f"address must be a str; {_ADDRESS_HELP}, got {address!r}")
    host, sep, port_text = address.rpartition(":")
    if not sep or not host:
        raise ValueError(f"address {address!r} has no host and port; {_ADDRESS_HELP}")
    if not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5):
        raise ValueError(f"address {address!r} has no valid port; {_ADDRESS_HELP}")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"address {address!r}: the port must be 1 to 65535; {_ADDRESS_HELP}")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError as exc:
            raise ValueError(
                f"address {address!r}: {host} is not an IPv6 address; {_ADDRESS_HELP}"
            ) from exc
    elif ":" in host:
        raise ValueError(f"address {address!r}: put an IPv6 host in brackets; {_ADDRESS_HELP}")
    elif any(c.isspace() or c in "[]/@" for c in host):
        raise ValueError(f"address {address!r} has an invalid host; {_ADDRESS_HELP}")
    return host, port
