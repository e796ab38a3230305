"""Retention soak: runs flow through a real `pgflow worker --retention` without pause, and the
tables must level off while the throughput holds.

A private server (autovacuum on; its naptime shortened to --naptime so that a short soak sees
vacuum reclaim the pruned rows' space, as a long-lived database does); one
`pgflow worker --flows noop_flows --retention 5s --retention-interval 1`; a feeder that keeps
--backlog runs of the no-op diamond unfinished by starting more as they finish. Every --sample
seconds it records the runs finished since the last sample and each table's rows and bytes
(pg_total_relation_size: heap, indexes and TOAST).

Reported: means over the first, middle and last third of the samples, and ratios measured
within the one run (on a shared machine only in-run ratios compare): the throughput's last
third to its first (it holds: near 1.0), and each table's bytes, last third to middle (level:
near 1.0; the first third is the ramp, while the tables fill and before vacuum runs).

    python bench/retention_soak.py [--seconds 120] [--retention 5s] [--interval 1]
                                   [--backlog 400] [--sample 2] [--naptime 10s] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
from _common import emit, machine, private_server

from pgflow.db.migrate import migrate_url

BENCH_DIR = Path(__file__).resolve().parent
TABLES = ("runs", "step_states", "run_events")
FEED_PERIOD = 0.05  # seconds between the feeder's looks at the backlog
SAMPLE_SQL = """
  select (select count(*) from pgflow.runs where status = 'started') as unfinished,
""" + ",\n".join(
    f"  (select count(*) from pgflow.{t}) as {t}_rows,"
    f" pg_total_relation_size('pgflow.{t}') as {t}_bytes" for t in TABLES
)


def start_worker(url: str, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": f"{BENCH_DIR}{os.pathsep}{BENCH_DIR.parent}"}
    return subprocess.Popen(
        [sys.executable, "-m", "pgflow", "--log-level", "warning", "worker",
         "--database-url", url, "--flows", "noop_flows", "--concurrency", str(args.concurrency),
         "--retention", args.retention, "--retention-interval", str(args.interval)],
        env=env,
    )


async def wait_for_flow(conn: asyncpg.Connection) -> None:
    """The worker defines the flow as it starts."""
    for _ in range(600):
        if await conn.fetchval("select pgflow.get_flow('bench_diamond') is not null"):
            return
        await asyncio.sleep(0.1)
    raise TimeoutError("the worker did not define bench_diamond")


async def soak(url: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    feeder = await asyncpg.connect(url)
    sampler = await asyncpg.connect(url)
    samples: list[dict[str, Any]] = []
    try:
        await wait_for_flow(feeder)
        started = 0
        loop = asyncio.get_running_loop()
        end = loop.time() + args.seconds
        next_sample = loop.time() + args.sample
        last_finished, last_at = 0, loop.time()
        while loop.time() < end:
            unfinished = await feeder.fetchval(
                "select count(*) from pgflow.runs where status = 'started'")
            if unfinished < args.backlog:
                wanted = args.backlog - unfinished
                await feeder.execute(
                    "select pgflow.run_flow('bench_diamond', 'null'::jsonb)"
                    " from generate_series(1, $1)", wanted)
                started += wanted
            if loop.time() >= next_sample:
                row = dict(await sampler.fetchrow(SAMPLE_SQL))
                now = loop.time()
                finished = started - row.pop("unfinished")
                samples.append({"t": round(now - (end - args.seconds), 1),
                                "runs_per_s": (finished - last_finished) / (now - last_at),
                                **row})
                last_finished, last_at = finished, now
                next_sample += args.sample
            await asyncio.sleep(FEED_PERIOD)
    finally:
        await feeder.close()
        await sampler.close()
    return samples


def thirds(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over the first, middle and last third of the samples. The first third holds the
    ramp (the tables fill up to the retention's worth of runs, and vacuum has yet to run), so
    the sizes' level shows as last third to middle third; the throughput, last to first."""
    third = max(1, len(samples) // 3)
    parts = {"first": samples[:third], "middle": samples[third:-third] or samples,
             "last": samples[-third:]}

    def mean(part: str, key: str) -> float:
        return statistics.fmean(s[key] for s in parts[part])

    report: dict[str, Any] = {
        "throughput_runs_per_s": {p: round(mean(p, "runs_per_s"), 1) for p in parts},
        "throughput_last_to_first": round(
            mean("last", "runs_per_s") / mean("first", "runs_per_s"), 3),
    }
    for table in TABLES:
        rows, size = f"{table}_rows", f"{table}_bytes"
        report[table] = {
            "rows": {p: round(mean(p, rows)) for p in parts},
            "bytes": {p: round(mean(p, size)) for p in parts},
            "bytes_last_to_middle": round(mean("last", size) / mean("middle", size), 3),
            # the rows follow the throughput (a retention's worth of runs): bytes per live row
            # stays level when the space of pruned rows is reused
            "bytes_per_row": {p: round(mean(p, size) / mean(p, rows)) for p in parts},
            "bytes_max": max(s[size] for s in samples),
        }
    return report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--retention", default="5s", help="the worker's --retention")
    parser.add_argument("--interval", type=float, default=1.0,
                        help="the worker's --retention-interval, seconds")
    parser.add_argument("--backlog", type=int, default=400, help="runs kept unfinished")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--sample", type=float, default=2.0, help="seconds between samples")
    parser.add_argument("--naptime", default="10s", help="autovacuum_naptime of the server")
    parser.add_argument("--quick", action="store_true", help="45 s")
    args = parser.parse_args()
    if args.quick:
        args.seconds = 45.0
    with private_server({"autovacuum_naptime": args.naptime}) as url:
        asyncio.run(migrate_url(url))
        worker = start_worker(url, args)
        began = time.monotonic()
        try:
            samples = asyncio.run(soak(url, args))
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(30)
    emit({
        "benchmark": "retention_soak",
        "seconds": round(time.monotonic() - began, 1),
        "retention": args.retention,
        "retention_interval_s": args.interval,
        "backlog": args.backlog,
        "concurrency": args.concurrency,
        "autovacuum_naptime": args.naptime,
        **thirds(samples),
        "samples": [{k: (round(v, 1) if isinstance(v, float) else v) for k, v in s.items()}
                    for s in samples],
        "machine": machine(),
    })


if __name__ == "__main__":
    main()
