"""Engine throughput end to end: no-op diamond steps per second through the real `pgflow worker`.

In the same run, on the same fresh server and data, it measures the floor (bench/engine_floor.py:
the same schema driven by raw batched SQL, no handlers) so the ratio compares like with like.

    python bench/engine.py [--quick] [--runs N] [--repeat R] [--concurrency C]
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

import asyncpg
from _common import emit, machine, private_server, summary
from engine_floor import DIAMOND, drive, seed

from pgflow.db.connection import init_connection
from pgflow.db.migrate import migrate

BENCH_DIR = Path(__file__).resolve().parent
WAIT_TIMEOUT = 600  # seconds


async def seed_worker_flow(url: str, runs: int) -> None:
    conn = await asyncpg.connect(url)
    await init_connection(conn)
    try:
        await migrate(conn)
        sys.path.insert(0, str(BENCH_DIR))
        from noop_flows import diamond

        await conn.fetchval("select pgflow.define_flow($1::jsonb)", diamond.definition())
        await conn.execute(
            "select pgflow.run_flow('bench_diamond', to_jsonb(i)) from generate_series(1, $1) as i",
            runs,
        )
    finally:
        await conn.close()


async def wait_for_runs(url: str, runs: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        deadline = time.monotonic() + WAIT_TIMEOUT
        while time.monotonic() < deadline:
            done = await conn.fetchval("select count(*) from pgflow.runs where status <> 'started'")
            if done >= runs:
                return
            await asyncio.sleep(0.02)
        raise TimeoutError("runs did not finish")
    finally:
        await conn.close()


def worker_rate(url: str, runs: int, concurrency: int) -> float:
    asyncio.run(seed_worker_flow(url, runs))
    env = {**os.environ, "PYTHONPATH": str(BENCH_DIR)}
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
        started = time.perf_counter()
        asyncio.run(wait_for_runs(url, runs))
        elapsed = time.perf_counter() - started
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    return runs * len(DIAMOND["steps"]) / elapsed


def floor_rate(url: str, runs: int) -> float:
    asyncio.run(seed(url, runs))
    return asyncio.run(drive(url, 2, 100, runs * len(DIAMOND["steps"])))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=200)
    args = parser.parse_args()
    runs = 500 if args.quick else args.runs
    repeat = 1 if args.quick else args.repeat
    engine, floor = [], []
    for _ in range(repeat):
        with private_server() as url:
            floor.append(floor_rate(url, runs))
        with private_server() as url:
            engine.append(worker_rate(url, runs, args.concurrency))
    ratios = [e / f for e, f in zip(engine, floor, strict=True)]
    emit(
        {
            "benchmark": "engine",
            "engine_steps_per_s": summary(engine),
            "engine_floor_steps_per_s": summary(floor),
            "ratio_to_floor": {
                "min": round(min(ratios), 3),
                "median": round(statistics.median(ratios), 3),
                "max": round(max(ratios), 3),
            },
            "engine_each": [round(e) for e in engine],
            "floor_each": [round(f) for f in floor],
            "runs": runs,
            "steps_per_run": len(DIAMOND["steps"]),
            "concurrency": args.concurrency,
            "machine": machine(),
        }
    )


if __name__ == "__main__":
    main()
