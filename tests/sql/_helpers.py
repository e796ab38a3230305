"""Small drivers of the SQL API for the engine's tests."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import orjson

DIAMOND: dict[str, Any] = {
    "slug": "diamond",
    "steps": [
        {"slug": "a"},
        {"slug": "b", "depends_on": ["a"]},
        {"slug": "c", "depends_on": ["a"]},
        {"slug": "d", "depends_on": ["b", "c"]},
    ],
}


async def define(conn: asyncpg.Connection, definition: dict[str, Any]) -> dict[str, Any]:
    shape: dict[str, Any] = await conn.fetchval("select pgflow.define_flow($1::jsonb)", definition)
    return shape


async def start(conn: asyncpg.Connection, flow_slug: str, input: Any = None) -> uuid.UUID:
    run_id: uuid.UUID = await conn.fetchval(
        "select pgflow.run_flow($1, $2::jsonb)", flow_slug, input
    )
    return run_id


async def claim(
    conn: asyncpg.Connection, worker: str = "w1", n: int = 100, lease: float = 30
) -> list[asyncpg.Record]:
    return list(
        await conn.fetch("select * from pgflow.claim_tasks($1, $2, null, $3)", worker, n, lease)
    )


async def complete(
    conn: asyncpg.Connection, task: asyncpg.Record, output: Any = None, worker: str = "w1"
) -> bool:
    applied: bool = await conn.fetchval(
        "select pgflow.complete_step($1, $2, $3::jsonb, $4, $5)",
        task["run_id"],
        task["step_slug"],
        output if output is not None else {"by": task["step_slug"]},
        worker,
        task["attempt"],
    )
    return applied


async def fail(
    conn: asyncpg.Connection, task: asyncpg.Record, error: str = "boom", worker: str = "w1"
) -> bool:
    applied: bool = await conn.fetchval(
        "select pgflow.fail_step($1, $2, $3, $4, $5)",
        task["run_id"],
        task["step_slug"],
        error,
        worker,
        task["attempt"],
    )
    return applied


async def events(
    conn: asyncpg.Connection, run_id: uuid.UUID, since: int = 0
) -> list[dict[str, Any]]:
    return [
        r[0]
        for r in await conn.fetch("select e from pgflow.get_run_events($1, $2) as e", run_id, since)
    ]


async def run_state(conn: asyncpg.Connection, run_id: uuid.UUID) -> dict[str, Any]:
    run: dict[str, Any] = await conn.fetchval("select pgflow.get_run($1)", run_id)
    return run


async def drive_to_end(conn: asyncpg.Connection, run_id: uuid.UUID) -> dict[str, Any]:
    """Claims and completes until the run is finished (a one-connection worker)."""
    for _ in range(1000):
        tasks = await claim(conn)
        if not tasks:
            state = await run_state(conn, run_id)
            if state["status"] != "started":
                return state
            raise AssertionError(f"run {run_id} is stuck: {state}")
        for task in tasks:
            await complete(conn, task)
    raise AssertionError("run did not finish")


class Notifications:
    """Collects the payloads of one channel on a dedicated connection."""

    def __init__(self, conn: asyncpg.Connection, channel: str) -> None:
        self.conn = conn
        self.channel = channel
        self.queue: asyncio.Queue[str] = asyncio.Queue()

    async def __aenter__(self) -> Notifications:
        await self.conn.add_listener(self.channel, self._on_notify)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.conn.remove_listener(self.channel, self._on_notify)

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self.queue.put_nowait(payload)

    async def next(self, timeout: float = 5.0) -> str:
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def next_json(self, timeout: float = 5.0) -> Any:
        return orjson.loads(await self.next(timeout))

    async def drain(self, quiet: float = 0.2) -> list[str]:
        """Everything that arrives until nothing has for ``quiet`` seconds."""
        got = []
        while True:
            try:
                got.append(await asyncio.wait_for(self.queue.get(), quiet))
            except TimeoutError:
                return got
