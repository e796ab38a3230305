// A fake PGFlow gateway for the client's tests: the HTTP routes and the /realtime socket of
// docs/reference/websocket.md on 127.0.0.1, with an in-memory event log per run. Tests drive runs by
// appending events, and can misbehave on purpose (kill sockets, go silent, replay too much).
//
// Everything observable is recorded (requests, connections, frames received) and
// `gw.until(predicate)` awaits a condition under a timeout, so no test sleeps.

import { EventEmitter } from "node:events";
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import { WebSocketServer } from "ws";

const WAIT_TIMEOUT = 3_000; // ms: generous for a loaded CI machine, still a quick failure

export const GRAPH = {
  slug: "analyze",
  steps: [
    { slug: "fetch", depends_on: [], max_attempts: 3, base_delay: 1, timeout: 30 },
    { slug: "summarize", depends_on: ["fetch"], max_attempts: 3, base_delay: 1, timeout: 30 },
  ],
  output_step: "summarize",
};

// A flow with an input step: draft -> approve (waits for a person's value) -> publish.
export const APPROVAL_SCHEMA = {
  type: "object",
  properties: { approved: { type: "boolean" }, note: { type: "string" } },
  required: ["approved"],
};
export const APPROVAL_GRAPH = {
  slug: "approval",
  steps: [
    { slug: "draft", depends_on: [], kind: "task", max_attempts: 3, base_delay: 1, timeout: 30 },
    { slug: "approve", depends_on: ["draft"], kind: "input", schema: APPROVAL_SCHEMA, timeout: 3600 },
    { slug: "publish", depends_on: ["approve"], kind: "task", max_attempts: 3, base_delay: 1, timeout: 30 },
  ],
  output_step: "publish",
};

// A flow with a map step and an HTTP step: split -> square (once per element of split's array)
// -> render (a POST to an endpoint).
export const MAP_GRAPH = {
  slug: "mapper",
  steps: [
    { slug: "split", depends_on: [], kind: "task", max_attempts: 3, base_delay: 1, timeout: 30 },
    { slug: "square", depends_on: ["split"], kind: "map", over: "split", max_attempts: 3, base_delay: 1, timeout: 30 },
    { slug: "render", depends_on: ["square"], kind: "http", url: "https://fn.example/render", max_attempts: 3, base_delay: 1, timeout: 30 },
  ],
  output_step: "render",
};

// Event rows as the gateway would log them; `seq` and `at` are filled in by `append`.
export const ev = {
  runStarted: () => ({ event: "run:started", step_slug: null, status: "started", output: null, error: null, attempt: null }),
  stepStarted: (slug, attempt = 1) => ({ event: "step:started", step_slug: slug, status: "started", output: null, error: null, attempt }),
  stepCompleted: (slug, output, attempt = 1) => ({ event: "step:completed", step_slug: slug, status: "completed", output, error: null, attempt }),
  stepRetrying: (slug, error, attempt) => ({ event: "step:retrying", step_slug: slug, status: "retrying", output: null, error, attempt }),
  stepFailed: (slug, error, attempt) => ({ event: "step:failed", step_slug: slug, status: "failed", output: null, error, attempt }),
  // No status, output or error: a stream event carries chunks only.
  stepStream: (slug, chunks, attempt = 1) => ({ event: "step:stream", step_slug: slug, attempt, chunks }),
  runCompleted: (output) => ({ event: "run:completed", step_slug: null, status: "completed", output, error: null, attempt: null }),
  runFailed: (slug, error, attempt) => ({ event: "run:failed", step_slug: slug, status: "failed", output: null, error, attempt }),
  stepWaiting: (slug, schema, input, timeoutAt) => ({
    event: "step:waiting", step_slug: slug, status: "waiting", output: null, error: null, attempt: 1,
    schema, input, timeout_at: timeoutAt,
  }),
  stepCancelled: (slug, attempt = null) => ({ event: "step:cancelled", step_slug: slug, status: "cancelled", output: null, error: null, attempt }),
  runCancelled: (reason = null) => ({ event: "run:cancelled", step_slug: null, status: "cancelled", output: null, error: null, attempt: null, reason }),
  runRetried: () => ({ event: "run:retried", step_slug: null, status: "started", output: null, error: null, attempt: null }),
  // A map step's start says how many elements it runs; then one task:* event per element change.
  mapStarted: (slug, tasks, attempt = 1) => ({ event: "step:started", step_slug: slug, status: "started", output: null, error: null, attempt, tasks }),
  taskStarted: (slug, index, attempt) => ({ event: "task:started", step_slug: slug, index, status: "started", error: null, attempt }),
  taskCompleted: (slug, index, attempt = 1) => ({ event: "task:completed", step_slug: slug, index, status: "completed", error: null, attempt }),
  taskRetrying: (slug, index, error, attempt = 1) => ({ event: "task:retrying", step_slug: slug, index, status: "retrying", error, attempt }),
  taskFailed: (slug, index, error, attempt = 1) => ({ event: "task:failed", step_slug: slug, index, status: "failed", error, attempt }),
  taskStream: (slug, index, chunks, attempt = 1) => ({ event: "task:stream", step_slug: slug, index, attempt, chunks }),
};

const RUN_ENDS = new Set(["run:completed", "run:failed", "run:cancelled"]);

/** The run's status from its log: the last run-wide event decides. */
function runStatus(log) {
  const last = log.findLast((e) => RUN_ENDS.has(e.event) || e.event === "run:retried");
  return last && last.event !== "run:retried" ? last.status : "started";
}

/** The status of each step that has had an event, by slug, from the log. */
function stepStatuses(log) {
  const statuses = new Map();
  for (const e of log) {
    if (e.event === "run:retried") {
      for (const [slug, status] of statuses) if (status === "failed" || status === "cancelled") statuses.set(slug, "created");
    } else if (e.step_slug && e.status && e.event.startsWith("step:")) {
      statuses.set(e.step_slug, e.status);
    }
  }
  return statuses;
}

/**
 * A few JSON Schema checks, enough for the tests (the real gateway uses `jsonschema`): an object
 * value, its `required` keys, and the `type` of its known properties.
 */
function schemaErrors(schema, value) {
  if (schema?.type === "object" && (typeof value !== "object" || value === null || Array.isArray(value))) {
    return [{ path: "", message: `${JSON.stringify(value)} is not of type 'object'` }];
  }
  const errors = [];
  for (const key of schema?.required ?? []) {
    if (!(key in value)) errors.push({ path: "", message: `'${key}' is a required property` });
  }
  for (const [key, prop] of Object.entries(schema?.properties ?? {})) {
    const jsType = { boolean: "boolean", string: "string", number: "number" }[prop.type];
    if (key in value && jsType && typeof value[key] !== jsType) {
      errors.push({ path: `/${key}`, message: `${JSON.stringify(value[key])} is not of type '${prop.type}'` });
    }
  }
  return errors;
}

/** The events of a run that completes with `output`. */
export function completedRun(output) {
  return [
    ev.runStarted(),
    ev.stepStarted("fetch"),
    ev.stepCompleted("fetch", { page: "<html>" }),
    ev.stepStarted("summarize"),
    ev.stepCompleted("summarize", output),
    ev.runCompleted(output),
  ];
}

/** Resolves when the client-side `run` has applied event `seq` (or rejects after a timeout). */
export function seqReached(run, seq, timeout = WAIT_TIMEOUT) {
  return new Promise((resolve, reject) => {
    if (run.lastSeq >= seq) return resolve(run);
    const timer = setTimeout(() => {
      off();
      reject(new Error(`run ${run.runId}: timed out waiting for seq ${seq} (at ${run.lastSeq})`));
    }, timeout);
    const off = run.on("*", () => {
      if (run.lastSeq < seq) return;
      off();
      clearTimeout(timer);
      resolve(run);
    });
  });
}

/**
 * `prefix` mounts every route under it ("/pgflow": POST /pgflow/rpc/run_flow, ws
 * /pgflow/realtime), as a gateway mounted inside another app; GET {prefix}/client.js serves
 * the client itself.
 */
export async function startFakeGateway({ prefix = "" } = {}) {
  const gw = new FakeGateway(prefix);
  await gw.listen();
  return gw;
}

class FakeGateway extends EventEmitter {
  constructor(prefix = "") {
    super();
    this.prefix = prefix;
    this.flows = new Map([[GRAPH.slug, GRAPH], [APPROVAL_GRAPH.slug, APPROVAL_GRAPH], [MAP_GRAPH.slug, MAP_GRAPH]]);
    // older versions of a flow, "slug@N" -> graph; `flows` holds each flow's newest
    this.flowVersions = new Map();
    // the version a new run of a flow starts on; default: its newest graph's (or 1)
    this.startVersion = (flowSlug) => this.flows.get(flowSlug)?.version ?? 1;
    this.runs = new Map(); // run_id -> { flowSlug, input, log: [event], subscribers: Set<socket> }
    this.requests = []; // { method, path, headers, body }
    this.connections = []; // every accepted socket, in order; `socket.pgUrl` is the request URL
    this.received = []; // every frame from a client: { conn: index, msg }
    // What a new run does when POSTed; tests replace it. Receives the run id.
    this.onRunCreated = (runId) => this.append(runId, ...completedRun({ summary: "ok" }));
    // "<flow>\n<Idempotency-Key>" -> { runId, input, key }: the run each key started. A repeat
    // with the same input answers 200 with that run and starts nothing, so a client that resends
    // with its key unchanged starts one run, and one that changed it starts two.
    this.keys = new Map();
    // After the Nth POST /rpc/run_flow (1, 2, …) is processed, drop the connection instead of
    // answering: the run exists, the client never hears of it (a lost answer).
    this.loseAnswer = () => false;
    this.runFlowPosts = 0;
    // What happens after an accepted input value (its step:completed is logged already), and
    // after an accepted retry (its run:retried is logged already); tests replace them.
    this.onInput = () => {};
    this.onRetry = () => {};
    // Per-connection behaviour, by connection index.
    this.mute = () => false; // a muted socket receives nothing at all (no pongs either)
    this.closeOnConnect = () => null; // a close code to send right after the upgrade
    this.replayOverlap = 0; // replay this many already-seen events too, to prove dedupe
    // Drop the connection (1006) during a replay, after `subscribed` and as many events as it
    // returns (true: none), as a frame the client cannot take would; false: replay normally.
    // Receives the connection index and the run id.
    this.dieOnReplay = () => false;
  }

  /** The base URL, prefix included. */
  get url() {
    return `http://127.0.0.1:${this.server.address().port}${this.prefix}`;
  }

  async listen() {
    this.server = createServer((req, res) => this._http(req, res));
    this.wss = new WebSocketServer({ server: this.server, path: `${this.prefix}/realtime` });
    this.wss.on("connection", (socket, req) => this._connection(socket, req));
    await new Promise((resolve) => this.server.listen(0, "127.0.0.1", resolve));
  }

  async close() {
    for (const socket of this.connections) socket.terminate();
    await new Promise((resolve) => this.wss.close(resolve));
    this.server.closeAllConnections();
    await new Promise((resolve) => this.server.close(resolve));
  }

  /** Resolves when `predicate()` is truthy (checked now and after every change). */
  until(predicate, what = "condition", timeout = WAIT_TIMEOUT) {
    return new Promise((resolve, reject) => {
      const check = () => {
        const value = predicate();
        if (!value) return;
        cleanup();
        resolve(value);
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`fake gateway: timed out waiting for ${what}`));
      }, timeout);
      const cleanup = () => {
        clearTimeout(timer);
        this.off("change", check);
      };
      this.on("change", check);
      check();
    });
  }

  /** Frames of one type received from clients. */
  frames(type) {
    return this.received.filter((f) => f.msg.type === type);
  }

  createRun(flowSlug = GRAPH.slug, input = {}) {
    const runId = randomUUID();
    const version = this.startVersion(flowSlug);
    this.runs.set(runId, { flowSlug, version, input, log: [], subscribers: new Set() });
    return runId;
  }

  /** Log events for a run and send them live to its subscribers, like a NOTIFY would. */
  append(runId, ...rows) {
    const run = this.runs.get(runId);
    for (const event of this.record(runId, ...rows)) {
      for (const socket of run.subscribers) this._send(socket, { type: "event", ...event });
    }
  }

  /** Log events without sending them: a NOTIFY that got lost. Returns the events. */
  record(runId, ...rows) {
    const log = this.runs.get(runId).log;
    const events = rows.map((row, i) => ({ run_id: runId, seq: log.length + i + 1, ...row, at: new Date().toISOString() }));
    log.push(...events);
    this.emit("change");
    return events;
  }

  /** Send an already-logged event again to every subscriber (a duplicate the client must drop). */
  resend(runId, seq) {
    const run = this.runs.get(runId);
    for (const socket of run.subscribers) this._send(socket, { type: "event", ...run.log[seq - 1] });
  }

  /** Send any frame on a connection, bypassing the protocol. */
  sendRaw(connIndex, msg) {
    this.connections[connIndex].send(JSON.stringify(msg));
  }

  _send(socket, msg) {
    if (!socket.pgMuted && socket.readyState === socket.OPEN) socket.send(JSON.stringify(msg));
  }

  async _http(req, res) {
    let raw = "";
    for await (const chunk of req) raw += chunk;
    const fullPath = new URL(req.url, "http://x").pathname;
    this.requests.push({ method: req.method, path: fullPath, url: req.url, headers: req.headers, body: raw });
    this.emit("change");
    // Outside the prefix nothing answers, as in a parent app that mounts the gateway.
    const path = fullPath.startsWith(`${this.prefix}/`) ? fullPath.slice(this.prefix.length) : null;
    const reply = (status, body) => {
      res.writeHead(status, { "content-type": "application/json" });
      res.end(JSON.stringify(body));
    };
    const error = (status, code, message) => reply(status, { error: { code, message } });

    // client.js and the modules it imports from client/, as the gateway serves them.
    const sub = /^\/client\/([a-z_]+\.js)$/.exec(path ?? "");
    const file = path === "/client.js" ? "../client.js" : sub ? `../client/${sub[1]}` : null;
    if (req.method === "GET" && file) {
      let source;
      try {
        source = readFileSync(new URL(file, import.meta.url));
      } catch {
        return error(404, "not_found", `no module ${fullPath}`);
      }
      res.writeHead(200, { "content-type": "application/javascript; charset=utf-8" });
      res.end(source);
      return;
    }
    if (req.method === "POST" && path === "/rpc/run_flow") {
      let body;
      try {
        body = JSON.parse(raw);
      } catch {
        return error(400, "bad_json", "body is not JSON");
      }
      if (!this.flows.has(body.flow_slug)) return error(404, "not_found", `unknown flow ${body.flow_slug}`);
      const post = ++this.runFlowPosts;
      const key = req.headers["idempotency-key"];
      const known = key === undefined ? undefined : this.keys.get(`${body.flow_slug}\n${key}`);
      if (known && JSON.stringify(known.input) !== JSON.stringify(body.input)) {
        return error(422, "idempotency_conflict", "this Idempotency-Key was used with a different input");
      }
      const runId = known?.runId ?? this.createRun(body.flow_slug, body.input);
      if (key !== undefined && !known) this.keys.set(`${body.flow_slug}\n${key}`, { runId, input: body.input, key });
      if (this.loseAnswer(post)) res.socket.destroy();
      else reply(known ? 200 : 201, { run_id: runId, flow_slug: body.flow_slug, version: this.runs.get(runId).version, status: "started" });
      // The real gateway's workers race the client's subscribe; start the run right away too.
      if (!known) this.onRunCreated(runId);
      return;
    }
    const steer = /^\/runs\/([^/]+)\/(cancel|retry|steps\/([^/]+)\/input)$/.exec(path ?? "");
    if (req.method === "POST" && steer) return this._steer(steer, raw, reply, error);
    const flow = /^\/flows\/([^/]+)$/.exec(path ?? "");
    if (req.method === "GET" && flow) {
      const slug = decodeURIComponent(flow[1]);
      const version = new URL(req.url, "http://x").searchParams.get("version");
      const newest = this.flows.get(slug);
      const graph = version === null || Number(version) === (newest?.version ?? 1)
        ? newest : this.flowVersions.get(`${slug}@${version}`);
      return graph ? reply(200, graph) : error(404, "not_found", "unknown flow");
    }
    const run = /^\/runs\/([^/]+)$/.exec(path ?? "");
    if (req.method === "GET" && run && this.runs.has(run[1])) {
      const r = this.runs.get(run[1]);
      return reply(200, { run_id: run[1], flow_slug: r.flowSlug, version: r.version, seq: r.log.length });
    }
    error(404, "not_found", `no route ${req.method} ${fullPath}`);
  }

  /** POST /runs/{id}/cancel, /runs/{id}/retry, /runs/{id}/steps/{slug}/input. */
  _steer([, runId, action, encodedSlug], raw, reply, error) {
    const run = this.runs.get(runId);
    if (!run) return error(404, "not_found", `unknown run ${runId}`);
    let body = {};
    try {
      if (raw) body = JSON.parse(raw);
    } catch {
      return error(400, "bad_json", "body is not JSON");
    }
    const status = runStatus(run.log);
    if (action === "cancel") {
      if (status !== "started") return error(409, "conflict", `run ${runId} already ${status}`);
      const steps = stepStatuses(run.log);
      const graph = this.flows.get(run.flowSlug);
      const unfinished = graph.steps.filter((s) => !["completed", "failed"].includes(steps.get(s.slug)));
      const attempts = new Map(run.log.filter((e) => e.attempt != null).map((e) => [e.step_slug, e.attempt]));
      this.append(runId, ...unfinished.map((s) => ev.stepCancelled(s.slug, attempts.get(s.slug) ?? null)),
        ev.runCancelled(body.reason ?? null));
      return reply(200, { run_id: runId, status: "cancelled" });
    }
    if (action === "retry") {
      if (status !== "failed" && status !== "cancelled") return error(409, "conflict", `run ${runId} is ${status}`);
      this.append(runId, ev.runRetried());
      reply(200, { run_id: runId, status: "started" });
      this.onRetry(runId);
      return;
    }
    const slug = decodeURIComponent(encodedSlug);
    const step = this.flows.get(run.flowSlug).steps.find((s) => s.slug === slug);
    if (!step) return error(404, "not_found", `run ${runId} has no step ${slug}`);
    if (step.kind !== "input") return error(409, "conflict", `step ${slug} is not an input step`);
    if (status !== "started" || stepStatuses(run.log).get(slug) !== "waiting") {
      return error(409, "conflict", `step ${slug} is not waiting`);
    }
    if (!("value" in body)) return error(400, "bad_request", "body needs a value");
    const errors = schemaErrors(step.schema, body.value);
    if (errors.length > 0) {
      return reply(400, { error: { code: "invalid_input", message: `the value does not match step ${slug}'s schema`, errors } });
    }
    this.append(runId, ev.stepCompleted(slug, body.value));
    reply(200, { run_id: runId, step_slug: slug, status: "completed" });
    this.onInput(runId, slug, body.value);
  }

  _connection(socket, req) {
    const index = this.connections.length;
    socket.pgUrl = new URL(req.url, "http://x");
    socket.pgMuted = this.mute(index);
    this.connections.push(socket);
    socket.on("close", () => {
      for (const run of this.runs.values()) run.subscribers.delete(socket);
      this.emit("change");
    });
    socket.on("message", (data) => this._frame(socket, index, data));
    this.emit("change");
    const code = this.closeOnConnect(index);
    if (code) socket.close(code, "fake gateway says no");
  }

  _frame(socket, index, data) {
    const msg = JSON.parse(String(data));
    this.received.push({ conn: index, msg });
    const run = this.runs.get(msg.run_id);
    if (msg.type === "ping") {
      this._send(socket, { type: "pong", id: msg.id });
    } else if (msg.type === "subscribe" && !run) {
      this._send(socket, { type: "error", code: "not_found", message: "unknown run", run_id: msg.run_id });
    } else if (msg.type === "subscribe") {
      const subscribed = { type: "subscribed", run_id: msg.run_id, seq: run.log.length };
      const cut = run.log.length > msg.since ? this.dieOnReplay(index, msg.run_id) : false;
      if (cut !== false) {
        // Once these frames are out (the client knows it is behind), the socket dies.
        const frames = [subscribed, ...run.log.slice(msg.since, msg.since + (cut === true ? 0 : Number(cut))).map((e) => ({ type: "event", ...e }))];
        frames.forEach((f, i) => socket.send(JSON.stringify(f), i === frames.length - 1 ? () => socket.terminate() : undefined));
        return;
      }
      this._send(socket, subscribed);
      // A type the client has never heard of: it must ignore it.
      this._send(socket, { type: "x-fake-notice", run_id: msg.run_id });
      const from = Math.max(0, msg.since - this.replayOverlap);
      for (const event of run.log.slice(from)) this._send(socket, { type: "event", ...event });
      run.subscribers.add(socket);
    } else if (msg.type === "unsubscribe") {
      run?.subscribers.delete(socket);
      this._send(socket, { type: "unsubscribed", run_id: msg.run_id });
    }
    this.emit("change");
  }
}
