// The client's HTTP side: JSON requests to the gateway, with the token, and the graph cache.

import { abortReason } from "./deadline.js";
import { httpError, PGFlowError } from "./errors.js";

/** @typedef {import("../client.js").TokenSource} TokenSource */
/** @typedef {import("../client.js").FlowGraph} FlowGraph */

/**
 * @typedef {object} RequestOptions
 * @property {unknown} [body] sent as JSON
 * @property {AbortSignal | undefined} [signal]
 * @property {string | undefined} [label] what error messages name
 * @property {Record<string, string> | undefined} [headers]
 * @property {number | undefined} [retries] sends after the first one, for a request safe to repeat
 * @property {string | undefined} [runId] the run the request is about, for the errors
 * @property {string | undefined} [stepSlug] the step it is about (an input), for InputRejectedError
 */

const RETRY_DELAY = 100; // ms before the first resend; doubles after each

/** @param {unknown} err */
function isTransient(err) {
  return err instanceof PGFlowError
    && (err.code === "network_error" || [502, 503, 504].includes(/** @type {number} */ (err.status)));
}

/**
 * Resolves after `ms`, or rejects with the abort reason as soon as `signal` fires.
 * @param {number} ms
 * @param {AbortSignal | undefined} signal
 * @param {string} label
 * @returns {Promise<void>}
 */
function pause(ms, signal, label) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(abortReason(signal, label));
    const onAbort = () => {
      clearTimeout(timer);
      reject(abortReason(/** @type {AbortSignal} */ (signal), label));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/**
 * A fresh Idempotency-Key: a random UUID. `crypto.randomUUID` exists only in secure contexts
 * (https, localhost), so a page served over plain http from another host builds one from
 * `getRandomValues`, and a runtime without Web Crypto from Math.random (still unique enough to
 * tell one call's resends from another call).
 * @returns {string}
 */
export function newIdempotencyKey() {
  const c = globalThis.crypto;
  if (typeof c?.randomUUID === "function") return c.randomUUID();
  const bytes = new Uint8Array(16);
  if (typeof c?.getRandomValues === "function") c.getRandomValues(bytes);
  else for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
  bytes[6] = (/** @type {number} */ (bytes[6]) & 0x0f) | 0x40; // version 4
  bytes[8] = (/** @type {number} */ (bytes[8]) & 0x3f) | 0x80; // RFC 4122 variant
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

export class Http {
  /**
   * @param {object} options
   * @param {string} options.url the gateway's base URL, without a trailing slash
   * @param {TokenSource | undefined} options.token
   * @param {typeof globalThis.fetch | undefined} options.fetch
   */
  constructor({ url, token, fetch }) {
    this.url = url;
    this._token = token;
    // Call fetch unbound: `window.fetch` invoked as a method of another object throws.
    /** @type {typeof globalThis.fetch} */
    this._fetch = fetch ?? ((...args) => globalThis.fetch(...args));
    /** @type {Map<string, Promise<FlowGraph>>} "slug" (its newest version) or "slug@N" -> graph */
    this._graphs = new Map();
  }

  /**
   * The current token: a token function is asked at every request and every (re)connection.
   * @returns {Promise<string | null | undefined>}
   */
  async token() {
    return typeof this._token === "function" ? await this._token() : this._token;
  }

  /**
   * One JSON request; a non-2xx answer rejects with a PGFlowError carrying `status` and the
   * body's `error.code` (errors.js httpError). With `retries`, a request that got no answer
   * (network error) or a 502/503/504 is sent again, the same request with the same headers:
   * only for one that is safe to repeat, such as a POST with an Idempotency-Key.
   * @param {string} method
   * @param {string} path
   * @param {RequestOptions} [options]
   * @returns {Promise<any>}
   */
  async request(method, path, options = {}) {
    const { signal, label = `${method} ${path}`, retries = 0 } = options;
    for (let attempt = 1; ; attempt++) {
      try {
        return await this._send(method, path, options, label);
      } catch (err) {
        if (attempt > retries || !isTransient(err)) throw err;
        // Doubling, with jitter so clients cut off together do not come back together.
        await pause(RETRY_DELAY * 2 ** (attempt - 1) * (0.5 + Math.random() / 2), signal, label);
      }
    }
  }

  /**
   * @param {string} method
   * @param {string} path
   * @param {RequestOptions} options
   * @param {string} label
   */
  async _send(method, path, { body, signal, headers: extra, runId, stepSlug }, label) {
    /** @type {Record<string, string>} */
    const headers = { accept: "application/json", ...extra };
    if (body !== undefined) headers["content-type"] = "application/json";
    const token = await this.token();
    if (token) headers.authorization = `Bearer ${token}`;
    let res, text;
    try {
      res = await this._fetch(this.url + path, /** @type {RequestInit} */ ({
        method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body),
      }));
      text = await res.text();
    } catch (err) {
      if (signal?.aborted) throw abortReason(signal, label);
      const message = /** @type {{message?: string} | undefined} */ (err)?.message ?? err;
      throw new PGFlowError(`${label}: ${message}`,
        { code: "network_error", cause: err, ...(runId === undefined ? {} : { runId }) });
    }
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      // a proxy's HTML error page, say; the status still tells what happened
    }
    if (!res.ok) throw httpError(label, res.status, data, { runId, stepSlug });
    return data;
  }

  /**
   * The flow's graph, `GET /flows/{slug}` (its newest version) or `?version=N`, fetched once
   * per flow version: a version's shape never changes.
   * @param {string} slug
   * @param {number | null} [version]
   * @returns {Promise<FlowGraph>}
   */
  loadGraph(slug, version = null) {
    const key = version == null ? slug : `${slug}@${version}`;
    const known = this._graphs.get(key);
    if (known) return known;
    const query = version == null ? "" : `?version=${encodeURIComponent(String(version))}`;
    /** @type {Promise<FlowGraph>} */
    const graph = this.request("GET", `/flows/${encodeURIComponent(slug)}${query}`);
    this._graphs.set(key, graph);
    graph.then((g) => {
      // the newest is also its own version
      if (version == null && typeof g?.version === "number" && !this._graphs.has(`${slug}@${g.version}`)) {
        this._graphs.set(`${slug}@${g.version}`, graph);
      }
    }, () => this._graphs.delete(key)); // retry next time rather than cache a failure
    return graph;
  }
}
