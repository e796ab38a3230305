from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg
import pytest

from tests.sql._helpers import claim, complete, define, fail, start

ONE = {"slug": "one", "max_attempts": 1, "steps": [{"slug": "only"}]}


async def listed(conn: Any, **kwargs: Any) -> list[dict[str, Any]]:
    names = ", ".join(f"{name} => ${i}" for i, name in enumerate(kwargs, 1))
    rows = await conn.fetch(f"select r from pgflow.list_runs({names}) as r", *kwargs.values())
    return [r[0] for r in rows]


async def runs_with_statuses(conn: Any) -> dict[str, uuid.UUID]:
    """One run of ONE per status, started in this order: completed, failed, started."""
    await define(conn, ONE)
    done, failed, going = [await start(conn, "one") for _ in range(3)]
    tasks = {t["run_id"]: t for t in await claim(conn)}
    await complete(conn, tasks[done])
    await fail(conn, tasks[failed])
    return {"completed": done, "failed": failed, "started": going}


async def test_list_runs_filters_by_statuses(conn: Any) -> None:
    runs = await runs_with_statuses(conn)
    assert [r["run_id"] for r in await listed(conn, statuses=["failed"])] == [
        str(runs["failed"])]
    both = await listed(conn, statuses=["completed", "started"])
    assert [r["run_id"] for r in both] == [str(runs["started"]), str(runs["completed"])]
    assert len(await listed(conn)) == 3


async def test_list_runs_filters_by_a_start_time_window(conn: Any) -> None:
    runs = await runs_with_statuses(conn)
    by_id = {r["run_id"]: r for r in await listed(conn)}
    first = datetime.fromisoformat(by_id[str(runs["completed"])]["started_at"])
    last = datetime.fromisoformat(by_id[str(runs["started"])]["started_at"])
    after = await listed(conn, started_after=first)
    assert [r["run_id"] for r in after] == [str(runs["started"]), str(runs["failed"])]
    window = await listed(conn, started_after=first, started_before=last)
    assert [r["run_id"] for r in window] == [str(runs["failed"])]


async def test_list_runs_pages_by_keyset_without_losing_runs_that_share_a_start_time(
    conn: Any,
) -> None:
    await define(conn, ONE)
    async with conn.transaction():  # one transaction: one now(), one started_at for all
        started = {await start(conn, "one") for _ in range(7)}
    seen: list[str] = []
    position: dict[str, Any] = {}
    while True:
        page = await listed(conn, max_runs=3, **position)
        seen += [r["run_id"] for r in page]
        if len(page) < 3:
            break
        position = {"after_started_at": datetime.fromisoformat(page[-1]["started_at"]),
                    "after_run_id": uuid.UUID(page[-1]["run_id"])}
    assert sorted(seen) == sorted(str(r) for r in started)
    assert seen == sorted(seen, reverse=True)  # same started_at: run_id descending


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ("statuses => array['running']",
         "list_runs: statuses must be null or a non-empty array of started, completed, failed, "
             "cancelled, "
         "not {running}"),
        ("statuses => array[]::text[]", "statuses must be null or a non-empty array"),
        ("after_run_id => gen_random_uuid()",
         "after_started_at and after_run_id must be both given or both null"),
    ],
)
async def test_list_runs_refuses_bad_filters(conn: Any, arguments: str, message: str) -> None:
    with pytest.raises(asyncpg.PostgresError) as info:
        await conn.fetch(f"select * from pgflow.list_runs({arguments})")
    assert info.value.sqlstate == "PF400"
    assert message in str(info.value)
