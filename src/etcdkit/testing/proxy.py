"""A TCP proxy in front of an etcd endpoint, for fault tests: black-hole (``cut()``) and
``restore()`` the path, or reset every connection (``drop_connections()``). Loopback only.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from types import TracebackType
from typing import TYPE_CHECKING

from etcdkit.testing.ports import HOST

if TYPE_CHECKING:
    from etcdkit.testing.server import EtcdServer

__all__ = ["Proxy"]


class Proxy:
    """A TCP proxy on a free loopback port in front of ``target`` (an endpoint, or an
    :class:`EtcdServer`).

    Starts at once. ``cut()`` black-holes the path both ways (bytes are held, and so is an end
    of stream: no FIN or RST gets through, new connections hang), as a network partition does;
    ``restore()`` lets traffic flow again; ``drop_connections()`` resets every open connection
    (RST both ways). An end of stream from one side reaches the other as a half-close (its
    write side shut), as TCP carries it. ``endpoint`` keeps the target's scheme.
    """

    def __init__(self, target: str | EtcdServer, *, port: int = 0) -> None:
        if not isinstance(target, str):  # (an EtcdServer, or anything with its endpoint)
            endpoint = getattr(target, "endpoint", None)
            if not isinstance(endpoint, str):
                raise TypeError(
                    "target must be an endpoint such as 'http://127.0.0.1:2379' or an "
                    f"EtcdServer, got {target!r:.60}"
                )
            target = endpoint
        m = re.fullmatch(r"(?:(https?)://)?([^:/]+):(\d+)/?", target.strip())
        if m is None:
            raise ValueError(f"target must look like http://127.0.0.1:2379, got {target!r}")
        self._scheme = m.group(1) or "http"
        self._target = (m.group(2), int(m.group(3)))
        self._open = threading.Event()
        self._open.set()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._dropped: set[socket.socket] = set()  # being reset: their end is no clean one
        self._threads: set[threading.Thread] = set()
        self._listener = socket.create_server((HOST, port))
        self._listener.settimeout(0.2)
        self.port = int(self._listener.getsockname()[1])
        self._spawn(self._accept_loop, "accept")

    @property
    def endpoint(self) -> str:
        return f"{self._scheme}://{HOST}:{self.port}"

    @property
    def is_cut(self) -> bool:
        return not self._open.is_set()

    def __repr__(self) -> str:
        return f"<Proxy {self.endpoint} -> {self._target[0]}:{self._target[1]}>"

    def __enter__(self) -> Proxy:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def cut(self) -> None:
        self._open.clear()

    def restore(self) -> None:
        self._open.set()

    def drop_connections(self) -> None:
        """Reset every open connection (RST to both sides)."""
        with self._lock:
            conns = list(self._conns)
            self._dropped.update(conns)
        for s in conns:
            self._reset(s)

    def close(self) -> None:
        """Stop accepting, reset every connection, and join every thread; idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._open.set()
        self.drop_connections()
        for t in list(self._threads):
            if t is not threading.current_thread():
                t.join(5.0)
        self._listener.close()

    # -- internals --------------------------------------------------------------------------------

    def _spawn(self, fn: object, what: str, *args: object) -> None:
        t = threading.Thread(
            target=self._run, args=(fn, *args), name=f"etcdkit-proxy-{self.port}-{what}",
            daemon=True,
        )  # fmt: skip
        # Registered only once started (close() joins it), and under the lock its end takes to
        # leave the set: one that ends at once leaves after it came, not before.
        with self._lock:
            t.start()
            self._threads.add(t)

    def _run(self, fn: object, *args: object) -> None:
        try:
            fn(*args)  # type: ignore[operator]
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    @staticmethod
    def _reset(s: socket.socket) -> None:
        """RST, no FIN before it: linger 0, then close. ``shutdown(SHUT_RD)`` first wakes a
        pump blocked reading it (sending nothing); ``SHUT_RDWR`` sent a FIN, and the peer saw
        a clean end of stream before the reset."""
        with contextlib.suppress(OSError):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RD)
        with contextlib.suppress(OSError):
            s.close()

    def _wait_open(self) -> bool:
        while not self._open.wait(0.1):
            if self._closed.is_set():
                return False
        return not self._closed.is_set()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            with self._lock:
                self._conns.add(client)
            self._spawn(self._connect, "conn", client)

    def _connect(self, client: socket.socket) -> None:
        if not self._wait_open():
            self._forget(client)
            return
        try:
            upstream = socket.create_connection(self._target, timeout=5.0)
        except OSError:
            self._forget(client)
            return
        try:
            upstream.settimeout(None)
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # drop_connections() reset the client while it waited for restore()
            self._forget(client)
            self._reset(upstream)
            return
        with self._lock:
            self._conns.add(upstream)
        both = [2]  # directions still carrying
        self._spawn(self._pump, "up", client, upstream, both)
        self._pump(upstream, client, both)

    def _pump(self, src: socket.socket, dst: socket.socket, both: list[int]) -> None:
        """``src`` to ``dst`` while the path is open (held while it is cut, an end of stream
        too). A clean end of stream goes on as a half-close; an error, or the proxy resetting
        or closing, resets both sides."""
        clean = False
        try:
            while True:
                data = src.recv(65536)
                if not self._wait_open():
                    break
                if not data:
                    with self._lock:
                        clean = src not in self._dropped and dst not in self._dropped
                    if clean:
                        dst.shutdown(socket.SHUT_WR)
                    break
                dst.sendall(data)
        except OSError:
            clean = False
        with self._lock:
            both[0] -= 1
            other_carries = both[0] > 0
        if clean and other_carries:
            return  # the other direction goes on; it ends the pair
        self._forget(src, clean=clean)
        self._forget(dst, clean=clean)

    def _forget(self, s: socket.socket, *, clean: bool = False) -> None:
        with self._lock:
            self._conns.discard(s)
            self._dropped.discard(s)
        if clean:  # (both directions ended cleanly: a plain close)
            with contextlib.suppress(OSError):
                s.close()
        else:
            self._reset(s)
