// The live page's step looks (gateway/static/format.js, pure): a retried step shows as waiting
// for its retry during the backoff, then as running attempt N once its step:started arrives; a
// step whose running attempt streams chunks shows as streaming, with their count; an input step
// waits for a person, and its form comes from its schema (gateway/static/inputform.js, pure part).
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  applyTiming, chunkCount, eventStatus, isLogRecord, isStreaming, logLineCount, newTiming, progressLabel, progressText,
  STATUS_LABELS, stepLook, streamSummary, taskProgress,
} from "../../gateway/static/format.js";
import { formModel, initialValues, readValues, refusalErrors } from "../../gateway/static/inputform.js";

const T0 = Date.parse("2026-01-01T00:00:00Z");
const at = (ms) => new Date(T0 + ms).toISOString();
const OPTIONS = { max_attempts: 3, base_delay: 1 };

function timingOf(events) {
  const timing = newTiming();
  for (const e of events) applyTiming(timing, e);
  return timing;
}

const FIRST_TRY = [
  { event: "run:started", step_slug: null, at: at(0) },
  { event: "step:started", step_slug: "charge", attempt: 1, at: at(0) },
  { event: "step:retrying", step_slug: "charge", attempt: 1, error: "card declined", at: at(500) },
];

test("during the backoff a step is waiting to retry, with the time left, then waiting for a worker", () => {
  const timing = timingOf(FIRST_TRY);
  const state = { slug: "charge", status: "retrying", attempt: 1, error: "card declined" };
  const during = stepLook(state, timing, OPTIONS, T0 + 800);
  assert.equal(during.sub, "retry in 700 ms");
  assert.equal(during.label, "charge: waiting to retry, attempt 1 of 3 failed, 800 ms, error: card declined");
  const after = stepLook(state, timing, OPTIONS, T0 + 2_000); // delay over, no worker yet
  assert.equal(after.sub, "waiting to retry");
  assert.equal(STATUS_LABELS.retrying, "waiting to retry");
});

test("once attempt 2's step:started arrives the step is running attempt 2, timed from that start", () => {
  const timing = timingOf([...FIRST_TRY, { event: "step:started", step_slug: "charge", attempt: 2, at: at(1_600) }]);
  const look = stepLook({ slug: "charge", status: "started", attempt: 2, error: "card declined" }, timing, OPTIONS, T0 + 2_000);
  assert.equal(look.status, "started");
  assert.equal(look.sub, "running attempt 2 · 400 ms");
  assert.equal(look.pill, "try 2/3");
  assert.equal(look.label, "charge: running, attempt 2 of 3, 2.0 s");
  assert.equal(look.duration, 2_000, "the step's whole time, first attempt included");
});

test("a first attempt running reads as before", () => {
  const timing = timingOf(FIRST_TRY.slice(0, 2));
  const look = stepLook({ slug: "charge", status: "started", attempt: 1 }, timing, OPTIONS, T0 + 300);
  assert.equal(look.sub, "running · 300 ms");
  assert.equal(look.pill, null);
});

// ---- streamed steps ----

/** A step state as the client keeps it, with what it streamed. */
const streamed = (fields) => ({ slug: "write", status: "started", attempt: 1, error: null, chunks: [], text: "", streamAttempt: null, ...fields });

test("a running step with chunks of its attempt is streaming: the node counts them", () => {
  const timing = timingOf([
    { event: "run:started", step_slug: null, at: at(0) },
    { event: "step:started", step_slug: "write", attempt: 1, at: at(0) },
  ]);
  const before = stepLook(streamed({}), timing, {}, T0 + 100);
  assert.equal(before.streaming, false);
  assert.equal(before.sub, "running · 100 ms");
  const look = stepLook(streamed({ chunks: ["Once", " upon", " a"], text: "Once upon a", streamAttempt: 1 }), timing, {}, T0 + 300);
  assert.equal(look.status, "started", "streaming is a kind of running: the node's status stays");
  assert.equal(look.streaming, true);
  assert.equal(look.chunks, 3);
  assert.equal(look.sub, "streaming · 3 chunks");
  assert.equal(look.subShort, "3 chunks");
  assert.equal(look.label, "write: streaming, 3 chunks, 300 ms");
  const one = stepLook(streamed({ chunks: ["Once"], streamAttempt: 1 }), timing, {}, T0 + 300);
  assert.equal(one.sub, "streaming · 1 chunk");
});

test("a step stops streaming when its attempt ends, and a retry streams only once it has chunks", () => {
  const chunks = ["Once"];
  assert.equal(isStreaming(streamed({ status: "completed", chunks, streamAttempt: 1 })), false);
  assert.equal(isStreaming(streamed({ status: "retrying", chunks, streamAttempt: 1 })), false);
  assert.equal(isStreaming(streamed({ status: "cancelled", chunks, streamAttempt: 1 })), false);
  assert.equal(isStreaming(streamed({ status: "started", attempt: 2, chunks, streamAttempt: 1 })), false,
    "attempt 2 runs; the chunks are attempt 1's");
  assert.equal(isStreaming(streamed({ status: "started", chunks: [], streamAttempt: 1 })), false, "an empty stream event");
  assert.equal(isStreaming(null), false);
  const timing = timingOf([...FIRST_TRY, { event: "step:started", step_slug: "charge", attempt: 2, at: at(1_600) }]);
  const retry = stepLook({ ...streamed({ attempt: 2, chunks: ["a", "b"], streamAttempt: 2 }), slug: "charge" }, timing, OPTIONS, T0 + 2_000);
  assert.equal(retry.sub, "streaming · 2 chunks");
  assert.equal(retry.pill, "try 2/3", "the retry's pill stays");
  assert.equal(retry.label, "charge: streaming, attempt 2 of 3, 2 chunks, 2.0 s");
});

test("a step:stream row of the timeline sums up its chunks", () => {
  assert.equal(eventStatus("step:stream"), "streaming");
  assert.equal(streamSummary(["Once", " upon", " a"]), '3 chunks · "Once upon a"');
  assert.equal(streamSummary([{ progress: 0.5 }]), '1 chunk · {"progress":0.5}');
  assert.equal(streamSummary(["a", 2]), '2 chunks · ["a",2]');
  assert.equal(streamSummary([]), "0 chunks");
  assert.equal(streamSummary(undefined), "0 chunks");
  const long = streamSummary(["word ".repeat(100)], 40);
  assert.equal(long.length, "1 chunk · ".length + 40);
  assert.ok(long.endsWith("…"));
  assert.equal(chunkCount(1), "1 chunk");
});

// ---- streamed log records (a flow with stream_logs) ----

const info = (message) => ({ level: "INFO", logger: "examples.flows", message });

test("a log record is an object with string level, logger and message", () => {
  assert.equal(isLogRecord(info("hi")), true);
  assert.equal(isLogRecord({ ...info("hi"), extra: 1 }), true, "more keys do not matter");
  assert.equal(isLogRecord({ level: "INFO", logger: "x" }), false, "no message");
  assert.equal(isLogRecord({ level: 20, logger: "x", message: "m" }), false, "a number level");
  assert.equal(isLogRecord("INFO: hi"), false);
  assert.equal(isLogRecord(null), false);
  assert.equal(isLogRecord([info("hi")]), false);
  assert.equal(logLineCount(1), "1 log line");
  assert.equal(logLineCount(2), "2 log lines");
});

test("a step:stream row made only of log records counts its lines and shows the first", () => {
  const chunks = [info("planning a story about a lighthouse keeper"), info("the story takes place on a windy island")];
  assert.equal(streamSummary(chunks), "2 log lines · INFO: planning a story about a lighthouse keeper");
  assert.equal(streamSummary([{ level: "WARNING", logger: "app", message: "low disk" }]), "1 log line · WARNING: low disk");
  assert.equal(streamSummary([info("Traceback:\n  line 1\n")]), "1 log line · INFO: Traceback: line 1",
    "one line, whitespace collapsed");
  const long = streamSummary([info("word ".repeat(100))], 40);
  assert.equal(long.length, "1 log line · ".length + 40, "cut like the other previews");
  assert.ok(long.startsWith("1 log line · INFO: word word"));
  assert.ok(long.endsWith("…"));
  // mixed with other chunks: the chunks as JSON, as before
  assert.equal(streamSummary([info("hi"), "text"]), `2 chunks · [${JSON.stringify(info("hi"))},"text"]`);
});

// ---- steering: input steps, cancelled and retried runs ----

test("an input step waiting for a person reads as needing input, timed from its question", () => {
  const timing = timingOf([
    { event: "run:started", step_slug: null, at: at(0) },
    { event: "step:waiting", step_slug: "approve", attempt: 1, at: at(1_000) },
  ]);
  const look = stepLook({ slug: "approve", status: "waiting", attempt: 1 }, timing, {}, T0 + 4_000);
  assert.equal(look.status, "waiting");
  assert.equal(look.sub, "needs input · 3.0 s");
  assert.equal(look.subShort, "needs input");
  assert.equal(look.label, "approve: waiting for input, 3.0 s");
  assert.notEqual(STATUS_LABELS.waiting, STATUS_LABELS.created, "not the same words as a step not started");
  assert.equal(eventStatus("step:waiting"), "waiting");
});

test("a cancel stops the clocks of the steps it cut short; a retry times the re-run steps afresh", () => {
  const timing = timingOf([
    { event: "run:started", step_slug: null, at: at(0) },
    { event: "step:started", step_slug: "draft", attempt: 1, at: at(0) },
    { event: "step:completed", step_slug: "draft", attempt: 1, at: at(100) },
    { event: "step:waiting", step_slug: "approve", attempt: 1, at: at(100) },
    { event: "step:cancelled", step_slug: "approve", attempt: 1, at: at(900) },
    { event: "step:cancelled", step_slug: "publish", attempt: null, at: at(900) },
    { event: "run:cancelled", step_slug: null, at: at(900) },
  ]);
  assert.equal(timing.runEnd, T0 + 900);
  assert.equal(timing.steps.get("approve").end, T0 + 900);
  assert.equal(timing.steps.get("publish").first, null, "never ran: no time");
  const cancelled = stepLook({ slug: "approve", status: "cancelled", attempt: 1 }, timing, {}, T0 + 5_000);
  assert.equal(cancelled.sub, "cancelled");
  assert.equal(cancelled.duration, 800, "stopped at the cancel");
  assert.equal(eventStatus("run:cancelled"), "cancelled");
  assert.equal(eventStatus("step:cancelled"), "cancelled");

  applyTiming(timing, { event: "run:retried", step_slug: null, at: at(2_000) });
  assert.equal(timing.runEnd, null, "running again");
  assert.equal(timing.steps.get("draft").end, T0 + 100, "a completed step keeps its time");
  assert.equal(timing.steps.has("approve"), false, "the re-run step starts from nothing");
  assert.equal(eventStatus("run:retried"), "started");
  applyTiming(timing, { event: "step:waiting", step_slug: "approve", attempt: 1, at: at(2_100) });
  assert.equal(stepLook({ slug: "approve", status: "waiting", attempt: 1 }, timing, {}, T0 + 2_600).duration, 500);
});

test("a boolean schema asks Approve or Reject: the button pressed is the answer", () => {
  const model = formModel({ type: "boolean", title: "Publish this draft?" });
  assert.deepEqual(model, { kind: "boolean", title: "Publish this draft?", description: null });
  assert.deepEqual(readValues(model, "true"), { ok: true, value: true });
  assert.deepEqual(readValues(model, "false"), { ok: true, value: false });
  assert.equal(readValues(model, "").ok, false, "no button, no answer");
});

const ORDER = {
  type: "object",
  title: "Ship the order",
  required: ["carrier", "parcels"],
  properties: {
    carrier: { enum: ["dhl", "ups", 7, null], title: "Carrier" },
    parcels: { type: "integer", description: "how many boxes" },
    weight: { type: "number", default: 1.5 },
    note: { type: "string" },
    fragile: { type: "boolean", default: true },
  },
};

test("an object schema of simple fields becomes labelled inputs, required ones marked", () => {
  const model = formModel(ORDER);
  assert.equal(model.kind, "object");
  assert.equal(model.title, "Ship the order");
  assert.deepEqual(model.fields.map((f) => [f.name, f.label, f.type, f.required]), [
    ["carrier", "Carrier", "enum", true],
    ["parcels", "parcels", "integer", true],
    ["weight", "weight", "number", false],
    ["note", "note", "string", false],
    ["fragile", "fragile", "boolean", false],
  ]);
  assert.deepEqual(model.fields[0].options, ["dhl", "ups", 7, null]);
  assert.equal(model.fields[1].description, "how many boxes");
  assert.deepEqual(initialValues(model), { carrier: "", parcels: "", weight: "1.5", note: "", fragile: true },
    "the schema's defaults fill a fresh form");
  // as jsonb returns it: keys shortest first
  const stored = formModel({ type: "object", required: ["carrier"], properties: { note: { type: "string" }, carrier: { enum: ["a"] }, fragile: { type: "boolean" } } });
  assert.deepEqual(stored.fields.map((f) => f.name), ["carrier", "note", "fragile"], "required first, then in the schema's order");
});

test("an object form's values: typed, optional empties left out, what cannot be a value refused", () => {
  const model = formModel(ORDER);
  assert.deepEqual(readValues(model, { carrier: "2", parcels: " 3 ", weight: "2.25", note: "", fragile: false }), {
    ok: true, value: { carrier: 7, parcels: 3, weight: 2.25, fragile: false },
  }, "an enum option keeps its type; an empty optional string is absent");
  assert.deepEqual(readValues(model, { carrier: "3", parcels: "1", weight: "", note: "hi", fragile: true }).value,
    { carrier: null, parcels: 1, note: "hi", fragile: true });
  assert.deepEqual(readValues(model, { carrier: "", parcels: "2.5", weight: "heavy", note: "", fragile: true }), {
    ok: false,
    errors: [
      { path: "/carrier", message: "Required." },
      { path: "/parcels", message: "Not a whole number." },
      { path: "/weight", message: "Not a number." },
    ],
  });
  assert.deepEqual(readValues(model, { carrier: "9", parcels: "1" }).errors, [{ path: "/carrier", message: "Pick one of the options." }]);
});

test("anything else is typed as JSON: nested objects, arrays, unions, no schema at all", () => {
  for (const schema of [
    { type: "object", properties: { tags: { type: "array" } } },
    { type: "object", properties: { address: { type: "object", properties: {} } } },
    { type: "object", properties: {} },
    { type: ["string", "null"] },
    { type: "string" },
    { enum: [true, false] },
    {},
    null,
  ]) {
    assert.equal(formModel(schema).kind, "json", JSON.stringify(schema));
  }
  const model = formModel({ type: "array", title: "Pick items" });
  assert.equal(model.title, "Pick items");
  assert.deepEqual(readValues(model, ' [1, "a"] '), { ok: true, value: [1, "a"] });
  assert.deepEqual(readValues(model, "null"), { ok: true, value: null });
  assert.deepEqual(readValues(model, "  "), { ok: false, errors: [{ path: "", message: "Type the answer as JSON." }] });
  assert.match(readValues(model, "{oops").errors[0].message, /^Not valid JSON: /);
});

test("the server's refusal: each error with its path, else the error's message", () => {
  const err = Object.assign(new Error("refused"), {
    status: 400, errors: [{ path: "/parcels", message: "-1 is less than 1" }, { message: "x" }, 5],
  });
  assert.deepEqual(refusalErrors(err), [{ path: "/parcels", message: "-1 is less than 1" }, { path: "", message: "x" }]);
  assert.deepEqual(refusalErrors(new Error("no list")), [{ path: "", message: "no list" }]);
  assert.deepEqual(refusalErrors(null), [{ path: "", message: "The answer was refused." }]);
});

// ---- map steps: one task per element ----

/** A map step's state as the client keeps it. */
const mapState = (fields) => ({
  slug: "square", kind: "map", status: "started", attempt: 1, error: null, chunks: [], text: "", streamAttempt: null,
  tasks: 120, tasksCompleted: 0, tasksFailed: 0, tasksRetrying: 0, taskErrors: [], ...fields,
});

test("a map step's node shows its elements done, \"37 / 120\", and says it as \"37 of 120 tasks done\"", () => {
  const timing = timingOf([
    { event: "run:started", step_slug: null, at: at(0) },
    { event: "step:started", step_slug: "square", attempt: 1, tasks: 120, at: at(0) },
  ]);
  const look = stepLook(mapState({ tasksCompleted: 37 }), timing, OPTIONS, T0 + 1_500);
  assert.equal(look.status, "started");
  assert.equal(look.sub, "37 / 120 · 1.5 s");
  assert.equal(look.subShort, "37 / 120");
  assert.deepEqual(look.progress, { total: 120, done: 37, failed: 0, retrying: 0 });
  assert.equal(look.label, "square: running, 37 of 120 tasks done, 1.5 s");
  assert.equal(look.pill, null, "the step's own attempt: no pill");

  const failing = stepLook(mapState({ tasksCompleted: 37, tasksFailed: 2, tasksRetrying: 1 }), timing, OPTIONS, T0 + 1_500);
  assert.equal(failing.subShort, "37 / 120 · 2 failed");
  assert.equal(failing.label, "square: running, 37 of 120 tasks done, 2 failed, 1 waiting to retry, 1.5 s");

  const done = stepLook(mapState({ status: "completed", tasksCompleted: 120 }), timing, OPTIONS, T0 + 3_000);
  assert.equal(done.subShort, "120 / 120", "completed: the count stays, full");
  assert.equal(done.label, "square: completed, 120 of 120 tasks done, 3.0 s");
});

test("a map step before its start, or a step that is no map, shows no progress", () => {
  const waiting = stepLook(mapState({ status: "created", tasks: null }), newTiming(), OPTIONS, T0);
  assert.equal(waiting.progress, null);
  assert.equal(waiting.sub, "waiting");
  assert.equal(taskProgress(mapState({ tasks: null })), null, "no element count yet");
  assert.equal(taskProgress({ kind: "task", tasks: 3, tasksCompleted: 3 }), null);
  assert.equal(taskProgress(null), null);
  assert.deepEqual(taskProgress(mapState({ tasks: 0 })), { total: 0, done: 0, failed: 0, retrying: 0 }, "an empty map");
  assert.equal(progressText({ total: 0, done: 0, failed: 0 }), "0 / 0");
  assert.equal(progressLabel({ total: 1, done: 1, failed: 0, retrying: 0 }), "1 of 1 task done");
  assert.equal(eventStatus("task:completed"), "completed");
  assert.equal(eventStatus("task:retrying"), "retrying");
  assert.equal(eventStatus("task:failed"), "failed");
});

test("a map step's element events leave its timing to its own step:* events", () => {
  // state.js hands applyTiming the step:* events only; one given a task event anyway changes nothing
  const timing = timingOf([
    { event: "run:started", step_slug: null, at: at(0) },
    { event: "step:started", step_slug: "square", attempt: 1, tasks: 2, at: at(10) },
    { event: "task:completed", step_slug: "square", index: 0, attempt: 1, at: at(20) },
    { event: "task:retrying", step_slug: "square", index: 1, attempt: 1, error: "boom", at: at(30) },
  ]);
  assert.deepEqual(timing.steps.get("square"), { first: T0 + 10, attemptAt: T0 + 10, end: null, retryAt: null, retryAttempt: null, done: false });
});
