"""define_flow's cost by shape size: first definition, then the same shape again.

Shapes: chains of N steps (each depends on the previous one) and N independent steps. Each is
defined on a fresh database, then defined again unchanged (what every worker and gateway start
does). A call over --timeout seconds is cancelled and reported as such.

    python bench/define_flow.py [--upto VERSION] [--timeout S] [--chain 1000,2000,5000]
                                [--independent 10000] [--database-url URL]

--upto applies the migrations up to that version only, so the same script can measure a
define_flow before and after a migration that changes it. (The 2026-11-26 figures used
--upto 6, before the pre-release migrations were folded into 0001_initial; to measure that
old define_flow now, run this script in a checkout of commit 0f578ad.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from typing import Any

import asyncpg
from _common import emit, machine, private_server

from pgflow.db.connection import init_connection
from pgflow.db.migrate import load_migrations


def chain(n: int) -> dict[str, Any]:
    steps = [{"slug": "s0"}] + [{"slug": f"s{i}", "depends_on": [f"s{i - 1}"]}
                                for i in range(1, n)]
    return {"slug": f"chain_{n}", "steps": steps}


def independent(n: int) -> dict[str, Any]:
    return {"slug": f"independent_{n}", "steps": [{"slug": f"s{i}"} for i in range(n)]}


async def apply_migrations(connection: asyncpg.Connection, upto: int | None) -> None:
    for migration in load_migrations():
        if upto is not None and int(migration.version) > upto:
            break
        await connection.execute(migration.sql)


async def timed_define(connection: asyncpg.Connection, definition: dict[str, Any],
                       timeout: float) -> float | None:
    """Seconds define_flow took; None when it was cancelled at the timeout."""
    await connection.execute(f"set statement_timeout = {int(timeout * 1000)}")
    started = time.perf_counter()
    try:
        await connection.fetchval("select pgflow.define_flow($1::jsonb)", definition)
    except asyncpg.QueryCanceledError:
        return None
    return time.perf_counter() - started


async def measure(url: str, definition: dict[str, Any], upto: int | None,
                  timeout: float) -> dict[str, Any]:
    admin = await asyncpg.connect(url)
    name = definition["slug"].lower()
    await admin.execute(f"drop database if exists {name}")
    await admin.execute(f"create database {name}")
    await admin.close()
    connection = await asyncpg.connect(url.rsplit("/", 1)[0] + "/" + name)
    try:
        await init_connection(connection)
        await apply_migrations(connection, upto)
        first = await timed_define(connection, definition, timeout)
        again = await timed_define(connection, definition, timeout) if first is not None else None
    finally:
        await connection.close()

    def shown(seconds: float | None) -> float | str:
        return round(seconds, 3) if seconds is not None else f">{timeout:g}"

    return {"shape": definition["slug"], "steps": len(definition["steps"]),
            "first_s": shown(first), "again_s": shown(again)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upto", type=int, default=None, help="last migration version to apply")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per call")
    parser.add_argument("--chain", default="1000,2000,5000", help="chain lengths, comma-separated")
    parser.add_argument("--independent", default="10000", help="independent step counts")
    parser.add_argument("--database-url", default=None,
                        help="a server to use (a superuser's URL) instead of a private one")
    args = parser.parse_args()
    shapes = [chain(int(n)) for n in args.chain.split(",") if n]
    shapes += [independent(int(n)) for n in args.independent.split(",") if n]
    with contextlib.ExitStack() as stack:
        url = args.database_url or stack.enter_context(private_server())
        for shape in shapes:
            result = await measure(url, shape, args.upto, args.timeout)
            emit({"bench": "define_flow", "upto": args.upto or "all", **result,
                  "machine": machine()})


if __name__ == "__main__":
    asyncio.run(main())
