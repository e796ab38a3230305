"""The HTTP routes: run_flow, flows, runs and their steering (cancel, input, retry), HTTP
steps' callbacks (complete_step, fail_step), health, metrics, the JS client and the demo page.

Every handler answers errors as ``{"error": {"code", "message"}}`` with the status that
``wire.error_status`` gives; ``_api`` translates PGFlow's exceptions, and nothing a client sends
reaches a 500. The websocket endpoint is a transport's (``native_socket.py``,
``asgi_socket.py``).
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, HTTPConnection, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.auth import Authenticator, Principal, bearer_token
from gateway.errors import (
    BadJsonError,
    BadRequestError,
    ConflictError,
    ForbiddenError,
    TooLargeError,
    UnauthorizedError,
)
from gateway.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from gateway.metrics import Metrics
from gateway.openapi import openapi_document
from gateway.runs_query import encode_cursor, parse_runs_query
from gateway.wire import canonical_run_id, error_body, error_status, loads_client_json
from pgflow.db.store import Store
from pgflow.errors import (
    InputRejectedError,
    UnknownFlowError,
    UnknownRunError,
    UnknownStepError,
)
from pgflow.flows import SLUG, Flow
from pgflow.input_schema import validate_input
from pgflow.signing import TokenClaims, TokenError, read_token

logger = logging.getLogger(__name__)

# seconds a flow's newest shape may be cached: a new version may come (define_flow); a given
# version's shape never changes, and is cached for a day
FLOW_MAX_AGE = 5
FLOW_VERSION_MAX_AGE = 86400
JSON_TYPE = "application/json"
JS_TYPE = "application/javascript; charset=utf-8"
HTML_TYPE = "text/html; charset=utf-8"
# What /static/ serves (the demo page's files), by extension.
STATIC_TYPES = {
    ".js": JS_TYPE, ".mjs": JS_TYPE, ".css": "text/css; charset=utf-8", ".html": HTML_TYPE,
    ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon",
    ".json": JSON_TYPE, ".map": JSON_TYPE, ".woff2": "font/woff2", ".txt": "text/plain",
}
STATIC_DIR = Path(__file__).resolve().parent / "static"
REPO_CLIENT_JS = Path(__file__).resolve().parent.parent / "client_js" / "client.js"
# The JS client's modules, which client.js imports from client/ (an installed wheel carries
# them under static/).
CLIENT_MODULE_DIRS = (STATIC_DIR / "client", REPO_CLIENT_JS.parent / "client")
CLIENT_MODULE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
# Idempotency-Key: 1 to 255 visible ASCII characters (no spaces, no controls).
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")
MAX_CANCEL_REASON = 1000  # characters: the reason travels in run:cancelled to every subscriber
MAX_STEP_ERROR = 4000  # characters of an HTTP step's error sent to /rpc/fail_step
NO_HTTP_STEPS = "HTTP steps are not configured: --http-secret"

PLACEHOLDER_PAGE = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>PGFlow gateway</title></head>
<body><h1>PGFlow gateway</h1>
<p>The live demo page is not installed. The API (relative links: the gateway may be mounted
under a prefix): <a href="openapi.json">openapi.json</a>, <a href="flows">flows</a>,
<a href="runs">runs</a>, <a href="healthz">healthz</a>; the JS client:
<a href="client.js">client.js</a>; events: <code>ws realtime</code>.</p>
</body></html>
"""


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type=JSON_TYPE)


def error_response(code: str, message: str, status: int,
                   headers: dict[str, str] | None = None,
                   errors: list[dict[str, Any]] | None = None) -> Response:
    return Response(error_body(code, message, errors), status, headers, media_type=JSON_TYPE)


Handler = Callable[[Request], Awaitable[Response]]


def _api(handler: Handler) -> Handler:
    """Translates PGFlow's exceptions into the protocol's JSON errors."""

    @wraps(handler)
    async def wrapper(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as exc:
            described = error_status(exc)
            if described is None:
                raise
            code, status = described
            headers = {"Retry-After": "1"} if status == 503 else None
            if status >= 500:
                logger.warning("%s %s: %s", request.method, request.url.path, exc,
                               extra={"action": "http_unavailable"})
            errors = exc.errors if isinstance(exc, InputRejectedError) else None
            return error_response(code, str(exc), status, headers, errors)

    return wrapper


async def http_exception(request: HTTPConnection, exc: Exception) -> Response:
    """Starlette's own refusals (unknown path, wrong method) in the protocol's shape."""
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    code = codes.get(exc.status_code, "bad_request" if exc.status_code < 500 else "internal")
    return error_response(code, exc.detail, exc.status_code, dict(exc.headers or {}))


async def internal_error(request: HTTPConnection, exc: Exception) -> Response:
    return error_response("internal", "internal server error", 500)


# -- helpers --------------------------------------------------------------------------------


def principal_of(auth: Authenticator, connection: HTTPConnection) -> Principal:
    return auth.authenticate(bearer_token(connection.headers.get("authorization")))


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body, refusing more than ``limit`` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequestError("Content-Length must be a number of bytes")
        if int(declared) > limit:
            raise TooLargeError(f"the body is over the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise TooLargeError(f"the body is over the {limit}-byte limit")
            chunks.append(chunk)
    except ClientDisconnect:
        # The client left before sending the whole body: its fault, not a 500 (nobody will
        # read the answer, but the metrics and the log must not call it a bug).
        raise BadRequestError("the client closed the connection before the end of the body"
                              ) from None
    return b"".join(chunks)


async def read_json(request: Request, limit: int) -> Any:
    """The request's JSON body, refusing more than ``limit`` bytes (declared or streamed)."""
    body = await read_body(request, limit)
    if not body.strip():
        raise BadJsonError("the body is empty: send a JSON object")
    return loads_client_json(body, "the body")  # bad_json, or bad_request when nested too deep


def refuse_unknown_fields(body: dict[str, Any], fields: frozenset[str], expected: str) -> None:
    """Refuses a body with a field not among ``fields``, naming (a few of) them."""
    unknown = sorted(set(body) - fields)
    if unknown:
        raise BadRequestError(f"unknown field(s) {', '.join(u[:64] for u in unknown[:10])}: "
                              f"expected {expected}")


async def read_options(request: Request, limit: int, fields: frozenset[str]) -> dict[str, Any]:
    """An optional JSON object body (empty: ``{}``) with no fields but ``fields``."""
    body = await read_body(request, limit)
    if not body.strip():
        return {}
    value = loads_client_json(body, "the body")
    expected = "{" + ", ".join(f'"{f}"' for f in sorted(fields)) + "}"
    if not isinstance(value, dict):
        raise BadRequestError(f"the body must be a JSON object {expected}, or empty")
    refuse_unknown_fields(value, fields, expected)
    return value


def idempotency_key_of(request: Request) -> str | None:
    """The request's ``Idempotency-Key``, checked; None without one.

    Raises:
        BadRequestError: more than one, or not 1 to 255 visible ASCII characters.
    """
    values = request.headers.getlist("idempotency-key")
    if not values:
        return None
    if len(values) > 1:
        raise BadRequestError("send at most one Idempotency-Key header")
    key = values[0]
    if not IDEMPOTENCY_KEY.fullmatch(key):
        raise BadRequestError("Idempotency-Key must be 1 to 255 visible ASCII characters "
                              "(no spaces or control characters)")
    return key


def check_storable(value: Any, path: str = "input") -> None:
    """PostgreSQL's jsonb cannot hold U+0000; say so instead of failing in the database."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise BadRequestError(f"{where}: strings may not contain U+0000")
        elif isinstance(item, dict):
            for key, child in item.items():
                if "\x00" in key:
                    raise BadRequestError(f"{where}: keys may not contain U+0000")
                stack.append((child, f"{where}.{key}"))
        elif isinstance(item, list):
            stack.extend((child, f"{where}[{i}]") for i, child in enumerate(item))


def _etag(body: bytes) -> str:
    return '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'


def _matches(if_none_match: str | None, etag: str) -> bool:
    if if_none_match is None:
        return False
    tags = [t.strip() for t in if_none_match.split(",")]
    return "*" in tags or any(t.removeprefix("W/") == etag for t in tags)


def _cached(request: Request, body: bytes, media_type: str, cache_control: str,
            etag: str | None = None) -> Response:
    etag = etag or _etag(body)
    headers = {"ETag": etag, "Cache-Control": cache_control}
    if _matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    return Response(body, 200, headers, media_type=media_type)


def _version_of(request: Request) -> int | None:
    """``?version=N`` of ``GET /flows/{slug}``: a version number, or None for the newest."""
    raw = request.query_params.getlist("version")
    if not raw:
        return None
    if len(raw) > 1 or not raw[0].isdigit() or not 1 <= int(raw[0]) <= 2**31 - 1:
        raise BadRequestError("version must be one whole number from 1")
    return int(raw[0])


def _flow_slug(value: str) -> str:
    if not SLUG.match(value):
        raise UnknownFlowError(f"unknown flow {value!r}")
    return value


@dataclass(frozen=True)
class _StaticFile:
    body: bytes
    etag: str
    stamp: tuple[int, int]


class StaticFiles:
    """The JS client and the demo page, re-read when they change on disk."""

    def __init__(self) -> None:
        self._files: dict[Path, _StaticFile] = {}

    def get(self, candidates: list[Path]) -> _StaticFile | None:
        for path in candidates:
            try:
                stat = path.stat()
            except OSError:
                continue
            stamp = (stat.st_mtime_ns, stat.st_size)
            cached = self._files.get(path)
            if cached is None or cached.stamp != stamp:
                try:
                    body = path.read_bytes()
                except OSError:
                    continue
                cached = _StaticFile(body, _etag(body), stamp)
                self._files[path] = cached
            return cached
        return None


# -- routes ---------------------------------------------------------------------------------


def http_routes(
    *,
    auth: Authenticator,
    flows: Mapping[str, Flow],
    store: Callable[[], Store],
    metrics: Metrics,
    max_body_bytes: int,
    unhealthy: Callable[[], str | None],
    open_sockets: Callable[[], int],
    http_secret: str | None = None,
) -> list[BaseRoute]:
    """The gateway's HTTP routes.

    Args:
        store: the open store (raises ``DatabaseUnavailableError`` until it is).
        unhealthy: why the gateway is not serving (``/healthz`` answers 503), or None.
        open_sockets: how many websockets are open.
        http_secret: the secret HTTP steps' tokens are signed with (``--http-secret``); None:
            the callback routes answer 404.
    """
    static = StaticFiles()
    # (slug, version) -> body: a version's shape never changes
    flow_bodies: dict[tuple[str, int], bytes] = {}
    # (slug, version) -> step slug -> its shape
    flow_steps: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}

    async def steerable_run(request: Request,
                            principal: Principal) -> tuple[uuid.UUID, str, int]:
        """The path's run, its flow and version, once the principal may act on it: the rules of
        ``GET /runs/{run_id}``.

        Raises:
            BadRequestError: not a UUID. UnknownRunError: no such run.
            UnauthorizedError, ForbiddenError: as ``Authenticator.check_run``.
        """
        run_id = canonical_run_id(request.path_params["run_id"])
        # The run's access facts without its events (0 < seq <= 0: none) nor its snapshot,
        # which carries every step's output.
        facts = await store().get_run_replay(uuid.UUID(run_id), 0, 0)
        if facts is None:
            raise UnknownRunError(f"unknown run {run_id}")
        auth.check_run(principal, facts.flow_slug, facts.owner, run_id)
        return uuid.UUID(run_id), facts.flow_slug, facts.flow_version

    async def input_step(flow_slug: str, version: int, step_slug: str) -> dict[str, Any]:
        """The step ``step_slug`` of that version of the flow, if it is an input step.

        Raises:
            UnknownStepError: no such step in the flow.
            ConflictError: a step that is not an input step.
        """
        steps = flow_steps.get((flow_slug, version))
        if steps is None:
            shape = await store().get_flow(flow_slug, version)
            steps = {step["slug"]: step for step in (shape or {}).get("steps", [])}
            if shape is not None:  # (a run's flow is never deleted: None is defensive)
                if len(flow_steps) >= 4096:
                    flow_steps.clear()
                flow_steps[(flow_slug, version)] = steps
        step = steps.get(step_slug)
        if step is None:
            raise UnknownStepError(f"flow {flow_slug!r} has no step {step_slug[:128]!r}")
        if step.get("kind") != "input":
            raise ConflictError(f"step {step_slug!r} is not an input step: its handler "
                                "completes it")
        return step

    @_api
    async def run_flow(request: Request) -> Response:
        principal = principal_of(auth, request)
        body = await read_json(request, max_body_bytes)
        if not isinstance(body, dict):
            raise BadRequestError('the body must be a JSON object {"flow_slug", "input"}')
        unknown = sorted(set(body) - {"flow_slug", "input"})
        if unknown:
            raise BadRequestError(f"unknown field(s) {', '.join(unknown)}: "
                                  'expected {"flow_slug", "input"}')
        slug = body.get("flow_slug")
        if not isinstance(slug, str):
            raise BadRequestError("flow_slug must be a string")
        slug = _flow_slug(slug)
        auth.check_flow(principal, slug)
        flow_input = body.get("input")
        check_storable(flow_input)
        # With a key used before for this flow and owner: the run it started, 200 instead of
        # 201 (a client's retry after a lost answer); with another input, IdempotencyConflict.
        started = await store().start_run(slug, flow_input, owner=principal.subject,
                                          idempotency_key=idempotency_key_of(request))
        run_id = started.run_id
        return json_response(
            {"run_id": str(run_id), "flow_slug": slug, "version": started.version,
             "status": "started"},
            201 if started.created else 200,
            {"Location": f"{request.scope.get('root_path', '')}/runs/{run_id}"},
        )

    @_api
    async def get_flow(request: Request) -> Response:
        principal = principal_of(auth, request)
        slug = _flow_slug(request.path_params["slug"])
        auth.check_flow(principal, slug)
        version = _version_of(request)
        body = flow_bodies.get((slug, version)) if version is not None else None
        if body is None:
            shape = await store().get_flow(slug, version)
            if shape is None:
                raise UnknownFlowError(f"unknown flow {slug!r}" + (
                    f" version {version}" if version is not None else ""))
            flow = flows.get(slug)
            body = orjson.dumps({
                **shape,
                "public": auth.is_public(slug),
                "description": flow.description if flow is not None else "",
                "example_input": flow.example_input if flow is not None else None,
            })
            if len(flow_bodies) >= 4096:
                flow_bodies.clear()
            flow_bodies[(slug, int(shape.get("version", 1)))] = body
        scope = "public" if auth.is_public(slug) else "private"
        max_age = FLOW_MAX_AGE if version is None else FLOW_VERSION_MAX_AGE
        response = _cached(request, body, JSON_TYPE, f"{scope}, max-age={max_age}")
        if scope == "private":
            response.headers["Vary"] = "Authorization"
        return response

    @_api
    async def list_flows(request: Request) -> Response:
        principal = principal_of(auth, request)
        visible = [
            {"slug": f.slug, "description": f.description, "example_input": f.example_input,
             "public": auth.is_public(f.slug)}
            for f in flows.values()
            if auth.is_public(f.slug) or principal.authenticated
        ]
        return json_response({"flows": visible}, headers={"Cache-Control": "no-cache"})

    @_api
    async def get_run(request: Request) -> Response:
        principal = principal_of(auth, request)
        run_id = canonical_run_id(request.path_params["run_id"])
        run = await store().get_run(uuid.UUID(run_id))
        if run is None:
            raise UnknownRunError(f"unknown run {run_id}")
        auth.check_run(principal, run["flow_slug"], run.get("owner"), run_id)
        return json_response(run, headers={"Cache-Control": "no-store"})

    @_api
    async def list_runs(request: Request) -> Response:
        principal = principal_of(auth, request)
        query = parse_runs_query(request.query_params.multi_items())
        if query.flow_slug is not None:
            auth.check_flow(principal, query.flow_slug)
        allowed, owner = auth.owner_filter(principal)
        if not allowed:
            if principal.authenticated:  # a valid token, but without `sub`: owns no runs
                raise ForbiddenError("listing runs needs a token with a `sub`")
            raise UnauthorizedError("listing runs needs a token")
        # one more than the page: whether a next page exists, without asking again
        runs = await store().list_runs(
            max_runs=query.limit + 1, flow_slug=query.flow_slug, owner=owner,
            statuses=query.statuses, started_after=query.started_after,
            started_before=query.started_before, after=query.after,
        )
        page = runs[: query.limit]
        next_cursor = encode_cursor(page[-1]) if len(runs) > query.limit else None
        return json_response({"runs": page, "next_cursor": next_cursor},
                             headers={"Cache-Control": "no-store"})

    @_api
    async def cancel_run(request: Request) -> Response:
        principal = principal_of(auth, request)
        options = await read_options(request, max_body_bytes, frozenset({"reason"}))
        reason = options.get("reason")
        if reason is not None:
            if not isinstance(reason, str):
                raise BadRequestError("reason must be a string")
            if len(reason) > MAX_CANCEL_REASON:
                raise BadRequestError(f"reason is over {MAX_CANCEL_REASON} characters")
            check_storable(reason, "reason")
        run_id, _, _ = await steerable_run(request, principal)
        if not await store().cancel_run(run_id, reason):
            raise ConflictError(f"run {run_id} has already ended")
        return json_response({"run_id": str(run_id), "status": "cancelled"},
                             headers={"Cache-Control": "no-store"})

    @_api
    async def submit_input(request: Request) -> Response:
        principal = principal_of(auth, request)
        body = await read_json(request, max_body_bytes)
        if not isinstance(body, dict) or "value" not in body:
            raise BadRequestError('the body must be a JSON object {"value": ...}')
        refuse_unknown_fields(body, frozenset({"value"}), '{"value"}')
        value = body["value"]
        check_storable(value, "value")
        run_id, flow_slug, version = await steerable_run(request, principal)
        step_slug = request.path_params["step_slug"]
        step = await input_step(flow_slug, version, step_slug)
        try:
            errors = validate_input(step.get("schema", True), value)
        except ValueError as error:
            # a schema define_flow took (it checks only the type) but JSON Schema refuses: the
            # flow's fault, not the caller's; say what, without a stack trace per request
            logger.warning("flow %r, step %r: %s", flow_slug, step_slug, error,
                           extra={"action": "bad_input_schema"})
            return error_response("internal", f"step {step_slug!r} of flow {flow_slug!r} has "
                                  f"an unusable schema: {error}", 500)
        if errors:
            raise InputRejectedError(step_slug, errors)
        if not await store().submit_input(run_id, step_slug, value):
            raise ConflictError(f"step {step_slug!r} of run {run_id} is not waiting for input")
        return json_response({"run_id": str(run_id), "step_slug": step_slug,
                              "status": "completed"}, headers={"Cache-Control": "no-store"})

    @_api
    async def retry_run(request: Request) -> Response:
        principal = principal_of(auth, request)
        await read_options(request, max_body_bytes, frozenset())
        run_id, _, _ = await steerable_run(request, principal)
        if not await store().retry_run(run_id):
            raise ConflictError(f"run {run_id} is neither failed nor cancelled")
        return json_response({"run_id": str(run_id), "status": "started"},
                             headers={"Cache-Control": "no-store"})

    async def step_callback(request: Request, field: str) -> tuple[TokenClaims, Any] | Response:
        """The token's claims and the ``field`` of a callback's body ``{"token", field}``, or
        the 404 of a gateway without a secret.

        Raises:
            BadJsonError, BadRequestError: not a JSON object with exactly those fields.
            UnauthorizedError: a forged, malformed or expired token.
        """
        if http_secret is None:
            return error_response("not_found", NO_HTTP_STEPS, 404)
        body = await read_json(request, max_body_bytes)
        expected = f'{{"token", "{field}"}}'
        if not isinstance(body, dict) or "token" not in body or field not in body:
            raise BadRequestError(f"the body must be a JSON object {expected}")
        refuse_unknown_fields(body, frozenset({"token", field}), expected)
        token = body["token"]
        if not isinstance(token, str):
            raise BadRequestError("token must be a string")
        try:
            claims = read_token(http_secret, token)
        except TokenError as exc:
            raise UnauthorizedError(str(exc)) from None
        return claims, body[field]

    @_api
    async def complete_step(request: Request) -> Response:
        found = await step_callback(request, "output")
        if isinstance(found, Response):
            return found
        claims, output = found
        check_storable(output, "output")
        applied = await store().complete_step(claims.run_id, claims.step_slug, output,
                                              claims.worker_id, claims.attempt)
        return json_response({"applied": bool(applied)}, headers={"Cache-Control": "no-store"})

    @_api
    async def fail_step(request: Request) -> Response:
        found = await step_callback(request, "error")
        if isinstance(found, Response):
            return found
        claims, error = found
        if not isinstance(error, str):
            raise BadRequestError("error must be a string")
        if len(error) > MAX_STEP_ERROR:
            raise BadRequestError(f"error is over {MAX_STEP_ERROR} characters")
        check_storable(error, "error")
        applied = await store().fail_step(claims.run_id, claims.step_slug, error,
                                          claims.worker_id, claims.attempt)
        return json_response({"applied": bool(applied)}, headers={"Cache-Control": "no-store"})

    async def healthz(request: Request) -> Response:
        problem = unhealthy()
        if problem is not None:
            return error_response("unavailable", problem, 503, {"Cache-Control": "no-store"})
        return json_response(
            {"status": "ok", "listener": "connected", "sockets": open_sockets()},
            headers={"Cache-Control": "no-store"},
        )

    async def metrics_page(request: Request) -> Response:
        return Response(metrics.render(), 200, {"Cache-Control": "no-store"},
                        media_type=METRICS_CONTENT_TYPE)

    async def openapi(request: Request) -> Response:
        return json_response(openapi_document(), headers={"Cache-Control": "no-cache"})

    async def client_js(request: Request) -> Response:
        found = static.get([STATIC_DIR / "client.js", REPO_CLIENT_JS])
        if found is None:
            return error_response("not_found", "the JS client is not installed", 404)
        return _cached(request, found.body, JS_TYPE, "no-cache", found.etag)

    async def client_module(request: Request) -> Response:
        name = request.path_params["name"]
        found = None
        if CLIENT_MODULE_NAME.fullmatch(name):  # a plain name: no path can be built from it
            found = static.get([folder / f"{name}.js" for folder in CLIENT_MODULE_DIRS])
        if found is None:
            return error_response("not_found", f"no JS client module {name!r}", 404)
        return _cached(request, found.body, JS_TYPE, "no-cache", found.etag)

    async def static_file(request: Request) -> Response:
        relative = request.path_params["path"]
        if "\x00" in relative:  # no file has one; the OS calls would raise ValueError
            return error_response("not_found", f"no static file {relative!r}", 404)
        path = (STATIC_DIR / relative).resolve()
        media_type = STATIC_TYPES.get(path.suffix.lower())
        found = None
        if media_type is not None and path.is_relative_to(STATIC_DIR):
            found = static.get([path])
        if found is None or media_type is None:
            return error_response("not_found", f"no static file {relative!r}", 404)
        return _cached(request, found.body, media_type, "no-cache", found.etag)

    async def index(request: Request) -> Response:
        found = static.get([STATIC_DIR / "index.html"])
        if found is None:
            return Response(PLACEHOLDER_PAGE, 200, {"Cache-Control": "no-cache"},
                            media_type=HTML_TYPE)
        return _cached(request, found.body, HTML_TYPE, "no-cache", found.etag)

    return [
        Route("/", index, methods=["GET"]),
        Route("/rpc/run_flow", run_flow, methods=["POST"]),
        Route("/flows", list_flows, methods=["GET"]),
        Route("/flows/{slug}", get_flow, methods=["GET"]),
        Route("/runs", list_runs, methods=["GET"]),
        Route("/runs/{run_id}", get_run, methods=["GET"]),
        Route("/runs/{run_id}/cancel", cancel_run, methods=["POST"]),
        Route("/runs/{run_id}/steps/{step_slug}/input", submit_input, methods=["POST"]),
        Route("/runs/{run_id}/retry", retry_run, methods=["POST"]),
        Route("/rpc/complete_step", complete_step, methods=["POST"]),
        Route("/rpc/fail_step", fail_step, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics_page, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/client.js", client_js, methods=["GET"]),
        Route("/client/{name}.js", client_module, methods=["GET"]),
        Route("/static/{path:path}", static_file, methods=["GET"]),
    ]

