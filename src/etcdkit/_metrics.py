"""Figures for dashboards: OpenTelemetry instruments, and the same figures as plain objects.

The core and the recipes call the small hooks below where things happen (a watch applies
events, a lease changes state, a stream reconnects, a call returns). Each hook keeps the
plain-object figures (``watch.stats``, ``lease.stats``, ``client.stats``) and, when the
``opentelemetry-api`` package is importable (``pip install 'etcdkit[otel]'``), moves an
OpenTelemetry instrument. Without it nothing is imported and the hooks only count.

Instruments come from the global meter provider (``opentelemetry.metrics``): set one up as
usual (an SDK ``MeterProvider`` with a reader/exporter) and etcdkit's figures appear, also when
it is set after etcdkit was imported. Attributes stay low-cardinality: the prefix a watch was
opened on, the gRPC method, an error's class name, a lease state, a stream's name; never the
keys inside a prefix and never a lease's key. The table of instruments is in ``docs/metrics.md``.

This module imports neither grpc nor any other etcdkit module (it sits in the pure layer).
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from etcdkit._version import __version__

try:
    from opentelemetry import metrics as otel_metrics
except ImportError:  # the optional extra is not installed: count only
    otel_metrics = None  # type: ignore[assignment]

__all__ = [
    "INSTRUMENTS",
    "CallMeter",
    "ClientStats",
    "LeaseMeter",
    "LeaseStats",
    "WatchMeter",
    "bind",
    "enabled",
    "failover",
    "keepalive_rtt",
    "lock_requeued",
    "stream_reconnected",
]

METER_NAME = "etcdkit"

# Seconds: from a fast local round trip to a long outage.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
RECOVERY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

# name -> (kind, unit, description, attributes); docs/metrics.md and the tests read this table.
INSTRUMENTS: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "etcdkit.watch.events": (
        "counter", "{event}", "Watch events applied to a prefix watch's tree.", ("prefix",),
    ),
    "etcdkit.watch.snapshots": (
        "counter", "{snapshot}", "Snapshots delivered to a prefix watch's consumer.", ("prefix",),
    ),
    "etcdkit.watch.relists": (
        "counter", "{relist}",
        "Full listings of a prefix after the first one; reason: compacted (the resume "
        "revision was compacted) or ended (etcd ended the watch).",
        ("prefix", "reason"),
    ),
    "etcdkit.watch.invalid_records": (
        "counter", "{record}",
        "Records a prefix watch left out: its transform rejected them, or their key collided.",
        ("prefix",),
    ),
    "etcdkit.watch.age": (
        "gauge", "s",
        "Seconds since etcd last confirmed a prefix watch's data current; 0 while LIVE "
        "(the oldest, over a prefix's open watches).",
        ("prefix",),
    ),
    "etcdkit.stream.reconnects": (
        "counter", "{reconnect}",
        "Times a client's shared stream broke (it is then opened again), once per outage: "
        "retries that fail meanwhile are not counted; stream: watch or keepalive.",
        ("stream",),
    ),
    "etcdkit.client.failovers": (
        "counter", "{failover}",
        "Times a client left a failed endpoint for the next one; endpoint: the failed one.",
        ("endpoint",),
    ),
    "etcdkit.client.call.duration": (
        "histogram", "s", "Duration of unary etcd calls, retries included, by gRPC method.",
        ("method",),
    ),
    "etcdkit.client.call.errors": (
        "counter", "{error}", "Unary etcd calls that raised, by gRPC method and error class.",
        ("method", "error"),
    ),
    "etcdkit.lease.transitions": (
        "counter", "{transition}", "PersistentLease state changes, by the state entered.",
        ("state",),
    ),
    "etcdkit.lease.keepalive.rtt": (
        "histogram", "s", "Round-trip time of lease keepalive refreshes.", (),
    ),
    "etcdkit.lease.recoveries": (
        "counter", "{registration}",
        "PersistentLease registrations put back after they were lost (deleted, revoked, "
        "expired, overwritten).",
        (),
    ),
    "etcdkit.lease.recovery.duration": (
        "histogram", "s",
        "Time from a registration's last confirmation (it turned SUSPENDED or LOST) until "
        "it was REGISTERED again, for lost registrations.",
        (),
    ),
    "etcdkit.lock.requeues": (
        "counter", "{requeue}",
        "Waiters of a lock or election whose own key or lease vanished while they waited, so "
        "that they queued again at the back (state REQUEUED); recipe: lock or election.",
        ("recipe",),
    ),
}  # fmt: skip


class _Aged(Protocol):
    @property
    def age(self) -> float: ...


class _Instruments:
    """The OpenTelemetry instruments of one meter."""

    def __init__(self, meter: Any) -> None:
        made: dict[str, Any] = {}
        for name, (kind, unit, description, _attrs) in INSTRUMENTS.items():
            if kind == "counter":
                made[name] = meter.create_counter(name, unit=unit, description=description)
            elif kind == "histogram":
                buckets = RECOVERY_BUCKETS if "recovery" in name else LATENCY_BUCKETS
                made[name] = _histogram(meter, name, unit, description, buckets)
            else:
                made[name] = meter.create_observable_gauge(
                    name, callbacks=[_observe_ages], unit=unit, description=description
                )
        self.watch_events = made["etcdkit.watch.events"]
        self.watch_snapshots = made["etcdkit.watch.snapshots"]
        self.watch_relists = made["etcdkit.watch.relists"]
        self.watch_invalid = made["etcdkit.watch.invalid_records"]
        self.stream_reconnects = made["etcdkit.stream.reconnects"]
        self.failovers = made["etcdkit.client.failovers"]
        self.call_duration = made["etcdkit.client.call.duration"]
        self.call_errors = made["etcdkit.client.call.errors"]
        self.lease_transitions = made["etcdkit.lease.transitions"]
        self.keepalive_rtt = made["etcdkit.lease.keepalive.rtt"]
        self.lease_recoveries = made["etcdkit.lease.recoveries"]
        self.lease_recovery = made["etcdkit.lease.recovery.duration"]
        self.lock_requeues = made["etcdkit.lock.requeues"]


def _histogram(
    meter: Any, name: str, unit: str, description: str, buckets: tuple[float, ...]
) -> Any:
    try:  # bucket advice: opentelemetry-api >= 1.23
        return meter.create_histogram(
            name,
            unit=unit,
            description=description,
            explicit_bucket_boundaries_advisory=list(buckets),
        )
    except TypeError:
        return meter.create_histogram(name, unit=unit, description=description)


_inst: _Instruments | None = None
# Open prefix watches (weakly) and the prefix label of each, for the age gauge.
_aged: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
_aged_lock = threading.Lock()  # the gauge is read from the exporter's thread


def bind(meter_provider: Any = None) -> bool:
    """(Re)create the instruments from ``meter_provider`` (default: the global one).

    Called once on import. Tests pass an SDK ``MeterProvider`` with an in-memory reader.
    Returns whether OpenTelemetry is available (without it the hooks only count).
    """
    global _inst
    if otel_metrics is None:
        _inst = None
        return False
    source: Any = otel_metrics if meter_provider is None else meter_provider
    _inst = _Instruments(source.get_meter(METER_NAME, __version__))
    return True


def enabled() -> bool:
    """Whether OpenTelemetry instruments are in use (``opentelemetry-api`` is importable)."""
    return _inst is not None


def _observe_ages(_options: Any) -> Iterable[Any]:
    assert otel_metrics is not None
    oldest: dict[str, float] = {}
    with _aged_lock:
        items = list(_aged.items())
    for watch, label in items:
        try:
            age = float(watch.age)
        except Exception:  # a watch closing meanwhile: skip it this time
            continue
        oldest[label] = max(age, oldest.get(label, 0.0))
    return [otel_metrics.Observation(age, {"prefix": label}) for label, age in oldest.items()]


# -- hooks of the core ---------------------------------------------------------------------------


def stream_reconnected(stream: str) -> None:
    """A shared stream (``"watch"`` or ``"keepalive"``) ended and is being opened again."""
    if _inst is not None:
        _inst.stream_reconnects.add(1, {"stream": stream})


def failover(endpoint: str) -> None:
    """The client left ``endpoint`` for the next one."""
    if _inst is not None:
        _inst.failovers.add(1, {"endpoint": endpoint})


def keepalive_rtt(seconds: float) -> None:
    """A keepalive refresh was answered ``seconds`` after it was sent."""
    if _inst is not None:
        _inst.keepalive_rtt.record(seconds)


def lock_requeued(recipe: str) -> None:
    """A waiter of a lock or election (``recipe``) lost its key or lease and queued again."""
    if _inst is not None:
        _inst.lock_requeues.add(1, {"recipe": recipe})


@dataclass(frozen=True)
class ClientStats:
    """A client's figures since it was created (a snapshot: read ``client.stats`` again for
    newer ones). No I/O.

    - ``calls``: unary etcd calls made (each counted once, however many retries it took; a
      call its caller cancelled is not counted, nor in ``errors`` or the duration histogram:
      neither a latency nor an error of etcd's).
    - ``errors``: of those, the ones that raised, by error class name
      (``{"ConnectionUnavailableError": 2}``).
    - ``failovers``: times the client left a failed endpoint for the next one.
    - ``watch_reconnects`` / ``keepalive_reconnects``: times the shared Watch stream / lease
      LeaseKeepAlive stream broke (a restart, a cut, a hang), each then opened again; one
      outage counts once, however many retries fail while it lasts.
    - ``watches``: etcd watches the client holds now (every recipe's, on its one stream);
      ``watches_unconfirmed``: of those, the ones etcd has not confirmed yet (creates in
      flight, or no connection at the moment).
    - ``waiting``: watches of single keys (``wait_for`` calls, ``watch(key)`` with no
      options, a PersistentLease's watch of its own key) waiting now for their key to change
      (many started together share etcd watches, so this can exceed ``watches``).
    - ``answered``: etcd has answered at least one call or stream of this client;
      ``last_error``: the newest connection-level failure, if any (for messages).
    """

    calls: int = 0
    errors: Mapping[str, int] = field(default_factory=dict)
    failovers: int = 0
    watch_reconnects: int = 0
    keepalive_reconnects: int = 0
    watches: int = 0
    watches_unconfirmed: int = 0
    waiting: int = 0
    answered: bool = False
    last_error: str | None = None


class CallMeter:
    """Times and counts one client's unary calls."""

    __slots__ = ("calls", "errors")

    def __init__(self) -> None:
        self.calls = 0
        self.errors: Counter[str] = Counter()

    def record(self, method: str, seconds: float, error: BaseException | None) -> None:
        self.calls += 1
        name = None if error is None else type(error).__name__
        if name is not None:
            self.errors[name] += 1
        if _inst is not None:
            _inst.call_duration.record(seconds, {"method": method})
            if name is not None:
                _inst.call_errors.add(1, {"method": method, "error": name})


class WatchMeter:
    """The figures of one prefix watch, labelled with its prefix."""

    __slots__ = ("_attrs", "_invalid", "label")

    def __init__(self, prefix: bytes) -> None:
        self.label = prefix.decode(errors="replace")
        self._attrs = {"prefix": self.label}
        self._invalid = 0

    def events(self, count: int) -> None:
        if _inst is not None:
            _inst.watch_events.add(count, self._attrs)

    def snapshot(self) -> None:
        if _inst is not None:
            _inst.watch_snapshots.add(1, self._attrs)

    def relist(self, reason: str) -> None:
        if _inst is not None:
            _inst.watch_relists.add(1, {"prefix": self.label, "reason": reason})

    def invalid_total(self, total: int) -> None:
        """The engine's running count of invalid records is now ``total``."""
        new, self._invalid = total - self._invalid, total
        if new > 0 and _inst is not None:
            _inst.watch_invalid.add(new, self._attrs)

    def track(self, watch: _Aged) -> None:
        """Report ``watch.age`` in the age gauge until :meth:`untrack` (held weakly)."""
        with _aged_lock:
            _aged[watch] = self.label

    def untrack(self, watch: _Aged) -> None:
        with _aged_lock:
            _aged.pop(watch, None)


@dataclass(frozen=True)
class LeaseStats:
    """A PersistentLease's figures since it was created (a snapshot; no I/O).

    - ``registrations``: times the key became REGISTERED anew: the first time, and after each
      loss (a return from SUSPENDED without a loss is the same registration).
    - ``recoveries``: registrations that followed a loss (deleted, revoked, expired,
      overwritten).
    - ``last_recovery_seconds``: how long the newest recovery took, from the registration's
      last confirmation (the state left REGISTERED) to REGISTERED again; ``None`` before one.
    - ``state_transitions``: state changes so far.
    """

    registrations: int = 0
    recoveries: int = 0
    last_recovery_seconds: float | None = None
    state_transitions: int = 0


class LeaseMeter:
    """Follows one PersistentLease's state changes (state names: its ``LeaseState`` values)."""

    __slots__ = ("_clock", "_left_at", "_lost", "_stats")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._stats = LeaseStats()
        self._left_at: float | None = None  # when the state last left "registered"
        self._lost = False  # the registration was lost since it was last REGISTERED

    @property
    def stats(self) -> LeaseStats:
        return self._stats

    def transition(self, old: str, new: str) -> None:
        s = self._stats
        registrations, recoveries, last = s.registrations, s.recoveries, s.last_recovery_seconds
        now = self._clock()
        if old == "registered":
            self._left_at = now
        if new == "lost":
            self._lost = True
            if self._left_at is None:
                self._left_at = now
        elif new == "registered":
            if old != "suspended" or self._lost:  # not a mere return from SUSPENDED
                registrations += 1
            if self._lost:
                recoveries += 1
                last = now - (self._left_at if self._left_at is not None else now)
                if _inst is not None:
                    _inst.lease_recoveries.add(1)
                    _inst.lease_recovery.record(last)
            self._lost = False
            self._left_at = None
        self._stats = LeaseStats(registrations, recoveries, last, s.state_transitions + 1)
        if _inst is not None:
            _inst.lease_transitions.add(1, {"state": new})


bind()
