"""What a chaos run is asked to do and what it found: the fault names, the config, the report.

:data:`FAULTS` names every fault :mod:`bench.chaos.faults` can inject; :class:`ChaosConfig`
holds a run's knobs; :class:`ChaosReport` collects its counts, timings and every
:class:`Mismatch` (one violated guarantee, with the seed to replay it).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field

FAULTS = (
    "kill_member",
    "kill_leader",
    "pause_member",
    "pause_leader",
    "cut_client",
    "cut_client_long",
    "cut_one_link",
    "drop_client",
    "compact",
    "full_outage",
)


@dataclass(frozen=True)
class ChaosConfig:
    """Knobs of one run; the defaults suit a 2-core machine."""

    consumers: int = 3  # watch_prefix consumers on the data prefix; the last one is slow
    leases: int = 3
    lease_ttls: tuple[int, ...] = (2, 3, 5)
    wait_callers: int = 2
    keys: int = 16
    write_rate: float = 40.0  # mean data ops per second
    fault_duration: tuple[float, float] = (0.5, 3.0)
    long_cut: tuple[float, float] = (6.0, 10.0)  # past the client's keepalive detection (~8 s)
    fault_gap: tuple[float, float] = (1.0, 3.0)
    faults: tuple[str, ...] = FAULTS
    lease_bound: float = 10.0  # a PersistentLease is back within its ttl + this after a heal
    catch_up_bound: float = 15.0  # consumers reach the pre-heal revision within this
    wait_for_bound: float = 25.0  # wait_for returns within this once its condition holds
    converge_bound: float = 30.0
    op_timeout: float = 2.0  # the writer's per-request deadline
    slow_delay: tuple[float, float] = (0.2, 1.0)
    max_recorded: int = 100  # mismatches kept in full (all are counted)
    # How "kill" faults stop a member: "auto" = SIGKILL, except on etcd 3.5.0-3.5.2, where a
    # SIGKILL can make members diverge (etcd-io/etcd#13766, fixed in 3.5.3): SIGTERM there.
    kill_signal: str = "auto"
    history_wait: float = 60.0  # how long a check waits for the writer's history to cover it
    raw_watchers: int = 2  # raw watch() consumers on the data prefix: "raw", then "raw-slow"
    # The raw watch's buffer bound (etcdkit._watch.MAX_BUFFERED) for the run, so that "raw-slow"
    # falls behind it, steps off the stream and back on (at ~20 batches/s the library's own 1024
    # would take a 50 s stall); 0 leaves the library's own.
    raw_buffer: int = 32
    raw_pause: tuple[float, float] = (1.0, 4.0)  # how long "raw-slow" stops reading...
    raw_pause_chance: float = 0.006  # ... with this chance after each batch


@dataclass(frozen=True)
class Mismatch:
    """One violated guarantee. ``context`` is the fault active (or last healed) at the time."""

    kind: str
    seed: int
    at: float  # seconds since the run started
    where: str
    revision: int
    detail: str
    context: str

    def __str__(self) -> str:
        return (
            f"[{self.kind}] seed={self.seed} t={self.at:.1f}s {self.where} rev={self.revision} "
            f"({self.context}): {self.detail}"
        )


def _pct(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"p50 {statistics.median(values):.2f} s, max {max(values):.2f} s (n={len(values)})"


@dataclass
class ChaosReport:
    """What a run did and found. ``ok`` means no mismatch."""

    seed: int
    duration: float
    elapsed: float = 0.0
    snapshots_checked: int = 0
    checked_by_get: int = 0  # compared with get_prefix at the snapshot's revision
    checked_by_history: int = 0  # revision compacted: compared with the writer's history
    skipped: int = 0  # compacted and not covered by an exact history (should stay 0)
    per_consumer: dict[str, int] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)
    ops: dict[str, int] = field(default_factory=dict)
    uncertain_ops: int = 0  # writer ops with an unknown outcome, all resolved exactly
    landed_anyway: int = 0  # ...of which had in fact been applied
    wait_for_calls: int = 0
    wait_for_latency: list[float] = field(default_factory=list)
    lease_recovery: list[float] = field(default_factory=list)
    catch_up: list[float] = field(default_factory=list)
    convergence: dict[str, float] = field(default_factory=dict)
    raw_events_checked: int = 0  # raw watch events compared with the writer's event log
    raw_per_consumer: dict[str, int] = field(default_factory=dict)
    raw_progress_checked: int = 0  # raw watch batches with no events, their promise checked
    raw_stepped_off: int = 0  # times "raw-slow" fell behind its buffer bound and stepped off
    raw_log_verified: int = 0  # events of the writer's log found equal to etcd's own replay
    raw_catch_up: list[float] = field(default_factory=list)
    raw_watch_mismatches: int = 0  # of mismatch_count, those of the raw watch (kinds raw-*)
    etcd_version: str = ""
    kill_signal: str = ""  # SIGKILL or SIGTERM, see ChaosConfig.kill_signal
    members_agree: bool | None = None  # every member's HashKV equal at the end
    watch_stats: dict[str, dict[str, int]] = field(default_factory=dict)
    mismatch_count: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)
    timeline: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.mismatch_count == 0

    def summary(self) -> str:
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())) or "none"
        ops = ", ".join(f"{k} {v}" for k, v in sorted(self.ops.items())) or "none"
        consumers = ", ".join(f"{k} {v}" for k, v in sorted(self.per_consumer.items()))
        conv = ", ".join(f"{k} {v:.2f} s" for k, v in sorted(self.convergence.items()))
        raw = ", ".join(f"{k} {v}" for k, v in sorted(self.raw_per_consumer.items())) or "none"
        lines = [
            f"chaos run: seed {self.seed}, {self.elapsed:.0f} s (asked {self.duration:.0f} s), "
            f"etcd {self.etcd_version}, kill faults by {self.kill_signal}, members agree at the "
            f"end: {self.members_agree}",
            f"snapshots checked: {self.snapshots_checked} ({self.checked_by_get} against "
            f"get_prefix, {self.checked_by_history} against history; {self.skipped} skipped)",
            f"  per consumer: {consumers}",
            f"raw watch events checked: {self.raw_events_checked} ({raw}); "
            f"{self.raw_progress_checked} progress batches checked; stepped off the stream "
            f"{self.raw_stepped_off} times; raw watch mismatches: {self.raw_watch_mismatches}",
            f"  the writer's event log equals etcd's own replay over {self.raw_log_verified} "
            "events",
            f"faults injected: {sum(self.faults.values())} ({faults})",
            f"writer ops: {sum(self.ops.values())} ({ops}); {self.uncertain_ops} with unknown "
            f"outcome resolved ({self.landed_anyway} had landed)",
            f"wait_for calls: {self.wait_for_calls}; latency {_pct(self.wait_for_latency)}",
            f"recovery after heal: leases {_pct(self.lease_recovery)}; "
            f"watch catch-up {_pct(self.catch_up)}; raw watch catch-up {_pct(self.raw_catch_up)}",
            f"convergence at the end: {conv or 'n/a'}",
            f"mismatches: {self.mismatch_count}",
        ]
        lines.extend(f"  {m}" for m in self.mismatches[:20])
        if self.mismatch_count:
            lines.append(f"  replay with seed {self.seed} (ETCDKIT_CHAOS_SEED / --seed)")
        return "\n".join(lines)

    def as_json(self) -> str:
        data = asdict(self)
        data["ok"] = self.ok
        data["timeline"] = self.timeline[-200:]
        return json.dumps(data, sort_keys=True)
