"""Engine throughput end to end: no-op diamond steps per second through the real `pgflow worker`.

On a fresh server per measurement it prepares a long-lived database's state (bench/history.py):
`--history N` finished runs already in the tables, a backlog of runs queued before the worker
starts, and with `--analyze` statistics on every pgflow table (autovacuum stays on, at its
defaults, during the drain). The rate counts from the first to the last step completion of the
backlog (step_states.completed_at), so the worker's start-up is left out. Several `--backlog`
values are measured in one invocation, and their ratio (largest backlog to smallest) is
reported: on a shared machine only ratios within one run compare.

Unless `--skip-floor`, the same state is also drained by raw batched SQL (bench/engine_floor.py),
so the ratio to the floor compares like with like.

    python bench/engine.py [--quick] [--backlog N [N ...]] [--analyze] [--history N]
                           [--repeat R] [--concurrency C] [--skip-floor]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
from _common import emit, machine, private_server, summary
from engine_floor import DIAMOND, drive
from history import prepare

BENCH_DIR = Path(__file__).resolve().parent
WAIT_TIMEOUT = 1800  # seconds
POLL_INTERVAL = 0.25  # seconds; each poll reads two small partial indexes, not the tables


async def db_now(url: str) -> datetime.datetime:
    conn = await asyncpg.connect(url)
    try:
        now: datetime.datetime = await conn.fetchval("select clock_timestamp()")
        return now
    finally:
        await conn.close()


async def wait_for_drain(url: str, worker: subprocess.Popen[bytes] | None = None) -> None:
    """Waits until no step is ready or leased: with no failures, every run has then finished."""
    conn = await asyncpg.connect(url)
    try:
        deadline = time.monotonic() + WAIT_TIMEOUT
        while time.monotonic() < deadline:
            if worker is not None and worker.poll() is not None:
                raise RuntimeError(f"the worker exited with {worker.returncode} before the drain")
            # each in its index's order with a limit: the first entry of the ready and of
            # the leased index (an `exists` may be planned as a scan of the table)
            busy = await conn.fetchval(
                "select exists (select from pgflow.step_states as s"
                "  where s.status in ('started', 'retrying') and s.lease_expires_at is null"
                "  order by s.available_at limit 1)"
                " or exists (select from pgflow.step_states as s"
                "  where s.lease_expires_at is not null order by s.lease_expires_at limit 1)"
            )
            if not busy:
                return
            await asyncio.sleep(POLL_INTERVAL)
        raise TimeoutError("runs did not finish")
    finally:
        await conn.close()


async def drain_rate(url: str, since: datetime.datetime) -> tuple[int, float]:
    """Steps completed since `since`, per second from the first completion to the last."""
    conn = await asyncpg.connect(url)
    try:
        unfinished = await conn.fetchval(
            "select count(*) from pgflow.runs where status <> 'completed'"
        )
        if unfinished:
            raise RuntimeError(f"{unfinished} runs did not complete")
        row = await conn.fetchrow(
            "select count(*) as n, extract(epoch from max(completed_at) - min(completed_at)) as s"
            " from pgflow.step_states where completed_at >= $1",
            since,
        )
        return row["n"], row["n"] / float(row["s"])
    finally:
        await conn.close()


def worker_rate(url: str, concurrency: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(BENCH_DIR)}
    since = asyncio.run(db_now(url))
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pgflow",
            "--log-level",
            "warning",
            "worker",
            "--database-url",
            url,
            "--flows",
            "noop_flows",
            "--concurrency",
            str(concurrency),
        ],
        env=env,
    )
    try:
        asyncio.run(wait_for_drain(url, worker))
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    return asyncio.run(drain_rate(url, since))[1]


def floor_rate(url: str, steps: int) -> float:
    since = asyncio.run(db_now(url))
    asyncio.run(drive(url, 2, 100, steps))
    return asyncio.run(drain_rate(url, since))[1]


def worker_definition() -> dict[str, Any]:
    sys.path.insert(0, str(BENCH_DIR))
    from noop_flows import diamond

    definition: dict[str, Any] = diamond.definition()
    return definition


def measure(args: argparse.Namespace, backlog: int) -> dict[str, Any]:
    steps = backlog * len(DIAMOND["steps"])
    engine: list[float] = []
    floor: list[float] = []
    timings: dict[str, float] = {}
    for _ in range(args.repeat):
        if not args.skip_floor:
            with private_server() as url:
                asyncio.run(prepare(url, DIAMOND, args.history, backlog, args.analyze))
                floor.append(floor_rate(url, steps))
        with private_server() as url:
            timings = asyncio.run(
                prepare(url, worker_definition(), args.history, backlog, args.analyze)
            )
            engine.append(worker_rate(url, args.concurrency))
    result: dict[str, Any] = {
        "backlog": backlog,
        "engine_steps_per_s": summary(engine),
        "engine_each": [round(e) for e in engine],
        "prepare_s": timings,
    }
    if floor:
        ratios = [e / f for e, f in zip(engine, floor, strict=True)]
        result["engine_floor_steps_per_s"] = summary(floor)
        result["floor_each"] = [round(f) for f in floor]
        result["ratio_to_floor"] = {
            "min": round(min(ratios), 3),
            "median": round(statistics.median(ratios), 3),
            "max": round(max(ratios), 3),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--backlog", "--runs", type=int, nargs="+", default=[5000],
        help="runs queued before the worker starts; several values are measured in turn",
    )
    parser.add_argument("--analyze", action="store_true", help="ANALYZE after queuing")
    parser.add_argument("--history", type=int, default=0, help="finished runs already there")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--skip-floor", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.backlog, args.repeat = [500], 1
    results = [measure(args, backlog) for backlog in args.backlog]
    medians = {r["backlog"]: r["engine_steps_per_s"]["median"] for r in results}
    emit(
        {
            "benchmark": "engine",
            "backlogs": results,
            # the rate at the largest backlog over the rate at the smallest (medians)
            "largest_to_smallest": round(medians[max(medians)] / medians[min(medians)], 3),
            "analyze": args.analyze,
            "history": args.history,
            "steps_per_run": len(DIAMOND["steps"]),
            "concurrency": args.concurrency,
            "machine": machine(),
        }
    )


if __name__ == "__main__":
    main()
