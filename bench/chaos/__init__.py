"""The fault and correctness checker: every snapshot and every raw watch event exact, through
real faults, on real etcd.

``await run_chaos(seed, duration)`` returns a :class:`ChaosReport`. ``tests/test_chaos.py`` runs
it briefly in CI (``pytest -m chaos``); ``python -m bench.soak --minutes N`` runs it longer.

The set-up: a 3-member :class:`~etcdkit.server.EtcdCluster` on loopback, one
:class:`~etcdkit.server.Proxy` in front of each member. The *client under test* reaches the
members only through the proxies ("cut the client's connection" = cut every proxy); the oracle
side (writer, checker, lease observer) talks to the members directly.

- **Writer**: one sequential task, so its history is exact. Random puts, deletes, range
  deletes, multi-key txns, values the transform rejects, lease-attached keys and revokes, all
  under ``data/``. Every data write is a txn guarded by a *fence* key (``value(fence) == id of
  the last op``) that also moves the fence to its own id. An op with an unknown outcome
  (timeout, unavailable) is resolved before the next: read the fence; if it holds the op's id
  the op landed, at the fence's mod revision; otherwise a "burn" txn moves the fence on, so the
  op can never land later. (A request parked in a SIGSTOPped member is applied seconds after
  the client gave up; without the fence it would rewrite history behind the model's back.)
  A revoke with an unknown outcome is retried until definite; if an earlier attempt had
  landed, its revision is found by bisecting ``get_prefix`` (no compaction runs meanwhile).
  The history, revision -> transformed tree, is therefore exact, not a guess; so is the event
  log beside it (every put and delete under ``data/``, in etcd's order), which is moreover
  compared with etcd's own replay before each compaction and at the end.
- **Under test**, at once: ``watch_prefix`` consumers on ``data/`` (the last one slow), raw
  ``watch(data/, prefix=True)`` consumers from the writer's start revision (one with
  ``progress_notify``, one with ``prev_kv`` that stops reading now and then, past its buffer
  bound), ``wait_for`` callers on ``wait/``, and PersistentLeases on ``leases/``, followed by a
  ``watch_prefix`` on a direct client.
- **Faults**, one at a time, each bounded and healed in ``finally``: kill -9 and restart a
  member (or the leader), SIGSTOP/SIGCONT a member (or the leader), black-hole the client's
  connections (briefly, or past the keepalive detection time), black-hole one of its links,
  reset its connections, compact to the current revision (or the newest one every raw watch
  has received: a raw watch cannot relist), and a full outage (every member down) with
  recovery.
- **Checker**: every delivered snapshot's tree equals the transform of ``get_prefix`` at its
  revision, or, once that revision is compacted, the writer's history; revisions never go
  back; ``changes`` turn the consumer's previous tree into this one. After each fault heals:
  every PersistentLease is back (state REGISTERED, its value visible to the observer, its own
  lease on the key) within its ttl + a bound, and every consumer reaches the revision written
  before the heal within a bound. ``wait_for`` never returns before its condition held and
  returns within a bound after. Every raw watch event equals the event log's next one (none
  lost, repeated or out of order; a transaction's events in one batch; a batch with no events
  only once every event up to its revision was delivered), and raw consumers catch up after
  each heal. At the end every consumer converges to the final state (each raw one has checked
  every event), and closing leaves no lease key and no etcdkit task behind.

Every mismatch is recorded with the run's seed. The seed fixes every random choice (ops,
faults, durations, delays) per component; timing still varies, so a replay reproduces the
same schedule, not the same interleaving.

The package, by concern: :mod:`~bench.chaos.report` (config, report, mismatches),
:mod:`~bench.chaos.history` (the transform, the writer's exact history and event log),
:mod:`~bench.chaos.state` (what every part of a run shares: :class:`Run`),
:mod:`~bench.chaos.writer` (the fenced writer), :mod:`~bench.chaos.checker` (consumers,
deliveries, recovery and convergence checks), :mod:`~bench.chaos.raw` (the raw watch
consumers and their checks), :mod:`~bench.chaos.faults` (injection and healing) and
:mod:`~bench.chaos.run` (:func:`run_chaos`, start to end). Each points only at the ones before
it. This module names the public API.
"""

from bench.chaos.checker import Checker, Delivery
from bench.chaos.history import History, transform, tree_of
from bench.chaos.report import FAULTS, ChaosConfig, ChaosReport, Mismatch
from bench.chaos.run import run_chaos
from bench.chaos.state import Run

__all__ = [
    "FAULTS",
    "ChaosConfig",
    "ChaosReport",
    "Checker",
    "Delivery",
    "History",
    "Mismatch",
    "Run",
    "run_chaos",
    "transform",
    "tree_of",
]
