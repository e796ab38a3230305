from __future__ import annotations

import asyncio
import itertools
import uuid
from typing import Any

import asyncpg
import orjson
import pytest

from tests.sql._helpers import DIAMOND, Notifications, claim, define, events, run_state, start


async def test_run_flow_returns_a_run_id_and_records_the_run(conn: Any) -> None:
    await define(conn, DIAMOND)
    run_id = await start(conn, "diamond", {"x": 1})
    assert isinstance(run_id, uuid.UUID)
    run = await run_state(conn, run_id)
    assert (run["status"], run["flow_slug"], run["input"]) == ("started", "diamond", {"x": 1})
    assert [(s["step_slug"], s["status"]) for s in run["steps"]] == [
        ("a", "started"),
        ("b", "created"),
        ("c", "created"),
        ("d", "created"),
    ]


async def test_run_flow_emits_run_started_then_step_started_for_each_root(conn: Any) -> None:
    await define(
        conn,
        {
            "slug": "roots",
            "steps": [{"slug": "x"}, {"slug": "y"}, {"slug": "z", "depends_on": ["x", "y"]}],
        },
    )
    run_id = await start(conn, "roots")
    got = [(e["seq"], e["event"], e["step_slug"]) for e in await events(conn, run_id)]
    assert got == [(1, "run:started", None), (2, "step:started", "x"), (3, "step:started", "y")]
    assert (await run_state(conn, run_id))["seq"] == 3


async def test_run_flow_queues_only_the_root_steps(conn: Any) -> None:
    await define(conn, DIAMOND)
    await start(conn, "diamond")
    assert [t["step_slug"] for t in await claim(conn)] == ["a"]


async def test_run_flow_refuses_an_unknown_flow(conn: Any) -> None:
    with pytest.raises(asyncpg.PostgresError) as info:
        await start(conn, "nope")
    assert info.value.sqlstate == "PF404"
    assert "unknown flow 'nope'" in str(info.value)


async def test_run_flow_treats_a_null_input_as_json_null(conn: Any) -> None:
    await define(conn, DIAMOND)
    run_id = await conn.fetchval("select pgflow.run_flow('diamond', null)")
    assert (await claim(conn))[0]["input"] == {"run": None}
    assert (await run_state(conn, run_id))["input"] is None


async def test_run_flow_records_the_owner(conn: Any) -> None:
    await define(conn, DIAMOND)
    run_id = await conn.fetchval(
        "select pgflow.run_flow(flow_slug => 'diamond', input => '{}', owner => 'alice')"
    )
    assert (await run_state(conn, run_id))["owner"] == "alice"


async def test_run_flow_sends_its_events_in_one_notification_and_wakes_workers(
    conn: Any, listen_conn: Any
) -> None:
    await define(conn, {"slug": "wide", "steps": [{"slug": f"s{i}"} for i in range(10)]})
    async with (
        Notifications(listen_conn, "pgflow_events") as notes,
        Notifications(listen_conn, "pgflow_tasks") as tasks,
    ):
        run_id = await start(conn, "wide")
        payload = await notes.next_json()
        assert payload["v"] == 1
        assert [e["seq"] for e in payload["events"]] == list(range(1, 12))
        assert all(e["run_id"] == str(run_id) for e in payload["events"])
        assert await notes.drain() == []
        assert await tasks.next() == "wide"
        assert await tasks.drain() == []


async def test_a_rolled_back_run_flow_notifies_nothing(conn: Any, listen_conn: Any) -> None:
    await define(conn, DIAMOND)
    async with Notifications(listen_conn, "pgflow_events") as notes:
        tr = conn.transaction()
        await tr.start()
        await start(conn, "diamond")
        await tr.rollback()
        assert await notes.drain() == []
        assert await conn.fetchval("select count(*) from pgflow.run_events") == 0


async def test_events_of_a_released_savepoint_are_notified_and_of_a_rolled_back_one_not(
    conn: Any, listen_conn: Any
) -> None:
    await define(conn, DIAMOND)
    async with Notifications(listen_conn, "pgflow_events") as notes:
        async with conn.transaction():
            kept = await start(conn, "diamond")
            async with conn.transaction():  # a savepoint that is released
                also_kept = await start(conn, "diamond")
            savepoint = conn.transaction()
            await savepoint.start()
            await start(conn, "diamond")
            await savepoint.rollback()
        payload = await notes.next_json()
        assert await notes.drain() == []
    notified = {(e["run_id"], e["seq"]) for e in payload["events"]}
    assert notified == {(str(r), s) for r in (kept, also_kept) for s in (1, 2)}


async def test_thousands_of_runs_started_in_one_statement_notify_by_reference(
    conn: Any, listen_conn: Any
) -> None:
    await define(conn, DIAMOND)
    async with Notifications(listen_conn, "pgflow_events") as notes:
        await conn.execute(
            "select pgflow.run_flow('diamond', to_jsonb(i)) from generate_series(1, 2000) as i"
        )
        payloads = [orjson.loads(p) for p in await notes.drain(quiet=0.5)]
    refs = [ref for p in payloads for ref in p["refs"]]
    assert len(refs) == 2000
    assert {(r["from"], r["to"]) for r in refs} == {(1, 2)}
    assert all(len(orjson.dumps(p)) <= 8000 for p in payloads)


async def test_past_the_settings_cap_events_are_found_by_their_transaction_and_savepoints_hold(
    conn: Any, listen_conn: Any
) -> None:
    # Writers note their events' ranges in pgflow.pending_events until it holds 8 KB (about 180
    # runs here), then mark the events with their transaction instead (_events_tx): both halves
    # are notified, and a rolled-back savepoint past the cap takes its events with it.
    await define(conn, DIAMOND)
    async with Notifications(listen_conn, "pgflow_events") as notes:
        async with conn.transaction():
            await conn.execute(
                "select pgflow.run_flow('diamond', to_jsonb(i)) from generate_series(1, 400) as i"
            )
            savepoint = conn.transaction()
            await savepoint.start()
            dropped = await start(conn, "diamond")
            await savepoint.rollback()
            kept = await start(conn, "diamond")
            marked, unmarked = await conn.fetchrow(
                "select count(*) filter (where tx is not null), count(*) filter (where tx is null)"
                " from pgflow.run_events"
            )
        # every notification, until they name the 401 runs that committed (then what else came)
        payloads: list[Any] = []
        async with asyncio.timeout(10):
            while sum(len(p["refs"]) for p in payloads) < 401:
                payloads.append(await notes.next_json())
        payloads += [orjson.loads(p) for p in await notes.drain()]
    # both ways were used
    assert marked > 0
    assert unmarked > 0
    refs = {ref["run_id"]: (ref["from"], ref["to"]) for p in payloads for ref in p["refs"]}
    assert len(refs) == 401
    assert refs[str(kept)] == (1, 2)
    assert str(dropped) not in refs
    assert await conn.fetchval("select count(*) from pgflow.runs") == 401


async def test_events_after_a_rolled_back_savepoint_that_wrote_first_are_still_notified(
    conn: Any, listen_conn: Any
) -> None:
    # the commit-time firing is queued by the transaction's first event row: when that row's
    # savepoint rolls back, the next row must queue it again
    await define(conn, DIAMOND)
    async with Notifications(listen_conn, "pgflow_events") as notes:
        async with conn.transaction():
            savepoint = conn.transaction()
            await savepoint.start()
            await start(conn, "diamond")
            await savepoint.rollback()
            kept = await start(conn, "diamond")
        payload = await notes.next_json()
        assert await notes.drain() == []
    assert [(e["run_id"], e["seq"]) for e in payload["events"]] == [(str(kept), 1), (str(kept), 2)]


async def test_a_second_transaction_on_the_same_connection_is_notified_too(
    conn: Any, listen_conn: Any
) -> None:
    await define(conn, DIAMOND)
    async with Notifications(listen_conn, "pgflow_events") as notes:
        first = await start(conn, "diamond")
        second = await start(conn, "diamond")
        payloads = [await notes.next_json(), await notes.next_json()]
    assert [{e["run_id"] for e in p["events"]} for p in payloads] == [{str(first)}, {str(second)}]


async def test_notifications_by_reference_are_printed_as_jsonb_and_filled_before_splitting(
    conn: Any, listen_conn: Any
) -> None:
    await define(conn, DIAMOND)
    async with Notifications(listen_conn, "pgflow_events") as notes:
        await conn.execute(
            "select pgflow.run_flow('diamond', to_jsonb(i)) from generate_series(1, 500) as i"
        )
        raw = await notes.drain(quiet=0.5)
    assert len(raw) > 1
    for text in raw:
        printed = await conn.fetchval(
            "select jsonb_build_object('v', 1, 'refs', $1::text::jsonb -> 'refs')::text", text
        )
        assert text == printed
        assert len(text.encode()) <= 7900
    # each chunk was split only because the next ref did not fit: ', ' + ref would overflow
    for text, following in itertools.pairwise(raw):
        next_ref = await conn.fetchval("select ($1::text::jsonb -> 'refs' -> 0)::text", following)
        assert len(text.encode()) + 2 + len(next_ref.encode()) > 7900
    refs = [ref for text in raw for ref in orjson.loads(text)["refs"]]
    assert len(refs) == 500
    assert [r["run_id"] for r in refs] == sorted(r["run_id"] for r in refs)
