"""Streaming from inside a step (``ctx.emit``): through the real worker, the log and a socket."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import pytest

from pgflow import Flow, StepContext, StreamBufferFullError, StreamError
from pgflow.db.store import Store
from pgflow.worker._streams import MAX_CHUNK_BYTES
from tests.integration.gateway_harness import (
    Follower,
    log_of,
    running_gateway,
    strip,
    wait_until,
)
from tests.integration.worker_helpers import running, wait_for_run

WORDS = 200

writer = Flow("writer", max_attempts=1)


@writer.step()
async def write_async(input: Any, ctx: StepContext) -> str:
    for i in range(WORDS):
        ctx.emit(f"w{i} ")
        if i % 50 == 0:
            await asyncio.sleep(0.01)  # several flushes, not one
    return "done"


@writer.step(depends_on=[write_async])
def write_sync(input: Any, ctx: StepContext) -> int:
    assert threading.current_thread() is not threading.main_thread()
    for i in range(WORDS):
        ctx.emit({"n": i})
    return WORDS


def chunks_of(events: list[dict[str, Any]], step: str) -> list[Any]:
    return [c for e in events if e["event"] == "step:stream" and e["step_slug"] == step
            for c in e["chunks"]]


async def test_chunks_reach_a_socket_in_order_before_their_step_completes(
    db_url: str, store: Store
) -> None:
    async with running_gateway(db_url, flows=[writer], with_worker=True) as gw:
        run_id = await gw.start_run("writer")
        follower = await Follower.open(gw.ws_url)
        await follower.subscribe(run_id)
        events = strip(await follower.wait_done(run_id))
        await follower.close()
    assert chunks_of(events, "write_async") == [f"w{i} " for i in range(WORDS)]
    assert chunks_of(events, "write_sync") == [{"n": i} for i in range(WORDS)]
    for step in ("write_async", "write_sync"):
        kinds = [e["event"] for e in events if e.get("step_slug") == step]
        assert kinds[0] == "step:started"
        assert kinds[-1] == "step:completed"
        assert set(kinds[1:-1]) == {"step:stream"}
    # batched: many chunks per event, and the socket got exactly the log
    streamed = [e for e in events if e["event"] == "step:stream"]
    assert len(streamed) < 2 * WORDS / 10
    assert events == await log_of(store, run_id)


too_big = Flow("too_big", max_attempts=1)


@too_big.step()
async def emits_badly(input: Any, ctx: StepContext) -> dict[str, str]:
    errors = {}
    for name, value in [("not_json", {1, 2}), ("nul", "a\u0000b"),
                        ("huge", "x" * (MAX_CHUNK_BYTES + 1))]:
        try:
            ctx.emit(value)
        except StreamError as exc:
            errors[name] = type(exc).__name__
    ctx.emit("fine")
    return errors


async def test_a_chunk_that_cannot_be_stored_fails_the_emit_not_the_step(
    db_url: str, store: Store
) -> None:
    async with running(db_url, [too_big]):
        run_id = await store.run_flow("too_big", None)
        run = await wait_for_run(store, run_id)
    assert run["output"] == {"not_json": "StreamError", "nul": "StreamError",
                             "huge": "StreamError"}
    log = await store.get_run_events(run_id)
    assert chunks_of(log, "emits_badly") == ["fine"]


flood = Flow("flood", max_attempts=1)
FLOOD_CHUNK = "y" * 60_000  # 17 of them pass the 1 MiB bound


@flood.step()
async def floods(input: Any, ctx: StepContext) -> dict[str, int]:
    refused = 0
    for _ in range(40):
        try:
            ctx.emit(FLOOD_CHUNK)
        except StreamBufferFullError:
            refused += 1
            break
    for _ in range(40):  # emit_async waits for the flusher instead
        await ctx.emit_async(FLOOD_CHUNK)
    return {"refused": refused}


@flood.step(depends_on=[floods])
def floods_in_a_thread(input: Any, ctx: StepContext) -> int:
    for _ in range(40):  # a plain handler waits in emit for room
        ctx.emit(FLOOD_CHUNK)
    return 40


async def test_past_the_buffer_bound_emit_refuses_and_emit_async_and_threads_wait(
    db_url: str, store: Store
) -> None:
    async with running(db_url, [flood]):
        run_id = await store.run_flow("flood", None)
        run = await wait_for_run(store, run_id, timeout=60)
    assert run["status"] == "completed", run
    assert run["steps"][0]["output"] == {"refused": 1}
    log = await store.get_run_events(run_id)
    async_chunks = chunks_of(log, "floods")
    assert 17 <= len(async_chunks) <= 17 + 40
    assert async_chunks[-1] == FLOOD_CHUNK
    assert len(chunks_of(log, "floods_in_a_thread")) == 40


def test_a_context_made_outside_a_worker_says_so() -> None:
    import uuid

    ctx = StepContext(uuid.uuid4(), "f", "s", 1, 1, 60, "w")
    with pytest.raises(RuntimeError, match="not made by a worker"):
        ctx.emit("x")


slow_writer = Flow("slow_writer", max_attempts=1)
SLOW_CHUNKS = 120


@slow_writer.step()
async def write_slowly(input: Any, ctx: StepContext) -> int:
    for i in range(SLOW_CHUNKS):
        ctx.emit(i)
        await asyncio.sleep(0.005)
    return SLOW_CHUNKS


async def test_a_gateway_restart_mid_stream_loses_and_repeats_no_chunk(
    db_url: str, store: Store
) -> None:
    """A socket follows a streaming run on one gateway, which stops mid-stream; the client
    resumes on a new gateway with ``since`` = the last seq it saw: every chunk once, in order."""
    async with running(db_url, [slow_writer]):
        run_id = str(await store.run_flow("slow_writer", None))
        seen: list[dict[str, Any]] = []
        async with running_gateway(db_url) as first:
            follower = await Follower.open(first.ws_url)
            await follower.subscribe(run_id)

            def some_chunks() -> bool:
                return len(chunks_of(strip(follower.events.get(run_id, [])), "write_slowly")) >= 10

            await wait_until(some_chunks)
            seen = strip(follower.events[run_id])
            await follower.close()
        async with running_gateway(db_url) as second:
            follower = await Follower.open(second.ws_url)
            await follower.subscribe(run_id, since=seen[-1]["seq"])
            rest = strip(await follower.wait_done(run_id))
            await follower.close()
    events = seen + rest
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert chunks_of(events, "write_slowly") == list(range(SLOW_CHUNKS))
    assert events == await log_of(store, run_id)
    assert chunks_of(seen, "write_slowly")
    assert chunks_of(rest, "write_slowly")


app_log = logging.getLogger("myapp.steps")
logs = Flow("logs", max_attempts=1, stream_logs=True)


@logs.step()
async def logs_async(input: Any) -> int:
    app_log.warning("async step at %d%%", 50)
    logging.getLogger("pgflow.internal").warning("the engine's own: not forwarded")
    return 1


@logs.step(depends_on=[logs_async])
def logs_in_a_thread(input: Any) -> int:
    app_log.error("plain step in its thread")
    return 2


quiet = Flow("quiet", max_attempts=1)


@quiet.step()
async def logs_quietly(input: Any) -> int:
    app_log.warning("not forwarded: the flow did not opt in")
    return 1


async def test_a_flow_that_opts_in_streams_its_handlers_logs_and_no_other_does(
    db_url: str, store: Store
) -> None:
    async with running(db_url, [logs, quiet]):
        logged = await store.run_flow("logs", None)
        silent = await store.run_flow("quiet", None)
        for run_id in (logged, silent):
            assert (await wait_for_run(store, run_id))["status"] == "completed"
    log = await store.get_run_events(logged)
    assert chunks_of(log, "logs_async") == [
        {"level": "WARNING", "logger": "myapp.steps", "message": "async step at 50%"}]
    assert chunks_of(log, "logs_in_a_thread") == [
        {"level": "ERROR", "logger": "myapp.steps", "message": "plain step in its thread"}]
    assert chunks_of(await store.get_run_events(silent), "logs_quietly") == []
