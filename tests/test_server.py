"""The real-etcd controls: binary lookup, EtcdServer, EtcdCluster and the cut/restore Proxy."""

from __future__ import annotations

import os
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from etcdkit import Client
from etcdkit.server import (
    EtcdBinaryNotFoundError,
    EtcdCluster,
    EtcdServer,
    EtcdServerError,
    GrpcProxy,
    Proxy,
    etcd_version,
    find_etcd_binary,
)
from etcdkit.testing import server as server_mod


def test_binary_lookup_prefers_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real = find_etcd_binary()
    assert etcd_version(real).count(".") == 2
    monkeypatch.setenv("ETCDKIT_ETCD_BIN", str(real))
    assert find_etcd_binary() == real
    monkeypatch.setenv("ETCDKIT_ETCD_BIN", str(tmp_path / "nope"))
    with pytest.raises(EtcdBinaryNotFoundError) as info:
        find_etcd_binary()
    assert "not an executable" in str(info.value)
    monkeypatch.delenv("ETCDKIT_ETCD_BIN")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(server_mod, "_distro_binary", lambda: None)
    with pytest.raises(EtcdBinaryNotFoundError) as info:
        find_etcd_binary()
    msg = str(info.value)
    assert "ETCDKIT_ETCD_BIN" in msg
    assert "etcdkit[server]" in msg
    assert "PATH" in msg


def test_a_binary_that_is_not_etcd_is_named_in_the_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ETCDKIT_ETCD_BIN", "/bin/true")
    with pytest.raises(EtcdServerError, match=r"/bin/true.*ETCDKIT_ETCD_BIN.*is not an etcd"):
        etcd_version()
    server = EtcdServer(start_timeout=5)
    try:
        with pytest.raises(EtcdServerError, match="binary '/bin/true' from ETCDKIT_ETCD_BIN"):
            server.start()
    finally:
        server.close()


def test_logs_take_a_count_of_lines(etcd_server_factory: Callable[..., EtcdServer]) -> None:
    server = etcd_server_factory()
    assert server.logs(0) == ""  # (it was the whole log: text.splitlines()[-0:])
    assert len(server.logs(3).splitlines()) == 3
    with pytest.raises(ValueError, match="lines must be >= 0"):
        server.logs(-2)
    with pytest.raises(TypeError, match="lines must be an int"):
        server.logs("3")  # type: ignore[arg-type]
    from etcdkit import server as server_names
    from etcdkit import testing

    assert set(server_names.__all__) == set(testing.__all__)  # "the same names"


def test_kill_and_restart_keep_the_data(etcd_server_factory: Callable[..., EtcdServer]) -> None:
    server = etcd_server_factory()
    with Client(server.endpoint, timeout=2) as c:
        rev = c.put("/s/k", "v")
        pid = server.pid
        server.kill()
        assert not server.running
        assert not server.healthy()
        server.restart()
        assert server.running
        assert server.pid != pid
        kv = c.get("/s/k")
        assert kv is not None
        assert kv.value == b"v"
        assert kv.mod_revision == rev
        server.stop()
        assert not server.running
        server.start()
        assert c.get("/s/k") is not None
    assert "starting" in server.logs()


def test_pause_freezes_and_resume_thaws(etcd_server_factory: Callable[..., EtcdServer]) -> None:
    server = etcd_server_factory()
    with Client(server.endpoint, timeout=1) as c:
        c.put("/s/p", "1")
        server.pause()
        try:
            assert not server.healthy(timeout=0.3)
            with pytest.raises(TimeoutError):
                c.get("/s/p")
        finally:
            server.resume()
        server.wait_healthy(10)
        assert c.get("/s/p") is not None


def test_a_wrapper_script_binary_is_killed_paused_and_stopped_with_its_etcd(
    tmp_path: Path,
) -> None:
    """A binary that is a script starting etcd without ``exec`` (etcd its child): a signal
    to the script alone left etcd running, answering on the server's ports after kill() and
    pause() said otherwise (and restarts then talked to the leftover)."""
    wrapper = tmp_path / "etcd-wrapper"
    wrapper.write_text(f'#!/bin/sh\n"{find_etcd_binary()}" "$@"\n')
    wrapper.chmod(0o755)
    with EtcdServer(binary=wrapper) as server:
        assert server.healthy()
        server.pause()
        try:
            assert not server.healthy(timeout=0.3)
        finally:
            server.resume()
        server.wait_healthy(10)
        server.kill()
        assert not server.healthy(timeout=0.3)  # etcd went with the script
        server.start()
        pid = server.pid
        server.stop()
        assert not server.healthy(timeout=0.3)
        assert pid is not None
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)  # nothing left of its process group


def test_startup_failure_shows_the_log(tmp_path: Path) -> None:
    server = EtcdServer(extra_args=["--no-such-flag"], start_timeout=10)
    try:
        with pytest.raises(Exception, match="no-such-flag"):
            server.start()
    finally:
        server.close()


def _alive(pid: int | None) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_a_server_that_fails_to_start_leaves_nothing(tmp_path: Path) -> None:
    # `with` whose start fails (its __exit__ never runs): no process, no temp dir. A start that
    # is not healthy in time leaves no process either (etcd's own session: nothing else would
    # stop it).
    server = EtcdServer(extra_args=["--no-such-flag"])
    with pytest.raises(EtcdServerError, match="no-such-flag"), server:
        pass
    assert not server._work.exists()
    slow = EtcdServer(start_timeout=0.001)
    try:
        with pytest.raises(EtcdServerError, match="not healthy within"):
            slow.start()
        assert not _alive(slow.pid)
        assert slow._work.exists()  # (kept for a start again, until close())
    finally:
        slow.close()
    assert not slow._work.exists()


def test_a_server_never_closed_is_ended_when_collected() -> None:
    import gc

    server = EtcdServer().start()
    pid, work = server.pid, server._work
    assert _alive(pid)
    del server
    gc.collect()
    assert not _alive(pid)
    assert not work.exists()
    unstarted = EtcdServer()
    work = unstarted._work
    del unstarted
    gc.collect()
    assert not work.exists()


@pytest.mark.cluster
@pytest.mark.slow
def test_a_cluster_whose_members_were_all_killed_restarts_as_one() -> None:
    with EtcdCluster(3) as cluster:
        with Client(cluster.endpoints, timeout=5) as c:
            c.put("/s/all-down", "1")
        for m in cluster.members:
            m.kill()
        cluster.restart()  # (each member's restart() would wait for a leader: no quorum yet)
        assert all(m.healthy() for m in cluster.members)
        with Client(cluster.endpoints, timeout=5) as c:
            kv = c.get("/s/all-down")
            assert kv is not None
            assert kv.value == b"1"  # same data dirs
        cluster.restart()  # running members too: stopped, then started together
        cluster.leader()


@pytest.mark.cluster
def test_cluster_leader_kill_elects_another(etcd_cluster: EtcdCluster) -> None:
    assert len(etcd_cluster.endpoints) == 3
    leader = etcd_cluster.leader()
    with Client(etcd_cluster.endpoints, timeout=2) as c:
        c.put("/s/cluster", "1")
        leader.kill()
        try:
            other = etcd_cluster.leader(timeout=15)
            assert other is not leader
            deadline = time.monotonic() + 15
            while True:
                try:
                    c.put("/s/cluster", "2")
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        finally:
            leader.restart()
        kv = c.get("/s/cluster")
        assert kv is not None
        assert kv.value == b"2"


def _echo_server() -> tuple[socket.socket, int]:
    srv = socket.create_server(("127.0.0.1", 0))
    return srv, srv.getsockname()[1]


def test_proxy_cut_holds_bytes_and_restore_delivers_them() -> None:
    srv, port = _echo_server()
    with srv, Proxy(f"127.0.0.1:{port}") as proxy:
        assert proxy.endpoint.startswith("127.0.0.1:") or "://" in proxy.endpoint
        host_port = proxy.endpoint.split("://")[-1]
        host, p = host_port.rsplit(":", 1)
        cli = socket.create_connection((host, int(p)), timeout=5)
        conn, _ = srv.accept()
        with cli, conn:
            cli.sendall(b"one")
            conn.settimeout(5)
            assert conn.recv(10) == b"one"
            proxy.cut()
            assert proxy.is_cut
            cli.sendall(b"two")
            conn.settimeout(0.5)
            with pytest.raises(TimeoutError):
                conn.recv(10)  # black-holed, not refused
            proxy.restore()
            conn.settimeout(5)
            assert conn.recv(10) == b"two"
            proxy.drop_connections()
            for end in (cli, conn):  # a reset, not a clean end of stream first (b"")
                end.settimeout(5)
                with pytest.raises(ConnectionResetError):
                    end.recv(10)


def _through(proxy: Proxy, srv: socket.socket) -> tuple[socket.socket, socket.socket]:
    host, p = proxy.endpoint.split("://")[-1].rsplit(":", 1)
    cli = socket.create_connection((host, int(p)), timeout=5)
    conn, _ = srv.accept()
    conn.settimeout(5)
    return cli, conn


def test_proxy_carries_a_half_close() -> None:
    """A client that sends its request, then shuts its write side, gets the answer (the
    proxy reset both sides at the first end of stream: the answer was lost)."""
    srv, port = _echo_server()
    with srv, Proxy(f"127.0.0.1:{port}") as proxy:
        cli, conn = _through(proxy, srv)
        with cli, conn:
            cli.sendall(b"req")
            cli.shutdown(socket.SHUT_WR)
            got = b""
            while chunk := conn.recv(10):
                got += chunk
            assert got == b"req"
            conn.sendall(b"reply:" + got)
            conn.close()
            answer = b""
            while chunk := cli.recv(10):
                answer += chunk
            assert answer == b"reply:req"


def test_proxy_cut_holds_an_end_of_stream_too() -> None:
    """While cut, a side closing is not seen by the other (a partition carries no FIN); it is
    once restored."""
    srv, port = _echo_server()
    with srv, Proxy(f"127.0.0.1:{port}") as proxy:
        cli, conn = _through(proxy, srv)
        with cli, conn:
            proxy.cut()
            cli.close()
            conn.settimeout(0.5)
            with pytest.raises(TimeoutError):
                conn.recv(10)
            proxy.restore()
            conn.settimeout(5)
            assert conn.recv(10) == b""


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"data_dir": 123}, TypeError, "data_dir must be a path"),
        ({"binary": 123}, TypeError, "binary must be a path"),
        ({"name": 5}, TypeError, "name must be"),
        ({"extra_args": "--debug"}, TypeError, "extra_args must be a list of str"),  # (once split)
        ({"extra_args": 5}, TypeError, "extra_args"),
        ({"start_timeout": "5"}, TypeError, "start_timeout"),
        ({"start_timeout": 0}, ValueError, "start_timeout"),
        ({"client_port": "abc"}, TypeError, "client_port must be an int"),
        ({"client_port": 70000}, ValueError, "client_port must be a TCP port"),
        ({"peer_port": -5}, ValueError, "peer_port must be a TCP port"),
        ({"peer_port": True}, TypeError, "peer_port"),
    ],
)
def test_bad_server_arguments_name_what_to_fix_and_leave_no_dir(
    kwargs: dict[str, object],
    exc: type[Exception],
    match: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(exc, match=match):
        EtcdServer(**kwargs)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []  # (a bad data_dir once left its temp dir behind)


def test_bad_proxy_and_cluster_arguments() -> None:
    with pytest.raises(TypeError, match="target must be an endpoint"):
        Proxy(123)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="size"):
        EtcdCluster(size=True)
    target = "http://127.0.0.1:2379"
    with pytest.raises(TypeError, match="port must be an int"):
        GrpcProxy(target, port="2379")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="port must be a TCP port"):
        GrpcProxy(target, port=-1)
    with pytest.raises(TypeError, match="extra_args must be a list of str"):
        GrpcProxy(target, extra_args="--debug")
    with pytest.raises(ValueError, match="start_timeout"):
        GrpcProxy(target, start_timeout=-1)


def test_a_proxy_in_front_of_a_server_object_and_a_paused_server_started_again(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    """``Proxy(server)`` as ``GrpcProxy(server)``; ``start()`` on a paused server resumes it
    (it waited out start_timeout, then killed it as unhealthy); ``paused`` is False once the
    process was killed from outside."""
    server = etcd_server_factory()
    with Proxy(server) as proxy, Client(proxy.endpoint) as client:
        client.put("/p", "v")
    server.pause()
    t0 = time.monotonic()
    server.start()
    assert time.monotonic() - t0 < 5
    assert not server.paused
    server.pause()
    assert server.pid is not None
    os.kill(server.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while server.running:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert not server.paused
    server.start()
    with Client(server.endpoint) as client:
        kv = client.get("/p")
        assert kv is not None
