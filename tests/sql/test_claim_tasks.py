from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from tests.sql._helpers import DIAMOND, claim, complete, define, events, fail, run_state, start


async def expire_leases(conn: Any, worker: str) -> None:
    """Moves a worker's leases into the past: the lease ran out, without waiting for it."""
    await conn.execute(
        "update pgflow.step_states set lease_expires_at = clock_timestamp() - interval '1 second' "
        "where leased_by = $1",
        worker,
    )


async def test_claim_tasks_leases_up_to_max_tasks_oldest_first(conn: Any) -> None:
    await define(conn, DIAMOND)
    runs = [await start(conn, "diamond", {"n": i}) for i in range(5)]
    first = await claim(conn, n=3)
    assert [t["run_id"] for t in first] == runs[:3]
    assert [t["run_id"] for t in await claim(conn, n=10)] == runs[3:]
    assert await claim(conn) == []


async def test_claim_tasks_returns_the_assembled_input_and_step_options(conn: Any) -> None:
    await define(conn, {**DIAMOND, "timeout": 7, "max_attempts": 4})
    await start(conn, "diamond", {"text": "hi"})
    (a,) = await claim(conn)
    assert (a["step_slug"], a["attempt"], a["input"], a["timeout"], a["max_attempts"]) == (
        "a",
        1,
        {"run": {"text": "hi"}},
        7,
        4,
    )
    await complete(conn, a, {"from": "a"})
    b, c = await claim(conn)
    await complete(conn, b, {"from": "b"})
    await complete(conn, c, [1, 2])
    (d,) = await claim(conn)
    assert d["input"] == {"run": {"text": "hi"}, "b": {"from": "b"}, "c": [1, 2]}


async def test_claim_tasks_never_hands_one_task_to_two_workers(db_url: str, conn: Any) -> None:
    await define(conn, {"slug": "many", "steps": [{"slug": f"s{i}"} for i in range(20)]})
    for _ in range(10):
        await start(conn, "many")
    workers = [await asyncpg.connect(db_url) for _ in range(8)]
    try:

        async def claim_all(c: Any, name: str) -> list[tuple[Any, str]]:
            got = []
            while rows := await c.fetch("select * from pgflow.claim_tasks($1, 7)", name):
                got += [(r["run_id"], r["step_slug"]) for r in rows]
            return got

        results = await asyncio.gather(*(claim_all(c, f"w{i}") for i, c in enumerate(workers)))
    finally:
        for c in workers:
            await c.close()
    claimed = [task for got in results for task in got]
    assert len(claimed) == 200
    assert len(set(claimed)) == 200


async def test_claim_tasks_only_claims_the_given_flows(conn: Any) -> None:
    await define(conn, DIAMOND)
    await define(conn, {"slug": "other", "steps": [{"slug": "x"}]})
    await start(conn, "diamond")
    await start(conn, "other")
    rows = await conn.fetch("select * from pgflow.claim_tasks('w', 10, array['other'])")
    assert [r["flow_slug"] for r in rows] == ["other"]


async def test_claim_tasks_refuses_nonsense_arguments(conn: Any) -> None:
    with pytest.raises(asyncpg.PostgresError) as info:
        await conn.fetch("select * from pgflow.claim_tasks('w', 0)")
    assert info.value.sqlstate == "PF400"


async def test_an_expired_lease_makes_the_task_claimable_again_and_counts_an_attempt(
    conn: Any,
) -> None:
    await define(conn, DIAMOND)
    run_id = await start(conn, "diamond")
    (first,) = await claim(conn, worker="dead")
    assert await claim(conn, worker="alive") == []
    await expire_leases(conn, "dead")
    (again,) = await claim(conn, worker="alive")
    assert (again["step_slug"], again["attempt"]) == ("a", 2)
    retry, restart = (await events(conn, run_id))[-2:]
    assert (retry["event"], retry["step_slug"], retry["error"], retry["attempt"]) == (
        "step:retrying",
        "a",
        "lease expired",
        1,
    )
    assert (restart["event"], restart["step_slug"], restart["attempt"]) == ("step:started", "a", 2)
    assert await complete(conn, first, worker="dead") is False
    assert await complete(conn, again, worker="alive") is True


async def test_an_expired_lease_on_the_last_attempt_fails_the_step_and_the_run(conn: Any) -> None:
    await define(conn, {**DIAMOND, "max_attempts": 1})
    run_id = await start(conn, "diamond")
    await claim(conn, worker="dead")
    await expire_leases(conn, "dead")
    assert await claim(conn) == []
    run = await run_state(conn, run_id)
    assert (run["status"], run["failed_step"], run["error"]) == ("failed", "a", "lease expired")
    assert [e["event"] for e in await events(conn, run_id)][-2:] == ["step:failed", "run:failed"]


async def test_extend_leases_keeps_a_running_task_from_expiring(conn: Any) -> None:
    await define(conn, DIAMOND)
    await start(conn, "diamond")
    (task,) = await claim(conn, lease=0.3)
    kept = await conn.fetchval(
        "select pgflow.extend_leases('w1', $1, $2, 30)", [task["run_id"]], [task["step_slug"]]
    )
    assert kept == 1
    await asyncio.sleep(0.4)
    assert await claim(conn, worker="other") == []
    assert await complete(conn, task) is True


async def test_extend_leases_does_not_revive_an_expired_lease_or_another_workers(conn: Any) -> None:
    await define(conn, DIAMOND)
    await start(conn, "diamond")
    (task,) = await claim(conn)
    await expire_leases(conn, "w1")
    args = ([task["run_id"]], [task["step_slug"]])
    assert await conn.fetchval("select pgflow.extend_leases('w1', $1, $2)", *args) == 0
    assert await conn.fetchval("select pgflow.extend_leases('intruder', $1, $2)", *args) == 0


async def test_release_tasks_makes_tasks_claimable_at_once_without_counting_the_attempt(
    conn: Any,
) -> None:
    await define(conn, DIAMOND)
    await start(conn, "diamond")
    await start(conn, "diamond")
    held = await claim(conn, worker="leaving")
    assert await conn.fetchval("select pgflow.release_tasks('leaving')") == 2
    again = await claim(conn, worker="other")
    assert [(t["run_id"], t["attempt"]) for t in again] == [(t["run_id"], 1) for t in held]


async def test_release_tasks_can_release_only_the_named_tasks(conn: Any) -> None:
    await define(conn, DIAMOND)
    await start(conn, "diamond")
    await start(conn, "diamond")
    first, second = await claim(conn, worker="w")
    released = await conn.fetchval(
        "select pgflow.release_tasks('w', $1, $2)", [first["run_id"]], [first["step_slug"]]
    )
    assert released == 1
    assert [t["run_id"] for t in await claim(conn, worker="x")] == [first["run_id"]]
    assert second["run_id"] != first["run_id"]


async def claim_in_transaction(conn: Any, worker: str = "w1") -> tuple[list[Any], str]:
    """Claims inside an explicit transaction and reads the synchronous_commit it will commit with
    (the test server's default is off, so the session asks for PostgreSQL's: on)."""
    await conn.execute("set synchronous_commit = on")
    async with conn.transaction():
        tasks = await claim(conn, worker=worker)
        setting: str = await conn.fetchval("show synchronous_commit")
    return tasks, setting


async def test_a_claim_that_writes_no_event_commits_without_waiting_for_disk(conn: Any) -> None:
    await define(conn, DIAMOND)
    await start(conn, "diamond")
    tasks, setting = await claim_in_transaction(conn)
    assert [t["step_slug"] for t in tasks] == ["a"]
    assert setting == "off"
    # only that transaction: the session's own setting is untouched
    assert await conn.fetchval("show synchronous_commit") == "on"


async def test_a_claim_that_writes_a_retrys_step_started_stays_durable(conn: Any) -> None:
    await define(conn, {**DIAMOND, "max_attempts": 2, "base_delay": 0})
    run_id = await start(conn, "diamond")
    (first,) = await claim(conn)
    assert await fail(conn, first) is True
    tasks, setting = await claim_in_transaction(conn)
    assert [(t["step_slug"], t["attempt"]) for t in tasks] == [("a", 2)]
    assert (await events(conn, run_id))[-1]["event"] == "step:started"
    assert setting == "on"


async def test_a_claim_whose_sweep_writes_events_stays_durable(conn: Any) -> None:
    await define(conn, {**DIAMOND, "max_attempts": 1})
    run_id = await start(conn, "diamond")
    await claim(conn, worker="dead")
    await expire_leases(conn, "dead")
    tasks, setting = await claim_in_transaction(conn)
    assert tasks == []
    assert (await run_state(conn, run_id))["status"] == "failed"
    assert setting == "on"


async def test_a_claim_lost_in_a_crash_runs_the_step_again_and_its_report_is_stale(
    conn: Any,
) -> None:
    # What a crash before an asynchronous claim reached disk leaves: the step as it was before
    # the claim, while the worker still runs the handler it was given.
    await define(conn, DIAMOND)
    run_id = await start(conn, "diamond")
    (lost,) = await claim(conn, worker="before-crash")
    await conn.execute(
        "update pgflow.step_states set attempt = attempt - 1, leased_by = null,"
        " lease_expires_at = null where run_id = $1 and step_slug = 'a'",
        run_id,
    )
    (again,) = await claim(conn, worker="after-crash")
    assert (again["step_slug"], again["attempt"]) == ("a", lost["attempt"])
    assert await complete(conn, lost, worker="before-crash") is False
    assert await complete(conn, again, worker="after-crash") is True
    assert [e["event"] for e in await events(conn, run_id)] == [
        "run:started", "step:started", "step:completed", "step:started", "step:started",
    ]
