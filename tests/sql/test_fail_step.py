from __future__ import annotations

from typing import Any

from tests.sql._helpers import DIAMOND, claim, complete, define, events, fail, run_state, start


async def seconds_until_available(conn: Any, run_id: Any, step_slug: str) -> float:
    delay: float = await conn.fetchval(
        "select extract(epoch from available_at - clock_timestamp()) from pgflow.step_states "
        "where run_id = $1 and step_slug = $2",
        run_id,
        step_slug,
    )
    return delay


async def test_fail_step_retries_with_exponential_backoff(conn: Any) -> None:
    await define(conn, {**DIAMOND, "max_attempts": 4, "base_delay": 10})
    run_id = await start(conn, "diamond")
    (a,) = await claim(conn)
    delays = []
    for attempt in (1, 2, 3):
        assert a["attempt"] == attempt
        assert await fail(conn, a, f"boom {attempt}") is True
        delays.append(await seconds_until_available(conn, run_id, "a"))
        assert await claim(conn) == []  # not before its backoff
        await conn.execute(
            "update pgflow.step_states set available_at = now() where run_id = $1", run_id
        )
        (a,) = await claim(conn)
    # base_delay * 2^(attempt-1): 10, 20, 40 seconds (less the few ms the test took)
    assert [round(d) for d in delays] == [10, 20, 40]
    retries = [e for e in await events(conn, run_id) if e["event"] == "step:retrying"]
    assert [(e["attempt"], e["error"], e["status"]) for e in retries] == [
        (1, "boom 1", "retrying"),
        (2, "boom 2", "retrying"),
        (3, "boom 3", "retrying"),
    ]


async def test_a_retry_after_a_zero_delay_is_claimable_at_once(conn: Any) -> None:
    await define(conn, {**DIAMOND, "base_delay": 0})
    await start(conn, "diamond")
    (a,) = await claim(conn)
    await fail(conn, a)
    (again,) = await claim(conn)
    assert (again["step_slug"], again["attempt"]) == ("a", 2)


async def test_the_last_failed_attempt_fails_the_step_and_the_run(conn: Any) -> None:
    await define(conn, {**DIAMOND, "max_attempts": 2, "base_delay": 0})
    run_id = await start(conn, "diamond")
    await fail(conn, (await claim(conn))[0], "first")
    await fail(conn, (await claim(conn))[0], "second")
    run = await run_state(conn, run_id)
    assert (run["status"], run["error"], run["failed_step"]) == ("failed", "second", "a")
    assert run["failed_at"] is not None
    log = await events(conn, run_id)
    assert [e["event"] for e in log] == [
        "run:started",
        "step:started",
        "step:retrying",
        "step:started",
        "step:failed",
        "run:failed",
    ]
    assert [e["attempt"] for e in log[1:4]] == [1, 1, 2]
    assert (log[-1]["step_slug"], log[-1]["error"], log[-1]["attempt"]) == ("a", "second", 2)


async def test_after_a_run_fails_no_other_step_of_it_starts(conn: Any) -> None:
    await define(conn, {**DIAMOND, "max_attempts": 1})
    run_id = await start(conn, "diamond")
    await complete(conn, (await claim(conn))[0])
    b, c = await claim(conn)
    await fail(conn, b)
    assert await complete(conn, c) is False
    assert await claim(conn) == []
    statuses = {s["step_slug"]: s["status"] for s in (await run_state(conn, run_id))["steps"]}
    assert statuses == {"a": "completed", "b": "failed", "c": "cancelled", "d": "cancelled"}
    assert (await events(conn, run_id))[-1]["event"] == "run:failed"


async def test_queued_steps_of_a_failed_run_are_never_claimed(conn: Any) -> None:
    await define(conn, {"slug": "pair", "max_attempts": 1, "steps": [{"slug": "x"}, {"slug": "y"}]})
    await start(conn, "pair")
    (x,) = await claim(conn, n=1)
    await fail(conn, x)
    assert await claim(conn) == []


async def test_a_failure_from_a_worker_that_lost_the_task_changes_nothing(conn: Any) -> None:
    await define(conn, DIAMOND)
    run_id = await start(conn, "diamond")
    (a,) = await claim(conn, worker="holder")
    before = await events(conn, run_id)
    assert await fail(conn, a, worker="intruder") is False
    assert await events(conn, run_id) == before


async def test_fail_step_without_a_message_still_records_an_error(conn: Any) -> None:
    await define(conn, {**DIAMOND, "max_attempts": 1})
    run_id = await start(conn, "diamond")
    (a,) = await claim(conn)
    await conn.fetchval("select pgflow.fail_step($1, 'a', null)", a["run_id"])
    assert (await run_state(conn, run_id))["error"] == "failed without a message"


async def test_get_run_and_get_run_events_answer_null_and_nothing_for_an_unknown_run(
    conn: Any,
) -> None:
    unknown = "00000000-0000-0000-0000-000000000000"
    assert await conn.fetchval("select pgflow.get_run($1::uuid)", unknown) is None
    assert await conn.fetch("select * from pgflow.get_run_events($1::uuid, 0)", unknown) == []


async def test_get_run_events_returns_only_events_after_since(conn: Any) -> None:
    await define(conn, DIAMOND)
    run_id = await start(conn, "diamond")
    await complete(conn, (await claim(conn))[0])
    assert [e["seq"] for e in await events(conn, run_id, since=3)] == [4, 5]
    assert (
        await conn.fetch("select * from pgflow.get_run_events(run_id => $1, since => 5)", run_id)
        == []
    )
