// FlowRun: one run's state, built only from its events. Applying an event does no I/O; the
// client routes events here and asks the run's host (the client) for HTTP and for release.

import { race } from "./deadline.js";
import { FlowFailedError, PGFlowError, reportListenerError } from "./errors.js";

// Losses of the socket in a row, with the same cause, while a run was behind and got no event
// further: then the run fails (a frame this client cannot take would otherwise replay forever).
export const STALL_LIMIT = 5;

const RUN_TERMINAL_STATUSES = new Set(["completed", "failed"]);
const STEP_STATUSES = new Set(["created", "started", "retrying", "completed", "failed", "cancelled"]);
const STEP_FINAL_STATUSES = new Set(["completed", "failed", "cancelled"]);

/** @typedef {import("../client.js").FlowEvent} FlowEvent */
/** @typedef {import("../client.js").FlowGraph} FlowGraph */
/** @typedef {{-readonly [K in keyof import("../client.js").StepState]: import("../client.js").StepState[K]}} StepState */

/**
 * What a run needs from the client that follows it.
 * @typedef {object} RunHost
 * @property {(method: string, path: string, body?: unknown, signal?: AbortSignal) => Promise<any>} request
 * @property {(slug: string) => Promise<FlowGraph>} loadGraph cached per client and flow
 * @property {(run: FlowRun, options: {unsubscribe: boolean}) => void} release stop routing its events
 */

/**
 * @param {string | null} slug
 * @returns {StepState}
 */
function newStepState(slug) {
  return {
    slug: /** @type {string} */ (slug), status: "created", output: null, error: null, attempt: null,
    startedAt: null, completedAt: null, failedAt: null,
  };
}

/** A run followed by a client. Created by `client.startFlow()` / `client.getRun()`, not directly. */
export class FlowRun {
  /**
   * @param {RunHost} host
   * @param {string} runId
   * @param {string | null | undefined} flowSlug
   * @param {unknown} [input]
   */
  constructor(host, runId, flowSlug, input) {
    this.runId = runId;
    this.flowSlug = flowSlug ?? null;
    this.input = input;
    /** @type {"started" | "completed" | "failed"} */
    this.status = "started";
    /** @type {unknown} */
    this.output = null;
    /** @type {string | null} */
    this.error = null;
    /** @type {string | null} */
    this.startedAt = null;
    /** @type {string | null} */
    this.completedAt = null;
    /** @type {string | null} */
    this.failedAt = null;
    this.lastSeq = 0;
    /** @type {FlowEvent[]} */
    this.events = [];
    this._host = host;
    /** @type {FlowGraph | null} */
    this._graph = null;
    /** @type {Map<string, StepState>} */
    this._steps = new Map();
    this._retries = 0; // subscription attempts refused as `unavailable`
    this._replayTo = 0; // the seq `subscribed` announced on the current socket
    this._stalls = 0; // consecutive socket losses while behind, without progress
    this._stallSeq = 0; // lastSeq at the first of them
    this._stallCause = ""; // "close <code>[: <reason>]" of the first of them
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this._retryTimer = undefined;
    /** @type {Map<string, Set<(event: FlowEvent) => void>>} */
    this._listeners = new Map();
    // Settled by run:completed / run:failed, or by a client-side failure (refused
    // subscription, close 1008, client closed, detach).
    this._settled = false;
    /** @type {(value: unknown) => void} */
    this._resolve = () => {};
    /** @type {(reason: unknown) => void} */
    this._reject = () => {};
    /** @type {Promise<unknown>} */
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

  /**
   * Live state of one step; the same object is updated in place as events arrive.
   * @param {string} slug
   */
  step(slug) {
    let state = this._steps.get(slug);
    if (!state) {
      state = newStepState(slug);
      if (this.status === "failed") state.status = "cancelled";
      this._steps.set(slug, state);
    }
    return state;
  }

  /**
   * Subscribe to one event name, or "*" for all; returns the unsubscribe function.
   * @param {string} event
   * @param {(event: FlowEvent) => void} fn
   */
  on(event, fn) {
    if (typeof fn !== "function") throw new TypeError(`run ${this.runId}: listener must be a function`);
    let set = this._listeners.get(event);
    if (!set) this._listeners.set(event, (set = new Set()));
    set.add(fn);
    return () => set.delete(fn);
  }

  /**
   * The run's output; rejects with FlowFailedError on run:failed.
   * @param {{signal?: AbortSignal | undefined, timeout?: number | undefined}} [options]
   */
  result({ signal, timeout } = {}) {
    return race(this._result, { signal, timeout }, `run ${this.runId}`);
  }

  /**
   * Resolves with this run once `status` is reached; rejects if it can no longer be.
   * @param {string} status
   * @param {{signal?: AbortSignal | undefined, timeout?: number | undefined}} [options]
   * @returns {Promise<FlowRun>}
   */
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

  /**
   * Fetch the flow's graph (cached per client and flow); also sets `run.graph`.
   * @param {{signal?: AbortSignal | undefined}} [options]
   */
  async loadGraph({ signal } = {}) {
    if (this._graph) return this._graph;
    if (!this.flowSlug) {
      // Attached by run id alone: the events do not carry the flow, the snapshot does.
      const snapshot = await this._host.request("GET", `/runs/${encodeURIComponent(this.runId)}`, undefined, signal);
      this.flowSlug = snapshot.flow_slug;
    }
    this._setGraph(await race(this._host.loadGraph(/** @type {string} */ (this.flowSlug)), { signal }, `run ${this.runId}`));
    return this._graph;
  }

  /** Stop following this run (it goes on in the server); a pending result() rejects. */
  detach() {
    this._host.release(this, { unsubscribe: true });
    this._fail(new PGFlowError(`run ${this.runId}: detached before it finished`,
      { code: "detached", runId: this.runId }));
  }

  /** @param {FlowGraph | null} graph */
  _setGraph(graph) {
    this._graph = graph;
    for (const s of graph?.steps ?? []) this.step(s.slug);
  }

  /**
   * Apply one event; false when it was already seen or the run is over. Pure: no I/O.
   * @param {any} event
   */
  _apply(event) {
    if (!(event.seq > this.lastSeq) || this._settled) return false;
    this.lastSeq = event.seq;
    this.events.push(event);
    // A step event without a step slug is malformed; updating a throwaway state keeps
    // the switch simple and the run's real steps untouched.
    const step = event.step_slug ? this.step(event.step_slug) : newStepState(null);
    // A step event's own `status` wins; the event name gives it for an event without one.
    /** @param {StepState["status"]} byName */
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
        // docs/reference/events.md: cancelled steps get no event of their own; run:failed implies it.
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

  /**
   * The socket was lost for `cause` ("close <code>[: <reason>]"): true once this run has been
   * behind what its `subscribed` announced, with no event applied in between and the same
   * cause, STALL_LIMIT times in a row. It is then stuck on a frame it cannot take (too large
   * for this WebSocket, say) and should fail rather than replay that frame forever.
   * @param {string} cause
   */
  _stalledBy(cause) {
    const behind = this._replayTo > this.lastSeq;
    this._replayTo = 0;
    if (!behind) {
      this._stalls = 0;
      return false;
    }
    if (this._stalls > 0 && this._stallSeq === this.lastSeq && this._stallCause === cause) this._stalls += 1;
    else Object.assign(this, { _stalls: 1, _stallSeq: this.lastSeq, _stallCause: cause });
    return this._stalls >= STALL_LIMIT;
  }

  /** @param {FlowEvent} event */
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

  /** @param {unknown} err */
  _fail(err) {
    this._settle(() => this._reject(err));
  }

  /** @param {() => void} fn */
  _settle(fn) {
    if (this._settled) return;
    this._settled = true;
    fn();
  }
}
