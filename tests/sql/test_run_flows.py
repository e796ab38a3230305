"""run_flows: many runs started in one call (the gateway's group commit)."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest

from tests.sql._helpers import DIAMOND, Notifications, claim, define, events, run_state

ROOTS = {"slug": "roots", "steps": [{"slug": "x"}, {"slug": "y"},
                                    {"slug": "z", "depends_on": ["x", "y"]}]}


async def run_flows(conn: Any, slugs: list[str], inputs: list[str | None],
                    owners: list[str | None] | None = None) -> list[uuid.UUID | None]:
    result: list[uuid.UUID | None] = await conn.fetchval(
        "select pgflow.run_flows($1, $2::text[]::jsonb[], $3)", slugs, inputs, owners
    )
    return result


async def test_each_position_is_a_run_with_its_input_owner_steps_and_events(conn: Any) -> None:
    await define(conn, DIAMOND)
    await define(conn, ROOTS)
    ids = await run_flows(conn, ["diamond", "roots", "diamond"], ['{"n": 1}', "2", None],
                          ["alice", None, "bob"])
    assert len(set(ids)) == 3
    assert all(isinstance(i, uuid.UUID) for i in ids)
    runs = [await run_state(conn, i) for i in ids if i is not None]
    assert [(r["flow_slug"], r["input"], r["owner"]) for r in runs] == [
        ("diamond", {"n": 1}, "alice"), ("roots", 2, None), ("diamond", None, "bob")]
    assert [[(s["step_slug"], s["status"]) for s in r["steps"]] for r in runs[:2]] == [
        [("a", "started"), ("b", "created"), ("c", "created"), ("d", "created")],
        [("x", "started"), ("y", "started"), ("z", "created")],
    ]
    assert [(e["seq"], e["event"], e["step_slug"]) for e in await events(conn, ids[1])] == [
        (1, "run:started", None), (2, "step:started", "x"), (3, "step:started", "y")]
    assert [r["seq"] for r in runs] == [2, 3, 2]
    claimed = sorted((t["run_id"], t["step_slug"]) for t in await claim(conn))
    assert claimed == sorted([(ids[0], "a"), (ids[1], "x"), (ids[1], "y"), (ids[2], "a")])


async def test_an_unknown_flow_gets_null_and_the_others_start(conn: Any) -> None:
    await define(conn, DIAMOND)
    ids = await run_flows(conn, ["nope", "diamond", "also-nope", "diamond"], ["1"] * 4)
    assert ids[0] is None
    assert ids[2] is None
    assert all(isinstance(ids[i], uuid.UUID) for i in (1, 3))
    assert await conn.fetchval("select count(*) from pgflow.runs") == 2
    assert await run_flows(conn, ["nope"], ["1"]) == [None]
    assert await conn.fetchval("select count(*) from pgflow.runs") == 2


async def test_one_notification_for_the_whole_batch_and_one_wake_up_per_flow(
    conn: Any, listen_conn: Any
) -> None:
    await define(conn, DIAMOND)
    await define(conn, ROOTS)
    async with (
        Notifications(listen_conn, "pgflow_events") as notes,
        Notifications(listen_conn, "pgflow_tasks") as tasks,
    ):
        ids = await run_flows(conn, ["diamond", "roots", "diamond", "diamond"], ["1"] * 4)
        payload = await notes.next_json()
        assert sorted((e["run_id"], e["seq"]) for e in payload["events"]) == sorted(
            [(str(ids[0]), 1), (str(ids[0]), 2), (str(ids[1]), 1), (str(ids[1]), 2),
             (str(ids[1]), 3), (str(ids[2]), 1), (str(ids[2]), 2), (str(ids[3]), 1),
             (str(ids[3]), 2)])
        assert sorted([await tasks.next(), await tasks.next()]) == ["diamond", "roots"]
        assert await notes.drain() == []
        assert await tasks.drain() == []


async def test_empty_and_mismatched_arrays(conn: Any) -> None:
    assert await run_flows(conn, [], []) == []
    with pytest.raises(asyncpg.PostgresError) as info:
        await run_flows(conn, ["diamond"], [])
    assert info.value.sqlstate == "PF400"
    with pytest.raises(asyncpg.PostgresError) as info:
        await run_flows(conn, ["diamond"], ["1"], ["a", "b"])
    assert info.value.sqlstate == "PF400"


async def test_get_runs_events_reads_each_position_as_get_run_events_does(conn: Any) -> None:
    await define(conn, DIAMOND)
    await define(conn, ROOTS)
    first, second = await run_flows(conn, ["diamond", "roots"], ["1", "2"])
    unknown = uuid.uuid4()
    rows = await conn.fetch(
        "select pos, run_id, seq, event::text from pgflow.get_runs_events($1, $2, $3)",
        [first, second, first, unknown], [0, 1, 1, 0], [None, 2, None, None],
    )
    assert [(r["pos"], r["run_id"], r["seq"]) for r in rows] == [
        (1, first, 1), (1, first, 2), (2, second, 2), (3, first, 2)]
    for row in rows:  # byte for byte what the one-run reader gives
        alone = await conn.fetchval(
            "select e::text from pgflow.get_run_events($1, $2::bigint, $2::bigint + 1) as e",
            row["run_id"], row["seq"] - 1,
        )
        assert row["event"] == alone
    with pytest.raises(asyncpg.PostgresError) as info:
        await conn.fetch("select * from pgflow.get_runs_events($1, $2, $3)", [first], [0], [])
    assert info.value.sqlstate == "PF400"
