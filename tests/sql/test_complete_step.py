from __future__ import annotations

import asyncio
from typing import Any

import orjson

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


async def test_complete_step_starts_the_dependents_that_became_ready(conn: Any) -> None:
    await define(conn, DIAMOND)
    run_id = await start(conn, "diamond")
    (a,) = await claim(conn)
    assert await complete(conn, a) is True
    got = [(e["event"], e["step_slug"]) for e in await events(conn, run_id, since=2)]
    assert got == [("step:completed", "a"), ("step:started", "b"), ("step:started", "c")]


async def test_a_step_starts_only_after_all_its_dependencies_completed(conn: Any) -> None:
    await define(conn, DIAMOND)
    await start(conn, "diamond")
    await complete(conn, (await claim(conn))[0])
    b, c = await claim(conn)
    await complete(conn, b)
    assert await claim(conn) == []
    await complete(conn, c)
    assert [t["step_slug"] for t in await claim(conn)] == ["d"]


async def test_complete_step_completes_the_run_with_the_output_steps_output(conn: Any) -> None:
    await define(conn, DIAMOND)
    run_id = await start(conn, "diamond")
    run = await drive_to_end(conn, run_id)
    assert (run["status"], run["output"]) == ("completed", {"by": "d"})
    last = (await events(conn, run_id))[-1]
    assert (last["event"], last["status"], last["output"]) == (
        "run:completed",
        "completed",
        {"by": "d"},
    )
    assert run["completed_at"] is not None


async def test_an_explicit_output_step_gives_the_run_its_output(conn: Any) -> None:
    await define(conn, {**DIAMOND, "slug": "explicit", "output_step": "b"})
    run = await drive_to_end(conn, await start(conn, "explicit"))
    assert run["output"] == {"by": "b"}


async def test_a_flow_with_several_leaves_outputs_each_leaf_by_slug(conn: Any) -> None:
    await define(
        conn,
        {
            "slug": "leaves",
            "steps": [
                {"slug": "root"},
                {"slug": "x", "depends_on": ["root"]},
                {"slug": "y", "depends_on": ["root"]},
            ],
        },
    )
    run = await drive_to_end(conn, await start(conn, "leaves"))
    assert run["output"] == {"x": {"by": "x"}, "y": {"by": "y"}}


async def test_seq_is_gap_free_and_the_log_ends_with_run_completed(conn: Any) -> None:
    await define(conn, DIAMOND)
    run_id = await start(conn, "diamond")
    await drive_to_end(conn, run_id)
    log = await events(conn, run_id)
    assert [e["seq"] for e in log] == list(range(1, len(log) + 1))
    assert [e["event"] for e in log].count("run:completed") == 1
    assert log[-1]["event"] == "run:completed"
    assert (await run_state(conn, run_id))["seq"] == len(log)


async def test_a_completion_from_a_worker_that_does_not_hold_the_task_changes_nothing(
    conn: Any,
) -> None:
    await define(conn, DIAMOND)
    run_id = await start(conn, "diamond")
    (a,) = await claim(conn, worker="holder")
    before = await events(conn, run_id)
    assert await complete(conn, a, worker="intruder") is False
    wrong_attempt = await conn.fetchval(
        "select pgflow.complete_step($1, 'a', '{}', 'holder', 7)", run_id
    )
    assert wrong_attempt is False
    assert await events(conn, run_id) == before
    assert (await run_state(conn, run_id))["steps"][0]["status"] == "started"


async def test_a_repeated_completion_is_ignored(conn: Any) -> None:
    await define(conn, DIAMOND)
    run_id = await start(conn, "diamond")
    (a,) = await claim(conn)
    assert await complete(conn, a) is True
    before = await events(conn, run_id)
    assert await complete(conn, a) is False
    assert await events(conn, run_id) == before


async def test_completing_an_unclaimed_step_changes_nothing(conn: Any) -> None:
    await define(conn, DIAMOND)
    run_id = await start(conn, "diamond")
    applied = await conn.fetchval("select pgflow.complete_step($1, 'a', '1')", run_id)
    assert applied is False
    assert len(await events(conn, run_id)) == 2


async def test_a_completion_for_a_failed_run_changes_nothing(conn: Any) -> None:
    await define(conn, {**DIAMOND, "max_attempts": 1})
    run_id = await start(conn, "diamond")
    await complete(conn, (await claim(conn))[0])
    b, c = await claim(conn)
    assert await fail(conn, b) is True
    before = await events(conn, run_id)
    assert await complete(conn, c) is False
    assert await events(conn, run_id) == before
    assert await claim(conn) == []


async def test_an_output_over_8000_bytes_travels_by_reference_and_reads_back_whole(
    conn: Any, listen_conn: Any
) -> None:
    await define(conn, {"slug": "big", "steps": [{"slug": "a"}]})
    run_id = await start(conn, "big")
    (a,) = await claim(conn)
    big = {"blob": "x" * 100_000, "list": list(range(1000))}
    async with Notifications(listen_conn, "pgflow_events") as notes:
        await complete(conn, a, big)
        payload = await notes.next_json()
    assert "events" not in payload
    assert payload["refs"] == [{"run_id": str(run_id), "from": 3, "to": 4}]
    completed, run_completed = await events(conn, run_id, since=2)
    assert completed["output"] == big
    assert run_completed["output"] == big


async def test_one_transaction_sends_one_notification_however_many_events(
    conn: Any, listen_conn: Any
) -> None:
    await define(conn, DIAMOND)
    for _ in range(20):
        await start(conn, "diamond")
    tasks = await claim(conn)
    async with Notifications(listen_conn, "pgflow_events") as notes:
        async with conn.transaction():
            for task in tasks:
                await complete(conn, task)
        payloads = await notes.drain(quiet=0.3)
    # 20 runs x (step:completed, 2 x step:started) = 60 events: too big inline, one ref list
    assert len(payloads) == 1
    refs = orjson.loads(payloads[0])["refs"]
    assert sorted(r["from"] for r in refs) == [3] * 20
    assert all(r["to"] == 5 for r in refs)


async def test_a_small_batch_travels_inline_each_run_contiguous_and_in_seq_order(
    conn: Any, listen_conn: Any
) -> None:
    await define(conn, DIAMOND)
    runs = [await start(conn, "diamond") for _ in range(2)]
    tasks = await claim(conn)
    async with Notifications(listen_conn, "pgflow_events") as notes:
        async with conn.transaction():
            for task in tasks:
                await complete(conn, task)
        payload = await notes.next_json()
    got = [(e["run_id"], e["seq"]) for e in payload["events"]]
    assert got == [(str(r), seq) for r in sorted(runs) for seq in (3, 4, 5)]


async def test_report_steps_applies_a_batch_and_says_which_were_stale(conn: Any) -> None:
    await define(conn, DIAMOND)
    runs = [await start(conn, "diamond") for _ in range(3)]
    t0, t1, t2 = await claim(conn)
    applied = await conn.fetchval(
        "select pgflow.report_steps('w1', $1, $2, $3, $4::jsonb[], $5)",
        [t0["run_id"], t1["run_id"], t2["run_id"]],
        ["a", "a", "a"],
        [1, 1, 99],
        [{"ok": 1}, None, {"ok": 3}],
        [None, "bad input", None],
    )
    assert applied == [True, True, False]
    states = [(await run_state(conn, r))["steps"][0] for r in runs]
    assert [(s["status"], s["output"], s["error"]) for s in states] == [
        ("completed", {"ok": 1}, None),
        ("retrying", None, "bad input"),
        ("started", None, None),
    ]


async def test_concurrent_completions_of_a_fan_in_start_it_exactly_once(
    db_url: str, conn: Any
) -> None:
    width = 50
    await define(
        conn,
        {
            "slug": "fanin",
            "steps": [
                {"slug": "root"},
                *({"slug": f"p{i}", "depends_on": ["root"]} for i in range(width)),
                {"slug": "join", "depends_on": [f"p{i}" for i in range(width)]},
            ],
        },
    )
    completers = [await connect(db_url) for _ in range(10)]
    try:
        for _ in range(5):
            run_id = await start(conn, "fanin")
            await complete(conn, (await claim(conn))[0])
            parallel = await claim(conn, n=width)
            assert len(parallel) == width
            chunks = [parallel[i :: len(completers)] for i in range(len(completers))]

            async def finish(c: Any, tasks: list[Any]) -> None:
                for t in tasks:
                    await complete(c, t)

            await asyncio.gather(*(finish(c, ch) for c, ch in zip(completers, chunks, strict=True)))
            log = await events(conn, run_id)
            assert [e["step_slug"] for e in log if e["event"] == "step:started"].count("join") == 1
            join_started = next(
                e["seq"] for e in log if (e["event"], e["step_slug"]) == ("step:started", "join")
            )
            assert all(e["seq"] < join_started for e in log if e["event"] == "step:completed")
            assert [e["seq"] for e in log] == list(range(1, len(log) + 1))
            (join,) = await claim(conn)
            assert set(join["input"]) == {"run", *(f"p{i}" for i in range(width))}
            await complete(conn, join)
            assert (await run_state(conn, run_id))["status"] == "completed"
    finally:
        for c in completers:
            await c.close()


async def report(conn: Any, tasks: list[Any], worker: str = "w1") -> list[bool]:
    applied: list[bool] = await conn.fetchval(
        "select pgflow.report_steps($1, $2, $3, $4, $5::jsonb[], $6)",
        worker,
        [t["run_id"] for t in tasks],
        [t["step_slug"] for t in tasks],
        [t["attempt"] for t in tasks],
        [{"by": t["step_slug"]} for t in tasks],
        [None] * len(tasks),
    )
    return applied


def without_times(log: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in e.items() if k not in ("at", "run_id")} for e in log]


async def test_report_steps_writes_the_same_log_as_completing_one_by_one(conn: Any) -> None:
    await define(
        conn,
        {
            "slug": "shape",
            "steps": [
                {"slug": "a"},
                {"slug": "b", "depends_on": ["a"]},
                {"slug": "c", "depends_on": ["a"]},
                {"slug": "e", "depends_on": ["a"]},
                {"slug": "d", "depends_on": ["b", "c"]},
            ],
        },
    )
    one_by_one = await start(conn, "shape", {"n": 1})
    batched = await start(conn, "shape", {"n": 1})
    while tasks := await claim(conn):
        mine = [t for t in tasks if t["run_id"] == one_by_one]
        async with conn.transaction():
            for t in mine:
                await complete(conn, t)
        assert await report(conn, [t for t in tasks if t["run_id"] == batched]) == [True] * (
            len(tasks) - len(mine)
        )
    first, second = await events(conn, one_by_one), await events(conn, batched)
    assert without_times(first) == without_times(second)
    assert second[-1]["event"] == "run:completed"
    assert second[-1]["output"] == {"d": {"by": "d"}, "e": {"by": "e"}}
    assert (await run_state(conn, batched))["status"] == "completed"


async def test_report_steps_starts_a_join_once_when_its_dependencies_complete_together(
    conn: Any,
) -> None:
    await define(conn, DIAMOND)
    run_id = await start(conn, "diamond")
    await report(conn, await claim(conn))
    b, c = await claim(conn)
    assert await report(conn, [c, b, b]) == [True, True, False]
    log = await events(conn, run_id)
    assert [(e["event"], e["step_slug"]) for e in log[-3:]] == [
        ("step:completed", "c"),
        ("step:completed", "b"),
        ("step:started", "d"),
    ]
    (d,) = await claim(conn)
    assert d["input"] == {"run": None, "b": {"by": "b"}, "c": {"by": "c"}}


async def runs_rows(conn: Any, run_ids: list[Any]) -> list[tuple[Any, ...]]:
    rows = await conn.fetch(
        "select remaining_steps, last_seq, status, output, completed_at is not null as done"
        " from pgflow.runs where run_id = any($1::uuid[])"
        " order by array_position($1::uuid[], run_id)",
        run_ids,
    )
    return [tuple(r) for r in rows]


async def test_report_steps_leaves_each_run_row_as_completing_one_by_one(conn: Any) -> None:
    # report_steps writes each run's row once per batch (counted down, last seq, outcome):
    # after every round the rows equal those of runs completed step by step
    await define(conn, DIAMOND)
    one_by_one = [await start(conn, "diamond", {"n": i}) for i in range(3)]
    batched = [await start(conn, "diamond", {"n": i}) for i in range(3)]
    while tasks := await claim(conn):
        mine = [t for t in tasks if t["run_id"] in one_by_one]
        for t in mine:
            await complete(conn, t)
        theirs = [t for t in tasks if t["run_id"] in batched]
        assert await report(conn, theirs) == [True] * len(theirs)
        assert await runs_rows(conn, one_by_one) == await runs_rows(conn, batched)
    finished = await runs_rows(conn, batched)
    assert [(r[0], r[1], r[2], r[3], r[4]) for r in finished] == [
        (0, 10, "completed", {"by": "d"}, True)
    ] * 3
