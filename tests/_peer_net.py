"""A 3-member etcd cluster whose raft traffic between members goes through proxies on
loopback, so that one member's incoming raft *log* stream (``/raft/stream/msgapp``) can be
held while its heartbeats (``/raft/stream/message``) still get through: the member keeps its
leader (etcd's ``hasleader`` does not end its streams) and answers clients, but falls behind
(as behind an MTU black hole, or while catching up). Threads, one pair per connection; all
closed with the cluster."""

from __future__ import annotations

import re
import socket
import threading
import uuid

from etcdkit.testing import HOST, EtcdCluster, EtcdServer, free_port

_FROM = re.compile(rb"(?i)x-server-from:\s*([0-9a-f]+)")


class StarvableCluster(EtcdCluster):
    def __init__(self, size: int = 3) -> None:  # (EtcdCluster's members, made here)
        self.start_timeout = 60.0
        self._cv = threading.Condition()
        self._starved: set[str] = set()  # member ids (hex) whose incoming log stream is held
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._closed = False
        ports = [(free_port(), free_port()) for _ in range(size)]
        self._listeners = [socket.create_server((HOST, 0)) for _ in ports]
        proxied = [f"http://{HOST}:{ls.getsockname()[1]}" for ls in self._listeners]
        initial = ",".join(f"m{i}={url}" for i, url in enumerate(proxied))
        cluster = ["--initial-cluster", initial, "--initial-cluster-state", "new",
                   "--initial-cluster-token", f"starve-{uuid.uuid4().hex[:8]}"]  # fmt: skip
        self.members = [
            EtcdServer(
                name=f"m{i}",
                client_port=client,
                peer_port=peer,
                # (the last of a repeated flag wins: peers reach it through its proxy)
                extra_args=["--initial-advertise-peer-urls", proxied[i]],
                _cluster_args=cluster,
            )
            for i, (client, peer) in enumerate(ports)
        ]
        for ls, member in zip(self._listeners, self.members, strict=True):
            self._spawn(self._accept, ls, member)

    def starve(self, member_id: int) -> None:
        """Hold the raft log stream into the member ``member_id`` (heartbeats still flow)."""
        with self._cv:
            self._starved.add(format(member_id, "x"))
            self._cv.notify_all()

    def heal(self) -> None:
        with self._cv:
            self._starved.clear()
            self._cv.notify_all()

    def close(self) -> None:
        self.heal()
        super().close()
        with self._cv:
            self._closed = True
            self._cv.notify_all()
            sockets = [*self._listeners, *self._sockets]
        for s in sockets:
            s.close()
        for t in self._threads:
            t.join(5)

    # -- the proxies --------------------------------------------------------------------------

    def _spawn(self, target: object, *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(t)
        t.start()

    def _accept(self, ls: socket.socket, member: EtcdServer) -> None:
        while True:
            try:
                c, _ = ls.accept()
            except OSError:
                return  # (closed)
            try:
                u = socket.create_connection((HOST, member.peer_port))
            except OSError:
                c.close()
                continue
            with self._cv:
                if self._closed:
                    c.close()
                    u.close()
                    return
                self._sockets += [c, u]
            # (the member that dialed: X-Server-From; whether it reads its raft log here)
            conn: list[object] = [None, False]
            self._spawn(self._pump, c, u, conn, True)
            self._spawn(self._pump, u, c, conn, False)

    def _pump(self, src: socket.socket, dst: socket.socket, conn: list[object], up: bool) -> None:
        # A member reads what another sends it on a stream it dials: GET
        # /raft/stream/msgapp/<its id>, X-Server-From: <its id>; holding both directions of
        # that connection starves it of log entries (its /raft/stream/message, heartbeats
        # included, still flows).
        head = b""
        try:
            while data := src.recv(65536):
                if up and conn[0] is None and len(head) < 16384:
                    head += data
                    m = _FROM.search(head)
                    if m is not None:
                        conn[1] = head.startswith(b"GET /raft/stream/msgapp/")
                        conn[0] = m.group(1).decode()
                with self._cv:
                    while conn[1] and conn[0] in self._starved and not self._closed:
                        self._cv.wait(0.2)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                s.close()
