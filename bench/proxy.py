"""Scenario ``proxy``: many client processes watching one prefix, direct vs etcd's gRPC proxy.

One job per way in (``via=direct``, ``via=grpc-proxy``: ``etcd grpc-proxy start`` in front of
the job's etcd), each with an etcd of its own. ``clients`` processes each open ``watchers``
``watch_prefix`` of one prefix (the default transform) and wait until all are LIVE. Then an idle
window (what keeping the watches confirmed costs: progress requests directly, liveness probes
through the proxy), then a writer in the job process puts ``puts`` values at a steady ``rate``
to the prefix's ``keys`` keys, each value the ``time.monotonic()`` of calling ``put`` (system-
wide on Linux, so a client process can subtract it). Every watcher of every client records, for
each changed key of each snapshot it gets, now minus that value: put → snapshot latency. A last
put of a stop key ends the run; each watcher's final tree is then checked against a
``get_prefix`` at its revision.

Figures: etcd's watcher and watch-stream gauges once all are LIVE (its metrics endpoint), etcd's
CPU seconds in the idle window and in the write phase (``psutil`` on its pid), the proxy's CPU
too, the clients' CPU, latency p50/p99 over all watchers, reconnects and the exact count.
``python -m bench.proxy ENDPOINT PREFIX WATCHERS`` is one client process (JSON lines out).
"""

from __future__ import annotations

import asyncio
import json
import re
import resource
import sys
import time
import urllib.request
from typing import Any

import psutil

from bench._common import (
    REPO_ROOT,
    Env,
    Job,
    child_env,
    key_of,
    ms,
    percentile,
    preload,
    progress,
    result,
)
from etcdkit import AsyncClient, PrefixWatch, Snapshot, WatchState
from etcdkit.testing import GrpcProxy

PREFIX = b"/bench/proxy/"
STOP = PREFIX + b"stop"


def jobs(quick: bool) -> list[Job]:
    size: dict[str, Any] = (
        {"clients": 10, "watchers": 5, "keys": 50, "puts": 100, "rate": 20.0, "idle_s": 3.0}
        if quick
        # 1,000 watchers at 2 puts/s are 2,000 snapshots a second for the clients: as much as
        # 50 processes keep up with on 2 cores (at 20/s the latency was their backlog: 14-42 s)
        else {"clients": 50, "watchers": 20, "keys": 100, "puts": 60, "rate": 2.0, "idle_s": 10.0}
    )
    return [Job("proxy", {"via": via, **size}) for via in ("direct", "grpc-proxy")]


def _gauge(text: str, name: str) -> float:
    m = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    if m is None:
        raise RuntimeError(f"no {name} in the metrics")
    return float(m.group(1))


def _metrics(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5.0) as resp:
        return str(resp.read().decode())


def _cpu_s(proc: psutil.Process | None) -> float:
    if proc is None:
        return 0.0
    t = proc.cpu_times()
    return float(t.user + t.system)


async def run(env: Env, params: dict[str, Any]) -> None:
    via = str(params["via"])
    clients, watchers = int(params["clients"]), int(params["watchers"])
    keys, puts, rate = int(params["keys"]), int(params["puts"]), float(params["rate"])
    server = env.server
    proxy: GrpcProxy | None = None
    procs: list[asyncio.subprocess.Process] = []
    try:
        if via == "grpc-proxy":
            proxy = await asyncio.to_thread(GrpcProxy(server).start)
        endpoint = proxy.endpoint if proxy is not None else env.endpoint
        etcd_proc = psutil.Process(server.pid)
        proxy_proc = psutil.Process(proxy.pid) if proxy is not None else None
        async with AsyncClient(env.endpoint, timeout=60.0) as writer:
            await preload(writer, ((key_of(PREFIX, i), b"0") for i in range(keys)))
            progress(f"proxy via={via}: starting {clients} clients x {watchers} watchers")
            t0 = time.monotonic()
            for _ in range(clients):
                procs.append(
                    await asyncio.create_subprocess_exec(
                        sys.executable, "-m", "bench.proxy", endpoint, PREFIX.decode(),
                        str(watchers), stdout=asyncio.subprocess.PIPE, env=child_env(),
                        cwd=str(REPO_ROOT),
                    )
                )  # fmt: skip
            for p in procs:
                assert p.stdout is not None
                async with asyncio.timeout(600.0):
                    line = await p.stdout.readline()
                if not json.loads(line or b"{}").get("ready"):
                    raise RuntimeError(f"a client process did not get ready: {line[:200]!r}")
            ready_s = time.monotonic() - t0
            text = _metrics(f"http://127.0.0.1:{server.metrics_port}/metrics")
            etcd_watchers = _gauge(text, "etcd_debugging_mvcc_watcher_total")
            etcd_streams = _gauge(text, "etcd_debugging_mvcc_watch_stream_total")
            progress(f"proxy via={via}: all LIVE in {ready_s:.1f} s; etcd watchers {etcd_watchers}")

            idle_s = float(params["idle_s"])
            e0, x0 = _cpu_s(etcd_proc), _cpu_s(proxy_proc)
            await asyncio.sleep(idle_s)
            e1, x1 = _cpu_s(etcd_proc), _cpu_s(proxy_proc)

            loop = asyncio.get_running_loop()
            start = loop.time()
            for i in range(puts):
                delay = start + i / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await writer.put(key_of(PREFIX, i % keys), b"%.6f" % time.monotonic())
            write_s = loop.time() - start
            e2, x2 = _cpu_s(etcd_proc), _cpu_s(proxy_proc)
            await writer.put(STOP, b"stop")
            finals = []
            for p in procs:
                assert p.stdout is not None
                async with asyncio.timeout(300.0):
                    finals.append(json.loads(await p.stdout.readline()))
            for p in procs:
                await p.wait()
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
        if proxy is not None:
            await asyncio.to_thread(proxy.close)
    lat = [x for f in finals for x in f["latencies"]]
    total = clients * watchers
    figures: dict[str, Any] = {
        "etcd_watchers": etcd_watchers,
        "etcd_watch_streams": etcd_streams,
        "all_live_s": round(ready_s, 2),
        "etcd_cpu_idle_pct": round(100.0 * (e1 - e0) / idle_s, 2),
        "etcd_cpu_s": round(e2 - e1, 3),
        "etcd_cpu_pct": round(100.0 * (e2 - e1) / write_s, 2),
        "clients_cpu_s": round(sum(f["cpu_s"] for f in finals), 2),
        "write_s": round(write_s, 2),
        "latency_p50_ms": ms(percentile(lat, 50)),
        "latency_p99_ms": ms(percentile(lat, 99)),
        "latency_max_ms": ms(max(lat)),
        "samples": len(lat),
        "exact_watchers": sum(f["exact"] for f in finals),
        "live_watchers": sum(f["live"] for f in finals),
        "watchers": total,
        "reconnects": sum(f["reconnects"] for f in finals),
    }
    if proxy is not None:
        figures["proxy_cpu_idle_pct"] = round(100.0 * (x1 - x0) / idle_s, 2)
        figures["proxy_cpu_s"] = round(x2 - x1, 3)
        figures["proxy_cpu_pct"] = round(100.0 * (x2 - x1) / write_s, 2)
    progress(
        f"proxy via={via}: etcd watchers {etcd_watchers}, etcd CPU {figures['etcd_cpu_s']} s "
        f"(idle {figures['etcd_cpu_idle_pct']} %), p50 {figures['latency_p50_ms']} ms, "
        f"p99 {figures['latency_p99_ms']} ms, exact {figures['exact_watchers']}/{total}"
    )
    env.emit(
        result(
            "proxy",
            f"via={via}",
            params,
            figures,
            notes="latency: put() called -> snapshot seen, every watcher of every client process",
        )
    )


# -- one client process ---------------------------------------------------------------------------


async def _client(endpoint: str, prefix: bytes, watchers: int) -> dict[str, Any]:
    async with AsyncClient(endpoint, timeout=60.0) as client:
        watches: list[PrefixWatch[str, bytes]] = [
            client.watch_prefix(prefix) for _ in range(watchers)
        ]
        for w in watches:
            w.start()
        await asyncio.gather(*(w.synced(timeout=600.0) for w in watches))
        print(json.dumps({"ready": True}), flush=True)
        latencies: list[float] = []
        stop = STOP.decode()

        async def consume(watch: PrefixWatch[str, bytes]) -> Snapshot[str, bytes]:
            async for snap in watch:
                now = time.monotonic()
                for key, change in snap.changes.items():
                    if key != stop and change.new is not None and change.new != b"0":
                        latencies.append(now - float(change.new))
                if stop in snap.tree:
                    return snap
            raise RuntimeError("the watch ended")

        finals = await asyncio.gather(*(consume(w) for w in watches))
        exact = 0
        for snap in finals:
            got = await client.get_prefix(prefix, revision=snap.revision)
            exact += dict(snap.tree) == {kv.key.decode(): kv.value for kv in got.kvs}
        live = sum(w.state is WatchState.LIVE for w in watches)
        reconnects = client.core.watches.reconnects
        for w in watches:
            await w.aclose()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "latencies": [round(x, 6) for x in latencies],
        "exact": exact,
        "live": live,
        "reconnects": reconnects,
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
    }


def main(argv: list[str]) -> int:
    endpoint, prefix, watchers = argv
    out = asyncio.run(_client(endpoint, prefix.encode(), int(watchers)), debug=False)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
