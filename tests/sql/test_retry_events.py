"""A retry attempt is announced by its own step:started when a worker claims it."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from tests.sql._helpers import (
    DIAMOND,
    Notifications,
    claim,
    complete,
    define,
    events,
    fail,
    run_state,
    start,
)

PAIR = {"slug": "pair", "base_delay": 0, "steps": [{"slug": "x"}, {"slug": "y"}]}


def step_status(run: dict[str, Any], step_slug: str) -> tuple[str, int]:
    (step,) = [s for s in run["steps"] if s["step_slug"] == step_slug]
    return step["status"], step["attempt"]


async def test_a_claimed_retry_gets_a_step_started_with_its_attempt(conn: Any) -> None:
    await define(conn, {**DIAMOND, "base_delay": 0})
    run_id = await start(conn, "diamond")
    await fail(conn, (await claim(conn))[0], "boom")
    assert step_status(await run_state(conn, run_id), "a") == ("retrying", 1)
    before = await events(conn, run_id)
    (again,) = await claim(conn)
    assert again["attempt"] == 2
    (started,) = await events(conn, run_id, since=len(before))
    assert {k: v for k, v in started.items() if k != "at"} == {
        "run_id": str(run_id), "seq": len(before) + 1, "event": "step:started", "step_slug": "a",
        "status": "started", "output": None, "error": None, "attempt": 2,
    }
    run = await run_state(conn, run_id)
    assert step_status(run, "a") == ("started", 2)
    assert run["seq"] == started["seq"]
    assert await complete(conn, again) is True
    seqs = [e["seq"] for e in await events(conn, run_id)]
    assert seqs == list(range(1, len(seqs) + 1))


async def test_a_retry_waiting_for_its_backoff_is_retrying_and_not_yet_started(
    conn: Any,
) -> None:
    await define(conn, {**DIAMOND, "base_delay": 60})
    run_id = await start(conn, "diamond")
    await fail(conn, (await claim(conn))[0])
    assert await claim(conn) == []
    assert [e["event"] for e in await events(conn, run_id)][-1] == "step:retrying"
    assert step_status(await run_state(conn, run_id), "a") == ("retrying", 1)


async def test_claiming_a_first_attempt_writes_no_event(conn: Any) -> None:
    await define(conn, DIAMOND)
    run_id = await start(conn, "diamond")
    before = await events(conn, run_id)
    (a,) = await claim(conn)
    assert a["attempt"] == 1
    assert await events(conn, run_id) == before


async def test_a_released_retry_is_announced_once(conn: Any) -> None:
    await define(conn, {**DIAMOND, "base_delay": 0})
    run_id = await start(conn, "diamond")
    await fail(conn, (await claim(conn))[0])
    await claim(conn, worker="leaving")
    assert await conn.fetchval("select pgflow.release_tasks('leaving')") == 1
    (again,) = await claim(conn, worker="staying")
    assert again["attempt"] == 2
    started = [(e["step_slug"], e["attempt"]) for e in await events(conn, run_id)
               if e["event"] == "step:started"]
    assert started == [("a", 1), ("a", 2)]


async def test_the_retry_after_an_expired_lease_is_announced_in_the_same_notification(
    conn: Any, listen_conn: Any
) -> None:
    await define(conn, DIAMOND)
    run_id = await start(conn, "diamond")
    await claim(conn, worker="dead")
    await conn.execute("update pgflow.step_states set lease_expires_at = clock_timestamp() - "
                       "interval '1 second' where leased_by = 'dead'")
    async with Notifications(listen_conn, "pgflow_events") as notes:
        (again,) = await claim(conn, worker="alive")
        payload = await notes.next_json()
    assert again["attempt"] == 2
    assert [(e["event"], e["attempt"], e["error"]) for e in payload["events"]] == [
        ("step:retrying", 1, "lease expired"),
        ("step:started", 2, None),
    ]
    assert [e["seq"] for e in payload["events"]] == [3, 4]
    assert (await run_state(conn, run_id))["seq"] == 4


async def test_retries_of_one_run_claimed_together_get_consecutive_seqs(conn: Any) -> None:
    await define(conn, PAIR)
    run_id = await start(conn, "pair")
    for task in await claim(conn):
        await fail(conn, task)
    before = len(await events(conn, run_id))
    assert sorted(t["attempt"] for t in await claim(conn)) == [2, 2]
    new = await events(conn, run_id, since=before)
    assert [(e["seq"], e["event"], e["step_slug"]) for e in new] == [
        (before + 1, "step:started", "x"),
        (before + 2, "step:started", "y"),
    ]
    assert (await run_state(conn, run_id))["seq"] == before + 2


async def test_a_retry_whose_run_is_being_written_waits_for_the_next_claim_without_blocking(
    db_url: str, conn: Any
) -> None:
    """The claim takes a retry's run lock with skip locked: it never waits for a run, so it
    cannot deadlock with a run-locked path (e.g. failing the run) waiting for the step row."""
    await define(conn, {**PAIR, "steps": [{"slug": "x"}]})
    run_id = await start(conn, "pair")
    await fail(conn, (await claim(conn))[0])
    holder = await asyncpg.connect(db_url)
    try:
        async with holder.transaction():
            await holder.execute("select 1 from pgflow.runs where run_id = $1 for update", run_id)
            assert await asyncio.wait_for(claim(conn), 5) == []
        (again,) = await claim(conn)
    finally:
        await holder.close()
    assert again["attempt"] == 2
    assert [e["event"] for e in await events(conn, run_id)][-2:] == [
        "step:retrying", "step:started"]
