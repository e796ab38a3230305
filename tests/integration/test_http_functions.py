"""The example functions of docs/reference/http-steps.md (examples/functions/), called the way a
worker calls them (HttpDispatcher) and calling back a stub of the gateway's callback routes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from examples.functions.render_starlette import make_app
from pgflow.db.store import Task
from pgflow.signing import read_token, signature_header
from pgflow.worker._http_dispatch import Completed, Deferred, Failed, HttpDispatcher
from tests.local_http import TIMEOUT, serving

REPO = Path(__file__).resolve().parents[2]
NODE_EXAMPLE = REPO / "examples" / "functions" / "render_node.mjs"
SECRET = "functions-test-secret-0123456789abcdef"
WORKER = "worker-functions-test"


def task(run: Any, attempt: int = 1) -> Task:
    return Task(run_id=uuid.uuid4(), flow_slug="site", step_slug="render", attempt=attempt,
                input={"run": run}, timeout=10, max_attempts=3)


@contextlib.asynccontextmanager
async def node_function() -> AsyncIterator[str]:
    node = shutil.which("node")
    assert node is not None, "the Node example needs node on PATH"
    process = await asyncio.create_subprocess_exec(
        node, str(NODE_EXAMPLE), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PORT": "0", "HOST": "127.0.0.1", "PGFLOW_HTTP_SECRET": SECRET},
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(TIMEOUT):
            line = (await process.stdout.readline()).decode()
        assert line.startswith("listening on http://127.0.0.1:"), line
        yield line.split()[-1] + "/render"
    finally:
        if process.returncode is None:
            process.terminate()
        async with asyncio.timeout(TIMEOUT):
            _, errors = await process.communicate()
        assert b"callback failed" not in errors, errors.decode()


@contextlib.asynccontextmanager
async def starlette_function() -> AsyncIterator[str]:
    async with serving(make_app(SECRET)) as url:
        yield url + "/render"


@pytest.fixture(params=["node", "starlette"], scope="module")
async def function_url(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    start = node_function if request.param == "node" else starlette_function
    async with start() as url:
        yield url


class Gateway:
    """A stub of the gateway's callback routes: what the function sent."""

    def __init__(self) -> None:
        self.callbacks: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()

    def app(self) -> Starlette:
        async def callback(request: Request) -> Response:
            self.callbacks.put_nowait((request.url.path, orjson.loads(await request.body())))
            return JSONResponse({"applied": True})

        return Starlette(routes=[Route("/rpc/complete_step", callback, methods=["POST"]),
                                 Route("/rpc/fail_step", callback, methods=["POST"])])


@pytest.fixture(scope="module")
async def gateway() -> AsyncIterator[tuple[Gateway, str]]:
    stub = Gateway()
    async with serving(stub.app()) as url:
        yield stub, url


@pytest.fixture
async def dispatcher(gateway: tuple[Gateway, str]) -> AsyncIterator[HttpDispatcher]:
    d = HttpDispatcher(SECRET, callback_url=gateway[1])
    try:
        yield d
    finally:
        await d.aclose()


async def test_sync_answers_the_output(function_url: str, dispatcher: HttpDispatcher) -> None:
    outcome = await dispatcher.call(task({"title": "Hello <World> & \"you\" 'all'",
                                          "sync": True}), function_url, WORKER)
    assert outcome == Completed(
        {"html": "<h1>Hello &lt;World&gt; &amp; &quot;you&quot; &#x27;all&#x27;</h1>"})


async def test_bad_sync_input_fails_for_good(function_url: str,
                                             dispatcher: HttpDispatcher) -> None:
    outcome = await dispatcher.call(task({"sync": True}), function_url, WORKER)
    assert isinstance(outcome, Failed)
    assert outcome.final
    assert outcome.error.startswith(f"HTTP 422 from {function_url}: ")
    assert "input.run.title must be a string" in outcome.error


async def test_a_bad_signature_is_refused(function_url: str) -> None:
    wrong = HttpDispatcher("not the function's secret")
    try:
        outcome = await wrong.call(task({"title": "x", "sync": True}), function_url, WORKER)
    finally:
        await wrong.aclose()
    assert isinstance(outcome, Failed)
    assert outcome.final
    assert outcome.error.startswith(f"HTTP 401 from {function_url}")

    body = orjson.dumps({"run_id": str(uuid.uuid4()), "step_slug": "render", "attempt": 1,
                         "input": {"run": {"title": "x", "sync": True}}, "token": "t",
                         "callback": None})
    good = signature_header(SECRET, body)
    stale = signature_header(SECRET, body, int(time.time()) - 400)
    ahead = signature_header(SECRET, body, int(time.time()) + 400)
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        for headers, status in [
            ({}, 401),
            ({"PGFlow-Signature": "t=1,v1=00"}, 401),
            ({"PGFlow-Signature": stale}, 401),
            ({"PGFlow-Signature": ahead}, 401),
            ({"PGFlow-Signature": good.replace("v1=", "v1=0")}, 401),
            ({"PGFlow-Signature": good}, 200),
        ]:
            answer = await http.post(function_url, content=body,
                                     headers={"Content-Type": "application/json", **headers})
            assert answer.status_code == status, (headers, answer.text)
        # the same signature over another body
        answer = await http.post(function_url, content=body.replace(b'"x"', b'"y"'),
                                 headers={"PGFlow-Signature": good})
        assert answer.status_code == 401


async def test_async_calls_back_with_the_token(function_url: str,
                                               gateway: tuple[Gateway, str],
                                               dispatcher: HttpDispatcher) -> None:
    stub = gateway[0]
    sent = task({"title": "Later"}, attempt=2)
    assert await dispatcher.call(sent, function_url, WORKER) == Deferred()
    async with asyncio.timeout(TIMEOUT):
        path, body = await stub.callbacks.get()
    assert path == "/rpc/complete_step"
    assert body["output"] == {"html": "<h1>Later</h1>"}
    claims = read_token(SECRET, body["token"])
    assert (claims.run_id, claims.step_slug, claims.attempt, claims.worker_id) == (
        sent.run_id, "render", 2, WORKER)


async def test_async_bad_input_calls_fail_back(function_url: str, gateway: tuple[Gateway, str],
                                               dispatcher: HttpDispatcher) -> None:
    stub = gateway[0]
    sent = task({"title": 42})
    assert await dispatcher.call(sent, function_url, WORKER) == Deferred()
    async with asyncio.timeout(TIMEOUT):
        path, body = await stub.callbacks.get()
    assert path == "/rpc/fail_step"
    assert body["error"] == "input.run.title must be a string"
    assert read_token(SECRET, body["token"]).run_id == sent.run_id


async def test_without_a_callback_the_function_answers_at_once(function_url: str) -> None:
    plain = HttpDispatcher(SECRET)
    try:
        outcome = await plain.call(task({"title": "Now"}), function_url, WORKER)
    finally:
        await plain.aclose()
    assert outcome == Completed({"html": "<h1>Now</h1>"})


async def test_the_examples_refuse_to_start_without_a_secret() -> None:
    app = make_app("")
    with pytest.raises(RuntimeError, match="PGFLOW_HTTP_SECRET"):
        async with app.router.lifespan_context(app):
            pass
    node = shutil.which("node")
    assert node is not None
    env = {k: v for k, v in os.environ.items() if k != "PGFLOW_HTTP_SECRET"}
    process = await asyncio.create_subprocess_exec(
        node, str(NODE_EXAMPLE), env={**env, "PORT": "0"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(TIMEOUT):
        _, errors = await process.communicate()
    assert process.returncode == 2
    assert b"PGFLOW_HTTP_SECRET" in errors
