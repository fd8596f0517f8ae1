"""How grpc errors map onto the etcdkit hierarchy, for the answers a race makes rare in the
real-etcd tests (the same mapping is exercised end to end throughout the suite)."""

from __future__ import annotations

import grpc
import pytest

from etcdkit import ConnectionUnavailableError, EtcdTimeoutError, ServerError
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


def test_an_etcdkit_error_of_a_stream_is_not_wrapped_again() -> None:
    """A stream's own error (a stall, a refused login) reached its reconnect loop as a
    ConnectionUnavailableError whose message held the first one's repr."""
    stalled = ConnectionUnavailableError("lease keepalive stream at x: no answer for 3.0 s")
    assert map_rpc_error(stalled, "127.0.0.1:2379", "lease keepalive stream") is stalled
    other = map_rpc_error(OSError("reset"), "127.0.0.1:2379", "watch stream")
    assert isinstance(other, ConnectionUnavailableError)
    assert str(other) == "watch stream at 127.0.0.1:2379 failed: OSError('reset')"
