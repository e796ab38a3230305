"""Steering runs: cancel_run, input steps (submit_input, timeouts), retry_run, idempotent starts;
each a state change, its events and its notification in one transaction, and each against the
race a user meets (a report landing at the same instant, two submits, two starts)."""

from __future__ import annotations

import asyncio
import uuid
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
    events,
    fail,
    run_state,
    start,
)

APPROVAL: dict[str, Any] = {
    "slug": "approval",
    "steps": [
        {"slug": "draft"},
        {"slug": "approve", "depends_on": ["draft"], "kind": "input",
         "schema": {"type": "boolean"}, "timeout": 3600},
        {"slug": "publish", "depends_on": ["approve"]},
    ],
}
ASK_FIRST: dict[str, Any] = {
    "slug": "ask_first",
    "steps": [{"slug": "ask", "kind": "input"}, {"slug": "use", "depends_on": ["ask"]}],
}


def shape(evs: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(e["event"], e["step_slug"], e["status"]) for e in evs]


async def cancel(conn: Any, run_id: uuid.UUID, reason: str | None = None) -> bool:
    cancelled: bool = await conn.fetchval("select pgflow.cancel_run($1, $2)", run_id, reason)
    return cancelled


async def submit(conn: Any, run_id: uuid.UUID, step: str, value: Any) -> bool:
    applied: bool = await conn.fetchval("select pgflow.submit_input($1, $2, $3::jsonb)",
                                        run_id, step, value)
    return applied


async def retry(conn: Any, run_id: uuid.UUID) -> bool:
    retried: bool = await conn.fetchval("select pgflow.retry_run($1)", run_id)
    return retried


# -- cancel ---------------------------------------------------------------------------------


async def test_cancel_ends_every_unfinished_step_then_the_run_in_one_notified_transaction(
        conn: Any, listen_conn: Any) -> None:
    await define(conn, DIAMOND)
    run_id = await start(conn, "diamond", {"n": 1})
    (a,) = await claim(conn)
    assert await complete(conn, a)
    tasks = await claim(conn)  # b and c are leased
    assert {t["step_slug"] for t in tasks} == {"b", "c"}
    async with Notifications(listen_conn, "pgflow_cancels") as cancels, \
            Notifications(listen_conn, "pgflow_events") as notes:
        assert await cancel(conn, run_id, "changed my mind")
        assert await cancels.next() == str(run_id)
        assert len(await notes.drain()) == 1  # one notification for the whole change
    evs = await events(conn, run_id)
    assert shape(evs[-4:]) == [
        ("step:cancelled", "b", "cancelled"), ("step:cancelled", "c", "cancelled"),
        ("step:cancelled", "d", "cancelled"), ("run:cancelled", None, "cancelled")]
    assert [e["attempt"] for e in evs[-4:-1]] == [1, 1, None]  # d never started
    assert evs[-1]["reason"] == "changed my mind"
    state = await run_state(conn, run_id)
    assert state["status"] == "cancelled"
    assert state["cancel_reason"] == "changed my mind"
    assert state["cancelled_at"] is not None
    assert state["seq"] == evs[-1]["seq"]
    assert [s["status"] for s in state["steps"]] == ["completed", "cancelled", "cancelled",
                                                     "cancelled"]
    # the leases died with the run: the handlers' late reports are stale
    assert [await complete(conn, t) for t in tasks] == [False, False]
    assert await claim(conn) == []
    assert len(await events(conn, run_id)) == len(evs)


async def test_cancel_of_an_ended_run_is_false_and_of_an_unknown_one_an_error(conn: Any) -> None:
    await define(conn, DIAMOND)
    run_id = await start(conn, "diamond")
    await drive_to_end(conn, run_id)
    assert not await cancel(conn, run_id)
    cancelled = await start(conn, "diamond")
    assert await cancel(conn, cancelled)
    assert not await cancel(conn, cancelled)  # a repeat changes nothing
    with pytest.raises(asyncpg.PostgresError) as info:
        await cancel(conn, uuid.uuid4())
    assert info.value.sqlstate == "PF404"


async def test_cancel_racing_the_last_report_gives_one_end_never_two(db_url: str) -> None:
    # A cancel and the completion of the run's last step, at the same instant from two
    # connections, many times: each run ends exactly once, completed or cancelled.
    one, two = await connect(db_url), await connect(db_url)
    try:
        await define(one, {"slug": "single", "steps": [{"slug": "only"}]})
        outcomes = set()
        for _ in range(40):
            run_id = await start(one, "single")
            (task,) = await claim(one)
            done, cancelled = await asyncio.gather(complete(one, task), cancel(two, run_id))
            assert done != cancelled
            ends = [e["event"] for e in await events(one, run_id)
                    if e["event"] in ("run:completed", "run:cancelled")]
            assert ends == (["run:completed"] if done else ["run:cancelled"])
            outcomes.add(done)
        assert outcomes  # at least one outcome observed; both usually are
    finally:
        await one.close()
        await two.close()


# -- input steps ----------------------------------------------------------------------------


async def test_an_input_step_waits_with_its_schema_and_input_then_its_value_is_its_output(
        conn: Any) -> None:
    shape_ = await define(conn, APPROVAL)
    assert shape_["steps"][1] | {} == {
        "slug": "approve", "depends_on": ["draft"], "max_attempts": 3, "base_delay": 1.0,
        "timeout": 3600, "kind": "input", "schema": {"type": "boolean"}}
    run_id = await start(conn, "approval", {"title": "Hi"})
    (draft,) = await claim(conn)
    assert await complete(conn, draft, {"text": "Hello"})
    waiting = (await events(conn, run_id))[-1]
    assert (waiting["event"], waiting["step_slug"], waiting["status"]) == (
        "step:waiting", "approve", "waiting")
    assert waiting["schema"] == {"type": "boolean"}
    assert waiting["input"] == {"run": {"title": "Hi"}, "draft": {"text": "Hello"}}
    assert waiting["attempt"] == 1
    assert waiting["timeout_at"].endswith("Z")
    assert await claim(conn) == []  # nobody's task: a person's
    state = await run_state(conn, run_id)
    assert [(s["step_slug"], s["kind"], s["status"]) for s in state["steps"]] == [
        ("draft", "task", "completed"), ("approve", "input", "waiting"),
        ("publish", "task", "created")]

    assert await submit(conn, run_id, "approve", True)
    assert shape((await events(conn, run_id))[-2:]) == [
        ("step:completed", "approve", "completed"), ("step:started", "publish", "started")]
    (publish,) = await claim(conn)
    assert publish["input"] == {"run": {"title": "Hi"}, "approve": True}
    assert not await submit(conn, run_id, "approve", False)  # answered already
    assert await complete(conn, publish, {"published": True})
    assert (await run_state(conn, run_id))["status"] == "completed"


async def test_a_root_input_step_waits_from_the_start(conn: Any) -> None:
    await define(conn, ASK_FIRST)
    run_id = await start(conn, "ask_first", 7)
    evs = await events(conn, run_id)
    assert shape(evs) == [("run:started", None, "started"), ("step:waiting", "ask", "waiting")]
    assert evs[1]["schema"] == {}
    assert evs[1]["input"] == {"run": 7}
    with pytest.raises(asyncpg.PostgresError) as info:
        await submit(conn, run_id, "nope", 1)
    assert info.value.sqlstate == "PF404"
    assert "has no step 'nope'" in info.value.message
    assert not await submit(conn, run_id, "use", 1)  # not waiting
    assert await submit(conn, run_id, "ask", None)
    (use,) = await claim(conn)
    assert use["input"] == {"run": 7, "ask": None}


async def test_two_submits_at_once_apply_one(db_url: str) -> None:
    one, two = await connect(db_url), await connect(db_url)
    try:
        await define(one, ASK_FIRST)
        for _ in range(20):
            run_id = await start(one, "ask_first")
            results = await asyncio.gather(submit(one, run_id, "ask", "a"),
                                           submit(two, run_id, "ask", "b"))
            assert sorted(results) == [False, True]
            completed = [e for e in await events(one, run_id) if e["event"] == "step:completed"]
            assert len(completed) == 1
            assert completed[0]["output"] == ("a" if results[0] else "b")
    finally:
        await one.close()
        await two.close()


async def test_an_input_step_past_its_timeout_fails_its_run(conn: Any) -> None:
    await define(conn, {"slug": "brief", "steps": [{"slug": "ask", "kind": "input", "timeout": 1}]})
    run_id = await start(conn, "brief")
    # the deadline moved into the past, as time would: the next claim's sweep fails the step
    await conn.execute("update pgflow.step_states set available_at = now() - interval '1 s' "
                       "where run_id = $1", run_id)
    assert await claim(conn) == []
    evs = await events(conn, run_id)
    assert shape(evs[-2:]) == [("step:failed", "ask", "failed"), ("run:failed", "ask", "failed")]
    assert evs[-1]["error"] == "no input within 1 s"
    assert not await submit(conn, run_id, "ask", 1)


async def test_input_step_definitions_are_checked(conn: Any) -> None:
    bad = [
        ({"slug": "s", "kind": "human"}, 'kind must be "task", "input", "map" or "http"'),
        ({"slug": "s", "schema": {}}, "only an input step"),
        ({"slug": "s", "kind": "input", "schema": "yes"}, "schema must be a JSON Schema"),
        ({"slug": "s", "kind": "input", "timeout": 2592001}, "from 1 to 2592000"),
    ]
    for step, message in bad:
        with pytest.raises(asyncpg.PostgresError) as info:
            await define(conn, {"slug": "f", "steps": [step]})
        assert message in info.value.message, (step, info.value.message)
    # a day by default, and a task step turned into an input step is another shape: a version
    await define(conn, {"slug": "g", "steps": [{"slug": "s"}]})
    changed = await define(conn, {"slug": "g", "steps": [{"slug": "s", "kind": "input"}]})
    assert changed["version"] == 2
    shape_ = await define(conn, {"slug": "h", "steps": [{"slug": "s", "kind": "input"}]})
    assert shape_["steps"][0]["timeout"] == 86400


# -- retry ----------------------------------------------------------------------------------


async def test_retry_requeues_failed_and_cancelled_steps_keeping_completed_outputs(
        conn: Any) -> None:
    await define(conn, {**DIAMOND, "max_attempts": 1})
    run_id = await start(conn, "diamond", 1)
    (a,) = await claim(conn)
    assert await complete(conn, a, {"a": 1})
    b, c = sorted(await claim(conn), key=lambda t: t["step_slug"])
    assert await fail(conn, b, "b broke")
    assert (await run_state(conn, run_id))["status"] == "failed"
    with pytest.raises(asyncpg.PostgresError) as info:
        await retry(conn, uuid.uuid4())
    assert info.value.sqlstate == "PF404"
    assert await retry(conn, run_id)
    evs = await events(conn, run_id)
    retried_at = [e["event"] for e in evs].index("run:retried")
    assert shape(evs[retried_at:]) == [
        ("run:retried", None, "started"), ("step:started", "b", "started"),
        ("step:started", "c", "started")]
    assert [e["attempt"] for e in evs[retried_at + 1:]] == [2, 2]  # numbered on
    # c's old lease died with the failed run: its late report is stale
    assert not await complete(conn, c)
    tasks = await claim(conn)
    assert sorted((t["step_slug"], t["attempt"], t["max_attempts"]) for t in tasks) == [
        ("b", 2, 2), ("c", 2, 2)]
    assert all(t["input"]["a"] == {"a": 1} for t in tasks)
    assert [await complete(conn, t) for t in tasks] == [True, True]
    state = await drive_to_end(conn, run_id)
    assert state["status"] == "completed"
    assert state["error"] is None
    assert not await retry(conn, run_id)  # not failed or cancelled


async def test_a_retried_step_gets_a_fresh_budget_of_attempts(conn: Any) -> None:
    await define(conn, {"slug": "flaky", "max_attempts": 2, "base_delay": 0,
                        "steps": [{"slug": "s"}]})
    run_id = await start(conn, "flaky")
    for _ in range(2):
        (task,) = await claim(conn)
        assert await fail(conn, task)
    assert (await run_state(conn, run_id))["status"] == "failed"
    assert await retry(conn, run_id)
    (task,) = await claim(conn)
    assert await fail(conn, task)  # attempt 3: the first of the new two, so it retries
    assert [e["event"] for e in await events(conn, run_id)][-1] == "step:retrying"
    (task,) = await claim(conn)
    assert task["attempt"] == 4
    assert await fail(conn, task)
    assert (await run_state(conn, run_id))["status"] == "failed"


async def test_retry_of_a_cancelled_run_resumes_it_and_a_waiting_step_waits_again(
        conn: Any) -> None:
    await define(conn, APPROVAL)
    run_id = await start(conn, "approval")
    (draft,) = await claim(conn)
    assert await complete(conn, draft, "text")
    assert await cancel(conn, run_id, "later")
    assert not await submit(conn, run_id, "approve", True)
    assert await retry(conn, run_id)
    state = await run_state(conn, run_id)
    assert state["status"] == "started"
    assert state["cancel_reason"] is None
    assert [s["status"] for s in state["steps"]] == ["completed", "waiting", "created"]
    waiting = (await events(conn, run_id))[-1]
    assert waiting["event"] == "step:waiting"
    assert waiting["input"]["draft"] == "text"
    assert await submit(conn, run_id, "approve", True)
    assert (await drive_to_end(conn, run_id))["status"] == "completed"


async def test_retry_racing_a_late_report_leaves_the_report_stale(db_url: str) -> None:
    one, two = await connect(db_url), await connect(db_url)
    try:
        await define(one, {"slug": "pair", "max_attempts": 1,
                           "steps": [{"slug": "x"}, {"slug": "y"}]})
        for _ in range(20):
            run_id = await start(one, "pair")
            x, y = sorted(await claim(one), key=lambda t: t["step_slug"])
            assert await fail(one, x)
            # y's handler reports late while the run is being retried
            late, retried = await asyncio.gather(complete(one, y), retry(two, run_id))
            assert retried
            assert not late
            state = await run_state(one, run_id)
            assert [s["status"] for s in state["steps"]] == ["started", "started"]
            await drive_to_end(one, run_id)
    finally:
        await one.close()
        await two.close()


# -- idempotent starts ----------------------------------------------------------------------


async def start_keyed(conn: Any, flow: str, input: Any, key: str | None,
                      owner: str | None = None) -> uuid.UUID:
    run_id: uuid.UUID = await conn.fetchval(
        "select pgflow.run_flow($1, $2::jsonb, $3, idempotency_key => $4)", flow, input, owner,
        key)
    return run_id


async def test_the_same_key_answers_the_same_run_and_creates_nothing(conn: Any) -> None:
    await define(conn, DIAMOND)
    first = await start_keyed(conn, "diamond", {"n": 1}, "order-1")
    assert await start_keyed(conn, "diamond", {"n": 1}, "order-1") == first
    assert await conn.fetchval("select count(*) from pgflow.runs") == 1
    assert len(await events(conn, first)) == 2
    # per owner and per flow; no key: a new run each time
    assert await start_keyed(conn, "diamond", {"n": 1}, "order-1", "alice") != first
    assert await start_keyed(conn, "diamond", {"n": 1}, None) != await start_keyed(
        conn, "diamond", {"n": 1}, None)
    with pytest.raises(asyncpg.PostgresError) as info:
        await start_keyed(conn, "diamond", {"n": 2}, "order-1")
    assert info.value.sqlstate == "PF422"
    assert "another input" in info.value.message
    rows = await conn.fetch(
        "select run_id, created from pgflow.start_runs($1, $2::jsonb[], null, $3)",
        ["diamond", "diamond", "nope"], [{"n": 1}, {"n": 1}, 1], ["order-1", "k2", "k3"])
    assert [(r["run_id"] == first, r["created"]) for r in rows[:2]] == [(True, False),
                                                                       (False, True)]
    assert tuple(rows[2]) == (None, False)
    # once the run is gone (pruned), the key starts a new one
    await conn.execute("delete from pgflow.runs where run_id = $1", first)
    assert await start_keyed(conn, "diamond", {"n": 1}, "order-1") != first


async def test_the_same_key_from_many_connections_at_once_starts_one_run(db_url: str) -> None:
    connections = [await connect(db_url) for _ in range(8)]
    try:
        await define(connections[0], DIAMOND)
        for round_ in range(5):
            key = f"k{round_}"
            ids = await asyncio.gather(*(start_keyed(c, "diamond", {"r": round_}, key)
                                         for c in connections))
            assert len(set(ids)) == 1
        assert await connections[0].fetchval("select count(*) from pgflow.runs") == 5
    finally:
        for c in connections:
            await c.close()


async def test_any_workers_claim_enforces_every_flows_input_deadlines(conn: Any) -> None:
    await define(conn, {"slug": "people_only", "steps": [{"slug": "ask", "kind": "input",
                                                           "timeout": 1}]})
    run_id = await start(conn, "people_only")
    await conn.execute("update pgflow.step_states set available_at = now() - interval '1 s' "
                       "where run_id = $1", run_id)
    # a worker of another flow: its claim still fails the overdue step
    assert await conn.fetch("select * from pgflow.claim_tasks('w', 10, array['diamond'])") == []
    assert (await run_state(conn, run_id))["status"] == "failed"
