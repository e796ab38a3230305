"""JSON values as PostgreSQL's ``jsonb`` holds them: the one check of what Python code hands the
engine (a handler's output or streamed chunk, a Python caller's run input or submitted value).
orjson alone would write NaN and Infinity as null and let U+0000 reach the database.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Any

import orjson


class UnstorableJSONError(ValueError):
    """A value that is not JSON PostgreSQL can store."""


def encode_json(value: Any) -> bytes:
    """``value`` as JSON text for a ``jsonb``.

    Raises:
        UnstorableJSONError: not JSON (a set, an object, an int beyond 64 bits, a lone
            surrogate, nesting deeper than orjson's 254 levels), or NaN/Infinity (JSON has
            none; orjson would write null), or U+0000 in a string or key (``jsonb`` refuses it).
    """
    try:
        encoded = orjson.dumps(value)
    except TypeError as exc:  # orjson.JSONEncodeError
        raise UnstorableJSONError(f"{type(value).__name__}, which is not JSON: {exc}") from exc
    # NaN and Infinity come out as null, U+0000 as its escape: only then is the value walked.
    if b"null" in encoded or b"\\u0000" in encoded:
        problem = _unstorable(value)
        if problem is not None:
            raise UnstorableJSONError(problem)
    return encoded


def _unstorable(value: Any) -> str | None:
    """What in an orjson-serialisable ``value`` PostgreSQL's jsonb cannot store faithfully."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return "a string containing U+0000 (NUL), which PostgreSQL's jsonb cannot store"
        elif isinstance(item, float):
            if not math.isfinite(item):
                return f"{item!r}, which JSON has no number for"
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        elif isinstance(item, enum.Enum):
            stack.append(item.value)
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            stack.extend(getattr(item, f.name) for f in dataclasses.fields(item))
    return None
