"""The engine's floor: the same schema driven by raw batched SQL, no handlers, no worker.

Connections each loop: claim up to BATCH tasks, report them all in one report_steps call (one
transaction, one NOTIFY). What this reaches is the ceiling a real worker can approach.

    python bench/engine_floor.py [--quick] [--runs N] [--connections C] [--batch B]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import asyncpg
from _common import emit, machine, private_server, summary

from pgflow.db.connection import init_connection
from pgflow.db.migrate import migrate

DIAMOND = {
    "slug": "diamond",
    "steps": [
        {"slug": "a"},
        {"slug": "b", "depends_on": ["a"]},
        {"slug": "c", "depends_on": ["a"]},
        {"slug": "d", "depends_on": ["b", "c"]},
    ],
}


async def seed(url: str, runs: int) -> None:
    conn = await asyncpg.connect(url)
    await init_connection(conn)
    try:
        await migrate(conn)
        await conn.fetchval("select pgflow.define_flow($1::jsonb)", DIAMOND)
        await conn.execute(
            "select pgflow.run_flow('diamond', jsonb_build_object('n', i))"
            " from generate_series(1, $1) as i",
            runs,
        )
    finally:
        await conn.close()


async def drive(url: str, connections: int, batch: int, total_steps: int) -> float:
    done = 0
    finished = asyncio.Event()

    async def loop(name: str) -> None:
        nonlocal done
        conn = await asyncpg.connect(url)
        await init_connection(conn)
        try:
            while not finished.is_set():
                rows = await conn.fetch(
                    "select run_id, step_slug, attempt from pgflow.claim_tasks($1, $2)", name, batch
                )
                if not rows:
                    await asyncio.sleep(0.001)
                    continue
                await conn.fetchval(
                    "select pgflow.report_steps($1, $2, $3, $4, $5::jsonb[], $6)",
                    name,
                    [r[0] for r in rows],
                    [r[1] for r in rows],
                    [r[2] for r in rows],
                    [None] * len(rows),
                    [None] * len(rows),
                )
                done += len(rows)
                if done >= total_steps:
                    finished.set()
        finally:
            await conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(loop(f"floor{i}") for i in range(connections)))
    return total_steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int, default=5000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    runs = 500 if args.quick else args.runs
    repeat = 1 if args.quick else args.repeat
    rates = []
    for _ in range(repeat):
        with private_server() as url:
            asyncio.run(seed(url, runs))
            rates.append(asyncio.run(drive(url, args.connections, args.batch, runs * 4)))
    emit(
        {
            "benchmark": "engine_floor",
            "steps_per_s": summary(rates),
            "runs": runs,
            "connections": args.connections,
            "batch": args.batch,
            "machine": machine(),
        }
    )


if __name__ == "__main__":
    main()
