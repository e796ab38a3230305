// Map steps (`task:*` events, one task per element) and HTTP steps on the client: a step's kind
// from the graph, the element counts on the step state, that only step:* events move the step's
// own status, element chunks through on() and onChunk, dedupe across reconnects, and that
// following a 10,000-element map costs O(1) per event.
import assert from "node:assert/strict";
import { performance } from "node:perf_hooks";
import { after, before, beforeEach, test } from "node:test";

import { createClient, FlowFailedError } from "../client.js";
import { FlowRun } from "../client/run.js";
import { TASK_ERRORS_KEPT } from "../client/tasks.js";
import { ev, MAP_GRAPH, seqReached, startFakeGateway } from "./fake_gateway.js";

let gw;

before(async () => {
  gw = await startFakeGateway();
});

beforeEach(() => {
  gw.replayOverlap = 0;
});

after(async () => {
  await gw.close();
});

function newClient(options = {}) {
  return createClient({ url: gw.url, idleTimeout: 0, reconnect: { minDelay: 10, maxDelay: 50 }, ...options });
}

const SPLIT = [ev.runStarted(), ev.stepStarted("split"), ev.stepCompleted("split", [1, 2, 3, 4, 5])];

/** Start a run of the map flow whose first events are `rows`; resolves once they are applied. */
async function startMapRun(client, rows, options = {}) {
  gw.onRunCreated = (id) => gw.append(id, ...rows);
  const run = await client.startFlow("mapper", {}, options);
  await seqReached(run, rows.length);
  return run;
}

/** The counts of a step, as one comparable array. */
const counts = (step) => [step.tasks, step.tasksCompleted, step.tasksFailed, step.tasksRetrying];

/** A FlowRun fed events by hand (no socket), with `seq` and `at` filled in. */
function handRun(graph = null) {
  const host = { request: async () => ({}), loadGraph: async () => graph, release: () => {}, follow: () => {} };
  const run = new FlowRun(host, "r-hand", "mapper", {}, 1);
  let seq = 0;
  const feed = (...rows) => {
    for (const row of rows) run._apply({ run_id: "r-hand", seq: ++seq, at: new Date(0).toISOString(), ...row });
  };
  return { run, feed };
}

test("each step's kind comes from the graph: task, map, http", async () => {
  const client = newClient();
  try {
    const run = await startMapRun(client, [ev.runStarted()]);
    assert.deepEqual(["split", "square", "render"].map((s) => run.step(s).kind), ["task", "map", "http"]);
    assert.equal(run.snapshot().steps.square.kind, "map");
    assert.equal(run.step("unknown-to-the-graph").kind, "task");
    assert.equal(run.graph.steps.find((s) => s.slug === "render").url, "https://fn.example/render");
  } finally {
    client.close();
  }
});

test("a map step's progress: its element count from step:started, counts from task events", async () => {
  const client = newClient();
  try {
    const run = await startMapRun(client, [...SPLIT, ev.mapStarted("square", 5)]);
    const square = run.step("square");
    assert.deepEqual(counts(square), [5, 0, 0, 0]);
    assert.equal(square.status, "started");
    assert.deepEqual(counts(run.step("split")), [null, 0, 0, 0], "a task step has no elements");

    gw.append(run.runId, ev.taskCompleted("square", 0), ev.taskCompleted("square", 3), ev.taskRetrying("square", 1, "flaky"));
    await seqReached(run, 7);
    assert.deepEqual(counts(square), [5, 2, 0, 1]);
    assert.equal(square.status, "started", "an element's retry is not the step's");
    assert.equal(square.attempt, 1, "nor is its attempt");
    assert.equal(square.error, null);
    assert.deepEqual(square.taskErrors.map((e) => [e.index, e.attempt, e.error, e.final]), [[1, 1, "flaky", false]]);
    assert.deepEqual([0, 1, 2, 3].map((i) => run.taskStatus("square", i)), ["completed", "retrying", "pending", "completed"]);

    gw.append(run.runId, ev.taskStarted("square", 1, 2), ev.taskCompleted("square", 1, 2),
      ev.taskCompleted("square", 2), ev.taskCompleted("square", 4));
    await seqReached(run, 11);
    assert.deepEqual(counts(square), [5, 5, 0, 0]);
    assert.equal(square.status, "started", "every element done: still the step:completed's to say");
    assert.equal(square.completedAt, null);

    const output = [1, 4, 9, 16, 25];
    gw.append(run.runId, ev.stepCompleted("square", output), ev.stepStarted("render"), ev.stepCompleted("render", "ok"), ev.runCompleted("ok"));
    assert.equal(await run.result({ timeout: 3_000 }), "ok");
    assert.equal(square.status, "completed");
    assert.deepEqual(square.output, output);
    assert.deepEqual(counts(square), [5, 5, 0, 0]);
  } finally {
    client.close();
  }
});

test("an element that fails for good counts as failed; only the step:failed that follows fails the step", async () => {
  const client = newClient();
  try {
    const run = await startMapRun(client, [...SPLIT, ev.mapStarted("square", 3), ev.taskCompleted("square", 0)]);
    const square = run.step("square");
    const heard = [];
    run.on("task:failed", (e) => heard.push([e.index, e.error]));
    gw.append(run.runId, ev.taskRetrying("square", 2, "boom", 1), ev.taskStarted("square", 2, 2), ev.taskFailed("square", 2, "boom again", 2));
    await seqReached(run, 8);
    assert.deepEqual(heard, [[2, "boom again"]]);
    assert.deepEqual(counts(square), [3, 1, 1, 0]);
    assert.equal(square.status, "started", "task:failed is not step:failed");
    assert.equal(run.status, "started");
    assert.equal(run.taskStatus("square", 2), "failed");
    assert.deepEqual(square.taskErrors.map((e) => [e.index, e.attempt, e.final]), [[2, 1, false], [2, 2, true]]);

    gw.append(run.runId, ev.stepFailed("square", "task 2 failed: boom again", 1), ev.runFailed("square", "task 2 failed: boom again", 1));
    await assert.rejects(run.result({ timeout: 3_000 }), (err) => err instanceof FlowFailedError && err.stepSlug === "square");
    assert.equal(square.status, "failed");
    assert.equal(square.error, "task 2 failed: boom again");
    assert.equal(run.step("render").status, "cancelled");
    assert.deepEqual(counts(square), [3, 1, 1, 0], "the counts stay as they were");
  } finally {
    client.close();
  }
});

test("the step keeps the latest element errors only, each snapshot its own list", () => {
  const { run, feed } = handRun();
  feed(ev.mapStarted("square", 100));
  const before = run.snapshot().steps.square;
  for (let i = 0; i < 3 * TASK_ERRORS_KEPT; i++) feed(ev.taskRetrying("square", i, `error ${i}`));
  const square = run.step("square");
  assert.equal(square.tasksRetrying, 3 * TASK_ERRORS_KEPT);
  assert.equal(square.taskErrors.length, TASK_ERRORS_KEPT);
  assert.deepEqual(square.taskErrors.map((e) => e.index), Array.from({ length: TASK_ERRORS_KEPT }, (_, k) => 2 * TASK_ERRORS_KEPT + k));
  assert.deepEqual(before.taskErrors, [], "an earlier snapshot keeps its own");
  assert.ok(Object.isFrozen(square.taskErrors));
});

test("a map step's element chunks: on('task:stream') and onChunk with {index, attempt}; a step's own keep two arguments", async () => {
  const client = newClient();
  try {
    const calls = [];
    // a rest parameter sees how many arguments each call really passed
    const onChunk = (...args) => calls.push(args);
    const run = await startMapRun(client, [...SPLIT, ev.mapStarted("square", 2)], { onChunk });
    const heard = [];
    run.on("task:stream", (e) => heard.push([e.index, e.chunks]));
    gw.append(run.runId,
      ev.taskStream("square", 1, ["a", "b"]),
      ev.taskStream("square", 0, [{ p: 1 }], 2),
      ev.stepStarted("render"),
      ev.stepStream("render", ["x"]));
    await seqReached(run, 8);
    assert.deepEqual(heard, [[1, ["a", "b"]], [0, [{ p: 1 }]]]);
    assert.deepEqual(calls, [
      ["square", "a", { index: 1, attempt: 1 }],
      ["square", "b", { index: 1, attempt: 1 }],
      ["square", { p: 1 }, { index: 0, attempt: 2 }],
      ["render", "x"],
    ]);
    assert.deepEqual(run.step("square").chunks, [], "elements' chunks are not the step's own");
    assert.deepEqual(counts(run.step("square")), [2, 0, 0, 0], "a chunk moves no count");
  } finally {
    client.close();
  }
});

test("a reconnect that replays events already seen, and duplicates sent live, count nothing twice", async () => {
  const client = newClient();
  try {
    const run = await startMapRun(client, [...SPLIT, ev.mapStarted("square", 40)]);
    const rows = (from, to) => Array.from({ length: to - from }, (_, k) => ev.taskCompleted("square", from + k));
    gw.append(run.runId, ...rows(0, 10), ev.taskRetrying("square", 10, "flaky"));
    await seqReached(run, 15);
    gw.replayOverlap = 8; // the resubscribe replays 8 events the client already has
    const first = gw.connections.length - 1;
    gw.connections[first].terminate();
    gw.append(run.runId, ...rows(11, 25)); // logged while the client is away
    await gw.until(() => gw.frames("subscribe").find((f) => f.conn > first && f.msg.run_id === run.runId), "the resubscribe");
    await seqReached(run, 29);
    gw.resend(run.runId, 20); // an element's task:completed, again
    gw.resend(run.runId, 15); // the retrying, again
    gw.append(run.runId, ev.taskStarted("square", 10, 2), ev.taskCompleted("square", 10, 2), ...rows(25, 40));
    await seqReached(run, 46);
    const square = run.step("square");
    assert.deepEqual(counts(square), [40, 40, 0, 0]);
    assert.equal(square.taskErrors.length, 1, "the replayed task:retrying is not a second error");
    assert.deepEqual(run.events.map((e) => e.seq), Array.from({ length: 46 }, (_, k) => k + 1));
  } finally {
    client.close();
  }
});

test("a retried run: the elements that completed stay completed, the failed ones run again", async () => {
  const { run, feed } = handRun();
  feed(ev.runStarted(), ev.mapStarted("square", 4), ev.taskCompleted("square", 0), ev.taskCompleted("square", 1),
    ev.taskFailed("square", 2, "boom"), ev.stepFailed("square", "task 2 failed: boom", 1), ev.runFailed("square", "task 2 failed: boom", 1));
  const square = run.step("square");
  assert.deepEqual(counts(square), [4, 2, 1, 0]);
  await run.retry(); // follows the run again: its run:retried and what follows apply
  feed(ev.runRetried());
  assert.equal(square.status, "created");
  assert.deepEqual(counts(square), [4, 2, 0, 0], "re-queued: the failed element is pending again");
  assert.deepEqual(square.taskErrors, []);
  assert.equal(run.taskStatus("square", 2), "pending");
  feed(ev.mapStarted("square", 4, 2));
  assert.deepEqual(counts(square), [4, 2, 0, 0], "the new start keeps what completed");
  feed(ev.taskCompleted("square", 2, 2), ev.taskCompleted("square", 3), ev.taskCompleted("square", 0));
  assert.deepEqual(counts(square), [4, 4, 0, 0], "an element completed again is counted once");
  // a start with another element count (the array it maps over changed) starts from nothing
  feed(ev.runFailed("square", "later", 1));
  await run.retry();
  feed(ev.runRetried(), ev.mapStarted("square", 6, 3));
  assert.deepEqual(counts(square), [6, 0, 0, 0]);
});

test("the graph loaded after a map step started keeps it a map; task events before any count still count", () => {
  const { run, feed } = handRun();
  feed(ev.mapStarted("square", 3));
  assert.equal(run.step("square").kind, "map", "step:started's `tasks` says it is a map");
  run._setGraph({ slug: "mapper", steps: [{ slug: "square", depends_on: [] }, { slug: "render", depends_on: [], kind: "http" }] });
  assert.equal(run.step("square").kind, "map");
  assert.equal(run.step("render").kind, "http");
  assert.equal(run.snapshot().steps.render.kind, "http");
  run._setGraph(MAP_GRAPH);
  assert.equal(run.snapshot().steps.render.kind, "http");

  // No step:started seen (a gateway that sends none, say): the elements grow as they come.
  const other = handRun(MAP_GRAPH);
  other.run._setGraph(MAP_GRAPH);
  other.feed(ev.taskCompleted("square", 7), ev.taskCompleted("square", 2), ev.taskCompleted("square", 7));
  const square = other.run.step("square");
  assert.deepEqual(counts(square), [null, 2, 0, 0]);
  assert.equal(other.run.taskStatus("square", 7), "completed");
  assert.equal(other.run.taskStatus("square", 8), null);
  assert.equal(other.run.taskStatus("split", 0), null, "no map");
});

test("an index no map can have moves nothing", () => {
  const { run, feed } = handRun();
  feed(ev.mapStarted("square", 3));
  for (const index of [-1, 1.5, "1", null, 100_000, 1e12]) feed({ ...ev.taskCompleted("square", 0), index });
  feed({ ...ev.taskCompleted("square", 0), index: undefined });
  assert.deepEqual(counts(run.step("square")), [3, 0, 0, 0]);
  assert.equal(run.taskStatus("square", 1e12), null);
  assert.equal(run.events.length, 8, "kept and emitted all the same");
  feed(ev.mapStarted("square", 1e12, 2)); // not an element count: keeps the one it had
  assert.equal(run.step("square").tasks, 3);
});

test("10,000 task:completed through the socket: every element counted once, the step completes with its step:completed", async () => {
  const client = newClient();
  try {
    const n = 10_000;
    const run = await startMapRun(client, [...SPLIT, ev.mapStarted("square", n)]);
    let changes = 0;
    run.subscribe(() => {
      changes++;
      run.snapshot(); // as a UI store reads it: after every change
    });
    const rows = Array.from({ length: n }, (_, i) => ev.taskCompleted("square", i));
    gw.append(run.runId, ...rows, ev.stepCompleted("square", []), ev.stepStarted("render"), ev.stepCompleted("render", 1), ev.runCompleted(1));
    assert.equal(await run.result({ timeout: 10_000 }), 1);
    assert.deepEqual(counts(run.step("square")), [n, n, 0, 0]);
    assert.equal(changes, n + 4);
  } finally {
    client.close();
  }
});

test("following a 10,000-element map is O(1) per event: as cheap as events that change nothing, snapshots included", () => {
  const n = 10_000;
  // Each pass feeds a fresh run with an n-element map n events, reading a snapshot after each (a
  // UI store's pattern). The baseline's events change nothing but a task step (an event this
  // client does not know, naming `split`): its snapshot is rebuilt as often, so the difference is
  // what the map's elements cost. Best of 3, against noise.
  const pass = (row) => {
    const { run, feed } = handRun();
    feed(ev.mapStarted("square", n));
    const started = performance.now();
    for (let i = 0; i < n; i++) {
      feed(row(i));
      run.snapshot();
    }
    return { ms: performance.now() - started, run };
  };
  const best = (row) => {
    let result = pass(row);
    for (let k = 0; k < 2; k++) {
      const again = pass(row);
      if (again.ms < result.ms) result = again;
    }
    return result;
  };
  const baseline = best((i) => ({ event: "x:unknown", step_slug: "split", index: i }));
  const mapped = best((i) => (i % 10 === 9 ? ev.taskRetrying("square", i, "flaky") : ev.taskCompleted("square", i)));
  const square = mapped.run.step("square");
  assert.deepEqual(counts(square), [n, n - n / 10, 0, n / 10]);
  // A per-element array copied into each snapshot would make this quadratic: ~1,000 times the
  // baseline at this size, not a few.
  assert.ok(mapped.ms < 4 * baseline.ms + 1, `map events took ${mapped.ms.toFixed(1)} ms, the baseline ${baseline.ms.toFixed(1)} ms`);
  // And nothing in a snapshot grows with the elements: only counts and the last few errors.
  const snap = mapped.run.snapshot().steps.square;
  for (const [key, value] of Object.entries(snap)) {
    if (Array.isArray(value)) assert.ok(value.length <= TASK_ERRORS_KEPT, `${key} holds ${value.length} entries`);
  }
  assert.equal(snap.taskErrors, square.taskErrors, "shared, frozen: a snapshot copies no error list");
});
