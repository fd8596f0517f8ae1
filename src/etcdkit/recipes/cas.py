"""Guarded writes whose answer may never come: send a transaction again when its own guard
makes a second copy harmless, and say so when its outcome stays unknown.

A write that fails with a retryable error (the connection dropped, the deadline passed, the
member hung) may have been applied anyway, or may be applied later: a request parked in a
paused member is applied when the member resumes. The client re-sends only writes that
provably never left the process. A recipe whose transaction is guarded so that at most one
copy of it can apply (a compare on a mod revision that its own success changes, a bookkeeping
key that it bumps) may send it again: whichever copy etcd applies first, the compares of the
others fail. :func:`guarded_txn` does that until an answer comes, within a window:

- an answer of success is definite: this copy applied, and no earlier copy did;
- an answer of failure is definite only if no earlier copy went unanswered (``resent`` is
  false); otherwise an earlier copy may be the reason the compares failed, which the caller
  reports as :class:`~etcdkit.OutcomeUnknownError` unless it can tell more.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from etcdkit._errors import ClosedError, EtcdkitError, OutcomeUnknownError
from etcdkit._retry import Backoff, RetryPolicy
from etcdkit._surface import Etcd
from etcdkit._types import Compare, Op, TxnResult

__all__ = ["CONTENTION", "RESEND_WINDOW", "Guarded", "contention_backoff", "guarded_txn"]

RESEND_WINDOW = 10.0  # seconds a guarded write is sent again while it goes unanswered
CONTENTION = (0.002, 0.05)  # first and longest pause after a lost compare-and-swap, seconds


def contention_backoff(retry: RetryPolicy) -> Backoff:
    """The pauses between tries of a compare-and-swap that lost to another writer: a few
    milliseconds, doubling (the policy's multiplier) up to 50 ms, with jitter, on the policy's
    sleep. A lost race is progress (someone else won), not a fault: the policy's own pauses
    (from 50 ms up to seconds) are for etcd being unreachable, and would starve a loser of
    eight racing writers for seconds."""
    return Backoff(CONTENTION[0], CONTENTION[1], retry.multiplier, sleep=retry.sleep)


@dataclass(frozen=True, slots=True)
class Guarded:
    """The answer to a guarded transaction: etcd's result, and whether an earlier copy of it
    went unanswered (then a failed compare may be that copy's doing)."""

    result: TxnResult
    resent: bool

    @property
    def succeeded(self) -> bool:
        return self.result.succeeded

    @property
    def maybe_ours(self) -> bool:
        """The compares failed after an unanswered copy: that copy may have applied."""
        return self.resent and not self.result.succeeded


async def guarded_txn(
    etcd: Etcd,
    compare: Sequence[Compare],
    success: Sequence[Op],
    failure: Sequence[Op] = (),
    *,
    what: str,
    window: float = RESEND_WINDOW,
) -> Guarded:
    """Run ``txn(compare, success, failure)``; while it goes unanswered (a retryable error),
    send it again with the client's backoff, for up to ``window`` seconds.

    The caller promises that at most one copy can apply. Raises the error of a definite
    refusal (auth, a malformed request), :class:`ClosedError` when the client closes, and
    :class:`OutcomeUnknownError` (naming ``what``) when no copy was answered within
    ``window``, or when a later copy was refused after an earlier one went unanswered.
    """
    retry = etcd.retry
    backoff = retry.backoff(deadline=window)
    unanswered: EtcdkitError | None = None
    while True:
        try:
            result = await etcd.txn(compare, success, failure)
        except ClosedError:
            raise
        except EtcdkitError as exc:
            if not retry.is_retryable(exc):
                if unanswered is None:
                    raise  # refused: nothing applied
                raise OutcomeUnknownError(
                    f"{what}: a copy sent earlier got no answer and the next was refused; "
                    "the first may or may not have been applied"
                ) from exc
            unanswered = exc
            if not await backoff.wait():
                raise OutcomeUnknownError(
                    f"{what}: no answer within {window:g} s; it may or may not have been "
                    "applied (or be applied later)"
                    if window > 0
                    else f"{what}: no answer, and it is not sent again; it may or may not "
                    "have been applied (or be applied later)"
                ) from exc
            continue
        return Guarded(result, unanswered is not None)
