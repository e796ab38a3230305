"""Frame validation and the wire formats of docs/reference/websocket.md."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.errors import BadJsonError, BadRequestError
from gateway.wire import (
    MAX_JSON_DEPTH,
    canonical_run_id,
    error_body,
    error_frame,
    event_frame,
    event_frame_from_json,
    parse_client_frame,
    pong_frame,
    subscribed_frame,
)
from pgflow.db.notifications import NotificationError, parse_notification

RUN = "0b7e8a3c-5a43-4b8e-9f5c-2f1e6f3b9a10"


def test_a_subscribe_frame_is_parsed_with_a_canonical_run_id() -> None:
    message = parse_client_frame(orjson.dumps(
        {"type": "subscribe", "run_id": RUN.upper(), "since": 4}).decode())
    assert message == {"type": "subscribe", "run_id": RUN, "since": 4}


@pytest.mark.parametrize("since", [None, "absent"])
def test_since_defaults_to_zero(since: Any) -> None:
    frame: dict[str, Any] = {"type": "subscribe", "run_id": RUN}
    if since != "absent":
        frame["since"] = since
    assert parse_client_frame(orjson.dumps(frame).decode()) == {
        "type": "subscribe", "run_id": RUN, "since": 0}


def test_unsubscribe_and_ping_frames() -> None:
    assert parse_client_frame(f'{{"type": "unsubscribe", "run_id": "{RUN}"}}') == {
        "type": "unsubscribe", "run_id": RUN}
    assert parse_client_frame('{"type": "ping", "id": [1, "x"]}') == {
        "type": "ping", "id": [1, "x"]}
    assert parse_client_frame('{"type": "ping"}') == {"type": "ping", "id": None}


def test_unknown_fields_are_ignored() -> None:
    frame = f'{{"type": "subscribe", "run_id": "{RUN}", "since": 1, "extra": true}}'
    assert parse_client_frame(frame)["type"] == "subscribe"


@pytest.mark.parametrize("text", ["", "{", "nope", '{"type": "subscribe",}', "NaN"])
def test_a_frame_that_is_not_json_is_bad_json(text: str) -> None:
    with pytest.raises(BadJsonError):
        parse_client_frame(text)


@pytest.mark.parametrize(("frame", "run_id"), [
    ([], None),
    ("subscribe", None),
    ({"type": "dance"}, None),
    ({"run_id": RUN}, None),
    ({"type": "subscribe"}, None),
    ({"type": "subscribe", "run_id": 5}, None),
    ({"type": "subscribe", "run_id": "not-a-uuid"}, "not-a-uuid"),
    ({"type": "subscribe", "run_id": "x" * 500}, None),
    ({"type": "subscribe", "run_id": RUN, "since": -1}, RUN),
    ({"type": "subscribe", "run_id": RUN, "since": 1.5}, RUN),
    ({"type": "subscribe", "run_id": RUN, "since": "3"}, RUN),
    ({"type": "subscribe", "run_id": RUN, "since": True}, RUN),
    ({"type": "subscribe", "run_id": RUN, "since": 2**63}, RUN),
    ({"type": "unsubscribe", "run_id": None}, None),
])
def test_a_frame_of_the_wrong_shape_is_a_bad_request(frame: Any, run_id: str | None) -> None:
    with pytest.raises(BadRequestError) as caught:
        parse_client_frame(orjson.dumps(frame).decode())
    assert caught.value.run_id == run_id


def test_canonical_run_id() -> None:
    assert canonical_run_id("{" + RUN.upper() + "}") == RUN
    assert canonical_run_id(RUN.replace("-", "")) == RUN
    for bad in ("", "123", None, 7):
        with pytest.raises(BadRequestError):
            canonical_run_id(bad)


def test_inline_and_ref_notifications() -> None:
    event = {"run_id": RUN, "seq": 1, "event": "run:started", "step_slug": None,
             "status": "started", "output": None, "error": None, "attempt": None, "at": "t"}
    parsed = parse_notification(orjson.dumps({"v": 1, "events": [event]}))
    assert "events" in parsed
    refs = parse_notification(f'{{"v": 1, "refs": [{{"run_id": "{RUN}", "from": 5, "to": 9}}]}}')
    assert refs == {"v": 1, "refs": [{"run_id": RUN, "from": 5, "to": 9}]}


@pytest.mark.parametrize("payload", [
    "not json", "[]", '{"v": 2, "events": []}', '{"v": 1}', '{"v": 1, "events": [1]}',
    '{"v": 1, "events": [{"seq": 1}]}', '{"v": 1, "refs": [{"run_id": "x", "from": 1}]}',
])
def test_a_notification_off_the_contract_is_refused(payload: str) -> None:
    with pytest.raises(NotificationError):
        parse_notification(payload)


def test_an_event_frame_puts_the_type_first_and_keeps_every_field() -> None:
    event = {"run_id": RUN, "seq": 2, "event": "step:completed", "step_slug": "a",
             "status": "completed", "output": {"x": [1, 2]}, "error": None, "attempt": 1,
             "at": "2026-01-01T00:00:00.000000Z"}
    frame = event_frame(event)
    assert frame.startswith('{"type":"event",')
    assert orjson.loads(frame) == {"type": "event", **event}
    from_log = event_frame_from_json(orjson.dumps(event).decode())
    assert orjson.loads(from_log) == {"type": "event", **event}
    # jsonb's own spelling, with spaces
    assert orjson.loads(event_frame_from_json('{"seq": 1, "run_id": "r"}')) == {
        "type": "event", "seq": 1, "run_id": "r"}


def test_gateway_frames() -> None:
    assert orjson.loads(subscribed_frame(RUN, 3)) == {"type": "subscribed", "run_id": RUN,
                                                      "seq": 3}
    assert orjson.loads(pong_frame({"n": 1})) == {"type": "pong", "id": {"n": 1}}
    assert orjson.loads(error_frame("not_found", "no", RUN)) == {
        "type": "error", "code": "not_found", "message": "no", "run_id": RUN}
    assert "run_id" not in orjson.loads(error_frame("bad_json", "no"))
    assert orjson.loads(error_body("too_large", "big")) == {
        "error": {"code": "too_large", "message": "big"}}


def nested(depth: int) -> str:
    """Arrays and objects nested ``depth`` levels."""
    pairs, odd = divmod(depth, 2)
    return '{"a": [' * pairs + "[]" * odd + ("null" if not odd else "") + "]}" * pairs


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH - 1, MAX_JSON_DEPTH])
def test_a_frame_nested_up_to_the_limit_is_read(depth: int) -> None:
    frame = '{"type": "ping", "id": ' + nested(depth - 1) + "}"
    assert parse_client_frame(frame)["type"] == "ping"


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 1000, 10_000])
def test_a_frame_nested_past_the_limit_is_a_bad_request(depth: int) -> None:
    frame = '{"type": "ping", "id": ' + nested(depth - 1) + "}"
    with pytest.raises(BadRequestError, match=f"deeper than {MAX_JSON_DEPTH} levels"):
        parse_client_frame(frame)
