"""A command in a terminal of its own (a pty), for the CLI's live views, started without fork().

``pexpect.spawn`` forks the test process, and grpcio (1.80 and later: grpc/grpc#43055) runs its
fork handlers in the child, whose restarted poller can crash it before it execs ("epoll_wait
error: Bad file descriptor") while a client of the test process is busy: a CLI test then sees
EOF instead of the view (CI did, once). ``subprocess`` starts the command
with vfork (no fork handlers run), through a tiny Python that makes the pty its controlling
terminal, so Ctrl-C (:meth:`Terminal.sendintr`) reaches it as from a keyboard.

:class:`Terminal` has the part of ``pexpect.spawn``'s API the tests use.
"""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from collections.abc import Sequence
from typing import Any

from pexpect import fdpexpect

# the command's first process: take the pty as the controlling terminal, then become the command
_BOOT = (
    "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


class Terminal:
    """``command`` running in a pty of ``dimensions`` (rows, columns)."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        env: dict[str, str],
        dimensions: tuple[int, int],
        timeout: float,
    ) -> None:
        master, slave = pty.openpty()
        rows, cols = dimensions
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _BOOT, *command],
                stdin=slave,
                stdout=slave,
                stderr=slave,
                env=env,
                start_new_session=True,  # a session of its own, which the pty is the terminal of
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        self._master = master
        self._out = fdpexpect.fdspawn(master, encoding="utf-8", timeout=timeout)

    def expect(self, pattern: Any) -> int:
        return int(self._out.expect(pattern))

    @property
    def before(self) -> str:
        return str(self._out.before)

    def sendintr(self) -> None:
        """Ctrl-C, typed: the terminal sends SIGINT to the command."""
        os.write(self._master, termios.tcgetattr(self._master)[6][termios.VINTR])

    def isalive(self) -> bool:
        return self.proc.poll() is None

    @property
    def exitstatus(self) -> int | None:
        return self.proc.returncode

    def close(self, timeout: float = 10.0) -> None:
        """Wait for the command to end (at most ``timeout`` s), then close the terminal."""
        try:
            self.proc.wait(timeout)
        finally:
            self._out.close()

    def terminate(self, force: bool = False) -> None:
        if force:
            self.proc.kill()
        else:
            self.proc.terminate()
        self.proc.wait(10.0)
        if not self._out.closed:
            self._out.close()
