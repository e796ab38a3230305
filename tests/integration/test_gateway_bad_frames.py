"""The socket's bad-input table: each refusal is its documented error (or close code), and the
gateway keeps serving."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from gateway.config import GatewayConfig
from pgflow.db.store import Store
from tests.conftest import TEMPLATE_DB, Server
from tests.integration.gateway_harness import (
    CHAIN,
    RunningGateway,
    drop_database,
    fresh_database,
    open_socket,
    running_gateway,
)

RUN = str(uuid.uuid4())


@pytest.fixture(scope="module")
async def gw(pg_server: Server, template_url: str) -> AsyncIterator[RunningGateway]:
    name = f"pgflow_gw_frames_{os.getpid()}"
    url = await fresh_database(pg_server.url, TEMPLATE_DB, name)
    try:
        async with running_gateway(url, config=GatewayConfig(max_subscriptions=3)) as running:
            await running.runtime.require_store().define_flow(CHAIN)
            yield running
    finally:
        await drop_database(pg_server.url, name)


def frame(value: Any) -> str:
    return orjson.dumps(value).decode()


BAD_FRAMES: list[tuple[str, str | bytes, str, str | None]] = [
    # (name, frame, error code, run_id in the error)
    ("malformed JSON", '{"type": "subscribe", ', "bad_json", None),
    ("not an object", "[1, 2]", "bad_request", None),
    ("unknown type", frame({"type": "shout"}), "bad_request", None),
    ("no run_id", frame({"type": "subscribe"}), "bad_request", None),
    ("run_id not a string", frame({"type": "subscribe", "run_id": 42}), "bad_request", None),
    ("run_id not a UUID", frame({"type": "subscribe", "run_id": "run-1"}), "bad_request",
     "run-1"),
    ("since not an integer", frame({"type": "subscribe", "run_id": RUN, "since": "0"}),
     "bad_request", RUN),
    ("negative since", frame({"type": "subscribe", "run_id": RUN, "since": -1}), "bad_request",
     RUN),
    ("unknown run", frame({"type": "subscribe", "run_id": RUN}), "not_found", RUN),
    ("binary frame", frame({"type": "ping", "id": 1}).encode(), "bad_request", None),
]


@pytest.mark.parametrize(("data", "code", "run_id"), [c[1:] for c in BAD_FRAMES],
                         ids=[c[0] for c in BAD_FRAMES])
async def test_a_bad_frame_gets_an_error_and_the_socket_stays_open(
    gw: RunningGateway, data: str | bytes, code: str, run_id: str | None
) -> None:
    async with await open_socket(gw.ws_url) as ws:
        await ws.send(data)
        error = orjson.loads(await ws.recv())
        assert error["type"] == "error"
        assert error["code"] == code
        assert error.get("run_id") == run_id
        assert error["message"]
        await ws.send(frame({"type": "ping", "id": "alive"}))
        assert orjson.loads(await ws.recv()) == {"type": "pong", "id": "alive"}
    assert await gw.healthy()


@pytest.mark.parametrize("data", ["x" * 100_000, b"x" * 100_000, "é" * 40_000],
                         ids=["text", "binary", "multibyte text"])
async def test_an_oversized_frame_gets_too_large_and_close_1009(
    gw: RunningGateway, data: str | bytes
) -> None:
    async with await open_socket(gw.ws_url) as ws:
        await ws.send(data)
        error = orjson.loads(await ws.recv())
        assert error["code"] == "too_large"
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 1009
    assert await gw.healthy()


async def test_the_largest_since_is_valid(gw: RunningGateway) -> None:
    run_id = await gw.start_run("chain")
    async with await open_socket(gw.ws_url) as ws:
        await ws.send(frame({"type": "subscribe", "run_id": run_id, "since": 2**63 - 1}))
        assert orjson.loads(await ws.recv()) == {"type": "subscribed", "run_id": run_id,
                                                 "seq": 2}
        await ws.send(frame({"type": "ping", "id": 0}))
        assert orjson.loads(await ws.recv())["type"] == "pong"


async def test_too_many_subscriptions(gw: RunningGateway) -> None:
    runs = [await gw.start_run("chain") for _ in range(4)]
    async with await open_socket(gw.ws_url) as ws:
        for run_id in runs[:3]:
            await ws.send(frame({"type": "subscribe", "run_id": run_id}))
        received = [orjson.loads(await ws.recv()) for _ in range(3 * 3)]
        assert sum(m["type"] == "subscribed" for m in received) == 3
        await ws.send(frame({"type": "subscribe", "run_id": runs[3]}))
        error = orjson.loads(await ws.recv())
        assert (error["code"], error["run_id"]) == ("too_many_subscriptions", runs[3])
        # Subscribing again to a followed run is not a new subscription; leaving one frees it.
        await ws.send(frame({"type": "subscribe", "run_id": runs[0], "since": 2}))
        assert orjson.loads(await ws.recv())["type"] == "subscribed"
        await ws.send(frame({"type": "unsubscribe", "run_id": runs[0]}))
        assert orjson.loads(await ws.recv())["type"] == "unsubscribed"
        await ws.send(frame({"type": "subscribe", "run_id": runs[3]}))
        assert orjson.loads(await ws.recv())["type"] == "subscribed"
    assert await gw.healthy()


async def test_too_many_connections_get_429_on_the_upgrade(db_url: str, store: Store) -> None:
    async with running_gateway(db_url, config=GatewayConfig(max_sockets=2)) as gw:
        first, second = await open_socket(gw.ws_url), await open_socket(gw.ws_url)
        with pytest.raises(InvalidStatus) as refused:
            await open_socket(gw.ws_url)
        assert refused.value.response.status_code == 429
        assert orjson.loads(refused.value.response.body)["error"]["code"] == (
            "too_many_connections")
        await first.close()
        third = await open_socket(gw.ws_url)
        await third.send(frame({"type": "ping", "id": 3}))
        assert orjson.loads(await third.recv())["type"] == "pong"
        await second.close()
        await third.close()
        assert await gw.metric('pgflow_sockets_refused_total{reason="too_many_connections"}') == 1


async def test_a_database_away_during_subscribe_is_unavailable(db_url: str, store: Store) -> None:
    await store.define_flow(CHAIN)
    async with running_gateway(db_url) as gw:
        run_id = await gw.start_run("chain")
        async with await open_socket(gw.ws_url) as ws:
            await gw.runtime.require_store().pool.close()
            await ws.send(frame({"type": "subscribe", "run_id": run_id}))
            error = orjson.loads(await ws.recv())
            assert (error["code"], error["run_id"]) == ("unavailable", run_id)


def nested(depth: int) -> str:
    """JSON arrays nested ``depth`` levels."""
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [64, 65, 1000, 10_000])
async def test_socket_frames_nested_past_64_levels_are_a_bad_request(
    gw: RunningGateway, depth: int
) -> None:
    async with await open_socket(gw.ws_url) as ws:
        await ws.send('{"type": "ping", "id": ' + nested(depth - 1) + "}")  # the frame: depth
        answer = orjson.loads(await ws.recv())
        if depth <= 64:
            assert answer["type"] == "pong"
        else:
            assert (answer["type"], answer["code"]) == ("error", "bad_request")
            assert "deeper than 64 levels" in answer["message"]
        await ws.send(frame({"type": "ping", "id": "alive"}))
        assert orjson.loads(await ws.recv()) == {"type": "pong", "id": "alive"}


@pytest.mark.parametrize("depth", [64, 65, 300, 1000, 10_000])
async def test_run_flow_bodies_nested_past_64_levels_are_a_bad_request(
    gw: RunningGateway, depth: int
) -> None:
    body = '{"flow_slug": "chain", "input": ' + nested(depth - 1) + "}"  # the body: depth
    response = await gw.http.post("/rpc/run_flow", content=body,
                                  headers={"Content-Type": "application/json"})
    if depth <= 64:
        assert response.status_code == 201, response.text
    else:
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["code"] == "bad_request"
        assert "deeper than 64 levels" in error["message"]
