"""How grpc errors map onto the etcdkit hierarchy, for the answers a race makes rare in the
real-etcd tests (the same mapping is exercised end to end throughout the suite)."""

from __future__ import annotations

import grpc
import pytest

from etcdkit import EtcdTimeoutError, ServerError
from etcdkit._wire.conn import map_rpc_error, status_code


def _error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


def test_etcds_own_context_deadline_is_a_timeout() -> None:
    """etcd gets the call's deadline; when its context runs out first (a linearizable member
    list with no leader), Go's grpc answers UNKNOWN "context deadline exceeded" just before
    this side's DEADLINE_EXCEEDED would have fired. Seen in CI: it must be the same error."""
    exc = _error(grpc.StatusCode.UNKNOWN, "context deadline exceeded")
    assert status_code(exc) == grpc.StatusCode.DEADLINE_EXCEEDED
    err = map_rpc_error(exc, "127.0.0.1:2379", "list members")
    assert isinstance(err, EtcdTimeoutError)
    assert "context deadline exceeded" in str(err)
    assert "timeout=" in str(err)


@pytest.mark.parametrize(
    "details", ["context canceled", "etcdserver: something else", "deadline exceeded by me"]
)
def test_other_unknown_answers_stay_server_errors(details: str) -> None:
    exc = _error(grpc.StatusCode.UNKNOWN, details)
    assert status_code(exc) == grpc.StatusCode.UNKNOWN
    err = map_rpc_error(exc, "127.0.0.1:2379", "put 'k'")
    assert type(err) is ServerError
