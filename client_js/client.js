// PGFlow JS client: start flows over HTTP and follow their events over one shared websocket.
//
// The wire contract is docs/protocol.md. This file has three layers:
//   - FlowRun: a pure state machine that applies one run's events (no I/O);
//   - Client: HTTP calls plus the one websocket shared by all of a client's runs
//     (lazy open, resubscribe with `since`, heartbeat, backoff, close codes);
//   - triggerFlow: start a run and await its output, on a default client.
// Works in browsers and in Node 22+ (Node 20 with --experimental-websocket); no dependencies.
// It stays one file, past the house ~600-line mark, because the gateway serves it as is at
// GET /client.js and a browser should fetch a single module. Public types: client.d.ts.

const HEARTBEAT_INTERVAL = 5_000; // ms between pings
const HEARTBEAT_TIMEOUT = 10_000; // ms of silence after which the socket is presumed dead
const RECONNECT_MIN_DELAY = 100; // ms
const RECONNECT_MAX_DELAY = 5_000; // ms
const IDLE_TIMEOUT = 1_000; // ms an unused socket stays open, so bursts of runs share it

const WS_OPEN = 1; // WebSocket.OPEN, spelled out so any WebSocket implementation works
const CLOSE_NORMAL = 1000;
const CLOSE_POLICY = 1008; // foreign Origin or bad token: retrying with the same credentials is futile
const CLOSE_RESYNC = 4000; // ours: heartbeat lost or a seq gap; reconnect and resume with `since`

// Losses of the socket in a row, with the same cause, while a run was behind and got no event
// further: then the run fails (a frame this client cannot take would otherwise replay forever).
const STALL_LIMIT = 5;

const RUN_TERMINAL_STATUSES = new Set(["completed", "failed"]);
const STEP_STATUSES = new Set(["created", "started", "retrying", "completed", "failed", "cancelled"]);
const STEP_FINAL_STATUSES = new Set(["completed", "failed", "cancelled"]);

// ---------------------------------------------------------------------------------------------
// Errors

/** Any error this client raises itself; `code` is a docs/protocol.md error code or a client one. */
export class PGFlowError extends Error {
  constructor(message, { code, status, runId, closeCode, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = "PGFlowError";
    this.code = code ?? "error";
    if (status !== undefined) this.status = status;
    if (runId !== undefined) this.runId = runId;
    if (closeCode !== undefined) this.closeCode = closeCode;
  }
}

/** The run ended with `run:failed`. */
export class FlowFailedError extends PGFlowError {
  constructor(event) {
    super(
      `run ${event.run_id} failed at step ${event.step_slug} (attempt ${event.attempt}): ${event.error}`,
      { code: "run_failed", runId: event.run_id },
    );
    this.name = "FlowFailedError";
    this.stepSlug = event.step_slug ?? null;
    this.error = event.error ?? null;
    this.attempt = event.attempt ?? null;
    this.event = event;
  }
}

// A listener that throws must not corrupt the client's state, yet must not vanish either:
// report it the way EventTarget does (browsers), or as an uncaught exception (Node < 22).
function reportListenerError(err) {
  if (typeof globalThis.reportError === "function") globalThis.reportError(err);
  else setTimeout(() => { throw err; });
}

// ---------------------------------------------------------------------------------------------
// Cancellation: every wait takes `signal` and `timeout`

// The default abort reason says nothing useful; replace it with one that names the run.
function abortReason(signal, label) {
  const reason = signal.reason;
  if (reason === undefined || (reason instanceof DOMException && reason.name === "AbortError")) {
    return new DOMException(`${label}: aborted`, "AbortError");
  }
  return reason;
}

// One signal that fires on the caller's signal or on the timeout, whichever comes first.
// `label` is read when it fires, so a caller can sharpen it (e.g. once the run id is known).
function deadline(signal, timeout, label) {
  if (timeout != null && !(Number.isFinite(timeout) && timeout >= 0)) {
    throw new TypeError(`timeout must be a non-negative number of ms, got ${timeout}`);
  }
  const d = { signal: undefined, label, dispose() {} };
  if (!signal && timeout == null) return d;
  const ctl = new AbortController();
  d.signal = ctl.signal;
  const onAbort = () => ctl.abort(abortReason(signal, d.label));
  let timer;
  if (signal?.aborted) onAbort();
  else signal?.addEventListener("abort", onAbort, { once: true });
  if (timeout != null && !ctl.signal.aborted) {
    timer = setTimeout(
      () => ctl.abort(new DOMException(`${d.label}: timed out after ${timeout} ms`, "TimeoutError")),
      timeout,
    );
  }
  d.dispose = () => {
    clearTimeout(timer);
    signal?.removeEventListener("abort", onAbort);
  };
  return d;
}

// `promise`, or the abort/timeout reason if that comes first. The promise itself is always
// given handlers, so a rejection after an abort never surfaces as "unhandled".
function race(promise, { signal, timeout } = {}, label) {
  let d;
  try {
    d = deadline(signal, timeout, label);
  } catch (err) {
    return Promise.reject(err);
  }
  if (!d.signal) return promise;
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      d.dispose();
      reject(d.signal.reason);
    };
    const settle = (fn) => (value) => {
      d.dispose();
      d.signal.removeEventListener("abort", onAbort);
      fn(value);
    };
    if (d.signal.aborted) onAbort();
    else d.signal.addEventListener("abort", onAbort, { once: true });
    promise.then(settle(resolve), settle(reject));
  });
}

// ---------------------------------------------------------------------------------------------
// FlowRun: one run's state, built only from its events

function newStepState(slug) {
  return {
    slug, status: "created", output: null, error: null, attempt: null,
    startedAt: null, completedAt: null, failedAt: null,
  };
}

/** A run followed by a client. Created by `client.startFlow()` / `client.getRun()`, not directly. */
export class FlowRun {
  constructor(client, runId, flowSlug, input) {
    this.runId = runId;
    this.flowSlug = flowSlug ?? null;
    this.input = input;
    this.status = "started";
    this.output = null;
    this.error = null;
    this.startedAt = null;
    this.completedAt = null;
    this.failedAt = null;
    this.lastSeq = 0;
    this.events = [];
    this._client = client;
    this._graph = null;
    this._steps = new Map();
    this._retries = 0; // subscription attempts refused as `unavailable`
    this._replayTo = 0; // the seq `subscribed` announced on the current socket
    this._stalls = 0; // consecutive socket losses while behind, without progress
    this._stallSeq = 0; // lastSeq at the first of them
    this._stallCause = ""; // "close <code>[: <reason>]" of the first of them
    this._retryTimer = undefined;
    this._listeners = new Map();
    // Settled by run:completed / run:failed, or by a client-side failure (refused
    // subscription, close 1008, client closed, detach).
    this._settled = false;
    this._result = new Promise((resolve, reject) => {
      this._resolve = resolve;
      this._reject = reject;
    });
    this._result.catch(() => {}); // a run nobody awaits must not raise "unhandled rejection"
  }

  /** The flow's graph (`GET /flows/{slug}`), or null until loaded. */
  get graph() {
    return this._graph;
  }

  /** Every step known so far (from the graph and from events), by slug. */
  get steps() {
    return this._steps;
  }

  /** Live state of one step; the same object is updated in place as events arrive. */
  step(slug) {
    let state = this._steps.get(slug);
    if (!state) {
      state = newStepState(slug);
      if (this.status === "failed") state.status = "cancelled";
      this._steps.set(slug, state);
    }
    return state;
  }

  /** Subscribe to one event name, or "*" for all; returns the unsubscribe function. */
  on(event, fn) {
    if (typeof fn !== "function") throw new TypeError(`run ${this.runId}: listener must be a function`);
    let set = this._listeners.get(event);
    if (!set) this._listeners.set(event, (set = new Set()));
    set.add(fn);
    return () => set.delete(fn);
  }

  /** The run's output; rejects with FlowFailedError on run:failed. */
  result({ signal, timeout } = {}) {
    return race(this._result, { signal, timeout }, `run ${this.runId}`);
  }

  /** Resolves with this run once `status` is reached; rejects if it can no longer be. */
  waitForStatus(status, { signal, timeout } = {}) {
    if (!["started", ...RUN_TERMINAL_STATUSES].includes(status)) {
      return Promise.reject(new TypeError(`run ${this.runId}: unknown run status ${JSON.stringify(status)}`));
    }
    // Run statuses only go started -> completed | failed, and both terminal moves settle
    // _result, so the wait derives from it without listening to events.
    const reached = status === "started"
      ? Promise.resolve(this)
      : this._result.then(
        () => {
          if (status === "completed") return this;
          throw new PGFlowError(`run ${this.runId} completed, so it will never be ${status}`,
            { code: "status_unreachable", runId: this.runId });
        },
        (err) => {
          if (status === "failed" && this.status === "failed") return this;
          throw err;
        },
      );
    return race(reached, { signal, timeout }, `run ${this.runId}`);
  }

  /** Fetch the flow's graph (cached per client and flow); also sets `run.graph`. */
  async loadGraph({ signal } = {}) {
    if (this._graph) return this._graph;
    if (!this.flowSlug) {
      // Attached by run id alone: the events do not carry the flow, the snapshot does.
      const snapshot = await this._client._request("GET", `/runs/${encodeURIComponent(this.runId)}`, undefined, signal);
      this.flowSlug = snapshot.flow_slug;
    }
    this._setGraph(await race(this._client._loadGraph(this.flowSlug), { signal }, `run ${this.runId}`));
    return this._graph;
  }

  /** Stop following this run (it goes on in the server); a pending result() rejects. */
  detach() {
    this._client._release(this, { unsubscribe: true });
    this._fail(new PGFlowError(`run ${this.runId}: detached before it finished`,
      { code: "detached", runId: this.runId }));
  }

  _setGraph(graph) {
    this._graph = graph;
    for (const s of graph?.steps ?? []) this.step(s.slug);
  }

  // Apply one event; false when it was already seen or the run is over. Pure: no I/O.
  _apply(event) {
    if (!(event.seq > this.lastSeq) || this._settled) return false;
    this.lastSeq = event.seq;
    this.events.push(event);
    // A step event without a step slug is malformed; updating a throwaway state keeps
    // the switch simple and the run's real steps untouched.
    const step = event.step_slug ? this.step(event.step_slug) : newStepState(null);
    // A step event's own `status` wins; the event name gives it for an event without one.
    const status = (byName) => (STEP_STATUSES.has(event.status) ? event.status : byName);
    const attempt = event.attempt ?? step.attempt;
    switch (event.event) {
      case "run:started":
        this.startedAt = event.at;
        break;
      case "step:started":
        // Every attempt starts with one, retries included (after their `step:retrying`);
        // the previous attempt's error stays until the step completes.
        Object.assign(step, { status: status("started"), attempt, startedAt: event.at });
        break;
      case "step:retrying":
        Object.assign(step, { status: status("retrying"), attempt, error: event.error });
        break;
      case "step:completed":
        Object.assign(step, {
          status: status("completed"), attempt, output: event.output, error: null,
          completedAt: event.at,
        });
        break;
      case "step:failed":
        Object.assign(step, { status: status("failed"), attempt, error: event.error, failedAt: event.at });
        break;
      case "run:completed":
        Object.assign(this, { status: "completed", output: event.output, completedAt: event.at });
        break;
      case "run:failed":
        Object.assign(this, { status: "failed", error: event.error, failedAt: event.at });
        if (event.step_slug && step.status !== "failed") {
          Object.assign(step, { status: "failed", attempt: event.attempt, error: event.error, failedAt: event.at });
        }
        // protocol.md: cancelled steps get no event of their own; run:failed implies it.
        for (const s of this._steps.values()) if (!STEP_FINAL_STATUSES.has(s.status)) s.status = "cancelled";
        break;
      default:
        break; // a newer gateway's event: kept in `events` and emitted, no state to change
    }
    this._emit(event);
    if (this.status === "completed") this._settle(() => this._resolve(this.output));
    else if (this.status === "failed") this._settle(() => this._reject(new FlowFailedError(event)));
    return true;
  }

  get _terminal() {
    return RUN_TERMINAL_STATUSES.has(this.status);
  }

  _emit(event) {
    for (const key of [event.event, "*"]) {
      const set = this._listeners.get(key);
      if (!set) continue;
      for (const fn of set) {
        try {
          fn(event);
        } catch (err) {
          reportListenerError(err);
        }
      }
    }
  }

  _fail(err) {
    this._settle(() => this._reject(err));
  }

  _settle(fn) {
    if (this._settled) return;
    this._settled = true;
    fn();
  }
}

// ---------------------------------------------------------------------------------------------
// Client: HTTP + one shared websocket

// Where this module was served from, minus "client.js": the gateway's base URL, prefix
// included (a gateway mounted at /pgflow serves /pgflow/client.js and /pgflow/rpc/run_flow).
function moduleBase() {
  try {
    const url = new URL(".", import.meta.url);
    if (url.protocol === "http:" || url.protocol === "https:") return url.href;
  } catch {
    // import.meta.url is not a URL in some bundlers; fall through
  }
  return globalThis.location?.origin;
}

// The base URL a client calls: `url` (relative to the page), else where client.js came from.
function gatewayBase(url) {
  const base = url ?? moduleBase();
  if (!base) {
    throw new TypeError("pgflow client: no url given and the module was not served by a gateway; pass { url }");
  }
  const parsed = new URL(base, globalThis.location?.href);
  parsed.search = "";
  parsed.hash = "";
  return parsed.href.replace(/\/+$/, "");
}

// Checked before a run is started, so that a runtime without WebSocket creates no run it
// could not follow.
function webSocketClass(given) {
  const WS = given ?? globalThis.WebSocket;
  if (typeof WS !== "function") {
    throw new PGFlowError("pgflow client: this runtime has no WebSocket, so it cannot follow runs: "
      + "use Node 22 or later, or Node 20 with --experimental-websocket, "
      + "or pass an implementation: createClient({ WebSocket })", { code: "unsupported" });
  }
  return WS;
}

class Client {
  constructor(options = {}) {
    const reconnect = options.reconnect ?? {};
    this.url = gatewayBase(options.url);
    this._token = options.token;
    // Call fetch unbound: `window.fetch` invoked as a method of another object throws.
    this._fetch = options.fetch ?? ((...args) => globalThis.fetch(...args));
    this._WebSocket = options.WebSocket;
    this._heartbeatInterval = options.heartbeatInterval ?? HEARTBEAT_INTERVAL;
    this._heartbeatTimeout = options.heartbeatTimeout ?? HEARTBEAT_TIMEOUT;
    this._minDelay = reconnect.minDelay ?? RECONNECT_MIN_DELAY;
    this._maxDelay = Math.max(reconnect.maxDelay ?? RECONNECT_MAX_DELAY, this._minDelay);
    this._idleTimeout = options.idleTimeout ?? IDLE_TIMEOUT;
    this._runs = new Map(); // run_id -> FlowRun, for runs still followed: routing is O(1) per event
    this._graphs = new Map(); // flow slug -> Promise<graph>
    this._ws = null;
    this._state = "idle"; // idle | connecting | open | reconnecting | closed
    this._attempt = 0; // consecutive failed connections, for the backoff
    this._pingId = 0;
    this._lastMessageAt = 0;
    this._timers = { reconnect: null, heartbeat: null, deadline: null, idle: null };
  }

  /** idle | connecting | open | reconnecting | closed — for a "reconnecting…" badge. */
  get state() {
    return this._state;
  }

  /** POST /rpc/run_flow, then follow the new run's events. */
  async startFlow(name, input, { signal, onEvent, graph = true } = {}) {
    this._checkOpen();
    webSocketClass(this._WebSocket);
    const label = `startFlow(${JSON.stringify(name)})`;
    // The graph is cached per flow and fetched alongside the run, so `run.graph` is
    // usually ready when this resolves; a graph that fails to load just stays null.
    const graphPromise = graph ? this._loadGraph(name).catch(() => null) : null;
    const body = await this._request("POST", "/rpc/run_flow",
      { flow_slug: name, input: input === undefined ? {} : input }, signal, label);
    if (typeof body?.run_id !== "string") {
      throw new PGFlowError(`${label}: the gateway answered without a run_id`, { code: "bad_response" });
    }
    const run = this._track(new FlowRun(this, body.run_id, body.flow_slug ?? name, input), onEvent);
    if (graphPromise) {
      try {
        run._setGraph(await race(graphPromise, { signal }, `run ${run.runId}`));
      } catch (err) {
        run.detach();
        throw err;
      }
    }
    return run;
  }

  /** Follow a run started elsewhere: subscribes since 0, so its events replay to now. */
  getRun(runId, { flowSlug, onEvent } = {}) {
    this._checkOpen();
    if (typeof runId !== "string" || !runId) throw new TypeError(`getRun: run id must be a string, got ${runId}`);
    webSocketClass(this._WebSocket);
    const known = this._runs.get(runId);
    if (known) return this._listen(known, onEvent);
    const run = new FlowRun(this, runId, flowSlug);
    if (flowSlug) run.loadGraph().catch(() => {});
    return this._track(run, onEvent);
  }

  /** Close the socket and reject every followed run. Idempotent. */
  close() {
    if (this._state === "closed") return;
    this._state = "closed";
    for (const key of Object.keys(this._timers)) this._clearTimer(key);
    if (this._ws) this._discard(this._ws, CLOSE_NORMAL, "client closed");
    this._failAll((run) => new PGFlowError(`run ${run.runId}: client closed`,
      { code: "client_closed", runId: run.runId }));
  }

  // ---- HTTP ----

  async _request(method, path, body, signal, label = `${method} ${path}`) {
    const headers = { accept: "application/json" };
    if (body !== undefined) headers["content-type"] = "application/json";
    const token = await this._resolveToken();
    if (token) headers.authorization = `Bearer ${token}`;
    let res, text;
    try {
      res = await this._fetch(this.url + path, {
        method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body),
      });
      text = await res.text();
    } catch (err) {
      if (signal?.aborted) throw abortReason(signal, label);
      throw new PGFlowError(`${label}: ${err?.message ?? err}`, { code: "network_error", cause: err });
    }
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      // a proxy's HTML error page, say; the status still tells what happened
    }
    if (!res.ok) {
      const e = data?.error;
      throw new PGFlowError(`${label}: ${e?.message ?? `HTTP ${res.status}`}`,
        { code: e?.code ?? "http_error", status: res.status });
    }
    return data;
  }

  _loadGraph(slug) {
    let graph = this._graphs.get(slug);
    if (!graph) {
      graph = this._request("GET", `/flows/${encodeURIComponent(slug)}`);
      this._graphs.set(slug, graph);
      graph.catch(() => this._graphs.delete(slug)); // retry next time rather than cache a failure
    }
    return graph;
  }

  async _resolveToken() {
    return typeof this._token === "function" ? await this._token() : this._token;
  }

  _checkOpen() {
    if (this._state === "closed") throw new PGFlowError("pgflow client is closed", { code: "client_closed" });
  }

  // ---- run routing ----

  _listen(run, onEvent) {
    if (onEvent) {
      // A late listener first catches up, so it too sees every event once, in order.
      for (const event of run.events) {
        try {
          onEvent(event);
        } catch (err) {
          reportListenerError(err);
        }
      }
      run.on("*", onEvent);
    }
    return run;
  }

  _track(run, onEvent) {
    // close() may have run while startFlow's request was in flight: nothing would ever
    // settle this run, so refuse it (the run itself goes on in the gateway).
    this._checkOpen();
    this._listen(run, onEvent);
    this._runs.set(run.runId, run);
    this._clearTimer("idle");
    if (this._state === "open") this._subscribe(this._ws, run);
    else if (this._state === "idle") this._connect();
    // connecting / reconnecting: the open handler subscribes every followed run
    return run;
  }

  _release(run, { unsubscribe }) {
    if (this._runs.get(run.runId) !== run) return;
    this._runs.delete(run.runId);
    clearTimeout(run._retryTimer);
    if (unsubscribe && this._state === "open") this._send(this._ws, { type: "unsubscribe", run_id: run.runId });
    this._idleIfUnused();
  }

  // An open socket without runs would keep pinging forever (and keep a Node process
  // alive): close it after a grace period that lets a burst of runs share it.
  _idleIfUnused() {
    if (this._runs.size > 0 || !this._ws) return;
    this._setTimer("idle", () => {
      if (this._runs.size > 0 || !this._ws) return;
      this._discard(this._ws, CLOSE_NORMAL, "idle");
      this._state = "idle";
    }, this._idleTimeout);
  }

  _failAll(makeError) {
    const runs = [...this._runs.values()];
    this._runs.clear();
    for (const run of runs) {
      clearTimeout(run._retryTimer);
      run._fail(makeError(run));
    }
  }

  // ---- websocket ----

  async _connect() {
    this._state = "connecting";
    let ws;
    try {
      const token = await this._resolveToken();
      if (this._state !== "connecting") return; // closed while the token was being fetched
      let WS;
      try {
        WS = webSocketClass(this._WebSocket);
      } catch (err) {
        this._state = "idle";
        this._failAll((run) => new PGFlowError(`run ${run.runId}: ${err.message}`,
          { code: "unsupported", runId: run.runId }));
        return;
      }
      ws = new WS(this._realtimeUrl(token));
    } catch {
      // A token callback that threw, or a socket that could not even be created:
      // treat like a failed connection and retry after the backoff.
      this._scheduleReconnect();
      return;
    }
    this._ws = ws;
    this._lastMessageAt = Date.now(); // the handshake itself is under the heartbeat deadline
    let error = ""; // why the socket failed, when the runtime says (Node does; browsers do not)
    ws.onopen = () => this._onOpen(ws);
    ws.onmessage = (ev) => this._onMessage(ws, ev);
    ws.onclose = (ev) => this._onGone(ws, ev.code, ev.reason || error);
    // A close event always follows, with the code that matters.
    ws.onerror = (ev) => {
      error = String(ev?.message || ev?.error?.message || "");
    };
    this._armDeadline(ws);
  }

  _realtimeUrl(token) {
    const url = new URL(this.url + "/realtime");
    if (url.protocol === "http:") url.protocol = "ws:";
    else if (url.protocol === "https:") url.protocol = "wss:";
    if (token) url.searchParams.set("token", token);
    return url.href;
  }

  _onOpen(ws) {
    this._state = "open";
    this._setTimer("heartbeat", () => this._send(ws, { type: "ping", id: ++this._pingId }),
      this._heartbeatInterval, true);
    for (const run of this._runs.values()) this._subscribe(ws, run);
    this._idleIfUnused(); // every run may have ended while the socket was connecting
  }

  _subscribe(ws, run) {
    run._replayTo = 0;
    this._send(ws, { type: "subscribe", run_id: run.runId, since: run.lastSeq });
  }

  _send(ws, message) {
    if (ws?.readyState === WS_OPEN) ws.send(JSON.stringify(message));
  }

  _onMessage(ws, ev) {
    if (ws !== this._ws) return;
    this._lastMessageAt = Date.now();
    // Reset the backoff only once the gateway has spoken: a socket that opens and is
    // closed at once (say 1013, too many connections) must keep backing off.
    this._attempt = 0;
    if (typeof ev.data !== "string") return; // the protocol is text frames only
    let msg;
    try {
      msg = JSON.parse(ev.data);
    } catch {
      return;
    }
    if (msg === null || typeof msg !== "object") return;
    if (msg.type === "event") this._onEvent(ws, msg);
    else if (msg.type === "error") this._onError(ws, msg);
    else if (msg.type === "subscribed") {
      const run = this._runs.get(msg.run_id);
      if (run && typeof msg.seq === "number") run._replayTo = msg.seq;
    }
    // unsubscribed, pong, and any type we do not know: nothing to do
  }

  _onEvent(ws, msg) {
    const run = this._runs.get(msg.run_id);
    if (!run || typeof msg.seq !== "number" || msg.seq <= run.lastSeq) return; // replay overlap
    if (msg.seq !== run.lastSeq + 1) {
      // The gateway promises no gaps after `since`; if one shows up anyway, resume
      // from what was applied rather than apply events out of order.
      this._onGone(ws, CLOSE_RESYNC, `run ${run.runId}: expected seq ${run.lastSeq + 1}, got ${msg.seq}`);
      return;
    }
    const { type: _type, ...event } = msg;
    run._apply(event);
    if (run._terminal) this._release(run, { unsubscribe: true });
  }

  _onError(ws, msg) {
    const run = msg.run_id != null ? this._runs.get(msg.run_id) : undefined;
    if (!run) return; // not about a run we follow: our own frames are well-formed
    if (msg.code === "unavailable") {
      // The database is away; the subscription is worth retrying, not giving up on.
      run._retries += 1;
      clearTimeout(run._retryTimer);
      run._retryTimer = setTimeout(() => {
        if (this._ws === ws && this._runs.get(run.runId) === run) this._subscribe(ws, run);
      }, this._backoff(run._retries));
      return;
    }
    this._release(run, { unsubscribe: false });
    run._fail(new PGFlowError(`run ${run.runId}: ${msg.message ?? "subscription refused"} (${msg.code})`,
      { code: msg.code ?? "error", runId: run.runId }));
  }

  // Single exit for a socket: its close event, a lost heartbeat, or a seq gap.
  _onGone(ws, code, reason) {
    if (ws !== this._ws) return;
    this._discard(ws, CLOSE_RESYNC, reason);
    if (this._state === "closed") return;
    if (code === CLOSE_POLICY) {
      // protocol.md: do not reconnect with the same credentials. Fail what is pending;
      // a later startFlow/getRun opens a new socket (perhaps with a fresh token).
      this._state = "idle";
      this._attempt = 0;
      this._failAll((run) => new PGFlowError(
        `run ${run.runId}: the gateway refused the connection (close 1008${reason ? `: ${reason}` : ""})`,
        { code: "policy_violation", runId: run.runId, closeCode: code }));
      return;
    }
    // Every other code (1001, 1006, 1011, 1013, 4001, ... and 1000 while runs are still
    // pending) resumes: a new socket resubscribes each followed run with `since`.
    this._countStalls(code, reason);
    if (this._runs.size === 0) this._state = "idle";
    else this._scheduleReconnect();
  }

  // A run still behind what its `subscribed` announced when the socket went, with no event
  // applied since the previous such loss and the same cause, is stuck on a frame it cannot
  // take (too large for this WebSocket, say): after STALL_LIMIT losses in a row it fails
  // with the cause, rather than replaying that frame forever.
  _countStalls(code, reason) {
    const cause = `close ${code}${reason ? `: ${reason}` : ""}`;
    for (const run of [...this._runs.values()]) {
      const behind = run._replayTo > run.lastSeq;
      run._replayTo = 0;
      if (!behind) {
        run._stalls = 0;
        continue;
      }
      if (run._stalls > 0 && run._stallSeq === run.lastSeq && run._stallCause === cause) run._stalls += 1;
      else Object.assign(run, { _stalls: 1, _stallSeq: run.lastSeq, _stallCause: cause });
      if (run._stalls < STALL_LIMIT) continue;
      this._release(run, { unsubscribe: false });
      run._fail(new PGFlowError(
        `run ${run.runId}: the connection was lost ${run._stalls} times in a row while receiving `
        + `event seq ${run.lastSeq + 1}, without getting past it (${cause}). An event larger `
        + "than this WebSocket accepts does this (Node's refuses compressed messages over 4 MiB; "
        + "the gateway sends events over --deflate-max-bytes, 1 MiB by default, uncompressed)",
        { code: "stalled", runId: run.runId, closeCode: code }));
    }
  }

  // Forget a socket for good: after this none of its events reach the client, so a
  // close handshake that never completes (dead peer) cannot hold anything up.
  _discard(ws, code, reason) {
    ws.onopen = ws.onmessage = ws.onclose = null;
    this._clearTimer("heartbeat");
    this._clearTimer("deadline");
    this._clearTimer("idle");
    if (this._ws === ws) this._ws = null;
    try {
      ws.close(code, reason?.slice(0, 120)); // close reasons are limited to 123 bytes
    } catch {
      // already closing, or not yet connected in an implementation that throws
    }
  }

  // Full jitter between minDelay and a cap that doubles per failed attempt up to maxDelay,
  // so a restarted gateway is not hit by all its clients at the same instant.
  _backoff(attempt) {
    const cap = Math.min(this._maxDelay, this._minDelay * 2 ** Math.min(attempt, 30));
    return this._minDelay + Math.random() * (cap - this._minDelay);
  }

  _scheduleReconnect() {
    this._state = "reconnecting";
    this._attempt += 1;
    this._setTimer("reconnect", () => {
      this._state = "idle";
      if (this._runs.size > 0) this._connect();
    }, this._backoff(this._attempt));
  }

  // One timer, re-armed lazily, instead of one reset per message: messages only record a
  // timestamp, and the timer checks it when it fires.
  _armDeadline(ws) {
    const remaining = this._lastMessageAt + this._heartbeatTimeout - Date.now();
    if (remaining <= 0) {
      this._onGone(ws, CLOSE_RESYNC, "heartbeat timeout");
      return;
    }
    this._setTimer("deadline", () => this._armDeadline(ws), remaining);
  }

  _setTimer(key, fn, ms, repeat = false) {
    this._clearTimer(key);
    this._timers[key] = repeat ? setInterval(fn, ms) : setTimeout(() => {
      this._timers[key] = null;
      fn();
    }, ms);
  }

  _clearTimer(key) {
    clearTimeout(this._timers[key]); // clears intervals too
    this._timers[key] = null;
  }
}

/** A client with its own socket; see client.d.ts for the options. */
export function createClient(options = {}) {
  return new Client(options);
}

// ---------------------------------------------------------------------------------------------
// Default client and triggerFlow

let defaultClient = null;
const clientsByEndpoint = new Map(); // url -> Map(token -> Client), for triggerFlow({url, token})

/** The client triggerFlow uses when given no url, token or client; created on first use. */
export function getDefaultClient() {
  return (defaultClient ??= createClient());
}

/** Replace the default client (e.g. one with a token); null resets it to the lazy default. */
export function setDefaultClient(client) {
  defaultClient = client;
}

function clientFor({ client, url, token }) {
  if (client) return client;
  if (url === undefined && token === undefined) return getDefaultClient();
  const key = gatewayBase(url);
  let byToken = clientsByEndpoint.get(key);
  if (!byToken) clientsByEndpoint.set(key, (byToken = new Map()));
  let c = byToken.get(token);
  if (!c || c.state === "closed") byToken.set(token, (c = createClient({ url: key, token })));
  return c;
}

/** Start flow `name` and resolve with its output; rejects with FlowFailedError on run:failed. */
export async function triggerFlow(name, input, options = {}) {
  const { signal, timeout, onEvent } = options;
  const d = deadline(signal, timeout, `triggerFlow(${JSON.stringify(name)})`);
  let run;
  try {
    const client = clientFor(options);
    run = await client.startFlow(name, input, { signal: d.signal, onEvent, graph: false });
    d.label = `run ${run.runId}`;
    return await run.result({ signal: d.signal });
  } finally {
    d.dispose();
    // Nobody else holds this run: on abort or timeout stop following it.
    if (run && !run._settled) run.detach();
  }
}
