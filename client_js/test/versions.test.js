// Flow versions: a run's graph is its own version's, fetched by `?version=N`, whatever the
// flow's newest version is by then.
import assert from "node:assert/strict";
import { after, before, beforeEach, test } from "node:test";

import { createClient } from "../client.js";
import { completedRun, GRAPH, startFakeGateway } from "./fake_gateway.js";

// Version 1 of the fake's flow: a single step. Its newest (GRAPH, made version 2 here) has four.
const V1 = { slug: GRAPH.slug, version: 1, steps: [{ slug: "fetch", depends_on: [] }], output_step: "fetch" };
const V2 = { ...GRAPH, version: 2 };

let gw;

before(async () => {
  gw = await startFakeGateway();
  gw.flows.set(GRAPH.slug, V2);
  gw.flowVersions.set(`${GRAPH.slug}@1`, V1);
});

after(async () => {
  gw.flows.set(GRAPH.slug, GRAPH);
  await gw.close();
});

beforeEach(() => {
  gw.onRunCreated = (runId) => gw.append(runId, ...completedRun({ summary: "ok" }));
  gw.startVersion = () => 2;
  gw.requests.length = 0;
});

const graphRequests = () => gw.requests.filter((r) => r.method === "GET" && r.path.startsWith("/flows/")).map((r) => r.url);

test("a run started on the newest version gets the newest graph, fetched once", async () => {
  const client = createClient({ url: gw.url, idleTimeout: 0 });
  try {
    const run = await client.startFlow(GRAPH.slug, {});
    assert.equal(run.flowVersion, 2);
    assert.equal(run.graph.version, 2);
    assert.deepEqual(graphRequests(), [`/flows/${GRAPH.slug}`]);
  } finally {
    client.close();
  }
});

test("a run whose version is not the newest the client saw gets its own version's graph", async () => {
  const client = createClient({ url: gw.url, idleTimeout: 0 });
  try {
    gw.startVersion = () => 1; // the start answered with version 1 (e.g. an idempotent repeat)
    const run = await client.startFlow(GRAPH.slug, {});
    assert.equal(run.flowVersion, 1);
    assert.deepEqual(run.graph, V1);
    assert.deepEqual(graphRequests(), [`/flows/${GRAPH.slug}`, `/flows/${GRAPH.slug}?version=1`]);
  } finally {
    client.close();
  }
});

test("a run attached by id learns its version from the snapshot, then loads that graph", async () => {
  const client = createClient({ url: gw.url, idleTimeout: 0 });
  try {
    gw.startVersion = () => 1;
    const runId = gw.createRun(GRAPH.slug, {});
    gw.onRunCreated(runId);
    const run = client.getRun(runId);
    const graph = await run.loadGraph();
    assert.equal(run.flowVersion, 1);
    assert.deepEqual(graph, V1);
    assert.deepEqual(graphRequests(), [`/flows/${GRAPH.slug}?version=1`]);
    // a run of the same version reuses it; a run with its version known fetches no snapshot
    const second = client.getRun(gw.createRun(GRAPH.slug, {}), { flowSlug: GRAPH.slug, flowVersion: 1 });
    assert.deepEqual(await second.loadGraph(), V1);
    assert.equal(gw.requests.filter((r) => r.path.startsWith("/runs/")).length, 1);
  } finally {
    client.close();
  }
});
