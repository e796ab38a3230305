// A runtime without WebSocket (Node 20 without --experimental-websocket): the client says so,
// and how to fix it, before it starts anything, so no run is left behind that nobody follows.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { after, before, test } from "node:test";

import { startFakeGateway } from "./fake_gateway.js";

const CLIENT = new URL("../client.js", import.meta.url).href;
const HERE = fileURLToPath(new URL("..", import.meta.url)); // client_js/, where `ws` resolves
const CHILD_TIMEOUT = 10_000; // ms

let gw;

before(async () => {
  gw = await startFakeGateway();
});

after(async () => {
  await gw.close();
});

/** Runs `body` (an ES module's code, `client` = the client module) in a Node without WebSocket. */
function inNodeWithoutWebSocket(body) {
  // Node 20 without the flag has no WebSocket; Node 22+ always has one: remove it there.
  const script = `delete globalThis.WebSocket;\nconst client = await import(${JSON.stringify(CLIENT)});\n${body}`;
  const env = { ...process.env };
  delete env.NODE_OPTIONS; // no --experimental-websocket from the environment either
  return new Promise((resolve, reject) => {
    execFile(process.execPath, ["--input-type=module", "-e", script], { cwd: HERE, env, timeout: CHILD_TIMEOUT },
      (err, stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(JSON.parse(stdout))));
  });
}

const REPORT = `
const report = (e) => ({ name: e.name, code: e.code, message: e.message });
`;

test("without WebSocket, triggerFlow and getRun fail at once, saying how to fix it, and start no run", async () => {
  const seen = await inNodeWithoutWebSocket(`${REPORT}
const url = ${JSON.stringify(gw.url)};
const out = {};
out.trigger = await client.triggerFlow("analyze", {}, { url, timeout: 5000 }).then(() => null, report);
const c = client.createClient({ url });
out.start = await c.startFlow("analyze", {}).then(() => null, report);
try { c.getRun("4bd9f3c0-0000-4000-8000-000000000000"); out.getRun = null; } catch (e) { out.getRun = report(e); }
c.close();
console.log(JSON.stringify(out));
`);
  for (const [call, err] of Object.entries(seen)) {
    assert.ok(err, `${call} must fail`);
    assert.equal(err.name, "PGFlowError", call);
    assert.equal(err.code, "unsupported", call);
    assert.match(err.message, /no WebSocket/, call);
    assert.match(err.message, /Node 22/, call);
    assert.match(err.message, /--experimental-websocket/, call);
    assert.match(err.message, /createClient\(\{ WebSocket \}\)/, call);
  }
  assert.deepEqual(gw.requests.filter((r) => r.method === "POST"), [], "no run was created");
  assert.equal(gw.runs.size, 0);
});

test("without a global WebSocket, one passed to createClient is used", async () => {
  // `ws` stands in for any implementation with the WebSocket interface.
  const seen = await inNodeWithoutWebSocket(`
const { WebSocket } = await import("ws");
const c = client.createClient({ url: ${JSON.stringify(gw.url)}, WebSocket, idleTimeout: 0 });
const run = await c.startFlow("analyze", {}, { graph: false });
console.log(JSON.stringify({ output: await run.result({ timeout: 5000 }) }));
c.close();
`);
  assert.deepEqual(seen, { output: { summary: "ok" } });
});
