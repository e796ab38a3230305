"""The gateway's callback routes of HTTP steps, ``POST /rpc/complete_step`` and
``/rpc/fail_step`` (docs/reference/http.md): the token is the credential, the store is a fake
that records what reached it."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException

from gateway.auth import Authenticator
from gateway.config import GatewayConfig
from gateway.http import http_exception, http_routes, internal_error
from gateway.metrics import Metrics
from pgflow.errors import ConfigurationError
from pgflow.signing import make_token

SECRET = "callback-test-secret"
RUN = uuid.uuid4()
MAX_BODY = 64 * 1024


class FakeStore:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.applied = True

    async def complete_step(self, run_id: uuid.UUID, step_slug: str, output: Any,
                            worker_id: str, attempt: int) -> bool:
        self.calls.append(("complete", run_id, step_slug, output, worker_id, attempt))
        return self.applied

    async def fail_step(self, run_id: uuid.UUID, step_slug: str, error: str,
                        worker_id: str, attempt: int) -> bool:
        self.calls.append(("fail", run_id, step_slug, error, worker_id, attempt))
        return self.applied


def app_for(store: FakeStore, secret: str | None) -> Starlette:
    routes = http_routes(
        auth=Authenticator(GatewayConfig(), {}), flows={}, store=lambda: store,  # type: ignore[arg-type,return-value]
        metrics=Metrics(), max_body_bytes=MAX_BODY, unhealthy=lambda: None,
        open_sockets=lambda: 0, http_secret=secret,
    )
    return Starlette(routes=routes, exception_handlers={HTTPException: http_exception,
                                                        Exception: internal_error})


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
async def client(store: FakeStore) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app_for(store, SECRET))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        yield http


def token(secret: str = SECRET, expires_in: float = 60, attempt: int = 2) -> str:
    return make_token(secret, RUN, "render", attempt, "worker-7", time.time() + expires_in)


async def test_complete_step_applies(client: httpx.AsyncClient, store: FakeStore) -> None:
    answer = await client.post("/rpc/complete_step",
                               json={"token": token(), "output": {"html": "<h1>Hi</h1>"}})
    assert answer.status_code == 200
    assert answer.json() == {"applied": True}
    assert answer.headers["cache-control"] == "no-store"
    assert store.calls == [("complete", RUN, "render", {"html": "<h1>Hi</h1>"}, "worker-7", 2)]


async def test_fail_step_applies(client: httpx.AsyncClient, store: FakeStore) -> None:
    answer = await client.post("/rpc/fail_step", json={"token": token(), "error": "no GPU"})
    assert answer.status_code == 200
    assert answer.json() == {"applied": True}
    assert store.calls == [("fail", RUN, "render", "no GPU", "worker-7", 2)]


async def test_a_stale_callback_is_not_applied(client: httpx.AsyncClient,
                                               store: FakeStore) -> None:
    store.applied = False
    answer = await client.post("/rpc/complete_step", json={"token": token(), "output": None})
    assert (answer.status_code, answer.json()) == (200, {"applied": False})
    assert store.calls == [("complete", RUN, "render", None, "worker-7", 2)]


@pytest.mark.parametrize("path", ["/rpc/complete_step", "/rpc/fail_step"])
@pytest.mark.parametrize("bad", [
    token(secret="another secret"), token(expires_in=-1), "pgflow1.e30.AAAA", "", "x" * 10_000,
    token()[:-2], token().replace("pgflow1", "pgflow2"),
])
async def test_bad_tokens_are_unauthorized(client: httpx.AsyncClient, store: FakeStore,
                                           path: str, bad: str) -> None:
    field = {"/rpc/complete_step": {"output": 1}, "/rpc/fail_step": {"error": "e"}}[path]
    answer = await client.post(path, json={"token": bad, **field})
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "unauthorized"
    assert store.calls == []


@pytest.mark.parametrize(("path", "body"), [
    ("/rpc/complete_step", b""),
    ("/rpc/complete_step", b"not json"),
    ("/rpc/complete_step", b"[1]"),
    ("/rpc/complete_step", b'{"token": "t"}'),
    ("/rpc/complete_step", b'{"output": 1}'),
    ("/rpc/complete_step", b'{"token": 5, "output": 1}'),
    ("/rpc/complete_step", b'{"token": "t", "output": 1, "extra": 2}'),
    ("/rpc/fail_step", b'{"token": "t"}'),
    ("/rpc/fail_step", b'{"token": "t", "error": "e", "output": 1}'),
])
async def test_bad_bodies_are_bad_requests(client: httpx.AsyncClient, store: FakeStore,
                                           path: str, body: bytes) -> None:
    answer = await client.post(path, content=body)
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] in ("bad_request", "bad_json")
    assert store.calls == []


@pytest.mark.parametrize(("path", "field", "value"), [
    ("/rpc/complete_step", "output", {"a": ["ok", "nul\x00"]}),
    ("/rpc/complete_step", "output", {"k\x00": 1}),
    ("/rpc/fail_step", "error", 5),
    ("/rpc/fail_step", "error", None),
    ("/rpc/fail_step", "error", {"message": "x"}),
    ("/rpc/fail_step", "error", "x" * 4001),
    ("/rpc/fail_step", "error", "nul\x00"),
])
async def test_bad_outputs_and_errors_are_bad_requests(
        client: httpx.AsyncClient, store: FakeStore, path: str, field: str, value: Any) -> None:
    answer = await client.post(path, content=orjson.dumps({"token": token(), field: value}))
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "bad_request"
    assert store.calls == []


async def test_an_error_of_4000_characters_is_taken(client: httpx.AsyncClient,
                                                    store: FakeStore) -> None:
    answer = await client.post("/rpc/fail_step", json={"token": token(), "error": "é" * 4000})
    assert answer.status_code == 200
    assert store.calls[0][3] == "é" * 4000


async def test_a_body_over_the_limit_is_too_large(client: httpx.AsyncClient,
                                                  store: FakeStore) -> None:
    answer = await client.post("/rpc/complete_step",
                               json={"token": token(), "output": "x" * MAX_BODY})
    assert answer.status_code == 413
    assert store.calls == []


@pytest.mark.parametrize("path", ["/rpc/complete_step", "/rpc/fail_step"])
async def test_without_a_secret_the_routes_are_not_found(store: FakeStore, path: str) -> None:
    transport = httpx.ASGITransport(app=app_for(store, None))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        answer = await http.post(path, json={"token": token(), "output": 1, "error": "e"})
    assert answer.status_code == 404
    assert answer.json()["error"] == {
        "code": "not_found", "message": "HTTP steps are not configured: --http-secret"}
    assert store.calls == []


async def test_only_post() -> None:
    transport = httpx.ASGITransport(app=app_for(FakeStore(), SECRET))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        answer = await http.get("/rpc/complete_step")
    assert answer.status_code == 405


def test_the_config_takes_the_secret_from_the_environment() -> None:
    assert GatewayConfig.from_env({"PGFLOW_HTTP_SECRET": "from-env"}).http_secret == "from-env"
    assert GatewayConfig.from_env({}).http_secret is None
    with pytest.raises(ConfigurationError, match="http-secret"):
        GatewayConfig(http_secret="")
