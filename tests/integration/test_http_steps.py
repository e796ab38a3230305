"""HTTP steps end to end: a worker dispatches them to a real function (the Node and the Starlette
examples), which answers at once or calls the gateway back; a 4xx fails the step for good, a
late or repeated callback is stale, a forged one refused."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.config import GatewayConfig
from pgflow import Flow
from pgflow.db.store import Store
from pgflow.errors import ConfigurationError
from pgflow.signing import make_token
from pgflow.worker import Worker
from tests.integration.gateway_harness import running_gateway
from tests.integration.test_http_functions import SECRET, node_function, starlette_function
from tests.integration.worker_helpers import (
    QUICK_POLL,
    running,
    step_of,
    wait_for_run,
    wait_until,
)
from tests.local_http import serving

site = Flow("site", max_attempts=3, base_delay=0, timeout=10)


@site.step()
async def plan(input: Any) -> dict[str, Any]:
    return {"pages": 1}


site.http_step("render", url="/render", depends_on=[plan], output=True)


@contextlib.asynccontextmanager
async def steps_running(db_url: str, function_base: str) -> AsyncIterator[str]:
    """A gateway that takes the functions' callbacks, and a worker that dispatches to them."""
    async with running_gateway(db_url, config=GatewayConfig(http_secret=SECRET)) as gateway, \
            running(db_url, [site], poll_interval=QUICK_POLL, http_secret=SECRET,
                    http_base_url=function_base, callback_url=gateway.url):
        yield gateway.url


@pytest.mark.parametrize("function", ["node", "starlette"])
async def test_both_example_functions_complete_runs_at_once_and_by_callback(
        db_url: str, store: Store, function: str) -> None:
    start = node_function if function == "node" else starlette_function
    async with start() as url, steps_running(db_url, url.removesuffix("/render")):
        sync = await store.run_flow("site", {"title": "Now <b>", "sync": True})
        later = await store.run_flow("site", {"title": "Later"})
        refused = await store.run_flow("site", {"no": "title", "sync": True})
        failed_later = await store.run_flow("site", {"no": "title"})
        runs = [await wait_for_run(store, r) for r in (sync, later, refused, failed_later)]
    assert [r["status"] for r in runs] == ["completed", "completed", "failed", "failed"]
    assert runs[0]["output"] == {"html": "<h1>Now &lt;b&gt;</h1>"}
    assert runs[1]["output"] == {"html": "<h1>Later</h1>"}
    # refused at once (422): a final failure at the first attempt, for all of max_attempts 3
    render = step_of(runs[2], "render")
    assert render["attempt"] == 1
    assert (render["error"] or "").startswith("HTTP 422")
    # failed by callback: a failed attempt, retried as the step's options say
    render = step_of(runs[3], "render")
    assert render["attempt"] == 3
    assert "title" in (render["error"] or "")


calls: list[dict[str, Any]] = []


def flaky_function() -> Starlette:
    """503 on a step's first call, then 202 without ever calling back."""

    async def handle(request: Request) -> Response:
        job = await request.json()
        calls.append(job)
        if job["attempt"] == 1:
            return JSONResponse({"error": "warming up"}, 503)
        return Response(status_code=202)

    return Starlette(routes=[Route("/render", handle, methods=["POST"])])


async def test_a_5xx_retries_and_a_deferred_call_waits_without_a_slot_then_calls_back(
        db_url: str, store: Store) -> None:
    calls.clear()
    async with serving(flaky_function()) as base, steps_running(db_url, base) as gateway_url:
        run_id = await store.run_flow("site", {"title": "x"})

        async def deferred() -> dict[str, Any] | None:
            return calls[-1] if len(calls) == 2 else None

        job = await wait_until(deferred, timeout=10, what="the second call")
        assert calls[0]["attempt"] == 1
        assert job["attempt"] == 2
        assert job["callback"] == {"complete": f"{gateway_url}/rpc/complete_step",
                                   "fail": f"{gateway_url}/rpc/fail_step"}
        async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
            # the lease is now the step's timeout (10 s), held by no slot: the call waits

            async def waiting_for_the_callback() -> bool:
                return await store.pool.fetchval(  # type: ignore[no-any-return]
                    "select lease_expires_at - now() > interval '5 s' from pgflow.step_states"
                    " where run_id = $1 and step_slug = 'render'", run_id) is True

            await wait_until(waiting_for_the_callback, timeout=10, what="the long lease")
            forged = make_token("another-secret", run_id, "render", 2, "w", 2**40)
            refused = await http.post(job["callback"]["complete"],
                                      json={"token": forged, "output": "x"})
            assert refused.status_code == 401, refused.text
            stale = make_token(SECRET, run_id, "render", 1, "w", 2**40)  # the first attempt's
            answer = await http.post(job["callback"]["complete"],
                                     json={"token": stale, "output": "x"})
            assert answer.json() == {"applied": False}
            answer = await http.post(job["callback"]["complete"],
                                     json={"token": job["token"], "output": {"done": 1}})
            assert answer.json() == {"applied": True}
            again = await http.post(job["callback"]["complete"],
                                    json={"token": job["token"], "output": {"done": 2}})
            assert again.json() == {"applied": False}  # a repeated callback is stale
        run = await wait_for_run(store, run_id)
    assert (run["status"], run["output"]) == ("completed", {"done": 1})
    events = [e for e in await store.get_run_events(run_id) if e["step_slug"] == "render"]
    assert [e["event"] for e in events] == ["step:started", "step:retrying", "step:started",
                                            "step:completed"]
    assert events[1]["error"].startswith("HTTP 503")


async def test_a_worker_with_http_steps_needs_the_secret(db_url: str) -> None:
    with pytest.raises(ConfigurationError, match="--http-secret"):
        Worker(db_url, [site])
