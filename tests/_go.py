"""Go interop programs (``tests/go/<name>/main.go``): built once per test session against etcd
3.4's Go sources (Debian's ``golang-etcd-server-dev`` under /usr/share/gocode), in GOPATH mode,
offline, and driven over stdin/stdout. Every test that needs one skips cleanly when there is no
Go toolchain, no such sources, or the build fails.

Use the ``go_program`` fixture (import it into the test module)::

    async def test_x(go_program: GoPrograms) -> None:
        proc = await GoProc.start(go_program("rwlock"), endpoint, name, "write")
        await proc.expect("held")
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import pytest

GOCODE = Path("/usr/share/gocode")
SOURCES = Path(__file__).resolve().parent / "go"
BUILD_TIMEOUT = 300.0
WAIT = 20.0


class GoPrograms:
    """Builds ``tests/go/<name>`` on first use; returns the binary's path, or skips."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.built: dict[str, str] = {}
        self.failed: dict[str, str] = {}

    def __call__(self, name: str) -> str:
        if name in self.built:
            return self.built[name]
        if name in self.failed:
            pytest.skip(self.failed[name])
        go = shutil.which("go")
        if go is None:
            pytest.skip("no Go toolchain (golang-go) on PATH")
        if not (GOCODE / "src/go.etcd.io/etcd/contrib/recipes").is_dir():
            pytest.skip(f"no etcd 3.4 Go sources under {GOCODE} (golang-etcd-server-dev)")
        out = self.root / name
        env = {
            **os.environ,
            "GO111MODULE": "off",
            "GOPATH": f"{self.root / 'gopath'}:{GOCODE}",
            "GOCACHE": str(self.root / "cache"),
            "GOFLAGS": "",
            "GOPROXY": "off",
        }
        try:
            proc = subprocess.run(
                [go, "build", "-o", str(out), str(SOURCES / name / "main.go")],
                env=env,
                capture_output=True,
                text=True,
                timeout=BUILD_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            self.failed[name] = f"go build {name} took more than {BUILD_TIMEOUT:g} s"
            pytest.skip(self.failed[name])
        if proc.returncode != 0:
            self.failed[name] = f"go build {name} failed: {proc.stderr.strip()[-500:]}"
            pytest.skip(self.failed[name])
        self.built[name] = str(out)
        return str(out)


@pytest.fixture(scope="session")
def go_program(tmp_path_factory: pytest.TempPathFactory) -> GoPrograms:
    return GoPrograms(tmp_path_factory.mktemp("go"))


class GoProc:
    """One running Go program: its stdout read line by line, its stdin written to."""

    def __init__(self, proc: asyncio.subprocess.Process, argv: tuple[str, ...]) -> None:
        self.proc = proc
        self.argv = argv
        self.lines: list[str] = []

    @classmethod
    async def start(cls, *argv: str) -> GoProc:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(proc, argv)

    async def _line(self) -> str:
        assert self.proc.stdout is not None
        raw = await self.proc.stdout.readline()
        if not raw:
            await self.proc.wait()
            err = b""
            if self.proc.stderr is not None:
                err = await self.proc.stderr.read()
            raise AssertionError(
                f"{' '.join(self.argv[1:])}: ended (status {self.proc.returncode}) after "
                f"{self.lines}: {err.decode(errors='replace')[-1000:]}"
            )
        line = raw.decode().strip()
        self.lines.append(line)
        return line

    async def expect(self, word: str, timeout: float = WAIT) -> None:
        """Read lines until ``word`` (fails on EOF or after ``timeout`` seconds)."""
        async with asyncio.timeout(timeout):
            while await self._line() != word:
                pass

    async def silent_for(self, seconds: float) -> bool:
        """``True`` if the program printed nothing for ``seconds``."""
        try:
            async with asyncio.timeout(seconds):
                await self._line()
        except TimeoutError:
            return True
        return False

    def send(self, line: str = "go") -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")

    async def finish(self, timeout: float = WAIT) -> int:
        async with asyncio.timeout(timeout):
            return await self.proc.wait()

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
