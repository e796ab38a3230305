"""run_events stores each field of an event once; every read rebuilds the whole event.

The payload column holds only what is not a column (0042_table_run_events.sql); get_run_events,
the commit-time NOTIFY and the gateway's reads through the Store give back the event of
docs/reference/events.md, and migration 0003 converts rows written in the old, full shape.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import orjson

from pgflow.db.migrate import load_migrations
from pgflow.db.store import Store
from tests.conftest import Server
from tests.migration._helpers import fresh_database
from tests.sql._helpers import (
    DIAMOND,
    Notifications,
    claim,
    complete,
    define,
    events,
    fail,
    start,
)

EVENT_KEYS = {"run_id", "seq", "event", "step_slug", "status", "output", "error", "attempt", "at"}
COLUMNS_IN_PAYLOAD = {"run_id", "seq", "event", "step_slug", "attempt", "at"}
COMPACT = "0003"


async def stored(conn: asyncpg.Connection, run_id: uuid.UUID) -> list[tuple[str, Any]]:
    rows = await conn.fetch(
        "select event, payload from pgflow.run_events where run_id = $1 order by seq", run_id
    )
    return [(r[0], r[1]) for r in rows]


async def retried_then_failed(conn: asyncpg.Connection) -> uuid.UUID:
    """A run with every kind of event _event writes: started, completed, retrying, failed."""
    await define(conn, {**DIAMOND, "base_delay": 0, "max_attempts": 2})
    run_id = await start(conn, "diamond")
    assert await complete(conn, (await claim(conn))[0], {"n": 1}) is True
    b, c = sorted(await claim(conn), key=lambda t: t["step_slug"])
    # a JSON null output, kept as such
    assert await conn.fetchval(
        "select pgflow.complete_step($1, $2, 'null'::jsonb, 'w1', $3)",
        b["run_id"], b["step_slug"], b["attempt"],
    ) is True
    assert await fail(conn, c, "first") is True
    (again,) = await claim(conn)
    assert await fail(conn, again, "second") is True
    return run_id


async def test_a_stored_payload_holds_only_what_no_column_holds(conn: Any) -> None:
    run_id = await retried_then_failed(conn)
    rows = await stored(conn, run_id)
    assert all(not set(payload) & COLUMNS_IN_PAYLOAD for _, payload in rows)
    assert [(event, payload) for event, payload in rows if payload] == [
        ("step:completed", {"output": {"n": 1}}),
        ("step:completed", {"output": None}),
        ("step:retrying", {"error": "first"}),
        ("step:failed", {"error": "second"}),
        ("run:failed", {"error": "second"}),
    ]
    assert {event for event, payload in rows if not payload} == {"run:started", "step:started"}


async def test_get_run_events_rebuilds_every_field(conn: Any) -> None:
    run_id = await retried_then_failed(conn)
    got = await events(conn, run_id)
    assert all(set(e) == EVENT_KEYS for e in got)
    assert all(e["at"].endswith("Z") and len(e["at"]) == 27 for e in got)
    assert [{k: v for k, v in e.items() if k != "at"} for e in got][-4:] == [
        {"run_id": str(run_id), "seq": 7, "event": "step:retrying", "step_slug": "c",
         "status": "retrying", "output": None, "error": "first", "attempt": 1},
        {"run_id": str(run_id), "seq": 8, "event": "step:started", "step_slug": "c",
         "status": "started", "output": None, "error": None, "attempt": 2},
        {"run_id": str(run_id), "seq": 9, "event": "step:failed", "step_slug": "c",
         "status": "failed", "output": None, "error": "second", "attempt": 2},
        {"run_id": str(run_id), "seq": 10, "event": "run:failed", "step_slug": "c",
         "status": "failed", "output": None, "error": "second", "attempt": 2},
    ]
    assert [(e["event"], e["attempt"], e["output"]) for e in got[:6]] == [
        ("run:started", None, None), ("step:started", 1, None), ("step:completed", 1, {"n": 1}),
        ("step:started", 1, None), ("step:started", 1, None), ("step:completed", 1, None),
    ]


async def test_the_notification_and_the_store_reads_carry_the_same_bytes_as_the_log(
    conn: Any, listen_conn: Any, db_url: str
) -> None:
    async with Notifications(listen_conn, "pgflow_events") as notes:
        run_id = await retried_then_failed(conn)
        notified = [e for p in await notes.drain() for e in orjson.loads(p)["events"]]
    texts = [
        r[0] for r in await conn.fetch("select e::text from pgflow.get_run_events($1) as e", run_id)
    ]
    assert [orjson.loads(t) for t in texts] == notified  # keys, values and seqs all equal
    store = await Store.open(db_url, max_size=1)
    try:
        replay = await store.get_run_replay(run_id)
        by_json, _ = await store.get_run_events_json(run_id)
        many = await store.get_runs_events_json([(run_id, 0, None)])
    finally:
        await store.close()
    assert replay is not None
    expected = list(enumerate(texts, start=1))
    assert replay.events == by_json == many[str(run_id)] == expected


async def test_events_reported_in_a_batch_read_back_whole(conn: Any) -> None:
    await define(conn, DIAMOND)
    run_id = await start(conn, "diamond")
    for _ in range(3):
        tasks = await claim(conn)
        applied = await conn.fetchval(
            "select pgflow.report_steps('w1', $1, $2, $3, $4::text[]::jsonb[], $5)",
            [t["run_id"] for t in tasks], [t["step_slug"] for t in tasks],
            [t["attempt"] for t in tasks], ["7"] * len(tasks), [None] * len(tasks),
        )
        assert all(applied)
    # report_steps writes its events itself (not through _event): compact rows too
    assert all(not set(payload) & COLUMNS_IN_PAYLOAD for _, payload in await stored(conn, run_id))
    got = await events(conn, run_id)
    assert all(set(e) == EVENT_KEYS for e in got)
    assert [e["seq"] for e in got] == list(range(1, 11))
    assert got[-1] == {**got[-1], "event": "run:completed", "status": "completed",
                       "output": 7, "attempt": None, "step_slug": None}


async def apply(conn: asyncpg.Connection, migrations: list[Any]) -> None:
    for migration in migrations:
        async with conn.transaction():
            await conn.execute(migration.sql)


async def test_the_migration_rewrites_old_payloads_and_reads_them_back_unchanged(
    pg_server: Server,
) -> None:
    url = await fresh_database(pg_server, "compact_events")
    conn = await asyncpg.connect(url)
    try:
        await conn.set_type_codec(
            "jsonb", encoder=lambda v: orjson.dumps(v).decode(), decoder=orjson.loads,
            schema="pg_catalog",
        )
        migrations = load_migrations()
        await apply(conn, [m for m in migrations if m.version < COMPACT])
        run_id = await retried_then_failed(conn)  # written by the functions before 0003
        old = await stored(conn, run_id)
        assert all(set(payload) == EVENT_KEYS for _, payload in old)
        before = await conn.fetch("select e::text from pgflow.get_run_events($1) as e", run_id)

        await apply(conn, [m for m in migrations if m.version == COMPACT])

        rows = await stored(conn, run_id)
        assert all(not set(payload) & COLUMNS_IN_PAYLOAD for _, payload in rows)
        assert [payload for _, payload in rows if payload] == [
            {"output": {"n": 1}}, {"output": None}, {"error": "first"}, {"error": "second"},
            {"error": "second"},
        ]
        after = await conn.fetch("select e::text from pgflow.get_run_events($1) as e", run_id)
        assert [r[0] for r in after] == [r[0] for r in before]
        attempts = await conn.fetch(
            "select attempt from pgflow.run_events where run_id = $1 order by seq", run_id
        )
        assert [r[0] for r in attempts] == [None, 1, 1, 1, 1, 1, 1, 2, 2, 2]
    finally:
        await conn.close()


async def test_deleting_runs_deletes_their_events_and_no_others(conn: Any) -> None:
    # run_events has no foreign key (a check per event row); the statement trigger
    # runs_delete_events does what its cascade did, for a delete by hand as for prune_runs
    await define(conn, DIAMOND)
    runs = [await start(conn, "diamond") for _ in range(3)]
    for task in await claim(conn):
        await complete(conn, task)
    await conn.execute("delete from pgflow.runs where run_id = any($1::uuid[])", runs[:2])
    left = await conn.fetch("select distinct run_id from pgflow.run_events")
    assert [r["run_id"] for r in left] == [runs[2]]
    assert [e["seq"] for e in await events(conn, runs[2])] == [1, 2, 3, 4, 5]
    assert await events(conn, runs[0]) == []
