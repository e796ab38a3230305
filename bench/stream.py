"""Streaming from inside steps (``ctx.emit``), end to end: worker → log → gateway → socket.

    python bench/stream.py [--steps 1000] [--chunks 200] [--every 0.05] [--burst 5]
                           [--fast-chunks 200000]

On a private PostgreSQL (durable commits), one ``pgflow serve`` and one ``pgflow worker``
(separate processes), and clients in this process on uvloop:

- latency: one step emits a chunk every 10 ms; a subscribed socket receives each; latency is
  receive time minus the emit time the chunk carries (one machine, one clock);
- aggregate: ``--steps`` runs stream at once (all starting at one moment, once every run is
  started and watched), each watched by its own socket; chunks delivered per second from the
  first to the last, and every run's chunks checked: none lost, none twice, in order;
- one step as fast as it can (``emit_async``): chunks written into the log per second;
- bytes stored per chunk: run_events' size (heap, indexes, TOAST) grown by that step's chunks.

Prints one JSON line. Figures vary by the hour on a shared machine: compare runs of one sitting.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import uvloop
from _common import emit, machine, private_server
from interactive import cpu_seconds, postgres_cpu, postmaster_of
from websockets.asyncio.client import connect

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
START_TIMEOUT = 60.0
RUN_TIMEOUT = 300.0


def start(url: str, concurrency: int, interval: float) -> tuple[int, list[subprocess.Popen[bytes]]]:
    env = {**os.environ, "PYTHONPATH": str(BENCH_DIR)}
    base = [sys.executable, "-m", "pgflow", "--log-level", "warning"]
    common = ["--database-url", url, "--flows", "stream_flows"]
    gateway = subprocess.Popen(
        [*base, "serve", *common, "--host", "127.0.0.1", "--port", "0",
         "--max-sockets", str(concurrency + 100)],
        env=env, cwd=REPO, stdout=subprocess.PIPE, bufsize=0)
    assert gateway.stdout is not None
    line = gateway.stdout.readline().decode()  # "pgflow gateway listening on http://...:PORT"
    port = int(line.strip().rsplit(":", 1)[1])
    worker = subprocess.Popen(
        [*base, "worker", *common, "--concurrency", str(concurrency),
         "--stream-interval", str(interval)],
        env=env, cwd=REPO, stdout=subprocess.DEVNULL)
    return port, [gateway, worker]


def post(port: int, flow: str, run_input: Any) -> str:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/rpc/run_flow",
        data=json.dumps({"flow_slug": flow, "input": run_input}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        run_id: str = json.loads(response.read())["run_id"]
        return run_id


async def wait_run(url: str, run_id: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while time.monotonic() < deadline:
            status = await connection.fetchval(
                "select status from pgflow.runs where run_id = $1", run_id)
            if status in ("completed", "failed"):
                if status == "failed":
                    raise RuntimeError(f"run {run_id} failed")
                return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"run {run_id} did not end")
    finally:
        await connection.close()


async def follow(port: int, run_id: str, on_chunk: Any) -> None:
    """Subscribes one socket to ``run_id`` and calls ``on_chunk(chunk, now)`` per chunk until
    the run ends."""
    # no compression: a browser would negotiate it, but these frames are below the gateway's
    # --deflate-min-bytes and go uncompressed anyway
    async with connect(f"ws://127.0.0.1:{port}/realtime", max_size=None, proxy=None,
                       open_timeout=60, ping_interval=None, compression=None) as ws:
        await ws.send(json.dumps({"type": "subscribe", "run_id": run_id, "since": 0}))
        async with asyncio.timeout(RUN_TIMEOUT):
            async for raw in ws:
                now = time.time()
                message = orjson.loads(raw)
                if message.get("type") != "event":
                    continue
                if message["event"] == "step:stream":
                    for chunk in message["chunks"]:
                        on_chunk(chunk, now)
                elif message["event"] in ("run:completed", "run:failed"):
                    return


async def latency(port: int) -> dict[str, Any]:
    run_id = post(port, "bench_stream_paced", {"chunks": 300, "every": 0.01, "wait": 1.0})
    delays: list[float] = []
    await follow(port, run_id, lambda chunk, now: delays.append(
        (now - float(chunk.split(":")[1])) * 1000))
    delays.sort()
    return {"chunks": len(delays), "p50_ms": round(statistics.median(delays), 1),
            "p99_ms": round(delays[int(len(delays) * 0.99) - 1], 1),
            "max_ms": round(delays[-1], 1)}


async def aggregate(port: int, steps: int, chunks: int, every: float,
                    burst: int) -> dict[str, Any]:
    # every step starts streaming at one moment, once all are started and watched
    run_input = {"chunks": chunks, "every": every, "burst": burst,
                 "start_at": time.time() + 5.0 + steps / 200}
    run_ids = [post(port, "bench_stream_paced", run_input) for _ in range(steps)]
    seen: dict[str, list[int]] = {run_id: [] for run_id in run_ids}
    first_last = [float("inf"), 0.0]

    def recorder(run_id: str) -> Any:
        def on_chunk(chunk: str, now: float) -> None:
            seen[run_id].append(int(chunk.split(":")[0]))
            first_last[0] = min(first_last[0], now)
            first_last[1] = max(first_last[1], now)
        return on_chunk

    await asyncio.gather(*(follow(port, run_id, recorder(run_id)) for run_id in run_ids))
    delivered = sum(len(v) for v in seen.values())
    in_order = sum(1 for v in seen.values() if v == list(range(chunks)))
    return {"steps": steps, "chunks_per_step": chunks, "every_s": every, "burst": burst,
            "delivered": delivered, "expected": steps * chunks,
            "runs_complete_in_order": in_order,
            "lost": steps * chunks - len({(r, i) for r, v in seen.items() for i in v}),
            "duplicated": delivered - len({(r, i) for r, v in seen.items() for i in v}),
            "chunks_per_s": round(delivered / max(first_last[1] - first_last[0], 1e-9))}


async def fast(url: str, port: int, count: int) -> dict[str, Any]:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute("checkpoint")
        before = await connection.fetchval("select pg_total_relation_size('pgflow.run_events')")
        run_id = post(port, "bench_stream_fast", {"chunks": count})
        await wait_run(url, run_id)
        # from the step's start (its first emit) to the write of its last chunk
        written, span = await connection.fetchrow(
            "select sum(jsonb_array_length(payload -> 'chunks')) filter ("
            "   where event = 'step:stream'),"
            " extract(epoch from max(at) filter (where event = 'step:stream')"
            "   - min(at) filter (where event = 'step:started'))"
            " from pgflow.run_events where run_id = $1", run_id)
        events = await connection.fetchval(
            "select count(*) from pgflow.run_events where run_id = $1 and event = 'step:stream'",
            run_id)
        after = await connection.fetchval("select pg_total_relation_size('pgflow.run_events')")
    finally:
        await connection.close()
    return {"chunks": int(written), "events": events,
            "chunks_per_s": round(int(written) / max(float(span), 1e-9)),
            "bytes_per_chunk": round((after - before) / int(written), 1)}


async def measure(url: str, args: argparse.Namespace) -> dict[str, Any]:
    port, procs = start(url, max(args.steps, 10), args.interval)
    try:
        post(port, "bench_stream_paced", {"chunks": 1, "every": 0})  # defined and claimed
        await asyncio.sleep(2.0)
        result = {"latency": await latency(port)}
        result["one_step"] = await fast(url, port, args.fast_chunks)
        postmaster = await asyncio.to_thread(postmaster_of, url)
        pids = {"gateway": procs[0].pid, "worker": procs[1].pid, "clients": os.getpid()}
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        pg_before = postgres_cpu(postmaster)
        result["aggregate"] = await aggregate(port, args.steps, args.chunks, args.every,
                                              args.burst)
        spent = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
        spent["postgres"] = sum(t - pg_before.get(pid, (kind, 0.0))[1]
                                for pid, (kind, t) in postgres_cpu(postmaster).items())
        result["aggregate"]["cpu_s"] = {k: round(v, 2) for k, v in spent.items()}
        return result
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--chunks", type=int, default=200, help="per step, in the aggregate")
    parser.add_argument("--every", type=float, default=0.05, help="seconds between bursts")
    parser.add_argument("--burst", type=int, default=5, help="chunks emitted at a time")
    parser.add_argument("--fast-chunks", type=int, default=200_000)
    parser.add_argument("--interval", type=float, default=0.02, help="--stream-interval")
    args = parser.parse_args()
    with private_server() as url:
        result = uvloop.run(measure(url, args))
    emit({"benchmark": "stream", "args": vars(args), **result, "machine": machine()})


if __name__ == "__main__":
    main()
