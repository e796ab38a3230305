// The client's HTTP side: JSON requests to the gateway, with the token, and the graph cache.

import { abortReason } from "./deadline.js";
import { PGFlowError } from "./errors.js";

/** @typedef {import("../client.js").TokenSource} TokenSource */
/** @typedef {import("../client.js").FlowGraph} FlowGraph */

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
    /** @type {Map<string, Promise<FlowGraph>>} flow slug -> graph */
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
   * body's `error.code`.
   * @param {string} method
   * @param {string} path
   * @param {unknown} [body]
   * @param {AbortSignal} [signal]
   * @param {string} [label] what error messages name
   * @returns {Promise<any>}
   */
  async request(method, path, body, signal, label = `${method} ${path}`) {
    /** @type {Record<string, string>} */
    const headers = { accept: "application/json" };
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
      throw new PGFlowError(`${label}: ${message}`, { code: "network_error", cause: err });
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

  /**
   * The flow's graph, `GET /flows/{slug}`, fetched once per flow.
   * @param {string} slug
   * @returns {Promise<FlowGraph>}
   */
  loadGraph(slug) {
    let graph = this._graphs.get(slug);
    if (!graph) {
      graph = this.request("GET", `/flows/${encodeURIComponent(slug)}`);
      this._graphs.set(slug, graph);
      graph.catch(() => this._graphs.delete(slug)); // retry next time rather than cache a failure
    }
    return graph;
  }
}
