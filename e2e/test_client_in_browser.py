"""The JS client in a real Chromium, loaded from a real `pgflow demo` gateway.

A page on the gateway's origin imports `/client.js` (the module the gateway serves) and calls
it as a user's page would: `triggerFlow` without a `url`, so the client finds the
gateway from the module's own origin, and its socket passes the gateway's Origin check.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from e2e.conftest import Demo, WatchedPage

REPO = Path(__file__).resolve().parent.parent
RUN_TIMEOUT = 30_000  # ms: the whole run, retries included
# A real answer of the gateway (not "/", whose own app would share the module), so the page's
# origin is the gateway's. A document made up by Playwright's route.fulfill would not do: it
# has no address, and Chromium's Local Network Access checks then block its websocket to
# 127.0.0.1 (net::ERR_BLOCKED_BY_LOCAL_NETWORK_ACCESS_CHECKS).
PAGE_PATH = "/healthz"
# Imported as a page's own script would import it.
IMPORT_CLIENT = 'import * as pgflow from "/client.js"; window.pgflow = pgflow;'

DIAMOND_INPUT = {"text": "the  cat and\nthe hat."}
DIAMOND_OUTPUT = {"summary": "the cat and the hat.", "words": 5, "top_words": ["the", "and", "cat"]}
DIAMOND_STEPS = ["count_words", "fetch", "report", "summarize"]


def _get(url: str) -> tuple[bytes, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read(), response.headers["content-type"]


async def get(url: str) -> tuple[bytes, str]:
    """GET on 127.0.0.1, off the event loop (which also reads the demo's output)."""
    return await asyncio.to_thread(_get, url)


async def get_json(url: str) -> Any:
    body, _ = await get(url)
    return json.loads(body)


@pytest.fixture
async def client_page(demo: Demo, page: WatchedPage) -> WatchedPage:
    """A page on the gateway's origin with the gateway's client.js imported as `window.pgflow`."""
    # The browser asks for /favicon.ico by itself for a page without an icon, and the
    # gateway has none: its 404 would be a console error that says nothing about the client.
    await page.page.context.route("**/favicon.ico", lambda route: route.fulfill(status=204))
    await page.page.goto(demo.url + PAGE_PATH)
    await page.page.add_script_tag(content=IMPORT_CLIENT, type="module")
    await page.page.wait_for_function("window.pgflow !== undefined", timeout=10_000)
    return page


async def test_the_gateway_serves_this_repositorys_client_as_a_module(demo: Demo) -> None:
    served, content_type = await get(demo.url + "/client.js")
    assert "javascript" in content_type
    assert served == (REPO / "client_js" / "client.js").read_bytes()


async def test_trigger_flow_in_the_page_resolves_with_the_runs_output_and_every_event_in_order(
    demo: Demo, client_page: WatchedPage
) -> None:
    result = await client_page.page.evaluate(
        """async ({ input, timeout }) => {
            const events = [];
            const output = await window.pgflow.triggerFlow("diamond", input, {
                timeout, onEvent: (e) => events.push(e),
            });
            return { output, events, url: window.pgflow.getDefaultClient().url };
        }""",
        {"input": DIAMOND_INPUT, "timeout": RUN_TIMEOUT},
    )
    assert result["url"] == demo.url  # found from the module's origin, no `url` given
    assert result["output"] == DIAMOND_OUTPUT
    events = result["events"]
    run_id = events[0]["run_id"]
    snapshot = await get_json(f"{demo.url}/runs/{run_id}")
    assert snapshot["status"] == "completed"
    assert result["output"] == snapshot["output"]
    assert [e["seq"] for e in events] == list(range(1, snapshot["seq"] + 1))  # each once, in order
    assert all(e["run_id"] == run_id for e in events)
    assert events[0]["event"] == "run:started"
    assert events[-1]["event"] == "run:completed"
    assert events[-1]["output"] == snapshot["output"]
    completed = {e["step_slug"] for e in events if e["event"] == "step:completed"}
    assert sorted(completed) == DIAMOND_STEPS
    assert client_page.problems == []


async def test_a_failing_flow_rejects_in_the_page_with_flow_failed_error(
    demo: Demo, client_page: WatchedPage
) -> None:
    failure = await client_page.page.evaluate(
        """async ({ timeout }) => {
            const { triggerFlow, FlowFailedError, PGFlowError } = window.pgflow;
            const events = [];
            try {
                await triggerFlow("doomed", { mission: "apollo" }, {
                    timeout, onEvent: (e) => events.push(e),
                });
            } catch (err) {
                return {
                    isFlowFailedError: err instanceof FlowFailedError,
                    isPGFlowError: err instanceof PGFlowError,
                    name: err.name, code: err.code, message: err.message,
                    runId: err.runId, stepSlug: err.stepSlug, error: err.error,
                    attempt: err.attempt, event: err.event, events,
                };
            }
            return null;
        }""",
        {"timeout": RUN_TIMEOUT},
    )
    assert failure is not None, "triggerFlow('doomed') resolved"
    assert failure["isFlowFailedError"]
    assert failure["isPGFlowError"]
    assert failure["name"] == "FlowFailedError"
    assert failure["code"] == "run_failed"
    run_id = failure["events"][0]["run_id"]
    snapshot = await get_json(f"{demo.url}/runs/{run_id}")
    assert snapshot["status"] == "failed"
    assert failure["runId"] == run_id
    assert run_id in failure["message"]
    assert failure["stepSlug"] == "launch"
    assert failure["attempt"] == 2
    assert failure["error"] == snapshot["error"]
    assert "the launch pad is on fire" in failure["error"]
    assert failure["event"] == failure["events"][-1]
    assert failure["event"]["event"] == "run:failed"
    assert [e["seq"] for e in failure["events"]] == list(range(1, snapshot["seq"] + 1))
    assert client_page.problems == []


async def test_a_flow_run_in_the_page_tracks_the_graph_and_each_steps_state(
    demo: Demo, client_page: WatchedPage
) -> None:
    state = await client_page.page.evaluate(
        """async ({ input, timeout }) => {
            const client = window.pgflow.createClient();
            try {
                const run = await client.startFlow("diamond", input);
                const graph = run.graph.steps.map((s) => s.slug).sort();
                const output = await run.result({ timeout });
                const steps = Object.fromEntries(
                    [...run.steps.values()].map((s) => [s.slug, [s.status, s.attempt]]));
                return { runId: run.runId, graph, output, steps, status: run.status,
                         lastSeq: run.lastSeq };
            } finally {
                client.close();
            }
        }""",
        {"input": DIAMOND_INPUT, "timeout": RUN_TIMEOUT},
    )
    snapshot = await get_json(f"{demo.url}/runs/{state['runId']}")
    assert state["graph"] == DIAMOND_STEPS
    assert state["status"] == "completed"
    assert state["output"] == snapshot["output"] == DIAMOND_OUTPUT
    assert state["lastSeq"] == snapshot["seq"]
    assert state["steps"] == {slug: ["completed", 1] for slug in DIAMOND_STEPS}
    assert client_page.problems == []
