"""``etcdkit elect NAME VALUE`` (campaign, lead until Ctrl-C) and ``etcdkit elect NAME
--listen`` (print the leader as it changes), in the same elections as ``etcdctl elect``."""

from __future__ import annotations

import argparse

from etcdkit import Leader
from etcdkit.cli.common import (
    EXIT_ERROR,
    EXIT_OK,
    ConnOptions,
    Stopper,
    UsageError,
    connected,
    emit,
    err,
    key_gone,
    out,
    raw,
    shown,
    shown_bytes,
    timestamp,
)


def _show(leader: Leader) -> str:
    return (
        f"{shown_bytes(leader.value)} (key {shown_bytes(leader.key)}, revision {leader.revision})"
    )


async def run_elect(args: argparse.Namespace, opts: ConnOptions) -> int:
    if not args.name:
        raise UsageError("NAME must not be empty")
    name = shown(args.name)
    value: str | None = None if args.value is None else shown(args.value)
    if args.listen and value is not None:
        raise UsageError("--listen only watches: leave out VALUE (or --listen to campaign)")
    if not args.listen and value is None:
        raise UsageError("give the VALUE to campaign with, or --listen to watch the leader")
    async with connected(opts) as client, Stopper() as stop:
        election = client.election(raw(args.name))
        if args.listen:
            leaders = election.observe()
            try:
                while (leader := await stop.run(anext(leaders))) is not None:
                    emit(f"{timestamp()} leader: {_show(leader)}")
            finally:
                await leaders.aclose()
            return EXIT_OK
        assert value is not None
        out(f"{timestamp()} campaigning in {name} as {value} (ttl {args.ttl} s)")
        campaign = election.campaign(raw(args.value), ttl=args.ttl)
        leadership = await stop.run(campaign.__aenter__())
        if leadership is None:
            err(f"etcdkit: interrupted while campaigning in {name}")
            return stop.exit_code
        key = leadership.key
        try:
            out(
                f"{timestamp()} elected: {name} = {value} (key "
                f"{shown_bytes(leadership.key)}, revision {leadership.revision}, "
                f"lease {leadership.lease_id:#x})"
            )
            await stop.run(leadership.lost.wait())
            if not stop.stopped:
                err(
                    f"etcdkit: leadership of {name} lost ({leadership.state.value}): its key was "
                    "deleted or its lease expired or was revoked; another may lead now"
                )
                return EXIT_ERROR
        finally:
            await campaign.__aexit__(None, None, None)
        if not await key_gone(client, key, opts):
            err(
                f"etcdkit: resignation from {name} not confirmed (the revoke went unanswered or "
                f"our key is still there): {shown_bytes(key)} may stay, and others "
                f"see us as leader, until its lease (ttl {args.ttl} s) runs out"
            )
            return EXIT_ERROR
        out(f"{timestamp()} resigned: {name}")
        return EXIT_OK
