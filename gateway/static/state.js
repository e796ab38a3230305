// The live page's state, without the DOM: the flows, the runs this tab follows and the runs
// GET /runs lists, and what the page derives from each run's events. Pure: the views draw from
// it and app.js feeds it; node tests drive it directly (client_js/test/page_state.test.js).
//
// Each followed run is an Entry: the client's FlowRun (status, step states, events) plus the
// page's own bookkeeping (timing for durations, the failing step, a follow error, the questions
// its input steps ask and what this tab answered, the Cancel / Retry under way).

import { applyTiming, isLogRecord, isStreaming, newTiming, RUN_STATUS_LABELS } from "./format.js";
import { Timeline } from "./timeline.js";

export const RECENT_SHOWN = 30; // runs listed, with those started in this tab
export const LOG_LINES = 200; // a step's log lines the details keep: the last ones
export const CONN_LABELS = { idle: "Ready", connecting: "Connecting…", open: "Live", reconnecting: "Reconnecting…", closed: "Closed" };

/**
 * @typedef {object} Entry
 * @property {string} runId
 * @property {any} run the client's FlowRun
 * @property {boolean} local started in this tab
 * @property {string | null} flowSlug
 * @property {string} openedAt ISO time this tab first followed it
 * @property {ReturnType<typeof newTiming>} timing
 * @property {string | null} failedStep the step run:failed names
 * @property {any} problem why the run could not be followed (not_found, forbidden, …), or null
 * @property {boolean} graphFailed its graph could not be loaded
 * @property {Map<string, Prompt>} prompts the input steps' questions, from their step:waiting
 * @property {Map<string, Answer>} answers this tab's answers to them, while they wait
 * @property {Action} action the run's Cancel / Retry: under way, or how the last one went
 * @property {Timeline} timeline the events table's rows, a map's task events folded
 */

/**
 * What an input step asks (its step:waiting event).
 * @typedef {object} Prompt
 * @property {any} schema the JSON Schema the answer must meet
 * @property {unknown} input what the step was given: the run's input and its dependencies' outputs
 * @property {string | null} timeoutAt when it stops waiting (and fails)
 */

/**
 * A person's answer to an input step, as the form shows it.
 * @typedef {object} Answer
 * @property {boolean} busy the POST is under way
 * @property {{path: string, message: string}[]} errors why it was refused (by the page or the server)
 * @property {any} draft what was typed so far (inputform.js's RawValues), null for none yet
 * @property {string | null} message how the last POST went, when not by errors
 */

/**
 * @typedef {object} Action
 * @property {"cancel" | "retry" | null} busy the POST under way
 * @property {string | null} message how the last one went
 * @property {boolean} failed whether that was a refusal or an error
 */

/**
 * @typedef {object} RecentRow
 * @property {string} runId
 * @property {string} flow
 * @property {string} status a run status, or "unknown" for a run that could not be followed
 * @property {string | null} startedAt
 */

export class PageState {
  constructor() {
    /** @type {Map<string, any>} slug -> {slug, description, example_input, steps?, output_step?} */
    this.flows = new Map();
    /** @type {Map<string, string>} slug -> the input text as edited, kept across flow switches */
    this.drafts = new Map();
    /** @type {Map<string, Entry>} run_id -> every run this tab follows or followed */
    this.tracked = new Map();
    /** @type {Map<string, any>} run_id -> summary from GET /runs */
    this.listed = new Map();
    /** @type {Entry | null} the run on display, or null for the selected flow's preview */
    this.current = null;
    this.skew = 0; // ms the gateway's clock is ahead of ours (events cannot come from the future)
  }

  /** The gateway's clock, as far as its events tell. */
  serverNow(now = Date.now()) {
    return now + this.skew;
  }

  /**
   * Starts keeping an Entry for `run`, with the events it applied already.
   * @param {any} run
   * @param {{local?: boolean, flowSlug?: string | null, openedAt?: string}} [options]
   * @returns {Entry}
   */
  track(run, { local = false, flowSlug = null, openedAt = new Date().toISOString() } = {}) {
    /** @type {Entry} */
    const entry = {
      runId: run.runId, run, local, flowSlug: run.flowSlug ?? flowSlug, openedAt,
      timing: newTiming(), failedStep: null, problem: null, graphFailed: false,
      prompts: new Map(), answers: new Map(), action: { busy: null, message: null, failed: false },
      timeline: new Timeline(),
    };
    for (const e of run.events) noteEvent(entry, e);
    this.tracked.set(run.runId, entry);
    return entry;
  }

  /**
   * One live event of `entry`'s run (the FlowRun applied it already).
   * @param {Entry} entry
   * @param {any} e
   */
  apply(entry, e, now = Date.now()) {
    const at = Date.parse(e.at);
    if (Number.isFinite(at)) this.skew = Math.max(this.skew, at - now);
    noteEvent(entry, e);
  }

  /** GET /flows's answer: a list, or {flows: [...]}. */
  setFlows(body) {
    const list = Array.isArray(body) ? body : body?.flows ?? [];
    this.flows.clear();
    for (const f of list) if (f && typeof f.slug === "string") this.flows.set(f.slug, f);
  }

  /** GET /runs's answer: a list, or {runs: [...]}. */
  setListed(body) {
    const list = Array.isArray(body) ? body : body?.runs ?? [];
    this.listed.clear();
    for (const r of list) if (r && typeof r.run_id === "string") this.listed.set(r.run_id, r);
  }

  /**
   * A step's options (max_attempts, base_delay, …): from the open run's graph, or the
   * previewed flow's.
   * @param {string} slug
   * @param {string} selectedFlow the flow picker's value
   */
  stepOptions(slug, selectedFlow) {
    const graph = this.current ? this.current.run.graph : this.flows.get(selectedFlow);
    return graph?.steps?.find((/** @type {any} */ s) => s.slug === slug) ?? null;
  }

  /**
   * The recent runs list: GET /runs's, merged with the runs this tab follows (their live
   * status wins), newest first.
   * @returns {RecentRow[]}
   */
  recentRows(limit = RECENT_SHOWN) {
    /** @type {Map<string, RecentRow>} */
    const rows = new Map();
    for (const r of this.listed.values()) {
      rows.set(r.run_id, { runId: r.run_id, flow: r.flow_slug, status: r.status, startedAt: r.started_at ?? r.created_at ?? null });
    }
    for (const entry of this.tracked.values()) {
      const known = rows.get(entry.runId);
      if (!known && !entry.local && entry !== this.current) continue; // a bad id typed in the URL stays out
      rows.set(entry.runId, {
        runId: entry.runId,
        flow: entry.flowSlug ?? known?.flow ?? "…",
        status: entry.problem ? "unknown" : entry.run.events.length || !known ? entry.run.status : known.status,
        startedAt: entry.run.startedAt ?? known?.startedAt ?? entry.openedAt,
      });
    }
    return [...rows.values()]
      .sort((a, b) => (Date.parse(b.startedAt ?? "") || 0) - (Date.parse(a.startedAt ?? "") || 0))
      .slice(0, limit);
  }
}

/**
 * The page's side of one event: timing and the failing step.
 * @param {Entry} entry
 * @param {any} e
 */
export function noteEvent(entry, e) {
  entry.timeline.add(e);
  // an element of a map step: its step's timing is the step:* events'
  if (e.event?.startsWith("task:")) return;
  applyTiming(entry.timing, e);
  if (e.event === "run:failed") entry.failedStep = e.step_slug;
  if (e.event === "step:waiting" && e.step_slug) {
    entry.prompts.set(e.step_slug, { schema: e.schema ?? {}, input: e.input, timeoutAt: e.timeout_at ?? null });
    entry.answers.delete(e.step_slug); // asked anew (after a retry): answered afresh
  } else if (e.step_slug && /^step:(completed|failed|cancelled)$/.test(e.event)) {
    entry.answers.delete(e.step_slug);
  } else if (e.event === "run:retried") {
    entry.failedStep = null;
  }
}

/**
 * The page's answer record of input step `slug`, made on first use.
 * @param {Entry} entry
 * @param {string} slug
 * @returns {Answer}
 */
export function answerOf(entry, slug) {
  let answer = entry.answers.get(slug);
  if (!answer) entry.answers.set(slug, (answer = { busy: false, errors: [], draft: null, message: null }));
  return answer;
}

/**
 * Which of the run's controls show: Cancel while it runs, Retry once it failed or was cancelled.
 * @param {Entry | null} entry
 */
export function runControls(entry) {
  const status = entry && !entry.problem ? entry.run.status : null;
  return { cancel: status === "started", retry: status === "failed" || status === "cancelled" };
}

/**
 * Whether any step of the run waits for a person's input.
 * @param {Entry} entry
 */
export function needsInput(entry) {
  if (entry.run.status !== "started") return false;
  for (const s of entry.run.steps.values()) if (s.status === "waiting") return true;
  return false;
}

/**
 * What the page says of how a steering call went: `err` null when the gateway took it, else the
 * client's error (its `status`, 0 or none when no answer came).
 * @param {"cancel" | "retry" | "input"} kind
 * @param {any} err
 * @returns {{ok: boolean, text: string}}
 */
export function steerOutcome(kind, err) {
  if (!err) {
    return {
      ok: true,
      text: kind === "cancel" ? "Cancelled: the steps that had not finished were stopped."
        : kind === "retry" ? "Retried: the steps that failed or were cancelled run again."
        : "Answer sent.",
    };
  }
  const status = typeof err.status === "number" ? err.status : 0;
  const said = typeof err.message === "string" && err.message ? err.message : null;
  const text = status === 409
    ? kind === "cancel" ? "The run had already ended: there was nothing to cancel."
      : kind === "retry" ? "Only a failed or cancelled run can be retried; this one is not."
      : "This step was already answered (or no longer waits for input)."
    : status === 400 && kind === "input" ? "The answer does not fit what the step asks: see what is marked above."
    : status === 404 ? `Not found: ${said ?? "no such run or step."}`
    : status === 401 || status === 403 ? `Not allowed: ${said ?? "you may not steer this run."}`
    : status === 0 ? `No answer from the gateway${said ? `: ${said}` : "."}`
    : `The gateway refused it (HTTP ${status})${said ? `: ${said}` : "."}`;
  return { ok: false, text };
}

/**
 * The cancelled card's sentence, with the reason the canceller gave, if any.
 * @param {string | null | undefined} reason
 */
export function cancelledText(reason) {
  return `The run was cancelled${reason ? `: ${reason}` : ""}. Its unfinished steps were stopped; Retry runs them again.`;
}

/**
 * @typedef {object} StepStreamView what a step streamed, as the step details show it
 * @property {number} attempt the attempt the chunks belong to (the client's `streamAttempt`)
 * @property {number} count how many chunks that attempt streamed
 * @property {string} text its string chunks joined (the client's `text`)
 * @property {number} strings how many of the chunks are strings (0: no text to show)
 * @property {LogRecord[]} logs its log records (chunks of a flow with `stream_logs`), in
 *   order: the last LOG_LINES of them
 * @property {number} logCount how many log records it streamed, those no longer kept included
 * @property {boolean} hasValue whether any chunk is neither a string nor a log record
 * @property {unknown} value the latest such chunk (a progress object, say)
 * @property {boolean} live the attempt is running and streaming (isStreaming)
 * @property {boolean} superseded a later attempt started and has not streamed yet: these are
 *   the failed attempt's chunks, kept until the retry's first one replaces them
 */

/** @typedef {{level: string, logger: string, message: string}} LogRecord */

// Per chunks array: how far it was read, and what was found. The client appends an attempt's
// chunks to one array and starts a new one for a new attempt, so a long stream is read once.
/**
 * @type {WeakMap<object, {read: number, strings: number, logs: LogRecord[], logCount: number,
 *   hasValue: boolean, value: unknown}>}
 */
const scanned = new WeakMap();

/**
 * What a step streamed (`step:stream`), from the client's step state; null before any chunk.
 * @param {any} step `run.step(slug)`, or a step of `run.snapshot()`
 * @returns {StepStreamView | null}
 */
export function stepStream(step) {
  const chunks = step?.chunks;
  if (step?.streamAttempt == null || !Array.isArray(chunks) || chunks.length === 0) return null;
  let seen = scanned.get(chunks);
  if (!seen) {
    seen = { read: 0, strings: 0, logs: [], logCount: 0, hasValue: false, value: undefined };
    scanned.set(chunks, seen);
  }
  for (; seen.read < chunks.length; seen.read++) {
    const chunk = chunks[seen.read];
    if (typeof chunk === "string") {
      seen.strings++;
    } else if (isLogRecord(chunk)) {
      seen.logs.push(chunk);
      seen.logCount++;
      // trimmed now and then, not on each record: a chatty step's log stays cheap to keep
      if (seen.logs.length >= 2 * LOG_LINES) seen.logs.splice(0, seen.logs.length - LOG_LINES);
    } else {
      Object.assign(seen, { hasValue: true, value: chunk });
    }
  }
  return {
    attempt: step.streamAttempt,
    count: chunks.length,
    text: typeof step.text === "string" ? step.text : "",
    strings: seen.strings,
    logs: seen.logs.slice(-LOG_LINES), // a copy: the view stays as it was when taken
    logCount: seen.logCount,
    hasValue: seen.hasValue,
    value: seen.value,
    live: isStreaming(step),
    superseded: step.attempt != null && step.attempt > step.streamAttempt,
  };
}

/**
 * The input editor's text as a flow input: empty is `{}`.
 * @param {string} text
 * @returns {{ok: true, value: unknown} | {ok: false, message: string}}
 */
export function parseInput(text) {
  const trimmed = text.trim();
  if (trimmed === "") return { ok: true, value: {} };
  try {
    return { ok: true, value: JSON.parse(trimmed) };
  } catch (err) {
    return { ok: false, message: `Not valid JSON: ${/** @type {Error} */ (err).message}` };
  }
}

/**
 * What a screen reader hears for an event of the open run, or null for none.
 * @param {Entry} entry
 * @param {any} e
 */
export function announcement(entry, e) {
  const flow = entry.flowSlug ?? "the run";
  if (e.event === "run:completed") return `Run of ${flow} completed.`;
  if (e.event === "run:cancelled") return `Run of ${flow} was cancelled${e.reason ? `: ${e.reason}` : "."}`;
  if (e.event === "run:retried") return `Run of ${flow} is running again.`;
  if (e.event === "step:waiting") return `Step ${e.step_slug} is waiting for your input.`;
  if (e.event === "run:failed") return `Run of ${flow} failed at step ${e.step_slug}: ${e.error}`;
  if (e.event === "step:retrying") return `Step ${e.step_slug} failed attempt ${e.attempt}, waiting to retry.`;
  if (e.event === "step:started" && e.attempt > 1) return `Step ${e.step_slug} is running attempt ${e.attempt}.`;
  if (e.event === "step:stream" && e.step_slug && Array.isArray(e.chunks) && e.chunks.length > 0) {
    // once per attempt: when this event brought the attempt's first chunks
    const step = entry.run?.step(e.step_slug);
    if (step && step.streamAttempt === (e.attempt ?? step.attempt) && step.chunks.length === e.chunks.length) {
      return `Step ${e.step_slug} is streaming${e.attempt > 1 ? ` attempt ${e.attempt}` : ""}.`;
    }
  }
  return null;
}

/**
 * Why a run could not be followed, for the run view.
 * @param {{code?: string, message?: string}} err
 */
export function problemText(err) {
  return err.code === "not_found" ? "No run has this id (or it is not visible to you)."
    : err.code === "forbidden" ? "You may not see this run."
    : err.code === "bad_request" ? "This is not a valid run id."
    : `The run could not be followed: ${err.message}`;
}

/** @param {string} status */
export function runStatusLabel(status) {
  return RUN_STATUS_LABELS[/** @type {keyof typeof RUN_STATUS_LABELS} */ (status)] ?? status;
}

/**
 * The tab's title for the open run, or for the preview (null).
 * @param {Entry | null} entry
 */
export function documentTitle(entry) {
  if (!entry) return "PGFlow — live runs";
  return `${entry.flowSlug ?? "Run"} · ${runStatusLabel(entry.run.status).toLowerCase()} — PGFlow`;
}

/**
 * The timeline's event count, "3 events".
 * @param {number} count
 */
export function eventCount(count) {
  return count ? `${count} event${count === 1 ? "" : "s"}` : "";
}

/**
 * The failure card's sentence after the step's name.
 * @param {number | null} attempts the failing step's last attempt
 */
export function failureTail(attempts) {
  return ` failed${attempts ? ` after ${attempts} attempt${attempts === 1 ? "" : "s"}` : ""}; the steps after it were cancelled.`;
}
