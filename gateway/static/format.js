// Small pure helpers for the live page: durations, times, JSON previews, step looks.

export const STATUS_LABELS = {
  created: "waiting",
  started: "running",
  retrying: "waiting to retry", // the backoff; the retry itself runs as `started`, attempt 2+
  waiting: "waiting for input", // an input step: a person answers it (POST .../input)
  completed: "completed",
  failed: "failed",
  cancelled: "cancelled",
};

export const RUN_STATUS_LABELS = { started: "Running", completed: "Completed", failed: "Failed", cancelled: "Cancelled" };

/** "420 ms", "3.2 s", "1 min 05 s", "2 h 03 min". */
export function formatDuration(ms) {
  if (!Number.isFinite(ms) || ms < 0) ms = 0;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(ms < 10_000 ? 1 : 0)} s`;
  const s = Math.floor(ms / 1000);
  if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
  return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")} min`;
}

/** "+1.234 s" from the run's first event. */
export function formatOffset(ms) {
  if (!Number.isFinite(ms)) return "";
  const sign = ms < 0 ? "−" : "+";
  ms = Math.abs(ms);
  if (ms < 60_000) return `${sign}${(ms / 1000).toFixed(3)} s`;
  return `${sign}${Math.floor(ms / 60_000)}:${((ms % 60_000) / 1000).toFixed(1).padStart(4, "0")}`;
}

export function formatClock(iso) {
  const t = Date.parse(iso);
  if (!Number.isFinite(t)) return "—";
  const d = new Date(t);
  const sameDay = d.toDateString() === new Date().toDateString();
  const time = d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  return sameDay ? time : `${d.toLocaleDateString(undefined, { month: "short", day: "numeric" })} ${time}`;
}

export function formatAgo(iso, now = Date.now()) {
  const t = Date.parse(iso);
  if (!Number.isFinite(t)) return "";
  const s = Math.max(0, Math.round((now - t) / 1000));
  if (s < 5) return "just now";
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return new Date(t).toLocaleDateString(undefined, { month: "short", day: "numeric" });
}

export function prettyJson(value) {
  try {
    return JSON.stringify(value, null, 2) ?? "null";
  } catch {
    return String(value);
  }
}

/** One line of JSON, cut to `max` characters. */
export function jsonPreview(value, max = 80) {
  let text;
  try {
    text = JSON.stringify(value) ?? "null";
  } catch {
    text = String(value);
  }
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

/** "1 chunk", "42 chunks". */
export function chunkCount(n) {
  return `${n} chunk${n === 1 ? "" : "s"}`;
}

/**
 * Whether a chunk is a log record a flow with `stream_logs` forwards: `{level, logger,
 * message}`, all strings.
 * @param {unknown} chunk
 * @returns {chunk is {level: string, logger: string, message: string}}
 */
export function isLogRecord(chunk) {
  if (chunk === null || typeof chunk !== "object" || Array.isArray(chunk)) return false;
  const { level, logger, message } = /** @type {Record<string, unknown>} */ (chunk);
  return typeof level === "string" && typeof logger === "string" && typeof message === "string";
}

/** "1 log line", "2 log lines". */
export function logLineCount(n) {
  return `${n} log line${n === 1 ? "" : "s"}`;
}

/**
 * Whether a step (the client's step state) is streaming: its running attempt has streamed
 * chunks (`step:stream`) and has not ended. A retry that has not streamed yet is only running,
 * even though `chunks` still hold the failed attempt's.
 */
export function isStreaming(state) {
  return state?.status === "started" && state.streamAttempt != null && state.streamAttempt === state.attempt
    && (state.chunks?.length ?? 0) > 0;
}

/**
 * A step:stream event's one-line summary for the timeline: `3 chunks · "Once upon a"`, the
 * string chunks joined (quoted); `2 log lines · INFO: planning …`, the first record, when all
 * are log records; else the chunks as JSON.
 */
export function streamSummary(chunks, max = 80) {
  const list = Array.isArray(chunks) ? chunks : [];
  const head = chunkCount(list.length);
  if (list.length === 0) return head;
  if (list.every(isLogRecord)) {
    // whitespace collapsed: a multi-line message (a traceback) reads on one line
    const first = `${list[0].level}: ${list[0].message.replace(/\s+/g, " ").trim()}`;
    return `${logLineCount(list.length)} · ${first.length > max ? `${first.slice(0, max - 1)}…` : first}`;
  }
  const strings = list.every((c) => typeof c === "string");
  return `${head} · ${jsonPreview(strings ? list.join("") : list.length === 1 ? list[0] : list, max)}`;
}

export function shortId(id) {
  return typeof id === "string" ? id.slice(0, 8) : "";
}

/** The status colour an event's chip takes in the timeline. */
export function eventStatus(name) {
  if (name === "step:stream") return "streaming";
  if (name === "run:retried") return "started"; // the run is running again
  if (name.endsWith(":completed")) return "completed";
  if (name.endsWith(":failed")) return "failed";
  if (name.endsWith(":cancelled")) return "cancelled";
  if (name.endsWith(":retrying")) return "retrying";
  if (name.endsWith(":waiting")) return "waiting";
  if (name.endsWith(":started")) return "started";
  return "created";
}

/**
 * Per-step timing from a run's events: {runStart, runEnd, steps: Map(slug -> {first, attemptAt,
 * end, retryAt, retryAttempt, done})}, all in ms since the epoch (server clock): `first` is the
 * first attempt's start, `attemptAt` the running attempt's, `done` whether it completed. Applied
 * one event at a time. An input step's time runs from its step:waiting (the question asked) to
 * its step:completed (answered).
 */
export function newTiming() {
  return { runStart: null, runEnd: null, steps: new Map() };
}

export function applyTiming(timing, e) {
  const at = Date.parse(e.at);
  if (!Number.isFinite(at)) return;
  timing.runStart ??= at;
  let s = null;
  if (e.step_slug) {
    s = timing.steps.get(e.step_slug);
    if (!s) timing.steps.set(e.step_slug, (s = { first: null, attemptAt: null, end: null, retryAt: null, retryAttempt: null, done: false }));
  }
  switch (e.event) {
    case "step:started": // each attempt's, retries included
    case "step:waiting": // an input step's question: waiting for the answer is its running time
      s.first ??= at;
      s.attemptAt = at;
      s.end = null;
      s.retryAt = null;
      break;
    case "step:retrying":
      s.first ??= at;
      s.retryAt = at;
      s.retryAttempt = e.attempt;
      break;
    case "step:completed":
      s.done = true;
    // falls through
    case "step:failed":
      s.first ??= at;
      s.end = at;
      break;
    case "step:cancelled": // one that never ran has no time to stop
      if (s.first !== null && s.end === null) s.end = at;
      break;
    case "run:completed":
    case "run:failed":
    case "run:cancelled":
      timing.runEnd = at;
      // steps cut short by the failure or the cancel stop their clocks here
      for (const step of timing.steps.values()) if (step.first !== null && step.end === null) step.end = at;
      break;
    case "run:retried":
      // the run goes on: the steps that did not complete run again, timed afresh
      timing.runEnd = null;
      for (const [slug, step] of timing.steps) if (!step.done) timing.steps.delete(slug);
      break;
    default:
      break;
  }
}

/**
 * A map step's progress, from the client's step state: {total, done, failed, retrying}, or null
 * for a step that is no map or has not started (its element count comes with its step:started).
 * @param {any} state
 */
export function taskProgress(state) {
  if (state?.kind !== "map" || typeof state.tasks !== "number") return null;
  return {
    total: state.tasks, done: state.tasksCompleted ?? 0, failed: state.tasksFailed ?? 0, retrying: state.tasksRetrying ?? 0,
  };
}

/**
 * "37 / 120", "37 / 120 · 2 failed": a map step's progress as its node shows it.
 * @param {{total: number, done: number, failed: number}} progress
 */
export function progressText({ total, done, failed }) {
  return `${done} / ${total}${failed ? ` · ${failed} failed` : ""}`;
}

/**
 * "37 of 120 tasks done", "37 of 120 tasks done, 2 failed, 1 waiting to retry": the same for a
 * screen reader, and the step details.
 * @param {{total: number, done: number, failed: number, retrying: number}} progress
 */
export function progressLabel({ total, done, failed, retrying }) {
  const parts = [`${done} of ${total} task${total === 1 ? "" : "s"} done`];
  if (failed) parts.push(`${failed} failed`);
  if (retrying) parts.push(`${retrying} waiting to retry`);
  return parts.join(", ");
}

/**
 * How a step looks, from the client's live step state, its timing and its options:
 * {status, attempt, sub (the node's second line), pill, label (for screen readers), duration,
 * streaming (its running attempt streams, see isStreaming), chunks (how many it streamed),
 * progress (a map step's, see taskProgress)}. A map step that started shows its elements' progress
 * as its second line, "37 / 120": the count is what moves while it runs.
 */
export function stepLook(state, timing, options, now) {
  const status = state?.status ?? "created";
  const attempt = state?.attempt ?? null;
  const max = options?.max_attempts ?? null;
  const t = timing?.steps.get(state?.slug);
  const duration = t?.first != null ? (t.end ?? now) - t.first : null;
  const dur = duration === null ? "" : formatDuration(duration);
  const streaming = isStreaming(state);
  const chunks = streaming ? state.chunks.length : 0;
  const progress = status === "created" ? null : taskProgress(state);
  let sub;
  let subShort; // for a narrow node, or one with an attempt pill: the icon already tells the status
  switch (progress ? "progress" : streaming ? "streaming" : status) {
    case "progress": // a map step: its elements done, the failed ones if any, then its time
      subShort = progressText(progress);
      sub = dur ? `${subShort} · ${dur}` : subShort;
      break;
    case "streaming": // running, with chunks coming in: their count is the live part
      sub = `streaming · ${chunkCount(chunks)}`;
      subShort = chunkCount(chunks);
      break;
    case "created":
      sub = "waiting";
      break;
    case "waiting": // an input step asked its question: a person answers it, not a worker
      sub = dur ? `needs input · ${dur}` : "needs input";
      subShort = "needs input";
      break;
    case "retrying": {
      const delay = options?.base_delay != null && t?.retryAt != null
        ? options.base_delay * 1000 * 2 ** ((t.retryAttempt ?? 1) - 1) : null;
      const left = delay === null ? null : t.retryAt + delay - now;
      // Past the delay it waits for a worker to claim it; its step:started ends the wait.
      sub = left !== null && left > 0 ? `retry in ${formatDuration(left)}` : "waiting to retry";
      subShort = left !== null && left > 0 ? `in ${formatDuration(left)}` : "waiting";
      break;
    }
    case "started":
      if (attempt > 1) { // a retry, running: its own time, the whole step's in the details
        const own = t?.attemptAt != null ? formatDuration((t.end ?? now) - t.attemptAt) : "";
        sub = own ? `running attempt ${attempt} · ${own}` : `running attempt ${attempt}`;
        subShort = own || undefined;
        break;
      }
    // falls through: a first attempt reads like the other statuses
    default:
      sub = dur ? `${STATUS_LABELS[status]} · ${dur}` : STATUS_LABELS[status] ?? status;
      subShort = dur || undefined;
      break;
    case "cancelled":
      sub = "cancelled";
      break;
  }
  const pill = attempt > 1 ? (max ? `try ${attempt}/${max}` : `try ${attempt}`) : null;
  const parts = [`${state?.slug}: ${streaming ? "streaming" : STATUS_LABELS[status] ?? status}`];
  if (status === "retrying" && attempt) parts.push(max ? `attempt ${attempt} of ${max} failed` : `attempt ${attempt} failed`);
  else if (attempt > 1) parts.push(max ? `attempt ${attempt} of ${max}` : `attempt ${attempt}`);
  if (streaming) parts.push(chunkCount(chunks));
  if (progress) parts.push(progressLabel(progress));
  if (dur && status !== "created") parts.push(dur);
  if (state?.error && (status === "failed" || status === "retrying")) parts.push(`error: ${state.error}`);
  return { status, attempt, sub, subShort, pill, label: parts.join(", "), duration, streaming, chunks, progress };
}
