// A development server for the live page without Python or PostgreSQL: the page and /client.js
// (with the client/ modules it imports) from the repository, plus client_js/test/fake_gateway.js
// (in-memory runs, a real /realtime socket) extended with the read routes the page uses and a
// simulated worker.
//
//   node e2e/dev/server.mjs [--port 8765] [--seed]
//
// The simulated worker runs each step for a few hundred ms. A run's input may carry a "_dev"
// object to script it:
//   {"_dev": {"fail": "b"}}            step b fails every attempt (the run fails)
//   {"_dev": {"retry": {"b": 2}}}      step b fails twice, then completes
//   {"_dev": {"speed": 3}}             every step takes 3x longer
//   {"_dev": {"manual": true}}         only run:started; drive the rest with the route below
// and POST /_dev/runs/{run_id}/events with a JSON array of event rows
// ({"event", "step_slug", "status", "output", "error", "attempt"}) appends them live.
// Only 127.0.0.1 is bound; nothing here reaches the network.

import { readFile } from "node:fs/promises";
import { dirname, extname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { ev, GRAPH, startFakeGateway } from "../../client_js/test/fake_gateway.js";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const STATIC = join(ROOT, "gateway", "static");
const TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".svg": "image/svg+xml",
  ".json": "application/json",
};

const step = (slug, depends_on = [], extra = {}) => ({ slug, depends_on, max_attempts: 3, base_delay: 1, timeout: 30, ...extra });
const shards = Array.from({ length: 12 }, (_, i) => `shard_${String(i + 1).padStart(2, "0")}`);

export const FLOWS = [
  {
    ...GRAPH,
    description: "Fetch a page, then summarise it.",
    example_input: { url: "https://example.org" },
  },
  {
    slug: "diamond",
    description: "The classic diamond: one step fans out to two that run in parallel, then joins.",
    example_input: { n: 21 },
    steps: [step("start"), step("double", ["start"]), step("square", ["start"]), step("combine", ["double", "square"])],
    output_step: "combine",
  },
  {
    slug: "fanout",
    description: "Split work into twelve shards processed in parallel, then merge the results.",
    example_input: { items: 1200, shards: 12 },
    steps: [step("split"), ...shards.map((s) => step(s, ["split"])), step("merge", shards)],
    output_step: "merge",
  },
  {
    slug: "etl",
    description: "Extract, validate and enrich records; audit in parallel; publish and notify.",
    example_input: { source: "s3://bucket/orders.csv", since: "2026-01-01" },
    steps: [
      step("extract"),
      step("validate", ["extract"]),
      step("audit_log", ["extract"]),
      step("enrich_customers", ["validate"]),
      step("score", ["enrich_customers", "validate"]),
      step("publish", ["score", "audit_log"]),
      step("notify", ["publish", "extract"]),
    ],
    output_step: "publish",
  },
  {
    slug: "flaky",
    description: "Calls an unreliable API that fails twice before it answers: watch the retries.",
    example_input: { endpoint: "https://api.example.org/quote", _dev: { retry: { call_api: 2 } } },
    steps: [step("prepare"), step("call_api", ["prepare"], { base_delay: 0.5 }), step("store", ["call_api"])],
    output_step: "store",
  },
  {
    slug: "checkout",
    description: "A checkout whose payment step always fails: the run fails and the rest is cancelled.",
    example_input: { order_id: 4217, amount: 99.5, _dev: { fail: "charge_card" } },
    steps: [
      step("reserve_stock"),
      step("charge_card", ["reserve_stock"], { base_delay: 0.3 }),
      step("ship", ["charge_card"]),
      step("send_receipt", ["charge_card"]),
      step("close_order", ["ship", "send_receipt"]),
    ],
    output_step: "close_order",
  },
];

class SimulatedWorker {
  constructor(gw, runId, flow, input) {
    this.gw = gw;
    this.runId = runId;
    this.flow = flow;
    this.dev = (input && typeof input === "object" && input._dev) || {};
    this.input = input;
    this.timers = new Set();
    this.done = new Map(); // slug -> output
    this.started = new Set();
    this.over = false;
  }

  later(ms, fn) {
    const t = setTimeout(() => {
      this.timers.delete(t);
      if (!this.over) fn();
    }, ms);
    this.timers.add(t);
  }

  emit(...rows) {
    this.gw.append(this.runId, ...rows);
  }

  start() {
    this.emit(ev.runStarted());
    if (this.dev.manual) return;
    for (const s of this.flow.steps) if (s.depends_on.length === 0) this.startStep(s, 1);
  }

  startStep(s, attempt) {
    this.started.add(s.slug);
    this.emit({ ...ev.stepStarted(s.slug), attempt });
    const speed = Number(this.dev.speed) || 1;
    this.later((250 + Math.random() * 650) * speed, () => this.finish(s, attempt));
  }

  finish(s, attempt) {
    const failures = this.dev.fail === s.slug ? Infinity : Number(this.dev.retry?.[s.slug] ?? 0);
    if (attempt <= failures) {
      const error = this.dev.fail === s.slug
        ? "card declined: insufficient funds (gateway code 51)"
        : `HTTP 503 from upstream (attempt ${attempt})`;
      if (attempt < s.max_attempts) {
        this.emit(ev.stepRetrying(s.slug, error, attempt));
        this.later(s.base_delay * 1000 * 2 ** (attempt - 1), () => this.startStep(s, attempt + 1));
      } else {
        this.over = true;
        for (const t of this.timers) clearTimeout(t);
        this.emit(ev.stepFailed(s.slug, error, attempt), ev.runFailed(s.slug, error, attempt));
      }
      return;
    }
    const inputs = Object.fromEntries(s.depends_on.map((d) => [d, this.done.get(d)]));
    const output = { step: s.slug, ok: true, records: Math.round(100 + Math.random() * 900), ...(s.depends_on.length ? { from: Object.keys(inputs) } : { run: this.input }) };
    this.done.set(s.slug, output);
    this.emit(ev.stepCompleted(s.slug, output, attempt));
    for (const next of this.flow.steps) {
      if (!this.started.has(next.slug) && next.depends_on.every((d) => this.done.has(d))) this.startStep(next, 1);
    }
    if (this.done.size === this.flow.steps.length) {
      this.over = true;
      const out = this.flow.output_step
        ? this.done.get(this.flow.output_step)
        : Object.fromEntries(this.flow.steps.filter((x) => !this.flow.steps.some((y) => y.depends_on.includes(x.slug))).map((x) => [x.slug, this.done.get(x.slug)]));
      this.emit(ev.runCompleted(out));
    }
  }
}

function runSummary(runId, r) {
  const log = r.log;
  const last = log[log.length - 1];
  const status = last?.event === "run:completed" ? "completed" : last?.event === "run:failed" ? "failed" : "started";
  return {
    run_id: runId,
    flow_slug: r.flowSlug,
    status,
    started_at: log[0]?.at ?? r.createdAt,
    completed_at: status === "completed" ? last.at : null,
    failed_at: status === "failed" ? last.at : null,
  };
}

export async function startDevServer({ seed = false } = {}) {
  const gw = await startFakeGateway();
  for (const f of FLOWS) gw.flows.set(f.slug, f);
  const flowList = () => [...gw.flows.values()].map(({ slug, description = "", example_input = {}, steps, output_step = null }) => ({ slug, description, example_input, steps, output_step }));

  const createRun = gw.createRun.bind(gw);
  gw.createRun = (flowSlug, input) => {
    const runId = createRun(flowSlug, input);
    gw.runs.get(runId).createdAt = new Date().toISOString();
    return runId;
  };
  gw.onRunCreated = (runId) => {
    const r = gw.runs.get(runId);
    new SimulatedWorker(gw, runId, gw.flows.get(r.flowSlug), r.input).start();
  };

  const fakeHttp = gw._http.bind(gw);
  gw._http = async (req, res) => {
    const url = new URL(req.url, "http://x");
    const path = url.pathname;
    const send = (status, body, type = "application/json") => {
      res.writeHead(status, { "content-type": type, "cache-control": "no-store" });
      res.end(typeof body === "string" || Buffer.isBuffer(body) ? body : JSON.stringify(body));
    };
    const file = async (p) => {
      try {
        send(200, await readFile(p), TYPES[extname(p)] ?? "application/octet-stream");
      } catch {
        send(404, { error: { code: "not_found", message: `no file ${path}` } });
      }
    };
    if (req.method === "GET" && path === "/") return file(join(STATIC, "index.html"));
    if (req.method === "GET" && path === "/client.js") return file(join(ROOT, "client_js", "client.js"));
    const clientModule = /^\/client\/([a-z_]+\.js)$/.exec(path); // what client.js imports
    if (req.method === "GET" && clientModule) return file(join(ROOT, "client_js", "client", clientModule[1]));
    const asset = /^\/static\/([A-Za-z0-9][A-Za-z0-9._-]*)$/.exec(path);
    if (req.method === "GET" && asset) return file(join(STATIC, asset[1]));
    if (req.method === "GET" && path === "/flows") return send(200, flowList());
    if (req.method === "GET" && path === "/runs") {
      const limit = Math.max(1, Math.min(100, Number(url.searchParams.get("limit")) || 20));
      return send(200, [...gw.runs.entries()].reverse().slice(0, limit).map(([id, r]) => runSummary(id, r)));
    }
    const one = /^\/runs\/([^/]+)$/.exec(path);
    if (req.method === "GET" && one && gw.runs.has(one[1])) {
      const r = gw.runs.get(one[1]);
      return send(200, { ...runSummary(one[1], r), input: r.input, seq: r.log.length });
    }
    const inject = /^\/_dev\/runs\/([^/]+)\/events$/.exec(path);
    if (req.method === "POST" && inject && gw.runs.has(inject[1])) {
      let raw = "";
      for await (const chunk of req) raw += chunk;
      gw.append(inject[1], ...JSON.parse(raw));
      return send(200, { seq: gw.runs.get(inject[1]).log.length });
    }
    return fakeHttp(req, res);
  };

  if (seed) {
    for (const [slug, input] of [["analyze", { url: "https://example.org" }], ["diamond", { n: 2 }], ["checkout", FLOWS[5].example_input]]) {
      const id = gw.createRun(slug, input);
      gw.onRunCreated(id);
    }
  }
  return gw;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const args = process.argv.slice(2);
  const port = Number(args[args.indexOf("--port") + 1]) || 8765;
  const gw = await startDevServer({ seed: args.includes("--seed") });
  // startFakeGateway listens on a random port; move it to the requested one
  await new Promise((resolve) => gw.server.close(resolve));
  await new Promise((resolve) => gw.server.listen(port, "127.0.0.1", resolve));
  console.log(`PGFlow dev page: ${gw.url}/`);
}
