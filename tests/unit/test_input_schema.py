"""Input steps' schemas: what check_schema refuses, and what validate_input reports."""

from __future__ import annotations

import urllib.request
from typing import Any

import pytest

from pgflow import input_schema
from pgflow.input_schema import MAX_ERRORS, MAX_MESSAGE_CHARS, check_schema, validate_input

PERSON = {
    "type": "object",
    "required": ["name", "age"],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "age": {"type": "integer", "minimum": 0},
        "tags": {"type": "array", "items": {"type": "string"}},
        "a/b~c": {"$ref": "#/$defs/positive"},
    },
    "$defs": {"positive": {"type": "number", "exclusiveMinimum": 0}},
    "additionalProperties": False,
}


@pytest.mark.parametrize("value", [
    {"name": "Ada", "age": 36},
    {"name": "Ada", "age": 0, "tags": [], "a/b~c": 0.5},
])
def test_a_value_that_fits_has_no_errors(value: Any) -> None:
    assert validate_input(PERSON, value) == []


def test_each_error_has_a_json_pointer_and_a_message_sorted_by_path() -> None:
    errors = validate_input(PERSON, {"name": "", "age": -1, "tags": ["x", 2], "a/b~c": 0,
                                     "extra": True})
    assert [e["path"] for e in errors] == ["", "/a~1b~0c", "/age", "/name", "/tags/1"]
    assert all(set(e) == {"path", "message"} for e in errors)
    by_path = {e["path"]: e["message"] for e in errors}
    assert "extra" in by_path[""]
    assert "minimum" in by_path["/age"]
    assert "string" in by_path["/tags/1"]


def test_a_missing_property_is_reported_at_its_object() -> None:
    assert validate_input(PERSON, {"name": "Ada"}) == [
        {"path": "", "message": "'age' is a required property"}]
    nested = {"type": "object", "properties": {"who": {"required": ["name"]}}}
    assert [e["path"] for e in validate_input(nested, {"who": {"age": 1}})] == ["/who"]


@pytest.mark.parametrize("value", [None, 1, "x", [], {}])
def test_boolean_schemas(value: Any) -> None:
    assert validate_input(True, value) == []
    errors = validate_input(False, value)
    assert len(errors) == 1
    assert errors[0]["path"] == ""


def test_errors_and_messages_are_bounded() -> None:
    many = validate_input({"type": "array", "items": {"type": "string"}}, list(range(1000)))
    assert len(many) == MAX_ERRORS
    long = validate_input({"type": "string", "maxLength": 1}, "x" * 100_000)
    assert len(long) == 1
    assert len(long[0]["message"]) <= MAX_MESSAGE_CHARS


def test_format_is_an_annotation_only() -> None:
    assert validate_input({"type": "string", "format": "email"}, "not an email") == []


@pytest.mark.parametrize(("schema", "words"), [
    (3, "object or a boolean"),
    ([], "object or a boolean"),
    (None, "object or a boolean"),
    ({"type": "nope"}, "at /type"),
    ({"minimum": "a"}, "at /minimum"),
    ({"properties": {"x": {"type": 1}}}, "at /properties/x/type"),
    ({"$schema": "http://json-schema.org/draft-07/schema#"}, "2020-12"),
    ({"$ref": "#/$defs/missing"}, "does not resolve"),
    ({"$ref": "other.json"}, "does not resolve"),
    ({"properties": {"x": {"$ref": "https://example.com/schema.json"}}}, "does not resolve"),
    ({"$dynamicRef": "#/nowhere"}, "does not resolve"),
    ({"default": {1, 2}}, "not JSON"),
])
def test_a_bad_schema_is_refused_with_a_clear_error(schema: Any, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        check_schema(schema)
    with pytest.raises(ValueError, match=words):
        validate_input(schema, None)


@pytest.mark.parametrize("schema", [
    True, False, {}, PERSON,
    {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "string"},
    {"$id": "https://forms.example/root", "$defs": {"a": {"$id": "a.json", "type": "string"}},
     "$ref": "a.json"},
    {"$defs": {"x": {"$anchor": "here", "type": "integer"}}, "$ref": "#here"},
    {"$ref": "https://json-schema.org/draft/2020-12/schema"},  # a meta-schema: known offline
    {"const": {"$ref": "https://nowhere.example/"}},  # data, not a reference
    {"enum": [{"$ref": "x"}], "examples": [{"$ref": "y"}]},
])
def test_good_schemas_pass(schema: Any) -> None:
    check_schema(schema)


def test_nested_ids_resolve_against_their_base() -> None:
    schema = {"$id": "https://forms.example/root",
              "$defs": {"a": {"$id": "a.json", "type": "string"}}, "$ref": "a.json"}
    assert validate_input(schema, "x") == []
    assert [e["path"] for e in validate_input(schema, 1)] == [""]


def test_nothing_is_ever_fetched(monkeypatch: pytest.MonkeyPatch) -> None:
    fetched: list[Any] = []

    def urlopen(*args: Any, **kwargs: Any) -> Any:
        fetched.append(args)
        raise AssertionError("a schema made the process open a URL")

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    with pytest.raises(ValueError, match="does not resolve"):
        validate_input({"$ref": "http://127.0.0.1:9/schema.json"}, 1)
    assert fetched == []


def test_validators_are_cached_by_json_text_with_a_bound() -> None:
    input_schema._cache.clear()
    first = input_schema._validator({"type": "string", "minLength": 1})
    # the same schema, keys in another order: the same compiled validator
    assert input_schema._validator({"minLength": 1, "type": "string"}) is first
    for size in range(200):
        validate_input({"maxLength": size}, "x")
    assert len(input_schema._cache) <= input_schema._CACHE_SIZE
    assert input_schema._validator({"type": "string", "minLength": 1}) is not first
    assert validate_input({"maxLength": 0}, "x") != []
