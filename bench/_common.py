"""Shared pieces of the benchmarks: a private server, timing, results as JSON lines."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pgflow.db.local_server import PostgresCluster

# A benchmark server: durable commits as in production, more connections than the default, and
# autovacuum on at its defaults (said explicitly: a production database analyzes its tables as
# they change, and the engine's speed must survive that).
BENCH_SETTINGS = {"max_connections": "300", "shared_buffers": "256MB", "autovacuum": "on"}


# PGFLOW_BENCH_STATEMENTS=<file>: profile the server's statements (pg_stat_statements, nested
# statements and planning included) and write the top ones to <file> when the server stops.
# It slows the server a little: figures from a profiled run are for finding where time goes only.
PROFILE_SETTINGS = {
    "shared_preload_libraries": "pg_stat_statements",
    "pg_stat_statements.track": "all",
    "pg_stat_statements.track_planning": "on",
}


@contextlib.contextmanager
def private_server(settings: dict[str, str] | None = None) -> Iterator[str]:
    profile = os.environ.get("PGFLOW_BENCH_STATEMENTS")
    directory = Path(tempfile.mkdtemp(prefix="pgflow-bench-"))
    extra = PROFILE_SETTINGS if profile else {}
    cluster = PostgresCluster(directory, settings={**BENCH_SETTINGS, **extra, **(settings or {})})
    cluster.start()
    try:
        if profile:
            _run(_reset_statements(cluster.uri()))
        yield cluster.uri()
        if profile:
            _run(_dump_statements(cluster.uri(), Path(profile)))
    finally:
        cluster.kill()
        shutil.rmtree(directory, ignore_errors=True)


def _run(coroutine: Any) -> Any:
    import asyncio

    return asyncio.run(coroutine)


async def _reset_statements(url: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(url)
    try:
        await connection.execute("create extension if not exists pg_stat_statements")
    finally:
        await connection.close()


async def _dump_statements(url: str, path: Path) -> None:
    import asyncpg

    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch(
            "select calls, rows, round(total_exec_time::numeric, 1) as exec_ms,"
            " round(total_plan_time::numeric, 1) as plan_ms, toplevel,"
            " left(regexp_replace(query, '\\s+', ' ', 'g'), 160) as query"
            " from pg_stat_statements order by total_exec_time + total_plan_time desc limit 60"
        )
    finally:
        await connection.close()
    with path.open("w") as out:
        out.write("calls\trows\texec_ms\tplan_ms\ttop\tquery\n")
        for row in rows:
            out.write("\t".join(str(value) for value in row.values()) + "\n")


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "min": round(min(values), 1),
        "median": round(statistics.median(values), 1),
        "max": round(max(values), 1),
    }


def machine() -> dict[str, Any]:
    import os

    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def emit(result: dict[str, Any]) -> None:
    print(json.dumps(result), flush=True)
