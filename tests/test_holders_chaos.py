"""The semaphore and read-write lock fault checkers (bench.chaos.holders) in the test suite.

``pytest -m chaos`` runs each once on a real 3-member cluster for a short while with a fixed seed
(override with ``ETCDKIT_HOLDERS_CHAOS_SEED``, the length with
``ETCDKIT_HOLDERS_CHAOS_SECONDS``) and prints its summary. The other tests show, without etcd,
that its checks catch what they claim to catch.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from bench.chaos.holders import (
    Entry,
    check_rwlock,
    check_semaphore,
    check_spans,
    max_keys,
    most_believed,
    run_holders_chaos,
)
from bench.chaos.locks import LOCK_FAULTS

from etcdkit import KeyValue

DEFAULT_SEED = 20261203
# Every fault kind is injected at least once however short the run (about 18 s each with 8).
SECONDS = float(os.environ.get("ETCDKIT_HOLDERS_CHAOS_SECONDS", "8"))


@pytest.mark.chaos
@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.timeout(SECONDS + 150)
@pytest.mark.parametrize("recipe", ["semaphore", "rwlock"])
async def test_fenced_holders_stay_within_bounds_through_faults(
    recipe: str, record_property: Callable[[str, object], None]
) -> None:
    seed = int(os.environ.get("ETCDKIT_HOLDERS_CHAOS_SEED", DEFAULT_SEED))
    report = await run_holders_chaos(recipe, seed, SECONDS)  # type: ignore[arg-type]
    record_property("report", report.summary())
    assert report.violations == [], report.summary()
    assert report.acquisitions > 20
    assert report.journal_records > 100
    assert report.journal_records >= report.writes_accepted
    missing = [f for f in LOCK_FAULTS if not report.faults.get(f)]
    assert not missing, f"faults never injected: {missing}"
    assert len(report.recoveries) == sum(report.faults.values())
    if recipe == "semaphore":
        assert report.max_holder_keys == report.permits == 2
        assert report.max_fenced_together == 2  # both permits were used, never a third
    else:
        assert report.max_readers_together > 1  # readers did share
        assert report.writes_by_writers > 0


# -- the checks themselves, without etcd ----------------------------------------------------------


def kv(key: str, rev: int) -> KeyValue:
    return KeyValue(key.encode(), b"", rev, rev, 1, 1)


def test_semaphore_records_by_holders_pass_and_a_stale_one_is_caught() -> None:
    p = "/s"
    keys = (kv("/s/holders/a", 5), kv("/s/holders/b", 7), kv("/s/waiters/c", 8))
    ok = [Entry(10, 5, "p0.0", "hold", keys), Entry(11, 7, "p1.0", "hold", keys)]
    assert check_semaphore(ok, p, 2) == []
    stale = [Entry(12, 8, "p2.0", "hold", keys)]  # a waiter's token: it did not hold
    assert "stale write accepted at revision 12" in check_semaphore(stale, p, 2)[0]
    three = (*keys, kv("/s/holders/d", 9))
    bad = check_semaphore([Entry(13, 9, "p2.1", "hold", three)], p, 2)
    assert bad == ["3 holder keys at revision 13, over 2"]


def test_rwlock_records_are_checked_by_mode() -> None:
    p = "/rw"
    keys = (kv("/rw/read/a", 5), kv("/rw/write/b", 7), kv("/rw/read/c", 8))
    assert check_rwlock([Entry(10, 5, "r", "read", keys)], p) == []
    bad = check_rwlock([Entry(10, 7, "w", "write", keys)], p)  # a reader was older
    assert "with 1 older keys" in bad[0]
    bad = check_rwlock([Entry(10, 8, "r2", "read", keys)], p)  # behind a writer
    assert "behind a writer" in bad[0]
    assert "key was gone" in check_rwlock([Entry(10, 99, "x", "read", keys)], p)[0]


def test_spans_of_fenced_writes() -> None:
    def e(rev: int, token: int, mode: str, who: str = "") -> Entry:
        return Entry(rev, token, who or f"w{token}", mode, ())

    entries = [e(10, 1, "read"), e(11, 2, "read"), e(12, 1, "read"), e(13, 2, "read")]
    assert check_spans(entries, 5, exclusive_mode="write") == ([], 2, 2)
    entries.append(e(12, 3, "write"))  # a writer while readers held
    bad, most, _ = check_spans(entries, 5, exclusive_mode="write")
    assert bad
    assert "a write hold together with" in bad[0]
    assert most == 3
    holds = [e(10, 1, "hold"), e(11, 2, "hold"), e(12, 3, "hold"), e(13, 1, "hold")]
    assert check_spans(holds, 2)[0] == []  # 2's writes ended before 3's began
    bad, _, _ = check_spans([*holds, e(14, 2, "hold")], 2)
    assert bad == ["3 fenced holders together at revision 12, over 2"]
    bad, _, _ = check_spans([e(10, 1, "hold", "a"), e(11, 1, "hold", "b")], 2)
    assert bad == ["two writers with token 1: a and ['b']"]


def test_counts_over_time() -> None:
    assert max_keys([(1, 1), (2, 1), (3, -1), (4, 1), (5, 1), (6, -1)]) == 3
    events = [
        {"ev": "acquired", "who": "a", "t": 0.0},
        {"ev": "acquired", "who": "b", "t": 0.5},
        {"ev": "releasing", "who": "a", "t": 1.0},
        {"ev": "acquired", "who": "c", "t": 1.0},
        {"ev": "lost", "who": "b", "t": 2.0},
    ]
    assert most_believed(events) == 2
