"""``etcdkit.compat.etcd3``: python-etcd3 0.12's public API on etcdkit's threaded Client, against
real etcd, written from python-etcd3's documented behaviour: every call, and every error mapped
from etcdkit's (a compacted revision, a stopped server, a refused request, a full backend).
"""

from __future__ import annotations

import asyncio
import gc
import io
import queue
import socket
import subprocess
import sys
import threading
import time
import types
import weakref
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest
from aetcd import rpc

import etcdkit
import etcdkit.compat.etcd3 as etcd3
from _helpers import compat
from etcdkit.compat.etcd3 import exceptions
from etcdkit.compat.etcd3.events import DeleteEvent, PutEvent
from etcdkit.compat.etcd3.results import ResponseOp
from etcdkit.testing import HOST, EtcdCluster, EtcdServer, free_port

T = TypeVar("T")
Etcd3 = etcd3.Etcd3Client


def compat_at(port: int, **kwargs: Any) -> Etcd3:
    return etcd3.client(HOST, port, **kwargs)


def take(items: Iterator[T], n: int, cancel: Callable[[], None], bound: float = 10.0) -> list[T]:
    """The next ``n`` items; the watch is cancelled after ``bound`` seconds (a hung test ends)."""
    timer = threading.Timer(bound, cancel)
    timer.start()
    try:
        out = []
        for item in items:
            out.append(item)
            if len(out) == n:
                break
        return out
    finally:
        timer.cancel()
        timer.join()


# -- the module's shape ---------------------------------------------------------------------------


def test_the_submodules_and_names_of_python_etcd3_resolve() -> None:
    for name in ("exceptions", "members", "watch", "events", "leases", "locks", "transactions"):
        assert getattr(etcd3, name).__name__ == f"etcdkit.compat.etcd3.{name}"
    assert etcd3.watch.WatchTimedOut is etcd3.exceptions.WatchTimedOut
    assert etcd3.Etcd3Exception is exceptions.Etcd3Exception
    assert etcd3.members.Member is etcd3.Member
    assert etcd3.leases.Lease is etcd3.Lease
    assert etcd3.locks.Lock is etcd3.Lock
    assert issubclass(etcd3.events.PutEvent, etcd3.events.Event)
    for cls in (
        exceptions.ConnectionFailedError,
        exceptions.ConnectionTimeoutError,
        exceptions.InternalServerError,
        exceptions.PreconditionFailedError,
        exceptions.RevisionCompactedError,
        exceptions.WatchTimedOut,
    ):
        assert issubclass(cls, exceptions.Etcd3Exception)
    assert issubclass(exceptions.WatchTimedOut, TimeoutError)
    assert etcd3.client is not None
    assert etcd3.Transactions is not None


_NEVER_CLOSED = """
import sys, etcdkit.compat.etcd3 as etcd3
host, port = sys.argv[1], int(sys.argv[2])
etcd = etcd3.client(host, port, timeout=5)  # module-level, never closed: python-etcd3's way
etcd.put("/never-closed/k", "v")
print(etcd.get("/never-closed/k")[0].decode(), flush=True)
if sys.argv[3] == "busy":
    etcd.add_watch_prefix_callback("/never-closed/", lambda response: None)
    etcd.lock("never-closed", ttl=5).acquire()
"""


@pytest.mark.parametrize("use", ["kv", "busy"])
def test_a_script_that_never_closes_its_client_ends(etcd_server: EtcdServer, use: str) -> None:
    """python-etcd3's usual script: a module-level client, used, never closed, the script
    ends. It must end (the client's close, run by ``__del__`` while the interpreter shuts
    down, once waited for the client's loop thread, which no longer runs then: for ever)."""
    url = urlsplit(etcd_server.endpoint)
    proc = subprocess.run(
        [sys.executable, "-c", _NEVER_CLOSED, str(url.hostname), str(url.port), use],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (proc.returncode, proc.stdout) == (0, "v\n"), proc.stderr[-2000:]


def test_each_etcdkit_error_maps_to_its_python_etcd3_exception() -> None:
    compacted = exceptions.translate(etcdkit.CompactedError("gone", compact_revision=7))
    assert isinstance(compacted, exceptions.RevisionCompactedError)
    assert compacted.compacted_revision == 7
    cases: list[tuple[etcdkit.EtcdkitError, type[exceptions.Etcd3Exception]]] = [
        (etcdkit.ConnectionUnavailableError("down"), exceptions.ConnectionFailedError),
        (etcdkit.EtcdTimeoutError("slow"), exceptions.ConnectionTimeoutError),
        (etcdkit.ServerError("x failed: INTERNAL: boom"), exceptions.InternalServerError),
        (
            etcdkit.ServerError("x failed: FAILED_PRECONDITION: exists"),
            exceptions.PreconditionFailedError,
        ),
        (etcdkit.LeaseNotFoundError("no lease"), exceptions.Etcd3Exception),
        (etcdkit.ClosedError("closed"), exceptions.Etcd3Exception),
    ]
    for err, cls in cases:
        assert type(exceptions.translate(err)) is cls, err
        assert str(err) in str(exceptions.translate(err))


def test_credentials_are_checked_by_client(
    etcd_server_factory: Callable[..., EtcdServer], no_leaked_threads: None
) -> None:
    """As python-etcd3's ``client()``, which authenticates before it returns: bad credentials
    fail there (an Etcd3Exception, the etcdkit AuthError as its cause), not at a first call."""
    server = etcd_server_factory()
    with etcdkit.Client(server.endpoint) as admin:
        admin.auth.user_add("root", "root-pw")
        admin.auth.role_add("root")
        admin.auth.user_grant_role("root", "root")
        admin.auth.enable()
    with pytest.raises(exceptions.Etcd3Exception) as info:
        compat(server, user="root", password="wrong")
    assert isinstance(info.value.__cause__, etcdkit.AuthError)
    with compat(server, user="root", password="root-pw") as e3:
        e3.put("/auth/k", "v")
        assert e3.get("/auth/k")[0] == b"v"


def test_bad_arguments_fail_before_any_io() -> None:
    with pytest.raises(ValueError, match="ca_cert"):  # python-etcd3's check: with a ca_cert
        etcd3.client(port=free_port(), ca_cert="ca.pem", cert_key="k.pem")
    with pytest.raises(ValueError, match="ca_cert"):
        etcd3.client(port=free_port(), ca_cert="ca.pem", cert_cert="c.pem")
    with pytest.raises(ValueError, match="user and password"):
        etcd3.client(port=free_port(), user="root")
    with pytest.raises(ValueError, match="ttl"):
        etcd3.Lock("x", ttl=0)
    with pytest.raises(ValueError, match="no comparison"):
        etcd3.transactions.Value("/k").to_compare()
    with pytest.raises(TypeError, match="needs an int"):
        (etcd3.transactions.Version("/k") == "many").to_compare()
    with pytest.raises(ValueError, match="filters"):
        etcd3.watch.watch_filters([7])


# -- reads and writes -----------------------------------------------------------------------------


def test_put_get_and_the_metadata(e3: Etcd3, etcd_prefix: str) -> None:
    k = etcd_prefix + "a"
    resp = e3.put(k, "v1")
    value, meta = e3.get(k)
    assert value == b"v1"
    assert meta is not None
    assert (meta.key, meta.version, meta.lease_id) == (k.encode(), 1, 0)
    assert meta.create_revision == meta.mod_revision == resp.header.revision
    assert meta.response_header is not None
    assert meta.response_header.revision >= meta.mod_revision
    assert e3.get(etcd_prefix + "missing") == (None, None)

    again = e3.put(k, b"v2", prev_kv=True)
    assert again.prev_kv.value == b"v1"
    assert again.header.revision > resp.header.revision
    assert e3.put(etcd_prefix + "new", "x", prev_kv=True).prev_kv.key == b""  # empty, as etcd's
    assert e3.get(k, serializable=True)[0] == b"v2"

    lease = e3.lease(30)
    e3.put(k, "v3", lease=lease)
    assert e3.get(k)[1].lease_id == lease.id  # type: ignore[union-attr]
    e3.put(k, "v4", lease=lease.id)
    lease.revoke()
    assert e3.get(k) == (None, None)

    with pytest.raises(TypeError):
        e3.put(1, "v")  # type: ignore[arg-type]


def test_listings_sort_and_keys_only(e3: Etcd3, etcd_prefix: str) -> None:
    for name, value in (("b", "1"), ("a", "3"), ("c", "2")):
        e3.put(etcd_prefix + name, value)
    keys = [m.key for _, m in e3.get_prefix(etcd_prefix)]
    assert keys == [(etcd_prefix + n).encode() for n in "abc"]
    by_value = [v for v, _ in e3.get_prefix(etcd_prefix, sort_order="descend", sort_target="value")]
    assert by_value == [b"3", b"2", b"1"]
    newest = [
        m.key for _, m in e3.get_prefix(etcd_prefix, sort_order="descend", sort_target="create")
    ]
    assert newest[0] == (etcd_prefix + "c").encode()
    assert [v for v, _ in e3.get_prefix(etcd_prefix, keys_only=True)] == [b"", b"", b""]
    assert len(list(e3.get_prefix(etcd_prefix, limit=2))) == 2
    assert e3.get_prefix_response(etcd_prefix, limit=1).count == 3

    ranged = [m.key for _, m in e3.get_range(etcd_prefix + "a", etcd_prefix + "c")]
    assert ranged == [(etcd_prefix + "a").encode(), (etcd_prefix + "b").encode()]
    assert e3.get_range_response(etcd_prefix + "a", etcd_prefix + "z").count == 3
    everything = {m.key for _, m in e3.get_all()}
    assert {(etcd_prefix + n).encode() for n in "abc"} <= everything
    assert e3.get_all_response(keys_only=True).count >= 3
    # python-etcd3 takes these by position too
    by_value_desc = e3.get_range_response(etcd_prefix + "a", etcd_prefix + "z", "descend", "value")
    assert [kv.value for kv in by_value_desc.kvs] == [b"3", b"2", b"1"]
    newest_first = e3.get_all_response("descend", "create", True)
    mine = [kv for kv in newest_first.kvs if kv.key.startswith(etcd_prefix.encode())]
    assert [kv.key for kv in mine] == [(etcd_prefix + n).encode() for n in "cab"]
    assert {kv.value for kv in mine} == {b""}

    # generators of (value, metadata), as the issue and python-etcd3 say (they were list
    # iterators: no close(), no send()); the keys are read at the call all the same
    for listing in (
        e3.get_prefix(etcd_prefix),
        e3.get_range(etcd_prefix + "a", etcd_prefix + "c"),
        e3.get_all(),
    ):
        assert isinstance(listing, types.GeneratorType)
        first = next(listing)
        listing.close()
        assert isinstance(first[0], bytes)
    with pytest.raises(TypeError, match="range_end"):
        e3.get_prefix(etcd_prefix, range_end=b"x")
    with pytest.raises(ValueError, match="sort_order"):
        e3.get_prefix(etcd_prefix, sort_order="up")
    with pytest.raises(TypeError, match="unexpected"):
        e3.get_range(etcd_prefix, etcd_prefix + "z", colour="red")


def test_conditional_writes_and_deletes(e3: Etcd3, etcd_prefix: str) -> None:
    k = etcd_prefix + "k"
    assert e3.put_if_not_exists(k, "first") is True
    assert e3.put_if_not_exists(k, "second") is False
    assert e3.replace(k, "nope", "x") is False
    assert e3.replace(k, "first", b"third") is True
    assert e3.get(k)[0] == b"third"

    assert e3.delete(k) is True
    assert e3.delete(k) is False
    e3.put(k, "v")
    resp = e3.delete(k, prev_kv=True, return_response=True)
    assert not isinstance(resp, bool)
    assert resp.deleted == 1
    assert resp.prev_kvs[0].value == b"v"
    assert resp.header is not None

    for i in range(3):
        e3.put(f"{etcd_prefix}p/{i}", "v")
    assert e3.delete_prefix(etcd_prefix + "p/").deleted == 3
    assert list(e3.get_prefix(etcd_prefix + "p/")) == []


def test_transactions(e3: Etcd3, etcd_prefix: str) -> None:
    k, other = etcd_prefix + "k", etcd_prefix + "other"
    rev = e3.put(k, "v1").header.revision
    e3.put(other, "o")
    t = e3.transactions
    ok, responses = e3.transaction(
        compare=[
            t.value(k) == "v1",
            t.version(k) > 0,
            t.create(k) == rev,
            t.mod(k) < rev + 1,
            t.value(other) != "x",
            t.lease(k) == 0,
        ],
        success=[t.put(k, "v2", prev_kv=True), t.get(k), t.delete(other, prev_kv=True)],
        failure=[t.put(k, "failure")],
    )
    assert ok is True
    put, got, deleted = responses
    assert put.response_put.prev_kv.value == b"v1"
    assert put.WhichOneof("response") == "response_put"
    assert got[0][0] == b"v2"
    assert got[0][1].key == k.encode()
    assert deleted.response_delete_range.deleted == 1
    assert deleted.WhichOneof("response") == "response_delete_range"

    ok, responses = e3.transaction([t.value(k) == "v1"], [t.put(k, "no")], [t.get(k)])
    assert ok is False
    assert responses[0][0][0] == b"v2"
    ranged_ok, (listed,) = e3.transaction(
        [t.version(etcd_prefix + "a", etcd_prefix + "z") > 0],
        [t.get(etcd_prefix, etcd_prefix + "z")],
    )
    assert ranged_ok
    assert len(listed) == 1

    with pytest.raises(TypeError):
        e3.transaction(["not a compare"], [], [])  # type: ignore[list-item]
    assert e3.get(k)[0] == b"v2"  # nothing of the refused one was sent

    other = etcd_prefix + "nested"
    ok, (nested,) = e3.transaction(
        [], [t.txn([t.value(k) == "v2"], [t.put(other, "x"), t.get(k)], [t.get(other)])], []
    )
    assert ok
    assert nested.WhichOneof("response") == "response_txn"
    assert nested.response_txn.succeeded is True
    put, got = nested.response_txn.responses
    assert put.WhichOneof("response") == "response_put"
    assert got.WhichOneof("response") == "response_range"  # a ResponseOp, as python-etcd3's
    assert got.response_range.kvs[0].value == b"v2"
    assert e3.get(other)[0] == b"x"


# -- watches --------------------------------------------------------------------------------------


def test_watch_iterators_and_events(e3: Etcd3, etcd_prefix: str) -> None:
    k = etcd_prefix + "w"
    events, cancel = e3.watch(k, prev_kv=True)
    e3.put(k, "1")
    e3.put(k, "2")
    e3.delete(k)
    got = take(events, 3, cancel)
    assert [type(e) for e in got] == [PutEvent, PutEvent, DeleteEvent]
    assert [e.value for e in got] == [b"1", b"2", b""]
    assert got[1].prev_value == b"1"
    assert got[2].prev_value == b"2"
    assert got[0].key == k.encode()
    assert got[0].version == 1
    assert got[0].prev_key == b""
    assert got[2].mod_revision > got[1].mod_revision == got[1].create_revision + 1
    assert "PutEvent" in str(got[0])
    assert got[0].lease == 0
    cancel()
    assert list(events) == []  # cancel() ends the iteration

    start = e3.put(etcd_prefix + "d/x", "a").header.revision
    e3.put(etcd_prefix + "d/y", "b")
    replay, stop = e3.watch_prefix(etcd_prefix + "d/", start_revision=start)
    replayed = [e.key for e in take(replay, 2, stop)]
    assert replayed == [(etcd_prefix + "d/x").encode(), (etcd_prefix + "d/y").encode()]
    stop()

    deletes_only, stop = e3.watch_prefix(etcd_prefix + "d/", filters=[0])  # NOPUT
    e3.put(etcd_prefix + "d/z", "c")
    e3.delete(etcd_prefix + "d/x")
    (ev,) = take(deletes_only, 1, stop)
    assert isinstance(ev, DeleteEvent)
    assert ev.key == (etcd_prefix + "d/x").encode()
    stop()

    responses, stop = e3.watch_prefix_response(etcd_prefix + "d/")
    rev = e3.delete_prefix(etcd_prefix + "d/").header
    (resp,) = take(responses, 1, stop)
    assert rev is not None
    assert resp.header.revision >= rev.revision
    assert {e.key for e in resp.events} == {
        (etcd_prefix + "d/y").encode(),
        (etcd_prefix + "d/z").encode(),
    }
    stop()
    one, stop = e3.watch_response(k)
    e3.put(k, "r")
    assert take(one, 1, stop)[0].events[0].value == b"r"
    stop()


def test_watch_once_and_its_timeout(e3: Etcd3, etcd_prefix: str) -> None:
    k = etcd_prefix + "once"
    threading.Timer(0.2, e3.put, args=(k, "v")).start()
    event = e3.watch_once(k, timeout=10)
    assert isinstance(event, PutEvent)
    assert event.value == b"v"
    threading.Timer(0.2, e3.delete, args=(k,)).start()
    assert isinstance(e3.watch_prefix_once(etcd_prefix, timeout=10), DeleteEvent)
    threading.Timer(0.2, e3.put, args=(k, "w")).start()
    assert e3.watch_once_response(k, timeout=10).events[0].value == b"w"
    threading.Timer(0.2, e3.put, args=(k, "x")).start()
    assert e3.watch_prefix_once_response(etcd_prefix, timeout=10).events[0].value == b"x"

    began = time.monotonic()
    with pytest.raises(etcd3.watch.WatchTimedOut):
        e3.watch_once(k, timeout=0.3)
    with pytest.raises(exceptions.WatchTimedOut):
        e3.watch_prefix_once(etcd_prefix, timeout=0.3)
    assert time.monotonic() - began < 5


def test_watch_callbacks(no_leaked_threads: None, e3: Etcd3, etcd_prefix: str) -> None:
    seen: queue.Queue[Any] = queue.Queue()
    k = etcd_prefix + "cb"
    one = e3.add_watch_callback(k, seen.put)
    many = e3.add_watch_prefix_callback(etcd_prefix, lambda r: seen.put(("prefix", r)))

    def failing(_: object) -> None:
        raise RuntimeError("a callback that fails is logged, and the watch goes on")

    bad = e3.add_watch_callback(k, failing)
    e3.put(k, "1")
    got = [seen.get(timeout=10), seen.get(timeout=10)]
    direct = next(r for r in got if r[0] != "prefix")
    assert direct.events[0].value == b"1"
    assert any(r[0] == "prefix" and r[1].events[0].key == k.encode() for r in got)

    e3.cancel_watch(one)
    e3.cancel_watch(bad)
    e3.cancel_watch(one)  # again: nothing
    e3.put(k, "2")
    prefix_only = seen.get(timeout=10)
    assert prefix_only[0] == "prefix"
    assert prefix_only[1].events[0].value == b"2"
    e3.cancel_watch(many)
    e3.put(k, "3")
    time.sleep(0.2)
    assert seen.empty()


@pytest.mark.parametrize("where", ["outside", "inside a callback"])
def test_close_hands_each_callback_one_last_exception(
    no_leaked_threads: None, etcd_server: EtcdServer, e3: Etcd3, etcd_prefix: str, where: str
) -> None:
    """As python-etcd3's callbacks were handed their stream's error when the client closed:
    each callback watch not cancelled gets one Etcd3Exception after its responses, and
    nothing after it; a cancelled one gets nothing. (They got nothing at all.)"""
    client = compat(etcd_server)
    k = etcd_prefix + "w/k"
    calls: dict[str, list[Any]] = {"a": [], "b": [], "cancelled": []}
    done = threading.Event()

    def callback(name: str) -> Callable[[Any], None]:
        def on(arg: Any) -> None:
            calls[name].append(arg)

        return on

    def closing(arg: Any) -> None:
        if not isinstance(arg, Exception):
            client.close()
            done.set()

    client.add_watch_callback(k, callback("a"))
    client.add_watch_prefix_callback(etcd_prefix + "w/", callback("b"))
    client.cancel_watch(client.add_watch_callback(k, callback("cancelled")))
    client.add_watch_callback(etcd_prefix + "closer", closing)  # (b does not see it)
    e3.put(k, "1")
    deadline = time.monotonic() + 10
    while not (calls["a"] and calls["b"]) and time.monotonic() < deadline:
        time.sleep(0.01)
    if where == "outside":
        client.close()
    else:
        e3.put(etcd_prefix + "closer", "now")
        assert done.wait(10)
    deadline = time.monotonic() + 10
    while not all(c and isinstance(c[-1], Exception) for c in (calls["a"], calls["b"])):
        assert time.monotonic() < deadline, calls
        time.sleep(0.01)
    for name in ("a", "b"):
        first, last = calls[name]
        assert [e.value for e in first.events] == [b"1"]
        assert isinstance(last, exceptions.Etcd3Exception)
        assert "closed" in str(last)
    assert calls["cancelled"] == []
    time.sleep(0.2)
    assert [len(calls[n]) for n in ("a", "b")] == [2, 2]


def test_a_callback_watch_keeps_its_client_open_when_the_program_drops_it(
    no_leaked_threads: None, etcd_server: EtcdServer, e3: Etcd3, etcd_prefix: str
) -> None:
    # "Fire and forget": a function registers a callback watch and keeps no reference to the
    # client. python-etcd3 went on calling the callback; the client's collection closed it
    # (and its watches), silently.
    seen: queue.Queue[bytes] = queue.Queue()

    def register() -> weakref.ref[Etcd3]:
        client = compat(etcd_server)

        def on_response(response: Any) -> None:
            for ev in response.events:
                seen.put(ev.value)

        client.add_watch_prefix_callback(etcd_prefix + "forget/", on_response)
        return weakref.ref(client)

    ref = register()
    gc.collect()
    for value in ("1", "2", "3"):
        e3.put(etcd_prefix + "forget/a", value)
        assert seen.get(timeout=10) == value.encode()
    client = ref()
    assert client is not None, "the client went while its callback watch was on"
    client.close()


def test_a_closed_client_refuses_watches_with_a_python_etcd3_exception(
    etcd_server: EtcdServer,
) -> None:
    client = compat(etcd_server)
    client.close()
    calls: list[Callable[[], object]] = [
        lambda: client.watch("/k"),
        lambda: client.watch_prefix("/k"),
        lambda: client.watch_response("/k"),
        lambda: client.watch_once("/k", timeout=1),
        lambda: client.watch_prefix_once("/k", timeout=1),
        lambda: client.add_watch_callback("/k", print),
        lambda: client.add_watch_prefix_callback("/k", print),
    ]
    for call in calls:
        with pytest.raises(exceptions.Etcd3Exception):
            call()


def test_python_etcd3_argument_forms(e3: Etcd3, etcd_prefix: str) -> None:
    k = etcd_prefix + "a"
    e3.put(k, "1")
    e3.put(k + "b", "2")
    # an empty range end is no range end (etcd's reading of one): the one key
    assert [v for v, _ in e3.get_range(k, "")] == [b"1"]
    ok, responses = e3.transaction(compare=[], success=[e3.transactions.get(k, "")])
    assert [v for v, _ in responses[0]] == [b"1"]
    events, cancel = e3.watch(k, range_end="")
    e3.put(k + "b", "3")
    e3.put(k, "4")
    assert [ev.value for ev in take(events, 1, cancel)] == [b"4"]
    cancel()
    # any iterable of compares and operations, as python-etcd3 iterated them
    ok, _ = e3.transaction(
        compare=(c for c in [e3.transactions.value(k) == "4"]),
        success=(op for op in [e3.transactions.put(k, "5")]),
        failure=iter([]),
    )
    assert ok
    assert e3.get(k)[0] == b"5"
    with pytest.raises(TypeError, match="compare"):
        e3.transaction(compare="not compares")  # type: ignore[arg-type]


def test_missing_tls_files_raise_file_not_found_as_in_python_etcd3(tmp_path: Any) -> None:
    with pytest.raises(FileNotFoundError):
        etcd3.client(HOST, free_port(), ca_cert=str(tmp_path / "missing.pem"))


def test_a_callback_raising_cancelled_error_is_logged_and_the_watches_go_on(
    no_leaked_threads: None, e3: Etcd3, etcd_prefix: str
) -> None:
    seen: queue.Queue[Any] = queue.Queue()
    k = etcd_prefix + "cc"

    def cancelling(_: object) -> None:
        raise asyncio.CancelledError("a plain function's own, not a cancellation")

    bad = e3.add_watch_callback(k, cancelling)
    good = e3.add_watch_callback(k, seen.put)
    for value in ("1", "2"):
        e3.put(k, value)
        assert seen.get(timeout=10).events[0].value == value.encode()
    e3.cancel_watch(bad)
    e3.cancel_watch(good)


def test_a_watch_cancelled_by_another_callback_is_not_called_again(
    no_leaked_threads: None, e3: Etcd3, etcd_prefix: str
) -> None:
    """Callbacks run one at a time: B's next call may already wait while A's callback cancels
    B. Once that cancel_watch returned, B's callback is not called again (it was, once)."""
    k = etcd_prefix + "pair"
    ids: dict[str, int] = {}
    after = []
    cancelled = threading.Event()

    def on_b(_: object) -> None:
        if cancelled.is_set():
            after.append(1)
        time.sleep(0.002)  # (B's responses queue up behind A's callback)

    def on_a(r: Any) -> None:
        if isinstance(r, Exception) or cancelled.is_set():
            return
        if any(e.value == b"5" for e in r.events):
            e3.cancel_watch(ids["b"])
            cancelled.set()

    ids["b"] = e3.add_watch_callback(k, on_b)
    ids["a"] = e3.add_watch_callback(k, on_a)
    for i in range(40):
        e3.put(k, str(i))
    assert cancelled.wait(10)
    time.sleep(0.3)
    assert after == []
    e3.cancel_watch(ids["a"])


def test_concurrent_cancels_each_wait_for_the_running_callback(
    no_leaked_threads: None, e3: Etcd3, etcd_prefix: str
) -> None:
    """Two threads cancel one watch while its callback runs: neither returns before the
    callback finished (as one cancel_watch does), not only the first to cancel."""
    k = etcd_prefix + "k"
    entered, release, done = threading.Event(), threading.Event(), threading.Event()

    def callback(_: object) -> None:
        entered.set()
        release.wait(10)
        done.set()

    wid = e3.add_watch_callback(k, callback)
    e3.put(k, "v")
    assert entered.wait(10)
    early: list[str] = []

    def cancel() -> None:
        e3.cancel_watch(wid)
        if not done.is_set():
            early.append(threading.current_thread().name)

    threads = [threading.Thread(target=cancel, name=f"canceller-{i}") for i in (1, 2)]
    for t in threads:
        t.start()
    time.sleep(0.5)  # both cancels are waiting for the callback now
    release.set()
    for t in threads:
        t.join(10)
    assert early == [], f"{early} returned from cancel_watch while the callback still ran"


class _Gate(threading.local):
    """Stands in for the watcher's thread-local flags: holds a watch thread at the moment it
    starts a callback (its check that the watch is not cancelled is done) until opened."""

    at_gate = threading.Event()
    opened = threading.Event()

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "in_callback" and value and not self.opened.is_set():
            self.at_gate.set()
            self.opened.wait(10)
        super().__setattr__(name, value)


def test_no_callback_after_any_of_concurrent_cancels_returned(
    no_leaked_threads: None, e3: Etcd3, etcd_prefix: str
) -> None:
    """A watch thread about to call its callback when two threads cancel: the callback runs
    before either cancel_watch returns, never after one."""
    k = etcd_prefix + "k"
    gate = _Gate()
    gate.at_gate.clear()
    gate.opened.clear()
    e3.watcher._local = gate
    calls: list[float] = []
    wid = e3.add_watch_callback(k, lambda _: calls.append(time.monotonic()))
    e3.put(k, "v")
    assert gate.at_gate.wait(10)
    returned: list[float] = []

    def cancel() -> None:
        e3.cancel_watch(wid)
        returned.append(time.monotonic())

    threads = [threading.Thread(target=cancel) for _ in (1, 2)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    gate.opened.set()
    for t in threads:
        t.join(10)
    assert len(returned) == 2
    assert len(calls) == 1
    assert calls[0] < min(returned), "the callback was called after a cancel_watch returned"


def test_an_interrupted_cancel_watch_can_be_retried(
    no_leaked_threads: None, e3: Etcd3, etcd_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel_watch interrupted (Ctrl-C) while it cancels: calling it again still ends the
    watch and the callbacks' thread (the id is not forgotten by the first try)."""
    wid = e3.add_watch_callback(etcd_prefix + "k", lambda _: None)
    thread = next(t for t in threading.enumerate() if t.name == "etcdkit-compat-callbacks")
    real = etcdkit.SyncWatch.cancel
    tries = []

    def interrupted(self: etcdkit.SyncWatch) -> None:
        tries.append(1)
        if len(tries) == 1:
            raise KeyboardInterrupt
        real(self)

    monkeypatch.setattr(etcdkit.SyncWatch, "cancel", interrupted)
    with pytest.raises(KeyboardInterrupt):
        e3.cancel_watch(wid)
    e3.cancel_watch(wid)
    thread.join(5)
    assert not thread.is_alive(), "the retried cancel_watch did not end the watch"
    deadline = time.monotonic() + 10
    while e3.native.stats.watches:
        assert time.monotonic() < deadline, "the retried cancel_watch left the etcd watch"
        time.sleep(0.01)


def test_watch_resumes_through_a_restart(etcd_server_factory: Callable[..., EtcdServer]) -> None:
    """etcdkit's watch resumes from the next revision: no event lost, none repeated (python-etcd3
    ended its watches on the stream's error). A watch whose event was still on its way when
    the stream went down gets it again after the restart, with the next, in one response (etcd
    replays history in batches): the callback's events are counted, not its calls."""
    server = etcd_server_factory()
    with compat(server, timeout=2) as e3:
        events, cancel = e3.watch_prefix("/r/")
        called: queue.Queue[Any] = queue.Queue()
        e3.add_watch_prefix_callback("/r/", called.put)
        e3.put("/r/1", "a")
        server.restart()
        for _ in range(100):
            try:
                e3.put("/r/2", "b")
                break
            except exceptions.ConnectionFailedError:
                time.sleep(0.1)
        assert [e.value for e in take(events, 2, cancel)] == [b"a", b"b"]
        values: list[bytes] = []
        while len(values) < 2:
            values += [e.value for e in called.get(timeout=10).events]
        assert values == [b"a", b"b"]
        e3.put("/r/3", "c")  # a repeat of either would arrive before this
        assert [e.value for e in called.get(timeout=10).events] == [b"c"]
        cancel()


# -- leases and locks -----------------------------------------------------------------------------


def test_leases(e3: Etcd3, etcd_prefix: str) -> None:
    lease = e3.lease(30)
    assert lease.ttl == 30
    assert lease.id > 0
    assert 0 < lease.remaining_ttl <= 30
    assert lease.granted_ttl == 30
    e3.put(etcd_prefix + "l", "v", lease=lease)
    assert lease.keys == [(etcd_prefix + "l").encode()]
    (refreshed,) = lease.refresh()
    assert (lease.id, 30) == (refreshed.ID, refreshed.TTL)
    assert [r.TTL for r in e3.refresh_lease(lease.id)] == [30]
    info = e3.get_lease_info(lease.id)
    assert (info.ID, info.grantedTTL, info.keys) == (lease.id, 30, [(etcd_prefix + "l").encode()])

    e3.revoke_lease(lease.id)
    assert e3.get(etcd_prefix + "l") == (None, None)
    assert lease.remaining_ttl == -1
    assert lease.keys == []
    assert [r.TTL for r in e3.refresh_lease(lease.id)] == [0]
    with pytest.raises(exceptions.Etcd3Exception, match="LeaseNotFoundError"):
        lease.revoke()
    chosen = e3.lease(10, lease_id=0x5EED_1234)
    assert chosen.id == 0x5EED_1234
    assert chosen.granted_ttl == 10
    chosen.revoke()


def test_lock_acquire_release_and_is_acquired(e3: Etcd3, etcd_prefix: str) -> None:
    name = etcd_prefix + "lock"
    lock, rival = e3.lock(name, ttl=30), e3.lock(name, ttl=30)
    assert lock.key == "/locks/" + name
    assert lock.lease is None
    with pytest.raises(ValueError, match="acquired"):
        lock.refresh()
    assert lock.is_acquired() is False
    assert lock.acquire(timeout=5) is True
    assert lock.is_acquired()
    assert lock.lease is not None
    assert lock.acquire(timeout=5) is False  # held already: at once
    assert rival.acquire(timeout=0.2) is False
    assert not rival.is_acquired()
    assert rival.release() is False
    (refreshed,) = lock.refresh()
    assert refreshed.TTL == 30
    assert lock.release() is True
    assert lock.release() is False
    assert not lock.is_acquired()
    assert rival.acquire(timeout=5) is True
    assert rival.release() is True


def test_lock_is_excluded_by_etcdkits_own_lock(e3: Etcd3, etcd_prefix: str) -> None:
    """Go's ``concurrency.Mutex`` layout under ``/locks/<name>/``: etcdkit's own lock (and
    ``etcdctl lock``, and Go) exclude it, and it them."""
    name = etcd_prefix + "shared"
    lock = e3.lock(name, ttl=30)
    assert lock.acquire(timeout=5)
    assert e3.native.lock("/locks/" + name, timeout=0).try_acquire() is False
    lock.release()
    native = e3.native.lock("/locks/" + name, timeout=0)
    assert native.try_acquire() is True
    assert lock.acquire(timeout=0.2) is False
    native.release()
    assert lock.acquire(timeout=5) is True
    lock.release()


def test_lock_expires_after_ttl_unless_refreshed(e3: Etcd3, etcd_prefix: str) -> None:
    kept, lapsed = e3.lock(etcd_prefix + "kept", ttl=2), e3.lock(etcd_prefix + "lapsed", ttl=1)
    assert kept.acquire()
    assert lapsed.acquire()
    assert lapsed.is_acquired()
    for _ in range(5):  # refreshed every 0.4 s: its 2 s never run out
        time.sleep(0.4)
        kept.refresh()
    deadline = time.monotonic() + 10
    while lapsed.is_acquired():  # not refreshed: released once its 1 s ran out
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert kept.is_acquired()
    assert lapsed.release() is False
    assert [r.TTL for r in lapsed.refresh()] == [0]  # the lease is gone, as in python-etcd3
    assert not lapsed.is_acquired()  # ... and the refresh did not take the lock again
    taker = e3.lock(etcd_prefix + "lapsed", ttl=5)
    assert taker.acquire(timeout=5) is True
    taker.release()
    assert kept.release() is True


def test_with_lock_raises_when_it_cannot_acquire(
    e3: Etcd3, etcd_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = etcd_prefix + "ctx"
    with e3.lock(name, ttl=10) as held:
        assert held.is_acquired()
        monkeypatch.setattr(etcd3.locks, "DEFAULT_ACQUIRE_TIMEOUT", 0.2)
        ran = False
        with pytest.raises(exceptions.LockTimeout), e3.lock(name, ttl=10):
            ran = True  # python-etcd3 entered the block unlocked (its issue #599)
        assert not ran
    assert not held.is_acquired()


# -- cluster, maintenance, and the errors of a failing server -------------------------------------


def test_members_and_status(e3: Etcd3, etcd_server: EtcdServer) -> None:
    (member,) = list(e3.members)
    assert member.name
    assert member.peer_urls == [etcd_server.peer_url]
    assert member.client_urls == [etcd_server.endpoint]
    assert str(member).startswith(f"Member {member.id}")
    status = e3.status()
    assert status.leader is not None
    assert status.leader.id == member.id
    assert status.version == etcd_server.version
    assert status.db_size > 0
    assert status.raft_index > 0
    assert status.raft_term > 0
    assert list(member.active_alarms) == []
    # (members are added on a cluster of a test's own: see below)
    with pytest.raises(exceptions.InternalServerError, match="not found"):
        e3.update_member(12345, [f"http://{HOST}:{free_port()}"])
    assert len(list(e3.members)) == 1


@pytest.mark.cluster
def test_add_update_remove_member_on_a_cluster() -> None:
    """Membership changes on a 3-member cluster of this test's own (never the shared one)."""
    with EtcdCluster(size=3) as cluster, compat(cluster.members[0], timeout=5) as e3:
        deadline = time.monotonic() + 30
        while True:  # etcd refuses changes (UNAVAILABLE) until every member is up 5 s
            try:  # ... then refuses this one: FAILED_PRECONDITION, "Peer URLs already exists"
                e3.add_member([cluster.members[1].peer_url])
            except exceptions.ConnectionFailedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
            except exceptions.PreconditionFailedError as exc:
                refused = str(exc)
                break
        assert "already exists" in refused
        peer = f"http://{HOST}:{free_port()}"
        added = e3.add_member([peer])
        assert added.peer_urls == [peer]
        assert added.name == ""
        assert added.id in {m.id for m in e3.members}
        moved = f"http://{HOST}:{free_port()}"
        added.update([moved])
        assert next(m for m in e3.members if m.id == added.id).peer_urls == [moved]
        e3.update_member(added.id, [peer])
        added.remove()
        assert len(list(e3.members)) == 3
        with pytest.raises(exceptions.InternalServerError):
            e3.remove_member(added.id)


def test_members_and_status_answer_without_a_leader(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    """A member added to a lone etcd that never starts takes its quorum away: there is no
    leader. python-etcd3's members and status() still answered (the member's own list), the
    usual health check being ``status().leader is None``."""
    server = etcd_server_factory()
    with compat(server, timeout=3) as e3:
        e3.add_member([f"http://{HOST}:{free_port()}"])
        deadline = time.monotonic() + 20
        while e3.status().leader is not None:  # (the leader steps down in a second or two)
            assert time.monotonic() < deadline, "the leader never stepped down"
            time.sleep(0.2)
        assert len(list(e3.members)) == 2
        assert e3.status().leader is None
    with etcdkit.Client(server.endpoint, timeout=3) as native:
        assert len(native.members.list(serializable=True)) == 2
        with pytest.raises(etcdkit.EtcdTimeoutError):
            native.members.list()  # linearizable: it needs a leader
        with pytest.raises(TypeError, match="serializable must be a bool"):
            native.members.list(serializable=1)  # type: ignore[arg-type]


def test_maintenance_alarms_and_snapshot(etcd_server_factory: Callable[..., EtcdServer]) -> None:
    server = etcd_server_factory(extra_args=["--quota-backend-bytes", str(256 * 1024)])
    with compat(server) as e3:
        assert isinstance(e3.hash(), int)
        assert list(e3.list_alarms()) == []
        assert e3.disarm_alarm() == []
        (me,) = list(e3.members)
        (raised,) = e3.create_alarm(me.id)  # by hand: writes are refused until disarmed
        assert (raised.alarm_type, raised.member_id) == (1, me.id)
        with pytest.raises(exceptions.InternalServerError, match="NOSPACE"):
            e3.put("/refused", "v")
        assert [a.member_id for a in e3.disarm_alarm(me.id)] == [me.id]
        assert list(e3.list_alarms()) == []
        with pytest.raises(exceptions.InternalServerError, match="NOSPACE"):  # noqa: PT012
            for i in range(1000):
                e3.put(f"/fill/{i}", b"x" * 16 * 1024)
        (member,) = list(e3.members)
        (alarm,) = list(e3.list_alarms())
        assert (alarm.alarm_type, alarm.member_id) == (1, member.id)
        assert [a.member_id for a in member.active_alarms] == [member.id]
        assert list(e3.list_alarms(alarm_type="no space"))
        assert list(e3.list_alarms(member_id=member.id + 1)) == []
        with pytest.raises(ValueError, match="alarm type"):
            e3.list_alarms(alarm_type="corrupt")

        header = e3.delete_prefix("/fill/").header
        assert header is not None
        e3.compact(header.revision, physical=True)
        e3.defragment()
        (disarmed,) = e3.disarm_alarm()
        assert disarmed.member_id == member.id
        assert list(e3.list_alarms()) == []
        e3.put("/after", "ok")

        out = io.BytesIO()
        e3.snapshot(out)
        assert len(out.getvalue()) > 0


def test_defragment_without_a_timeout_waits_as_long_as_etcd_takes(
    etcd_server_factory: Callable[..., EtcdServer], no_leaked_threads: None
) -> None:
    """python-etcd3's ``timeout=None`` was no deadline: a defragment of a large backend took
    what it took (15-30 s at 700 MB). Here it stopped at etcdkit's default 5 s. A member
    that answers only after longer stands for the slow defragment."""
    from etcdkit.compat.etcd3.client import DEFAULT_TIMEOUT

    server = etcd_server_factory()
    with compat(server) as client, compat(server, timeout=1) as bounded:
        outcome: list[object] = []

        def defragment() -> None:
            try:
                outcome.append(client.defragment())
            except Exception as exc:  # (the test says which)
                outcome.append(exc)

        server.pause()
        try:
            with pytest.raises(exceptions.ConnectionTimeoutError):
                bounded.defragment()  # a timeout given bounds it
            worker = threading.Thread(target=defragment)
            worker.start()
            worker.join(DEFAULT_TIMEOUT + 1)
            assert outcome == []
        finally:
            server.resume()
        worker.join(30)
        assert outcome == [None]


def test_compacted_revisions(e3: Etcd3, etcd_prefix: str) -> None:
    k = etcd_prefix + "c"
    old = e3.put(k, "1").header.revision
    now = e3.put(k, "2").header.revision
    e3.compact(now)
    with pytest.raises(exceptions.RevisionCompactedError) as info:
        e3.watch_once(k, timeout=5, start_revision=old)
    assert info.value.compacted_revision == now
    events, cancel = e3.watch(k, start_revision=old)
    with pytest.raises(exceptions.RevisionCompactedError):
        take(events, 1, cancel)
    called: queue.Queue[Any] = queue.Queue()
    e3.add_watch_callback(k, called.put, start_revision=old)
    err = called.get(timeout=10)
    assert isinstance(err, exceptions.RevisionCompactedError)
    assert err.compacted_revision > old
    with pytest.raises(exceptions.RevisionCompactedError):
        e3.get_prefix(etcd_prefix, revision=old)


def test_a_stopped_server_gives_connection_errors(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    server = etcd_server_factory()
    with compat(server, timeout=0.5) as e3:
        e3.put("/k", "v")
        server.stop()
        failed = (exceptions.ConnectionFailedError, exceptions.ConnectionTimeoutError)
        with pytest.raises(failed) as info:
            e3.get("/k")
        assert isinstance(info.value.__cause__, etcdkit.EtcdkitError)
        with pytest.raises(failed):
            e3.put("/k", "v2")
        with pytest.raises(failed):
            e3.lease(10)
        with pytest.raises(failed):
            e3.watch("/k")


# -- python-etcd3's behaviour where an audit found this module differing --------------------------


def test_create_alarm_without_a_member_raises_it_for_every_member(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    """python-etcd3's ``create_alarm()`` (member_id=0) "activates the alarm for all the
    members"; here each member gets its own (etcd would record one of a member 0)."""
    server = etcd_server_factory()
    with compat(server) as e3:
        (me,) = list(e3.members)
        raised = e3.create_alarm()
        assert [(a.alarm_type, a.member_id) for a in raised] == [(1, me.id)]
        assert [(a.alarm_type, a.member_id) for a in e3.list_alarms()] == [(1, me.id)]
        with pytest.raises(exceptions.InternalServerError, match="NOSPACE"):
            e3.put("/refused", "v")
        assert [a.member_id for a in e3.disarm_alarm()] == [me.id]
        e3.put("/after", "ok")
        with pytest.raises(ValueError, match="member"):  # (python-etcd3's protobuf: ValueError)
            e3.create_alarm(-1)

        # an alarm of "member 0", as python-etcd3's create_alarm() raises it
        stubs = e3.native.raw

        async def alarm(action: int) -> None:
            await stubs.maintenance.Alarm(
                rpc.AlarmRequest(action=action, memberID=0, alarm=rpc.NOSPACE)
            )

        e3.native.run(alarm(rpc.AlarmRequest.ACTIVATE))
        try:
            assert [(a.alarm_type, a.member_id) for a in e3.list_alarms()] == [(1, 0)]
            with pytest.raises(exceptions.Etcd3Exception, match="etcdctl alarm disarm"):
                e3.disarm_alarm()
        finally:
            e3.native.run(alarm(rpc.AlarmRequest.DEACTIVATE))
        assert list(e3.list_alarms()) == []


def test_nested_transaction_responses_are_response_ops(e3: Etcd3, etcd_prefix: str) -> None:
    """As in python-etcd3, where they were etcd's ResponseOp messages: inside a nested
    transaction a get's response is a ResponseOp with ``response_range`` too."""
    assert "refused" not in (etcd3.transactions.__doc__ or "")  # (it said nesting was)
    t = e3.transactions
    a, b = etcd_prefix + "a", etcd_prefix + "b"
    e3.put(a, "1")
    ok, (outer,) = e3.transaction(
        [],
        [
            t.txn(
                [t.value(a) == "1"],
                [t.get(a), t.put(b, "2", prev_kv=True), t.txn([], [t.get(b)], []), t.delete(a)],
                [],
            )
        ],
        [],
    )
    assert ok
    inner = outer.response_txn
    assert inner.succeeded is True
    got, put, deeper, deleted = inner.responses
    assert all(isinstance(r, ResponseOp) for r in inner.responses)
    assert [r.WhichOneof("response") for r in inner.responses] == [
        "response_range",
        "response_put",
        "response_txn",
        "response_delete_range",
    ]
    assert got.response_range.kvs[0].value == b"1"
    assert got.response_range.count == 1
    assert put.response_put.prev_kv.key == b""  # b did not exist
    assert put.response_put.header.revision > 0
    (deep_get,) = deeper.response_txn.responses
    assert deep_get.response_range.kvs[0].value == b"2"
    assert deleted.response_delete_range.deleted == 1


def test_a_hung_server_gives_connection_timeout_errors(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    """A SIGSTOPped etcd accepts connections but answers nothing: python-etcd3's call ran into
    its deadline (ConnectionTimeoutError), whether connected before or not; a refused
    connection (nothing listening) is a ConnectionFailedError."""
    server = etcd_server_factory()
    with compat(server, timeout=1) as before:
        before.put("/k", "v")
        server.pause()
        try:
            with compat(server, timeout=1) as fresh:
                for e3 in (fresh, before):
                    started = time.monotonic()
                    with pytest.raises(exceptions.ConnectionTimeoutError) as info:
                        e3.get("/k")
                    assert isinstance(info.value, TimeoutError)
                    assert isinstance(info.value.__cause__, etcdkit.EtcdkitError)
                    assert time.monotonic() - started < 30
        finally:
            server.resume()
    with (
        compat_at(free_port(), timeout=1) as nobody,
        pytest.raises(exceptions.ConnectionFailedError),
    ):
        nobody.get("/k")


def test_timed_out_is_read_from_grpcs_words_not_the_key() -> None:
    hung = etcdkit.ConnectionUnavailableError(
        "get b'/k': no etcd endpoint answered within 1.0 s (x); last error: get b'/k' at x "
        "failed: UNAVAILABLE: ... connection attempt timed out before receiving SETTINGS frame"
    )
    refused = etcdkit.ConnectionUnavailableError(
        "get b'/timeout': no etcd endpoint answered within 1.0 s (x); last error: get "
        "b'/timeout' at x failed: UNAVAILABLE: ...: Connection refused"
    )
    assert type(exceptions.translate(hung)) is exceptions.ConnectionTimeoutError
    assert type(exceptions.translate(refused)) is exceptions.ConnectionFailedError


def test_a_black_holed_etcd_times_out_on_every_call() -> None:
    """A listener that never accepts, its accept queue full: the SYNs of new connections are
    dropped, as for a black-holed host. Each call runs into its deadline, as python-etcd3's
    did: ConnectionTimeoutError every time (grpc's last words vary between attempts)."""
    with socket.create_server((HOST, 0), backlog=0) as hole:
        port = hole.getsockname()[1]
        fillers = []
        try:
            for _ in range(4):  # (the kernel queues a connection or two beyond "0")
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex((HOST, port))
                fillers.append(filler)
            with compat_at(port, timeout=1) as e3:
                for _ in range(3):
                    with pytest.raises(exceptions.ConnectionTimeoutError):
                        e3.get("/k")
                    with pytest.raises(exceptions.ConnectionTimeoutError):
                        e3.put("/k", "v")
        finally:
            for filler in fillers:
                filler.close()


def test_lock_refresh_after_release_or_expiry_answers_ttl_0(e3: Etcd3, etcd_prefix: str) -> None:
    """python-etcd3 kept the lock's lease: refreshing it once the lock was gone answered a
    keep-alive with TTL 0 (here the lease is revoked with the lock, so always 0)."""
    lapsed = e3.lock(etcd_prefix + "lapsed", ttl=1)
    assert lapsed.acquire(timeout=5)
    lease = lapsed.lease
    deadline = time.monotonic() + 10
    while lapsed.is_acquired():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert lease is not None
    assert lapsed.lease is lease
    assert [(r.ID, r.TTL) for r in lapsed.refresh()] == [(lease.id, 0)]

    released = e3.lock(etcd_prefix + "released", ttl=30)
    assert released.acquire(timeout=5)
    assert released.release() is True
    assert [r.TTL for r in released.refresh()] == [0]
    assert not released.is_acquired()

    holder = e3.lock(etcd_prefix + "released", ttl=30)
    assert holder.acquire(timeout=5)
    assert released.acquire(timeout=0.2) is False  # a failed acquire forgets the lease
    assert released.lease is None
    with pytest.raises(ValueError, match="acquired"):
        released.refresh()
    holder.release()


def test_lock_acquire_raises_when_etcd_is_unreachable() -> None:
    """python-etcd3's acquire raised ConnectionFailedError at once (its lease grant failed);
    here within the client's timeout, whatever the acquire's timeout, ``with`` too."""
    with compat_at(free_port(), timeout=1) as e3:
        for timeout in (2, None, 0):
            started = time.monotonic()
            with pytest.raises(exceptions.ConnectionFailedError):
                e3.lock("down").acquire(timeout=timeout)
            assert time.monotonic() - started < 30, timeout
        ran = False
        with pytest.raises(exceptions.ConnectionFailedError), e3.lock("down"):
            ran = True
        assert not ran


def test_client_certificate_without_ca_cert_is_ignored_as_in_python_etcd3(
    etcd_server: EtcdServer, caplog: pytest.LogCaptureFixture
) -> None:
    """python-etcd3 made an insecure channel when ca_cert was not given, whatever cert_key
    and cert_cert said; here too, with a warning."""
    with (
        caplog.at_level("WARNING", logger="etcdkit.compat.etcd3"),
        compat(
            etcd_server, cert_key="/nonexistent/key.pem", cert_cert="/nonexistent/cert.pem"
        ) as e3,
    ):
        assert e3.get("/etcdkit-test/no-such-key") == (None, None)
    assert any("ca_cert" in r.getMessage() for r in caplog.records)


def test_add_watch_callback_takes_python_etcd3s_positional_arguments(
    e3: Etcd3, etcd_prefix: str
) -> None:
    """python-etcd3 passed ``*args`` to ``Watcher.add_callback(key, callback, range_end,
    start_revision, progress_notify, filters, prev_kv)``."""
    k = etcd_prefix + "pos"
    rev = e3.put(k, "1").header.revision
    seen: queue.Queue[Any] = queue.Queue()
    replay = e3.add_watch_callback(k, seen.put, None, rev)
    assert [e.value for e in seen.get(timeout=10).events] == [b"1"]
    e3.cancel_watch(replay)

    ranged = e3.add_watch_callback(etcd_prefix + "a", seen.put, etcd_prefix + "z", None, False)
    e3.put(etcd_prefix + "m", "2", prev_kv=False)
    assert [e.key for e in seen.get(timeout=10).events] == [(etcd_prefix + "m").encode()]
    e3.cancel_watch(ranged)

    deletes = e3.add_watch_callback(k, seen.put, None, None, False, [0], True)  # NOPUT, prev_kv
    e3.put(k, "2")
    e3.delete(k)
    (ev,) = seen.get(timeout=10).events
    assert isinstance(ev, DeleteEvent)
    assert ev.prev_value == b"2"
    e3.cancel_watch(deletes)
    with pytest.raises(TypeError):
        e3.add_watch_callback(k, seen.put, None, None, False, None, False, "extra")  # type: ignore[call-arg]


def test_an_ipv6_host_is_taken_as_python_etcd3_took_it() -> None:
    # python-etcd3 joined host and port ("::1:2379"); an etcdkit endpoint needs the brackets
    for host in ("::1", "[::1]"):
        client = etcd3.client(host=host, port=2379)
        try:
            assert client.native.endpoints == ["http://[::1]:2379"]
        finally:
            client.close()


@pytest.mark.parametrize("how", ["lock.refresh()", "lock.lease.refresh()", "refresh_lease(id)"])
def test_refreshing_a_locks_lease_keeps_the_lock(
    e3: Etcd3, etcd_server: EtcdServer, etcd_prefix: str, how: str
) -> None:
    """python-etcd3's lock.refresh() is its lease's: refreshing the lease directly keeps the
    lock past its ttl too (no other client gets it)."""
    lock = e3.lock(etcd_prefix + "job", ttl=1)
    assert lock.acquire(timeout=2)
    assert lock.lease is not None
    for _ in range(6):  # 2.4 s: over twice the ttl
        time.sleep(0.4)
        if how == "lock.refresh()":
            lock.refresh()
        elif how == "lock.lease.refresh()":
            lock.lease.refresh()
        else:
            list(e3.refresh_lease(lock.lease.id))
    assert lock.is_acquired()
    with compat(etcd_server) as other:
        assert not other.lock(etcd_prefix + "job", ttl=1).acquire(timeout=0)
    assert lock.release()


def test_a_client_dropped_unclosed_is_closed_when_collected(
    etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    """As python-etcd3's: a client dropped without close() is closed once collected (one made
    per request must not keep a thread and sockets for good); one whose watch is still
    iterated is not collected."""
    import gc

    client = compat(etcd_server)
    client.put(etcd_prefix + "k", "v")
    native = client.native
    events, cancel = compat(etcd_server).watch(etcd_prefix + "k")  # (its client: dropped)
    del client
    gc.collect()
    assert native.closed
    with compat(etcd_server) as other:
        other.put(etcd_prefix + "k", "w")
    assert next(events).value == b"w"  # its client is alive: the watch holds it
    cancel()


def test_a_lease_id_may_be_given_as_its_digits(e3: Etcd3, etcd_prefix: str) -> None:
    """python-etcd3 took ``int(lease)``: a lease id in a str works too; other strs are refused."""
    lease = e3.lease(10)
    e3.put(etcd_prefix + "k", "v", lease=str(lease.id))
    _value, meta = e3.get(etcd_prefix + "k")
    assert meta is not None
    assert meta.lease_id == lease.id
    with pytest.raises(TypeError, match="lease must be"):
        e3.put(etcd_prefix + "k", "v", lease="soon")
    lease.revoke()


@pytest.mark.parametrize("prefix", ["", b""])
def test_an_empty_prefix_is_refused_as_python_etcd3_refused_it(
    e3: Etcd3, etcd_prefix: str, prefix: str | bytes
) -> None:
    """IndexError before anything is sent (python-etcd3's, from its range end of b""): an
    empty prefix is every key here, and delete_prefix("") deleted every key in etcd."""
    e3.put(etcd_prefix + "kept", "v")
    calls: list[Callable[[], object]] = [
        lambda: e3.delete_prefix(prefix),
        lambda: list(e3.get_prefix(prefix)),
        lambda: e3.watch_prefix(prefix),
        lambda: e3.watch_prefix_once(prefix, timeout=0.1),
        lambda: e3.add_watch_prefix_callback(prefix, print),
    ]
    for call in calls:
        with pytest.raises(IndexError, match="empty prefix"):
            call()
    assert e3.get(etcd_prefix + "kept")[0] == b"v"
