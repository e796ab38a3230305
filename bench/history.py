"""A long-lived database's state for the engine benchmark: history, a backlog, statistics.

History is N finished runs inserted set-based: one real run of the flow is taken through the
engine (run_flow, claim_tasks, report_steps), then its rows in runs, step_states and run_events
are cloned under new run_ids in batches, columns copied through jsonb so that the clone follows
whatever columns the tables have. Foreign keys and the event trigger are skipped
(session_replication_role = replica): the rows are consistent by construction, and history was
notified long ago. 1,000,000 runs take minutes, not the hours the engine would take one by one.
"""

from __future__ import annotations

import time
from typing import Any

import asyncpg

from pgflow.db.connection import init_connection
from pgflow.db.migrate import migrate

HISTORY_BATCH = 50_000  # runs per transaction
BACKLOG_BATCH = 5_000
HISTORY_DAYS = 30  # history's runs are spread over this many days before now

TABLES = ("pgflow.runs", "pgflow.step_states", "pgflow.run_events")

# One template's rows per table, cloned for each new id. In run_events the run_id is also inside
# the payload, so the row's text is rewritten; timestamps named below are moved to the clone's
# time (keys a table does not have are ignored by jsonb_populate_record).
_CLONE = """
insert into {table}
select c.*
from {table} as t
cross join history_ids as h
cross join lateral jsonb_populate_record(null::{table},
  {row} || jsonb_build_object(
    'run_id', h.run_id, 'started_at', h.at, 'created_at', h.at, 'available_at', h.at,
    'completed_at', h.at + interval '1 second', 'at', h.at)
) as c
where t.run_id = $1::uuid
"""


def _clone_sql(table: str) -> str:
    row = (
        "replace(to_jsonb(t)::text, $1::uuid::text, h.run_id::text)::jsonb"
        if table == "pgflow.run_events"
        else "to_jsonb(t)"
    )
    return _CLONE.format(table=table, row=row)


async def prepare(
    url: str, definition: dict[str, Any], history: int, backlog: int, analyze: bool
) -> dict[str, float]:
    """Migrates, defines the flow, loads history, queues the backlog, analyzes; returns timings."""
    conn = await asyncpg.connect(url, command_timeout=None)
    await init_connection(conn)
    timings: dict[str, float] = {}
    try:
        await migrate(conn)
        await conn.fetchval("select pgflow.define_flow($1::jsonb)", definition)
        slug = definition["slug"]
        if history:
            started = time.perf_counter()
            await load_history(conn, slug, history)
            timings["history_s"] = round(time.perf_counter() - started, 1)
        started = time.perf_counter()
        for first in range(1, backlog + 1, BACKLOG_BATCH):
            last = min(first + BACKLOG_BATCH - 1, backlog)
            await conn.execute(
                "select pgflow.run_flow($1, jsonb_build_object('n', i))"
                " from generate_series($2::int, $3::int) as i",
                slug,
                first,
                last,
            )
        timings["queue_s"] = round(time.perf_counter() - started, 1)
        if analyze:
            started = time.perf_counter()
            for table in (*TABLES, "pgflow.flows", "pgflow.steps"):
                await conn.execute(f"analyze {table}")
            timings["analyze_s"] = round(time.perf_counter() - started, 1)
    finally:
        await conn.close()
    return timings


async def load_history(conn: asyncpg.Connection, slug: str, runs: int) -> None:
    template = await finished_run(conn, slug)
    await conn.execute("set session_replication_role = replica")
    try:
        for first in range(1, runs + 1, HISTORY_BATCH):
            last = min(first + HISTORY_BATCH - 1, runs)
            async with conn.transaction():
                # the same ids in every table: fixed for the batch by a temporary table. Random
                # (version 4) ids, as a database whose history predates run_flow's
                # time-ordered ids holds: spread over the whole key space, the harder case
                await conn.execute(
                    "create temporary table history_ids on commit drop as"
                    " select gen_random_uuid() as run_id,"
                    f" now() - interval '{HISTORY_DAYS} days' * ((g - 1)::float8 / $3) as at"
                    " from generate_series($1::bigint, $2::bigint) as g",
                    first,
                    last,
                    runs,
                )
                for table in TABLES:
                    await conn.execute(_clone_sql(table), template)
    finally:
        await conn.execute("reset session_replication_role")
    # the template itself is history too; the backlog starts after it. A long-lived database's
    # history has been vacuumed (hint bits, visibility map); analyzing is left to --analyze.
    for table in TABLES:
        await conn.execute(f"vacuum {table}")


async def finished_run(conn: asyncpg.Connection, slug: str) -> Any:
    """Takes one run of the flow through the engine to its end; returns its run_id."""
    run_id = await conn.fetchval("select pgflow.run_flow($1, '{}'::jsonb)", slug)
    while True:
        rows = await conn.fetch("select * from pgflow.claim_tasks('history', 100)")
        if not rows:
            break
        await conn.fetchval(
            "select pgflow.report_steps('history', $1, $2, $3, $4::jsonb[], $5)",
            [r["run_id"] for r in rows],
            [r["step_slug"] for r in rows],
            [r["attempt"] for r in rows],
            [None] * len(rows),
            [None] * len(rows),
        )
    status = await conn.fetchval("select status from pgflow.runs where run_id = $1", run_id)
    if status != "completed":
        raise RuntimeError(f"the history template run ended {status}")
    return run_id
