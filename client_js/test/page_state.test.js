// The live page's state (gateway/static/state.js, pure): entries fed by a run's events, the
// recent runs list merged from GET /runs and this tab's runs, the texts derived from them, and
// what a streamed step shows (from the client's FlowRun, fed events by hand).
import assert from "node:assert/strict";
import { test } from "node:test";

import { FlowRun } from "../client/run.js";
import {
  announcement, answerOf, cancelledText, documentTitle, eventCount, failureTail, LOG_LINES, needsInput, PageState,
  parseInput, problemText, runControls, runStatusLabel, steerOutcome, stepStream,
} from "../../gateway/static/state.js";
import { foldIndices, foldSummary, Timeline } from "../../gateway/static/timeline.js";

const T0 = Date.parse("2026-01-01T00:00:00Z");
const at = (ms) => new Date(T0 + ms).toISOString();

/** A stand-in for the client's FlowRun: only what the page state reads. */
function fakeRun(runId, { flowSlug = "checkout", events = [], status = "started", startedAt = null } = {}) {
  return { runId, flowSlug, events, status, startedAt, graph: null };
}

const FAILED = [
  { seq: 1, event: "run:started", step_slug: null, at: at(0) },
  { seq: 2, event: "step:started", step_slug: "charge", attempt: 1, at: at(10) },
  { seq: 3, event: "step:failed", step_slug: "charge", attempt: 1, error: "declined", at: at(500) },
  { seq: 4, event: "run:failed", step_slug: "charge", attempt: 1, error: "declined", at: at(500) },
];

test("an entry takes in the events its run applied before it was tracked", () => {
  const state = new PageState();
  const entry = state.track(fakeRun("r1", { events: FAILED, status: "failed" }), { local: true });
  assert.equal(state.tracked.get("r1"), entry);
  assert.equal(entry.failedStep, "charge");
  assert.equal(entry.timing.runStart, T0);
  assert.equal(entry.timing.runEnd, T0 + 500);
  assert.equal(entry.timing.steps.get("charge").end, T0 + 500);
  assert.equal(entry.local, true);
  assert.equal(entry.problem, null);
});

test("a live event updates the timing, the failing step and the gateway's clock skew", () => {
  const state = new PageState();
  const entry = state.track(fakeRun("r1"), { flowSlug: "checkout" });
  for (const e of FAILED) state.apply(entry, e, T0 - 2_000); // our clock is 2 s behind
  assert.equal(entry.failedStep, "charge");
  assert.equal(state.skew, 2_500, "the latest event's time, ahead of ours");
  assert.equal(state.serverNow(T0), T0 + 2_500);
  state.apply(entry, { seq: 5, event: "x:new", at: "not a time" }, T0);
  assert.equal(state.skew, 2_500, "an event without a time does not move the clock");
});

test("recent runs: GET /runs merged with this tab's runs, whose live status wins, newest first", () => {
  const state = new PageState();
  state.setListed({
    runs: [
      { run_id: "old", flow_slug: "etl", status: "completed", started_at: at(-60_000) },
      { run_id: "live", flow_slug: "diamond", status: "started", started_at: at(-1_000) },
      { bogus: true },
    ],
  });
  const live = state.track(fakeRun("live", { flowSlug: "diamond", events: FAILED, status: "failed", startedAt: at(-1_000) }));
  state.track(fakeRun("mine", { startedAt: at(5_000) }), { local: true });
  state.track(fakeRun("typo", { flowSlug: null }), { openedAt: at(9_000) }); // a bad id from the URL
  assert.deepEqual(state.recentRows().map((r) => [r.runId, r.status]), [
    ["mine", "started"], ["live", "failed"], ["old", "completed"],
  ]);
  state.current = state.tracked.get("typo");
  state.current.problem = { code: "not_found" };
  assert.deepEqual(state.recentRows()[0], { runId: "typo", flow: "…", status: "unknown", startedAt: at(9_000) });
  assert.equal(state.recentRows(2).length, 2);
  assert.equal(live.flowSlug, "diamond");
});

test("a followed run with no events yet shows GET /runs's status", () => {
  const state = new PageState();
  state.setListed([{ run_id: "r", flow_slug: "etl", status: "completed", started_at: at(0) }]);
  state.track(fakeRun("r", { flowSlug: null }), { flowSlug: "etl" });
  assert.deepEqual(state.recentRows(), [{ runId: "r", flow: "etl", status: "completed", startedAt: at(0) }]);
});

test("step options come from the open run's graph, else from the previewed flow", () => {
  const state = new PageState();
  state.setFlows([{ slug: "etl", steps: [{ slug: "extract", max_attempts: 2 }] }, null]);
  assert.deepEqual([...state.flows.keys()], ["etl"]);
  assert.equal(state.stepOptions("extract", "etl").max_attempts, 2);
  assert.equal(state.stepOptions("nope", "etl"), null);
  const run = fakeRun("r");
  run.graph = { slug: "x", steps: [{ slug: "extract", max_attempts: 5 }] };
  state.current = state.track(run);
  assert.equal(state.stepOptions("extract", "etl").max_attempts, 5);
});

test("input parsing: empty is {}, bad JSON says why", () => {
  assert.deepEqual(parseInput("  "), { ok: true, value: {} });
  assert.deepEqual(parseInput('{"n": 1}'), { ok: true, value: { n: 1 } });
  const bad = parseInput("{n: 1}");
  assert.equal(bad.ok, false);
  assert.match(bad.message, /^Not valid JSON: /);
});

test("texts: announcements, problems, titles, counts", () => {
  const entry = { flowSlug: "checkout" };
  assert.equal(announcement(entry, { event: "run:completed" }), "Run of checkout completed.");
  assert.equal(announcement(entry, FAILED[3]), "Run of checkout failed at step charge: declined");
  assert.equal(announcement(entry, { event: "step:started", step_slug: "a", attempt: 2 }), "Step a is running attempt 2.");
  assert.equal(announcement(entry, FAILED[1]), null, "a first attempt is not announced");
  assert.equal(problemText({ code: "not_found" }), "No run has this id (or it is not visible to you).");
  assert.equal(problemText({ code: "stalled", message: "lost" }), "The run could not be followed: lost");
  assert.equal(documentTitle(null), "PGFlow — live runs");
  assert.equal(documentTitle({ flowSlug: null, run: { status: "failed" } }), "Run · failed — PGFlow");
  assert.equal(eventCount(0), "");
  assert.equal(eventCount(1), "1 event");
  assert.equal(failureTail(2), " failed after 2 attempts; the steps after it were cancelled.");
  assert.equal(failureTail(null), " failed; the steps after it were cancelled.");
});

// ---- streamed steps: what the step details show, from the client's own step state ----

/** A real FlowRun (the client's), fed events by hand: no socket, no HTTP. */
function clientRun(runId = "s1") {
  const host = { request: async () => ({}), loadGraph: async () => ({ steps: [] }), release: () => {} };
  return new FlowRun(host, runId, "story");
}

const STORY = [
  { seq: 1, event: "run:started", step_slug: null, at: at(0) },
  { seq: 2, event: "step:started", step_slug: "write", attempt: 1, at: at(10) },
  { seq: 3, event: "step:stream", step_slug: "write", attempt: 1, chunks: ["Once", " upon"], at: at(20) },
  { seq: 4, event: "step:stream", step_slug: "write", attempt: 1, chunks: [{ progress: 0.5 }, " a"], at: at(40) },
  { seq: 5, event: "step:stream", step_slug: "write", attempt: 1, chunks: [" time"], at: at(60) },
];

test("a step's stream: null before any chunk, then its text growing, live while the attempt runs", () => {
  const run = clientRun();
  for (const e of STORY.slice(0, 2)) run._apply({ run_id: "s1", ...e });
  assert.equal(stepStream(run.step("write")), null, "running, nothing streamed yet");
  assert.equal(stepStream(run.step("plan")), null, "a step that never ran");
  assert.equal(stepStream(null), null);
  run._apply({ run_id: "s1", ...STORY[2] });
  assert.deepEqual(stepStream(run.step("write")), {
    attempt: 1, count: 2, text: "Once upon", strings: 2, logs: [], logCount: 0, hasValue: false, value: undefined,
    live: true, superseded: false,
  });
  run._apply({ run_id: "s1", ...STORY[3] });
  run._apply({ run_id: "s1", ...STORY[4] });
  const grown = stepStream(run.step("write"));
  assert.equal(grown.text, "Once upon a time");
  assert.equal(grown.count, 5);
  assert.equal(grown.strings, 4);
  assert.deepEqual([grown.hasValue, grown.value], [true, { progress: 0.5 }], "the latest non-string chunk");
  run._apply({ run_id: "s1", seq: 6, event: "step:stream", step_slug: "write", attempt: 1, chunks: [{ progress: 1 }], at: at(70) });
  assert.deepEqual(stepStream(run.step("write")).value, { progress: 1 });
  run._apply({ run_id: "s1", seq: 7, event: "step:completed", step_slug: "write", attempt: 1, output: { story: "Once upon a time" }, at: at(80) });
  const done = stepStream(run.step("write"));
  assert.equal(done.live, false, "completed: streamed, no longer streaming");
  assert.equal(done.text, "Once upon a time", "the text stays once the step ended");
  // the store's frozen copy gives the same view
  assert.deepEqual(stepStream(run.snapshot().steps.write), done);
});

test("a retry: the failed attempt's text stays, marked superseded, until the retry's first chunk replaces it", () => {
  const run = clientRun();
  for (const e of STORY.slice(0, 3)) run._apply({ run_id: "s1", ...e });
  run._apply({ run_id: "s1", seq: 4, event: "step:retrying", step_slug: "write", attempt: 1, error: "boom", at: at(30) });
  let view = stepStream(run.step("write"));
  assert.deepEqual([view.attempt, view.text, view.live, view.superseded], [1, "Once upon", false, false]);
  run._apply({ run_id: "s1", seq: 5, event: "step:started", step_slug: "write", attempt: 2, at: at(1_000) });
  view = stepStream(run.step("write"));
  assert.deepEqual([view.attempt, view.text, view.live, view.superseded], [1, "Once upon", false, true]);
  run._apply({ run_id: "s1", seq: 6, event: "step:stream", step_slug: "write", attempt: 2, chunks: ["Twice"], at: at(1_010) });
  view = stepStream(run.step("write"));
  assert.deepEqual([view.attempt, view.count, view.text, view.live, view.superseded], [2, 1, "Twice", true, false]);
  assert.equal(view.hasValue, false, "attempt 1 had no value; neither has attempt 2");
});

test("a run replayed from seq 0 (a reload) shows the same stream as one followed live", () => {
  const live = clientRun();
  const views = [];
  for (const e of STORY) {
    live._apply({ run_id: "s1", ...e });
    views.push(stepStream(live.step("write"))?.text ?? null);
  }
  assert.deepEqual(views, [null, null, "Once upon", "Once upon a", "Once upon a time"], "the text only grows");
  const replayed = clientRun();
  for (const e of STORY) replayed._apply({ run_id: "s1", ...e });
  assert.deepEqual(stepStream(replayed.step("write")), stepStream(live.step("write")));
  // the page's entry takes in a replayed stream like any event: timing only, no error
  const state = new PageState();
  const entry = state.track(replayed);
  assert.equal(entry.timing.steps.get("write").first, T0 + 10);
});

test("a stream is announced once per attempt, when its first chunks arrive", () => {
  const run = clientRun();
  const entry = { flowSlug: "story", run };
  const heard = [];
  const events = [
    ...STORY,
    { seq: 6, event: "step:retrying", step_slug: "write", attempt: 1, error: "boom", at: at(100) },
    { seq: 7, event: "step:started", step_slug: "write", attempt: 2, at: at(200) },
    { seq: 8, event: "step:stream", step_slug: "write", attempt: 2, chunks: [], at: at(210) },
    { seq: 9, event: "step:stream", step_slug: "write", attempt: 2, chunks: ["Again"], at: at(220) },
    { seq: 10, event: "step:stream", step_slug: "write", attempt: 2, chunks: ["!"], at: at(230) },
  ];
  for (const e of events) {
    run._apply({ run_id: "s1", ...e });
    const text = announcement(entry, e);
    if (text) heard.push(text);
  }
  assert.deepEqual(heard, [
    "Step write is streaming.",
    "Step write failed attempt 1, waiting to retry.",
    "Step write is running attempt 2.",
    "Step write is streaming attempt 2.",
  ]);
});

// ---- log records streamed by a flow with stream_logs ----

const record = (message, level = "INFO") => ({ level, logger: "examples.flows", message });

test("a step's log records are its log lines, in order, apart from its text and its latest value", () => {
  const run = clientRun();
  const stream = (seq, chunks, attempt = 1) =>
    run._apply({ run_id: "s1", seq, event: "step:stream", step_slug: "plan", attempt, chunks, at: at(seq * 10) });
  run._apply({ run_id: "s1", seq: 1, event: "step:started", step_slug: "plan", attempt: 1, at: at(0) });
  stream(2, [record("planning a story about a lighthouse keeper")]);
  let view = stepStream(run.step("plan"));
  assert.deepEqual([view.logs, view.logCount, view.strings, view.hasValue], [
    [record("planning a story about a lighthouse keeper")], 1, 0, false,
  ], "a log record is neither text nor a latest value");
  const taken = view.logs;
  stream(3, ["Once", record("slow going", "WARNING"), { progress: 0.5 }, " upon"]);
  view = stepStream(run.step("plan"));
  assert.deepEqual(view.logs.map((r) => [r.level, r.message]), [
    ["INFO", "planning a story about a lighthouse keeper"], ["WARNING", "slow going"],
  ]);
  assert.equal(view.logCount, 2);
  assert.equal(view.text, "Once upon", "string chunks still make the text");
  assert.deepEqual([view.hasValue, view.value], [true, { progress: 0.5 }]);
  assert.equal(taken.length, 1, "a view taken earlier does not change");
  // the snapshot's frozen copy reads the same
  assert.deepEqual(stepStream(run.snapshot().steps.plan), view);
  // a retry's stream starts its own log
  run._apply({ run_id: "s1", seq: 4, event: "step:retrying", step_slug: "plan", attempt: 1, error: "boom", at: at(40) });
  run._apply({ run_id: "s1", seq: 5, event: "step:started", step_slug: "plan", attempt: 2, at: at(50) });
  stream(6, [record("again")], 2);
  view = stepStream(run.step("plan"));
  assert.deepEqual([view.attempt, view.logs, view.logCount], [2, [record("again")], 1]);
});

test("a chatty step keeps only its last log lines, and counts them all", () => {
  const run = clientRun();
  run._apply({ run_id: "s1", seq: 1, event: "step:started", step_slug: "plan", attempt: 1, at: at(0) });
  const total = LOG_LINES * 3 + 7;
  for (let i = 0; i < total; i += 50) {
    const chunks = Array.from({ length: Math.min(50, total - i) }, (_, k) => record(`line ${i + k}`));
    run._apply({ run_id: "s1", seq: 2 + i, event: "step:stream", step_slug: "plan", attempt: 1, chunks, at: at(i) });
    const view = stepStream(run.step("plan")); // read as it grows, like the page
    assert.equal(view.logCount, i + chunks.length);
    assert.ok(view.logs.length <= LOG_LINES);
  }
  const view = stepStream(run.step("plan"));
  assert.equal(LOG_LINES, 200);
  assert.equal(view.logCount, total);
  assert.equal(view.logs.length, LOG_LINES);
  assert.equal(view.logs[0].message, `line ${total - LOG_LINES}`);
  assert.equal(view.logs.at(-1).message, `line ${total - 1}`);
  // read in one go (a replay), the same
  assert.deepEqual(stepStream(run.snapshot().steps.plan), view);
});

// ---- steering: cancel, retry, input steps ----

const APPROVAL = [
  { seq: 1, event: "run:started", step_slug: null, at: at(0) },
  { seq: 2, event: "step:started", step_slug: "draft", attempt: 1, at: at(0) },
  { seq: 3, event: "step:completed", step_slug: "draft", attempt: 1, output: { text: "hi" }, at: at(100) },
  {
    seq: 4, event: "step:waiting", step_slug: "approve", status: "waiting", attempt: 1,
    schema: { type: "boolean", title: "Publish this draft?" }, input: { run: {}, draft: { text: "hi" } },
    timeout_at: at(3_600_000), at: at(100),
  },
];

test("an input step's question is kept from its step:waiting; an answer record lives while it waits", () => {
  const state = new PageState();
  const entry = state.track(fakeRun("a1", { events: APPROVAL }));
  assert.deepEqual(entry.prompts.get("approve"), {
    schema: { type: "boolean", title: "Publish this draft?" }, input: { run: {}, draft: { text: "hi" } }, timeoutAt: at(3_600_000),
  });
  const answer = answerOf(entry, "approve");
  assert.deepEqual(answer, { busy: false, errors: [], draft: null, message: null });
  assert.equal(answerOf(entry, "approve"), answer, "one record per step");
  answer.busy = true;
  state.apply(entry, { seq: 5, event: "step:completed", step_slug: "approve", output: true, at: at(200) });
  assert.equal(entry.answers.has("approve"), false, "answered: the form goes");
  answerOf(entry, "approve").message = "stale";
  state.apply(entry, { ...APPROVAL[3], seq: 9 }); // asked again, after a retry
  assert.equal(entry.answers.has("approve"), false, "a new question starts a fresh answer");
});

test("the run's controls: Cancel while it runs, Retry once it failed or was cancelled, none otherwise", () => {
  const state = new PageState();
  const entry = state.track(fakeRun("c1"));
  assert.deepEqual(runControls(entry), { cancel: true, retry: false });
  for (const [status, controls] of [
    ["failed", { cancel: false, retry: true }],
    ["cancelled", { cancel: false, retry: true }],
    ["completed", { cancel: false, retry: false }],
  ]) {
    entry.run.status = status;
    assert.deepEqual(runControls(entry), controls, status);
  }
  entry.run.status = "started";
  entry.problem = { code: "forbidden" };
  assert.deepEqual(runControls(entry), { cancel: false, retry: false }, "a run the page cannot follow");
  assert.deepEqual(runControls(null), { cancel: false, retry: false }, "the preview");
});

test("a run waits for input while one of its steps does and it runs", () => {
  const run = { ...fakeRun("w1"), steps: new Map([["draft", { status: "completed" }], ["approve", { status: "waiting" }]]) };
  const entry = new PageState().track(run);
  assert.equal(needsInput(entry), true);
  run.steps.get("approve").status = "cancelled";
  assert.equal(needsInput(entry), false);
  run.steps.get("approve").status = "waiting";
  run.status = "cancelled";
  assert.equal(needsInput(entry), false, "an ended run waits for nothing");
});

test("what the page says of how a steering call went", () => {
  const refused = (status, message = "x") => Object.assign(new Error(message), { status });
  assert.deepEqual(steerOutcome("cancel", null), { ok: true, text: "Cancelled: the steps that had not finished were stopped." });
  assert.equal(steerOutcome("retry", null).text, "Retried: the steps that failed or were cancelled run again.");
  assert.deepEqual(steerOutcome("input", null), { ok: true, text: "Answer sent." });
  assert.deepEqual(steerOutcome("cancel", refused(409)), { ok: false, text: "The run had already ended: there was nothing to cancel." });
  assert.equal(steerOutcome("retry", refused(409)).text, "Only a failed or cancelled run can be retried; this one is not.");
  assert.equal(steerOutcome("input", refused(409)).text, "This step was already answered (or no longer waits for input).");
  assert.equal(steerOutcome("input", refused(400)).text, "The answer does not fit what the step asks: see what is marked above.");
  assert.equal(steerOutcome("cancel", refused(404, "run r: cancel: no run r")).text, "Not found: run r: cancel: no run r");
  assert.equal(steerOutcome("retry", refused(403, "")).text, "Not allowed: you may not steer this run.");
  assert.equal(steerOutcome("cancel", new Error("run r: cancel: Failed to fetch")).text,
    "No answer from the gateway: run r: cancel: Failed to fetch", "a network error has no status");
  assert.equal(steerOutcome("cancel", refused(500, "")).text, "The gateway refused it (HTTP 500).");
});

test("a cancelled or retried run: texts, the recent list, the failing step forgotten on retry", () => {
  const state = new PageState();
  const entry = state.track(fakeRun("x1", { flowSlug: "approval", events: FAILED, status: "failed", startedAt: at(0) }), { local: true });
  assert.equal(entry.failedStep, "charge");
  state.apply(entry, { seq: 5, event: "run:retried", step_slug: null, status: "started", at: at(1_000) });
  assert.equal(entry.failedStep, null);
  assert.equal(entry.timing.runEnd, null);
  entry.run.status = "cancelled";
  assert.equal(state.recentRows()[0].status, "cancelled");
  assert.equal(runStatusLabel("cancelled"), "Cancelled");
  assert.equal(documentTitle(entry), "approval · cancelled — PGFlow");
  assert.equal(announcement(entry, { event: "run:cancelled", reason: "changed my mind" }), "Run of approval was cancelled: changed my mind");
  assert.equal(announcement(entry, { event: "run:cancelled", reason: null }), "Run of approval was cancelled.");
  assert.equal(announcement(entry, { event: "run:retried" }), "Run of approval is running again.");
  assert.equal(announcement(entry, APPROVAL[3]), "Step approve is waiting for your input.");
  assert.equal(cancelledText("too slow"), "The run was cancelled: too slow. Its unfinished steps were stopped; Retry runs them again.");
  assert.equal(cancelledText(null), "The run was cancelled. Its unfinished steps were stopped; Retry runs them again.");
});

// ---- map steps: the events table folds their task events ----

const task = (seq, name, index, extra = {}) => ({
  seq, event: `task:${name}`, step_slug: "square", index, attempt: 1, at: at(seq), ...extra,
});
const rowsOf = (timeline) => timeline.rows.map((r) => (r.kind === "fold" ? `${r.name} ×${r.count}` : r.event.event));

test("the events table folds a map step's consecutive task events: one row per step and event name", () => {
  const timeline = new Timeline();
  timeline.add({ seq: 1, event: "run:started", step_slug: null, at: at(1) });
  timeline.add({ seq: 2, event: "step:started", step_slug: "square", attempt: 1, tasks: 120, at: at(2) });
  for (let i = 0; i < 120; i++) timeline.add(task(3 + i, "completed", i));
  assert.deepEqual(rowsOf(timeline), ["run:started", "step:started", "task:completed ×120"]);
  const fold = timeline.rows[2];
  assert.equal(foldSummary(fold), "task:completed ×120 · 0–119");
  assert.deepEqual([fold.fromSeq, fold.toSeq, fold.step, fold.firstAt, fold.lastAt], [3, 122, "square", at(3), at(122)]);

  // retries in between do not break the completions' row: each name keeps its own
  timeline.add(task(123, "retrying", 7, { error: "flaky" }));
  timeline.add(task(124, "started", 7, { attempt: 2 }));
  timeline.add(task(125, "retrying", 9, { error: "flakier" }));
  assert.deepEqual(rowsOf(timeline), ["run:started", "step:started", "task:completed ×120", "task:retrying ×2", "task:started ×1"]);
  assert.equal(timeline.rows[3].lastError, "flakier");
  assert.equal(foldIndices(timeline.rows[3]), "7, 9");

  // another event ends the folding: later task events start new rows, in time order
  timeline.add({ seq: 126, event: "step:stream", step_slug: "other", attempt: 1, chunks: ["x"], at: at(126) });
  timeline.add(task(127, "completed", 7, { attempt: 2 }));
  assert.deepEqual(rowsOf(timeline).slice(-2), ["step:stream", "task:completed ×1"]);
  assert.equal(foldSummary(timeline.rows.at(-1)), "task:completed ×1 · 7");

  // two map steps at once: one row each
  const other = { ...task(128, "completed", 0), step_slug: "cube" };
  timeline.add(other);
  timeline.add(task(129, "completed", 9));
  timeline.add({ ...other, seq: 130, index: 1 });
  assert.deepEqual(timeline.rows.slice(-2).map((r) => [r.step, r.count]), [["square", 2], ["cube", 2]]);
});

test("a fold lists its elements while they are few, else their range", () => {
  const timeline = new Timeline();
  for (const [seq, index] of [[1, 40], [2, 3], [3, 40], [4, 17]]) timeline.add(task(seq, "retrying", index, { error: "x" }));
  assert.equal(foldIndices(timeline.rows[0]), "40, 3, 17", "distinct, in arrival order");
  for (const [seq, index] of [[5, 8], [6, 2], [7, 99]]) timeline.add(task(seq, "retrying", index, { error: "x" }));
  assert.equal(foldIndices(timeline.rows[0]), "2–99");
  assert.equal(foldSummary(timeline.rows[0]), "task:retrying ×7 · 2–99");
});

test("take() gives the rows added, then the folds that grew since: what the table must draw", () => {
  const timeline = new Timeline();
  timeline.add({ seq: 1, event: "step:started", step_slug: "square", attempt: 1, tasks: 3, at: at(1) });
  timeline.add(task(2, "completed", 0));
  let taken = timeline.take();
  assert.equal(taken.added.length, 2);
  assert.deepEqual(taken.updated, []);
  const fold = timeline.rows[1];
  timeline.add(task(3, "completed", 1));
  timeline.add(task(4, "completed", 2));
  taken = timeline.take();
  assert.deepEqual(taken, { added: [], updated: [fold] }, "the fold grew: updated, not added again");
  assert.equal(fold.count, 3);
  assert.deepEqual(timeline.take(), { added: [], updated: [] });
  timeline.add(task(5, "failed", 2, { error: "boom" }));
  timeline.add({ seq: 6, event: "step:failed", step_slug: "square", attempt: 1, error: "task 2 failed: boom", at: at(6) });
  taken = timeline.take();
  assert.deepEqual(taken.added.map((r) => r.kind), ["fold", "event"]);
  timeline.reset();
  assert.equal(timeline.take().added.length, 4, "after a reset, every row: the table is drawn anew");
});

test("a 10,000-element map's events make a handful of rows, replayed or live, and leave its timing alone", () => {
  const n = 10_000;
  const events = [
    { seq: 1, event: "run:started", step_slug: null, at: at(0) },
    { seq: 2, event: "step:started", step_slug: "square", attempt: 1, tasks: n, at: at(10) },
  ];
  for (let i = 0; i < n; i++) {
    events.push(task(events.length + 1, i % 100 === 5 ? "retrying" : "completed", i, i % 100 === 5 ? { error: "flaky" } : {}));
  }
  for (let i = 5; i < n; i += 100) events.push(task(events.length + 1, "completed", i, { attempt: 2 }));
  events.push({ seq: events.length + 1, event: "step:completed", step_slug: "square", attempt: 1, output: [], at: at(90_000) });
  const live = clientRun("m1");
  const state = new PageState();
  const entry = state.track(live);
  for (const e of events) {
    live._apply({ run_id: "m1", ...e });
    state.apply(entry, e, T0);
  }
  assert.deepEqual(rowsOf(entry.timeline), ["run:started", "step:started", `task:completed ×${n}`, `task:retrying ×${n / 100}`, "step:completed"]);
  assert.deepEqual(entry.timing.steps.get("square"), {
    first: T0 + 10, attemptAt: T0 + 10, end: T0 + 90_000, retryAt: null, retryAttempt: null, done: true,
  }, "an element's retry is not the step's");
  const replayed = new PageState().track(live); // a reload: the run's events all at once
  assert.deepEqual(rowsOf(replayed.timeline), rowsOf(entry.timeline));
});
