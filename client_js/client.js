// PGFlow JS client: start flows over HTTP and follow their events over one shared websocket.
//
// The wire contract is docs/reference/websocket.md; the public types are client.d.ts.
// This module is the entry users import; it composes the modules of client/ (plain relative imports, so a
// browser loading /client.js fetches /client/run.js and the rest next to it):
//   - client/run.js: FlowRun, a pure state machine that applies one run's events;
//   - client/transport.js: the one websocket (lazy open, heartbeat, backoff, close codes);
//   - client/http.js: JSON requests and the per-flow graph cache;
//   - client/errors.js, client/deadline.js: errors, and the signal/timeout of every wait;
// and here: the Client, which routes socket messages to runs by run_id and resubscribes them
// with `since`, and triggerFlow on a default client.
// Works in browsers and in Node 22+ (Node 20 with --experimental-websocket); no dependencies.

import { deadline, race } from "./client/deadline.js";
import { PGFlowError, reportListenerError } from "./client/errors.js";
import { Http, newIdempotencyKey } from "./client/http.js";
import { FlowRun } from "./client/run.js";
import { Transport } from "./client/transport.js";

export { FlowCancelledError, FlowFailedError, InputRejectedError, PGFlowError } from "./client/errors.js";
export { FlowRun } from "./client/run.js";

/** @typedef {import("./client.js").ClientOptions} ClientOptions */
/** @typedef {import("./client.js").FlowEvent} FlowEvent */
/** @typedef {import("./client.js").ChunkListener} ChunkListener */
/** @typedef {(event: FlowEvent) => void} Listener */

// Where this module was served from, minus "client.js": the gateway's base URL, prefix
// included (a gateway mounted at /pgflow serves /pgflow/client.js and /pgflow/rpc/run_flow).
// It reads this module's own URL, so it stays here, in the entry.
function moduleBase() {
  try {
    const url = new URL(".", import.meta.url);
    if (url.protocol === "http:" || url.protocol === "https:") return url.href;
  } catch {
    // import.meta.url is not a URL in some bundlers; fall through
  }
  return globalThis.location?.origin;
}

/**
 * The base URL a client calls: `url` (relative to the page), else where client.js came from.
 * @param {string | undefined} url
 */
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

/**
 * An event listener that hands `onChunk` each chunk of every `step:stream` event, one call per
 * chunk: one that throws is reported and costs none of the chunks after it. A map step's
 * elements stream too (`task:stream`): their chunks come with a third argument, `{index,
 * attempt}`, which a two-argument onChunk simply ignores.
 * @param {ChunkListener | undefined} onChunk
 * @returns {Listener | undefined}
 */
function chunkListener(onChunk) {
  if (onChunk === undefined) return undefined;
  if (typeof onChunk !== "function") throw new TypeError("pgflow client: onChunk must be a function");
  return (event) => {
    const task = event.event === "task:stream";
    if ((!task && event.event !== "step:stream") || !Array.isArray(event.chunks)) return;
    const element = task ? { index: event.index, attempt: event.attempt } : undefined;
    for (const chunk of event.chunks) {
      try {
        // a step's own chunks keep the two-argument call they always had
        if (element) onChunk(event.step_slug, chunk, element);
        else onChunk(event.step_slug, chunk);
      } catch (err) {
        reportListenerError(err);
      }
    }
  };
}

// ---------------------------------------------------------------------------------------------
// Client: HTTP + runs routed over one shared websocket

// What the gateway takes as an Idempotency-Key (docs/reference/http.md); checked before the
// POST so a bad key is a TypeError at the call, not a 400 from the gateway.
const IDEMPOTENCY_KEY = /^[\x21-\x7e]{1,255}$/;
// Resends of the start POST after a network error or a 502/503/504 (~0.1 s, 0.2 s, 0.4 s apart):
// safe only because every resend carries the same Idempotency-Key.
const START_RETRIES = 3;

class Client {
  /** @param {ClientOptions} [options] */
  constructor(options = {}) {
    this.url = gatewayBase(options.url);
    this._http = new Http({ url: this.url, token: options.token, fetch: options.fetch });
    this._transport = new Transport({
      url: this.url,
      token: () => this._http.token(),
      WebSocket: options.WebSocket,
      heartbeatInterval: options.heartbeatInterval,
      heartbeatTimeout: options.heartbeatTimeout,
      reconnect: options.reconnect,
      idleTimeout: options.idleTimeout,
    }, {
      busy: () => this._runs.size > 0,
      onOpen: () => {
        for (const run of this._runs.values()) this._subscribe(run);
      },
      onMessage: (msg) => this._onMessage(msg),
      onRefused: (code, reason) => this._onRefused(code, reason),
      onLost: (code, reason) => this._onLost(code, reason),
      onUnsupported: (err) => this._failAll((run) => new PGFlowError(`run ${run.runId}: ${err.message}`,
        { code: "unsupported", runId: run.runId })),
    });
    /** @type {Map<string, FlowRun>} run_id -> run, for runs still followed: routing is O(1) per event */
    this._runs = new Map();
    /** @type {import("./client/run.js").RunHost} */
    this._host = {
      request: (method, path, options) => this._http.request(method, path, options),
      loadGraph: (slug, version) => this._http.loadGraph(slug, version),
      release: (run, how) => this._release(run, how),
      follow: (run) => {
        if (this._runs.get(run.runId) === run) return; // still followed: it never settled here
        if (this._transport.state === "closed") {
          run._fail(new PGFlowError(`run ${run.runId}: client closed`, { code: "client_closed", runId: run.runId }));
        } else {
          this._track(run);
        }
      },
    };
  }

  /** idle | connecting | open | reconnecting | closed — for a "reconnecting…" badge. */
  get state() {
    return this._transport.state;
  }

  /**
   * POST /rpc/run_flow, then follow the new run's events.
   * @param {string} name
   * @param {unknown} [input]
   * @param {{signal?: AbortSignal | undefined, onEvent?: Listener | undefined,
   *   onChunk?: ChunkListener | undefined, graph?: boolean, idempotencyKey?: string | undefined}} [options]
   */
  async startFlow(name, input, { signal, onEvent, onChunk, graph = true, idempotencyKey } = {}) {
    this._checkOpen();
    this._transport.checkSupported();
    const chunks = chunkListener(onChunk); // before the POST: a bad option starts no run
    // One key per call, the same on every resend below: however many POSTs a flaky network
    // takes, the gateway starts one run and answers the repeats with it (200, same body).
    const key = idempotencyKey ?? newIdempotencyKey();
    if (typeof key !== "string" || !IDEMPOTENCY_KEY.test(key)) {
      throw new TypeError(`startFlow: idempotencyKey must be 1 to 255 visible ASCII characters, got ${JSON.stringify(key)}`);
    }
    const label = `startFlow(${JSON.stringify(name)})`;
    // The graph is cached per flow and fetched alongside the run, so `run.graph` is
    // usually ready when this resolves; a graph that fails to load just stays null.
    const graphPromise = graph ? this._http.loadGraph(name).catch(() => null) : null;
    const body = await this._http.request("POST", "/rpc/run_flow", {
      body: { flow_slug: name, input: input === undefined ? {} : input },
      headers: { "Idempotency-Key": key },
      retries: START_RETRIES,
      signal,
      label,
    });
    if (typeof body?.run_id !== "string") {
      throw new PGFlowError(`${label}: the gateway answered without a run_id`, { code: "bad_response" });
    }
    const version = typeof body.version === "number" ? body.version : null;
    const run = this._track(new FlowRun(this._host, body.run_id, body.flow_slug ?? name, input, version), onEvent, chunks);
    if (graphPromise) {
      try {
        let graph = await race(graphPromise, { signal }, `run ${run.runId}`);
        // fetched alongside the start: the newest version, almost always the run's own
        if (graph && version != null && typeof graph.version === "number" && graph.version !== version) {
          graph = await race(this._http.loadGraph(name, version).catch(() => null), { signal }, `run ${run.runId}`);
        }
        run._setGraph(graph);
      } catch (err) {
        run.detach();
        throw err;
      }
    }
    return run;
  }

  /**
   * Follow a run started elsewhere: subscribes since 0, so its events replay to now.
   * @param {string} runId
   * @param {{flowSlug?: string | undefined, flowVersion?: number | undefined, onEvent?: Listener | undefined,
   *   onChunk?: ChunkListener | undefined}} [options]
   */
  getRun(runId, { flowSlug, flowVersion, onEvent, onChunk } = {}) {
    this._checkOpen();
    if (typeof runId !== "string" || !runId) throw new TypeError(`getRun: run id must be a string, got ${runId}`);
    this._transport.checkSupported();
    const chunks = chunkListener(onChunk);
    const known = this._runs.get(runId);
    if (known) return this._listen(known, onEvent, chunks);
    const run = new FlowRun(this._host, runId, flowSlug, undefined, flowVersion ?? null);
    if (flowSlug) run.loadGraph().catch(() => {});
    return this._track(run, onEvent, chunks);
  }

  /** Close the socket and reject every followed run. Idempotent. */
  close() {
    if (this._transport.state === "closed") return;
    this._transport.close();
    this._failAll((run) => new PGFlowError(`run ${run.runId}: client closed`,
      { code: "client_closed", runId: run.runId }));
  }

  _checkOpen() {
    if (this._transport.state === "closed") throw new PGFlowError("pgflow client is closed", { code: "client_closed" });
  }

  // ---- run routing ----

  /**
   * @param {FlowRun} run
   * @param {...(Listener | undefined)} listeners
   */
  _listen(run, ...listeners) {
    for (const listener of listeners) {
      if (!listener) continue;
      // A late listener first catches up, so it too sees every event once, in order.
      for (const event of run.events) {
        try {
          listener(event);
        } catch (err) {
          reportListenerError(err);
        }
      }
      run.on("*", listener);
    }
    return run;
  }

  /**
   * @param {FlowRun} run
   * @param {...(Listener | undefined)} listeners
   */
  _track(run, ...listeners) {
    // close() may have run while startFlow's request was in flight: nothing would ever
    // settle this run, so refuse it (the run itself goes on in the gateway).
    this._checkOpen();
    this._listen(run, ...listeners);
    this._runs.set(run.runId, run);
    // Not open yet: the transport's onOpen subscribes every followed run.
    if (this._transport.wake()) this._subscribe(run);
    return run;
  }

  /**
   * @param {FlowRun} run
   * @param {{unsubscribe: boolean}} how
   */
  _release(run, { unsubscribe }) {
    if (this._runs.get(run.runId) !== run) return;
    this._runs.delete(run.runId);
    clearTimeout(run._retryTimer);
    if (unsubscribe && this._transport.state === "open") this._transport.send({ type: "unsubscribe", run_id: run.runId });
    this._transport.idleIfUnused();
  }

  /** @param {(run: FlowRun) => unknown} makeError */
  _failAll(makeError) {
    const runs = [...this._runs.values()];
    this._runs.clear();
    for (const run of runs) {
      clearTimeout(run._retryTimer);
      run._fail(makeError(run));
    }
  }

  /** @param {FlowRun} run */
  _subscribe(run) {
    run._replayTo = 0;
    this._transport.send({ type: "subscribe", run_id: run.runId, since: run.lastSeq });
  }

  /** @param {Record<string, any>} msg */
  _onMessage(msg) {
    if (msg.type === "event") this._onEvent(msg);
    else if (msg.type === "error") this._onError(msg);
    else if (msg.type === "subscribed") {
      const run = this._runs.get(msg.run_id);
      if (run && typeof msg.seq === "number") run._replayTo = msg.seq;
    }
    // unsubscribed, pong, and any type we do not know: nothing to do
  }

  /** @param {Record<string, any>} msg */
  _onEvent(msg) {
    const run = this._runs.get(msg.run_id);
    if (!run || typeof msg.seq !== "number" || msg.seq <= run.lastSeq) return; // replay overlap
    if (msg.seq !== run.lastSeq + 1) {
      // The gateway promises no gaps after `since`; if one shows up anyway, resume
      // from what was applied rather than apply events out of order.
      this._transport.resync(`run ${run.runId}: expected seq ${run.lastSeq + 1}, got ${msg.seq}`);
      return;
    }
    const { type: _type, ...event } = msg;
    run._apply(event);
    // Settled: the run ended, and no later event (a run:retried) was announced by `subscribed`.
    if (run._settled) this._release(run, { unsubscribe: true });
  }

  /** @param {Record<string, any>} msg */
  _onError(msg) {
    const run = msg.run_id != null ? this._runs.get(msg.run_id) : undefined;
    if (!run) return; // not about a run we follow: our own frames are well-formed
    if (msg.code === "unavailable") {
      // The database is away; the subscription is worth retrying, not giving up on.
      const ws = this._transport.socket;
      run._retries += 1;
      clearTimeout(run._retryTimer);
      run._retryTimer = setTimeout(() => {
        if (this._transport.socket === ws && this._runs.get(run.runId) === run) this._subscribe(run);
      }, this._transport.backoff(run._retries));
      return;
    }
    this._release(run, { unsubscribe: false });
    run._fail(new PGFlowError(`run ${run.runId}: ${msg.message ?? "subscription refused"} (${msg.code})`,
      { code: msg.code ?? "error", runId: run.runId }));
  }

  /**
   * Closed with 1008: fail what is pending; a later startFlow/getRun opens a new socket.
   * @param {number} code
   * @param {string} reason
   */
  _onRefused(code, reason) {
    this._failAll((run) => new PGFlowError(
      `run ${run.runId}: the gateway refused the connection (close 1008${reason ? `: ${reason}` : ""})`,
      { code: "policy_violation", runId: run.runId, closeCode: code }));
  }

  /**
   * The socket is lost and will be replaced: a run stuck on a frame it cannot take fails
   * (FlowRun._stalledBy), the others resume.
   * @param {number} code
   * @param {string} reason
   */
  _onLost(code, reason) {
    const cause = `close ${code}${reason ? `: ${reason}` : ""}`;
    for (const run of [...this._runs.values()]) {
      if (!run._stalledBy(cause)) continue;
      this._release(run, { unsubscribe: false });
      run._fail(new PGFlowError(
        `run ${run.runId}: the connection was lost ${run._stalls} times in a row while receiving `
        + `event seq ${run.lastSeq + 1}, without getting past it (${cause}). An event larger `
        + "than this WebSocket accepts does this (Node's refuses compressed messages over 4 MiB; "
        + "the gateway sends events over --deflate-max-bytes, 1 MiB by default, uncompressed)",
        { code: "stalled", runId: run.runId, closeCode: code }));
    }
  }
}

/**
 * A client with its own socket; see client.d.ts for the options.
 * @param {ClientOptions} [options]
 */
export function createClient(options = {}) {
  return new Client(options);
}

// ---------------------------------------------------------------------------------------------
// Default client and triggerFlow

/** @type {Client | null} */
let defaultClient = null;
/** @type {Map<string, Map<unknown, Client>>} url -> token -> client, for triggerFlow({url, token}) */
const clientsByEndpoint = new Map();

/** The client triggerFlow uses when given no url, token or client; created on first use. */
export function getDefaultClient() {
  return (defaultClient ??= createClient());
}

/**
 * Replace the default client (e.g. one with a token); null resets it to the lazy default.
 * @param {Client | null} client
 */
export function setDefaultClient(client) {
  defaultClient = client;
}

/** @param {{client?: Client, url?: string, token?: import("./client.js").TokenSource}} options */
function clientFor({ client, url, token }) {
  if (client) return client;
  if (url === undefined && token === undefined) return getDefaultClient();
  const key = gatewayBase(url);
  let byToken = clientsByEndpoint.get(key);
  if (!byToken) clientsByEndpoint.set(key, (byToken = new Map()));
  let c = byToken.get(token);
  if (!c || c.state === "closed") byToken.set(token, (c = createClient(/** @type {ClientOptions} */ ({ url: key, token }))));
  return c;
}

/**
 * Start flow `name` and resolve with its output; rejects with FlowFailedError on run:failed and
 * FlowCancelledError on run:cancelled.
 * @param {string} name
 * @param {unknown} [input]
 * @param {{signal?: AbortSignal, timeout?: number, onEvent?: Listener, onChunk?: ChunkListener, client?: Client,
 *   url?: string, token?: import("./client.js").TokenSource, idempotencyKey?: string}} [options]
 */
export async function triggerFlow(name, input, options = {}) {
  const { signal, timeout, onEvent, onChunk, idempotencyKey } = options;
  const d = deadline(signal, timeout, `triggerFlow(${JSON.stringify(name)})`);
  let run;
  try {
    const client = clientFor(options);
    run = await client.startFlow(name, input, { signal: d.signal, onEvent, onChunk, graph: false, idempotencyKey });
    d.label = `run ${run.runId}`;
    return await run.result({ signal: d.signal });
  } finally {
    d.dispose();
    // Nobody else holds this run: on abort or timeout stop following it.
    if (run && !run._settled) run.detach();
  }
}
