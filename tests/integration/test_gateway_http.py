"""The HTTP API on a real gateway: shapes, caching, CORS, and the bad-input table."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.config import GatewayConfig
from gateway.http import STATIC_DIR
from pgflow.db.store import Store
from pgflow.flows import Flow
from tests.conftest import TEMPLATE_DB, Server
from tests.integration.gateway_harness import (
    CHAIN,
    Driver,
    RunningGateway,
    drop_database,
    fresh_database,
    running_gateway,
)

PAGE_ORIGIN = "http://page.example:3000"

REPO = Path(__file__).resolve().parents[2]


def make_flows() -> list[Flow]:
    greet = Flow("greet", description="Says hello", example_input={"name": "Ada"})

    @greet.step()
    def hello(input: Any) -> Any:
        return {"greeting": f"hello {input['run']['name']}"}

    @greet.step(depends_on=[hello])
    def shout(input: Any) -> Any:
        return input["hello"]["greeting"].upper()

    return [greet]


@pytest.fixture(scope="module")
async def gw(pg_server: Server, template_url: str) -> AsyncIterator[RunningGateway]:
    """One gateway for the module: the bad-input table must leave it serving."""
    name = f"pgflow_gw_http_{os.getpid()}"
    url = await fresh_database(pg_server.url, TEMPLATE_DB, name)
    config = GatewayConfig(cors_origins=(PAGE_ORIGIN,))
    try:
        async with running_gateway(url, flows=make_flows(), config=config) as running:
            store = running.runtime.require_store()
            await store.define_flow(CHAIN)
            yield running
    finally:
        await drop_database(pg_server.url, name)


async def test_run_flow_starts_a_run_and_the_snapshot_follows_it(gw: RunningGateway) -> None:
    response = await gw.http.post("/rpc/run_flow",
                                  json={"flow_slug": "greet", "input": {"name": "Ada"}})
    assert response.status_code == 201
    body = response.json()
    assert body == {"run_id": body["run_id"], "flow_slug": "greet", "version": 1,
                    "status": "started"}
    assert response.headers["location"] == f"/runs/{body['run_id']}"
    snapshot = (await gw.http.get(f"/runs/{body['run_id']}")).json()
    assert snapshot["run_id"] == body["run_id"]
    assert snapshot["input"] == {"name": "Ada"}
    assert snapshot["status"] == "started"
    assert [s["step_slug"] for s in snapshot["steps"]] == ["hello", "shout"]
    await Driver(gw.runtime.require_store()).finish([body["run_id"]])
    done = (await gw.http.get(f"/runs/{body['run_id']}")).json()
    assert done["status"] == "completed"
    assert done["seq"] == 6


async def test_input_may_be_omitted_or_any_json(gw: RunningGateway) -> None:
    for payload in ({"flow_slug": "chain"}, {"flow_slug": "chain", "input": [1, "two", None]}):
        response = await gw.http.post("/rpc/run_flow", json=payload)
        assert response.status_code == 201, response.text


async def test_flows_lists_the_loaded_flows(gw: RunningGateway) -> None:
    response = await gw.http.get("/flows")
    assert response.json() == {"flows": [{"slug": "greet", "description": "Says hello",
                                          "example_input": {"name": "Ada"}, "public": True}]}


async def test_a_flow_shape_is_cacheable(gw: RunningGateway) -> None:
    response = await gw.http.get("/flows/greet")
    assert response.status_code == 200
    shape = response.json()
    assert shape["slug"] == "greet"
    assert shape["output_step"] == "shout"
    assert [s["slug"] for s in shape["steps"]] == ["hello", "shout"]
    assert shape["steps"][1]["depends_on"] == ["hello"]
    assert (shape["public"], shape["description"], shape["example_input"]) == (
        True, "Says hello", {"name": "Ada"})
    etag = response.headers["etag"]
    assert "max-age" in response.headers["cache-control"]
    again = await gw.http.get("/flows/greet", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.headers["etag"] == etag
    assert (await gw.http.get("/flows/greet", headers={"If-None-Match": '"x"'})).status_code == 200
    # A flow defined elsewhere (not loaded here) is served too.
    chain = (await gw.http.get("/flows/chain")).json()
    assert chain["description"] == ""
    assert chain["example_input"] is None


async def test_runs_lists_recent_runs(gw: RunningGateway) -> None:
    started = [await gw.start_run("chain") for _ in range(3)]
    listed = (await gw.http.get("/runs", params={"limit": 2, "flow_slug": "chain"})).json()
    assert [r["run_id"] for r in listed["runs"]] == started[::-1][:2]
    assert all(r["flow_slug"] == "chain" for r in listed["runs"])


async def test_the_js_client_is_served_as_a_revalidated_module(gw: RunningGateway) -> None:
    response = await gw.http.get("/client.js")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/javascript")
    assert "no-cache" in response.headers["cache-control"]
    assert "export" in response.text
    cached = await gw.http.get("/client.js", headers={"If-None-Match": response.headers["etag"]})
    assert cached.status_code == 304


async def test_the_js_client_modules_are_served_beside_it(gw: RunningGateway) -> None:
    """client.js imports its sibling modules from client/*.js (the repo's client_js/client/, or
    the wheel's static/client/): served like it, and nothing else under that path."""
    modules = sorted(p.stem for p in (REPO / "client_js" / "client").glob("*.js"))
    assert modules, "client_js/client/ holds the JS client's modules"
    for name in modules:
        response = await gw.http.get(f"/client/{name}.js")
        assert response.status_code == 200, name
        assert response.headers["content-type"].startswith("application/javascript")
        assert "no-cache" in response.headers["cache-control"]
        cached = await gw.http.get(f"/client/{name}.js",
                                   headers={"If-None-Match": response.headers["etag"]})
        assert cached.status_code == 304
    for path in ("/client/nope.js", "/client/..%2Fclient.js",
                 "/client/%2E%2E.js", "/client/.hidden.js", "/client/run.ts",
                 "/client/sub/run.js", "/client/..%2F..%2Fpyproject.toml.js"):
        assert (await gw.http.get(path)).status_code == 404, path


async def test_the_page_and_its_files(gw: RunningGateway) -> None:
    page = await gw.http.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    page_files = STATIC_DIR.exists() and (STATIC_DIR / "app.js").exists()
    for name, status in (("app.js", 200 if page_files else 404), ("../app.py", 404),
                         ("..%2Fapp.py", 404), ("nope.js", 404), ("../../pyproject.toml", 404)):
        assert (await gw.http.get(f"/static/{name}")).status_code == status, name


async def test_health_metrics_and_openapi(gw: RunningGateway) -> None:
    health = await gw.http.get("/healthz")
    assert health.status_code == 200
    assert health.json()["listener"] == "connected"
    metrics = (await gw.http.get("/metrics")).text
    for name in ("pgflow_sockets_open", "pgflow_subscriptions", "pgflow_events_in_total",
                 "pgflow_frames_out_total", "pgflow_listener_connected 1",
                 "pgflow_listener_reconnects_total", "pgflow_slow_sockets_dropped_total",
                 'pgflow_http_requests_total{status="200"}'):
        assert name in metrics
    document = (await gw.http.get("/openapi.json")).json()
    assert document["openapi"].startswith("3.1")
    for path, operations in document["paths"].items():
        if "get" in operations and "{" not in path:
            assert (await gw.http.get(path)).status_code == 200, path


async def test_cors_lets_the_configured_page_call_the_api(gw: RunningGateway) -> None:
    preflight = await gw.http.options("/rpc/run_flow", headers={
        "Origin": PAGE_ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == PAGE_ORIGIN
    simple = await gw.http.get("/flows/greet", headers={"Origin": PAGE_ORIGIN})
    assert simple.headers["access-control-allow-origin"] == PAGE_ORIGIN
    assert "etag" in simple.headers["access-control-expose-headers"].lower()
    other = await gw.http.get("/flows", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def _nested(depth: int) -> bytes:
    return b'{"flow_slug": "chain", "input": ' + b"[" * depth + b"]" * depth + b"}"


async def _chunked(body: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(body), 65536):
        yield body[start:start + 65536]


RANDOM_RUN = str(uuid.uuid4())
BAD_INPUT: list[tuple[str, str, str, dict[str, Any], int, str]] = [
    # (name, method, path, request kwargs, status, code)
    ("malformed JSON", "POST", "/rpc/run_flow", {"content": b'{"flow_slug": '}, 400, "bad_json"),
    ("empty body", "POST", "/rpc/run_flow", {"content": b""}, 400, "bad_json"),
    ("not an object", "POST", "/rpc/run_flow", {"json": ["chain"]}, 400, "bad_request"),
    ("slug not a string", "POST", "/rpc/run_flow", {"json": {"flow_slug": 5}}, 400,
     "bad_request"),
    ("slug missing", "POST", "/rpc/run_flow", {"json": {"input": 1}}, 400, "bad_request"),
    ("unknown field", "POST", "/rpc/run_flow", {"json": {"flowSlug": "chain"}}, 400,
     "bad_request"),
    ("unknown flow", "POST", "/rpc/run_flow", {"json": {"flow_slug": "nope"}}, 404,
     "not_found"),
    ("slug no flow can have", "POST", "/rpc/run_flow", {"json": {"flow_slug": "../x y"}}, 404,
     "not_found"),
    ("NUL in input", "POST", "/rpc/run_flow",
     {"json": {"flow_slug": "chain", "input": {"a": "x\u0000y"}}}, 400, "bad_request"),
    ("NaN", "POST", "/rpc/run_flow", {"content": b'{"flow_slug": "chain", "input": NaN}'}, 400,
     "bad_json"),
    ("too deep", "POST", "/rpc/run_flow", {"content": _nested(2000)}, 400, "bad_request"),
    ("NUL in a static path", "GET", "/static/%000.js", {}, 404, "not_found"),
    ("body over the limit", "POST", "/rpc/run_flow",
     {"json": {"flow_slug": "chain", "input": "x" * (1024 * 1024)}}, 413, "too_large"),
    ("chunked body over the limit", "POST", "/rpc/run_flow",
     {"content": "stream"}, 413, "too_large"),
    ("run id not a UUID", "GET", "/runs/12345", {}, 400, "bad_request"),
    ("unknown run", "GET", f"/runs/{RANDOM_RUN}", {}, 404, "not_found"),
    ("unknown flow shape", "GET", "/flows/nope", {}, 404, "not_found"),
    ("limit zero", "GET", "/runs?limit=0", {}, 400, "bad_request"),
    ("limit not a number", "GET", "/runs?limit=ten", {}, 400, "bad_request"),
    ("limit too high", "GET", "/runs?limit=5000", {}, 400, "bad_request"),
    ("bad flow filter", "GET", "/runs?flow_slug=a%20b", {}, 400, "bad_request"),
    ("unknown path", "GET", "/nope", {}, 404, "not_found"),
    ("wrong method", "DELETE", "/rpc/run_flow", {}, 405, "method_not_allowed"),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "code"),
                         [case[1:] for case in BAD_INPUT], ids=[case[0] for case in BAD_INPUT])
async def test_bad_input_gets_its_documented_error(
    gw: RunningGateway, method: str, path: str, kwargs: dict[str, Any], status: int, code: str
) -> None:
    if kwargs.get("content") == "stream":
        kwargs = {"content": _chunked(b'{"input": "' + b"x" * (2 * 1024 * 1024) + b'"}')}
    response = await gw.http.request(method, path, **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    assert await gw.healthy()


async def test_a_store_refusal_is_a_bad_request_not_a_500(gw: RunningGateway) -> None:
    """A value that passes our checks but not PostgreSQL's (here: a lone surrogate escape,
    valid JSON for some parsers) must not surface as a 500."""
    async with httpx.AsyncClient(base_url=gw.url, trust_env=False) as http:
        response = await http.post("/rpc/run_flow",
                                   content=b'{"flow_slug": "chain", "input": "\\ud800"}')
    assert response.status_code == 400
    assert await gw.healthy()


async def test_the_database_going_away_is_a_503(db_url: str, store: Store) -> None:
    await store.define_flow(CHAIN)
    async with running_gateway(db_url) as gw:
        await gw.runtime.require_store().close()
        response = await gw.http.post("/rpc/run_flow", json={"flow_slug": "chain"})
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "unavailable"
        gw.runtime.store = None  # already closed
