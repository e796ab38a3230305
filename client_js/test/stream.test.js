// Streamed steps (`step:stream`): chunks and text on the step state, run.stream(), onChunk,
// and the subscribe()/snapshot() store.
import assert from "node:assert/strict";
import { after, before, beforeEach, test } from "node:test";

import { createClient, triggerFlow } from "../client.js";
import { ev, seqReached, startFakeGateway } from "./fake_gateway.js";

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

/** Start a run whose first events are `rows`; resolves with it once they are applied. */
async function startRun(client, rows, options = {}) {
  gw.onRunCreated = (id) => gw.append(id, ...rows);
  const run = await client.startFlow("analyze", {}, { graph: false, ...options });
  await seqReached(run, rows.length);
  return run;
}

/** Every value `iterator` yields, with the attempt it reports for each, under a timeout. */
async function drain(iterator, timeout = 3_000) {
  const seen = [];
  let timer;
  const timedOut = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`stream still open after ${timeout} ms: ${JSON.stringify(seen)}`)), timeout);
  });
  try {
    await Promise.race([(async () => {
      for await (const chunk of iterator) seen.push([iterator.attempt, chunk]);
    })(), timedOut]);
  } finally {
    clearTimeout(timer);
  }
  return seen;
}

/** Collect reportError's arguments while `fn` runs (Node has no reportError: the client would throw later). */
async function reportingErrors(fn) {
  const saved = Object.getOwnPropertyDescriptor(globalThis, "reportError");
  const reported = [];
  globalThis.reportError = (err) => reported.push(err);
  try {
    await fn(reported);
  } finally {
    if (saved) Object.defineProperty(globalThis, "reportError", saved);
    else delete globalThis.reportError;
  }
  return reported;
}

test("chunks and text accumulate in order across stream events; on('step:stream') hears each", async () => {
  const client = newClient();
  try {
    const run = await startRun(client, [ev.runStarted(), ev.stepStarted("summarize")]);
    const step = run.step("summarize");
    assert.deepEqual([step.chunks, step.text, step.streamAttempt], [[], "", null]);
    assert.deepEqual(run.step("fetch").chunks, []);

    const heard = [];
    run.on("step:stream", (e) => heard.push([e.seq, e.step_slug, e.attempt, e.chunks]));
    gw.append(run.runId,
      ev.stepStream("summarize", ["The ", "cat"]),
      ev.stepStream("summarize", [{ tokens: 2 }, " sat", 7, null]),
      ev.stepStream("summarize", ["."]));
    await seqReached(run, 5);
    assert.deepEqual(step.chunks, ["The ", "cat", { tokens: 2 }, " sat", 7, null, "."]);
    assert.equal(step.text, "The cat sat.", "non-string chunks are in chunks only");
    assert.equal(step.streamAttempt, 1);
    assert.deepEqual([step.status, step.attempt], ["started", 1], "a stream event changes neither");
    assert.deepEqual(heard.map(([seq]) => seq), [3, 4, 5]);
    assert.deepEqual(heard[1], [4, "summarize", 1, [{ tokens: 2 }, " sat", 7, null]]);

    gw.append(run.runId, ev.stepCompleted("summarize", "The cat sat."), ev.runCompleted("The cat sat."));
    assert.equal(await run.result({ timeout: 3_000 }), "The cat sat.");
    assert.equal(step.text, "The cat sat.", "the chunks stay once the step is done");
  } finally {
    client.close();
  }
});

test("a retry's stream replaces the failed attempt's chunks and text", async () => {
  const client = newClient();
  try {
    const run = await startRun(client, [
      ev.runStarted(), ev.stepStarted("fetch"), ev.stepStream("fetch", ["part", "ial"]),
      ev.stepRetrying("fetch", "HTTP 503", 1), ev.stepStarted("fetch", 2),
    ]);
    const step = run.step("fetch");
    const failedAttempt = step.chunks;
    assert.deepEqual([step.attempt, step.streamAttempt, step.text], [2, 1, "partial"],
      "until the retry streams, the failed attempt's chunks stay");
    gw.append(run.runId, ev.stepStream("fetch", ["wh", "ole"], 2), ev.stepStream("fetch", ["!"], 2));
    await seqReached(run, 7);
    assert.deepEqual([step.chunks, step.text, step.streamAttempt], [["wh", "ole", "!"], "whole!", 2]);
    assert.deepEqual(failedAttempt, ["part", "ial"], "a new array: one held keeps its attempt's chunks");
  } finally {
    client.close();
  }
});

test("run.stream yields the chunks received so far, then live ones, and ends on step:completed", async () => {
  const client = newClient();
  try {
    const run = await startRun(client, [ev.runStarted(), ev.stepStarted("summarize"), ev.stepStream("summarize", ["a", "b"])]);
    const subscribers = run._subscribers.size;
    const stream = run.stream("summarize");
    assert.equal(stream[Symbol.asyncIterator](), stream);
    assert.equal(stream.attempt, null);
    const drained = drain(stream);
    gw.append(run.runId, ev.stepStream("summarize", ["c"]));
    await seqReached(run, 4);
    gw.append(run.runId, ev.stepStream("summarize", [{ n: 4 }, "e"]), ev.stepCompleted("summarize", "done"));
    assert.deepEqual(await drained, [[1, "a"], [1, "b"], [1, "c"], [1, { n: 4 }], [1, "e"]]);
    assert.equal(run.status, "started", "the step's end ends its stream, not the run's");
    assert.equal(run._subscribers.size, subscribers, "an ended stream leaves no listener");
    assert.deepEqual(await stream.next(), { done: true, value: undefined });

    // Called once the step has ended: what it streamed, then the end.
    assert.deepEqual(await drain(run.stream("summarize")), [[1, "a"], [1, "b"], [1, "c"], [1, { n: 4 }], [1, "e"]]);
    gw.append(run.runId, ev.runCompleted("done"));
    await run.result({ timeout: 3_000 });
    assert.deepEqual(await drain(run.stream("fetch")), [], "a step that never streamed, of a run that ended");
  } finally {
    client.close();
  }
});

test("run.stream goes on through a retry, telling each chunk's attempt, and ends on step:failed", async () => {
  const client = newClient();
  try {
    const run = await startRun(client, [ev.runStarted(), ev.stepStarted("fetch"), ev.stepStream("fetch", ["x"])]);
    const stream = run.stream("fetch");
    const drained = drain(stream);
    gw.append(run.runId,
      ev.stepStream("fetch", ["y"]), ev.stepRetrying("fetch", "boom", 1),
      ev.stepStarted("fetch", 2), ev.stepStream("fetch", ["z"], 2),
      ev.stepFailed("fetch", "boom again", 2));
    assert.deepEqual(await drained, [[1, "x"], [1, "y"], [2, "z"]]);
  } finally {
    client.close();
  }
});

test("run.stream ends on run:failed, and when the client stops following the run", async () => {
  const client = newClient();
  try {
    const run = await startRun(client, [ev.runStarted(), ev.stepStarted("summarize"), ev.stepStream("summarize", ["a"])]);
    const drained = drain(run.stream("summarize"));
    gw.append(run.runId, ev.stepStream("summarize", ["b"]), ev.runFailed("fetch", "upstream", 1));
    assert.deepEqual(await drained, [[1, "a"], [1, "b"]]);
    assert.equal(run.step("summarize").status, "cancelled");
    await assert.rejects(run.result(), { name: "FlowFailedError" });

    const detached = await startRun(client, [ev.runStarted(), ev.stepStarted("fetch")]);
    const one = drain(detached.stream("fetch"));
    detached.detach();
    assert.deepEqual(await one, []);

    const closed = await startRun(client, [ev.runStarted(), ev.stepStarted("fetch"), ev.stepStream("fetch", ["p"])]);
    const two = drain(closed.stream("fetch"));
    client.close();
    assert.deepEqual(await two, [[1, "p"]]);
  } finally {
    client.close();
  }
});

test("breaking out of the loop, or return() while a next() waits, removes the stream's listener", async () => {
  const client = newClient();
  try {
    const run = await startRun(client, [ev.runStarted(), ev.stepStarted("summarize"), ev.stepStream("summarize", ["a", "b", "c"])]);
    const subscribers = run._subscribers.size;
    const seen = [];
    for await (const chunk of run.stream("summarize")) {
      seen.push(chunk);
      assert.equal(run._subscribers.size, subscribers + 1);
      if (chunk === "b") break;
    }
    assert.deepEqual(seen, ["a", "b"]);
    assert.equal(run._subscribers.size, subscribers, "break called return()");

    const stream = run.stream("summarize");
    for (const chunk of ["a", "b", "c"]) assert.deepEqual(await stream.next(), { done: false, value: chunk });
    const waiting = stream.next(); // nothing more has arrived: it waits
    assert.deepEqual(await stream.return(), { done: true, value: undefined });
    assert.deepEqual(await waiting, { done: true, value: undefined });
    assert.equal(run._subscribers.size, subscribers);
    gw.append(run.runId, ev.stepStream("summarize", ["d"]));
    await seqReached(run, 4);
    assert.deepEqual(await stream.next(), { done: true, value: undefined }, "a returned stream stays done");
  } finally {
    client.close();
  }
});

test("onChunk gets (stepSlug, chunk) for every chunk in order; one that throws breaks nothing", async () => {
  const client = newClient();
  const rows = [
    ev.runStarted(), ev.stepStarted("fetch"), ev.stepStream("fetch", ["<ht", "ml>"]), ev.stepCompleted("fetch", "<html>"),
    ev.stepStarted("summarize"), ev.stepStream("summarize", ["sh", { boom: true }, "o"]), ev.stepStream("summarize", ["rt"]),
    ev.stepCompleted("summarize", "short"), ev.runCompleted("short"),
  ];
  try {
    gw.onRunCreated = (id) => gw.append(id, ...rows);
    const seen = [];
    const events = [];
    let output;
    const reported = await reportingErrors(async () => {
      output = await triggerFlow("analyze", {}, {
        client,
        timeout: 3_000,
        onEvent: (e) => events.push(e.event),
        onChunk: (slug, chunk) => {
          seen.push([slug, chunk]);
          if (chunk?.boom) throw new Error("listener bug");
        },
      });
    });
    assert.equal(output, "short");
    assert.deepEqual(seen, [
      ["fetch", "<ht"], ["fetch", "ml>"], ["summarize", "sh"], ["summarize", { boom: true }], ["summarize", "o"], ["summarize", "rt"],
    ], "the chunk after the one that threw, in the same event, still comes");
    assert.equal(events.length, rows.length, "onEvent sees the stream events too");
    assert.deepEqual(reported.map((e) => e.message), ["listener bug"]);

    // getRun replays the run from seq 1: onChunk hears the replayed chunks too.
    const replayed = [];
    const runId = gw.createRun();
    gw.append(runId, ...rows);
    const run = client.getRun(runId, { onChunk: (slug, chunk) => replayed.push([slug, chunk]) });
    assert.equal(await run.result({ timeout: 3_000 }), "short");
    assert.deepEqual(replayed, seen);
    assert.throws(() => client.getRun(runId, { onChunk: "nope" }), TypeError);
  } finally {
    client.close();
  }
});

test("a replay after a reconnect, or a resent event, adds no chunk twice", async () => {
  gw.replayOverlap = 2; // the resubscribe replays two events the client already has
  const client = newClient();
  try {
    const chunks = [];
    const run = await startRun(client,
      [ev.runStarted(), ev.stepStarted("summarize"), ev.stepStream("summarize", ["one ", "two "]), ev.stepStream("summarize", ["three "])],
      { onChunk: (_slug, chunk) => chunks.push(chunk) });
    const drained = drain(run.stream("summarize"));
    const first = gw.connections.length - 1;
    gw.connections[first].terminate();
    gw.append(run.runId, ev.stepStream("summarize", ["four"])); // logged while the client is away
    await gw.until(() => gw.frames("subscribe").find((f) => f.conn > first && f.msg.run_id === run.runId), "the resubscribe");
    await seqReached(run, 5);
    gw.resend(run.runId, 5);
    gw.resend(run.runId, 3);
    gw.append(run.runId, ev.stepCompleted("summarize", "one two three four"), ev.runCompleted("one two three four"));
    await run.result({ timeout: 3_000 });
    assert.deepEqual(run.step("summarize").chunks, ["one ", "two ", "three ", "four"]);
    assert.equal(run.step("summarize").text, "one two three four");
    assert.deepEqual(chunks, ["one ", "two ", "three ", "four"]);
    assert.deepEqual((await drained).map(([, c]) => c), ["one ", "two ", "three ", "four"]);
  } finally {
    client.close();
  }
});

test("snapshot: one frozen object until the state changes; subscribe's listener hears each change", async () => {
  const client = newClient();
  try {
    const run = await startRun(client, [ev.runStarted(), ev.stepStarted("fetch"), ev.stepStream("fetch", ["a"])]);
    const { subscribe, snapshot } = run; // bound: usable as useSyncExternalStore(run.subscribe, run.snapshot)
    const before = snapshot();
    assert.equal(run.snapshot(), before, "no change, same object");
    assert.ok(Object.isFrozen(before) && Object.isFrozen(before.steps) && Object.isFrozen(before.steps.fetch));
    assert.ok(Object.isFrozen(before.steps.fetch.chunks));
    assert.deepEqual(
      [before.runId, before.flowSlug, before.status, before.output, before.error, before.lastSeq, before.followError],
      [run.runId, "analyze", "started", null, null, 3, null]);
    assert.deepEqual({ ...before.steps.fetch }, { ...run.step("fetch"), chunks: ["a"] });
    assert.equal(before.steps.summarize, undefined, "no graph, no event: not known yet");
    assert.throws(() => subscribe("nope"), TypeError);

    // An event listener reading the snapshot sees the event applied.
    const fresh = [];
    run.on("*", (e) => fresh.push(run.snapshot().lastSeq === e.seq && run.snapshot().steps[e.step_slug]?.chunks.length));

    let calls = 0;
    const off = subscribe(() => {
      calls += 1;
      assert.notEqual(run.snapshot(), before, "the snapshot is stale when the listener runs");
    });
    gw.append(run.runId, ev.stepStream("fetch", ["b"]));
    await seqReached(run, 4);
    assert.equal(calls, 1);
    const after = snapshot();
    assert.notEqual(after, before);
    assert.equal(snapshot(), after);
    assert.deepEqual(after.steps.fetch.chunks, ["a", "b"]);
    assert.equal(after.steps.fetch.text, "ab");
    assert.deepEqual(before.steps.fetch.chunks, ["a"], "an old snapshot does not change");
    assert.deepEqual(fresh, [2]);

    gw.append(run.runId, ev.stepCompleted("fetch", "ab"), ev.stepStarted("summarize"));
    await seqReached(run, 6);
    assert.equal(calls, 3, "one call per event");
    const third = snapshot();
    gw.append(run.runId, ev.stepStream("summarize", ["x"]));
    await seqReached(run, 7);
    assert.equal(snapshot().steps.fetch, third.steps.fetch, "an unchanged step keeps its snapshot");
    assert.notEqual(snapshot().steps.summarize, third.steps.summarize);

    off();
    gw.append(run.runId, ev.stepStream("summarize", ["y"]));
    await seqReached(run, 8);
    assert.equal(calls, 4, "no call after unsubscribing");

    // A throwing listener is reported and does not stop the others.
    let later = 0;
    const reported = await reportingErrors(async () => {
      const offBad = subscribe(() => {
        throw new Error("render bug");
      });
      const offLater = subscribe(() => (later += 1));
      gw.append(run.runId, ev.stepCompleted("summarize", "xy"), ev.runCompleted("xy"));
      await run.result({ timeout: 3_000 });
      offBad();
      offLater();
    });
    assert.equal(later, 2);
    assert.deepEqual(reported.map((e) => e.message), ["render bug", "render bug"]);
    const done = snapshot();
    assert.deepEqual([done.status, done.output, done.lastSeq, done.completedAt !== null], ["completed", "xy", 10, true]);
  } finally {
    client.close();
  }
});

test("snapshot: loading the graph and the client giving up on the run are changes too", async () => {
  const client = newClient();
  try {
    const run = await startRun(client, [ev.runStarted()]);
    let calls = 0;
    run.subscribe(() => (calls += 1));
    const first = run.snapshot();
    assert.equal(first.graph, null);
    await run.loadGraph();
    assert.equal(calls, 1);
    assert.deepEqual(Object.keys(run.snapshot().steps), ["fetch", "summarize"]);
    assert.equal(run.snapshot().graph.output_step, "summarize");
    run.step("no-such-step"); // reading a step is no change: the snapshot stays (React reads during render)
    const loaded = run.snapshot();
    assert.equal(run.snapshot(), loaded);

    client.close();
    assert.equal(calls, 2);
    const closed = run.snapshot();
    assert.notEqual(closed, loaded);
    assert.equal(closed.status, "started");
    assert.equal(closed.followError.code, "client_closed");
    run.detach(); // already settled: no change
    assert.equal(calls, 2);
    assert.equal(run.snapshot(), closed);
  } finally {
    client.close();
  }
});
