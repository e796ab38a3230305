"""Group commit of run_flow (pgflow/db/coalescer.py): concurrent requests share a transaction,
and still fail alone, and an acknowledged run survives a crash of the database."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest

from pgflow.db.store import Store
from pgflow.errors import (
    DatabaseUnavailableError,
    IdempotencyConflictError,
    UnknownFlowError,
    ValueRejectedError,
)
from tests.conftest import Server
from tests.integration.gateway_harness import CHAIN, TIMEOUT, running_gateway

CONCURRENT = 40


async def test_concurrent_requests_share_a_transaction_and_an_unknown_flow_fails_alone(
    db_url: str,
) -> None:
    async with running_gateway(db_url) as gw:
        store = gw.runtime.require_store()
        await store.define_flow(CHAIN)
        slugs = ["chain" if i % 7 else "no-such-flow" for i in range(CONCURRENT)]
        responses = await asyncio.wait_for(asyncio.gather(*(
            gw.http.post("/rpc/run_flow", json={"flow_slug": slug, "input": {"i": i}})
            for i, slug in enumerate(slugs)
        )), TIMEOUT)
        assert [r.status_code for r in responses] == [201 if s == "chain" else 404 for s in slugs]
        assert all("no-such-flow" in r.json()["error"]["message"]
                   for r in responses if r.status_code == 404)
        started = {r.json()["run_id"]: i for i, r in enumerate(responses) if r.status_code == 201}
        assert len(started) == slugs.count("chain")
        # each acknowledged run is there with its own input, and no other run is
        rows = await store.pool.fetch("select run_id::text, input from pgflow.runs")
        assert {row["run_id"]: row["input"]["i"] for row in rows} == started
        # ... and they were started together, several to a transaction
        assert store.run_starter.largest_batch > 1
        assert store.run_starter.batches < CONCURRENT


async def test_a_request_the_database_refuses_fails_alone_in_its_batch(store: Store) -> None:
    await store.define_flow(CHAIN)
    await store.run_flow("chain", {"first": True}, idempotency_key="taken")
    # The same key with another input: start_runs raises PF422, which fails the whole batch's
    # transaction, so each request of the batch is tried again alone.
    inputs: list[Any] = [{"i": i} for i in range(12)]
    calls = [store.run_flow("chain", value) if i != 5 else
             store.run_flow("chain", {"other": True}, idempotency_key="taken")
             for i, value in enumerate(inputs)]
    results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), TIMEOUT)
    assert isinstance(results[5], IdempotencyConflictError)
    good = [r for i, r in enumerate(results) if i != 5]
    assert all(isinstance(r, uuid.UUID) for r in good)
    assert store.run_starter.largest_batch > 1
    rows = await store.pool.fetch("select run_id, input from pgflow.runs where idempotency_key "
                                  "is null")
    assert {row["run_id"]: row["input"] for row in rows} == {
        r: inputs[i] for i, r in enumerate(results) if i != 5
    }
    with pytest.raises(UnknownFlowError, match="unknown flow 'nope'"):
        await store.run_flow("nope", {})


@pytest.mark.parametrize("value", [{"bad": "nul \u0000 here"}, [1.0, float("nan")],
                                   {"inf": float("inf")}, {1, 2}])
async def test_an_input_that_cannot_be_stored_is_refused_before_the_database(
        store: Store, value: Any) -> None:
    # JSON has no NaN (orjson would write null: the input changed, silently) and jsonb no U+0000
    await store.define_flow(CHAIN)
    with pytest.raises(ValueRejectedError, match="cannot be stored as JSON"):
        await store.run_flow("chain", value)
    assert await store.pool.fetchval("select count(*) from pgflow.runs") == 0


async def test_a_database_crash_mid_batch_loses_no_acknowledged_run(
    durable_server: Server,
) -> None:
    """Users keep starting runs while PostgreSQL crashes (immediate shutdown: no checkpoint,
    whatever is in flight lost, the way a killed server stops). After recovery, every run a
    caller got an id for is there, with its first events and its root step queued: an id is
    given only once its batch has committed, and the batches in flight fail every request in
    them with DatabaseUnavailableError. (What this cannot show is a power loss: the operating
    system keeps what PostgreSQL wrote, flushed or not; run_flows commits synchronously.)"""
    cluster = durable_server.cluster
    assert cluster is not None
    store = await Store.open(durable_server.url, max_size=5)
    await store.define_flow(CHAIN)
    acknowledged: list[uuid.UUID] = []
    refused: list[BaseException] = []
    stop = asyncio.Event()
    enough = asyncio.Event()  # 400 runs acknowledged: time to crash

    async def user(i: int) -> None:
        while not stop.is_set():
            try:
                acknowledged.append(await store.run_flow("chain", {"user": i}))
            except DatabaseUnavailableError as error:
                refused.append(error)
                return
            if len(acknowledged) >= 400:
                enough.set()

    users = [asyncio.create_task(user(i)) for i in range(CONCURRENT)]
    await asyncio.wait_for(enough.wait(), TIMEOUT)
    await asyncio.to_thread(cluster.kill)  # mid-batch: the users are still starting runs
    stop.set()
    await asyncio.wait_for(asyncio.gather(*users), TIMEOUT)
    store.terminate()
    assert refused, "no request was in flight when the server crashed"

    cluster.start()  # crash recovery replays the WAL (on a port of its own: uri() tells)
    connection = await asyncpg.connect(cluster.uri())
    try:
        found = await connection.fetch(
            "select r.run_id,"
            " (select count(*) from pgflow.run_events as e where e.run_id = r.run_id)"
            "   as events,"
            " (select s.status from pgflow.step_states as s"
            "  where s.run_id = r.run_id and s.step_slug = 'a') as root"
            " from pgflow.runs as r where r.run_id = any($1::uuid[])",
            acknowledged,
        )
    finally:
        await connection.close()
    assert len(found) == len(set(acknowledged)) == len(acknowledged)
    assert {(row["events"], row["root"]) for row in found} == {(2, "started")}


async def test_concurrent_first_reads_share_a_query_and_equal_ones_one_result(
    store: Store,
) -> None:
    await store.define_flow(CHAIN)
    run_ids = [await store.run_flow("chain", {"i": i}) for i in range(4)]
    unknown = uuid.uuid4()
    asked = [run_ids[0], run_ids[1], run_ids[0], unknown, run_ids[2], run_ids[3], run_ids[0]]
    replays = await asyncio.wait_for(asyncio.gather(
        *(store.get_run_replay(run_id, 0, 100) for run_id in asked)
    ), TIMEOUT)
    assert replays[3] is None
    for run_id, replay in zip(asked, replays, strict=True):
        if run_id == unknown:
            continue
        assert replay is not None
        assert replay.flow_slug == "chain"
        assert [seq for seq, _ in replay.events] == [1, 2]
        assert all(f'"run_id": "{run_id}"' in text for _, text in replay.events)
    # the same run asked three times at once: one read, one result shared
    assert replays[0] is replays[2] is replays[6]
    assert store.replay_reader.batches < len(asked)
