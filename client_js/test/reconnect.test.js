// The shared socket under trouble: killed sockets, silent gateways, close codes, seq gaps.
import assert from "node:assert/strict";
import { after, before, beforeEach, test } from "node:test";

import { createClient, PGFlowError } from "../client.js";
import { completedRun, ev, seqReached, startFakeGateway } from "./fake_gateway.js";

let gw;

before(async () => {
  gw = await startFakeGateway();
});

beforeEach(() => {
  gw.mute = () => false;
  gw.closeOnConnect = () => null;
  gw.replayOverlap = 0;
});

after(async () => {
  await gw.close();
});

// Short delays keep the suite fast; the logic under test is the same as with the defaults.
function newClient(options = {}) {
  return createClient({ url: gw.url, idleTimeout: 0, reconnect: { minDelay: 10, maxDelay: 50 }, ...options });
}

test("a socket killed mid-run: the client resumes with `since` and sees every event once, in order", async () => {
  let runId;
  gw.onRunCreated = (id) => {
    runId = id;
    gw.append(id, ev.runStarted(), ev.stepStarted("fetch"));
  };
  // Replays overlap what the client has seen by one event, as a sloppy gateway might.
  gw.replayOverlap = 1;
  const client = newClient();
  try {
    const seen = [];
    const run = await client.startFlow("analyze", {}, { onEvent: (e) => seen.push(e.seq) });
    await seqReached(run, 2);
    const first = gw.connections.length - 1;
    gw.connections[first].terminate();
    // Logged while the client is away: only the replay after the resubscribe can bring it.
    gw.append(runId, ev.stepCompleted("fetch", "page"));

    const resubscribe = await gw.until(
      () => gw.frames("subscribe").find((f) => f.conn > first && f.msg.run_id === runId),
      "the resubscribe",
    );
    assert.equal(resubscribe.msg.since, 2);
    await seqReached(run, 3);
    gw.resend(runId, 3); // an event the client already has, sent again live
    gw.append(runId, ev.stepStarted("summarize"), ev.stepCompleted("summarize", "sum"), ev.runCompleted("sum"));

    assert.equal(await run.result({ timeout: 3_000 }), "sum");
    assert.deepEqual(seen, [1, 2, 3, 4, 5, 6]);
    assert.deepEqual(run.events.map((e) => e.seq), [1, 2, 3, 4, 5, 6]);
    assert.equal(run.step("fetch").output, "page");
  } finally {
    client.close();
  }
});

test("no message within heartbeatTimeout: the client drops the socket and reconnects", async () => {
  const first = gw.connections.length;
  gw.mute = (i) => i === first; // the first socket hears nothing, not even pongs
  gw.onRunCreated = (id) => gw.append(id, ...completedRun("alive"));
  const client = newClient({ heartbeatInterval: 20, heartbeatTimeout: 150 });
  try {
    const run = await client.startFlow("analyze", {}, { graph: false });
    assert.equal(await run.result({ timeout: 3_000 }), "alive");
    assert.ok(gw.connections.length >= first + 2, "a second socket was opened");
    const pings = gw.frames("ping").filter((f) => f.conn === first);
    assert.ok(pings.length >= 2, "the client pinged the silent socket");
    assert.ok(pings.every((f, i) => i === 0 || f.msg.id > pings[i - 1].msg.id), "ping ids increase");
    await gw.until(() => gw.connections[first].readyState === gw.connections[first].CLOSED, "the silent socket to close");
  } finally {
    client.close();
  }
});

test("close 1008 rejects pending runs and does not reconnect", async () => {
  const first = gw.connections.length;
  gw.closeOnConnect = (i) => (i === first ? 1008 : null);
  let runId;
  gw.onRunCreated = (id) => {
    runId = id;
    gw.append(id, ev.runStarted());
  };
  const client = newClient();
  try {
    const run = await client.startFlow("analyze", {}, { graph: false });
    const err = await run.result({ timeout: 3_000 }).then(() => assert.fail("should have rejected"), (e) => e);
    assert.equal(err.code, "policy_violation");
    assert.equal(err.closeCode, 1008);
    assert.match(err.message, new RegExp(runId));
    assert.equal(client.state, "idle", "no reconnect is scheduled");
    // Proving an absence needs a bounded wait: a reconnect would come within maxDelay
    // (50 ms), so four times that without a new socket means none is coming.
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.equal(gw.connections.length, first + 1);
  } finally {
    client.close();
  }
});

test("close 4001 (token expired) reconnects with a fresh token", async () => {
  const first = gw.connections.length;
  gw.closeOnConnect = (i) => (i === first ? 4001 : null);
  gw.onRunCreated = (id) => gw.append(id, ...completedRun("fresh"));
  let issued = 0;
  const client = newClient({ token: () => `token-${++issued}` });
  try {
    const run = await client.startFlow("analyze", {}, { graph: false });
    assert.equal(await run.result({ timeout: 3_000 }), "fresh");
    const tokens = gw.connections.slice(first).map((c) => c.pgUrl.searchParams.get("token"));
    assert.equal(tokens.length, 2);
    assert.notEqual(tokens[0], tokens[1]);
  } finally {
    client.close();
  }
});

test("a seq gap makes the client resync from the last event it applied", async () => {
  let runId;
  gw.onRunCreated = (id) => {
    runId = id;
    gw.append(id, ev.runStarted());
  };
  const client = newClient();
  try {
    const seen = [];
    const run = await client.startFlow("analyze", {}, { graph: false, onEvent: (e) => seen.push(e.seq) });
    await seqReached(run, 1);
    const conn = gw.connections.length - 1;
    // seq 2 is lost on the way; seq 3 arrives.
    const [, third] = gw.record(runId, ev.stepStarted("fetch"), ev.stepCompleted("fetch", "p"));
    gw.sendRaw(conn, { type: "event", ...third });
    const resubscribe = await gw.until(
      () => gw.frames("subscribe").find((f) => f.conn > conn && f.msg.run_id === runId),
      "the resubscribe",
    );
    assert.equal(resubscribe.msg.since, 1);
    await seqReached(run, 3);
    gw.append(runId, ev.runCompleted("p"));
    assert.equal(await run.result({ timeout: 3_000 }), "p");
    assert.deepEqual(seen, [1, 2, 3, 4]);
  } finally {
    client.close();
  }
});

test("an unused socket closes itself; the next run opens a new one", async () => {
  gw.onRunCreated = (id) => gw.append(id, ...completedRun("one"));
  const client = newClient();
  try {
    const first = gw.connections.length;
    await (await client.startFlow("analyze", {}, { graph: false })).result({ timeout: 3_000 });
    await gw.until(() => gw.connections[first].readyState === gw.connections[first].CLOSED, "the idle close");
    assert.equal(client.state, "idle");
    await (await client.startFlow("analyze", {}, { graph: false })).result({ timeout: 3_000 });
    assert.equal(gw.connections.length, first + 2);
  } finally {
    client.close();
  }
});

test("a frame the client can never take fails that run after 5 losses, naming the cause; other runs go on", async () => {
  let stuckId;
  const client = newClient();
  try {
    gw.onRunCreated = (id) => gw.append(id, ev.runStarted());
    const other = await client.startFlow("analyze", {}, { graph: false });
    await seqReached(other, 1);
    gw.onRunCreated = (id) => {
      stuckId = id;
      gw.append(id, ev.runStarted(), ev.stepStarted("fetch"));
    };
    // Every replay of the stuck run kills the socket before its first event, as Node's
    // WebSocket does with a compressed message over 4 MiB (close 1006).
    gw.dieOnReplay = (_conn, runId) => runId === stuckId;
    const stuck = await client.startFlow("analyze", {}, { graph: false });
    const err = await stuck.result({ timeout: 5_000 }).then(() => assert.fail("should have rejected"), (e) => e);
    assert.ok(err instanceof PGFlowError, String(err));
    assert.equal(err.code, "stalled");
    assert.equal(err.runId, stuckId);
    assert.equal(err.closeCode, 1006);
    assert.match(err.message, new RegExp(`^run ${stuckId}: the connection was lost 5 times in a row while receiving event seq 1`));
    assert.match(err.message, /close 1006/);
    assert.match(err.message, /--deflate-max-bytes/);
    // Five sockets died on it, then no more were spent on it.
    const subscribes = () => gw.frames("subscribe").filter((f) => f.msg.run_id === stuckId).length;
    assert.equal(subscribes(), 5);

    // The run that was caught up all along is still followed, on a new socket.
    gw.dieOnReplay = () => false;
    await gw.until(() => client.state === "open" && gw.connections.at(-1).readyState === 1, "a socket for the other run");
    gw.append(other.runId, ev.stepStarted("fetch"), ev.stepCompleted("fetch", "p"), ev.runCompleted("fine"));
    assert.equal(await other.result({ timeout: 3_000 }), "fine");
    assert.equal(subscribes(), 5);
  } finally {
    gw.dieOnReplay = () => false;
    client.close();
  }
});

test("losses with progress never give up: a socket that dies after every event still delivers the run", async () => {
  let runId;
  gw.onRunCreated = (id) => {
    runId = id;
    gw.append(id, ...completedRun("slowly"));
  };
  gw.dieOnReplay = () => 1; // one event per socket, then 1006
  const client = newClient();
  try {
    const run = await client.startFlow("analyze", {}, { graph: false });
    assert.equal(await run.result({ timeout: 5_000 }), "slowly");
    assert.ok(gw.frames("subscribe").filter((f) => f.msg.run_id === runId).length >= 6);
  } finally {
    gw.dieOnReplay = () => false;
    client.close();
  }
});
