"""``GET /runs``' query string: its parameters checked, and the opaque paging cursor.

Pure: no I/O. The handler in ``http.py`` passes the query's (name, value) pairs and gets a
``RunsQuery`` or a ``BadRequestError`` naming the parameter; ``store.list_runs`` does the rest.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.errors import BadRequestError
from pgflow.flows import SLUG

DEFAULT_RUNS_LIMIT = 20
MAX_RUNS_LIMIT = 1000
RUN_STATUSES = ("started", "completed", "failed", "cancelled")
PARAMETERS = ("limit", "flow_slug", "status", "started_after", "started_before", "cursor")
_REPEATABLE = frozenset({"status"})
_CURSOR_VERSION = "1"
_MAX_CURSOR_CHARS = 200  # a real cursor is about 90


@dataclass(frozen=True, slots=True)
class RunsQuery:
    limit: int
    flow_slug: str | None = None
    statuses: tuple[str, ...] | None = None
    started_after: datetime | None = None
    started_before: datetime | None = None
    after: tuple[datetime, uuid.UUID] | None = None  # the last run of the previous page


def parse_runs_query(items: Iterable[tuple[str, str]]) -> RunsQuery:
    """The query of ``GET /runs`` from its (name, value) pairs; an empty value is no value.

    Raises:
        BadRequestError: an unknown parameter, one given twice, or a value out of its range.
    """
    values: dict[str, list[str]] = {}
    for name, value in items:
        if name not in PARAMETERS:
            raise BadRequestError(
                f"unknown parameter {name[:64]!r}: GET /runs takes {', '.join(PARAMETERS)}")
        if name in values and name not in _REPEATABLE:
            raise BadRequestError(f"{name} is given more than once")
        if value != "":
            values.setdefault(name, []).append(value)

    def one(name: str) -> str | None:
        found = values.get(name)
        return found[0] if found else None

    cursor = one("cursor")
    return RunsQuery(
        limit=_limit(one("limit")),
        flow_slug=_flow_slug(one("flow_slug")),
        statuses=_statuses(values.get("status", [])),
        started_after=_time("started_after", one("started_after")),
        started_before=_time("started_before", one("started_before")),
        after=decode_cursor(cursor) if cursor is not None else None,
    )


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_RUNS_LIMIT
    if (not raw.isascii() or not raw.isdigit() or len(raw) > 6
            or not 1 <= int(raw) <= MAX_RUNS_LIMIT):
        raise BadRequestError(f"limit must be an integer from 1 to {MAX_RUNS_LIMIT}, "
                              f"not {raw[:32]!r}")
    return int(raw)


def _flow_slug(raw: str | None) -> str | None:
    if raw is not None and not SLUG.match(raw):
        raise BadRequestError(f"flow_slug {raw[:140]!r} is not a flow slug")
    return raw


def _statuses(raw: list[str]) -> tuple[str, ...] | None:
    if not raw:
        return None
    found: list[str] = []
    for value in raw:
        for status in value.split(","):
            if status not in RUN_STATUSES:
                raise BadRequestError(f"status {status[:32]!r} is not a run status: "
                                      f"use {', '.join(RUN_STATUSES)} (one or several)")
            if status not in found:
                found.append(status)
    return tuple(found)


def _time(name: str, raw: str | None) -> datetime | None:
    if raw is None:
        return None
    hint = ""
    if " " in raw:
        hint = " (a '+' in a URL reads as a space: send it as %2B)"
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise BadRequestError(f"{name} must be an ISO 8601 time such as "
                              f"2026-01-31T12:00:00Z, not {raw[:64]!r}{hint}") from None
    if moment.tzinfo is None:
        raise BadRequestError(f"{name} must say its time zone (Z or +HH:MM), not {raw[:64]!r}")
    return moment


def encode_cursor(run: Mapping[str, Any]) -> str:
    """The cursor that continues after ``run`` (a row of ``list_runs``)."""
    started_at = datetime.fromisoformat(run["started_at"])
    text = f"{_CURSOR_VERSION}|{started_at.isoformat()}|{run['run_id']}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The position (started_at, run_id) a cursor from ``encode_cursor`` stands for.

    Raises:
        BadRequestError: anything ``encode_cursor`` did not make.
    """
    refused = BadRequestError("cursor is not one this gateway gave: pass a next_cursor as is")
    if len(cursor) > _MAX_CURSOR_CHARS:
        raise refused
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        version, started_at, run_id = text.split("|")
        moment = datetime.fromisoformat(started_at)
        position = (moment, uuid.UUID(run_id))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise refused from None
    if version != _CURSOR_VERSION or moment.tzinfo is None:
        raise refused
    return position
