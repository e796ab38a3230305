// The client's socket (client/transport.js) driven without a network: a fake WebSocket class
// records each socket, and the test opens, feeds and closes them by hand.
import assert from "node:assert/strict";
import { test } from "node:test";

import { Transport } from "../client/transport.js";

class FakeSocket {
  static made = [];
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    this.closedWith = null;
    FakeSocket.made.push(this);
  }
  send(text) {
    this.sent.push(JSON.parse(text));
  }
  close(code, reason) {
    this.closedWith = [code, reason];
    this.readyState = 3;
  }
  open() {
    this.readyState = 1;
    this.onopen?.();
  }
  message(obj) {
    this.onmessage?.({ data: typeof obj === "string" ? obj : JSON.stringify(obj) });
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Resolves once `predicate()` holds; rejects after `timeoutMs` (no fixed waits in tests). */
async function until(predicate, what, timeoutMs = 2000) {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setImmediate(resolve));
  }
}

function harness(options = {}) {
  FakeSocket.made = [];
  const calls = [];
  let busy = true;
  const transport = new Transport({
    url: "http://gw.test/pgflow", token: async () => "t0k", WebSocket: FakeSocket,
    reconnect: { minDelay: 1, maxDelay: 2 }, idleTimeout: 5, ...options,
  }, {
    busy: () => busy,
    onOpen: () => calls.push(["open"]),
    onMessage: (msg) => calls.push(["message", msg]),
    onRefused: (code, reason) => calls.push(["refused", code, reason]),
    onLost: (code, reason) => calls.push(["lost", code, reason]),
    onUnsupported: (err) => calls.push(["unsupported", err.code]),
  });
  return { transport, calls, setBusy: (b) => (busy = b) };
}

test("it opens {url}/realtime with the token, and hands on JSON objects only", async () => {
  const { transport, calls } = harness();
  assert.equal(transport.wake(), false);
  assert.equal(transport.state, "connecting");
  await sleep(0);
  const [ws] = FakeSocket.made;
  assert.equal(ws.url, "ws://gw.test/pgflow/realtime?token=t0k");
  ws.open();
  assert.equal(transport.state, "open");
  assert.equal(transport.wake(), true);
  ws.message({ type: "event", seq: 1 });
  ws.message("not json");
  ws.message("42");
  transport.send({ type: "subscribe" });
  assert.deepEqual(calls, [["open"], ["message", { type: "event", seq: 1 }]]);
  assert.deepEqual(ws.sent, [{ type: "subscribe" }]);
  transport.close();
  transport.close(); // idempotent
  assert.deepEqual(ws.closedWith, [1000, "client closed"]);
  assert.equal(transport.state, "closed");
});

test("close 1008 is refused for good: no reconnect", async (t) => {
  // Timers under the test's control: every timer the refusal could have set fires at tick().
  t.mock.timers.enable({ apis: ["setTimeout", "setInterval"] });
  const { transport, calls } = harness();
  transport.wake();
  await until(() => FakeSocket.made.length === 1, "the first socket");
  FakeSocket.made[0].open();
  FakeSocket.made[0].onclose({ code: 1008, reason: "bad token" });
  assert.deepEqual(calls.at(-1), ["refused", 1008, "bad token"]);
  assert.equal(transport.state, "idle");
  t.mock.timers.tick(60_000);
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(FakeSocket.made.length, 1);
  transport.close();
});

test("any other loss reconnects after the backoff while a run needs the socket", async () => {
  const { transport, calls } = harness();
  transport.wake();
  await sleep(0);
  FakeSocket.made[0].open();
  FakeSocket.made[0].onclose({ code: 1006, reason: "" });
  assert.deepEqual(calls.at(-1), ["lost", 1006, ""]);
  assert.equal(transport.state, "reconnecting");
  await until(() => FakeSocket.made.length === 2, "the second socket");
  FakeSocket.made[1].open();
  assert.deepEqual(calls.filter(([kind]) => kind === "open").length, 2);
  transport.close();
});

test("silence past heartbeatTimeout drops the socket with 4000 and reconnects", async () => {
  const { transport, calls } = harness({ heartbeatInterval: 5, heartbeatTimeout: 30 });
  transport.wake();
  await sleep(0);
  const ws = FakeSocket.made[0];
  ws.open();
  await until(() => FakeSocket.made.length >= 2, "the replacing socket");
  assert.ok(ws.sent.some((m) => m.type === "ping"), "pings went out");
  assert.deepEqual(ws.closedWith, [4000, "heartbeat timeout"]);
  assert.deepEqual(calls.find(([kind]) => kind === "lost"), ["lost", 4000, "heartbeat timeout"]);
  assert.ok(FakeSocket.made.length >= 2, "a new socket replaces it");
  transport.close();
});

test("a socket no run needs closes after idleTimeout", async () => {
  const { transport, setBusy } = harness();
  transport.wake();
  await sleep(0);
  const ws = FakeSocket.made[0];
  ws.open();
  setBusy(false);
  transport.idleIfUnused();
  await until(() => ws.closedWith !== null, "the idle close");
  assert.deepEqual(ws.closedWith, [1000, "idle"]);
  assert.equal(transport.state, "idle");
  transport.close();
});

test("without a WebSocket class the owner hears `unsupported`", async () => {
  const { transport, calls } = harness({ WebSocket: undefined });
  const saved = globalThis.WebSocket;
  delete globalThis.WebSocket;
  try {
    assert.throws(() => transport.checkSupported(), { code: "unsupported" });
    transport.wake();
    await sleep(0);
    assert.deepEqual(calls, [["unsupported", "unsupported"]]);
    assert.equal(transport.state, "idle");
  } finally {
    if (saved) globalThis.WebSocket = saved;
  }
});
