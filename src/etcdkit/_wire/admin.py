"""The etcd administration API, one object per etcd gRPC service: :class:`Members` (Cluster),
:class:`Maintenance` and :class:`Auth` (in :mod:`etcdkit._wire.admin_auth`). A client hands them out
as ``etcd.members``, ``etcd.maintenance`` and ``etcd.auth``.

Each is made from the client's core without I/O. Every call checks its arguments first
(``TypeError`` / ``ValueError`` saying what to pass), then that the client is open, then makes
its RPC through the connection (its timeout, retries of what is safe, auth token), whose
errors arrive mapped into the etcdkit tree (``raise X(...) from exc``). Reads are retried
within the client's timeout; changes are sent once (etcd may have applied one that failed in
flight: read back before trying again), except membership changes, which are read back and sent
again by :class:`Members` itself (etcd's raft drops one proposed too soon after another).

Calls addressed to one member (``endpoint=...``) go to that member only: an endpoint is one of
the client's endpoints, as "host:port" or URL; another is a ``ValueError``.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import errno
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlsplit

from aetcd import rpc

from etcdkit._admin_types import Alarm, HashKV, Member, Status
from etcdkit._errors import ConnectionUnavailableError, EtcdTimeoutError, ServerError
from etcdkit._types import check_bool, check_int64
from etcdkit._wire.admin_auth import Auth
from etcdkit._wire.conn import Channel
from etcdkit._wire.kv import header_of

if TYPE_CHECKING:
    from etcdkit._core import Core

__all__ = ["Auth", "Maintenance", "Members"]

log = logging.getLogger("etcdkit.admin")

SNAPSHOT_FLUSH = 1 << 20  # bytes of snapshot gathered before one write to the file
_SHA256_SIZE = 32

_ALARM_KINDS = ("NOSPACE", "CORRUPT")

# A membership change not answered within this many seconds is looked for in the member list
# and, if absent, sent again; the wait doubles up to the cap (within the client's timeout).
CHANGE_FIRST_WAIT = 0.5
CHANGE_MAX_WAIT = 4.0
NEW_ID_WAIT = 1.0  # s: a MemberAdd sent again gets a new member id (see Members._send)
NEW_ID_TRIES = 3


# -- argument checks (before any I/O) -------------------------------------------------------------


def _member_id(value: object, what: str = "member_id") -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(
            f"{what} must be an int such as Member.id (for the hex id etcdctl prints, pass "
            f"int('8e9e05c52164694d', 16)), got {type(value).__name__}: {value!r:.40}"
        )
    if not 0 < value < 2**64:
        raise ValueError(f"{what} must be a member id, an int in [1, 2**64), got {value!r}")
    return value


def _peer_urls(value: object) -> list[str]:
    example = "'http://10.0.0.4:2380'"
    if isinstance(value, str):
        items: list[object] = [value]
    elif isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        items = builtins.list(value)
    else:
        raise TypeError(
            f"peer_urls must be a URL string such as {example} or a list of them, "
            f"got {type(value).__name__}: {value!r:.80}"
        )
    if not items:
        raise ValueError(f"peer_urls is empty: pass at least one peer URL such as {example}")
    urls: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"each peer URL must be a str such as {example}, got {item!r:.80}")
        try:
            parts = urlsplit(item)
            port = parts.port
        except ValueError:
            port = None
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or port is None
            or parts.path not in ("", "/")
        ):
            raise ValueError(f"peer URL {item!r} must look like {example} (http(s)://host:port)")
        urls.append(item)
    return urls


def _alarm(value: object) -> Alarm:
    if not isinstance(value, Alarm):
        raise TypeError(
            f"alarm must be an etcdkit.Alarm (from maintenance.alarms()), got {value!r:.80}"
        )
    _member_id(value.member_id, "alarm.member_id")
    if value.kind not in _ALARM_KINDS:
        raise ValueError(f"alarm.kind must be 'NOSPACE' or 'CORRUPT', got {value.kind!r}")
    return value


def _channel(core: Core, endpoint: str | None) -> Channel | None:
    return None if endpoint is None else core.conn.channel_at(endpoint)


# -- wire messages to values ----------------------------------------------------------------------


def _member_of(pb: Any) -> Member:
    return Member(
        int(pb.ID),
        str(pb.name),
        builtins.list(pb.peerURLs),
        builtins.list(pb.clientURLs),
        bool(pb.isLearner),
    )


def _alarm_kind(value: int) -> str:
    try:
        return str(rpc.AlarmType.Name(value))
    except ValueError:
        return str(value)  # a kind newer than our messages


# -- Cluster service ------------------------------------------------------------------------------

_ALARMS = rpc.AlarmRequest(action=rpc.AlarmRequest.GET, memberID=0, alarm=rpc.NONE)


class Members:
    """The cluster's membership (etcd's Cluster service; ``etcdctl member ...``).

    Membership changes go through raft: they need a quorum, and etcd refuses one that would
    leave the cluster without a quorum of started members. Add a member as a learner first
    (``learner=True``), start its etcd with ``--initial-cluster-state existing``, then
    :meth:`promote` it once it caught up.

    raft takes one membership change at a time: one proposed while the previous is not applied
    yet is dropped without an answer (etcd logs "ignoring conf change ... possible unapplied
    conf change"), and etcd replies only when the call's deadline passes. That happens to
    changes sent back to back, and to changes sent at once. So a client makes its changes one
    after the other, and a change not answered within :data:`CHANGE_FIRST_WAIT` seconds is
    looked for in the (linearizable) member list and sent again if it is not there, until the
    client's timeout. A change sent again that etcd refuses because it was applied meanwhile
    (the member is gone, the peer URL is taken, it is no longer a learner) counts as done."""

    def __init__(self, core: Core) -> None:
        self._core = core
        self._changing = asyncio.Lock()  # this client's membership changes, one at a time

    def __repr__(self) -> str:
        return f"<Members of {self._core.where}>"

    async def list(self, *, serializable: bool = False) -> builtins.list[Member]:
        """Every member of the cluster, as a list of :class:`Member` (linearizable: it includes
        changes that completed before the call). ``serializable=True`` (Go's
        ``WithSerializable``): the list the member answering holds, which needs no leader
        (an etcd that lost its quorum still answers it) but may miss a change in progress.
        Raises the client's errors (:class:`ConnectionUnavailableError`,
        :class:`EtcdTimeoutError`, ...)."""
        linearizable = not check_bool(serializable, "serializable")
        self._core.check_open()
        conn = self._core.conn
        request = rpc.MemberListRequest(linearizable=linearizable)
        for _ in range(3):
            barrier = None
            if linearizable:
                # etcd 3.4 has no linearizable member list (it drops the field and answers
                # from the member's own list, stale when that member is behind): a request
                # through raft first, which the member answers once it applied every entry
                # before it, changes of the membership included. An alarm read is one (on
                # every etcd, for any user); the list must then come from the same member.
                barrier = await conn.call(
                    "list members (a raft round first)", "maintenance", "Alarm", _ALARMS,
                    idempotent=True,
                )  # fmt: skip
            resp = await conn.call(
                "list members", "cluster", "MemberList", request, idempotent=True
            )
            if barrier is None or resp.header.member_id == barrier.header.member_id:
                break
            # (another member answered the list: the client failed over in between)
        return [_member_of(m) for m in resp.members]

    async def add(self, peer_urls: str | Sequence[str], *, learner: bool = False) -> Member:
        """Add a member that will listen for peers on ``peer_urls`` (a URL such as
        ``"http://10.0.0.4:2380"`` or a list of them) and return it (its ``name`` and
        ``client_urls`` are empty until it starts). ``learner=True`` adds a non-voting learner.

        The new member is known to the cluster at once; start its etcd with
        ``--initial-cluster`` listing every member and ``--initial-cluster-state existing``.
        A voting member that does not start counts against the quorum. etcd refuses a peer
        URL that is already in use (:class:`ServerError`) and, with strict reconfiguration
        checks, a voting member the quorum could not survive."""
        urls = _peer_urls(peer_urls)
        if not isinstance(learner, bool):
            raise TypeError(f"learner must be True or False, got {learner!r:.40}")
        self._core.check_open()
        want = sorted(urls)
        found: Member | None = None  # the member the list showed, when it was looked up

        def added(members: builtins.list[Member]) -> bool:
            nonlocal found
            found = next((m for m in members if sorted(m.peer_urls) == want), None)
            return found is not None

        resp = await self._change(
            "add member",
            "MemberAdd",
            rpc.MemberAddRequest(peerURLs=urls, isLearner=learner),
            added,
            adding=True,
        )
        if resp is not None:
            return _member_of(resp.member)
        assert found is not None  # (None means the list showed it: see _change)
        return found

    async def remove(self, member_id: int) -> None:
        """Remove the member ``member_id`` (an int, :attr:`Member.id`) from the cluster; its
        etcd process stops serving. An unknown id raises :class:`ServerError` ("member not
        found"); etcd refuses to remove a member when the rest would lose the quorum."""
        mid = _member_id(member_id)
        self._core.check_open()
        await self._change(
            "remove member",
            "MemberRemove",
            rpc.MemberRemoveRequest(ID=mid),
            lambda members: all(m.id != mid for m in members),
        )

    async def update(self, member_id: int, peer_urls: str | Sequence[str]) -> None:
        """Set the peer URLs of member ``member_id`` to ``peer_urls`` (a URL or a list); the
        member itself must then listen there. An unknown id raises :class:`ServerError`.

        Not on a learner with etcd before the fix of etcd issue 21694 (3.5.1 and 3.4 among
        them): etcd then forgets that the member is a learner. Its member list shows a voter
        that raft still treats as a learner, which can never be promoted, and whose absence
        makes etcd refuse further changes ("unhealthy cluster"). When that happens this logs
        a warning (``etcdkit.admin``); the way out is to remove the member and add it again."""
        mid = _member_id(member_id)
        urls = _peer_urls(peer_urls)
        self._core.check_open()
        want = sorted(urls)
        await self._change(
            "update member",
            "MemberUpdate",
            rpc.MemberUpdateRequest(ID=mid, peerURLs=urls),
            lambda members: any(m.id == mid and sorted(m.peer_urls) == want for m in members),
            learner=mid,
        )

    async def promote(self, member_id: int) -> None:
        """Make the learner ``member_id`` a voting member. etcd refuses (:class:`ServerError`)
        while the learner has not caught up with the leader's log ("can only promote a learner
        member which is in sync with leader": try again a little later), and for a member
        that is not a learner."""
        mid = _member_id(member_id)
        self._core.check_open()
        await self._change(
            "promote member",
            "MemberPromote",
            rpc.MemberPromoteRequest(ID=mid),
            lambda members: any(m.id == mid and not m.is_learner for m in members),
        )

    async def _change(
        self,
        what: str,
        method: str,
        request: Any,
        applied: Callable[[builtins.list[Member]], bool],
        *,
        learner: int | None = None,
        adding: bool = False,
    ) -> Any:
        """Make one membership change; its response, or None when it was found applied in the
        member list after a send that got no answer (see the class docstring). ``learner``: a
        member whose learner status etcd may forget (see :meth:`update`); checked before and
        after, with this client's other changes kept out meanwhile. ``adding``: see
        :meth:`_send`."""
        conn = self._core.conn
        loop = asyncio.get_running_loop()
        deadline = None if conn.timeout is None else loop.time() + conn.timeout
        try:
            async with asyncio.timeout_at(deadline):
                await self._changing.acquire()  # (the wait counts against the timeout)
        except TimeoutError:
            raise EtcdTimeoutError(
                f"{what}: waited {conn.timeout} s for this client's other membership changes"
            ) from None
        try:
            was_learner = learner is not None and any(
                m.id == learner and m.is_learner for m in await self.list()
            )
            resp = await self._send(what, method, request, applied, deadline, adding)
            if was_learner and any(m.id == learner and not m.is_learner for m in await self.list()):
                log.warning(
                    "etcd forgot that member %x is a learner when its peer URLs were updated "
                    "(etcd issue 21694, fixed in later 3.5 and 3.6 releases): its member list "
                    "now shows a voter that raft still treats as a learner, which cannot be "
                    "promoted. Remove the member and add it again as a learner.",
                    learner,
                )
            return resp
        finally:
            self._changing.release()

    async def _send(
        self,
        what: str,
        method: str,
        request: Any,
        applied: Callable[[builtins.list[Member]], bool],
        deadline: float | None,
        adding: bool,
    ) -> Any:
        """Send the change until it is answered, or found applied (None), by ``deadline``.

        ``adding`` (a MemberAdd): etcd derives the new member's id from its peer URLs and the
        current second, and refuses the id of a removed member ("member not found", at apply:
        nothing was added). The same peer URLs added again within the second they were removed
        in hit that, whichever send etcd answers so (a first send's answer may come after the
        wait for it ended); sent again a second later, the id is new (up to NEW_ID_TRIES
        times)."""
        conn = self._core.conn
        loop = asyncio.get_running_loop()
        wait = CHANGE_FIRST_WAIT
        sends = new_ids = 0
        while True:
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                raise EtcdTimeoutError(
                    f"{what}: etcd did not apply it within {conn.timeout} s (sent {sends} "
                    f"times; at {conn.where})"
                )
            bound = wait if left is None else min(wait, left)
            sends += 1
            try:
                async with asyncio.timeout(bound) as attempt:
                    return await conn.call(what, "cluster", method, request, idempotent=False)
            except TimeoutError:
                if not attempt.expired():
                    raise  # the connection's own (EtcdTimeoutError)
            except ServerError as exc:
                if adding and new_ids < NEW_ID_TRIES and "member not found" in str(exc):
                    # This send added nothing; an earlier one (whose answer was not waited
                    # for) may have. Else the same second's id was sent again: wait for a new one.
                    if sends > 1 and applied(await self.list()):
                        return None
                    left = None if deadline is None else deadline - loop.time()
                    if left is None or left > NEW_ID_WAIT:
                        new_ids += 1
                        await asyncio.sleep(NEW_ID_WAIT)
                        wait = CHANGE_FIRST_WAIT
                        continue
                if sends == 1 or not applied(await self.list()):
                    raise
                return None  # refused as done: an earlier send was applied meanwhile
            if applied(await self.list()):
                return None
            wait = min(2 * wait, CHANGE_MAX_WAIT)


# -- Maintenance service --------------------------------------------------------------------------


class Maintenance:
    """Per-member maintenance (etcd's Maintenance service; ``etcdctl endpoint status``,
    ``alarm``, ``defrag``, ``snapshot save``, ``move-leader``)."""

    def __init__(self, core: Core) -> None:
        self._core = core

    def __repr__(self) -> str:
        return f"<Maintenance of {self._core.where}>"

    async def status(self, endpoint: str | None = None) -> Status:
        """The :class:`Status` of the member at ``endpoint`` (one of the client's endpoints,
        "host:port" or URL; another is a ``ValueError``), or of the preferred endpoint's member
        for ``None``. Raises the client's errors when that member does not answer (no
        failover to another member when ``endpoint`` is given)."""
        ch = _channel(self._core, endpoint)
        self._core.check_open()
        resp = await self._core.conn.call(
            "status", "maintenance", "Status", rpc.StatusRequest(), idempotent=True, channel=ch
        )
        return Status(
            version=str(resp.version),
            db_size=int(resp.dbSize),
            db_size_in_use=int(resp.dbSizeInUse),
            leader=int(resp.leader),
            raft_index=int(resp.raftIndex),
            raft_term=int(resp.raftTerm),
            raft_applied_index=int(resp.raftAppliedIndex),
            errors=builtins.list(resp.errors),
            is_learner=bool(resp.isLearner),
            header=header_of(resp.header),
        )

    async def alarms(self) -> list[Alarm]:
        """The active alarms of every member, as a list of :class:`Alarm` (empty when all is
        well)."""
        self._core.check_open()
        resp = await self._core.conn.call(
            "list alarms",
            "maintenance",
            "Alarm",
            _ALARMS,
            idempotent=True,
        )
        return [Alarm(int(a.memberID), _alarm_kind(a.alarm)) for a in resp.alarms]

    async def activate(self, alarm: Alarm) -> list[Alarm]:
        """Raise ``alarm`` (e.g. ``Alarm(member_id, "NOSPACE")``) by hand, as etcd does when a
        member's backend is full: etcd then refuses writes (only reads and deletes work) until
        it is disarmed. For tests of your alarm handling. Returns the alarms etcd reports
        raised by this call."""
        checked = _alarm(alarm)
        self._core.check_open()
        resp = await self._core.conn.call(
            "activate alarm",
            "maintenance",
            "Alarm",
            rpc.AlarmRequest(
                action=rpc.AlarmRequest.ACTIVATE,
                memberID=checked.member_id,
                alarm=rpc.AlarmType.Value(checked.kind),
            ),
            idempotent=True,  # the same alarm twice is the same alarm
        )
        return [Alarm(int(a.memberID), _alarm_kind(a.alarm)) for a in resp.alarms]

    async def disarm(self, alarm: Alarm) -> None:
        """Clear ``alarm`` (an :class:`Alarm` from :meth:`alarms`). For ``NOSPACE``, first free
        space (delete, :meth:`AsyncClient.compact`, :meth:`defragment` every member), or etcd
        raises it again at the next write. Disarming an alarm that is not active does
        nothing."""
        checked = _alarm(alarm)
        self._core.check_open()
        await self._core.conn.call(
            "disarm alarm",
            "maintenance",
            "Alarm",
            rpc.AlarmRequest(
                action=rpc.AlarmRequest.DEACTIVATE,
                memberID=checked.member_id,
                alarm=rpc.AlarmType.Value(checked.kind),
            ),
            idempotent=True,  # the same disarm twice is the same disarm
        )

    async def defragment(self, endpoint: str) -> None:
        """Defragment the backend of the member at ``endpoint`` (one of the client's
        endpoints), giving the space freed by compaction back to the file system. The member
        answers nothing else meanwhile (do one member at a time); a large backend may need a
        client ``timeout`` longer than the default (:class:`EtcdTimeoutError`)."""
        ch = self._core.conn.channel_at(endpoint)
        self._core.check_open()
        await self._core.conn.call(
            "defragment",
            "maintenance",
            "Defragment",
            rpc.DefragmentRequest(),
            idempotent=True,
            channel=ch,
        )

    async def hash_kv(self, endpoint: str, revision: int = 0) -> HashKV:
        """The :class:`HashKV` of the key-value store of the member at ``endpoint`` (one of the
        client's endpoints) up to ``revision`` (0: the latest). Compare members at one
        revision to check that they agree. A compacted ``revision`` raises
        :class:`CompactedError`; a future one :class:`InvalidArgumentError`."""
        rev = check_int64(revision, "revision", hint=" (0 = latest)")
        ch = self._core.conn.channel_at(endpoint)
        self._core.check_open()
        resp = await self._core.conn.call(
            "hash kv",
            "maintenance",
            "HashKV",
            rpc.HashKVRequest(revision=rev),
            idempotent=True,
            channel=ch,
        )
        return HashKV(int(resp.hash), int(resp.compact_revision), header_of(resp.header))

    async def hash(self, endpoint: str) -> int:
        """etcd's Hash of the member at ``endpoint`` (one of the client's endpoints): of its
        whole backend, keys, leases and etcd's own records, as it is now. etcd calls it a
        testing aid (it takes no lock against writes in flight): to check that members agree,
        compare :meth:`hash_kv` at one revision."""
        ch = self._core.conn.channel_at(endpoint)
        self._core.check_open()
        resp = await self._core.conn.call(
            "hash", "maintenance", "Hash", rpc.HashRequest(), idempotent=True, channel=ch
        )
        return int(resp.hash)

    async def move_leader(self, member_id: int) -> None:
        """Hand the leadership to the voting member ``member_id``; returns once it leads.

        The request must reach the current leader: it is found from a member's status and the
        member list, and its endpoint must be among the client's (else
        :class:`ConnectionUnavailableError` says so). A learner or unknown ``member_id`` raises
        :class:`ServerError`, as does a leader change meanwhile (try again)."""
        target = _member_id(member_id)
        self._core.check_open()
        status = await self.status()
        leader = status.leader
        if leader == 0:
            raise ConnectionUnavailableError(
                f"move leader: the cluster has no leader now ({self._core.where}); try again"
            )
        ch: Channel | None = None
        if status.header.member_id != leader:
            ch = await self._leader_channel(leader)
        await self._core.conn.call(
            "move leader",
            "maintenance",
            "MoveLeader",
            rpc.MoveLeaderRequest(targetID=target),
            idempotent=False,
            channel=ch,
        )

    async def _leader_channel(self, leader: int) -> Channel:
        members = await Members(self._core).list()
        urls = next((m.client_urls for m in members if m.id == leader), [])
        for url in urls:
            with contextlib.suppress(ValueError):
                return self._core.conn.channel_at(url)
        raise ConnectionUnavailableError(
            f"move leader: the leader (member {leader:x}, client URLs {urls}) is not among "
            f"this client's endpoints ({self._core.where}); create a client with its endpoint"
        )

    async def snapshot(self, path: str | os.PathLike[str], *, endpoint: str | None = None) -> int:
        """Stream the backend of a member (the preferred endpoint's, or ``endpoint``'s) into
        the file ``path``; returns the number of bytes written.

        The file is what ``etcdctl snapshot save`` writes (the backend and its sha256), for
        ``etcdutl snapshot status`` and ``etcdutl snapshot restore``. It is written to a
        temporary file beside ``path`` and renamed over ``path`` only once complete and
        checked against its sha256: a failed or cancelled snapshot leaves no file behind.
        No deadline (a large backend takes as long as it takes); a dead peer ends it with
        :class:`ConnectionUnavailableError`, closing the client with :class:`ClosedError`,
        a corrupt stream with :class:`ServerError`; file system errors are ``OSError``."""
        if not isinstance(path, str | os.PathLike):
            raise TypeError(f"path must be a str or a path, got {type(path).__name__}")
        import tempfile  # (here: tempfile, shutil and hashlib weigh 1.3 MB, for snapshots only)

        if not os.fspath(path):
            raise ValueError("path must name the snapshot's file, got ''")
        target = Path(path)
        if await asyncio.to_thread(target.is_dir):  # (checked before etcd streams anything)
            raise IsADirectoryError(
                errno.EISDIR, "the snapshot's path is a directory: name a file", str(path)
            )
        ch = _channel(self._core, endpoint)
        self._core.check_open()
        fd, name = await asyncio.to_thread(
            tempfile.mkstemp, dir=target.parent, prefix=f".{target.name}.", suffix=".part"
        )
        part = Path(name)
        done = False
        try:
            with os.fdopen(fd, "wb") as out:
                written = await self._stream_into(out, ch)
                await asyncio.to_thread(_sync_file, out)
            await asyncio.to_thread(_publish, part, target)
            done = True
            return written
        finally:
            if not done:
                await asyncio.to_thread(_discard, part)

    async def _stream_into(self, out: IO[bytes], ch: Channel | None) -> int:
        what = "snapshot" if ch is None else f"snapshot of {ch.endpoint}"
        import hashlib

        digest = hashlib.sha256()
        pending = bytearray()
        last: bytes | None = None  # the newest blob: the sha256 of the others, once all came
        written = 0
        stream = self._core.conn.server_stream(
            what, "maintenance", "Snapshot", rpc.SnapshotRequest(), channel=ch
        )
        async with contextlib.aclosing(stream):
            async for resp in stream:
                if last is not None:
                    digest.update(last)
                last = bytes(resp.blob)
                pending += last
                if len(pending) >= SNAPSHOT_FLUSH:
                    chunk, pending = pending, bytearray()
                    await asyncio.to_thread(out.write, chunk)
                    written += len(chunk)
        if last is None or len(last) != _SHA256_SIZE or digest.digest() != last:
            raise ServerError(
                f"{what}: the stream from etcd ended incomplete or corrupt (its sha256 does not "
                "match); try again"
            )
        await asyncio.to_thread(out.write, pending)
        return written + len(pending)


def _discard(part: Path) -> None:
    with contextlib.suppress(OSError):
        part.unlink()


def _sync_file(out: IO[bytes]) -> None:
    out.flush()
    os.fsync(out.fileno())


def _publish(part: Path, target: Path) -> None:
    """Rename the finished file into place, durably (the directory entry too)."""
    os.replace(part, target)
    with contextlib.suppress(OSError):  # not every file system lets a directory be fsynced
        fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
