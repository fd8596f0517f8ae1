"""Soak the recipes under random faults: ``python -m bench.soak --minutes N [--seed S]``.

Runs the checker of :mod:`bench.chaos` for N minutes on its own 3-member etcd cluster, prints
a human summary and then one JSON line, and exits 1 if any guarantee was violated (each
mismatch names the seed to replay it with).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import random
import signal
import sys

from bench.chaos import FAULTS, ChaosConfig, run_chaos


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to inject faults")
    parser.add_argument("--seed", type=int, default=None, help="replay a run (default: random)")
    parser.add_argument(
        "--faults",
        default=",".join(FAULTS),
        help=f"comma-separated subset of {','.join(FAULTS)}",
    )
    parser.add_argument("--rate", type=float, default=40.0, help="writer ops per second")
    parser.add_argument("-v", "--verbose", action="store_true", help="log etcdkit at INFO")
    args = parser.parse_args(argv)
    if not 0 < args.minutes < math.inf:  # (NaN too)
        parser.error("--minutes must be a positive number")
    faults = tuple(f.strip() for f in args.faults.split(",") if f.strip())
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown or not faults:
        parser.error(f"unknown faults {unknown}; choose from {','.join(FAULTS)}")
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    print(f"soak: seed {seed}, {args.minutes:g} min, faults {','.join(faults)}", flush=True)
    config = ChaosConfig(faults=faults, write_rate=args.rate)
    # SIGTERM (a `timeout`, a CI cancel) stops the run as Ctrl-C does: its cluster and proxies
    # are torn down on the way out, not left running.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    report = asyncio.run(
        run_chaos(seed, args.minutes * 60, config=config, progress=lambda s: print(s, flush=True))
    )
    print(report.summary(), flush=True)
    print(report.as_json(), flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
