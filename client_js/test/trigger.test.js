// triggerFlow and startFlow: outputs, failures, cancellation, HTTP errors, auth.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { createClient, FlowFailedError, PGFlowError, triggerFlow } from "../client.js";
import { completedRun, ev, GRAPH, startFakeGateway } from "./fake_gateway.js";

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

test("triggerFlow resolves with the run's output and shows every event once, in order", async () => {
  gw.onRunCreated = (runId) => gw.append(runId, ...completedRun({ summary: "short" }));
  const seen = [];
  const output = await triggerFlow("analyze", { url: "https://example.org" }, {
    client,
    timeout: 3_000,
    onEvent: (e) => seen.push(e),
  });
  assert.deepEqual(output, { summary: "short" });
  assert.deepEqual(seen.map((e) => e.seq), [1, 2, 3, 4, 5, 6]);
  assert.deepEqual(seen.map((e) => e.event), [
    "run:started", "step:started", "step:completed", "step:started", "step:completed", "run:completed",
  ]);
  assert.ok(seen.every((e) => !("type" in e)), "listeners get the event, not the wire frame");
  const post = gw.requests.find((r) => r.path === "/rpc/run_flow");
  assert.deepEqual(JSON.parse(post.body), { flow_slug: "analyze", input: { url: "https://example.org" } });
});

test("triggerFlow with only a url uses a client of its own", async () => {
  gw.onRunCreated = (runId) => gw.append(runId, ...completedRun(42));
  assert.equal(await triggerFlow("analyze", {}, { url: gw.url, timeout: 3_000 }), 42);
});

test("run:failed rejects with FlowFailedError carrying the failing step", async () => {
  let runId;
  gw.onRunCreated = (id) => {
    runId = id;
    gw.append(id,
      ev.runStarted(),
      ev.stepStarted("fetch"),
      ev.stepRetrying("fetch", "timeout", 1),
      ev.stepFailed("fetch", "HTTP 500 from example.org", 2),
      ev.runFailed("fetch", "HTTP 500 from example.org", 2));
  };
  const err = await triggerFlow("analyze", {}, { client, timeout: 3_000 }).then(
    () => assert.fail("should have rejected"),
    (e) => e,
  );
  assert.ok(err instanceof FlowFailedError);
  assert.ok(err instanceof PGFlowError);
  assert.equal(err.name, "FlowFailedError");
  assert.equal(err.runId, runId);
  assert.equal(err.stepSlug, "fetch");
  assert.equal(err.error, "HTTP 500 from example.org");
  assert.equal(err.attempt, 2);
  assert.match(err.message, new RegExp(runId));
});

test("a failed run's state: failed step, cancelled dependents, terminal status", async () => {
  gw.onRunCreated = (id) => gw.append(id, ev.runStarted(), ev.stepStarted("fetch"),
    ev.stepFailed("fetch", "boom", 3), ev.runFailed("fetch", "boom", 3));
  const run = await client.startFlow("analyze", {});
  assert.deepEqual(run.graph, GRAPH);
  await assert.rejects(run.result({ timeout: 3_000 }), FlowFailedError);
  assert.equal(run.status, "failed");
  assert.equal(run.error, "boom");
  assert.equal(run.step("fetch").status, "failed");
  assert.equal(run.step("fetch").attempt, 3);
  assert.equal(run.step("summarize").status, "cancelled");
  assert.equal(await run.waitForStatus("failed", { timeout: 1_000 }), run);
  await assert.rejects(run.waitForStatus("completed", { timeout: 1_000 }), FlowFailedError);
});

test("abort rejects with an AbortError naming the run, and stops following it", async () => {
  let runId;
  gw.onRunCreated = (id) => {
    runId = id;
    gw.append(id, ev.runStarted()); // and then nothing: the run is still going
  };
  const controller = new AbortController();
  const promise = triggerFlow("analyze", {}, {
    client,
    signal: controller.signal,
    onEvent: () => controller.abort(),
  });
  const err = await promise.then(() => assert.fail("should have rejected"), (e) => e);
  assert.equal(err.name, "AbortError");
  assert.ok(err instanceof DOMException);
  assert.match(err.message, new RegExp(runId));
  await gw.until(() => gw.frames("unsubscribe").some((f) => f.msg.run_id === runId), "unsubscribe");
});

test("an already aborted signal rejects before any request", async () => {
  const before = gw.requests.length;
  const controller = new AbortController();
  controller.abort();
  await assert.rejects(triggerFlow("analyze", {}, { client, signal: controller.signal }), { name: "AbortError" });
  assert.equal(gw.requests.length, before);
});

test("timeout rejects with a TimeoutError naming the run", async () => {
  let runId;
  gw.onRunCreated = (id) => {
    runId = id;
    gw.append(id, ev.runStarted());
  };
  const err = await triggerFlow("analyze", {}, { client, timeout: 150 }).then(
    () => assert.fail("should have rejected"),
    (e) => e,
  );
  assert.equal(err.name, "TimeoutError");
  assert.match(err.message, new RegExp(runId));
});

test("a non-2xx answer rejects with its status and code", async () => {
  const err = await client.startFlow("no-such-flow", {}).then(() => assert.fail("should have rejected"), (e) => e);
  assert.ok(err instanceof PGFlowError);
  assert.equal(err.status, 404);
  assert.equal(err.code, "not_found");
  assert.match(err.message, /unknown flow no-such-flow/);
});

test("a token goes in the Authorization header and on the socket URL", async () => {
  gw.onRunCreated = (id) => gw.append(id, ...completedRun("ok"));
  const authed = createClient({ url: gw.url, token: "t0k3n", idleTimeout: 0 });
  try {
    const conns = gw.connections.length;
    assert.equal(await triggerFlow("analyze", {}, { client: authed, timeout: 3_000 }), "ok");
    const post = gw.requests.findLast((r) => r.path === "/rpc/run_flow");
    assert.equal(post.headers.authorization, "Bearer t0k3n");
    assert.equal(gw.connections[conns].pgUrl.searchParams.get("token"), "t0k3n");
  } finally {
    authed.close();
  }
});
