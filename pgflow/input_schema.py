"""Input steps' JSON Schemas (JSON Schema 2020-12), checked with the ``jsonschema`` library.

``check_schema`` refuses a schema when a flow is defined; ``validate_input`` checks a submitted
value against it (the gateway's ``POST /runs/{run_id}/steps/{step_slug}/input``, the Python
client). The engine's ``submit_input`` does not validate: its callers do, here.

- Only 2020-12: a ``$schema`` naming another draft is refused.
- ``format`` is an annotation, as 2020-12 says by default: not checked.
- A ``$ref`` must resolve inside the schema (or to a JSON Schema meta-schema): nothing is ever
  fetched, so a schema cannot make the gateway open a URL.

Compiled validators are cached by the schema's JSON text, a few at a time.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any
from urllib.parse import urljoin

import orjson
import referencing.exceptions
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError
from jsonschema.protocols import Validator
from jsonschema_specifications import (  # type: ignore[import-untyped]  # jsonschema's own
    REGISTRY as SPECIFICATIONS,
)
from referencing import Registry
from referencing.jsonschema import DRAFT202012

DRAFT = "https://json-schema.org/draft/2020-12/schema"
MAX_ERRORS = 20  # errors reported for one value: enough to fix a form, never a flood
MAX_MESSAGE_CHARS = 300  # jsonschema quotes the value in its messages: a large one is cut
_CACHE_SIZE = 64
# Keywords whose values are data, not subschemas: a "$ref" inside them is no reference.
_DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples"})
# The root's base URI when the schema has no $id of its own.
_ROOT_URI = "urn:pgflow:input-schema"


Schema = dict[str, Any] | bool

_cache: OrderedDict[str, Validator] = OrderedDict()
_cache_lock = threading.Lock()


def check_schema(schema: object) -> None:
    """Refuses what cannot serve as an input step's schema.

    Raises:
        ValueError: not an object or a boolean, not JSON, not a valid 2020-12 schema, a
            ``$schema`` of another draft, or a ``$ref`` that does not resolve inside it.
    """
    _validator(schema)


def validate_input(schema: Schema, value: Any) -> list[dict[str, str]]:
    """Why ``value`` fails ``schema``: ``[{"path", "message"}, ...]``, sorted by path, where
    ``path`` is a JSON Pointer into the value (``""``: the value itself); empty when it passes.

    At most ``MAX_ERRORS`` errors are listed, each message at most ``MAX_MESSAGE_CHARS``
    characters. A missing property is reported at the object that lacks it; a value that fits
    none of ``anyOf``'s or ``oneOf``'s alternatives, once, at that value.

    Raises:
        ValueError: the schema itself is bad (``check_schema``).
    """
    validator = _validator(schema)
    errors: list[dict[str, str]] = []
    try:
        found = sorted(validator.iter_errors(value), key=_error_order)
    except referencing.exceptions.Unresolvable as error:  # checked at compile time: defensive
        raise ValueError(f"the schema has a $ref that does not resolve: {error}") from None
    for found_error in found[:MAX_ERRORS]:
        errors.append({"path": _pointer(found_error.absolute_path),
                       "message": _cut(found_error.message)})
    return errors


# -- internals -------------------------------------------------------------------------------


def _validator(schema: object) -> Validator:
    if not isinstance(schema, dict | bool):
        raise ValueError(f"a schema must be a JSON object or a boolean, not "
                         f"{type(schema).__name__}")
    try:
        key = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError as error:
        raise ValueError(f"the schema is not JSON: {error}") from None
    with _cache_lock:
        cached = _cache.get(key)
        if cached is not None:
            _cache.move_to_end(key)
            return cached
    validator = _compile(schema)
    with _cache_lock:
        _cache[key] = validator
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return validator


def _compile(schema: Schema) -> Validator:
    if isinstance(schema, dict):
        declared = schema.get("$schema")
        if declared is not None and str(declared).rstrip("#") != DRAFT:
            raise ValueError(f"input schemas are JSON Schema 2020-12: $schema must be {DRAFT!r} "
                             f"or absent, not {declared!r}")
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as error:
        where = _pointer(error.absolute_path)
        raise ValueError(f"invalid JSON Schema{' at ' + where if where else ''}: "
                         f"{_cut(error.message)}") from None
    # An empty registry of our own: jsonschema's default one would fetch unknown URLs.
    validator: Validator = Draft202012Validator(schema, registry=Registry())
    _check_references(schema)
    return validator


def _check_references(schema: Schema) -> None:
    """Every ``$ref`` and ``$dynamicRef`` resolves within the schema or the meta-schemas."""
    if not isinstance(schema, dict):
        return
    root_id = schema.get("$id")
    root = urljoin(_ROOT_URI, root_id) if isinstance(root_id, str) else _ROOT_URI
    registry = SPECIFICATIONS.combine(
        Registry().with_resource(root, DRAFT202012.create_resource(schema))
    ).crawl()
    for base, ref in _references(schema, root):
        try:
            registry.resolver(base).lookup(ref)
        except referencing.exceptions.Unresolvable:
            raise ValueError(f"$ref {ref!r} does not resolve inside the schema (remote schemas "
                             "are never fetched)") from None


def _references(schema: dict[str, Any], root: str) -> Iterator[tuple[str, str]]:
    """(base URI, reference) of every ``$ref``/``$dynamicRef`` in the schema."""
    stack: list[tuple[Any, str]] = [(schema, root)]
    while stack:
        node, base = stack.pop()
        if isinstance(node, list):
            stack.extend((item, base) for item in node)
            continue
        if not isinstance(node, dict):
            continue
        node_id = node.get("$id")
        if isinstance(node_id, str) and node is not schema:
            base = urljoin(base, node_id)
        for keyword in ("$ref", "$dynamicRef"):
            ref = node.get(keyword)
            if isinstance(ref, str):
                yield base, ref
        for keyword, child in node.items():
            if keyword not in _DATA_KEYWORDS and isinstance(child, dict | list):
                stack.append((child, base))


def _error_order(error: ValidationError) -> tuple[list[tuple[int, int, str]], str]:
    """Document order of sorts: by path, array indices as numbers, then by message."""
    parts = [(0, part, "") if isinstance(part, int) else (1, 0, str(part))
             for part in error.absolute_path]
    return parts, error.message


def _pointer(path: Any) -> str:
    """A JSON Pointer (RFC 6901) from jsonschema's path of keys and indices."""
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in path)


def _cut(message: str) -> str:
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    return message[: MAX_MESSAGE_CHARS - 1] + "…"
