"""The wire contract in types: NOTIFY payloads, client frames, gateway frames (docs/protocol.md).

Pure functions only: parsing and validating what arrives (a notification, a client's text frame)
and building what leaves. Every gateway frame is built here as JSON text, once; the fan-out hands
that same string to every subscriber.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal, TypeAlias, TypedDict, cast

import orjson

from gateway.errors import BadJsonError, BadRequestError

NOTIFY_CHANNEL = "pgflow_events"
NOTIFY_VERSION = 1
MAX_SEQ = 2**63 - 1  # seq is a bigint
_MAX_RUN_ID_LENGTH = 64
# Arrays and objects a client's JSON (an HTTP body, a socket frame) may nest, its own outer
# object included. Deeper values are refused: orjson serialises at most 254 levels and parses at
# most 1024, and nothing PGFlow stores needs more than a few.
MAX_JSON_DEPTH = 64

EventName = Literal[
    "run:started", "run:completed", "run:failed",
    "step:started", "step:completed", "step:failed", "step:retrying",
]


class Event(TypedDict):
    """One entry of a run's event log, as the log, NOTIFY and the socket carry it."""

    run_id: str
    seq: int
    event: EventName
    step_slug: str | None
    status: str
    output: Any
    error: str | None
    attempt: int | None
    at: str


# -- NOTIFY payloads (channel pgflow_events, version 1) -----------------------------------------


class EventsNotification(TypedDict):
    v: Literal[1]
    events: list[Event]


EventRef = TypedDict("EventRef", {"run_id": str, "from": int, "to": int})


class RefsNotification(TypedDict):
    v: Literal[1]
    refs: list[EventRef]


Notification: TypeAlias = EventsNotification | RefsNotification


class NotificationError(ValueError):
    """A pgflow_events payload that does not follow version 1 of the contract."""


def parse_notification(payload: str | bytes) -> Notification:
    """Validates a pgflow_events payload just enough to route it.

    Raises:
        NotificationError: not JSON, another version, or neither ``events`` nor ``refs``. The
            listener then re-reads every followed run from the log, since it cannot know what
            the payload carried.
    """
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise NotificationError(f"notification is not JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("v") != NOTIFY_VERSION:
        raise NotificationError("notification is not version 1")
    events = data.get("events")
    if isinstance(events, list):
        for event in events:
            if (not isinstance(event, dict) or not isinstance(event.get("run_id"), str)
                    or not _is_seq(event.get("seq"))):
                raise NotificationError("notification event without run_id and seq")
        return cast(EventsNotification, data)
    refs = data.get("refs")
    if isinstance(refs, list):
        for ref in refs:
            if (not isinstance(ref, dict) or not isinstance(ref.get("run_id"), str)
                    or not _is_seq(ref.get("from")) or not _is_seq(ref.get("to"))):
                raise NotificationError("notification ref without run_id, from and to")
        return cast(RefsNotification, data)
    raise NotificationError("notification has neither events nor refs")


def _is_seq(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SEQ


# -- client → gateway ------------------------------------------------------------------------


class Subscribe(TypedDict):
    type: Literal["subscribe"]
    run_id: str  # canonical: lowercase, hyphenated
    since: int


class Unsubscribe(TypedDict):
    type: Literal["unsubscribe"]
    run_id: str


class Ping(TypedDict):
    type: Literal["ping"]
    id: Any


ClientMessage: TypeAlias = Subscribe | Unsubscribe | Ping


def check_depth(value: Any, what: str, limit: int = MAX_JSON_DEPTH) -> None:
    """Refuses JSON nested deeper than ``limit`` arrays/objects (without recursion).

    Raises:
        BadRequestError: too deep.
    """
    level: list[Any] = [value]
    depth = 0
    while True:
        deeper: list[Any] = []
        for item in level:
            if isinstance(item, dict):
                deeper.extend(child for child in item.values() if isinstance(child, dict | list))
            elif isinstance(item, list):
                deeper.extend(child for child in item if isinstance(child, dict | list))
        if not deeper:
            return
        depth += 1
        if depth >= limit:
            raise BadRequestError(f"{what} nests arrays and objects deeper than {limit} levels")
        level = deeper


def loads_client_json(data: str | bytes, what: str) -> Any:
    """A client's JSON, parsed and checked against ``MAX_JSON_DEPTH``.

    Raises:
        BadJsonError: not JSON.
        BadRequestError: nested too deep.
    """
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc):  # orjson's own limit (1024): too deep, not malformed
            raise BadRequestError(f"{what} nests arrays and objects deeper than "
                                  f"{MAX_JSON_DEPTH} levels") from None
        raise BadJsonError(f"{what} is not JSON: {exc}") from None
    # Nesting needs an opening bracket per level: counted at C speed, most bodies and frames
    # have too few to need the walk.
    brackets = (data.count("[") + data.count("{") if isinstance(data, str)
                else data.count(b"[") + data.count(b"{"))
    if brackets >= MAX_JSON_DEPTH:
        check_depth(value, what)
    return value


def canonical_run_id(value: object) -> str:
    """The run id in Postgres' spelling (lowercase, hyphenated).

    Raises:
        BadRequestError: not a string holding a UUID.
    """
    if not isinstance(value, str) or len(value) > _MAX_RUN_ID_LENGTH:
        raise BadRequestError("run_id must be a UUID string")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise BadRequestError(f"run_id {value!r} is not a UUID", run_id=value) from None


def parse_client_frame(text: str) -> ClientMessage:
    """Validates one text frame from a client.

    Raises:
        BadJsonError: not JSON.
        BadRequestError: nested deeper than ``MAX_JSON_DEPTH``, not an object, an unknown
            ``type``, or fields of the wrong type; ``run_id`` is set when the frame named one,
            so the client can match the error.
    """
    data = loads_client_json(text, "the frame")
    if not isinstance(data, dict):
        raise BadRequestError("a frame must be a JSON object with a type")
    kind = data.get("type")
    if kind == "ping":
        return Ping(type="ping", id=data.get("id"))
    if kind not in ("subscribe", "unsubscribe"):
        raise BadRequestError(
            f"unknown message type {kind!r}: expected subscribe, unsubscribe or ping"
        )
    raw_run_id = data.get("run_id")
    run_id = canonical_run_id(raw_run_id)
    if kind == "unsubscribe":
        return Unsubscribe(type="unsubscribe", run_id=run_id)
    since = data.get("since", 0)
    if since is None:
        since = 0
    if not _is_seq(since):
        raise BadRequestError(
            f"since must be an integer from 0 to {MAX_SEQ}, not {since!r}", run_id=raw_run_id
        )
    return Subscribe(type="subscribe", run_id=run_id, since=since)


# -- gateway → client ------------------------------------------------------------------------


class Subscribed(TypedDict):
    type: Literal["subscribed"]
    run_id: str
    seq: int


class Unsubscribed(TypedDict):
    type: Literal["unsubscribed"]
    run_id: str


class Pong(TypedDict):
    type: Literal["pong"]
    id: Any


class ErrorMessage(TypedDict, total=False):
    type: Literal["error"]
    code: str
    message: str
    run_id: str


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def event_frame(event: Event | dict[str, Any]) -> str:
    """``{"type": "event", ...event}`` from a decoded event (a NOTIFY payload's)."""
    return _dumps({"type": "event", **event})


def event_frame_from_json(event_json: str) -> str:
    """``{"type": "event", ...event}`` from an event's JSON text (the log's), without decoding."""
    # The log's events are non-empty JSON objects: splice the type in after the brace.
    return '{"type":"event",' + event_json[1:]


def subscribed_frame(run_id: str, seq: int) -> str:
    return _dumps(Subscribed(type="subscribed", run_id=run_id, seq=seq))


def unsubscribed_frame(run_id: str) -> str:
    return _dumps(Unsubscribed(type="unsubscribed", run_id=run_id))


def pong_frame(ping_id: Any) -> str:
    return _dumps(Pong(type="pong", id=ping_id))


def error_frame(code: str, message: str, run_id: str | None = None) -> str:
    error = ErrorMessage(type="error", code=code, message=message)
    if run_id is not None:
        error["run_id"] = run_id
    return _dumps(error)


def error_body(code: str, message: str) -> bytes:
    """An HTTP error body: ``{"error": {"code", "message"}}``."""
    return orjson.dumps({"error": {"code": code, "message": message}})
