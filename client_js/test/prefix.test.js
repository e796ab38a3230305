// A gateway mounted under a prefix (/pgflow): client.js imported from /pgflow/client.js calls
// /pgflow/rpc/run_flow and /pgflow/realtime, from its own URL (import.meta.url).
import assert from "node:assert/strict";
import { register } from "node:module";
import { after, before, test } from "node:test";

import { createClient } from "../client.js";
import { completedRun, startFakeGateway } from "./fake_gateway.js";

let gw;

before(async () => {
  gw = await startFakeGateway({ prefix: "/pgflow" });
  register("./http_hooks.js", import.meta.url);
});

after(async () => {
  await gw.close();
});

test("client.js served under /pgflow talks to /pgflow, over HTTP and on the socket", async () => {
  assert.match(gw.url, /\/pgflow$/);
  // Loaded the way a page loads it: from the gateway, so its import.meta.url is that URL.
  const served = await import(`${gw.url}/client.js`);
  gw.onRunCreated = (runId) => gw.append(runId, ...completedRun("mounted"));
  try {
    assert.equal(await served.triggerFlow("analyze", {}, { timeout: 3_000 }), "mounted");
    assert.equal(served.getDefaultClient().url, gw.url);
    const posts = gw.requests.filter((r) => r.method === "POST");
    assert.deepEqual(posts.map((r) => r.path), ["/pgflow/rpc/run_flow"]);
    assert.deepEqual(gw.connections.map((s) => s.pgUrl.pathname), ["/pgflow/realtime"]);
  } finally {
    served.getDefaultClient().close();
  }
});

test("createClient({url}) keeps a base URL's path; a trailing slash, query or fragment is dropped", () => {
  for (const given of [gw.url, `${gw.url}/`, `${gw.url}//`, `${gw.url}/?v=2`, `${gw.url}#top`]) {
    const client = createClient({ url: given });
    assert.equal(client.url, gw.url, given);
    client.close();
  }
});

test("createClient({url}) with a path runs flows under that path", async () => {
  gw.onRunCreated = (runId) => gw.append(runId, ...completedRun(7));
  const client = createClient({ url: `${gw.url}/`, idleTimeout: 0 });
  try {
    const run = await client.startFlow("analyze", {});
    assert.equal(await run.result({ timeout: 3_000 }), 7);
    assert.deepEqual(run.graph?.slug, "analyze"); // GET /pgflow/flows/analyze
    assert.ok(gw.requests.some((r) => r.method === "GET" && r.path === "/pgflow/flows/analyze"));
  } finally {
    client.close();
  }
});
