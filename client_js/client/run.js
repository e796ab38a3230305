// FlowRun: one run's state, built only from its events. Applying an event does no I/O; the
// client routes events here and asks the run's host (the client) for HTTP, for release, and to
// follow it again after a retry.

import { deadline, race } from "./deadline.js";
import { FlowCancelledError, FlowFailedError, PGFlowError, reportListenerError } from "./errors.js";
import { stepChunks } from "./stream.js";
import { NO_TASK_ERRORS, TaskBoard } from "./tasks.js";

// Losses of the socket in a row, with the same cause, while a run was behind and got no event
// further: then the run fails (a frame this client cannot take would otherwise replay forever).
export const STALL_LIMIT = 5;

const RUN_TERMINAL_STATUSES = new Set(["completed", "failed", "cancelled"]);
const STEP_STATUSES = new Set(["created", "started", "retrying", "waiting", "completed", "failed", "cancelled"]);
const STEP_FINAL_STATUSES = new Set(["completed", "failed", "cancelled"]);
// Run events that may change any step's state.
const RUN_WIDE_EVENTS = new Set(["run:failed", "run:cancelled", "run:retried"]);

/** @typedef {import("../client.js").FlowEvent} FlowEvent */
/** @typedef {import("../client.js").FlowGraph} FlowGraph */
/** @typedef {{-readonly [K in keyof import("../client.js").StepState]: import("../client.js").StepState[K]}} StepState */
/** @typedef {import("../client.js").RunSnapshot} RunSnapshot */
/** @typedef {import("../client.js").StepStream<unknown>} StepStream */
/** @typedef {import("../client.js").StepKind} StepKind */

const STEP_KINDS = new Set(["task", "input", "map", "http"]);

/**
 * A step's kind as its graph entry gives it: `task` when it gives none (an older gateway) or one
 * this client does not know.
 * @param {FlowGraph | null} graph
 * @param {string | null} slug
 * @returns {StepKind}
 */
function kindIn(graph, slug) {
  const kind = graph?.steps?.find((s) => s.slug === slug)?.kind;
  return typeof kind === "string" && STEP_KINDS.has(kind) ? /** @type {StepKind} */ (kind) : "task";
}

/**
 * What a run needs from the client that follows it.
 * @typedef {object} RunHost
 * @property {(method: string, path: string, options?: import("./http.js").RequestOptions) => Promise<any>} request
 * @property {(slug: string, version?: number | null) => Promise<FlowGraph>} loadGraph cached per client and flow version
 * @property {(run: FlowRun, options: {unsubscribe: boolean}) => void} release stop routing its events
 * @property {(run: FlowRun) => void} follow route its events again (after retry), resuming from lastSeq
 */

/**
 * @param {string | null} slug
 * @param {StepKind} [kind]
 * @returns {StepState}
 */
function newStepState(slug, kind = /** @type {StepKind} */ ("task")) {
  return {
    slug: /** @type {string} */ (slug), kind, status: "created", output: null, error: null, attempt: null,
    startedAt: null, completedAt: null, failedAt: null, chunks: [], text: "", streamAttempt: null,
    schema: null, input: null, timeoutAt: null,
    tasks: null, tasksCompleted: 0, tasksFailed: 0, tasksRetrying: 0, taskErrors: NO_TASK_ERRORS,
  };
}

/** A run followed by a client. Created by `client.startFlow()` / `client.getRun()`, not directly. */
export class FlowRun {
  /**
   * @param {RunHost} host
   * @param {string} runId
   * @param {string | null | undefined} flowSlug
   * @param {unknown} [input]
   * @param {number | null} [flowVersion]
   */
  constructor(host, runId, flowSlug, input, flowVersion = null) {
    this.runId = runId;
    this.flowSlug = flowSlug ?? null;
    /** The version of its flow the run is on; null until the start's answer or the snapshot. */
    this.flowVersion = flowVersion;
    this.input = input;
    /** @type {"started" | "completed" | "failed" | "cancelled"} */
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
    /** @type {string | null} */
    this.cancelledAt = null;
    /** @type {string | null} */
    this.cancelReason = null;
    this.lastSeq = 0;
    /** @type {FlowEvent[]} */
    this.events = [];
    this._host = host;
    /** @type {FlowGraph | null} */
    this._graph = null;
    /** @type {Map<string, StepState>} */
    this._steps = new Map();
    /** @type {Map<string, TaskBoard>} map step -> where each of its elements is */
    this._tasks = new Map();
    this._retries = 0; // subscription attempts refused as `unavailable`
    this._replayTo = 0; // the seq `subscribed` announced on the current socket
    this._stalls = 0; // consecutive socket losses while behind, without progress
    this._stallSeq = 0; // lastSeq at the first of them
    this._stallCause = ""; // "close <code>[: <reason>]" of the first of them
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this._retryTimer = undefined;
    /** @type {Map<string, Set<(event: FlowEvent) => void>>} */
    this._listeners = new Map();
    /** @type {Set<() => void>} subscribe()'s listeners, told of every change */
    this._subscribers = new Set();
    /** @type {RunSnapshot | null} null once the state changed: snapshot() rebuilds it lazily */
    this._snapshot = null;
    /** @type {Map<string, StepState>} frozen step snapshots still current, so an unchanged step keeps its identity */
    this._stepSnapshots = new Map();
    /** @type {import("../client.js").PGFlowError | null} why the client stopped following the run before it ended */
    this._followError = null;
    // Bound, so React's useSyncExternalStore(run.subscribe, run.snapshot) takes them as they are.
    this.subscribe = this.subscribe.bind(this);
    this.snapshot = this.snapshot.bind(this);
    // Settled by run:completed / run:failed / run:cancelled, or by a client-side failure
    // (refused subscription, close 1008, client closed, detach); retry() unsettles it.
    this._settled = false;
    /** @type {FlowEvent | null} the run:failed / run:cancelled that ended the run, for its error */
    this._endEvent = null;
    /** @type {(value: unknown) => void} */
    this._resolve = () => {};
    /** @type {(reason: unknown) => void} */
    this._reject = () => {};
    /** @type {Promise<unknown>} */
    this._result = this._newResult();
  }

  /** A fresh promise for result() to wait on. */
  _newResult() {
    /** @type {Promise<unknown>} */
    const result = new Promise((resolve, reject) => {
      this._resolve = resolve;
      this._reject = reject;
    });
    result.catch(() => {}); // a run nobody awaits must not raise "unhandled rejection"
    return result;
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
      state = newStepState(slug, kindIn(this._graph, slug));
      if (this.status === "failed" || this.status === "cancelled") state.status = "cancelled";
      this._steps.set(slug, state);
    }
    return state;
  }

  /**
   * Where element `index` of map step `slug` is: "pending" (queued, or running its first
   * attempt), "started" (a retry running), "retrying", "completed" or "failed"; null for a step
   * that is no map or an index it has not heard of.
   * @param {string} slug
   * @param {number} index
   */
  taskStatus(slug, index) {
    return this._tasks.get(slug)?.status(index) ?? null;
  }

  /**
   * The elements of map step `slug`, made on first use.
   * @param {string} slug
   */
  _board(slug) {
    let board = this._tasks.get(slug);
    if (!board) this._tasks.set(slug, (board = new TaskBoard()));
    return board;
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
   * The chunks step `slug` streams (`step:stream`): those received so far, then each one as it
   * arrives, a retry's included, until the step or the run ends or the client stops following
   * the run. Leaving the loop early removes its listener.
   * @param {string} slug
   * @returns {StepStream}
   */
  stream(slug) {
    return stepChunks(this, slug);
  }

  /**
   * Call `listener` (without arguments) after each change of the run's state; returns the
   * unsubscribe function. With snapshot(), a store any UI framework can read.
   * @param {() => void} listener
   */
  subscribe(listener) {
    if (typeof listener !== "function") throw new TypeError(`run ${this.runId}: listener must be a function`);
    const entry = () => listener(); // its own entry: the same function subscribed twice is called twice
    this._subscribers.add(entry);
    return () => {
      this._subscribers.delete(entry);
    };
  }

  /**
   * The run's state as a frozen plain object, the same object until the state changes.
   * @returns {RunSnapshot}
   */
  snapshot() {
    if (this._snapshot) return this._snapshot;
    /** @type {[string, StepState][]} */
    const steps = [];
    for (const [slug, step] of this._steps) {
      let snap = this._stepSnapshots.get(slug);
      if (!snap) {
        snap = Object.freeze({ ...step, chunks: Object.freeze(step.chunks.slice()) });
        this._stepSnapshots.set(slug, snap);
      }
      steps.push([slug, snap]);
    }
    return (this._snapshot = Object.freeze({
      runId: this.runId,
      flowSlug: this.flowSlug,
      status: this.status,
      output: this.output,
      error: this.error,
      startedAt: this.startedAt,
      completedAt: this.completedAt,
      failedAt: this.failedAt,
      cancelledAt: this.cancelledAt,
      cancelReason: this.cancelReason,
      lastSeq: this.lastSeq,
      graph: this._graph,
      // fromEntries, not assignment: a step named "__proto__" stays a step
      steps: Object.freeze(Object.fromEntries(steps)),
      followError: this._followError,
    }));
  }

  /**
   * The run's output; rejects with FlowFailedError on run:failed, FlowCancelledError on
   * run:cancelled. After retry(), a new call waits for the retried run's outcome.
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
    // Run statuses only go started -> completed | failed | cancelled (until a retry), and every
    // terminal move settles _result, so the wait derives from it without listening to events.
    const reached = status === "started"
      ? Promise.resolve(this)
      : this._result.then(
        () => {
          if (status === "completed") return this;
          throw new PGFlowError(`run ${this.runId} completed, so it will never be ${status}`,
            { code: "status_unreachable", runId: this.runId });
        },
        (err) => {
          if (status !== "completed" && this.status === status) return this;
          throw err;
        },
      );
    return race(reached, { signal, timeout }, `run ${this.runId}`);
  }

  /**
   * Fetch the graph of the run's version of its flow (cached per client and flow version); also
   * sets `run.graph`.
   * @param {{signal?: AbortSignal | undefined}} [options]
   */
  async loadGraph({ signal } = {}) {
    if (this._graph) return this._graph;
    if (!this.flowSlug || this.flowVersion == null) {
      // Attached by run id: the events carry neither the flow nor its version, the snapshot does.
      const snapshot = await this._host.request("GET", `/runs/${encodeURIComponent(this.runId)}`, { signal, runId: this.runId });
      this.flowSlug = snapshot.flow_slug;
      this.flowVersion = typeof snapshot.version === "number" ? snapshot.version : null;
    }
    this._setGraph(await race(this._host.loadGraph(/** @type {string} */ (this.flowSlug), this.flowVersion), { signal }, `run ${this.runId}`));
    return this._graph;
  }

  /**
   * Cancel the run (`POST /runs/{id}/cancel`): resolves with the gateway's answer once the engine
   * cancelled it; its run:cancelled event follows and rejects result() with FlowCancelledError.
   * A run that already ended rejects with a PGFlowError, status 409, code `conflict`.
   * @param {string | null} [reason] kept with the run, and carried by run:cancelled
   * @param {{signal?: AbortSignal | undefined, timeout?: number | undefined}} [options]
   * @returns {Promise<{run_id: string, status: "cancelled"}>}
   */
  async cancel(reason, options) {
    if (reason != null && typeof reason !== "string") {
      throw new TypeError(`run ${this.runId}: cancel reason must be a string, got ${typeof reason}`);
    }
    return this._post("cancel", "/cancel", reason == null ? {} : { reason }, options);
  }

  /**
   * Give input step `stepSlug`, waiting for a person, its value (`POST
   * /runs/{id}/steps/{slug}/input`); the step then completes with it as its output. A value the
   * step's schema refuses rejects with InputRejectedError (`errors`); a step not waiting with
   * status 409 `conflict`; an unknown step with 404 `not_found`.
   * @param {string} stepSlug
   * @param {unknown} value any JSON value (null included)
   * @param {{signal?: AbortSignal | undefined, timeout?: number | undefined}} [options]
   * @returns {Promise<{run_id: string, step_slug: string, status: "completed"}>}
   */
  async submit(stepSlug, value, options) {
    if (typeof stepSlug !== "string" || !stepSlug) {
      throw new TypeError(`run ${this.runId}: submit needs a step slug, got ${JSON.stringify(stepSlug)}`);
    }
    // JSON has no undefined: {"value": undefined} would go out as {} and be refused as missing.
    if (value === undefined) throw new TypeError(`run ${this.runId}: submit(${JSON.stringify(stepSlug)}) needs a value (null is one)`);
    return this._post(`submit(${JSON.stringify(stepSlug)})`, `/steps/${encodeURIComponent(stepSlug)}/input`,
      { value }, options, stepSlug);
  }

  /**
   * Run a failed or cancelled run again from where it stopped (`POST /runs/{id}/retry`): the
   * engine re-queues the steps that failed or were cancelled, completed ones keep their output.
   * Once the gateway accepted, this run is followed again and a new result() call waits for the
   * new outcome (one made before stays rejected: that outcome happened). Any other run rejects
   * with status 409 `conflict`.
   * @param {{signal?: AbortSignal | undefined, timeout?: number | undefined}} [options]
   * @returns {Promise<{run_id: string, status: "started"}>}
   */
  async retry(options) {
    const answer = await this._post("retry", "/retry", undefined, options);
    if (this._settled) {
      this._settled = false;
      this._followError = null;
      this._endEvent = null;
      this._result = this._newResult();
      this._changed();
    }
    // Resubscribes since lastSeq: run:retried and what follows arrive as usual.
    this._host.follow(this);
    return answer;
  }

  /**
   * @param {string} what the call, for error messages
   * @param {string} path under /runs/{id}
   * @param {unknown} body
   * @param {{signal?: AbortSignal | undefined, timeout?: number | undefined}} [options]
   * @param {string} [stepSlug]
   */
  async _post(what, path, body, { signal, timeout } = {}, stepSlug) {
    const label = `run ${this.runId}: ${what}`;
    const d = deadline(signal, timeout, label);
    try {
      // Never resent on a network error: a repeat of one that did get through would answer 409.
      return await this._host.request("POST", `/runs/${encodeURIComponent(this.runId)}${path}`,
        { body, signal: d.signal, label, runId: this.runId, stepSlug });
    } finally {
      d.dispose();
    }
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
    for (const s of graph?.steps ?? []) {
      const step = this.step(s.slug);
      const kind = kindIn(graph, s.slug);
      // a map step known from its step:started's `tasks` before the graph came stays one
      if (kind !== "task" || step.kind !== "map") step.kind = kind;
    }
    this._stepSnapshots.clear();
    this._changed();
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
        // A map step's says how many elements it runs (`tasks`): each one a task of its own.
        if (typeof event.tasks === "number") step.kind = "map";
        if (step.kind === "map" && event.step_slug) this._board(event.step_slug).start(step, event.tasks);
        break;
      case "task:started":
      case "task:retrying":
      case "task:completed":
      case "task:failed":
        // An element of a map step moved: its counts do. Never the step's own status, which
        // only step:* events set (a failed element's step:failed follows it).
        if (event.step_slug) this._board(event.step_slug).apply(step, event);
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
      case "step:waiting":
        // An input step whose dependencies completed: it waits for submit() until timeout_at.
        Object.assign(step, {
          status: status("waiting"), attempt, startedAt: event.at,
          schema: event.schema ?? null, input: event.input ?? null, timeoutAt: event.timeout_at ?? null,
        });
        break;
      case "step:cancelled":
        Object.assign(step, { status: status("cancelled"), attempt });
        break;
      case "step:stream": {
        // The chunks are one attempt's: a retry's stream replaces the failed attempt's. Status
        // and attempt stay: the attempt's step:started set them.
        if (attempt !== step.streamAttempt) Object.assign(step, { chunks: [], text: "", streamAttempt: attempt });
        const chunks = /** @type {unknown[]} */ (step.chunks);
        for (const chunk of Array.isArray(event.chunks) ? event.chunks : []) {
          chunks.push(chunk);
          if (typeof chunk === "string") step.text += chunk;
        }
        break;
      }
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
        this._endEvent = event;
        break;
      case "run:cancelled":
        Object.assign(this, { status: "cancelled", cancelledAt: event.at, cancelReason: event.reason ?? null });
        // Each unfinished step had its step:cancelled first; a step known only from the graph too.
        for (const s of this._steps.values()) if (!STEP_FINAL_STATUSES.has(s.status)) s.status = "cancelled";
        this._endEvent = event;
        break;
      case "run:retried":
        Object.assign(this, {
          status: "started", error: null, failedAt: null, cancelledAt: null, cancelReason: null,
        });
        this._endEvent = null;
        // The engine re-queues every step that failed or was cancelled; those whose dependencies
        // are done get their step:started / step:waiting next, the others just wait again.
        for (const s of this._steps.values()) {
          if (s.status !== "failed" && s.status !== "cancelled") continue;
          s.status = "created";
          // a re-queued map step runs again the elements that did not complete
          this._tasks.get(s.slug)?.rewind(s);
        }
        break;
      default:
        break; // a newer gateway's event: kept in `events` and emitted, no state to change
    }
    // Stale from here, before any listener can read it. Of the steps only the one the event names
    // changed, except that run:failed / run:cancelled / run:retried may change any of them.
    this._snapshot = null;
    if (RUN_WIDE_EVENTS.has(event.event)) this._stepSnapshots.clear();
    else this._stepSnapshots.delete(event.step_slug);
    this._emit(event);
    // An ended run settles result(), unless `subscribed` announced later events: replaying a run
    // that was retried, whose run:failed / run:cancelled is followed by run:retried.
    if (this._terminal && this.lastSeq >= this._replayTo) {
      const end = /** @type {any} */ (this._endEvent);
      if (this.status === "completed") this._settle(() => this._resolve(this.output));
      else if (this.status === "failed") this._settle(() => this._reject(new FlowFailedError(end)));
      else this._settle(() => this._reject(new FlowCancelledError(end)));
    }
    this._changed();
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

  /** @param {unknown} err a PGFlowError, from every caller */
  _fail(err) {
    if (this._settled) return;
    this._followError = /** @type {import("../client.js").PGFlowError} */ (err);
    this._settle(() => this._reject(err));
    this._changed();
  }

  /** The state changed: drop the snapshot and tell subscribe()'s listeners. */
  _changed() {
    this._snapshot = null;
    for (const fn of [...this._subscribers]) {
      if (!this._subscribers.has(fn)) continue; // unsubscribed by a listener before it this round
      try {
        fn();
      } catch (err) {
        reportListenerError(err);
      }
    }
  }

  /** @param {() => void} fn */
  _settle(fn) {
    if (this._settled) return;
    this._settled = true;
    fn();
  }
}
