"""What a finished run costs on disk: bytes per run of runs, step_states and run_events.

On a fresh server per repeat it finishes N diamond runs through the real engine (run_flow,
claim_tasks, report_steps, as the worker calls them through pgflow.db.store.Store, outputs like
bench/noop_flows.py's), VACUUMs, and divides each table's size by the runs: heap (main fork),
indexes, TOAST (with the free space and visibility maps) and their total, plus bytes per event.
Sizes hardly vary between repeats (random run ids split index pages at random places).

    python bench/storage.py [--quick] [--runs N] [--repeat R]
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import asyncpg
from _common import emit, machine, private_server, summary

from pgflow.db.connection import init_connection
from pgflow.db.migrate import migrate
from pgflow.db.store import Completion, Store

TABLES = ("runs", "step_states", "run_events")
DIAMOND = {
    "slug": "diamond",
    "steps": [
        {"slug": "a"},
        {"slug": "b", "depends_on": ["a"]},
        {"slug": "c", "depends_on": ["a"]},
        {"slug": "d", "depends_on": ["b", "c"]},
    ],
}
OUTPUTS = {"a": 1, "b": 2, "c": 3, "d": 4}  # bench/noop_flows.py's handlers
CONNECTIONS = 4
BATCH = 200  # tasks per claim_tasks and per report_steps


async def build(url: str, runs: int) -> None:
    """Finishes ``runs`` diamond runs through the engine's functions."""
    conn = await asyncpg.connect(url)
    await init_connection(conn)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    store = await Store.open(url, max_size=CONNECTIONS)
    try:
        await store.define_flow(DIAMOND)
        for first in range(0, runs, 100):
            await asyncio.gather(*(
                store.run_flow("diamond", {"n": i}) for i in range(first, min(first + 100, runs))
            ))
        remaining = runs * len(OUTPUTS)

        async def loop(name: str) -> None:
            nonlocal remaining
            while remaining > 0:
                tasks = await store.claim_tasks(name, BATCH)
                if not tasks:
                    await asyncio.sleep(0.01)
                    continue
                await store.report(name, [
                    Completion(t.run_id, t.step_slug, t.attempt, OUTPUTS[t.step_slug])
                    for t in tasks
                ])
                remaining -= len(tasks)

        await asyncio.gather(*(loop(f"storage{i}") for i in range(CONNECTIONS)))
    finally:
        await store.close()


async def measure(url: str, runs: int) -> dict[str, Any]:
    conn = await asyncpg.connect(url)
    try:
        unfinished = await conn.fetchval(
            "select count(*) from pgflow.runs where status <> 'completed'"
        )
        if unfinished:
            raise RuntimeError(f"{unfinished} runs did not complete")
        for table in TABLES:
            await conn.execute(f"vacuum pgflow.{table}")
        sizes: dict[str, Any] = {}
        for table in TABLES:
            row = await conn.fetchrow(
                "select pg_total_relation_size(c.oid) as total, pg_relation_size(c.oid) as heap,"
                " pg_indexes_size(c.oid) as indexes,"
                " pg_table_size(c.oid) - pg_relation_size(c.oid) as toast"
                " from pg_class as c where c.oid = $1::regclass",
                f"pgflow.{table}",
            )
            sizes[table] = {k: row[k] / runs for k in ("total", "heap", "indexes", "toast")}
            sizes[table]["per_index"] = {
                r[0]: r[1] / runs for r in await conn.fetch(
                    "select i.indexrelid::regclass::text, pg_relation_size(i.indexrelid)"
                    " from pg_index as i where i.indrelid = $1::regclass order by 1",
                    f"pgflow.{table}",
                )
            }
        events = await conn.fetchval("select count(*) from pgflow.run_events")
        sizes["events_per_run"] = events / runs
        sizes["bytes_per_event"] = sizes["run_events"]["total"] * runs / events
        sizes["run_total"] = sum(sizes[t]["total"] for t in TABLES)
        return sizes
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    runs = 300 if args.quick else args.runs
    repeat = 1 if args.quick else args.repeat
    results = []
    for _ in range(repeat):
        with private_server() as url:
            asyncio.run(build(url, runs))
            results.append(asyncio.run(measure(url, runs)))
    per_table = {
        table: {
            part: summary([r[table][part] for r in results])
            for part in ("total", "heap", "indexes", "toast")
        } | {
            "per_index": {
                name: summary([r[table]["per_index"][name] for r in results])
                for name in results[0][table]["per_index"]
            }
        }
        for table in TABLES
    }
    emit({
        "benchmark": "storage",
        "bytes_per_run": summary([r["run_total"] for r in results]),
        "bytes_per_event": summary([r["bytes_per_event"] for r in results]),
        "events_per_run": results[0]["events_per_run"],
        "tables": per_table,
        "runs": runs,
        "repeat": repeat,
        "machine": machine(),
    })


if __name__ == "__main__":
    main()
