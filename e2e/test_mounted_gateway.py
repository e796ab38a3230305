"""The gateway mounted under /pgflow in a parent Starlette app, driven by a real Chromium.

The live page at /pgflow/ loads its assets and calls the API under the prefix, and
`triggerFlow` imported from /pgflow/client.js posts to /pgflow/rpc/run_flow and follows the run
on /pgflow/realtime: every URL derives from where the page and the module were served.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from playwright.async_api import Request, expect
from starlette.applications import Starlette
from starlette.routing import Mount

from e2e.conftest import WatchedPage
from gateway.app import lifespan
from gateway.config import GatewayConfig
from gateway.server import GatewayServer
from pgflow.demo import example_flows
from pgflow.serve import create_app_with_worker

PREFIX = "/pgflow"
RUN_TIMEOUT = 30_000  # ms
DIAMOND_INPUT = {"text": "the  cat and\nthe hat."}
DIAMOND_OUTPUT = {"summary": "the cat and the hat.", "words": 5, "top_words": ["the", "and", "cat"]}


@pytest.fixture
async def mounted(db_url: str) -> AsyncIterator[str]:  # the parent app's URL
    # Any Origin: this is about paths, and a mounted gateway does not know the port it is on.
    config = GatewayConfig(allowed_origins=("*",))
    pgflow = create_app_with_worker(db_url, flows=example_flows(), config=config,
                                    worker_options={"poll_interval": 0.5})

    @contextlib.asynccontextmanager
    async def parent_lifespan(app: Starlette) -> AsyncIterator[None]:
        async with lifespan(pgflow):
            yield

    parent = Starlette(routes=[Mount(PREFIX, app=pgflow)], lifespan=parent_lifespan)
    server = GatewayServer(parent)
    url = await server.start()
    try:
        yield url
    finally:
        await server.stop()


def record_requests(page: WatchedPage) -> list[str]:
    """"METHOD url" of every request the page makes, websockets included."""
    urls: list[str] = []

    def on_request(request: Request) -> None:
        urls.append(f"{request.method} {request.url}")

    page.page.on("request", on_request)
    page.page.on("websocket", lambda ws: urls.append(f"WS {ws.url}"))
    return urls


async def test_the_live_page_under_a_prefix_loads_and_runs_a_flow(
    mounted: str, page: WatchedPage
) -> None:
    await page.page.context.route("**/favicon.ico", lambda route: route.fulfill(status=204))
    requests = record_requests(page)
    await page.page.goto(mounted + PREFIX)  # without the slash: redirected to /pgflow/
    assert page.page.url == f"{mounted}{PREFIX}/"
    picker = page.page.get_by_test_id("flow-select")
    await expect(picker).to_be_enabled()
    await picker.select_option("diamond")
    await page.page.get_by_test_id("run-button").click()
    await expect(page.page.get_by_test_id("run-status")).to_have_attribute(
        "data-status", "completed", timeout=RUN_TIMEOUT
    )
    await expect(page.page.get_by_test_id("node-report")).to_have_attribute(
        "data-status", "completed"
    )
    assert page.problems == []
    ws = mounted.replace("http://", "ws://")
    under = (f"{mounted}{PREFIX}/", f"{ws}{PREFIX}/")
    outside = [r for r in requests[1:]  # [0]: the address typed, /pgflow
               if not r.split(" ", 1)[1].startswith(under) and not r.endswith("/favicon.ico")]
    assert outside == []
    for path in ("static/app.js", "static/app.css", "client.js", "flows", "rpc/run_flow"):
        assert any(f" {mounted}{PREFIX}/{path}" in r for r in requests), path
    assert f"WS {ws}{PREFIX}/realtime" in requests


async def test_trigger_flow_from_the_prefixed_client_js_posts_and_listens_under_the_prefix(
    mounted: str, page: WatchedPage
) -> None:
    await page.page.context.route("**/favicon.ico", lambda route: route.fulfill(status=204))
    requests = record_requests(page)
    # A page of the parent app's origin (here a gateway answer) importing the mounted client.
    await page.page.goto(f"{mounted}{PREFIX}/healthz")
    await page.page.add_script_tag(
        content=f'import * as pgflow from "{PREFIX}/client.js"; window.pgflow = pgflow;',
        type="module",
    )
    await page.page.wait_for_function("window.pgflow !== undefined", timeout=10_000)
    result: Any = await page.page.evaluate(
        """async ([input, timeout]) => {
          const output = await window.pgflow.triggerFlow("diamond", input, { timeout });
          return { output, url: window.pgflow.getDefaultClient().url };
        }""",
        [DIAMOND_INPUT, RUN_TIMEOUT],
    )
    assert result == {"output": DIAMOND_OUTPUT, "url": f"{mounted}{PREFIX}"}
    assert f"POST {mounted}{PREFIX}/rpc/run_flow" in requests
    ws = mounted.replace("http://", "ws://")
    assert f"WS {ws}{PREFIX}/realtime" in requests
    assert page.problems == []
