"""The wire protocol between the gateway and its clients (docs/reference/), in one module.

- What clients send: socket messages (``parse_client_frame``) and JSON bodies, checked for depth.
- What the gateway sends: every server frame is built here as JSON text, once, and wrapped in a
  ``TextFrame`` whose encodings (the ASGI message, the plain and the deflated wire bytes) are
  made once too: the fan-out hands the same frame to every subscriber.
- The close codes of a socket, and the error code and HTTP status of each refusal
  (``error_status``), shared by the HTTP routes and the sockets.

Pure functions only, and no I/O.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal, TypeAlias, TypedDict

import orjson
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import Frame, Opcode

from gateway.errors import BadJsonError, BadRequestError, RequestError
from pgflow.db.notifications import MAX_SEQ, Event, is_seq
from pgflow.errors import (
    DatabaseUnavailableError,
    FlowShapeConflictError,
    IdempotencyConflictError,
    InputRejectedError,
    InvalidFlowError,
    UnknownFlowError,
    UnknownRunError,
    UnknownStepError,
    ValueRejectedError,
)

_MAX_RUN_ID_LENGTH = 64
# Arrays and objects a client's JSON (an HTTP body, a socket frame) may nest, its own outer
# object included. Deeper values are refused: orjson serialises at most 254 levels and parses at
# most 1024, and nothing PGFlow stores needs more than a few.
MAX_JSON_DEPTH = 64

# -- close codes (docs/reference/websocket.md) ---------------------------------------------------

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001  # the gateway shuts down
CLOSE_POLICY = 1008  # foreign Origin, bad token
CLOSE_TOO_BIG = 1009  # a frame over the limit
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN = 1013  # too slow (outbox overflowed), too many sockets
CLOSE_TOKEN_EXPIRED = 4001
MAX_CLOSE_REASON = 120  # bytes; a close frame's reason is limited to 123


def close_reason(reason: str) -> str:
    """A close frame's reason, cut to what the frame can carry."""
    return reason.encode()[:MAX_CLOSE_REASON].decode(errors="ignore")


# -- errors ----------------------------------------------------------------------------------


def error_status(exc: BaseException) -> tuple[str, int] | None:
    """The protocol's (code, HTTP status) for an exception a client caused; None: a bug."""
    if isinstance(exc, RequestError):
        return exc.code, exc.status
    if isinstance(exc, UnknownFlowError | UnknownRunError | UnknownStepError):
        return "not_found", 404
    if isinstance(exc, IdempotencyConflictError):  # the key was used with another input
        return "idempotency_conflict", 422
    if isinstance(exc, InputRejectedError):  # its errors go in the body too (error_body)
        return "invalid_input", 400
    if isinstance(exc, InvalidFlowError | FlowShapeConflictError):
        return "invalid_flow", 400
    if isinstance(exc, DatabaseUnavailableError):
        return "unavailable", 503
    if isinstance(exc, ValueRejectedError):  # a value PostgreSQL cannot store: the client's
        return "bad_request", 400
    return None


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
    if not is_seq(since):
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


def error_body(code: str, message: str, errors: list[dict[str, Any]] | None = None) -> bytes:
    """An HTTP error body: ``{"error": {"code", "message"}}``, and ``errors`` (a rejected
    input's reasons) when given."""
    error: dict[str, Any] = {"code": code, "message": message}
    if errors is not None:
        error["errors"] = errors
    return orjson.dumps({"error": error})


# -- the frame's bytes -------------------------------------------------------------------

# Stateless between messages (no context takeover), hence shareable. memLevel 5, 12-bit window:
# a small compressor, made once per compressed event.
_DEFLATE = PerMessageDeflate(
    remote_no_context_takeover=True,
    local_no_context_takeover=True,
    remote_max_window_bits=15,
    local_max_window_bits=12,
    compress_settings={"memLevel": 5},
)


class TextFrame:
    """One outgoing text message."""

    # __weakref__: relay.FrameCache shares large log frames while an outbox holds them.
    __slots__ = ("__weakref__", "_asgi", "_deflated", "_plain", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._asgi: dict[str, Any] | None = None
        self._plain: bytes | None = None
        self._deflated: bytes | None = None

    @property
    def asgi(self) -> dict[str, Any]:
        """The ``websocket.send`` message, for a socket served through ASGI."""
        message = self._asgi
        if message is None:
            message = self._asgi = {"type": "websocket.send", "text": self.text}
        return message

    def for_socket(self, deflate_from: int | None, deflate_upto: int) -> bytes:
        """The bytes for one socket: ``deflate_from`` is None unless the socket negotiated
        permessage-deflate, then the length from which its frames go compressed; frames whose
        payload is over ``deflate_upto`` bytes go plain (``--deflate-max-bytes``: Node's
        WebSocket refuses a compressed message that inflates past 4 MiB)."""
        size = len(self.text)
        if deflate_from is None or size < deflate_from:
            return self.wire(False)
        # Checked on characters first: a UTF-8 payload is at most 4 bytes per character.
        return self.wire(size * 4 <= deflate_upto or self.payload_bytes <= deflate_upto)

    @property
    def payload_bytes(self) -> int:
        """The UTF-8 length of the text (from the plain frame, encoded once and kept)."""
        plain = self.wire(False)
        # The header is 2 bytes, plus 2 or 8 for the length past 125 and 65535 bytes.
        length = plain[1] & 0x7F
        return len(plain) - (2 if length < 126 else 4 if length == 126 else 10)

    def wire(self, deflate: bool) -> bytes:
        """The frame's bytes, compressed (``deflate``: permessage-deflate, RSV1 set) or not.

        Each message chooses (RFC 7692): the caller sends small frames plain even on a deflate
        socket, and a frame that would not shrink goes out plain anyway.
        """
        if deflate:
            data = self._deflated
            if data is None:
                data = self._deflated = self._encode_deflated()
            return data
        data = self._plain
        if data is None:
            data = self._plain = Frame(Opcode.TEXT, self.text.encode()).serialize(mask=False)
        return data

    def _encode_deflated(self) -> bytes:
        payload = self.text.encode()
        compressed = Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[_DEFLATE])
        plain = self.wire(False)
        # Incompressible text (rare for JSON) goes out plain rather than larger.
        return compressed if len(compressed) < len(plain) else plain

    def __repr__(self) -> str:
        return f"<TextFrame {self.text[:40]!r}>"
