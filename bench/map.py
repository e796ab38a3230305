"""Map steps against the engine: a map of N no-op elements (default 10,000) through the real
`pgflow worker`, in elements per second, next to the engine's steps per second on no-op diamond
runs of as many steps, alternated in one sitting (issue 18's target: the map no slower).

Each measurement gets a fresh private server (bench/_common.py). The map's rate counts from the
first to the last element completion (step_states.completed_at), as bench/engine.py counts
steps, so the worker's start-up is left out of both.

    python bench/map.py [--elements N] [--repeat R] [--concurrency C]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
from _common import emit, machine, private_server, summary
from engine import worker_definition, worker_rate
from history import prepare

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))

from pgflow.db.connection import init_connection  # noqa: E402
from pgflow.db.migrate import migrate_url  # noqa: E402

WAIT_TIMEOUT = 600  # seconds
POLL_INTERVAL = 0.1  # seconds


async def start_map(url: str, elements: int) -> str:
    await migrate_url(url)
    sys.path.insert(0, str(BENCH_DIR))
    from noop_flows import mapped

    conn = await asyncpg.connect(url)
    await init_connection(conn)
    try:
        await conn.execute("select pgflow.define_flow($1::jsonb)", mapped.definition())
        run_id: str = str(await conn.fetchval("select pgflow.run_flow('bench_map', $1::jsonb)",
                                              list(range(elements))))
        return run_id
    finally:
        await conn.close()


async def wait_and_rate(url: str, run_id: str, worker: subprocess.Popen[bytes]) -> float:
    conn = await asyncpg.connect(url)
    try:
        deadline = time.monotonic() + WAIT_TIMEOUT
        while time.monotonic() < deadline:
            if worker.poll() is not None:
                raise RuntimeError(f"the worker exited with {worker.returncode}")
            status = await conn.fetchval("select status from pgflow.runs where run_id = $1::uuid",
                                         run_id)
            if status == "completed":
                break
            if status != "started":
                raise RuntimeError(f"the map run ended {status}")
            await asyncio.sleep(POLL_INTERVAL)
        else:
            raise RuntimeError("the map run did not complete in time")
        row = await conn.fetchrow(
            "select count(*) as n, extract(epoch from max(completed_at) - min(completed_at)) as s"
            " from pgflow.step_states where run_id = $1::uuid and map_parent is not null", run_id)
        return float(row["n"]) / float(row["s"])
    finally:
        await conn.close()


def map_rate(url: str, elements: int, concurrency: int) -> float:
    run_id = asyncio.run(start_map(url, elements))
    env = {**os.environ, "PYTHONPATH": str(BENCH_DIR)}
    worker = subprocess.Popen(
        [sys.executable, "-m", "pgflow", "--log-level", "warning", "worker",
         "--database-url", url, "--flows", "noop_flows:mapped",
         "--concurrency", str(concurrency)], env=env)
    try:
        return asyncio.run(wait_and_rate(url, run_id, worker))
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--elements", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=200)
    args = parser.parse_args()
    mapped: list[float] = []
    engine: list[float] = []
    runs = args.elements // 4  # diamond runs of as many steps
    for _ in range(args.repeat):
        with private_server() as url:
            mapped.append(map_rate(url, args.elements, args.concurrency))
        with private_server() as url:
            asyncio.run(prepare(url, worker_definition(), 0, runs, False))
            engine.append(worker_rate(url, args.concurrency))
    result: dict[str, Any] = {
        "benchmark": "map",
        "elements": args.elements,
        "map_elements_per_s": summary(mapped),
        "engine_steps_per_s": summary(engine),
        "map_each": [round(m) for m in mapped],
        "engine_each": [round(e) for e in engine],
        "map_to_engine": [round(m / e, 3) for m, e in zip(mapped, engine, strict=True)],
        "concurrency": args.concurrency,
        "machine": machine(),
    }
    emit(result)


if __name__ == "__main__":
    main()
