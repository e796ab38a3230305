"""The live page in a real Chromium, against a real `pgflow demo` process."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from playwright.async_api import Page, expect

from e2e.conftest import Demo, WatchedPage, artifact

RUN_TIMEOUT = 30_000  # ms: the whole run, retries included
DIAMOND_STEPS = ("fetch", "summarize", "count_words", "report")


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


async def open_run(page: Page, demo: Demo, flow: str) -> str:
    await page.goto(demo.url + "/")
    picker = page.get_by_test_id("flow-select")
    await expect(picker).to_be_enabled()
    await picker.select_option(flow)
    await page.get_by_test_id("run-button").click()
    await expect(page.get_by_test_id("run-status")).to_be_visible()
    await page.wait_for_url("**/?run=*")
    run_id = page.url.split("run=")[1].split("&")[0]
    assert len(run_id) == 36
    return run_id


async def test_running_the_diamond_from_the_page_completes_every_node_and_shows_its_output(
    demo: Demo, page: WatchedPage
) -> None:
    run_id = await open_run(page.page, demo, "diamond")
    status = page.page.get_by_test_id("run-status")
    await expect(status).to_have_attribute("data-status", "completed", timeout=RUN_TIMEOUT)
    for slug in DIAMOND_STEPS:
        await expect(page.page.get_by_test_id(f"node-{slug}")).to_have_attribute(
            "data-status", "completed"
        )
    snapshot = get_json(f"{demo.url}/runs/{run_id}")
    shown = json.loads(await page.page.get_by_test_id("run-output").inner_text())
    assert shown == snapshot["output"]
    rows = page.page.get_by_test_id("timeline").locator("[data-event]")
    seqs = [int(s) for s in await rows.evaluate_all("rows => rows.map(r => r.dataset.seq)")]
    assert sorted(seqs) == list(range(1, snapshot["seq"] + 1))
    await page.page.screenshot(path=artifact("diamond-completed.png"), full_page=True)
    assert page.problems == []


async def test_the_failing_flow_marks_the_failed_node_and_shows_the_error(
    demo: Demo, page: WatchedPage
) -> None:
    run_id = await open_run(page.page, demo, "doomed")
    await expect(page.page.get_by_test_id("run-status")).to_have_attribute(
        "data-status", "failed", timeout=RUN_TIMEOUT
    )
    await expect(page.page.get_by_test_id("node-launch")).to_have_attribute("data-status", "failed")
    await expect(page.page.get_by_test_id("node-celebrate")).to_have_attribute(
        "data-status", "cancelled"
    )
    error = get_json(f"{demo.url}/runs/{run_id}")["error"]
    await expect(page.page.get_by_test_id("run-error")).to_be_visible()
    await expect(page.page.get_by_test_id("run-error")).to_contain_text(error)
    await page.page.screenshot(path=artifact("doomed-failed.png"), full_page=True)
    assert page.problems == []


# Every label node-charge takes, in order (its aria-label says the status and the attempt).
WATCH_CHARGE = """{
  window.chargeLabels = [];
  const seen = (label) => {
    if (label && window.chargeLabels.at(-1) !== label) window.chargeLabels.push(label);
  };
  new MutationObserver(() => {
    seen(document.querySelector('[data-testid="node-charge"]')?.getAttribute("aria-label"));
  }).observe(document, { subtree: true, childList: true, attributes: true,
                         attributeFilter: ["aria-label"] });
}"""


async def test_the_retry_flow_shows_its_attempts(demo: Demo, page: WatchedPage) -> None:
    await page.page.add_init_script(WATCH_CHARGE)
    await open_run(page.page, demo, "flaky")
    await expect(page.page.get_by_test_id("run-status")).to_have_attribute(
        "data-status", "completed", timeout=RUN_TIMEOUT
    )
    charge = page.page.get_by_test_id("node-charge")
    await expect(charge).to_have_attribute("data-status", "completed")
    await expect(charge).to_have_attribute("data-attempt", "3")
    retries = page.page.get_by_test_id("timeline").locator('[data-event="step:retrying"]')
    await expect(retries).to_have_count(2)
    # Each backoff shows as waiting to retry; each retry, once a worker runs it (its own
    # step:started), as running that attempt.
    phases: list[str] = []
    for label in await page.page.evaluate("window.chargeLabels"):
        status, *facts = label.split(", ")
        phase = " ".join([status, *(f for f in facts if f.startswith("attempt "))])
        waiting = status in ("charge: not started", "charge: waiting")  # before it ran
        if not waiting and (not phases or phases[-1] != phase):
            phases.append(phase)
    assert phases == [
        "charge: running",
        "charge: waiting to retry attempt 1 of 4 failed",
        "charge: running attempt 2 of 4",
        "charge: waiting to retry attempt 2 of 4 failed",
        "charge: running attempt 3 of 4",
        "charge: completed attempt 3 of 4",
    ], phases
    assert page.problems == []


async def test_reloading_a_run_url_mid_run_catches_up_and_finishes(
    demo: Demo, page: WatchedPage
) -> None:
    run_id = await open_run(page.page, demo, "fanout")
    # mid-run: the first branch has finished, the join has not
    await expect(page.page.get_by_test_id("node-split")).to_have_attribute(
        "data-status", "completed", timeout=RUN_TIMEOUT
    )
    assert get_json(f"{demo.url}/runs/{run_id}")["status"] == "started"
    await page.page.reload()
    assert f"run={run_id}" in page.page.url
    await expect(page.page.get_by_test_id("run-status")).to_have_attribute(
        "data-status", "completed", timeout=RUN_TIMEOUT
    )
    await expect(page.page.get_by_test_id("node-total")).to_have_attribute(
        "data-status", "completed"
    )
    snapshot = get_json(f"{demo.url}/runs/{run_id}")
    rows = page.page.get_by_test_id("timeline").locator("[data-event]")
    seqs = [int(s) for s in await rows.evaluate_all("rows => rows.map(r => r.dataset.seq)")]
    assert sorted(seqs) == list(range(1, snapshot["seq"] + 1))  # each event once
    assert page.problems == []


async def test_the_page_is_usable_at_phone_width_and_by_keyboard(
    demo: Demo, page: WatchedPage
) -> None:
    await page.page.set_viewport_size({"width": 390, "height": 844})
    await page.page.goto(demo.url + "/")
    picker = page.page.get_by_test_id("flow-select")
    await expect(picker).to_be_enabled()
    await picker.focus()
    await picker.select_option("diamond")
    await page.page.get_by_test_id("input-editor").focus()
    await page.page.keyboard.press("Control+Enter")
    await expect(page.page.get_by_test_id("run-status")).to_have_attribute(
        "data-status", "completed", timeout=RUN_TIMEOUT
    )
    width = await page.page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390  # nothing forces horizontal scrolling of the page
    await page.page.screenshot(path=artifact("diamond-phone.png"), full_page=True)
    assert page.problems == []


async def test_bad_json_input_is_refused_inline_without_starting_a_run(
    demo: Demo, page: WatchedPage
) -> None:
    await page.page.goto(demo.url + "/")
    await expect(page.page.get_by_test_id("flow-select")).to_be_enabled()
    before = get_json(f"{demo.url}/runs?limit=100")
    await page.page.get_by_test_id("input-editor").fill("{not json")
    await page.page.get_by_test_id("run-button").click()
    await expect(page.page.get_by_test_id("input-error")).to_be_visible()
    assert get_json(f"{demo.url}/runs?limit=100") == before
    assert page.problems == []
