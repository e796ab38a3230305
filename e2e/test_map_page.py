"""Map steps and HTTP steps on the live page, in a real Chromium against a real `pgflow demo`.

A map node shows its elements' progress live ("37 / 120", a bar, "37 of 120 tasks done" for a
screen reader), its details the counts and the latest element errors; an HTTP node wears an
"HTTP" tag and its details show its URL; the events table folds a map's task events into
summary rows (`task:completed`, its count, its elements' index range) instead of one row per
event.

The demo serves the example flows (the mixed one, a Python step, a map step and an HTTP step,
among them) and `tally`, defined here: a map over 240 numbers whose every 60th element fails its
first attempt (the demo process loads it with ``--flows e2e.test_map_page:tally``).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from playwright.async_api import Page, expect

from e2e.conftest import Demo, WatchedPage, artifact, demo_with_flows, get_json
from pgflow import Flow, StepContext
from tests.integration.worker_helpers import step_of

RUN_TIMEOUT = 60_000  # ms: a whole run, a map of hundreds of elements and its retries included
TALLY_WIDTH = 240
FLAKY_EVERY = 60  # elements 7, 67, 127, 187 fail their first attempt
TIMES = "\u00d7"  # the multiplication sign of a fold's count, "task:completed \u00d7120"

# -- a flow with a big map whose elements retry (loaded by the demo process, not the tests) -------

tally = Flow(
    "tally",
    description=f"Squares {TALLY_WIDTH} numbers, one map task each; a few fail once and retry.",
    example_input={"n": TALLY_WIDTH},
)


@tally.step()
async def numbers(input: dict[str, Any]) -> list[int]:
    return list(range(int(input["run"].get("n", TALLY_WIDTH))))


@tally.map(over=numbers, max_attempts=3, base_delay=0)
async def square(input: dict[str, Any], context: StepContext) -> int:
    # a little work each, so the page sees the count move rather than jump to the end
    await asyncio.sleep(0.02)
    index: int = input["index"]
    if index % FLAKY_EVERY == 7 and context.attempt == 1:
        raise RuntimeError(f"element {index} is flaky")
    if index == input["run"].get("fail"):  # {"fail": i}: element i fails every attempt
        raise ValueError(f"element {index} cannot be squared")
    item: int = input["item"]
    return item * item


@tally.step(depends_on=[square], output=True)
async def total(input: dict[str, Any]) -> dict[str, int]:
    return {"count": len(input["square"]), "sum": sum(input["square"])}


# -- harness ------------------------------------------------------------------------------------


@pytest.fixture
async def map_demo(db_url: str) -> AsyncIterator[Demo]:
    async with demo_with_flows(db_url, "e2e.test_map_page:tally") as running:
        yield running


def mixed_flow(demo: Demo) -> dict[str, Any]:
    """The demo's flow with a map step and an HTTP step (found by its shape, not its name)."""
    listed = get_json(f"{demo.url}/flows")
    for flow in listed if isinstance(listed, list) else listed["flows"]:
        graph = get_json(f"{demo.url}/flows/{flow['slug']}")
        kinds = {s.get("kind", "task") for s in graph["steps"]}
        if flow["slug"] != "tally" and {"map", "http"} <= kinds:
            return dict(graph)
    raise AssertionError("the demo has no flow with a map step and an HTTP step")


async def start_run(page: Page, demo: Demo, flow: str, input: Any = None) -> str:
    await page.goto(demo.url + "/")
    picker = page.get_by_test_id("flow-select")
    await expect(picker).to_be_enabled()
    await picker.select_option(flow)
    if input is not None:
        await page.get_by_test_id("input-editor").fill(json.dumps(input))
    await page.get_by_test_id("run-button").click()
    await page.wait_for_url("**/?run=*")
    return page.url.split("run=")[1].split("&")[0]


# Every distinct aria-label a node takes, in order: the live progress, as a screen reader hears it.
WATCH_LABELS = """slug => {
  window.nodeLabels = [];
  new MutationObserver(() => {
    const node = document.querySelector(`[data-testid="node-${slug}"]`);
    const label = node?.getAttribute("aria-label");
    if (label && window.nodeLabels.at(-1) !== label) window.nodeLabels.push(label);
  }).observe(document, { subtree: true, childList: true, attributes: true,
                         attributeFilter: ["aria-label"] });
}"""

# The timeline's fold rows of one step: [event, count] each, and how many rows the table has.
FOLDS = """slug => ({
  folds: [...document.querySelectorAll(
    `[data-testid="timeline"] tr[data-fold][data-step="${slug}"]`)]
    .map((tr) => [tr.dataset.event, Number(tr.dataset.count), tr.textContent]),
  rows: document.querySelectorAll('[data-testid="timeline"] tbody tr').length,
})"""


def counted(folds: list[list[Any]], event: str) -> int:
    return sum(count for name, count, _ in folds if name == event)


# -- tests ----------------------------------------------------------------------------------------


async def test_the_mixed_flow_shows_its_map_progress_and_its_http_step(
    map_demo: Demo, page: WatchedPage
) -> None:
    p = page.page
    graph = mixed_flow(map_demo)
    map_step = next(s for s in graph["steps"] if s.get("kind") == "map")
    http_step = next(s for s in graph["steps"] if s.get("kind") == "http")
    run_id = await start_run(p, map_demo, graph["slug"])
    await expect(p.get_by_test_id("run-status")).to_have_attribute(
        "data-status", "completed", timeout=RUN_TIMEOUT
    )
    snapshot = get_json(f"{map_demo.url}/runs/{run_id}")
    n = step_of(snapshot, map_step["slug"])["tasks"]
    assert isinstance(n, int), snapshot
    assert n > 0, snapshot

    node = p.get_by_test_id(f"node-{map_step['slug']}")
    await expect(node).to_have_attribute("data-kind", "map")
    await expect(node).to_have_attribute("data-status", "completed")
    await expect(node).to_have_attribute("data-tasks", str(n))
    await expect(node).to_have_attribute("data-tasks-done", str(n))
    await expect(node.locator(".sub")).to_have_text(re.compile(rf"^{n} / {n}\b"))
    await expect(node).to_have_attribute("aria-label", re.compile(rf"\b{n} of {n} tasks? done\b"))
    await expect(p.get_by_test_id(f"node-kind-{map_step['slug']}")).to_have_text("MAP")

    http_node = p.get_by_test_id(f"node-{http_step['slug']}")
    await expect(http_node).to_have_attribute("data-kind", "http")
    await expect(http_node).to_have_attribute("data-status", "completed")
    await expect(p.get_by_test_id(f"node-kind-{http_step['slug']}")).to_have_text("HTTP")

    # the events table: the map's task events in folded rows, one row per event otherwise
    shown = await p.evaluate(FOLDS, map_step["slug"])
    assert counted(shown["folds"], "task:completed") == n, shown
    assert shown["rows"] < snapshot["seq"] or n == 1, shown
    first = next(text for name, _, text in shown["folds"] if name == "task:completed")
    assert re.search(rf"task:completed {TIMES}\d+", first), shown  # then the index range
    assert json.loads(await p.get_by_test_id("run-output").inner_text()) == snapshot["output"]

    # the HTTP step's details show where it POSTs
    await http_node.click()
    await expect(p.get_by_test_id("step-url")).to_have_text(http_step["url"])
    await map_node_details(p, map_step["slug"], n)
    await p.screenshot(path=artifact("pipeline-completed.png"), full_page=True)
    assert page.problems == []


async def map_node_details(p: Page, slug: str, n: int) -> None:
    await p.get_by_test_id(f"node-{slug}").click()
    detail = p.get_by_test_id("step-detail")
    await expect(detail).to_contain_text(f"{n} of {n} task")
    bar = p.get_by_test_id("step-tasks-progress")
    await expect(bar).to_have_attribute("aria-label", re.compile(rf"^{n} of {n} tasks? done"))
    assert await bar.evaluate("b => [b.value, b.max]") == [n, n]


async def test_a_big_map_counts_live_folds_its_events_and_shows_its_element_errors(
    map_demo: Demo, page: WatchedPage
) -> None:
    p = page.page
    await p.add_init_script(f"({WATCH_LABELS})('square')")
    run_id = await start_run(p, map_demo, "tally")
    node = p.get_by_test_id("node-square")
    await expect(node).to_have_attribute("data-kind", "map")
    await expect(p.get_by_test_id("run-status")).to_have_attribute(
        "data-status", "completed", timeout=RUN_TIMEOUT
    )
    await expect(node).to_have_attribute("data-tasks-done", str(TALLY_WIDTH))
    all_done = re.compile(rf"^{TALLY_WIDTH} / {TALLY_WIDTH}\b")
    await expect(node.locator(".sub")).to_have_text(all_done)
    await expect(node).to_have_attribute("data-tasks-failed", "0")

    # the count moved while the run ran: the node said so along the way, not only at the end
    labels: list[str] = await p.evaluate("window.nodeLabels")
    done = [int(m.group(1)) for label in labels
            if (m := re.search(rf"\b(\d+) of {TALLY_WIDTH} tasks done\b", label))]
    assert done == sorted(done), labels  # it only ever grows
    assert any(0 < d < TALLY_WIDTH for d in done), labels
    assert done[-1] == TALLY_WIDTH

    snapshot = get_json(f"{map_demo.url}/runs/{run_id}")
    flaky = len(range(7, TALLY_WIDTH, FLAKY_EVERY))
    shown = await p.evaluate(FOLDS, "square")
    assert counted(shown["folds"], "task:completed") == TALLY_WIDTH, shown
    assert counted(shown["folds"], "task:retrying") == flaky, shown
    assert counted(shown["folds"], "task:started") == flaky, shown  # each retry claimed
    # every event is in the table, in a handful of rows: thousands of events stay readable
    assert snapshot["seq"] > TALLY_WIDTH + 2 * flaky
    assert shown["rows"] <= 30, shown
    retrying = p.locator('[data-testid="timeline"] tr[data-fold][data-event="task:retrying"]').first
    await expect(retrying).to_contain_text("is flaky")

    # the details: the counts, the bar, the elements' errors with the attempt that failed
    await map_node_details(p, "square", TALLY_WIDTH)
    errors = p.get_by_test_id("step-task-errors")
    await expect(errors.locator("li")).to_have_count(flaky)
    await expect(errors).to_contain_text(
        re.compile(r"task 7, attempt 1 will retry: .*element 7 is flaky"))
    assert get_json(f"{map_demo.url}/runs/{run_id}")["output"] == {
        "count": TALLY_WIDTH, "sum": sum(i * i for i in range(TALLY_WIDTH))}
    await p.screenshot(path=artifact("tally-completed.png"), full_page=True)
    assert page.problems == []


async def test_an_element_that_fails_for_good_fails_the_map_and_shows_on_its_node_and_details(
    map_demo: Demo, page: WatchedPage
) -> None:
    p = page.page
    run_id = await start_run(p, map_demo, "tally", {"n": 40, "fail": 30})
    await expect(p.get_by_test_id("run-status")).to_have_attribute(
        "data-status", "failed", timeout=RUN_TIMEOUT
    )
    node = p.get_by_test_id("node-square")
    await expect(node).to_have_attribute("data-status", "failed")
    await expect(node).to_have_attribute("data-tasks-failed", "1")
    await expect(node.locator(".sub")).to_have_text(re.compile(r"^\d+ / 40 · 1 failed"))
    await expect(node).to_have_attribute("aria-label", re.compile(r"of 40 tasks done, 1 failed"))
    await expect(p.get_by_test_id("node-total")).to_have_attribute("data-status", "cancelled")
    snapshot = get_json(f"{map_demo.url}/runs/{run_id}")
    assert snapshot["error"].startswith("task 30 failed: "), snapshot
    await expect(p.get_by_test_id("run-error")).to_contain_text("task 30 failed")

    await p.get_by_test_id("node-square").click()
    detail = p.get_by_test_id("step-detail")
    await expect(detail).to_contain_text(re.compile(r"\d+ of 40 tasks done, 1 failed"))
    final = p.get_by_test_id("step-task-errors").locator('li[data-final="true"]')
    await expect(final).to_have_count(1)
    await expect(final).to_contain_text(
        re.compile(r"^task 30, attempt 3 failed: .*element 30 cannot be squared"))
    failed_rows = p.locator('[data-testid="timeline"] tr[data-fold][data-event="task:failed"]')
    await expect(failed_rows).to_have_count(1)
    await expect(failed_rows).to_have_attribute("data-count", "1")
    await p.screenshot(path=artifact("tally-failed.png"), full_page=True)
    assert page.problems == []
