"""What PostgreSQL tells its listeners: the ``pgflow_events`` NOTIFY payloads, version 1.

The gateway's relay and the Python client parse each payload just enough to route it: inline
events, or references to the event log (``refs``) when the events did not fit in a
notification (docs/reference/events.md).
"""

from __future__ import annotations

from typing import Any, Literal, TypeAlias, TypedDict, cast

import orjson

NOTIFY_CHANNEL = "pgflow_events"
NOTIFY_VERSION = 1
MAX_SEQ = 2**63 - 1  # seq is a bigint

EventName = Literal[
    "run:started", "run:completed", "run:failed", "run:cancelled", "run:retried",
    "step:started", "step:completed", "step:failed", "step:retrying", "step:stream",
    "step:waiting", "step:cancelled",
    "task:started", "task:completed", "task:retrying", "task:failed", "task:stream",
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
            relay then re-reads every followed run from the log, since it cannot know what
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
                    or not is_seq(event.get("seq"))):
                raise NotificationError("notification event without run_id and seq")
        return cast(EventsNotification, data)
    refs = data.get("refs")
    if isinstance(refs, list):
        for ref in refs:
            if (not isinstance(ref, dict) or not isinstance(ref.get("run_id"), str)
                    or not is_seq(ref.get("from")) or not is_seq(ref.get("to"))):
                raise NotificationError("notification ref without run_id, from and to")
        return cast(RefsNotification, data)
    raise NotificationError("notification has neither events nor refs")


def is_seq(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SEQ
