"""The OpenAPI 3.1 document of the HTTP API (``GET /openapi.json``), written as data.

Kept by hand with docs/reference/http.md; tests/integration/test_gateway_http.py checks that every
route it names answers.
"""

from __future__ import annotations

from typing import Any

import pgflow

_ERROR_CODES = [
    "bad_json", "bad_request", "invalid_flow", "invalid_input", "unauthorized", "forbidden",
    "not_found", "method_not_allowed", "conflict", "too_large", "idempotency_conflict",
    "too_many_subscriptions", "too_many_connections", "unavailable", "internal",
]
_RUN_STATUSES = ["started", "completed", "failed", "cancelled"]
_STEP_KINDS = ["task", "input", "map", "http"]
_STEP_STATUSES = ["created", "started", "retrying", "waiting", "completed", "failed",
                  "cancelled"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    text = {
        400: "bad JSON or shape (bad_json, bad_request)",
        401: "token missing or invalid (unauthorized)",
        403: "the token may not do this (forbidden)",
        404: "unknown flow or run (not_found)",
        409: "the run or step is not in a state for this (conflict)",
        413: "body over the limit (too_large)",
        422: "the Idempotency-Key was used with another input (idempotency_conflict)",
        503: "the database cannot be reached (unavailable)",
    }
    return {str(s): {"$ref": f"#/components/responses/E{s}"} for s in statuses if s in text}


def openapi_document() -> dict[str, Any]:
    run_id = {"name": "run_id", "in": "path", "required": True,
              "schema": {"type": "string", "format": "uuid"}}
    slug = {"name": "slug", "in": "path", "required": True,
            "schema": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_-]{0,127}$"}}
    step_slug = {"name": "step_slug", "in": "path", "required": True,
                 "schema": {"type": "string"}}
    idempotency_key = {
        "name": "Idempotency-Key", "in": "header", "required": False,
        "description": "1 to 255 visible ASCII characters. The same key for the same flow and "
                       "owner answers the run it started (200) instead of starting another, "
                       "while that run exists; with another input it is idempotency_conflict",
        "schema": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,255}$"}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "PGFlow gateway",
            "version": pgflow.__version__,
            "description": "Start flows, read and steer runs. Live events: websocket /realtime "
                           "(docs/reference/websocket.md).",
        },
        "security": [{}, {"bearer": []}],
        "paths": {
            "/rpc/run_flow": {"post": {
                "summary": "Start a run of a flow",
                "parameters": [idempotency_key],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": _ref("RunFlowRequest")}}},
                "responses": {
                    "201": _json(_ref("RunStarted"), "the run started"),
                    "200": _json(_ref("RunStarted"), "the run this Idempotency-Key started "
                                                     "before (the same body)"),
                    **_errors(400, 401, 403, 404, 413, 422, 503),
                },
            }},
            "/flows": {"get": {
                "summary": "The flows this gateway loaded (those the caller may see)",
                "responses": {"200": _json({"type": "object", "required": ["flows"],
                                            "properties": {"flows": {"type": "array",
                                                                     "items": _ref("FlowInfo")}}},
                                           "the flows"), **_errors(401)},
            }},
            "/flows/{slug}": {"get": {
                "summary": "A flow's graph shape, its newest version or ?version=N "
                           "(cacheable: ETag, If-None-Match -> 304)",
                "parameters": [slug, {"name": "version", "in": "query", "schema": {
                    "type": "integer", "minimum": 1},
                    "description": "a version of the flow; default: the newest"}],
                "responses": {"200": _json(_ref("Flow"), "the shape"),
                              "304": {"description": "not modified"},
                              **_errors(401, 404, 503)},
            }},
            "/runs": {"get": {
                "summary": "Runs newest first, filtered, paged by cursor (with tokens: the "
                           "caller's own); an unknown parameter or a bad value is a 400",
                "parameters": [
                    {"name": "limit", "in": "query",
                     "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 20}},
                    {"name": "flow_slug", "in": "query", "schema": {"type": "string"}},
                    {"name": "status", "in": "query", "style": "form", "explode": True,
                     "description": "one or several run statuses (repeated or comma-separated)",
                     "schema": {"type": "array", "items": {
                         "enum": _RUN_STATUSES}}},
                    {"name": "started_after", "in": "query",
                     "description": "ISO 8601 with a time zone; exclusive",
                     "schema": {"type": "string", "format": "date-time"}},
                    {"name": "started_before", "in": "query",
                     "description": "ISO 8601 with a time zone; exclusive",
                     "schema": {"type": "string", "format": "date-time"}},
                    {"name": "cursor", "in": "query",
                     "description": "the next_cursor of the previous page, as is",
                     "schema": {"type": "string"}},
                ],
                "responses": {"200": _json({"type": "object", "required": ["runs", "next_cursor"],
                                            "properties": {
                                                "runs": {"type": "array",
                                                         "items": _ref("RunSummary")},
                                                "next_cursor": {"type": ["string", "null"]}}},
                                           "the runs"), **_errors(400, 401, 403, 503)},
            }},
            "/runs/{run_id}": {"get": {
                "summary": "A run now, with every step",
                "parameters": [run_id],
                "responses": {"200": _json(_ref("Run"), "the run"),
                              **_errors(400, 401, 403, 404, 503)},
            }},
            "/runs/{run_id}/cancel": {"post": {
                "summary": "Cancel a run: its unfinished steps and the run end as cancelled",
                "parameters": [run_id],
                "requestBody": {"required": False, "content": {"application/json": {
                    "schema": _ref("CancelRequest")}}},
                "responses": {"200": _json(_ref("RunCancelled"), "the run is cancelled"),
                              **_errors(400, 401, 403, 404, 409, 413, 503)},
            }},
            "/runs/{run_id}/steps/{step_slug}/input": {"post": {
                "summary": "Submit a waiting input step's value (checked against its schema)",
                "parameters": [run_id, step_slug],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": _ref("InputRequest")}}},
                "responses": {
                    "200": _json(_ref("InputAccepted"), "the step completed with the value"),
                    "400": _json(_ref("InputError"), "bad JSON or shape (bad_json, "
                                 "bad_request), or a value that fails the step's schema "
                                 "(invalid_input, with errors)"),
                    **_errors(401, 403, 404, 409, 413, 503)},
            }},
            "/runs/{run_id}/retry": {"post": {
                "summary": "Retry a failed or cancelled run: its failed and cancelled steps "
                           "start again",
                "parameters": [run_id],
                "responses": {"200": _json(_ref("RunRetried"), "the run started again"),
                              **_errors(400, 401, 403, 404, 409, 413, 503)},
            }},
            "/rpc/complete_step": {"post": {
                "summary": "An HTTP step's function completes its step (callback; the token "
                           "is the credential, docs/reference/http-steps.md)",
                "security": [{}],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": _ref("CompleteStepRequest")}}},
                "responses": {
                    "200": _json(_ref("StepCallbackApplied"), "applied: false for a late or "
                                 "repeated callback (the attempt no longer holds the step)"),
                    "401": {"$ref": "#/components/responses/E401"},
                    "404": _json(_ref("Error"), "HTTP steps are not configured: the gateway "
                                 "has no --http-secret (not_found)"),
                    **_errors(400, 413, 503)},
            }},
            "/rpc/fail_step": {"post": {
                "summary": "An HTTP step's function fails its attempt (callback; retried with "
                           "the step's backoff while attempts remain)",
                "security": [{}],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": _ref("FailStepRequest")}}},
                "responses": {
                    "200": _json(_ref("StepCallbackApplied"), "applied: false for a late or "
                                 "repeated callback"),
                    "401": {"$ref": "#/components/responses/E401"},
                    "404": _json(_ref("Error"), "HTTP steps are not configured (not_found)"),
                    **_errors(400, 413, 503)},
            }},
            "/healthz": {"get": {
                "summary": "Liveness: 200 while the LISTEN connection is up",
                "security": [{}],
                "responses": {"200": _json({"type": "object"}, "healthy"),
                              "503": {"$ref": "#/components/responses/E503"}},
            }},
            "/metrics": {"get": {
                "summary": "Prometheus text", "security": [{}],
                "responses": {"200": {"description": "metrics", "content": {
                    "text/plain": {"schema": {"type": "string"}}}}},
            }},
            "/client.js": {"get": {
                "summary": "The JS client, an ES module", "security": [{}],
                "responses": {"200": {"description": "the module", "content": {
                    "application/javascript": {"schema": {"type": "string"}}}},
                    "304": {"description": "not modified"}},
            }},
            "/openapi.json": {"get": {
                "summary": "This document", "security": [{}],
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")},
            }},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "bearerFormat": "JWT"}},
            "responses": {
                f"E{status}": _json(_ref("Error"), description)
                for status, description in [
                    (400, "bad request"), (401, "unauthorized"), (403, "forbidden"),
                    (404, "not found"), (409, "conflict"), (413, "too large"),
                    (422, "idempotency conflict"), (503, "unavailable"),
                ]
            },
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                    "type": "object", "required": ["code", "message"], "properties": {
                        "code": {"type": "string", "enum": _ERROR_CODES},
                        "message": {"type": "string"}}}}},
                "InputError": {"type": "object", "required": ["error"], "properties": {"error": {
                    "type": "object", "required": ["code", "message"], "properties": {
                        "code": {"type": "string", "enum": _ERROR_CODES},
                        "message": {"type": "string"},
                        "errors": {
                            "description": "with invalid_input: why the value fails",
                            "type": "array", "items": {
                                "type": "object", "required": ["path", "message"],
                                "properties": {
                                    "path": {"type": "string",
                                             "description": "a JSON Pointer into the value"},
                                    "message": {"type": "string"}}}}}}}},
                "CancelRequest": {"type": "object", "additionalProperties": False,
                                  "properties": {"reason": {"type": ["string", "null"],
                                                            "maxLength": 1000}}},
                "RunCancelled": {"type": "object", "required": ["run_id", "status"],
                                 "properties": {"run_id": {"type": "string", "format": "uuid"},
                                                "status": {"const": "cancelled"}}},
                "InputRequest": {"type": "object", "required": ["value"],
                                 "additionalProperties": False,
                                 "properties": {"value": {"description": "any JSON"}}},
                "InputAccepted": {"type": "object",
                                  "required": ["run_id", "step_slug", "status"],
                                  "properties": {"run_id": {"type": "string", "format": "uuid"},
                                                 "step_slug": {"type": "string"},
                                                 "status": {"const": "completed"}}},
                "CompleteStepRequest": {
                    "type": "object", "required": ["token", "output"],
                    "additionalProperties": False, "properties": {
                        "token": {"type": "string", "description": "the request's token"},
                        "output": {"description": "any JSON: the step's output"}}},
                "FailStepRequest": {
                    "type": "object", "required": ["token", "error"],
                    "additionalProperties": False, "properties": {
                        "token": {"type": "string", "description": "the request's token"},
                        "error": {"type": "string", "maxLength": 4000}}},
                "StepCallbackApplied": {"type": "object", "required": ["applied"],
                                        "properties": {"applied": {"type": "boolean"}}},
                "RunRetried": {"type": "object", "required": ["run_id", "status"],
                               "properties": {"run_id": {"type": "string", "format": "uuid"},
                                              "status": {"const": "started"}}},
                "RunFlowRequest": {"type": "object", "required": ["flow_slug"],
                                   "additionalProperties": False, "properties": {
                                       "flow_slug": {"type": "string"},
                                       "input": {"description": "any JSON (default null)"}}},
                "RunStarted": {"type": "object",
                               "required": ["run_id", "flow_slug", "version", "status"],
                               "properties": {"run_id": {"type": "string", "format": "uuid"},
                                              "flow_slug": {"type": "string"},
                                              "version": {"type": "integer", "minimum": 1},
                                              "status": {"const": "started"}}},
                "FlowInfo": {"type": "object", "properties": {
                    "slug": {"type": "string"}, "description": {"type": "string"},
                    "example_input": {}, "public": {"type": "boolean"}}},
                "Flow": {"type": "object", "required": ["slug", "steps", "output_step"],
                         "properties": {
                             "slug": {"type": "string"},
                             "steps": {"type": "array", "items": {"type": "object", "properties": {
                                 "slug": {"type": "string"},
                                 "depends_on": {"type": "array", "items": {"type": "string"}},
                                 "max_attempts": {"type": "integer"},
                                 "base_delay": {"type": "number"},
                                 "timeout": {"type": "integer"},
                                 "kind": {"enum": _STEP_KINDS},
                                 "schema": {"description": "an input step's JSON Schema "
                                                           "(2020-12)"},
                                 "over": {"type": "string",
                                          "description": "a map step's array: a dependency "
                                                         "or \"run\""},
                                 "url": {"type": "string",
                                         "description": "an HTTP step's function"}}}},
                             "version": {"type": "integer", "minimum": 1},
                             "output_step": {"type": ["string", "null"]},
                             "public": {"type": "boolean"},
                             "description": {"type": "string"},
                             "example_input": {}}},
                "RunSummary": {"type": "object", "properties": {
                    "run_id": {"type": "string", "format": "uuid"},
                    "flow_slug": {"type": "string"},
                    "status": {"enum": _RUN_STATUSES},
                    "seq": {"type": "integer"},
                    "started_at": {"type": "string"},
                    "completed_at": {"type": ["string", "null"]},
                    "failed_at": {"type": ["string", "null"]}}},
                "Run": {"type": "object", "properties": {
                    "run_id": {"type": "string", "format": "uuid"},
                    "flow_slug": {"type": "string"},
                    "status": {"enum": _RUN_STATUSES},
                    "input": {}, "output": {}, "error": {"type": ["string", "null"]},
                    "failed_step": {"type": ["string", "null"]},
                    "owner": {"type": ["string", "null"]},
                    "cancelled_at": {"type": ["string", "null"]},
                    "cancel_reason": {"type": ["string", "null"]},
                    "idempotency_key": {"type": ["string", "null"]},
                    "seq": {"type": "integer"},
                    "steps": {"type": "array", "items": {"type": "object", "properties": {
                        "step_slug": {"type": "string"},
                        "kind": {"enum": _STEP_KINDS},
                        "status": {"enum": _STEP_STATUSES},
                        "attempt": {"type": "integer"}, "output": {},
                        "error": {"type": ["string", "null"]},
                        "tasks": {"type": ["integer", "null"],
                                  "description": "a map step's element tasks"},
                        "tasks_completed": {"type": ["integer", "null"]}}}}}},
            },
        },
    }
