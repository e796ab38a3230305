"""Map steps: a task per element of an array (each its own attempts, lease and retries), the map
step's output the array of their outputs in index order; their events read as task:* events of
the map step (docs/reference/events.md)."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest

from tests.sql._helpers import claim, complete, define, drive_to_end, events, fail, run_state, start

SQUARES: dict[str, Any] = {
    "slug": "squares",
    "steps": [
        {"slug": "split"},
        {"slug": "square", "kind": "map", "over": "split", "depends_on": ["split"],
         "max_attempts": 2, "base_delay": 0},
        {"slug": "total", "depends_on": ["square"]},
    ],
}
OVER_RUN: dict[str, Any] = {
    "slug": "over_run",
    "steps": [{"slug": "each", "kind": "map", "over": "run"}],
}


def shape(evs: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(e["event"], e["step_slug"], e.get("index")) for e in evs]


async def report(conn: Any, tasks: list[Any], outputs: list[Any], worker: str = "w1") -> list[bool]:
    applied: list[bool] = await conn.fetchval(
        "select pgflow.report_steps($1, $2, $3, $4, $5::jsonb[], $6)", worker,
        [t["run_id"] for t in tasks], [t["step_slug"] for t in tasks],
        [t["attempt"] for t in tasks], outputs, [None] * len(tasks))
    return applied


async def split_into(conn: Any, value: Any) -> uuid.UUID:
    run_id = await start(conn, "squares", {"tag": "t"})
    (split,) = await claim(conn)
    assert await complete(conn, split, value) if value is not None else True
    return run_id


async def test_each_element_is_a_task_and_the_output_is_theirs_in_index_order(conn: Any) -> None:
    await define(conn, SQUARES)
    run_id = await split_into(conn, [3, 1, 2])
    started = (await events(conn, run_id))[-1]
    assert (started["event"], started["step_slug"], started["tasks"]) == (
        "step:started", "square", 3)
    tasks = sorted(await claim(conn), key=lambda t: t["step_slug"])
    assert [t["step_slug"] for t in tasks] == ["square[0]", "square[1]", "square[2]"]
    # the element's input: the run's, its item and index; the array itself is not repeated
    assert tasks[1]["input"] == {"run": {"tag": "t"}, "item": 1, "index": 1}
    assert (tasks[0]["max_attempts"], tasks[0]["timeout"]) == (2, 60)
    # out of order, in two calls: one through report_steps, one through complete_step
    assert await report(conn, [tasks[2], tasks[0]], [4, 9]) == [True, True]
    state = await run_state(conn, run_id)
    square = next(s for s in state["steps"] if s["step_slug"] == "square")
    assert (square["status"], square["tasks"], square["tasks_completed"]) == ("started", 3, 2)
    assert [s["step_slug"] for s in state["steps"]] == ["split", "square", "total"]  # no elements
    assert await complete(conn, tasks[1], 1)
    evs = await events(conn, run_id)
    assert shape(evs[-5:]) == [
        ("task:completed", "square", 2), ("task:completed", "square", 0),
        ("task:completed", "square", 1), ("step:completed", "square", None),
        ("step:started", "total", None)]
    assert "output" not in evs[-5]  # an element's output is in its map step's, once
    assert evs[-5]["status"] == "completed"
    assert evs[-5]["attempt"] == 1
    assert evs[-2]["output"] == [9, 1, 4]
    (total,) = await claim(conn)
    assert total["input"] == {"run": {"tag": "t"}, "square": [9, 1, 4]}
    assert await complete(conn, total, 14)
    assert (await run_state(conn, run_id))["status"] == "completed"


async def test_an_empty_array_completes_the_map_step_at_once_with_an_empty_array(
        conn: Any) -> None:
    await define(conn, SQUARES)
    run_id = await split_into(conn, [])
    evs = await events(conn, run_id)
    assert shape(evs[-3:]) == [("step:started", "square", None),
                               ("step:completed", "square", None),
                               ("step:started", "total", None)]
    assert (evs[-3]["tasks"], evs[-2]["output"]) == (0, [])
    (total,) = await claim(conn)
    assert total["input"]["square"] == []


@pytest.mark.parametrize(("value", "what"), [
    ({"a": 1}, "an object"), ("text", "a string"), (7, "a number"), (None, "a null"),
])
async def test_a_value_that_is_not_an_array_fails_the_step_and_the_run(
        conn: Any, value: Any, what: str) -> None:
    await define(conn, SQUARES)
    run_id = await start(conn, "squares")
    (_split,) = await claim(conn)
    assert await conn.fetchval("select pgflow.complete_step($1, 'split', $2::jsonb, 'w1', 1)",
                               run_id, value if value is not None else None)
    evs = await events(conn, run_id)
    assert shape(evs[-3:]) == [("step:started", "square", None), ("step:failed", "square", None),
                               ("run:failed", "square", None)]
    assert evs[-2]["error"] == f"map step 'square' maps over an array: 'split' gave {what}"
    assert await claim(conn) == []


async def test_a_root_map_step_maps_over_the_run_input(conn: Any) -> None:
    await define(conn, OVER_RUN)
    run_id = await start(conn, "over_run", ["a", "b"])
    tasks = sorted(await claim(conn), key=lambda t: t["step_slug"])
    assert [t["input"] for t in tasks] == [{"item": "a", "index": 0}, {"item": "b", "index": 1}]
    assert await report(conn, tasks, ["A", "B"]) == [True, True]
    assert (await run_state(conn, run_id))["output"] == ["A", "B"]
    empty = await start(conn, "over_run", [])
    state = await run_state(conn, empty)
    assert (state["status"], state["output"]) == ("completed", [])
    refused = await start(conn, "over_run", {"not": "an array"})
    state = await run_state(conn, refused)
    assert state["status"] == "failed"
    assert state["error"] == "map step 'each' maps over an array: the run's input gave an object"


async def test_an_element_retries_by_the_map_steps_options_then_fails_it_and_the_run(
        conn: Any) -> None:
    await define(conn, SQUARES)
    run_id = await split_into(conn, [1, 2])
    first, second = sorted(await claim(conn), key=lambda t: t["step_slug"])
    assert await fail(conn, second, "boom")
    evs = await events(conn, run_id)
    assert (evs[-1]["event"], evs[-1]["index"], evs[-1]["error"]) == ("task:retrying", 1, "boom")
    (again,) = await claim(conn)
    assert (again["step_slug"], again["attempt"]) == ("square[1]", 2)
    retry_started = (await events(conn, run_id))[-1]
    assert (retry_started["event"], retry_started["index"], retry_started["attempt"]) == (
        "task:started", 1, 2)
    assert await fail(conn, again, "boom again")
    evs = await events(conn, run_id)
    assert shape(evs[-3:]) == [("task:failed", "square", 1), ("step:failed", "square", None),
                               ("run:failed", "square", None)]
    assert evs[-2]["error"] == "task 1 failed: boom again"
    assert not await complete(conn, first, 1)  # the run ended: the other element is stale
    state = await run_state(conn, run_id)
    assert (state["failed_step"], state["error"]) == ("square", "task 1 failed: boom again")


async def test_a_retried_run_runs_the_failed_elements_again_and_keeps_the_completed(
        conn: Any) -> None:
    await define(conn, {**SQUARES, "steps": [
        SQUARES["steps"][0], {**SQUARES["steps"][1], "max_attempts": 1}, SQUARES["steps"][2]]})
    run_id = await split_into(conn, [1, 2, 3])
    tasks = sorted(await claim(conn), key=lambda t: t["step_slug"])
    assert await complete(conn, tasks[0], 10)
    assert await fail(conn, tasks[1], "no")  # fails the map step and the run
    assert (await run_state(conn, run_id))["status"] == "failed"
    assert await conn.fetchval("select pgflow.retry_run($1)", run_id)
    evs = await events(conn, run_id)
    assert (evs[-1]["event"], evs[-1]["step_slug"], evs[-1]["tasks"]) == (
        "step:started", "square", 3)
    again = sorted(await claim(conn), key=lambda t: t["step_slug"])
    assert [t["step_slug"] for t in again] == ["square[1]", "square[2]"]  # not square[0]
    assert await report(conn, again, [20, 30]) == [True, True]
    state = await drive_to_end(conn, run_id)
    assert state["status"] == "completed"
    square = next(s for s in state["steps"] if s["step_slug"] == "square")
    assert square["output"] == [10, 20, 30]


async def test_a_cancelled_map_writes_no_element_events_and_leaves_nothing_to_claim(
        conn: Any) -> None:
    await define(conn, SQUARES)
    run_id = await split_into(conn, list(range(50)))
    some = await claim(conn, n=5)
    assert await conn.fetchval("select pgflow.cancel_run($1)", run_id)
    evs = await events(conn, run_id)
    assert shape(evs[-3:]) == [("step:cancelled", "square", None),
                               ("step:cancelled", "total", None), ("run:cancelled", None, None)]
    assert await claim(conn) == []
    assert await report(conn, some, [0] * 5) == [False] * 5


async def test_an_expired_element_lease_retries_that_element(conn: Any) -> None:
    await define(conn, SQUARES)
    run_id = await split_into(conn, [1])
    (task,) = await claim(conn, lease=0.1)
    await conn.execute("select pg_sleep(0.15)")
    (again,) = await claim(conn)
    assert (again["step_slug"], again["attempt"]) == ("square[0]", 2)
    retrying = [e for e in await events(conn, run_id) if e["event"] == "task:retrying"]
    assert [(e["index"], e["error"]) for e in retrying] == [(0, "lease expired")]
    assert not await complete(conn, task, 1)
    assert await complete(conn, again, 1)


async def test_an_element_streams_as_task_stream(conn: Any) -> None:
    await define(conn, SQUARES)
    run_id = await split_into(conn, [1])
    (_task,) = await claim(conn)
    assert await conn.fetchval(
        "select pgflow.stream_steps('w1', $1, $2, $3, $4::text[]::jsonb[])",
        [run_id], ["square[0]"], [1], ['["half", "way"]']) == [True]
    streamed = (await events(conn, run_id))[-1]
    assert (streamed["event"], streamed["step_slug"], streamed["index"], streamed["chunks"]) == (
        "task:stream", "square", 0, ["half", "way"])


async def test_thousands_of_elements_go_through_in_batches(conn: Any) -> None:
    await define(conn, SQUARES)
    run_id = await split_into(conn, list(range(3000)))
    done = 0
    while True:
        tasks = await claim(conn, n=1000)
        tasks = [t for t in tasks if t["step_slug"].startswith("square[")]
        if not tasks:
            break
        assert await report(conn, tasks, [t["input"]["item"] * 2 for t in tasks]) == [True] * len(
            tasks)
        done += len(tasks)
    assert done == 3000
    state = await run_state(conn, run_id)
    square = next(s for s in state["steps"] if s["step_slug"] == "square")
    assert square["output"] == [i * 2 for i in range(3000)]
    assert square["tasks_completed"] == 3000


@pytest.mark.parametrize(("step", "message"), [
    ({"slug": "m", "kind": "map"}, 'needs "over"'),
    ({"slug": "m", "over": "run"}, 'needs "over", and only a map step takes it'),
    ({"slug": "m", "kind": "map", "over": "nope"}, '"over" must be "run" or one of its depends_on'),
    ({"slug": "h", "kind": "http"}, 'needs "url"'),
    ({"slug": "h", "kind": "http", "url": "ftp://x"}, '"url" must be an http(s) URL'),
    ({"slug": "h", "kind": "http", "url": "/has space"}, '"url" must be an http(s) URL'),
])
async def test_map_and_http_step_definitions_are_checked(
        conn: Any, step: dict[str, Any], message: str) -> None:
    with pytest.raises(asyncpg.PostgresError) as info:
        await define(conn, {"slug": "f", "steps": [step]})
    assert message in info.value.message


async def test_an_http_step_is_a_task_and_a_4xx_fails_it_at_once(conn: Any) -> None:
    shape_ = await define(conn, {"slug": "calls", "steps": [
        {"slug": "render", "kind": "http", "url": "/functions/render", "max_attempts": 5}]})
    assert shape_["steps"][0]["url"] == "/functions/render"
    run_id = await start(conn, "calls", {"title": "x"})
    (task,) = await claim(conn)
    assert task["input"] == {"run": {"title": "x"}}
    assert await conn.fetchval(
        "select pgflow.fail_step($1, 'render', 'HTTP 400: bad', 'w1', 1, retry => false)", run_id)
    state = await run_state(conn, run_id)
    assert (state["status"], state["error"]) == ("failed", "HTTP 400: bad")


async def test_an_array_past_the_element_limit_fails_the_step_and_starts_no_task(
        conn: Any) -> None:
    await define(conn, OVER_RUN)
    run_id = await start(conn, "over_run", list(range(100_001)))
    state = await run_state(conn, run_id)
    assert state["status"] == "failed"
    assert state["error"] == ("map step 'each' maps over an array: the run's input gave 100001 "
                              "elements, over the 100000 a map step takes")
    assert await conn.fetchval("select count(*) from pgflow.step_states where run_id = $1",
                               run_id) == 1
    assert await claim(conn) == []
