// Runs you can steer, against the fake gateway: cancel, input steps (waiting, submit), retry,
// and idempotent starts (the Idempotency-Key, kept the same on the client's own resends).
import assert from "node:assert/strict";
import { after, before, beforeEach, test } from "node:test";

import {
  createClient, FlowCancelledError, FlowFailedError, InputRejectedError, PGFlowError, triggerFlow,
} from "../client.js";
import { newIdempotencyKey } from "../client/http.js";
import { APPROVAL_SCHEMA, completedRun, ev, seqReached, startFakeGateway } from "./fake_gateway.js";

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
const TIMEOUT = 3_000;

let gw;
let client;

before(async () => {
  gw = await startFakeGateway();
  client = createClient({ url: gw.url, idleTimeout: 0 });
});

after(async () => {
  client.close();
  await gw.close();
});

beforeEach(() => {
  gw.onRunCreated = (runId) => gw.append(runId, ...completedRun({ summary: "ok" }));
  gw.onInput = () => {};
  gw.onRetry = () => {};
  gw.loseAnswer = () => false;
});

async function rejection(promise) {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  assert.fail("expected a rejection");
}

/** The requests the fake gateway got for `path`, with their JSON bodies parsed. */
function posts(path) {
  return gw.requests.filter((r) => r.method === "POST" && r.path === path)
    .map((r) => ({ ...r, json: r.body ? JSON.parse(r.body) : undefined }));
}

/** A run that starts `fetch` and then goes on forever (until steered). */
function runsForever(runId) {
  gw.append(runId, ev.runStarted(), ev.stepStarted("fetch"));
}

// ---- cancel -------------------------------------------------------------------------------------

test("run.cancel(reason) posts the reason; result() rejects with FlowCancelledError; steps end cancelled", async () => {
  gw.onRunCreated = runsForever;
  const run = await client.startFlow("analyze", {});
  await seqReached(run, 2);
  const pending = rejection(run.result({ timeout: TIMEOUT })); // handled before it rejects
  const answer = await run.cancel("no longer needed");
  assert.deepEqual(answer, { run_id: run.runId, status: "cancelled" });
  assert.deepEqual(posts(`/runs/${run.runId}/cancel`).map((p) => p.json), [{ reason: "no longer needed" }]);

  const err = await pending;
  assert.ok(err instanceof FlowCancelledError, `got ${err}`);
  assert.ok(err instanceof PGFlowError);
  assert.equal(err.name, "FlowCancelledError");
  assert.equal(err.code, "run_cancelled");
  assert.equal(err.runId, run.runId);
  assert.equal(err.reason, "no longer needed");
  assert.equal(err.event.event, "run:cancelled");
  assert.match(err.message, new RegExp(`${run.runId}.*cancelled: no longer needed`));

  assert.equal(run.status, "cancelled");
  assert.equal(run.cancelReason, "no longer needed");
  assert.equal(run.cancelledAt, run.events.at(-1).at);
  assert.deepEqual(run.events.slice(2).map((e) => [e.event, e.step_slug, e.attempt]), [
    ["step:cancelled", "fetch", 1], ["step:cancelled", "summarize", null], ["run:cancelled", null, null],
  ]);
  assert.equal(run.step("fetch").status, "cancelled");
  assert.equal(run.step("summarize").status, "cancelled");
  assert.equal(run.snapshot().status, "cancelled");
  assert.equal(run.snapshot().cancelReason, "no longer needed");
  assert.equal(run.snapshot().steps.fetch.status, "cancelled");
  assert.equal(await run.waitForStatus("cancelled", { timeout: TIMEOUT }), run);
  assert.ok(await rejection(run.waitForStatus("completed", { timeout: TIMEOUT })) instanceof FlowCancelledError);
  // A cancelled run has ended: the client stops following it.
  await gw.until(() => gw.frames("unsubscribe").some((f) => f.msg.run_id === run.runId), "unsubscribe");
});

test("cancel without a reason posts {} and the error's reason is null", async () => {
  gw.onRunCreated = runsForever;
  const run = await client.startFlow("analyze", {}, { graph: false });
  await run.cancel();
  assert.deepEqual(posts(`/runs/${run.runId}/cancel`).map((p) => p.json), [{}]);
  const err = await rejection(run.result({ timeout: TIMEOUT }));
  assert.ok(err instanceof FlowCancelledError);
  assert.equal(err.reason, null);
  assert.equal(run.cancelReason, null);
  await assert.rejects(run.cancel(42), TypeError);
});

test("triggerFlow rejects with FlowCancelledError when someone else cancels the run", async () => {
  let runId;
  gw.onRunCreated = (id) => {
    runId = id;
    gw.append(id, ev.runStarted(), ev.stepStarted("fetch"), ev.stepCancelled("fetch", 1),
      ev.stepCancelled("summarize"), ev.runCancelled("operator"));
  };
  const err = await rejection(triggerFlow("analyze", {}, { client, timeout: TIMEOUT }));
  assert.ok(err instanceof FlowCancelledError, `got ${err}`);
  assert.equal(err.runId, runId);
  assert.equal(err.reason, "operator");
});

test("cancel of an ended run rejects with status 409 conflict; of an unknown run with 404", async () => {
  const run = await client.startFlow("analyze", {}, { graph: false });
  assert.deepEqual(await run.result({ timeout: TIMEOUT }), { summary: "ok" });
  const err = await rejection(run.cancel("too late"));
  assert.ok(err instanceof PGFlowError);
  assert.ok(!(err instanceof FlowCancelledError));
  assert.equal(err.status, 409);
  assert.equal(err.code, "conflict");
  assert.equal(err.runId, run.runId);
  assert.match(err.message, new RegExp(`run ${run.runId}: cancel: .*completed`));
  assert.equal(run.status, "completed");

  const ghost = client.getRun("00000000-0000-4000-8000-000000000000");
  const notFound = await rejection(ghost.cancel());
  assert.equal(notFound.status, 404);
  assert.equal(notFound.code, "not_found");
});

// ---- input steps ------------------------------------------------------------------------------

/** An approval run whose `approve` step is waiting; returns the run. */
async function waitingApproval() {
  gw.onRunCreated = (id) => gw.append(id, ev.runStarted(), ev.stepStarted("draft"),
    ev.stepCompleted("draft", "the text"),
    ev.stepWaiting("approve", APPROVAL_SCHEMA, { run: { doc: 7 }, draft: "the text" }, "2030-01-01T00:00:00Z"));
  const run = await client.startFlow("approval", { doc: 7 });
  return seqReached(run, 4);
}

test("step:waiting: the step is `waiting` with its schema, input and timeoutAt", async () => {
  const run = await waitingApproval();
  const step = run.step("approve");
  assert.equal(step.status, "waiting");
  assert.equal(step.attempt, 1);
  assert.deepEqual(step.schema, APPROVAL_SCHEMA);
  assert.deepEqual(step.input, { run: { doc: 7 }, draft: "the text" });
  assert.equal(step.timeoutAt, "2030-01-01T00:00:00Z");
  assert.equal(step.startedAt, run.events[3].at);
  const snap = run.snapshot().steps.approve;
  assert.equal(snap.status, "waiting");
  assert.deepEqual(snap.schema, APPROVAL_SCHEMA);
  assert.equal(run.step("publish").status, "created");
  assert.equal(run.step("draft").schema, null, "a task step has no schema");
  assert.equal(run.status, "started");
  run.detach();
});

test("run.submit posts {value}; the step completes with it and the run goes on", async () => {
  const run = await waitingApproval();
  gw.onInput = (id, slug, value) => gw.append(id, ev.stepStarted("publish"),
    ev.stepCompleted("publish", { published: value.approved }), ev.runCompleted({ published: value.approved }));
  const answer = await run.submit("approve", { approved: true, note: "fine" });
  assert.deepEqual(answer, { run_id: run.runId, step_slug: "approve", status: "completed" });
  assert.deepEqual(posts(`/runs/${run.runId}/steps/approve/input`).map((p) => p.json),
    [{ value: { approved: true, note: "fine" } }]);
  assert.deepEqual(await run.result({ timeout: TIMEOUT }), { published: true });
  assert.equal(run.step("approve").status, "completed");
  assert.deepEqual(run.step("approve").output, { approved: true, note: "fine" });
});

test("a value the schema refuses rejects with InputRejectedError carrying every error; the step still waits", async () => {
  const run = await waitingApproval();
  const err = await rejection(run.submit("approve", { approved: "yes", note: 3 }));
  assert.ok(err instanceof InputRejectedError, `got ${err}`);
  assert.ok(err instanceof PGFlowError);
  assert.equal(err.name, "InputRejectedError");
  assert.equal(err.code, "invalid_input");
  assert.equal(err.status, 400);
  assert.equal(err.runId, run.runId);
  assert.equal(err.stepSlug, "approve");
  assert.deepEqual(err.errors, [
    { path: "/approved", message: "\"yes\" is not of type 'boolean'" },
    { path: "/note", message: "3 is not of type 'string'" },
  ]);
  assert.match(err.message, new RegExp(`run ${run.runId}: submit\\("approve"\\): .*/approved: "yes" is not of type 'boolean'`));

  const missing = await rejection(run.submit("approve", {}));
  assert.ok(missing instanceof InputRejectedError);
  assert.deepEqual(missing.errors, [{ path: "", message: "'approved' is a required property" }]);
  assert.equal(run.step("approve").status, "waiting");
  run.detach();
});

test("submit to a step that is not waiting: 409; to an unknown step: 404; without a value: TypeError", async () => {
  const run = await waitingApproval();
  const notInput = await rejection(run.submit("draft", "x"));
  assert.ok(!(notInput instanceof InputRejectedError));
  assert.equal(notInput.status, 409);
  assert.equal(notInput.code, "conflict");
  const unknown = await rejection(run.submit("nope", 1));
  assert.equal(unknown.status, 404);
  assert.equal(unknown.code, "not_found");
  const sent = gw.requests.length;
  await assert.rejects(run.submit("approve"), TypeError);
  await assert.rejects(run.submit("", 1), TypeError);
  assert.equal(gw.requests.length, sent, "nothing sent for a call that cannot be right");
  await run.submit("approve", { approved: false });
  const twice = await rejection(run.submit("approve", { approved: true }));
  assert.equal(twice.status, 409);
  run.detach();
});

// ---- retry --------------------------------------------------------------------------------------

test("retry() of a failed run: followed again, back to started, a new result() resolves", async () => {
  gw.onRunCreated = (id) => gw.append(id, ev.runStarted(), ev.stepStarted("fetch"),
    ev.stepFailed("fetch", "boom", 3), ev.runFailed("fetch", "boom", 3));
  const run = await client.startFlow("analyze", {});
  const first = run.result({ timeout: TIMEOUT });
  assert.ok(await rejection(first) instanceof FlowFailedError);
  await gw.until(() => gw.frames("unsubscribe").some((f) => f.msg.run_id === run.runId), "unsubscribe");
  assert.equal(run.step("summarize").status, "cancelled");

  const atRetried = [];
  run.on("run:retried", () => atRetried.push([run.status, run.error, run.step("fetch").status, run.step("summarize").status]));
  gw.onRetry = (id) => gw.append(id, ev.stepStarted("fetch", 1), ev.stepCompleted("fetch", "page"),
    ev.stepStarted("summarize"), ev.stepCompleted("summarize", "again"), ev.runCompleted("again"));
  const answer = await run.retry();
  assert.deepEqual(answer, { run_id: run.runId, status: "started" });
  assert.equal(posts(`/runs/${run.runId}/retry`).length, 1);

  assert.equal(await run.result({ timeout: TIMEOUT }), "again");
  assert.ok(await rejection(first) instanceof FlowFailedError, "the first outcome stays what it was");
  assert.deepEqual(atRetried, [["started", null, "created", "created"]]);
  assert.equal(run.status, "completed");
  assert.equal(run.failedAt, null);
  assert.deepEqual(run.events.map((e) => e.seq), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
  assert.equal(run.events[4].event, "run:retried");
  // Resubscribed from where it was, not from the start.
  const subs = gw.frames("subscribe").filter((f) => f.msg.run_id === run.runId);
  assert.deepEqual(subs.map((f) => f.msg.since), [0, 4]);
});

test("retry() of a cancelled run, then cancel again: each result() gets its own outcome", async () => {
  gw.onRunCreated = runsForever;
  const run = await client.startFlow("analyze", {}, { graph: false });
  await seqReached(run, 2);
  await run.cancel("first");
  assert.equal((await rejection(run.result({ timeout: TIMEOUT }))).reason, "first");
  gw.onRetry = (id) => gw.append(id, ev.stepStarted("fetch", 2));
  await run.retry();
  await seqReached(run, 7); // step:cancelled x2, run:cancelled, run:retried, step:started
  assert.equal(run.step("fetch").status, "started");
  assert.equal(run.step("fetch").attempt, 2);
  assert.equal(run.status, "started");
  assert.equal(run.cancelReason, null);
  await run.cancel("second");
  assert.equal((await rejection(run.result({ timeout: TIMEOUT }))).reason, "second");
  assert.equal(run.status, "cancelled");
});

test("retry() of a run that has not ended rejects with 409 and leaves its result() alone", async () => {
  gw.onRunCreated = runsForever;
  const run = await client.startFlow("analyze", {}, { graph: false });
  await seqReached(run, 2);
  const err = await rejection(run.retry());
  assert.equal(err.status, 409);
  assert.equal(err.code, "conflict");
  assert.equal(err.runId, run.runId);
  gw.append(run.runId, ev.stepCompleted("fetch", 1), ev.stepStarted("summarize"), ev.stepCompleted("summarize", 2),
    ev.runCompleted(2));
  assert.equal(await run.result({ timeout: TIMEOUT }), 2);
});

test("getRun replays a retried run past its old failure to its real end", async () => {
  const runId = gw.createRun("analyze", {});
  gw.record(runId, ev.runStarted(), ev.stepStarted("fetch"), ev.stepFailed("fetch", "boom", 1),
    ev.runFailed("fetch", "boom", 1), ev.runRetried(), ev.stepStarted("fetch", 2));
  const run = client.getRun(runId);
  await seqReached(run, 6);
  assert.equal(run.status, "started", "run:failed is history: run:retried followed it");
  assert.equal(run.step("fetch").status, "started");
  assert.ok(!gw.frames("unsubscribe").some((f) => f.msg.run_id === runId), "still followed");
  gw.append(runId, ev.stepCompleted("fetch", 1), ev.stepStarted("summarize"), ev.stepCompleted("summarize", "late"),
    ev.runCompleted("late"));
  assert.equal(await run.result({ timeout: TIMEOUT }), "late");
});

// ---- idempotent starts ------------------------------------------------------------------------

test("every start sends an Idempotency-Key: a fresh UUID per call unless given one", async () => {
  const from = posts("/rpc/run_flow").length;
  await triggerFlow("analyze", {}, { client, timeout: TIMEOUT });
  await triggerFlow("analyze", {}, { client, timeout: TIMEOUT });
  await triggerFlow("analyze", { n: 1 }, { client, timeout: TIMEOUT, idempotencyKey: "order-1234" });
  const keys = posts("/rpc/run_flow").slice(from).map((p) => p.headers["idempotency-key"]);
  assert.equal(keys.length, 3);
  assert.match(keys[0], UUID);
  assert.match(keys[1], UUID);
  assert.notEqual(keys[0], keys[1], "one key per call");
  assert.equal(keys[2], "order-1234");
});

test("the same key again gives the same run (200 is as good as 201); another input gives 422", async () => {
  const runs = gw.runs.size;
  const key = `order-${Date.now()}`;
  const first = await client.startFlow("analyze", { n: 1 }, { idempotencyKey: key, graph: false });
  const again = await client.startFlow("analyze", { n: 1 }, { idempotencyKey: key, graph: false });
  assert.equal(again.runId, first.runId);
  assert.equal(gw.runs.size, runs + 1, "one run for the two starts");
  assert.deepEqual(await again.result({ timeout: TIMEOUT }), { summary: "ok" });

  const err = await rejection(triggerFlow("analyze", { n: 2 }, { client, idempotencyKey: key }));
  assert.ok(err instanceof PGFlowError);
  assert.equal(err.status, 422);
  assert.equal(err.code, "idempotency_conflict");
  assert.match(err.message, /startFlow\("analyze"\): .*different input/);
  assert.equal(gw.runs.size, runs + 1);
});

test("a lost answer: the client sends the start again with the SAME key, and one run starts", async () => {
  const from = posts("/rpc/run_flow").length;
  const runs = gw.runs.size;
  const firstPost = gw.runFlowPosts + 1;
  gw.loseAnswer = (n) => n === firstPost; // the run starts, its 201 never arrives
  const output = await triggerFlow("analyze", { lost: true }, { client, timeout: TIMEOUT });
  assert.deepEqual(output, { summary: "ok" });
  const sent = posts("/rpc/run_flow").slice(from);
  assert.equal(sent.length, 2, "resent once after the lost answer");
  assert.match(sent[0].headers["idempotency-key"], UUID);
  assert.equal(sent[1].headers["idempotency-key"], sent[0].headers["idempotency-key"], "the resend keeps its key");
  assert.deepEqual(sent[1].json, sent[0].json);
  assert.equal(gw.runs.size, runs + 1, "a changed key would have started a second run");
});

test("a start that never gets an answer is sent 4 times, all with one key, then rejects with network_error", async () => {
  const from = posts("/rpc/run_flow").length;
  const runs = gw.runs.size;
  gw.loseAnswer = () => true;
  const err = await rejection(client.startFlow("analyze", {}, { idempotencyKey: "lost-forever", graph: false }));
  assert.ok(err instanceof PGFlowError);
  assert.equal(err.code, "network_error");
  const sent = posts("/rpc/run_flow").slice(from);
  assert.equal(sent.length, 4);
  assert.deepEqual(new Set(sent.map((p) => p.headers["idempotency-key"])), new Set(["lost-forever"]));
  assert.equal(gw.runs.size, runs + 1);
});

test("an HTTP error is not resent; a bad key is a TypeError before any request", async () => {
  const from = posts("/rpc/run_flow").length;
  const err = await rejection(client.startFlow("no-such-flow", {}));
  assert.equal(err.status, 404);
  assert.equal(posts("/rpc/run_flow").length, from + 1);
  const sent = gw.requests.length;
  for (const bad of ["", "has space", "x".repeat(256), "caf\u00e9"]) {
    await assert.rejects(client.startFlow("analyze", {}, { idempotencyKey: bad }), TypeError);
  }
  await assert.rejects(triggerFlow("analyze", {}, { client, idempotencyKey: 7 }), TypeError);
  assert.equal(gw.requests.length, sent);
});

test("without crypto.randomUUID (a page on plain http) keys are still random UUIDs", () => {
  const saved = Object.getOwnPropertyDescriptor(globalThis, "crypto");
  try {
    const real = globalThis.crypto;
    Object.defineProperty(globalThis, "crypto", {
      configurable: true, value: { getRandomValues: (a) => real.getRandomValues(a) },
    });
    const a = newIdempotencyKey();
    const b = newIdempotencyKey();
    assert.match(a, UUID);
    assert.notEqual(a, b);
    Object.defineProperty(globalThis, "crypto", { configurable: true, value: undefined });
    const c = newIdempotencyKey();
    assert.match(c, UUID);
    assert.notEqual(c, newIdempotencyKey());
  } finally {
    Object.defineProperty(globalThis, "crypto", saved);
  }
});
