// The client against a REAL gateway: `python -m pgflow demo` (embedded PostgreSQL, the
// example flows diamond / fanout / flaky / doomed, a worker) started once for this file.
// What the fake gateway cannot prove: the real wire format, real run timing, a socket that
// dies under the client (TCP proxy), and a gateway process that restarts mid-run.
//
// Needs the repository's Python environment (or PGFLOW_PYTHON). No test sleeps: each awaits
// a promise or a condition under a timeout.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import {
  createClient, FlowCancelledError, FlowFailedError, InputRejectedError, PGFlowError, triggerFlow,
} from "../client.js";
import {
  eventSeen, freshDataDir, getJson, removeDataDir, startGateway, startProxy, until, withTimeout,
} from "./real_gateway.js";

const RUN_TIMEOUT = 20_000; // ms for a run to end, retries and a gateway restart included

// diamond: fetch -> (summarize | count_words) -> report, whose output is the run's.
const DIAMOND_INPUT = { text: "the  cat and\nthe hat." };
const DIAMOND_OUTPUT = { summary: "the cat and the hat.", words: 5, top_words: ["the", "and", "cat"] };
const FANOUT_SUM = (start) => Array.from({ length: 12 }, (_, i) => (start + i) ** 2).reduce((a, b) => a + b);

let dataDir;
let gw;

before(async () => {
  dataDir = freshDataDir();
  // e2e/big_flows.py: flow `big`, one step whose output is as large as the input asks.
  gw = await startGateway({ dataDir, extraArgs: ["--flows", "e2e.big_flows"] });
});

after(async () => {
  try {
    if (gw) assert.equal(await gw.stop(), 0, `the gateway exits 0 on SIGINT:\n${gw.log()}`);
  } finally {
    removeDataDir(dataDir);
  }
});

// Short backoffs keep the reconnect tests quick; the logic is the defaults'.
function newClient(options = {}) {
  return createClient({ url: gw.url, idleTimeout: 0, reconnect: { minDelay: 20, maxDelay: 250 }, ...options });
}

/** A WebSocket constructor for the client that records each socket's close code. */
function recordingWebSocket() {
  const closeCodes = [];
  class RecordingWebSocket extends globalThis.WebSocket {
    constructor(url) {
      super(url);
      this.addEventListener("close", (e) => closeCodes.push(e.code));
    }
  }
  return { WebSocket: RecordingWebSocket, closeCodes };
}

async function rejection(promise) {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  assert.fail("expected a rejection");
}

const snapshot = (runId) => getJson(`${gw.url}/runs/${runId}`);

function range(n) {
  return Array.from({ length: n }, (_, i) => i + 1);
}

/** The run's events as a fresh client replays them from the log (getRun, since 0). */
async function replay(runId) {
  const client = newClient();
  try {
    const run = client.getRun(runId);
    await run.result({ timeout: RUN_TIMEOUT }).catch((err) => {
      if (!(err instanceof FlowFailedError)) throw err;
    });
    return run.events;
  } finally {
    client.close();
  }
}

/**
 * `seen` (what onEvent got) is the run's whole log: seq 1..n each exactly once, in order,
 * ending with the terminal event, and equal field for field to a fresh replay.
 */
async function assertEveryEventOnce(runId, seen) {
  const snap = await snapshot(runId);
  assert.ok(["completed", "failed"].includes(snap.status), `run ${runId} ended: ${snap.status}`);
  assert.deepEqual(seen.map((e) => e.seq), range(snap.seq), `run ${runId}: seq 1..${snap.seq}, once each`);
  assert.ok(seen.every((e) => e.run_id === runId), `run ${runId}: only its own events`);
  assert.equal(seen.at(-1).event, `run:${snap.status}`);
  assert.deepEqual(seen, await replay(runId), `run ${runId}: live events equal the log`);
  return snap;
}

test("triggerFlow('diamond') resolves with the run's output, the same as GET /runs/{id}", async () => {
  const seen = [];
  const output = await triggerFlow("diamond", DIAMOND_INPUT, {
    url: gw.url, timeout: RUN_TIMEOUT, onEvent: (e) => seen.push(e),
  });
  assert.deepEqual(output, DIAMOND_OUTPUT);
  const runId = seen[0].run_id;
  const snap = await assertEveryEventOnce(runId, seen);
  assert.equal(snap.status, "completed");
  assert.equal(snap.flow_slug, "diamond");
  assert.deepEqual(snap.output, output);
  assert.deepEqual(snap.input, DIAMOND_INPUT);
  assert.deepEqual(seen.at(-1).output, output);
  // Both middle steps started only after fetch completed, and report after both of them.
  const at = (name, slug) => seen.findIndex((e) => e.event === name && e.step_slug === slug);
  assert.ok(at("step:completed", "fetch") < at("step:started", "summarize"));
  assert.ok(at("step:completed", "fetch") < at("step:started", "count_words"));
  assert.ok(at("step:completed", "summarize") < at("step:started", "report"));
  assert.ok(at("step:completed", "count_words") < at("step:started", "report"));
});

test("triggerFlow('story') streams its text: onChunk gets every word in order, then the output", async () => {
  const chunks = [];
  const seen = [];
  const output = await triggerFlow("story", { hero: "a keeper", place: "an island" }, {
    url: gw.url, timeout: RUN_TIMEOUT, onEvent: (e) => seen.push(e),
    onChunk: (step, chunk) => chunks.push([step, chunk]),
  });
  // write streams the words; plan streams its log records (the story flow's stream_logs)
  const words = chunks.filter(([step]) => step === "write").map(([, chunk]) => chunk);
  assert.ok(words.length > 20, `only ${words.length} words`);
  assert.equal(words.join(""), output.story);
  const logged = chunks.filter(([step]) => step === "plan").map(([, chunk]) => chunk);
  assert.deepEqual(logged.map((record) => [record.level, record.logger]),
    [["INFO", "examples.flows"], ["INFO", "examples.flows"]]);
  const runId = seen[0].run_id;
  await assertEveryEventOnce(runId, seen);
  // every chunk event comes before the step's completion, and carries its attempt
  const completed = seen.findIndex((e) => e.event === "step:completed" && e.step_slug === "write");
  const streamed = seen.flatMap((e, i) => (
    e.event === "step:stream" && e.step_slug === "write" ? [[i, e]] : []));
  assert.ok(streamed.length > 1 && streamed.every(([i, e]) => i < completed && e.attempt === 1));
});

test("a failing flow ('doomed') rejects with FlowFailedError: run id, step launch, its error, attempt 2", async () => {
  const seen = [];
  const err = await rejection(triggerFlow("doomed", { mission: "apollo" }, {
    url: gw.url, timeout: RUN_TIMEOUT, onEvent: (e) => seen.push(e),
  }));
  assert.ok(err instanceof FlowFailedError, `a FlowFailedError, not ${err}`);
  assert.ok(err instanceof PGFlowError);
  assert.equal(err.name, "FlowFailedError");
  assert.equal(err.code, "run_failed");
  const runId = seen[0].run_id;
  assert.equal(err.runId, runId);
  assert.equal(err.stepSlug, "launch");
  assert.equal(err.attempt, 2);
  assert.match(err.error, /the launch pad is on fire/);
  assert.ok(err.message.includes(runId), `the message names the run: ${err.message}`);
  assert.equal(err.event.event, "run:failed");
  assert.deepEqual(err.event, seen.at(-1));

  const snap = await assertEveryEventOnce(runId, seen);
  assert.equal(snap.status, "failed");
  assert.equal(err.error, snap.error);
  // docs/reference/events.md: step:started for each attempt (the first once dependencies are met, the
  // retry once a worker claims it), step:retrying between them, then the step and the run
  // fail on attempt 2.
  assert.deepEqual(
    seen.filter((e) => e.step_slug === "launch").map((e) => [e.event, e.attempt]),
    [["step:started", 1], ["step:retrying", 1], ["step:started", 2], ["step:failed", 2], ["run:failed", 2]],
  );
  assert.equal(seen.find((e) => e.event === "step:retrying").error, err.error);
});

test("a retried step ('flaky' charge) is waiting to retry, then running attempt 2, then 3, in the client's state", async () => {
  const client = newClient();
  try {
    const states = []; // charge's [status, attempt] after each of its events
    const run = await client.startFlow("flaky", { order: "R-1", amount: 3 }, {
      onEvent: (e) => {
        if (e.step_slug !== "charge" || !e.event.startsWith("step:")) return;
        // Listeners run once the event is applied; `run` may not be assigned yet.
        const charge = client._runs.get(e.run_id).step("charge");
        states.push([e.event, charge.status, charge.attempt]);
      },
    });
    assert.deepEqual(await run.result({ timeout: RUN_TIMEOUT }), { order: "R-1", charged: 3, attempts: 3 });
    assert.deepEqual(states, [
      ["step:started", "started", 1], ["step:retrying", "retrying", 1],
      ["step:started", "started", 2], ["step:retrying", "retrying", 2],
      ["step:started", "started", 3], ["step:completed", "completed", 3],
    ]);
  } finally {
    client.close();
  }
});

test("a 5 MB event reaches Node's WebSocket on its first socket (sent uncompressed past --deflate-max-bytes)", async () => {
  const BYTES = 5_000_000; // Node's WebSocket refuses compressed messages that inflate past 4 MiB
  const { WebSocket, closeCodes } = recordingWebSocket();
  const client = newClient({ WebSocket });
  try {
    const run = await client.startFlow("big", { bytes: BYTES }, { graph: false });
    const output = await run.result({ timeout: RUN_TIMEOUT });
    assert.equal(output.bytes, BYTES);
    assert.equal(output.blob.length, BYTES);
    assert.equal(run.step("blob").output.blob.length, BYTES);
    assert.deepEqual(closeCodes, [], "one socket, never lost");
  } finally {
    client.close();
  }
});

test("an unknown flow rejects with a PGFlowError carrying the gateway's 404 not_found", async () => {
  const err = await rejection(triggerFlow("no_such_flow", {}, { url: gw.url, timeout: RUN_TIMEOUT }));
  assert.ok(err instanceof PGFlowError, `a PGFlowError, not ${err}`);
  assert.equal(err.status, 404);
  assert.equal(err.code, "not_found");
});

test("abort rejects with an AbortError naming the run; the run itself goes on in the gateway", async () => {
  const ctl = new AbortController();
  const seen = [];
  const err = await rejection(triggerFlow("diamond", DIAMOND_INPUT, {
    url: gw.url,
    signal: ctl.signal,
    onEvent: (e) => {
      seen.push(e);
      if (e.event === "run:started") ctl.abort();
    },
  }));
  assert.ok(err instanceof DOMException, `a DOMException, not ${err}`);
  assert.equal(err.name, "AbortError");
  const runId = seen[0].run_id;
  assert.ok(err.message.includes(runId), `the message names the run: ${err.message}`);
  const heard = seen.length;
  await until(async () => (await snapshot(runId)).status === "completed", `run ${runId} to complete`);
  assert.equal(seen.length, heard, "no event reaches onEvent after the abort");
});

test("timeout rejects with a TimeoutError; the run itself goes on in the gateway", async () => {
  const seen = [];
  const started = Date.now();
  // diamond's steps take ~0.3 s at this gateway's delay scale: 100 ms cannot be enough.
  const err = await rejection(triggerFlow("diamond", DIAMOND_INPUT, {
    url: gw.url, timeout: 100, onEvent: (e) => seen.push(e),
  }));
  assert.ok(err instanceof DOMException, `a DOMException, not ${err}`);
  assert.equal(err.name, "TimeoutError");
  assert.ok(Date.now() - started < 5_000, "it did not wait for the run");
  if (seen.length > 0) {
    const runId = seen[0].run_id;
    assert.ok(err.message.includes(runId), `the message names the run: ${err.message}`);
    await until(async () => (await snapshot(runId)).status === "completed", `run ${runId} to complete`);
  }
});

test("getRun on a finished run replays it to its final state: every event, seq 1..n, completed", async () => {
  const live = [];
  const output = await triggerFlow("diamond", DIAMOND_INPUT, {
    client: newClient(), timeout: RUN_TIMEOUT, onEvent: (e) => live.push(e),
  });
  const runId = live[0].run_id;
  const snap = await snapshot(runId);

  const client = newClient(); // a new client: nothing cached, everything from the gateway
  try {
    const replayed = [];
    const run = client.getRun(runId, { onEvent: (e) => replayed.push(e) });
    assert.deepEqual(await run.result({ timeout: RUN_TIMEOUT }), output);
    assert.equal(run.status, "completed");
    assert.deepEqual(run.output, snap.output);
    assert.equal(run.lastSeq, snap.seq);
    assert.deepEqual(run.events.map((e) => e.seq), range(snap.seq));
    assert.deepEqual(run.events, live);
    assert.deepEqual(replayed, live);
    assert.equal(run.completedAt, live.at(-1).at);
    for (const step of snap.steps) {
      const state = run.step(step.step_slug);
      assert.equal(state.status, "completed", step.step_slug);
      assert.deepEqual(state.output, step.output, step.step_slug);
      assert.equal(state.attempt, step.attempt, step.step_slug);
    }
    // Attached by id alone, the run learns its flow and graph from the gateway.
    assert.equal(run.flowSlug, null);
    const graph = await run.loadGraph();
    assert.equal(run.flowSlug, "diamond");
    assert.deepEqual(graph.steps.map((s) => s.slug).sort(), ["count_words", "fetch", "report", "summarize"]);
  } finally {
    client.close();
  }
});

test("getRun on an unknown run rejects with the gateway's not_found", async () => {
  const client = newClient();
  try {
    const run = client.getRun("00000000-0000-4000-8000-000000000000");
    const err = await rejection(run.result({ timeout: RUN_TIMEOUT }));
    assert.ok(err instanceof PGFlowError, `a PGFlowError, not ${err}`);
    assert.equal(err.code, "not_found");
  } finally {
    client.close();
  }
});

// ---- steering (examples/flows.py `approval`: draft -> approve, an input step -> publish) ----

test("approval: waits for input; a bad value is refused; cancel, retry, then a value publishes it", async () => {
  const client = newClient();
  const seen = [];
  try {
    const run = await client.startFlow("approval", { title: "Notes", author: "Ada" }, { onEvent: (e) => seen.push(e) });
    const waiting = (n) => eventSeen(run, () => seen.filter((e) => e.event === "step:waiting").length >= n,
      `step:waiting number ${n}`);
    await waiting(1);
    const approve = run.step("approve");
    assert.equal(approve.status, "waiting");
    assert.deepEqual(approve.schema, run.graph.steps.find((s) => s.slug === "approve").schema);
    assert.equal(approve.schema.type, "boolean");
    assert.equal(approve.input.draft.title, "Notes");
    assert.ok(Date.parse(approve.timeoutAt) > Date.now(), `timeoutAt in the future: ${approve.timeoutAt}`);

    const refused = await rejection(run.submit("approve", "yes"));
    assert.ok(refused instanceof InputRejectedError, `an InputRejectedError, not ${refused}`);
    assert.equal(refused.status, 400);
    assert.equal(refused.stepSlug, "approve");
    assert.ok(refused.errors.length >= 1 && refused.errors.every((e) => typeof e.message === "string"),
      JSON.stringify(refused.errors));
    assert.equal(run.step("approve").status, "waiting");

    const pending = rejection(run.result({ timeout: RUN_TIMEOUT }));
    assert.deepEqual(await run.cancel("changed my mind"), { run_id: run.runId, status: "cancelled" });
    const cancelled = await pending;
    assert.ok(cancelled instanceof FlowCancelledError, `a FlowCancelledError, not ${cancelled}`);
    assert.equal(cancelled.reason, "changed my mind");
    assert.equal(run.status, "cancelled");
    assert.equal(run.step("approve").status, "cancelled");
    assert.equal(run.step("publish").status, "cancelled");
    assert.equal(run.step("draft").status, "completed");
    const snap = await snapshot(run.runId);
    assert.equal(snap.status, "cancelled");
    assert.equal(snap.cancel_reason, "changed my mind");
    const again = await rejection(run.cancel());
    assert.equal(again.status, 409);
    assert.equal(again.code, "conflict");

    assert.deepEqual(await run.retry(), { run_id: run.runId, status: "started" });
    await waiting(2);
    assert.equal(run.status, "started");
    assert.equal(run.step("approve").status, "waiting");
    assert.equal(run.step("draft").status, "completed", "a completed step is not run again");
    assert.deepEqual(await run.submit("approve", true), { run_id: run.runId, step_slug: "approve", status: "completed" });
    assert.deepEqual(await run.result({ timeout: RUN_TIMEOUT }), { published: true, title: "Notes" });
    assert.deepEqual(seen.filter((e) => e.step_slug === null).map((e) => e.event),
      ["run:started", "run:cancelled", "run:retried", "run:completed"]);
    // A fresh client replays the whole log (past the old run:cancelled) to the same end.
    await assertEveryEventOnce(run.runId, seen);
  } finally {
    client.close();
  }
});

test("idempotent starts: the same key gives the same run, another input 422, and a lost answer is resent with its key", async () => {
  const key = `e2e-${Date.now()}-${Math.random().toString(36).slice(2)}`;
  // A fetch that loses the answer to the first start, after the gateway has started the run.
  const lost = [];
  const sentKeys = [];
  const lossyFetch = async (url, init) => {
    const res = await fetch(url, init);
    if (init?.method !== "POST" || !String(url).endsWith("/rpc/run_flow")) return res;
    sentKeys.push(new Headers(init.headers).get("idempotency-key"));
    if (sentKeys.length > 1) return res;
    lost.push(await res.json());
    throw new TypeError("fetch failed (the test dropped the answer)");
  };
  const client = newClient({ fetch: lossyFetch });
  try {
    const seen = [];
    const output = await triggerFlow("diamond", DIAMOND_INPUT, { client, timeout: RUN_TIMEOUT, onEvent: (e) => seen.push(e) });
    assert.deepEqual(output, DIAMOND_OUTPUT);
    assert.equal(sentKeys.length, 2, "sent again after the lost answer");
    assert.equal(sentKeys[1], sentKeys[0], "with the same key");
    assert.equal(seen[0].run_id, lost[0].run_id, "the run the lost answer named: no second run");

    const first = await client.startFlow("diamond", DIAMOND_INPUT, { idempotencyKey: key, graph: false });
    const second = await client.startFlow("diamond", DIAMOND_INPUT, { idempotencyKey: key, graph: false });
    assert.equal(second.runId, first.runId);
    assert.deepEqual(await second.result({ timeout: RUN_TIMEOUT }), DIAMOND_OUTPUT);
    assert.equal((await snapshot(first.runId)).idempotency_key, key);
    const conflict = await rejection(client.startFlow("diamond", { text: "other" }, { idempotencyKey: key }));
    assert.ok(conflict instanceof PGFlowError, `a PGFlowError, not ${conflict}`);
    assert.equal(conflict.status, 422);
    assert.equal(conflict.code, "idempotency_conflict");
  } finally {
    client.close();
  }
});

/** Starts runs on `client` that each record what onEvent sees. */
async function startRuns(client, specs) {
  return Promise.all(specs.map(async ([flow, input]) => {
    const seen = [];
    const run = await client.startFlow(flow, input, { onEvent: (e) => seen.push(e) });
    return { run, seen, flow, input };
  }));
}

async function assertRunsEnded(runs) {
  const outputs = await withTimeout(
    Promise.all(runs.map(({ run }) => run.result())), RUN_TIMEOUT, "every run to end",
  );
  for (const [i, { run, seen, flow, input }] of runs.entries()) {
    assert.equal(run.status, "completed", `${flow} run ${run.runId}`);
    if (flow === "fanout") assert.equal(outputs[i].sum, FANOUT_SUM(input.start));
    if (flow === "flaky") assert.equal(outputs[i].attempts, 3);
    const snap = await assertEveryEventOnce(run.runId, seen);
    assert.deepEqual(run.output, snap.output);
  }
}

// Runs mid-way: the first step done, the last not (flaky retries for ~1 s, so it is surely
// still going; fanout may or may not be).
const MID_RUN_SPECS = [
  ["flaky", { order: "A-1", amount: 1 }], ["flaky", { order: "A-2", amount: 2 }],
  ["fanout", { start: 1 }], ["fanout", { start: 100 }], ["fanout", { start: -7 }],
];
const firstStepDone = (r) => eventSeen(r.run, (e) => e.event === "step:completed", "a first step:completed");

test("only the websocket is cut mid-run (TCP proxy, gateway up): every run resumes, each event once, in order", async () => {
  const proxy = await startProxy(gw.port);
  const sockets = recordingWebSocket();
  const client = newClient({ url: proxy.url, WebSocket: sockets.WebSocket });
  try {
    const runs = await startRuns(client, MID_RUN_SPECS);
    await Promise.all(runs.map(firstStepDone));
    assert.equal(proxy.list("realtime").length, 1, "all runs share one socket");
    const unfinished = runs.filter(({ run }) => run.status === "started").length;
    assert.ok(unfinished >= 2, "the flaky runs are still going when the socket dies");

    assert.equal(proxy.cut("realtime"), 1);
    await assertRunsEnded(runs);
    assert.equal(sockets.closeCodes[0], 1006, "the cut socket closed without a close frame");
    assert.ok(proxy.list("realtime").length >= 2, "the client opened a new socket");
    assert.equal(gw.exitCode, undefined, "the gateway itself stayed up");
  } finally {
    client.close();
    await proxy.close();
  }
});

test("a socket that goes silent (half-open, nothing closes) is replaced after heartbeatTimeout; runs resume", async () => {
  const proxy = await startProxy(gw.port);
  const client = newClient({ url: proxy.url, heartbeatInterval: 100, heartbeatTimeout: 500 });
  try {
    const runs = await startRuns(client, MID_RUN_SPECS.slice(0, 3));
    await Promise.all(runs.map(firstStepDone));
    assert.equal(proxy.freeze("realtime"), 1);
    await assertRunsEnded(runs);
    assert.equal(proxy.list("realtime", "frozen").length, 1);
    assert.ok(proxy.list("realtime").length >= 2, "the client opened a new socket");
  } finally {
    client.close();
    await proxy.close();
  }
});

test("the gateway process restarts mid-run on the same port: every run ends, each event once, in order", async () => {
  const sockets = recordingWebSocket();
  const client = newClient({ WebSocket: sockets.WebSocket });
  try {
    const runs = await startRuns(client, [
      ...MID_RUN_SPECS.slice(0, 2),
      ...[1, 2, 3, 4, 5].map((start) => ["fanout", { start }]),
    ]);
    await Promise.all(runs.map(firstStepDone));
    const { port } = gw;
    const stopping = gw;
    assert.equal(await stopping.stop(), 0, `the gateway exits 0 on SIGINT:\n${stopping.log()}`);
    const downAt = Date.now();
    // docs/reference/websocket.md: a gateway shutting down closes its sockets with 1001 (reconnect, resume).
    assert.equal(sockets.closeCodes[0], 1001, `close codes seen: ${sockets.closeCodes}`);
    const unfinished = runs.filter(({ run }) => run.status === "started").length;
    assert.ok(unfinished >= 1, "some runs are still going while the gateway is down");
    assert.ok(["reconnecting", "connecting", "idle"].includes(client.state), `client state ${client.state}`);

    gw = await startGateway({ dataDir, port });
    assert.equal(gw.port, port);
    await assertRunsEnded(runs);
    // The runs went on under the new process: events committed after the old one was gone.
    const later = runs.flatMap(({ seen }) => seen).filter((e) => Date.parse(e.at) > downAt);
    assert.ok(later.length > 0, "some events were committed after the restart");
  } finally {
    client.close();
  }
});
