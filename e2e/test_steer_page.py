"""Steering runs from the live page, in a real Chromium against a real `pgflow demo` process:
answering an input step, cancelling a run, retrying it, and an answer the server refuses.

The demo serves the example flows (`approval` among them) and `shipment`, defined here: an
input step whose schema is an object of simple fields, so the page draws a form of labelled
inputs (the demo process loads it with ``--flows e2e.test_steer_page:shipment``).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from playwright.async_api import Page, expect

from e2e.conftest import Demo, WatchedPage, artifact, demo_with_flows, get_json
from pgflow import Flow
from tests.integration.worker_helpers import step_of

RUN_TIMEOUT = 30_000  # ms: a whole run

# -- a flow with an object-schema input step (loaded by the demo process, not by the tests) ------

SHIPMENT_SCHEMA = {
    "type": "object",
    "title": "How should it ship?",
    "required": ["carrier", "parcels"],
    "properties": {
        "carrier": {"enum": ["dhl", "ups"], "title": "Carrier"},
        "parcels": {"type": "integer", "minimum": 1, "title": "Parcels"},
        "note": {"type": "string", "title": "Note"},
        "fragile": {"type": "boolean", "title": "Fragile"},
    },
}

shipment = Flow(
    "shipment",
    description="Packs an order, then asks a person how to ship it.",
    example_input={"order": 42},
)


@shipment.step()
async def pack(input: dict[str, Any]) -> dict[str, Any]:
    return {"order": input["run"].get("order"), "boxes": 2}


ship = shipment.input_step("ship", depends_on=[pack], schema=SHIPMENT_SCHEMA, timeout=3600)


@shipment.step(depends_on=[ship], output=True)
async def label(input: dict[str, Any]) -> dict[str, Any]:
    return {"shipping": input["ship"]}


# -- harness ------------------------------------------------------------------------------------


@pytest.fixture
async def steer_demo(db_url: str) -> AsyncIterator[Demo]:
    async with demo_with_flows(db_url, "e2e.test_steer_page:shipment") as running:
        yield running


async def start_run(page: Page, demo: Demo, flow: str) -> str:
    await page.goto(demo.url + "/")
    picker = page.get_by_test_id("flow-select")
    await expect(picker).to_be_enabled()
    await picker.select_option(flow)
    await page.get_by_test_id("run-button").click()
    await page.wait_for_url("**/?run=*")
    return page.url.split("run=")[1].split("&")[0]


async def wait_for_question(page: Page, slug: str) -> None:
    """The input step waits, and its details (selected for the person watching) show the form."""
    await expect(page.get_by_test_id(f"node-{slug}")).to_have_attribute(
        "data-status", "waiting", timeout=RUN_TIMEOUT
    )
    await expect(page.get_by_test_id("input-request")).to_be_visible()


# -- tests ----------------------------------------------------------------------------------------


async def test_approving_the_input_step_from_the_page_completes_the_run(
    steer_demo: Demo, page: WatchedPage
) -> None:
    p = page.page
    run_id = await start_run(p, steer_demo, "approval")
    await wait_for_question(p, "approve")
    approve = p.get_by_test_id("node-approve")
    await expect(approve).to_have_attribute(
        "aria-label", re.compile(r"^approve: waiting for input")
    )
    await expect(p.get_by_test_id("run-status")).to_have_attribute("data-status", "started")
    await expect(p.get_by_test_id("run-status")).to_have_text("Waiting for input")
    # what is being approved: the step's input, the draft's output in it
    snapshot = get_json(f"{steer_demo.url}/runs/{run_id}")
    shown = json.loads(await p.get_by_test_id("step-input").inner_text())
    assert shown["draft"] == step_of(snapshot, "draft")["output"]
    await expect(p.get_by_test_id("input-request")).to_contain_text("Publish this draft?")
    await p.screenshot(path=artifact("approval-waiting.png"), full_page=True)

    await p.get_by_role("button", name="Approve", exact=True).click()
    await expect(p.get_by_test_id("run-status")).to_have_attribute(
        "data-status", "completed", timeout=RUN_TIMEOUT
    )
    await expect(approve).to_have_attribute("data-status", "completed")
    await expect(p.get_by_test_id("node-publish")).to_have_attribute("data-status", "completed")
    await expect(p.get_by_test_id("input-request")).to_have_count(0)  # answered: the form went
    snapshot = get_json(f"{steer_demo.url}/runs/{run_id}")
    assert step_of(snapshot, "approve")["output"] is True
    assert json.loads(await p.get_by_test_id("run-output").inner_text()) == snapshot["output"]
    assert page.problems == []


async def test_a_waiting_run_cancelled_from_the_page_can_be_retried_and_runs_again(
    steer_demo: Demo, page: WatchedPage
) -> None:
    p = page.page
    run_id = await start_run(p, steer_demo, "approval")
    await wait_for_question(p, "approve")
    cancel = p.get_by_role("button", name="Cancel run")
    retry = p.get_by_role("button", name="Retry run")
    await expect(retry).to_be_hidden()

    await cancel.click()
    status = p.get_by_test_id("run-status")
    await expect(status).to_have_attribute("data-status", "cancelled", timeout=RUN_TIMEOUT)
    await expect(status).to_have_text("Cancelled")
    await expect(p.get_by_test_id("node-draft")).to_have_attribute("data-status", "completed")
    for slug in ("approve", "publish"):
        await expect(p.get_by_test_id(f"node-{slug}")).to_have_attribute("data-status", "cancelled")
    await expect(cancel).to_be_hidden()
    await expect(retry).to_be_visible()
    await expect(p.get_by_test_id("run-cancelled")).to_be_visible()
    await expect(p.get_by_test_id("run-action")).to_contain_text("Cancelled")
    await expect(p.get_by_test_id("input-request")).to_have_count(0)
    recent = p.get_by_test_id("recent-runs").locator(f'a[data-run-id="{run_id}"]')
    await expect(recent).to_have_attribute("data-status", "cancelled")
    await expect(recent).to_contain_text("Cancelled")
    assert get_json(f"{steer_demo.url}/runs/{run_id}")["status"] == "cancelled"
    await p.screenshot(path=artifact("approval-cancelled.png"), full_page=True)

    await retry.click()
    # the page follows the run again: re-queued, the input step asks anew
    await expect(status).to_have_attribute("data-status", "started", timeout=RUN_TIMEOUT)
    await wait_for_question(p, "approve")
    await expect(p.get_by_test_id("timeline").locator('[data-event="run:retried"]')).to_have_count(
        1
    )
    await expect(retry).to_be_hidden()
    await expect(cancel).to_be_visible()
    await expect(p.get_by_test_id("run-cancelled")).to_be_hidden()
    await expect(recent).to_have_attribute("data-status", "started")

    await p.get_by_role("button", name="Reject", exact=True).click()
    await expect(status).to_have_attribute("data-status", "completed", timeout=RUN_TIMEOUT)
    await expect(p.get_by_test_id("node-publish")).to_have_attribute("data-status", "completed")
    snapshot = get_json(f"{steer_demo.url}/runs/{run_id}")
    assert snapshot["status"] == "completed"
    assert step_of(snapshot, "approve")["output"] is False
    rows = p.get_by_test_id("timeline").locator("[data-event]")
    seqs = [int(s) for s in await rows.evaluate_all("rows => rows.map(r => r.dataset.seq)")]
    assert seqs == list(range(1, snapshot["seq"] + 1))  # every event once, in order
    assert page.problems == []


async def test_an_object_form_shows_the_servers_refusal_by_its_field_then_takes_the_answer(
    steer_demo: Demo, page: WatchedPage
) -> None:
    p = page.page
    run_id = await start_run(p, steer_demo, "shipment")
    await wait_for_question(p, "ship")
    form = p.get_by_test_id("input-form")
    await expect(form).to_contain_text("How should it ship?")
    submit = p.get_by_role("button", name="Submit", exact=True)

    # the page's own check: a required field left empty, said next to it
    await submit.click()
    carrier = p.get_by_label("Carrier")
    await expect(carrier).to_have_attribute("aria-invalid", "true")
    await expect(form).to_contain_text("Required.")
    await expect(carrier).to_be_focused()

    # the server's: 0 parcels is below the schema's minimum (a check only the server makes)
    await carrier.select_option(label="ups")
    parcels = p.get_by_label("Parcels")
    await parcels.fill("0")
    await p.get_by_label("Note").fill("handle with care")
    await p.get_by_label("Fragile").check()
    await submit.click()
    await expect(parcels).to_have_attribute("aria-invalid", "true")
    await expect(p.get_by_test_id("input-outcome")).to_have_text(
        "The answer does not fit what the step asks: see what is marked above."
    )
    refusal = await p.locator(f"#{await parcels.get_attribute('aria-describedby')}").inner_text()
    assert "1" in refusal, refusal  # the server's message about the minimum
    await expect(p.get_by_label("Note")).to_have_value("handle with care")  # what was typed stays
    assert get_json(f"{steer_demo.url}/runs/{run_id}")["status"] == "started"
    await p.screenshot(path=artifact("shipment-refused.png"), full_page=True)

    await parcels.fill("3")
    await submit.click()
    await expect(p.get_by_test_id("run-status")).to_have_attribute(
        "data-status", "completed", timeout=RUN_TIMEOUT
    )
    answer = {"carrier": "ups", "parcels": 3, "note": "handle with care", "fragile": True}
    assert step_of(get_json(f"{steer_demo.url}/runs/{run_id}"), "ship")["output"] == answer
    assert json.loads(await p.get_by_test_id("run-output").inner_text()) == {"shipping": answer}
    # Chromium logs each 4xx answer to fetch as a console error: the one refusal, and only it
    refused = "Failed to load resource: the server responded with a status of 400"
    assert [m for m in page.problems if refused not in m] == [], page.problems


async def test_a_failed_run_retried_from_the_page_runs_its_failed_step_again(
    steer_demo: Demo, page: WatchedPage
) -> None:
    p = page.page
    run_id = await start_run(p, steer_demo, "doomed")
    status = p.get_by_test_id("run-status")
    await expect(status).to_have_attribute("data-status", "failed", timeout=RUN_TIMEOUT)
    await expect(p.get_by_role("button", name="Cancel run")).to_be_hidden()
    retry = p.get_by_role("button", name="Retry run")
    await retry.click()
    # the failed step runs again (its attempts afresh), then fails the run again
    timeline = p.get_by_test_id("timeline")
    await expect(timeline.locator('[data-event="run:retried"]')).to_have_count(1)
    await expect(timeline.locator('[data-event="run:failed"]')).to_have_count(
        2, timeout=RUN_TIMEOUT
    )
    await expect(status).to_have_attribute("data-status", "failed")
    await expect(p.get_by_test_id("node-check")).to_have_attribute("data-status", "completed")
    await expect(p.get_by_test_id("node-launch")).to_have_attribute("data-status", "failed")
    await expect(p.get_by_test_id("node-celebrate")).to_have_attribute("data-status", "cancelled")
    await expect(p.get_by_test_id("run-error")).to_be_visible()
    await expect(retry).to_be_visible()
    snapshot = get_json(f"{steer_demo.url}/runs/{run_id}")
    started = await timeline.locator('[data-event="step:started"][data-step="check"]').count()
    assert started == 1  # a completed step keeps its output: it does not run again
    rows = timeline.locator("[data-event]")
    seqs = [int(s) for s in await rows.evaluate_all("rows => rows.map(r => r.dataset.seq)")]
    assert seqs == list(range(1, snapshot["seq"] + 1))
    assert page.problems == []


async def test_an_answer_the_gateway_says_came_too_late_is_said_so_and_the_form_stays(
    steer_demo: Demo, page: WatchedPage
) -> None:
    p = page.page
    run_id = await start_run(p, steer_demo, "approval")
    await wait_for_question(p, "approve")
    # The gateway's 409 for a step no longer waiting (answered in another tab, say): stood in
    # for here, so that the step still waits when it comes.
    path = f"**/runs/{run_id}/steps/approve/input"
    conflict = {"error": {"code": "conflict", "message": "step 'approve' is not waiting"}}
    await p.route(path, lambda route: route.fulfill(status=409, json=conflict))
    await p.get_by_role("button", name="Approve", exact=True).click()
    await expect(p.get_by_test_id("input-outcome")).to_have_text(
        "This step was already answered (or no longer waits for input)."
    )
    await expect(p.get_by_role("button", name="Approve", exact=True)).to_be_enabled()
    assert get_json(f"{steer_demo.url}/runs/{run_id}")["status"] == "started"

    await p.unroute(path)
    await p.get_by_role("button", name="Approve", exact=True).click()
    await expect(p.get_by_test_id("run-status")).to_have_attribute(
        "data-status", "completed", timeout=RUN_TIMEOUT
    )
    conflict_logged = "Failed to load resource: the server responded with a status of 409"
    assert [m for m in page.problems if conflict_logged not in m] == [], page.problems


async def test_steering_fits_a_phone_and_works_by_keyboard(
    steer_demo: Demo, page: WatchedPage
) -> None:
    p = page.page
    await p.set_viewport_size({"width": 390, "height": 844})
    await start_run(p, steer_demo, "approval")
    await wait_for_question(p, "approve")
    approve = p.get_by_role("button", name="Approve", exact=True)
    await approve.focus()
    await p.screenshot(path=artifact("approval-phone.png"), full_page=True)
    assert await p.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scroll
    await p.keyboard.press("Enter")
    await expect(p.get_by_test_id("run-status")).to_have_attribute(
        "data-status", "completed", timeout=RUN_TIMEOUT
    )
    await expect(p.get_by_role("button", name="Retry run")).to_be_hidden()
    assert page.problems == []
