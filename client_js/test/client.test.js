// createClient: attaching to runs, live state, the shared socket, subscription errors.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { createClient, FlowRun, PGFlowError } from "../client.js";
import { completedRun, ev, GRAPH, seqReached, startFakeGateway } from "./fake_gateway.js";

let gw;

before(async () => {
  gw = await startFakeGateway();
});

after(async () => {
  await gw.close();
});

function newClient(options = {}) {
  return createClient({ url: gw.url, idleTimeout: 0, ...options });
}

test("getRun on a finished run replays it to its final state", async () => {
  const runId = gw.createRun();
  gw.append(runId, ...completedRun({ summary: "done" }));
  const client = newClient();
  try {
    const seen = [];
    const run = client.getRun(runId, { onEvent: (e) => seen.push(e.seq) });
    assert.ok(run instanceof FlowRun);
    assert.deepEqual(await run.result({ timeout: 3_000 }), { summary: "done" });
    assert.deepEqual(seen, [1, 2, 3, 4, 5, 6]);
    assert.equal(run.status, "completed");
    assert.equal(run.lastSeq, 6);
    assert.equal(run.step("summarize").status, "completed");
    assert.deepEqual(run.step("summarize").output, { summary: "done" });
    const subscribe = gw.frames("subscribe").findLast((f) => f.msg.run_id === runId);
    assert.equal(subscribe.msg.since, 0);
    // Terminal: the client unsubscribes on its own.
    await gw.until(() => gw.frames("unsubscribe").some((f) => f.msg.run_id === runId), "unsubscribe");
    // The graph of a run attached by id alone comes through the run snapshot.
    assert.deepEqual(await run.loadGraph(), GRAPH);
    assert.equal(run.flowSlug, "analyze");
  } finally {
    client.close();
  }
});

test("getRun on an unknown run rejects with the subscription error's code", async () => {
  const client = newClient();
  try {
    const run = client.getRun("00000000-0000-0000-0000-000000000000");
    const err = await run.result({ timeout: 3_000 }).then(() => assert.fail("should have rejected"), (e) => e);
    assert.ok(err instanceof PGFlowError);
    assert.equal(err.code, "not_found");
    assert.match(err.message, /00000000-0000-0000-0000-000000000000/);
  } finally {
    client.close();
  }
});

test("runs share one socket, and step state is live", async () => {
  const started = [];
  gw.onRunCreated = (id) => {
    started.push(id);
    gw.append(id, ev.runStarted(), ev.stepStarted("fetch"));
  };
  const client = newClient();
  try {
    const conns = gw.connections.length;
    const a = await client.startFlow("analyze", { n: 1 });
    const b = await client.startFlow("analyze", { n: 2 });
    await Promise.all([seqReached(a, 2), seqReached(b, 2)]);
    assert.equal(gw.connections.length, conns + 1, "one socket for both runs");
    assert.equal(a.step("fetch").status, "started");
    assert.equal(a.step("summarize").status, "created");
    assert.equal(a.graph.output_step, "summarize");

    const completedSteps = [];
    const off = a.on("step:completed", (e) => completedSteps.push(e.step_slug));
    gw.append(a.runId, ev.stepCompleted("fetch", "page"), ev.stepStarted("summarize"));
    await seqReached(a, 4);
    assert.equal(a.step("summarize").status, "started");
    assert.equal(a.step("fetch").status, "completed");
    assert.equal(a.step("fetch").output, "page");
    off();
    gw.append(a.runId, ev.stepCompleted("summarize", "sum"), ev.runCompleted("sum"));
    assert.equal(await a.result({ timeout: 3_000 }), "sum");
    assert.deepEqual(completedSteps, ["fetch"], "an unsubscribed listener hears nothing more");
    assert.equal(b.status, "started", "the other run is untouched");

    gw.append(b.runId, ev.stepFailed("fetch", "nope", 1), ev.runFailed("fetch", "nope", 1));
    await assert.rejects(b.result({ timeout: 3_000 }), { name: "FlowFailedError", runId: b.runId });
  } finally {
    client.close();
  }
});

test("a retried step: waiting for its retry, then running attempt 2, each attempt with its step:started", async () => {
  let runId;
  gw.onRunCreated = (id) => {
    runId = id;
    gw.append(id, ev.runStarted(), ev.stepStarted("fetch"));
  };
  const client = newClient();
  try {
    const run = await client.startFlow("analyze", {});
    await seqReached(run, 2);
    const fetch = run.step("fetch");
    assert.deepEqual([fetch.status, fetch.attempt], ["started", 1]);
    const firstStart = fetch.startedAt;

    gw.append(runId, ev.stepRetrying("fetch", "HTTP 503", 1)); // the backoff wait
    await seqReached(run, 3);
    assert.deepEqual([fetch.status, fetch.attempt, fetch.error], ["retrying", 1, "HTTP 503"]);

    gw.append(runId, ev.stepStarted("fetch", 2)); // a worker claimed attempt 2: it runs
    await seqReached(run, 4);
    assert.deepEqual([fetch.status, fetch.attempt], ["started", 2]);
    assert.equal(fetch.error, "HTTP 503", "the previous attempt's error stays while the retry runs");
    assert.equal(fetch.startedAt, run.events[3].at, "startedAt is the running attempt's");
    assert.ok(firstStart <= fetch.startedAt);

    // The event's own `status` field is what the step shows; an event without `attempt`
    // keeps the one known.
    gw.append(runId, { ...ev.stepRetrying("fetch", "HTTP 503 again", 2), status: "created", attempt: null });
    await seqReached(run, 5);
    assert.deepEqual([fetch.status, fetch.attempt, fetch.error], ["created", 2, "HTTP 503 again"]);
    gw.append(runId, ev.stepStarted("fetch", 3), ev.stepCompleted("fetch", "page", 3));
    await seqReached(run, 7);
    assert.deepEqual([fetch.status, fetch.attempt, fetch.error, fetch.output], ["completed", 3, null, "page"]);
  } finally {
    client.close();
  }
});

test("a terminal run stays terminal and never applies an event twice", async () => {
  const runId = gw.createRun();
  gw.append(runId, ...completedRun("x"));
  const client = newClient();
  try {
    const run = client.getRun(runId);
    await run.result({ timeout: 3_000 });
    // Straight at the state machine: replays, duplicates and post-terminal events are no-ops.
    assert.equal(run._apply({ ...gw.runs.get(runId).log[2] }), false);
    assert.equal(run._apply({ run_id: runId, seq: 7, ...ev.runFailed("fetch", "late", 1), at: "z" }), false);
    assert.equal(run.status, "completed");
    assert.equal(run.events.length, 6);
  } finally {
    client.close();
  }
});

test("waitForStatus and result honour signal and timeout", async () => {
  gw.onRunCreated = (id) => gw.append(id, ev.runStarted());
  const client = newClient();
  try {
    const run = await client.startFlow("analyze", {}, { graph: false });
    assert.equal(run.graph, null);
    await assert.rejects(run.waitForStatus("completed", { timeout: 50 }), { name: "TimeoutError" });
    const controller = new AbortController();
    const waiting = run.result({ signal: controller.signal });
    controller.abort();
    await assert.rejects(waiting, { name: "AbortError" });
    assert.equal(await run.waitForStatus("started"), run);
    gw.append(run.runId, ev.runCompleted(1));
    assert.equal(await run.waitForStatus("completed", { timeout: 3_000 }), run);
    await assert.rejects(run.waitForStatus("failed"), { code: "status_unreachable" });
  } finally {
    client.close();
  }
});

test("close() rejects followed runs and is idempotent", async () => {
  gw.onRunCreated = (id) => gw.append(id, ev.runStarted());
  const client = newClient();
  const run = await client.startFlow("analyze", {});
  client.close();
  client.close();
  await assert.rejects(run.result(), { code: "client_closed" });
  assert.equal(client.state, "closed");
  await assert.rejects(client.startFlow("analyze", {}), { code: "client_closed" });
});
