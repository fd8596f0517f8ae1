"""Metrics: OpenTelemetry instruments move as real faults happen on real etcd (read through the
SDK's in-memory reader), the same figures as plain objects, and nothing at all without
OpenTelemetry installed."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import etcdkit
from etcdkit import AsyncClient, Client, LeaseState, WatchState, _metrics
from etcdkit.testing import EtcdServer, Proxy

WAIT = 20.0

Points = list[tuple[dict[str, Any], Any]]


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    """etcdkit's instruments bound to a fresh SDK provider with an in-memory reader."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    assert _metrics.bind(provider)
    try:
        yield reader
    finally:
        _metrics.bind()  # back to the global provider
        provider.shutdown()


def points(reader: InMemoryMetricReader, name: str) -> Points:
    data = reader.get_metrics_data()
    out: Points = []
    for rm in data.resource_metrics if data is not None else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == name:
                    out.extend((dict(p.attributes or {}), p) for p in metric.data.data_points)
    return out


def total(reader: InMemoryMetricReader, name: str, **attrs: str) -> float:
    """The sum of a counter (or the count of a histogram) over points with these attributes."""
    found = 0.0
    for got, point in points(reader, name):
        if all(got.get(k) == v for k, v in attrs.items()):
            found += point.count if hasattr(point, "count") else point.value
    return found


def gauge(reader: InMemoryMetricReader, prefix: str) -> list[float]:
    """The age gauge's values for ``prefix`` in one collection."""
    return [p.value for a, p in points(reader, "etcdkit.watch.age") if a == {"prefix": prefix}]


async def eventually(check: Callable[[], bool], timeout: float = WAIT) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.05)


def test_every_instrument_is_named_and_described() -> None:
    assert len(_metrics.INSTRUMENTS) >= 12
    for name, (kind, unit, description, attrs) in _metrics.INSTRUMENTS.items():
        assert name.startswith("etcdkit."), name
        assert kind in ("counter", "histogram", "gauge"), name
        assert unit, name
        assert description.endswith("."), name
        assert "key" not in attrs, f"{name}: keys are not low-cardinality attributes"


async def test_relist_after_compaction_and_age_while_cut(
    reader: InMemoryMetricReader, etcd_server_factory: Callable[..., EtcdServer]
) -> None:
    server = etcd_server_factory()
    with Proxy(server.endpoint) as proxy:
        async with AsyncClient(server.endpoint) as writer, AsyncClient(proxy.endpoint) as client:
            for k in "abc":
                await writer.put("/m/" + k, "1")
            await writer.put("/m/bad", "x")
            async with client.watch_prefix("/m/", lambda k, v: (k.decode(), int(v))) as watch:
                await watch.synced(timeout=WAIT)
                await writer.put("/m/a", "2")
                await eventually(lambda: total(reader, "etcdkit.watch.events", prefix="/m/") >= 1)
                assert total(reader, "etcdkit.watch.snapshots", prefix="/m/") >= 1
                assert total(reader, "etcdkit.watch.invalid_records", prefix="/m/") == 1

                proxy.cut()
                await eventually(lambda: watch.state is WatchState.STALE)
                await asyncio.sleep(0.3)
                ages = gauge(reader, "/m/")
                assert len(ages) == 1
                assert ages[0] > 0  # stale seconds, while the path is cut

                await writer.put("/m/b", "2")  # the watch's resume revision, compacted below
                rev = await writer.put("/m/d", "4")
                await writer.compact(rev)
                proxy.drop_connections()
                proxy.restore()
                await eventually(lambda: watch.revision >= rev and watch.state is WatchState.LIVE)
                assert total(reader, "etcdkit.watch.relists", prefix="/m/", reason="compacted") >= 1
                assert watch.stats.relists >= 1
                assert gauge(reader, "/m/") == [0.0]  # LIVE again
            # a closed watch leaves the gauge
            assert gauge(reader, "/m/") == []


async def test_revoke_is_recovered_and_timed(
    reader: InMemoryMetricReader, etcd: AsyncClient, etcd_prefix: str
) -> None:
    key = etcd_prefix + "node"
    async with etcd.persistent_lease(key, "v", ttl=2) as lease:
        await lease.registered(timeout=WAIT)
        first = lease.lease_id
        assert lease.stats.registrations == 1
        assert lease.stats.recoveries == 0
        assert lease.stats.last_recovery_seconds is None
        await etcd.revoke(first)
        await eventually(lambda: lease.lease_id not in (0, first))
        await lease.wait_state(LeaseState.REGISTERED, timeout=WAIT)
        stats = lease.stats
        assert (stats.registrations, stats.recoveries) == (2, 1)
        assert stats.last_recovery_seconds is not None
        assert 0 < stats.last_recovery_seconds < WAIT
        assert stats.state_transitions >= 3  # CONNECTING -> REGISTERED -> LOST -> REGISTERED
        assert total(reader, "etcdkit.lease.recoveries") == 1
        assert total(reader, "etcdkit.lease.recovery.duration") == 1  # one histogram sample
        assert total(reader, "etcdkit.lease.transitions", state="lost") >= 1
        assert total(reader, "etcdkit.lease.transitions", state="registered") == 2
        # the keepalive refreshes (every ttl/3) are timed
        await eventually(lambda: total(reader, "etcdkit.lease.keepalive.rtt") >= 1)
    assert lease.stats.state_transitions == stats.state_transitions + 1  # -> CLOSED


async def test_reconnects_after_server_restart(
    reader: InMemoryMetricReader, etcd_server_factory: Callable[..., EtcdServer]
) -> None:
    server = etcd_server_factory()
    async with AsyncClient(server.endpoint) as client:
        async with (
            client.watch_prefix("/r/") as watch,
            client.persistent_lease("/r/me", "v", ttl=5) as lease,
        ):
            await watch.synced(timeout=WAIT)
            await lease.registered(timeout=WAIT)
            before = client.stats
            assert before.watch_reconnects == before.keepalive_reconnects == 0
            server.kill()
            await asyncio.sleep(3.0)  # down a while: every retry meanwhile fails
            server.restart()
            await eventually(
                lambda: (
                    watch.state is WatchState.LIVE
                    and lease.state is LeaseState.REGISTERED
                    and client.stats.keepalive_reconnects >= 1
                )
            )
            # one outage, one reconnect each, however many retries failed (each counted before)
            stats = client.stats
            assert (stats.watch_reconnects, stats.keepalive_reconnects) == (1, 1)
            assert total(reader, "etcdkit.stream.reconnects", stream="watch") == 1
            assert total(reader, "etcdkit.stream.reconnects", stream="keepalive") == 1
            assert total(reader, "etcdkit.client.call.duration", method="Put") >= 1


async def test_a_watch_that_never_synced_ages_from_its_start() -> None:
    # etcd unreachable from the start: no data etcd confirmed, for longer and longer (the age
    # said 0.0, so an alert on it never fired for a watch that cannot sync)
    async with AsyncClient("127.0.0.1:1", timeout=0.5) as client:
        async with client.watch_prefix("/never/") as watch:
            assert watch.state is WatchState.SYNCING
            await asyncio.sleep(1.2)
            assert watch.age >= 1.0
        assert watch.age == 0.0  # (closed)


async def test_call_errors_by_method_and_class(
    reader: InMemoryMetricReader, etcd: AsyncClient, etcd_prefix: str
) -> None:
    calls = etcd.stats.calls
    await etcd.put(etcd_prefix + "k", "v")
    with pytest.raises(etcdkit.InvalidArgumentError):
        await etcd.get(etcd_prefix + "k", revision=2**40)  # a future revision
    stats = etcd.stats
    assert stats.calls == calls + 2
    assert stats.errors.get("InvalidArgumentError") == 1
    errors = [a for a, _ in points(reader, "etcdkit.client.call.errors")]
    assert errors
    assert all(a["error"] == "InvalidArgumentError" for a in errors)
    assert {a["method"] for a in errors} <= {"Range", "Txn"}
    assert total(reader, "etcdkit.client.call.duration", method="Put") == 1


def test_threaded_faces_have_the_same_stats(etcd_sync: Client, etcd_prefix: str) -> None:
    etcd_sync.put(etcd_prefix + "k", "v")
    assert isinstance(etcd_sync.stats, etcdkit.ClientStats)
    assert etcd_sync.stats.calls >= 1
    with etcd_sync.persistent_lease(etcd_prefix + "l", "v", ttl=3) as lease:
        lease.registered(timeout=WAIT)
        assert lease.stats.registrations == 1
        assert isinstance(lease.stats, etcdkit.LeaseStats)


def test_lease_meter_counts_registrations_not_resumes() -> None:
    now = [0.0]
    meter = _metrics.LeaseMeter(clock=lambda: now[0])
    steps = [
        ("connecting", "registered", 0.0),
        ("registered", "suspended", 1.0),  # etcd unreachable: the same registration resumes
        ("suspended", "registered", 2.0),
        ("registered", "suspended", 3.0),  # ... and this time it was lost meanwhile
        ("suspended", "lost", 5.0),
        ("lost", "registered", 7.5),
    ]
    for old, new, t in steps:
        now[0] = t
        meter.transition(old, new)
    assert meter.stats == etcdkit.LeaseStats(
        registrations=2, recoveries=1, last_recovery_seconds=4.5, state_transitions=6
    )


WITHOUT_OTEL = """
import asyncio, importlib.abc, sys

class NoOtel(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ImportError(f"{name} is not installed (blocked for this test)")
        return None

sys.meta_path.insert(0, NoOtel())
import etcdkit
from etcdkit import _metrics

async def main() -> None:
    async with etcdkit.AsyncClient(sys.argv[1]) as etcd:
        await etcd.put("/no-otel/a", "1")
        async with etcd.watch_prefix("/no-otel/") as watch:
            await watch.synced(timeout=10)
            assert watch.stats.snapshots == 1, watch.stats
        async with etcd.persistent_lease("/no-otel/me", "v", ttl=3) as lease:
            await lease.registered(timeout=10)
            assert lease.stats.registrations == 1, lease.stats
        assert etcd.stats.calls >= 2, etcd.stats
        await etcd.delete_prefix("/no-otel/")

asyncio.run(main())
assert not _metrics.enabled()
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry")
assert not loaded, loaded
print("ok")
"""


def test_without_opentelemetry_nothing_is_imported(etcd_server: EtcdServer) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONASYNCIODEBUG"}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(WITHOUT_OTEL), etcd_server.endpoint],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
