"""report_and_claim: a worker's report and its next claim in one transaction."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson
import pytest

from tests.sql._helpers import DIAMOND, Notifications, claim, define, events, start


async def report_and_claim(
    conn: Any, tasks: list[Any], max_tasks: int, *, worker: str = "w1",
    flow_slugs: list[str] | None = None, errors: list[str | None] | None = None,
) -> tuple[list[bool], list[Any]]:
    rows = await conn.fetch(
        "select * from pgflow.report_and_claim($1, $2, $3, $4, $5::text[]::jsonb[], $6, $7, $8)",
        worker, [t["run_id"] for t in tasks], [t["step_slug"] for t in tasks],
        [t["attempt"] for t in tasks],
        [orjson.dumps({"by": t["step_slug"]}).decode() for t in tasks],
        errors or [None] * len(tasks), max_tasks, flow_slugs,
    )
    assert len({tuple(r["applied"]) for r in rows}) == 1  # the same applied on every row
    return list(rows[0]["applied"]), [r for r in rows if r["run_id"] is not None]


async def test_the_report_claims_what_it_made_ready_and_wakes_no_one(
    conn: Any, listen_conn: Any
) -> None:
    await define(conn, DIAMOND)
    run_id = await start(conn, "diamond", {"x": 1})
    (a,) = await claim(conn)
    async with (
        Notifications(listen_conn, "pgflow_events") as notes,
        Notifications(listen_conn, "pgflow_tasks") as wakeups,
    ):
        applied, tasks = await report_and_claim(conn, [a], 10)
        payload = await notes.next_json()
        # the claim took every ready task: a wake-up would find nothing
        assert await wakeups.drain() == []
    assert applied == [True]
    assert sorted(t["step_slug"] for t in tasks) == ["b", "c"]
    assert all(t["input"] == {"run": {"x": 1}, "a": {"by": "a"}} for t in tasks)
    assert all(t["attempt"] == 1 for t in tasks)
    assert [(e["seq"], e["event"], e["step_slug"]) for e in payload["events"]] == [
        (3, "step:completed", "a"), (4, "step:started", "b"), (5, "step:started", "c")]
    leased = await conn.fetch(
        "select step_slug, leased_by from pgflow.step_states where run_id = $1"
        " and lease_expires_at is not null order by step_slug", run_id)
    assert [(r["step_slug"], r["leased_by"]) for r in leased] == [("b", "w1"), ("c", "w1")]
    # and the run goes on from there as from any claim
    applied, tasks = await report_and_claim(conn, tasks, 10)
    assert applied == [True, True]
    assert [t["step_slug"] for t in tasks] == ["d"]
    applied, tasks = await report_and_claim(conn, tasks, 10)
    assert applied == [True]
    assert tasks == []
    assert (await events(conn, run_id))[-1]["event"] == "run:completed"


async def test_a_claim_that_may_have_left_tasks_wakes_the_others(
    conn: Any, listen_conn: Any
) -> None:
    await define(conn, DIAMOND)
    await start(conn, "diamond")
    (a,) = await claim(conn)
    async with Notifications(listen_conn, "pgflow_tasks") as wakeups:
        applied, tasks = await report_and_claim(conn, [a], 1)
        assert await wakeups.next() == "diamond"
    assert applied == [True]
    assert len(tasks) == 1
    # the other ready step is there for any worker
    (other,) = {"b", "c"} - {tasks[0]["step_slug"]}
    assert [t["step_slug"] for t in await claim(conn, "w2")] == [other]


async def test_max_tasks_zero_is_a_plain_report(conn: Any, listen_conn: Any) -> None:
    await define(conn, DIAMOND)
    await start(conn, "diamond")
    (a,) = await claim(conn)
    async with Notifications(listen_conn, "pgflow_tasks") as wakeups:
        applied, tasks = await report_and_claim(conn, [a], 0)
        assert await wakeups.next() == "diamond"
    assert applied == [True]
    assert tasks == []
    assert sorted(t["step_slug"] for t in await claim(conn, "w2")) == ["b", "c"]


async def test_flows_outside_the_workers_are_not_claimed_and_are_woken(
    conn: Any, listen_conn: Any
) -> None:
    await define(conn, DIAMOND)
    await start(conn, "diamond")
    (a,) = await claim(conn)
    async with Notifications(listen_conn, "pgflow_tasks") as wakeups:
        applied, tasks = await report_and_claim(conn, [a], 10, flow_slugs=["other"])
        assert await wakeups.next() == "diamond"
    assert applied == [True]
    assert tasks == []


async def test_a_stale_report_still_claims_what_is_ready(conn: Any) -> None:
    await define(conn, DIAMOND)
    await start(conn, "diamond")
    (a,) = await claim(conn)
    second = await start(conn, "diamond")
    applied, tasks = await report_and_claim(conn, [a], 10, worker="not-the-holder")
    assert applied == [False]
    assert [(t["run_id"], t["step_slug"]) for t in tasks] == [(second, "a")]


async def test_max_tasks_out_of_range_is_refused(conn: Any) -> None:
    for bad in (-1, 1001):
        with pytest.raises(asyncpg.PostgresError) as info:
            await report_and_claim(conn, [], bad)
        assert info.value.sqlstate == "PF400"
