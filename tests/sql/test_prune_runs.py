"""pgflow.prune_runs: finished runs only, in batches that skip what others hold locked."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from pgflow.db.connection import connect
from tests.sql._helpers import (
    DIAMOND,
    Notifications,
    claim,
    complete,
    define,
    drive_to_end,
    fail,
    start,
)

ONE = {"slug": "one", "max_attempts": 1, "steps": [{"slug": "only"}]}


async def prune(conn: Any, older_than: timedelta = timedelta(0), batch_size: int = 1000) -> int:
    pruned: int = await conn.fetchval("select pgflow.prune_runs($1, $2)", older_than, batch_size)
    return pruned


async def rows_of(conn: Any, run_id: uuid.UUID) -> tuple[int, int, int]:
    row = await conn.fetchrow(
        """
        select (select count(*) from pgflow.runs where run_id = $1),
               (select count(*) from pgflow.step_states where run_id = $1),
               (select count(*) from pgflow.run_events where run_id = $1)
        """,
        run_id,
    )
    return (row[0], row[1], row[2])


async def finished_runs(conn: Any, count: int) -> list[uuid.UUID]:
    """``count`` runs of ONE, completed in start order."""
    await define(conn, ONE)
    runs = [await start(conn, "one") for _ in range(count)]
    tasks = {t["run_id"]: t for t in await claim(conn, n=1000)}
    for run_id in runs:
        await complete(conn, tasks[run_id])
    return runs


async def test_prune_runs_deletes_finished_runs_with_their_steps_and_events(conn: Any) -> None:
    await define(conn, DIAMOND)
    await define(conn, ONE)
    done = await start(conn, "diamond")
    await drive_to_end(conn, done)
    failed = await start(conn, "one")
    [task] = await claim(conn)
    await fail(conn, task)
    assert await rows_of(conn, done) == (1, 4, 10)
    assert (await rows_of(conn, failed))[0] == 1

    assert await prune(conn) == 2
    assert await rows_of(conn, done) == (0, 0, 0)
    assert await rows_of(conn, failed) == (0, 0, 0)
    assert await conn.fetchval("select pgflow.get_run($1)", done) is None


async def test_prune_runs_never_deletes_a_run_still_going(conn: Any) -> None:
    await define(conn, DIAMOND)
    going = await start(conn, "diamond")
    await complete(conn, (await claim(conn))[0])  # a step done, the run not
    await conn.execute("update pgflow.runs set started_at = now() - interval '10 years'")
    before = await rows_of(conn, going)
    assert await prune(conn) == 0
    assert await rows_of(conn, going) == before
    assert before[:2] == (1, 4)


async def test_prune_runs_keeps_runs_finished_after_the_cutoff(conn: Any) -> None:
    [old, recent] = await finished_runs(conn, 2)
    await conn.execute(
        "update pgflow.runs set completed_at = now() - interval '2 days' where run_id = $1", old)
    assert await prune(conn, timedelta(days=1)) == 1
    assert (await rows_of(conn, old))[0] == 0
    assert (await rows_of(conn, recent))[0] == 1


async def test_prune_runs_deletes_at_most_batch_size_oldest_finish_first(conn: Any) -> None:
    runs = await finished_runs(conn, 5)
    # finish times in reverse start order: the last started finished first
    for age, run_id in enumerate(runs):
        await conn.execute(
            "update pgflow.runs set completed_at = now() - make_interval(hours => $2) "
            "where run_id = $1", run_id, age + 1)
    assert await prune(conn, batch_size=2) == 2
    left = {r[0] for r in await conn.fetch("select run_id from pgflow.runs")}
    assert left == set(runs[:3])
    assert await prune(conn, batch_size=2) == 2
    assert await prune(conn, batch_size=2) == 1
    assert await prune(conn, batch_size=2) == 0


async def test_prune_runs_skips_a_run_another_transaction_holds_without_waiting(
    conn: Any, db_url: str
) -> None:
    [held, free] = await finished_runs(conn, 2)
    other = await connect(db_url)
    try:
        async with other.transaction():
            await other.execute("select 1 from pgflow.runs where run_id = $1 for update", held)
            # Waiting for the lock would hang here until the other transaction ends.
            assert await asyncio.wait_for(prune(conn), 10) == 1
            assert (await rows_of(conn, held))[0] == 1
            assert (await rows_of(conn, free))[0] == 0
    finally:
        await other.close()
    assert await prune(conn) == 1  # released: the next call takes it
    assert (await rows_of(conn, held))[0] == 0


async def test_prune_runs_notifies_a_reference_past_each_pruned_runs_last_event(
    conn: Any, listen_conn: Any
) -> None:
    runs = await finished_runs(conn, 130)  # three notifications of at most 60 references
    last_seqs = dict(await conn.fetch("select run_id, last_seq from pgflow.runs"))
    async with Notifications(listen_conn, "pgflow_events") as notes:
        assert await prune(conn) == 130
        payloads = [await notes.next_json() for _ in range(3)]
        assert await notes.drain() == []
    refs = [ref for payload in payloads for ref in payload["refs"]]
    assert all(payload["v"] == 1 and set(payload) == {"v", "refs"} for payload in payloads)
    assert sorted(ref["run_id"] for ref in refs) == sorted(str(r) for r in runs)
    for ref in refs:
        past = last_seqs[uuid.UUID(ref["run_id"])] + 1
        assert (ref["from"], ref["to"]) == (past, past)


async def test_prune_runs_notifies_nothing_when_nothing_is_pruned(
    conn: Any, listen_conn: Any
) -> None:
    await finished_runs(conn, 1)
    async with Notifications(listen_conn, "pgflow_events") as notes:
        assert await prune(conn, timedelta(days=1)) == 0
        assert await notes.drain() == []


@pytest.mark.parametrize(
    ("older_than", "shown"),
    [("-1 second", "-00:00:01"), ("1 mon -40 days", "1 mon -40 days"),
     ("36501 days", "36501 days"), ("1000 years", "1000 years"), (None, "null")],
)
async def test_prune_runs_refuses_an_interval_outside_0_to_36500_days(
    conn: Any, older_than: str | None, shown: str
) -> None:
    await finished_runs(conn, 1)
    with pytest.raises(asyncpg.PostgresError) as info:
        await conn.fetchval("select pgflow.prune_runs($1::text::interval)", older_than)
    assert info.value.sqlstate == "PF400"
    assert str(info.value) == (
        f"prune_runs: older_than must be an interval from 0 to 36500 days, not {shown}")
    assert await conn.fetchval("select count(*) from pgflow.runs") == 1


@pytest.mark.parametrize(("batch_size", "shown"), [(0, "0"), (10001, "10001"), (None, "null")])
async def test_prune_runs_refuses_a_batch_size_outside_1_to_10000(
    conn: Any, batch_size: int | None, shown: str
) -> None:
    await finished_runs(conn, 1)
    with pytest.raises(asyncpg.PostgresError) as info:
        await conn.fetchval("select pgflow.prune_runs(interval '0', $1)", batch_size)
    assert info.value.sqlstate == "PF400"
    assert str(info.value) == (
        f"prune_runs: batch_size must be an integer from 1 to 10000, not {shown}")
    assert await conn.fetchval("select count(*) from pgflow.runs") == 1


async def test_prune_runs_finds_its_batch_through_the_finished_runs_index(conn: Any) -> None:
    # The function's own statement, planned with a sequential scan priced out: the partial
    # expression index must match its predicate and its order.
    await finished_runs(conn, 3)
    await conn.execute("set enable_seqscan = off")
    plan = "\n".join(r[0] for r in await conn.fetch(
        """
        explain select r.run_id, r.last_seq
        from pgflow.runs as r
        where r.status in ('completed', 'failed', 'cancelled')
          and coalesce(r.completed_at, r.failed_at, r.cancelled_at) < now()
        order by coalesce(r.completed_at, r.failed_at, r.cancelled_at)
        limit 1000
        for update skip locked
        """))
    assert "runs_finished_at_idx" in plan, plan
    assert "Sort" not in plan, plan
