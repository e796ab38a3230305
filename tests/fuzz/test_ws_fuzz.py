"""Hypothesis against ``/realtime`` of ONE real gateway: sequences of generated frames (JSON of
random shapes, protocol-like messages with wrong types, random text, binary frames, oversized
frames, rapid subscribe/unsubscribe of real runs), and upgrade requests with junk tokens and
Origins.

Oracle, docs/reference/websocket.md: every client frame is answered exactly once (``subscribed``,
``unsubscribed``, ``pong`` or an ``error`` with a documented code and a message), events only
for runs the socket follows, in seq order without repeats; an oversized frame gets
``too_large`` then close 1009; nothing else closes the socket. Afterwards the gateway still
serves and no socket or subscription leaked.

Examples per test: ``PGFLOW_FUZZ_EXAMPLES`` (default 200 here); the full run is
``PGFLOW_FUZZ_EXAMPLES=10000``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import jwt
import orjson
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from gateway.config import GatewayConfig
from tests.conftest import Server
from tests.fuzz import (
    SECRET,
    SOCKET_ERROR_CODES,
    ThreadedGateway,
    eventually,
    examples,
    fuzz_settings,
    good_token,
    threaded_gateway,
)
from tests.integration.gateway_harness import CHAIN, TERMINAL, Driver

MAX_FRAME = 2048
MAX_SUBSCRIPTIONS = 4
SQL = ["x'; drop table pgflow.runs; --", "' or 1=1 --", "\u0000", "00000000-0000-0000-0000-0000"
       "00000000'", "%00"]
REPLY_TYPES = {"subscribed", "unsubscribed", "pong", "error"}

FUZZ_SETTINGS = fuzz_settings(200)


@pytest.fixture(scope="module")
def gw(pg_server: Server, template_url: str) -> Iterator[ThreadedGateway]:
    config = GatewayConfig(jwt_secret=SECRET, max_frame_bytes=MAX_FRAME, admin_role="admin",
                           max_subscriptions=MAX_SUBSCRIPTIONS,
                           allowed_origins=("https://app.example",))
    with threaded_gateway(pg_server.url, "pgflow_fuzz_ws", config=config,
                          shapes=[CHAIN]) as running:
        yield running


@pytest.fixture(scope="module")
def http(gw: ThreadedGateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.url, trust_env=False, timeout=20.0) as client:
        yield client


def start_run(http: httpx.Client, headers: dict[str, str] | None = None) -> str:
    response = http.post("/rpc/run_flow", json={"flow_slug": "chain"}, headers=headers or {})
    assert response.status_code == 201, response.text
    run_id: str = response.json()["run_id"]
    return run_id


@pytest.fixture(scope="module")
def runs(gw: ThreadedGateway, http: httpx.Client) -> list[str]:
    """Real runs to subscribe to: finished, started (anonymous), owned by bob and by alice;
    more than --max-subscriptions of them."""
    finished = start_run(http)
    gw.call(Driver(gw.running.runtime.require_store()).finish([finished]))
    owned = [start_run(http, {"Authorization": f"Bearer {good_token(who)}"})
             for who in ("bob", "alice")]
    return [finished, *owned, *(start_run(http) for _ in range(MAX_SUBSCRIPTIONS))]


# -- strategies -------------------------------------------------------------------------------

ANY_TEXT = st.text(alphabet=st.characters(exclude_categories=()), max_size=30)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | ANY_TEXT,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(ANY_TEXT, children, max_size=4),
    max_leaves=12,
)
TYPES = st.sampled_from(["subscribe", "unsubscribe", "ping", "Subscribe", "event", "pong",
                         "subscribed", ""]) | ANY_TEXT | JSON_VALUES


@st.composite
def frames(draw: st.DrawFn, runs: list[str]) -> str | bytes:
    kind = draw(st.integers(0, 9))
    if kind <= 4:  # protocol-like, often right, often wrong
        message: dict[str, Any] = {}
        if draw(st.integers(0, 9)):
            message["type"] = draw(st.sampled_from(["subscribe", "unsubscribe", "ping"]) | TYPES)
        if draw(st.booleans()):
            message["run_id"] = draw(st.sampled_from(runs) | st.uuids().map(str)
                                     | st.sampled_from(SQL) | JSON_VALUES)
        if draw(st.booleans()):
            message["since"] = draw(st.integers(-5, 10) | st.integers() | JSON_VALUES)
        if draw(st.booleans()):
            message["id"] = draw(JSON_VALUES)
        message.update(draw(st.dictionaries(ANY_TEXT, JSON_VALUES, max_size=2)))
        # The stdlib json (not orjson) so that lone surrogates and huge ints go out as is.
        return json.dumps(message)
    if kind == 5:
        return json.dumps(draw(JSON_VALUES))
    if kind == 6:
        return draw(st.text(max_size=100))
    if kind == 7:
        return draw(st.binary(max_size=100))
    if kind == 8:  # rapid subscribe/unsubscribe of a real run
        run_id = draw(st.sampled_from(runs))
        kind_ = draw(st.sampled_from(["subscribe", "unsubscribe"]))
        return orjson.dumps({"type": kind_, "run_id": run_id,
                             "since": draw(st.integers(0, 6))}).decode()
    return draw(st.integers(1, 4).map(lambda d: "[" * d + "1" + "]" * d))


OVERSIZED = st.one_of(
    st.integers(MAX_FRAME + 1, MAX_FRAME + 50).map(lambda n: "x" * n),
    st.integers(MAX_FRAME + 1, MAX_FRAME + 50).map(lambda n: b"\x00" * n),
    st.integers(MAX_FRAME // 2 + 1, MAX_FRAME).map(lambda n: "é" * n),  # bytes, not chars
)

_marker = itertools.count()


def check_message(message: Any, seen: dict[str, int]) -> None:
    assert isinstance(message, dict), message
    kind = message.get("type")
    if kind == "event":
        run_id = message["run_id"]
        # Only runs the socket follows: after `subscribed`, and none after `unsubscribed`.
        assert run_id in seen, message
        assert message["seq"] > seen[run_id], message  # strictly increasing per run
        seen[run_id] = message["seq"]
        return
    assert kind in REPLY_TYPES, message
    if kind == "error":
        assert message["code"] in SOCKET_ERROR_CODES, message
        assert isinstance(message["message"], str), message
        assert message["message"], message
        assert set(message) <= {"type", "code", "message", "run_id"}, message
    if kind == "subscribed":
        # A new subscription restarts the stream at its since: forget the last seq.
        seen[message["run_id"]] = 0
    if kind == "unsubscribed":
        seen.pop(message["run_id"], None)


def check_reply(frame: str | bytes, reply: dict[str, Any]) -> None:
    """The socket answers frames in order: this reply answers this frame."""
    kind = reply["type"]
    if isinstance(frame, bytes):
        assert (kind, reply["code"]) == ("error", "bad_request"), (frame[:50], reply)
        return
    try:
        data = orjson.loads(frame)  # what the gateway reads (orjson: int64 or double numbers)
    except orjson.JSONDecodeError:
        assert (kind, reply["code"]) == ("error", "bad_json"), (frame[:80], reply)
        return
    if not isinstance(data, dict):
        assert kind == "error", (frame[:80], reply)
        assert reply["code"] in ("bad_request", "bad_json"), (frame[:80], reply)
        return
    if kind == "pong":
        assert data.get("type") == "ping", (frame[:80], reply)
        assert reply["id"] == data.get("id"), (frame[:80], reply)
    elif kind in ("subscribed", "unsubscribed"):
        assert data.get("type") == kind[:-1], (frame[:80], reply)
        assert reply["run_id"] == str(uuid.UUID(data["run_id"])), (frame[:80], reply)
    elif (data.get("type") in ("subscribe", "unsubscribe") and reply["code"] != "bad_json"
          and isinstance(data.get("run_id"), str) and len(data["run_id"]) <= 64):
        # An error names the run_id the frame named, UUID or not (docs/reference/websocket.md).
        assert reply.get("run_id") == data["run_id"], (frame[:80], reply)


def talk(ws: ClientConnection, sent: list[str | bytes], oversized: str | bytes | None) -> None:
    seen: dict[str, int] = {}
    replies: list[dict[str, Any]] = []
    for data in sent:
        ws.send(data)
    if oversized is not None:
        ws.send(oversized)
        try:
            while True:
                message = orjson.loads(ws.recv(timeout=20))
                check_message(message, seen)
                if message["type"] in REPLY_TYPES:
                    replies.append(message)
        except ConnectionClosed:
            pass
        assert replies, "no answer before the close"
        assert replies[-1]["code"] == "too_large", replies[-3:]
        assert len(replies) == len(sent) + 1, (len(replies), len(sent), replies)
        assert ws.protocol.close_code == 1009
    else:
        marker = f"end-{next(_marker)}"
        ws.send(orjson.dumps({"type": "ping", "id": marker}).decode())
        while True:
            message = orjson.loads(ws.recv(timeout=20))
            check_message(message, seen)
            if message["type"] in REPLY_TYPES:
                replies.append(message)
            if message == {"type": "pong", "id": marker}:
                break
        assert len(replies) == len(sent) + 1, (len(replies), len(sent))
    if oversized is not None:
        event("reply error too_large")
    for frame, reply in zip(sent, replies, strict=False):
        event(f"reply {reply['type']} {reply.get('code', '')}".strip())
        check_reply(frame, reply)


def size_of(frame: str | bytes) -> int:
    return len(frame.encode() if isinstance(frame, str) else frame)


@st.composite
def conversations(draw: st.DrawFn, runs: list[str]) -> tuple[list[str | bytes],
                                                             str | bytes | None]:
    # Frames within the limit (generated JSON can grow past it: those are OVERSIZED's job).
    sent = draw(st.lists(frames(runs).filter(lambda f: size_of(f) <= MAX_FRAME), min_size=1,
                         max_size=12))
    if draw(st.integers(0, 3)) == 0:  # a subscription flood: every run, in any order
        flood = [orjson.dumps({"type": "subscribe", "run_id": r}).decode()
                 for r in draw(st.permutations(runs))]
        sent = [*flood, *sent] if draw(st.booleans()) else [*sent, *flood]
    oversized = draw(st.none() | st.none() | st.none() | OVERSIZED)
    return sent, oversized


def open_ws(gw: ThreadedGateway, query: str = "", **kwargs: Any) -> ClientConnection:
    return connect(gw.ws_url + query, proxy=None, max_size=2**24, open_timeout=20, **kwargs)


# -- the tests --------------------------------------------------------------------------------


COUNTER = {"conversations": 0}


@FUZZ_SETTINGS
@given(data=st.data(), as_bob=st.booleans())
def test_fuzzed_frames_get_documented_answers(gw: ThreadedGateway, http: httpx.Client,
                                              runs: list[str], data: st.DataObject,
                                              as_bob: bool) -> None:
    sent, oversized = data.draw(conversations(runs), label="conversation")
    query = f"?token={good_token('bob')}" if as_bob else ""
    with open_ws(gw, query) as ws:
        talk(ws, sent, oversized)
    COUNTER["conversations"] += 1
    if COUNTER["conversations"] % 50 == 0:
        assert http.get("/healthz").status_code == 200


AUTH_JUNK = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=60),
    st.sampled_from(["a.b.c", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.", ".", "..",
                     jwt.encode({"sub": "x"}, "another-secret-that-is-long-enough-too",
                                "HS256")]),
)
ORIGIN_JUNK = st.sampled_from(["http://evil.example", "null", "https://app.example.evil",
                               "https://APP.example", "file://", "*"]) | st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40)


@settings(FUZZ_SETTINGS, max_examples=max(20, examples(200) // 4))
@given(token=st.none() | AUTH_JUNK, origin=st.none() | ORIGIN_JUNK, in_header=st.booleans())
def test_fuzzed_upgrades_are_accepted_or_refused_as_documented(
    gw: ThreadedGateway, token: str | None, origin: str | None, in_header: bool
) -> None:
    """Junk tokens (query or header) and Origins: a working socket, or one ``error``
    (unauthorized / forbidden) and close 1008 — never anything else."""
    query, headers = "", {}
    if token is not None:
        if in_header:
            headers["Authorization"] = f"Bearer {token}"
        else:
            query = "?token=" + quote(token, safe="")
    try:
        ws = open_ws(gw, query, origin=origin, additional_headers=headers)
    except InvalidStatus as exc:  # only capacity refusals answer the upgrade with HTTP
        raise AssertionError(f"upgrade refused: {exc.response.status_code}") from None
    with ws:
        with contextlib.suppress(ConnectionClosed):  # refused: the error is already buffered
            ws.send('{"type": "ping", "id": 1}')
        first = orjson.loads(ws.recv(timeout=20))
        if first["type"] == "pong":
            return
        assert first["type"] == "error", first
        assert first["code"] in ("unauthorized", "forbidden"), first
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=20)
        assert ws.protocol.close_code == 1008
        assert (ws.protocol.close_reason or "").startswith(first["code"] + ": ")


def metric(http: httpx.Client, name: str) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


def test_after_the_fuzzing_the_gateway_still_serves(gw: ThreadedGateway, http: httpx.Client,
                                                    runs: list[str]) -> None:
    """Runs last in the module: nothing leaked, and a normal run's events arrive."""
    def nothing_open() -> bool:
        return not (metric(http, "pgflow_sockets_open") or metric(http, "pgflow_subscriptions"))

    assert eventually(nothing_open, timeout=20), "sockets or subscriptions leaked"
    assert http.get("/healthz").json()["status"] == "ok"
    run_id = start_run(http)
    with open_ws(gw) as ws:
        ws.send(orjson.dumps({"type": "subscribe", "run_id": run_id}).decode())
        assert orjson.loads(ws.recv(timeout=20))["type"] == "subscribed"
        gw.call(Driver(gw.running.runtime.require_store()).finish([run_id]))
        events: list[dict[str, Any]] = []
        while not events or events[-1]["event"] not in TERMINAL:
            events.append(orjson.loads(ws.recv(timeout=20)))
    assert events[0]["event"] == "run:started"
    assert events[-1]["event"] == "run:completed"
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
