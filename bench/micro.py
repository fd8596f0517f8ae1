"""Per-key costs in this process, no etcd: ``python -m bench.micro [--keys N] [--repeat R]``.

What issue 25's two big-listing figures come down to, each beside its baseline in the same
run (best of ``--repeat``, milliseconds for ``--keys`` keys, one JSON line per case):

- ``kv``: a parsed ``RangeResponse`` of N keys (the ``peers`` scenario's shape: 16-byte
  values). ``pairs_ms`` reads each key and value (what a caller of a library handing out the
  protobuf messages does), ``six_fields_ms`` reads the six fields of every key at C speed
  (``operator.attrgetter``), ``kv_of_ms`` makes etcdkit's :class:`~etcdkit.KeyValue` of each
  (what ``range()`` does). ``iterate_ms`` only walks the messages, keeping none (protobuf makes
  an object per message read: the floor under every other figure); ``tuple_kv_ms`` makes a
  ``NamedTuple`` of the six fields instead of a ``KeyValue`` (a design not taken: it would
  change a public type). ``pairs_mb`` and ``kv_of_mb``: the memory the pairs and the
  ``KeyValue`` list hold (``tracemalloc``; the keys are written once: create = mod revision).
- ``listing``: the ``initial`` scenario's keys (``k0000042`` = ``42``) and transform.
  ``seed_dict_ms`` is the Go seed's design (a dict of the transformed records),
  ``listing_ms`` a ``watch_prefix`` listing (``SnapshotEngine.begin_reset().add()``: the
  transform, plus the maps that deletes and key collisions need).
- ``events``: a ``watch_prefix``'s snapshot engine on 1,000 keys, a put per revision and a
  snapshot taken after each: ``apply_take_us`` per event for a consumer of the tree alone,
  ``apply_take_read_changes_us`` for one that also reads each snapshot's ``changes``.
  ``--before REV`` adds ``before_*``: the same for the engine (``_snapshot.py``) of that git
  revision, loaded beside today's, the two taking turns.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import operator
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from types import ModuleType
from typing import Any

from aetcd import rpc

from bench._common import REPO_ROOT, result, transform
from etcdkit import KeyValue
from etcdkit._snapshot import Pair, SnapshotEngine
from etcdkit._wire.kv import kv_of


def best_ms(fn: Callable[[], object], repeat: int) -> float:
    """The fastest of ``repeat`` calls, in ms (whatever ``fn`` returns is dropped after the
    clock stops)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        del out
    return round(min(times) * 1e3, 2)


def kept_mb(fn: Callable[[], object]) -> float:
    """The memory (MB, Python's allocations by ``tracemalloc``) held by what ``fn`` returns."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        out = fn()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    del out
    return round(kept / 1e6, 2)


def response(keys: int, key: Callable[[int], bytes], value: Callable[[int], bytes]) -> Any:
    """A parsed ``RangeResponse`` of ``keys`` keys, as grpc hands it over."""
    resp = rpc.RangeResponse()
    for i in range(keys):
        kv = resp.kvs.add()
        kv.key, kv.value = key(i), value(i)
        kv.create_revision = kv.mod_revision = 1000 + i
        kv.version = 1
    return rpc.RangeResponse.FromString(resp.SerializeToString())


# KeyValue's fields as a NamedTuple (tuple_kv_ms; not etcdkit's type)
_KV_FIELDS = [f.name for f in dataclasses.fields(KeyValue)]
_TupleKV: Any = collections.namedtuple("_TupleKV", _KV_FIELDS)  # type: ignore[misc]


def kv_case(keys: int, repeat: int) -> dict[str, Any]:
    kvs = response(keys, lambda i: b"/bench/range/k%07d" % i, lambda i: b"%016d" % i).kvs
    six = operator.attrgetter("key", "value", "create_revision", "mod_revision", "version", "lease")
    new_tuple = tuple.__new__
    figures = {
        "iterate_ms": best_ms(lambda: collections.deque(kvs, maxlen=0), repeat),
        "pairs_ms": best_ms(lambda: [(kv.key, kv.value) for kv in kvs], repeat),
        "six_fields_ms": best_ms(lambda: list(map(six, kvs)), repeat),
        "kv_of_ms": best_ms(lambda: [kv_of(kv) for kv in kvs], repeat),
        "tuple_kv_ms": best_ms(lambda: [new_tuple(_TupleKV, six(kv)) for kv in kvs], repeat),
        "pairs_mb": kept_mb(lambda: [(kv.key, kv.value) for kv in kvs]),
        "kv_of_mb": kept_mb(lambda: [kv_of(kv) for kv in kvs]),
    }
    figures["kv_of_vs_pairs"] = round(figures["kv_of_ms"] / figures["pairs_ms"], 2)
    return result("micro", "kv", {"keys": keys, "repeat": repeat}, figures)


def listing_case(keys: int, repeat: int) -> dict[str, Any]:
    kvs = response(keys, lambda i: b"/bench/initial/k%07d" % i, lambda i: b"%d" % i).kvs

    def listing() -> object:
        lst = SnapshotEngine(transform).begin_reset()
        lst.add(kvs)
        return lst

    figures = {
        "seed_dict_ms": best_ms(lambda: dict(transform(kv.key, kv.value) for kv in kvs), repeat),
        "listing_ms": best_ms(listing, repeat),
    }
    figures["listing_vs_seed_dict"] = round(figures["listing_ms"] / figures["seed_dict_ms"], 2)
    return result("micro", "listing", {"keys": keys, "repeat": repeat}, figures)


def engine_before(rev: str) -> ModuleType:
    """``etcdkit/_snapshot.py`` as it was at git revision ``rev``, loaded beside today's (it
    imports only modules that both share)."""
    source = subprocess.run(
        ["git", "show", f"{rev}:src/etcdkit/_snapshot.py"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    module = ModuleType("etcdkit._snapshot_before")
    module.__file__ = f"{rev}:src/etcdkit/_snapshot.py"
    sys.modules[module.__name__] = module  # (dataclasses look their module up)
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module


def events_case(keys: int, repeat: int, before: str | None = None) -> dict[str, Any]:
    """A ``watch_prefix``'s engine on 1,000 keys, one put per revision, a snapshot taken
    after each (what a consumer keeping up gets): microseconds per event, the consumer
    reading only the tree, and reading each snapshot's ``changes`` too. With ``before``, the
    same for the engine of that git revision, the two taking turns round by round."""
    events = min(keys, 20_000)
    engines: dict[str, Any] = {"": sys.modules[SnapshotEngine.__module__]}
    if before is not None:
        engines["before_"] = engine_before(before)

    def per_event_us(module: Any, read_changes: bool) -> float:
        engine = module.SnapshotEngine(transform)
        lst = engine.begin_reset()
        lst.add(Pair(b"/bench/events/k%07d" % i, b"0") for i in range(1000))
        engine.finish_reset(lst, 1)
        engine.take()
        puts = [[(b"/bench/events/k%07d" % (r % 1000), b"%d" % r)] for r in range(events)]
        t0 = time.perf_counter()
        for r, put in enumerate(puts, 2):
            engine.apply(r, put)
            snap = engine.take()
            if read_changes:
                len(snap.changes)
        return (time.perf_counter() - t0) * 1e6 / events

    times: dict[str, list[float]] = collections.defaultdict(list)
    for _ in range(repeat):
        for name, module in engines.items():
            times[f"{name}apply_take_us"].append(per_event_us(module, False))
            times[f"{name}apply_take_read_changes_us"].append(per_event_us(module, True))
    figures = {name: round(min(values), 3) for name, values in times.items()}
    params = {"events": events, "repeat": repeat, "before": before}
    return result("micro", "events", params, figures)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.micro", description=__doc__)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument(
        "--before", metavar="REV", help="the events case also for the engine of git revision REV"
    )
    args = parser.parse_args(argv)
    for case in (kv_case, listing_case):
        print(json.dumps(case(args.keys, args.repeat)), flush=True)
    print(json.dumps(events_case(args.keys, args.repeat, args.before)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
