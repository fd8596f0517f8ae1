"""python-etcd3's watch events: :class:`PutEvent` and :class:`DeleteEvent`, made from etcdkit's
:class:`~etcdkit.WatchEvent`.

An event reads as python-etcd3's did: ``event.key``, ``event.value``, ``event.version``,
``event.create_revision``, ``event.mod_revision``, ``event.lease``, and the same with ``prev_``
for the entry before the change (asked for with ``prev_kv=True``; empty values otherwise, as
etcd's empty message read).
"""

from __future__ import annotations

from etcdkit import EventType, KeyValue, WatchEvent

__all__ = ["DeleteEvent", "Event", "PutEvent", "new_event"]

NO_KV = KeyValue(b"", b"", 0, 0, 0, 0)


class Event:
    """One change seen by a watch."""

    def __init__(self, event: WatchEvent) -> None:
        self.key: bytes = event.kv.key
        self.event = event  # etcdkit's own WatchEvent
        self.kv = event.kv
        self.prev_kv = event.prev_kv if event.prev_kv is not None else NO_KV

    def __str__(self) -> str:
        return f"{type(self)} key={self.key!r} value={self.value!r}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} key={self.key!r} mod_revision={self.mod_revision}>"

    @property
    def value(self) -> bytes:
        return self.kv.value

    @property
    def version(self) -> int:
        return self.kv.version

    @property
    def create_revision(self) -> int:
        return self.kv.create_revision

    @property
    def mod_revision(self) -> int:
        return self.kv.mod_revision

    @property
    def lease(self) -> int:
        return self.kv.lease

    @property
    def prev_key(self) -> bytes:
        return self.prev_kv.key

    @property
    def prev_value(self) -> bytes:
        return self.prev_kv.value

    @property
    def prev_version(self) -> int:
        return self.prev_kv.version

    @property
    def prev_create_revision(self) -> int:
        return self.prev_kv.create_revision

    @property
    def prev_mod_revision(self) -> int:
        return self.prev_kv.mod_revision

    @property
    def prev_lease(self) -> int:
        return self.prev_kv.lease


class PutEvent(Event):
    """A key was written."""


class DeleteEvent(Event):
    """A key was deleted (``value`` is empty; ``mod_revision`` is the delete's)."""


def new_event(event: WatchEvent) -> Event:
    """The :class:`PutEvent` or :class:`DeleteEvent` for etcdkit's ``event``."""
    return PutEvent(event) if event.type is EventType.PUT else DeleteEvent(event)
