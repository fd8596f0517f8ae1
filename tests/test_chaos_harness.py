"""The fault checkers' supervisor rule (bench/chaos/faults.py): a member that died of
etcd-io/etcd#14110 is started again; one we killed or stopped is not. On a real etcd process
(its log is what the rule reads)."""

from __future__ import annotations

from bench.chaos.faults import TXN_PANIC, panicked, revive_panicked

from etcdkit.server import EtcdServer

PANIC_LINE = (
    '{"level":"panic","caller":"etcdserver/apply.go:638",' + TXN_PANIC + ',"stacktrace":""}'
)


def _log_panic(server: EtcdServer) -> None:
    """What etcd 3.5.1 writes to its log before it exits on that panic."""
    with open(server.log_path, "a") as log:
        log.write(PANIC_LINE + "\npanic: unexpected error during txn\n")


async def test_only_a_member_that_died_of_the_txn_panic_is_revived() -> None:
    server = EtcdServer()
    try:
        server.start()
        assert not panicked(server)  # running
        server.kill()
        assert not panicked(server)  # killed by us: its log has no panic
        assert await revive_panicked([server]) == 0
        assert not server.running
        _log_panic(server)
        assert panicked(server)
        notes: list[str] = []
        assert await revive_panicked([server], notes.append) == 1
        assert server.running
        server.wait_healthy()
        assert len(notes) == 1
        assert "etcd-io/etcd#14110" in notes[0]
        # the panic was before this start: not panicked again, even once it stops
        server.kill()
        assert not panicked(server)
    finally:
        server.close()
