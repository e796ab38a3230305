"""stream_steps: running steps' chunks appended to their runs' logs as step:stream events."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson
import pytest

from tests.sql._helpers import DIAMOND, Notifications, claim, complete, define, events, start

STREAM_KEYS = {"seq", "run_id", "event", "step_slug", "attempt", "chunks", "at"}


Item = tuple[Any, str, int, Any]  # run_id, step_slug, attempt, chunks


async def stream(conn: Any, worker: str, items: list[Item]) -> list[bool]:
    applied: list[bool] = await conn.fetchval(
        "select pgflow.stream_steps($1, $2, $3, $4, $5::text[]::jsonb[])",
        worker, [i[0] for i in items], [i[1] for i in items], [i[2] for i in items],
        [orjson.dumps(i[3]).decode() for i in items],
    )
    return applied


async def test_chunks_become_step_stream_events_in_order_after_the_runs_last_seq(
    conn: Any,
) -> None:
    await define(conn, DIAMOND)
    run_id = await start(conn, "diamond")
    (a,) = await claim(conn)
    applied = await stream(conn, "w1", [
        (run_id, "a", 1, ["Once", " upon"]), (run_id, "a", 1, [" a time", {"progress": 0.5}]),
    ])
    assert applied == [True, True]
    streamed = [e for e in await events(conn, run_id) if e["event"] == "step:stream"]
    assert [(e["seq"], e["chunks"]) for e in streamed] == [
        (3, ["Once", " upon"]), (4, [" a time", {"progress": 0.5}])]
    assert all(set(e) == STREAM_KEYS for e in streamed)
    assert all((e["step_slug"], e["attempt"], e["run_id"]) == ("a", 1, str(run_id))
               for e in streamed)
    # the completion comes after every chunk, numbered on from them
    await complete(conn, a)
    assert next(e["event"] for e in await events(conn, run_id, since=4)) == "step:completed"


async def test_only_the_lease_holder_of_that_attempt_of_a_running_step_streams(conn: Any) -> None:
    await define(conn, DIAMOND)
    run_id = await start(conn, "diamond")
    (a,) = await claim(conn)
    assert await stream(conn, "someone-else", [(run_id, "a", 1, ["x"])]) == [False]
    assert await stream(conn, "w1", [(run_id, "a", 2, ["x"])]) == [False]
    assert await stream(conn, "w1", [(run_id, "b", 1, ["x"])]) == [False]
    await complete(conn, a)
    # after its end, an attempt's late chunks are stale: they never follow its completion
    assert await stream(conn, "w1", [(run_id, "a", 1, ["late"])]) == [False]
    assert not [e for e in await events(conn, run_id) if e["event"] == "step:stream"]


async def test_many_runs_in_one_call_one_notification(conn: Any, listen_conn: Any) -> None:
    await define(conn, DIAMOND)
    runs = [await start(conn, "diamond") for _ in range(3)]
    await claim(conn)
    async with Notifications(listen_conn, "pgflow_events") as notes:
        items: list[Item] = [(r, "a", 1, [f"chunk of {i}"]) for i, r in enumerate(runs)]
        applied = await stream(conn, "w1", [*items, (runs[0], "a", 1, ["2nd"])])
        payload = await notes.next_json()
        assert await notes.drain() == []
    assert applied == [True] * 4
    got = [(e["run_id"], e["seq"], e["chunks"]) for e in payload["events"]]
    assert sorted(got) == sorted([
        (str(runs[0]), 3, ["chunk of 0"]), (str(runs[0]), 4, ["2nd"]),
        (str(runs[1]), 3, ["chunk of 1"]), (str(runs[2]), 3, ["chunk of 2"])])
    assert all(set(e) == STREAM_KEYS for e in payload["events"])


async def test_bad_arguments_are_refused(conn: Any) -> None:
    await define(conn, DIAMOND)
    run_id = await start(conn, "diamond")
    await claim(conn)
    for items in ([(run_id, "a", 1, [])], [(run_id, "a", 1, {"not": "an array"})]):
        with pytest.raises(asyncpg.PostgresError) as info:
            await stream(conn, "w1", items)
        assert info.value.sqlstate == "PF400"
    with pytest.raises(asyncpg.PostgresError) as info:
        await conn.fetchval("select pgflow.stream_steps('w1', $1, '{}', '{}', '{}')", [run_id])
    assert info.value.sqlstate == "PF400"
    assert await stream(conn, "w1", []) == []
