"""The live page in a real Chromium, against a real `pgflow demo` process."""

from __future__ import annotations

import json
import re
from typing import Any

from playwright.async_api import Page, expect

from e2e.conftest import Demo, WatchedPage, artifact, get_json

RUN_TIMEOUT = 30_000  # ms: the whole run, retries included
DIAMOND_STEPS = ("fetch", "summarize", "count_words", "report")


async def open_run(page: Page, demo: Demo, flow: str, input: Any = None) -> str:
    await page.goto(demo.url + "/")
    picker = page.get_by_test_id("flow-select")
    await expect(picker).to_be_enabled()
    await picker.select_option(flow)
    if input is not None:
        await page.get_by_test_id("input-editor").fill(json.dumps(input))
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


# What the step details' stream text of node-write shows, each time it or the node changes:
# its length, and the node's status and streaming mark at that moment.
WATCH_STREAM = """{
  window.streamSeen = [];
  const record = () => {
    const text = document.querySelector('[data-testid="step-stream-text"]');
    const node = document.querySelector('[data-testid="node-write"]');
    if (!text || !node) return;
    const seen = { len: text.textContent.length, status: node.dataset.status,
                   streaming: node.dataset.streaming === "true" };
    const last = window.streamSeen.at(-1);
    const same = last && ["len", "status", "streaming"].every((k) => last[k] === seen[k]);
    if (!same) window.streamSeen.push(seen);
  };
  new MutationObserver(record).observe(document, {
    subtree: true, childList: true, characterData: true,
    attributes: true, attributeFilter: ["data-status", "data-streaming"],
  });
}"""

# Resolves with the text lengths seen while node-write was running and streaming, once `count`
# different ones were.
GREW_WHILE_STREAMING = """(count) => {
  const lengths = [...new Set(window.streamSeen
    .filter((s) => s.status === "started" && s.streaming).map((s) => s.len))];
  return lengths.length >= count ? lengths : null;
}"""

STREAM_TEXT_LENGTH = """() =>
  document.querySelector('[data-testid="step-stream-text"]')?.textContent.length ?? 0"""


async def stream_text(page: Page) -> str:
    return await page.get_by_test_id("step-stream-text").text_content() or ""


async def test_the_story_streams_into_the_write_node_and_its_details(
    demo: Demo, page: WatchedPage
) -> None:
    await page.page.add_init_script(WATCH_STREAM)
    run_id = await open_run(page.page, demo, "story")
    write = page.page.get_by_test_id("node-write")
    await expect(write).to_have_attribute("data-streaming", "true", timeout=RUN_TIMEOUT)
    await write.click()
    details = page.page.get_by_test_id("step-detail")
    # The text grows at least twice while the node is running and marked streaming.
    grew = await page.page.wait_for_function(GREW_WHILE_STREAMING, arg=3, timeout=RUN_TIMEOUT)
    lengths = await grew.json_value()
    assert lengths == sorted(lengths), lengths
    assert lengths[0] > 0, lengths
    label = page.page.get_by_test_id("step-stream-label")
    await expect(label).to_contain_text("Streaming, attempt 1")

    await expect(page.page.get_by_test_id("run-status")).to_have_attribute(
        "data-status", "completed", timeout=RUN_TIMEOUT
    )
    await expect(write).to_have_attribute("data-status", "completed")
    await expect(write).not_to_have_attribute("data-streaming", "true")
    await expect(label).to_contain_text("Streamed, attempt 1")
    await expect(page.page.get_by_test_id("step-stream-text")).not_to_have_attribute(
        "aria-busy", "true"
    )
    story = get_json(f"{demo.url}/runs/{run_id}")["output"]["story"]
    assert await stream_text(page.page) == story
    assert json.loads(await page.page.get_by_test_id("run-output").inner_text())["story"] == story
    await expect(details).to_contain_text("Output")
    # every length seen only grew, up to the whole story
    seen = await page.page.evaluate("window.streamSeen")
    assert [s["len"] for s in seen] == sorted(s["len"] for s in seen), seen
    assert seen[-1]["len"] == len(story)
    # each step:stream row of the events table sums up its chunks
    rows = page.page.get_by_test_id("timeline").locator('[data-event="step:stream"] td.details')
    summaries = await rows.all_inner_texts()
    assert summaries, "no step:stream row"
    # (write's words; plan's log records, the story flow streaming its logs)
    assert all(re.fullmatch(r'\d+ chunks? · ".*|\d+ log lines? · INFO: .*', text)
               for text in summaries), summaries
    await page.page.screenshot(path=artifact("story-completed.png"), full_page=True)
    assert page.problems == []


async def test_reloading_mid_stream_catches_up_and_keeps_streaming(
    demo: Demo, page: WatchedPage
) -> None:
    await page.page.add_init_script(WATCH_STREAM)
    # a longer hero, so the story streams for a few seconds: time to reload in the middle
    hero = "a lighthouse keeper who " + "had seen storms and calm seas and " * 8 + "never slept"
    run_id = await open_run(page.page, demo, "story", {"hero": hero, "place": "a windy island"})
    write = page.page.get_by_test_id("node-write")
    await expect(write).to_have_attribute("data-streaming", "true", timeout=RUN_TIMEOUT)
    await write.click()
    await page.page.wait_for_function(f"({STREAM_TEXT_LENGTH})() > 0", timeout=RUN_TIMEOUT)
    before = await page.page.evaluate(STREAM_TEXT_LENGTH)
    await page.page.screenshot(path=artifact("story-streaming.png"), full_page=True)
    assert get_json(f"{demo.url}/runs/{run_id}")["status"] == "started"

    await page.page.reload()
    assert f"run={run_id}" in page.page.url
    await page.page.get_by_test_id("node-write").click(timeout=RUN_TIMEOUT)
    # caught up from the log with at least what was shown, then still growing while streaming
    await page.page.wait_for_function(
        f"(before) => ({STREAM_TEXT_LENGTH})() >= before", arg=before, timeout=RUN_TIMEOUT
    )
    grew = await page.page.wait_for_function(GREW_WHILE_STREAMING, arg=2, timeout=RUN_TIMEOUT)
    assert (await grew.json_value())[-1] > before
    await expect(page.page.get_by_test_id("run-status")).to_have_attribute(
        "data-status", "completed", timeout=RUN_TIMEOUT
    )
    snapshot = get_json(f"{demo.url}/runs/{run_id}")
    assert await stream_text(page.page) == snapshot["output"]["story"]
    assert hero in snapshot["output"]["story"]
    rows = page.page.get_by_test_id("timeline").locator("[data-event]")
    seqs = [int(s) for s in await rows.evaluate_all("rows => rows.map(r => r.dataset.seq)")]
    assert sorted(seqs) == list(range(1, snapshot["seq"] + 1))  # each event once
    assert page.problems == []


# The page's step details, driven in the browser by the client's own FlowRun fed events by hand:
# a retry that streams, and chunks that are not strings (no example flow does either).
DETAILS_THROUGH_A_RETRY = """async () => {
  const at = (path) => import(new URL(path, document.baseURI).href);
  const { FlowRun } = await at("client/run.js");
  const { stepDetail, updateStream } = await at("static/panels.js");
  const { stepStream } = await at("static/state.js");
  const host = { request: async () => ({}), loadGraph: async () => ({}), release: () => {} };
  const run = new FlowRun(host, "r", "story");
  const body = document.createElement("div");
  const shown = (selector) => body.querySelector(selector)?.textContent ?? null;
  const seen = [];
  let seq = 0;
  const apply = (event, fields) => {
    const at = new Date().toISOString();
    run._apply({ seq: ++seq, run_id: "r", event, step_slug: "write", at, ...fields });
    const state = run.step("write");
    const inPlace = updateStream(body, stepStream(state));
    if (!inPlace) {
      const options = { max_attempts: 3 };
      body.replaceChildren(stepDetail({ slug: "write", options, state, timing: null, now: 0 }));
    }
    seen.push({
      event, inPlace, badge: shown(".badge"), note: shown(".stream .muted"),
      label: shown('[data-testid="step-stream-label"]'),
      text: shown('[data-testid="step-stream-text"]'),
      value: JSON.parse(shown('[data-testid="step-stream-value"]') ?? "null"),
    });
  };
  apply("step:started", { attempt: 1 });
  apply("step:stream", { attempt: 1, chunks: ["Once", " upon"] });
  apply("step:stream", { attempt: 1, chunks: [" a"] });
  apply("step:retrying", { attempt: 1, error: "boom" });
  apply("step:started", { attempt: 2 });
  apply("step:stream", { attempt: 2, chunks: [{ progress: 0.1 }] });
  apply("step:stream", { attempt: 2, chunks: [{ progress: 0.6 }] });
  apply("step:stream", { attempt: 2, chunks: ["Twice"] });
  apply("step:completed", { attempt: 2, output: { story: "Twice" } });
  return seen;
}"""


async def test_the_step_details_show_a_retry_s_stream_in_place_of_the_failed_one(
    demo: Demo, page: WatchedPage
) -> None:
    await page.page.goto(demo.url + "/")
    await expect(page.page.get_by_test_id("flow-select")).to_be_enabled()
    seen = await page.page.evaluate(DETAILS_THROUGH_A_RETRY)
    assert [s["event"] for s in seen] == [
        "step:started",
        "step:stream",
        "step:stream",
        "step:retrying",
        "step:started",
        "step:stream",
        "step:stream",
        "step:stream",
        "step:completed",
    ]
    # the text grows in place while its attempt streams; anything else draws the details anew
    in_place = [i for i, s in enumerate(seen) if s["inPlace"]]
    assert in_place == [2, 6]
    assert [s["badge"] for s in seen] == [
        "running",
        "streaming",
        "streaming",
        "waiting to retry",
        "running",
        "streaming",
        "streaming",
        "streaming",
        "completed",
    ]
    assert [s["label"] for s in seen] == [
        None,
        "Streaming, attempt 1 · 2 chunks",
        "Streaming, attempt 1 · 3 chunks",
        "Streamed, attempt 1 · 3 chunks",
        "Streamed, attempt 1 · 3 chunks",  # attempt 2 runs, and has not streamed yet
        "Streaming, attempt 2 · 1 chunk",
        "Streaming, attempt 2 · 2 chunks",
        "Streaming, attempt 2 · 3 chunks",
        "Streamed, attempt 2 · 3 chunks",
    ]
    # the failed attempt's text until the retry streams, then the retry's own
    once, twice = "Once upon a", "Twice"
    texts = [s["text"] for s in seen]
    assert texts == [None, "Once upon", once, once, once, None, None, twice, twice]
    # the latest chunk that is not a string, as JSON
    low, high = {"progress": 0.1}, {"progress": 0.6}
    assert [s["value"] for s in seen] == [None, None, None, None, None, low, high, high, high]
    assert "attempt 1, which failed" in seen[4]["note"]
    assert page.problems == []


async def test_the_story_s_plan_shows_what_it_logged_as_log_lines(
    demo: Demo, page: WatchedPage
) -> None:
    # the demo runs at --log-level warning; the example's logger sets INFO for itself
    story = {"hero": "a lighthouse keeper", "place": "a windy island"}
    run_id = await open_run(page.page, demo, "story", story)
    plan = page.page.get_by_test_id("node-plan")
    await expect(plan).to_have_attribute("data-status", "completed", timeout=RUN_TIMEOUT)
    await plan.click()
    lines = page.page.get_by_test_id("step-log-line")
    await expect(lines).to_have_count(2)
    await expect(lines.locator(".log-level")).to_have_text(["INFO", "INFO"])
    await expect(lines.locator(".log-message")).to_have_text([
        "planning a story about a lighthouse keeper",
        "the story takes place on a windy island",
    ])
    await expect(lines.locator(".log-logger")).to_have_text(["examples.flows"] * 2)
    for line in await lines.all():
        await expect(line).to_have_attribute("data-level", "INFO")
    await expect(page.page.get_by_test_id("step-log-label")).to_have_text("2 log lines")
    await expect(page.page.get_by_test_id("step-stream-label")).to_contain_text(
        "Streamed, attempt 1"
    )
    # log records are neither text nor a latest value
    await expect(page.page.get_by_test_id("step-stream-text")).to_have_count(0)
    await expect(page.page.get_by_test_id("step-stream-value")).to_have_count(0)
    # plan's step:stream rows of the events table sum up their log lines
    rows = page.page.get_by_test_id("timeline").locator(
        '[data-event="step:stream"][data-step="plan"] td.details'
    )
    await expect(rows.first).to_be_visible()
    summaries = await rows.all_inner_texts()
    assert all(re.fullmatch(r"\d+ log lines? · INFO: .+", text) for text in summaries), summaries
    assert summaries[0].endswith("· INFO: planning a story about a lighthouse keeper"), summaries
    await expect(page.page.get_by_test_id("run-status")).to_have_attribute(
        "data-status", "completed", timeout=RUN_TIMEOUT
    )
    assert get_json(f"{demo.url}/runs/{run_id}")["status"] == "completed"
    await page.page.screenshot(path=artifact("story-plan-log.png"), full_page=True)
    assert page.problems == []


# The step details of a step that logs, driven in the browser by the client's FlowRun fed events
# by hand: lines added in place, warnings and errors coloured apart, at most 200 lines drawn.
DETAILS_OF_A_STEP_THAT_LOGS = """async () => {
  const at = (path) => import(new URL(path, document.baseURI).href);
  const { FlowRun } = await at("client/run.js");
  const { stepDetail, updateStream } = await at("static/panels.js");
  const { stepStream } = await at("static/state.js");
  const host = { request: async () => ({}), loadGraph: async () => ({}), release: () => {} };
  const run = new FlowRun(host, "r", "story");
  const body = document.getElementById("step-detail-body"); // styled like the page's
  const log = (level, message) => ({ level, logger: "app", message });
  const seen = [];
  let seq = 0;
  const apply = (event, fields) => {
    const at = new Date().toISOString();
    run._apply({ seq: ++seq, run_id: "r", event, step_slug: "plan", at, ...fields });
    const state = run.step("plan");
    const inPlace = updateStream(body, stepStream(state));
    const ctx = { slug: "plan", options: {}, state, timing: null, now: 0 };
    if (!inPlace) body.replaceChildren(stepDetail(ctx));
    const lines = [...body.querySelectorAll('[data-testid="step-log-line"]')];
    const colour = (level) => {
      const line = lines.find((l) => l.dataset.level === level);
      return line ? getComputedStyle(line.querySelector(".log-level")).color : null;
    };
    seen.push({
      inPlace, count: lines.length,
      first: lines[0]?.textContent ?? null, last: lines.at(-1)?.textContent ?? null,
      label: body.querySelector('[data-testid="step-log-label"]')?.textContent ?? null,
      text: body.querySelector('[data-testid="step-stream-text"]')?.textContent ?? null,
      colours: { INFO: colour("INFO"), WARNING: colour("WARNING"), ERROR: colour("ERROR") },
    });
  };
  apply("step:started", { attempt: 1 });
  apply("step:stream", { attempt: 1, chunks: [log("INFO", "one")] });
  apply("step:stream", { attempt: 1, chunks: [log("WARNING", "two"), "Once"] });
  apply("step:stream", { attempt: 1, chunks: [log("ERROR", "three"), " upon"] });
  const many = Array.from({ length: 250 }, (_, i) => log("INFO", `n${i}`));
  apply("step:stream", { attempt: 1, chunks: many });
  apply("step:completed", { attempt: 1, output: {} });
  body.replaceChildren();
  return seen;
}"""


async def test_the_step_details_draw_log_lines_in_place_and_keep_the_last_200(
    demo: Demo, page: WatchedPage
) -> None:
    await page.page.goto(demo.url + "/")
    await expect(page.page.get_by_test_id("flow-select")).to_be_enabled()
    seen = await page.page.evaluate(DETAILS_OF_A_STEP_THAT_LOGS)
    # the first log line and the first text change the section's shape; the rest is in place
    assert [s["inPlace"] for s in seen] == [False, False, False, True, True, False]
    assert [s["count"] for s in seen] == [0, 1, 2, 3, 200, 200]
    assert seen[3]["first"] == "INFO app one"
    assert seen[3]["last"] == "ERROR app three"
    assert [s["text"] for s in seen[2:]] == ["Once", "Once upon", "Once upon", "Once upon"]
    assert seen[4]["first"] == "INFO app n50"
    assert seen[4]["last"] == "INFO app n249"
    assert seen[4]["label"] == "253 log lines · the last 200 shown"
    assert seen[5] == {**seen[4], "inPlace": False}, "drawn anew, the same"
    colours = seen[3]["colours"]
    assert len(set(colours.values())) == 3, colours  # warnings and errors stand out
    assert page.problems == []
