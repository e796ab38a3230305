// DOM builders for the live page's panels: timeline rows, the step detail, the node tooltip.
// They hold no state: app.js hands them what to show.

import {
  chunkCount, eventStatus, formatClock, formatDuration, formatOffset, jsonPreview, logLineCount, prettyJson,
  progressLabel, STATUS_LABELS, stepLook, streamSummary, taskProgress,
} from "./format.js";
import { formModel, inputForm } from "./inputform.js";
import { LOG_LINES, stepStream } from "./state.js";
import { foldIndices } from "./timeline.js";

const make = (tag, props = {}) => Object.assign(document.createElement(tag), props);

/** One timeline row (`data-event`, `data-seq`, `data-step`); `runStart` in ms, for offsets. */
export function eventRow(e, runStart, live) {
  const tr = document.createElement("tr");
  tr.dataset.event = e.event;
  tr.dataset.seq = String(e.seq);
  if (e.step_slug) tr.dataset.step = e.step_slug;
  const cell = (cls, text) => tr.appendChild(make("td", { className: cls, textContent: text ?? "" }));
  cell("seq", String(e.seq));
  const at = Date.parse(e.at);
  cell("at", runStart != null && Number.isFinite(at) ? formatOffset(at - runStart) : "").title = e.at ?? "";
  const chip = make("span", { className: "ev", textContent: e.event });
  chip.dataset.status = eventStatus(e.event);
  cell("event").appendChild(chip);
  cell("step", e.step_slug ?? "");
  cell("attempt", e.attempt != null ? String(e.attempt) : "");
  if (e.error) {
    cell("details error", e.error);
  } else if (e.event === "step:completed" || e.event === "run:completed") {
    const preview = jsonPreview(e.output, 200);
    cell("details preview", preview).title = preview;
  } else if (e.event === "step:stream") {
    cell("details preview", streamSummary(e.chunks)).title = streamSummary(e.chunks, 400);
  } else if (e.event === "step:waiting") {
    // what it asks: the schema's title when it has one
    const asks = typeof e.schema?.title === "string" ? e.schema.title : jsonPreview(e.schema ?? {}, 200);
    cell("details preview", `asks: ${asks}`).title = jsonPreview(e.schema ?? {}, 400);
  } else if (e.event === "run:cancelled" && e.reason) {
    cell("details preview", e.reason).title = e.reason;
  } else {
    cell("details", "");
  }
  if (live) tr.classList.add("fresh");
  return tr;
}

/**
 * A summary row of a map step's task events (timeline.js's FoldRow): "task:completed ×120" and
 * the elements' indices, "0–119"; `data-fold`, `data-count`, `data-seq-from`, `data-seq-to`.
 * updateFoldRow() keeps it current as the fold takes more events.
 */
export function foldRow(fold, runStart) {
  const tr = document.createElement("tr");
  tr.dataset.event = fold.name;
  tr.dataset.step = fold.step;
  tr.dataset.fold = "true";
  const cell = (cls) => tr.appendChild(make("td", { className: cls }));
  cell("seq");
  cell("at");
  const event = cell("event");
  const chip = make("span", { className: "ev", textContent: fold.name });
  chip.dataset.status = eventStatus(fold.name);
  event.append(chip, " ", make("span", { className: "fold-count" }));
  cell("step").textContent = fold.step;
  cell("attempt");
  cell("details preview");
  updateFoldRow(tr, fold, runStart);
  return tr;
}

/** Brings a fold's row up to the fold: its count, seq range, time, indices, last error. */
export function updateFoldRow(tr, fold, runStart) {
  const [seq, at, event, , attempt, details] = tr.children;
  tr.dataset.count = String(fold.count);
  tr.dataset.seqFrom = String(fold.fromSeq);
  tr.dataset.seqTo = String(fold.toSeq);
  seq.textContent = fold.count > 1 ? `${fold.fromSeq}–${fold.toSeq}` : String(fold.fromSeq);
  const last = Date.parse(fold.lastAt ?? "");
  at.textContent = runStart != null && Number.isFinite(last) ? formatOffset(last - runStart) : "";
  at.title = fold.firstAt && fold.count > 1 ? `${fold.firstAt} – ${fold.lastAt}` : fold.lastAt ?? "";
  event.querySelector(".fold-count").textContent = `×${fold.count}`;
  // one attempt for all of them is worth a number; a mix of attempts is not
  attempt.textContent = fold.count === 1 && fold.attempt != null ? String(fold.attempt) : "";
  const indices = foldIndices(fold);
  const text = fold.lastError ? `${indices} · last: ${fold.lastError}` : indices;
  details.textContent = text;
  details.title = text;
  details.className = fold.lastError ? "details preview error" : "details preview";
}

// The error worth showing for a step: its own when it failed or waits for a retry, the previous
// attempt's while a retry runs (the client keeps it until the step completes).
function lastError(state) {
  if (!state?.error) return null;
  if (state.status === "failed" || state.status === "retrying") return state.error;
  if (state.status === "started" && state.attempt > 1) return state.error;
  return null;
}

function clip(text, max) {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

/**
 * The step detail panel's content. `ctx` is {slug, options, state, timing, now, prompt, answer},
 * with `state` null for a flow's preview (no run), `prompt` and `answer` an input step's question
 * and this tab's answer (state.js); null `ctx` gives the hint shown when no step is selected.
 */
export function stepDetail(ctx) {
  const frag = document.createDocumentFragment();
  if (!ctx) {
    frag.append(make("p", {
      className: "muted",
      textContent: "Select a step in the graph (click it, or Tab to it) to see its status, attempts and output.",
    }));
    return frag;
  }
  const { slug, options: opts, state, timing, now } = ctx;
  const inRun = state !== null;
  const look = stepLook(state ?? { slug, status: "created", attempt: null }, timing, opts, now);

  const head = make("div", { className: "step-detail-head" });
  head.append(make("strong", { textContent: slug }));
  if (inRun) {
    const badge = make("span", { className: "badge" });
    // a streaming step is running, with chunks coming in: its badge says so
    badge.dataset.status = look.streaming ? "streaming" : look.status;
    const text = look.streaming ? "streaming" : STATUS_LABELS[look.status] ?? look.status;
    badge.append(make("span", { className: "badge-dot" }), text);
    head.append(badge);
  }
  frag.append(head);

  const facts = make("dl", { className: "facts" });
  const fact = (name, value, live) => {
    const dd = make("dd", { textContent: value });
    if (live) dd.dataset.live = live;
    facts.append(make("dt", { textContent: name }), dd);
  };
  const deps = opts.depends_on ?? [];
  fact("Depends on", deps.length ? deps.join(", ") : "nothing (a root step)");
  const kind = opts.kind ?? state?.kind;
  if (kind === "input") fact("Kind", "input step: a person answers it");
  if (kind === "map") fact("Kind", `map: one task per element of ${opts.over === "run" ? "the run's input" : opts.over ?? "an array"}`);
  if (kind === "http") {
    fact("Kind", "HTTP: a POST to an endpoint, which answers or calls back");
    if (typeof opts.url === "string") {
      const dd = make("dd");
      dd.append(make("code", { className: "step-url", textContent: opts.url }));
      dd.dataset.testid = "step-url";
      facts.append(make("dt", { textContent: "URL" }), dd);
    }
  }
  // an input step is answered, not attempted: no attempts, no retries
  const max = kind === "input" ? null : opts.max_attempts;
  const progress = inRun ? taskProgress(state) : null;
  if (inRun) {
    if (kind === "map") {
      // its elements are attempted, each on its own: the step's own attempt says little
      fact("Tasks", progress ? progressLabel(progress) : "not started", "tasks");
      if (max) fact("Tries per task", `up to ${max}`);
    } else if (kind !== "input") {
      fact("Attempts", state.attempt ? `${state.attempt}${max ? ` of ${max}` : ""}` : `none yet${max ? ` (up to ${max})` : ""}`);
    }
    const t = timing?.steps.get(slug);
    if (t?.first != null && timing.runStart != null) fact("Started", formatOffset(t.first - timing.runStart));
    fact("Duration", look.duration === null ? "—" : formatDuration(look.duration), "duration");
  } else if (max != null) {
    fact("Max attempts", String(max));
  }
  if (opts.base_delay != null && kind !== "input") fact("Retry delay", `${opts.base_delay} s, doubling`);
  if (opts.timeout != null) fact("Timeout", `${opts.timeout} s`);
  frag.append(facts);
  if (progress) frag.append(tasksSection(state, progress));

  const error = inRun ? lastError(state) : null;
  if (error) {
    const label = state.status === "started" ? `Error of attempt ${state.attempt - 1}` : "Error";
    frag.append(make("p", { className: "detail-label", textContent: label }));
    frag.append(make("pre", { className: "code error-text", textContent: error }));
  }
  const stream = inRun ? stepStream(state) : null;
  if (stream) {
    const section = streamSection(stream);
    section.dataset.step = slug;
    frag.append(section);
  }
  if (inRun && state.status === "waiting") frag.append(inputSection(ctx));
  if (inRun && state.status === "completed") {
    // an input step's output is the answer a person gave
    frag.append(make("p", { className: "detail-label", textContent: ctx.prompt || opts.kind === "input" ? "Answer" : "Output" }));
    frag.append(make("pre", { className: "code", textContent: prettyJson(state.output) }));
  }
  if (!inRun) {
    frag.append(make("p", { className: "muted small", textContent: "Start a run to see this step's attempts and output." }));
  }
  return frag;
}

/**
 * A map step's elements: a progress bar, then its elements' latest failed attempts (newest
 * first). updateTasks() keeps it current in place while the elements' events come in.
 */
function tasksSection(state, progress) {
  const section = make("div", { className: "tasks" });
  section.dataset.live = "task-progress";
  const bar = make("progress", { className: "task-progress" });
  bar.dataset.testid = "step-tasks-progress";
  section.append(bar, make("div", { className: "task-errors-slot" }));
  fillTasks(section, state, progress);
  return section;
}

/** The error list of a map step's elements, newest first; nothing while none failed. */
function taskErrorList(errors) {
  if (errors.length === 0) return [];
  const label = make("p", { className: "detail-label", id: "step-task-errors-label", textContent: "Latest task errors" });
  const list = make("ol", { className: "code task-errors", tabIndex: 0 });
  list.dataset.testid = "step-task-errors";
  list.setAttribute("aria-labelledby", "step-task-errors-label");
  for (const e of [...errors].reverse()) {
    const li = make("li", { className: "task-error" });
    li.dataset.final = String(e.final);
    li.append(
      make("span", { className: "task-error-where", textContent: `task ${e.index}${e.attempt != null ? `, attempt ${e.attempt}` : ""}` }),
      make("span", { className: "task-error-outcome", textContent: e.final ? " failed: " : " will retry: " }),
      make("span", { className: "task-error-text", textContent: e.error }),
    );
    list.append(li);
  }
  return [label, list];
}

/** Sets a tasks section's bar and, when a new error came, its error list. */
function fillTasks(section, state, progress) {
  const bar = section.querySelector(".task-progress");
  bar.max = Math.max(progress.total, 1);
  // an empty map completes at once: nothing to do is all of it done
  bar.value = progress.total === 0 && state.status === "completed" ? 1 : Math.min(progress.done, progress.total);
  bar.setAttribute("aria-label", progressLabel(progress));
  const slot = section.querySelector(".task-errors-slot");
  const errors = state.taskErrors ?? [];
  const key = String(errors.at(-1)?.seq ?? ""); // the list is replaced, never changed: its last says which
  if (slot.dataset.key !== key) {
    slot.dataset.key = key;
    slot.replaceChildren(...taskErrorList(errors));
  }
}

/**
 * Brings a map step's detail (in `body`) up to its state: the Tasks fact, the bar, the error
 * list. False when the detail has no tasks section (the step had not started when it was drawn):
 * the caller then draws it anew.
 * @param {ParentNode} body
 * @param {any} state the client's step state
 */
export function updateTasks(body, state) {
  const section = body.querySelector('[data-live="task-progress"]');
  const progress = taskProgress(state);
  if (!section || !progress) return false;
  const fact = body.querySelector('dd[data-live="tasks"]');
  const label = progressLabel(progress);
  if (fact && fact.textContent !== label) fact.textContent = label;
  fillTasks(section, state, progress);
  return true;
}

/**
 * An input step waiting for a person: what it was given (what is being approved), until when it
 * waits, and the form for the answer. app.js handles the form's submit (delegated on the panel).
 */
function inputSection(ctx) {
  const { slug, state } = ctx;
  const prompt = ctx.prompt ?? { schema: state.schema ?? {}, input: state.input, timeoutAt: state.timeout_at ?? null };
  const answer = ctx.answer ?? { busy: false, errors: [], draft: null, message: null };
  const section = make("section", { className: "input-request" });
  section.dataset.testid = "input-request";
  section.setAttribute("aria-labelledby", `answer-${slug}-title`);
  const title = make("p", { className: "input-title", id: `answer-${slug}-title`, textContent: "Waiting for your input" });
  section.append(title);
  const due = Date.parse(prompt.timeoutAt ?? "");
  if (Number.isFinite(due)) {
    const left = due - ctx.now;
    section.append(make("p", {
      className: "muted small",
      textContent: left > 0 ? `Answer by ${formatClock(prompt.timeoutAt)} (in ${formatDuration(left)}); after that the step fails.`
        : `It was due at ${formatClock(prompt.timeoutAt)}: the step fails unless the answer is in.`,
    }));
  }
  section.append(make("p", { className: "detail-label", id: `answer-${slug}-input`, textContent: "Its input" }));
  const input = make("pre", { className: "code step-input", tabIndex: 0, textContent: prettyJson(prompt.input ?? null) });
  input.dataset.testid = "step-input";
  input.setAttribute("aria-labelledby", `answer-${slug}-input`);
  section.append(input, inputForm(formModel(prompt.schema), { slug, answer }));
  const outcome = make("p", { className: "input-outcome small", textContent: answer.message ?? "" });
  outcome.dataset.testid = "input-outcome";
  outcome.setAttribute("role", "status");
  outcome.hidden = !answer.message;
  section.append(outcome);
  return section;
}

// What shapes the stream section: when it changes the section is built anew, else updated in place.
const streamKey = (stream) => [
  stream.attempt, stream.strings > 0, stream.logCount > 0, stream.hasValue, stream.live, stream.superseded,
].join("|");

/** "Streaming" while the attempt runs, "Streamed" once it ended. */
const streamHeading = (stream) => `${stream.live ? "Streaming" : "Streamed"}, attempt ${stream.attempt} · `;

/**
 * The step detail's stream: the attempt's string chunks as text, growing, its log records as
 * log lines, and its latest other chunk as JSON. `stream` is state.js's stepStream().
 */
function streamSection(stream) {
  const section = make("div", { className: "stream" });
  section.dataset.live = "stream";
  section.dataset.key = streamKey(stream);
  const label = make("p", { className: "detail-label stream-label", id: "step-stream-label" });
  label.dataset.testid = "step-stream-label";
  if (stream.live) {
    const dot = make("span", { className: "stream-dot" });
    dot.setAttribute("aria-hidden", "true");
    label.append(dot);
  }
  const count = make("span", { textContent: chunkCount(stream.count) });
  count.dataset.testid = "step-stream-count";
  label.append(streamHeading(stream), count);
  section.append(label);
  if (stream.superseded) {
    section.append(make("p", {
      className: "muted small",
      textContent: `The chunks of attempt ${stream.attempt}, which failed: the next attempt has not streamed yet.`,
    }));
  }
  if (stream.strings > 0) {
    const pre = make("pre", { className: "code stream-text", tabIndex: 0, textContent: stream.text });
    pre.dataset.testid = "step-stream-text";
    pre.dataset.attempt = String(stream.attempt);
    pre.dataset.chars = String(stream.text.length); // what it shows, without reading it back
    pre.setAttribute("aria-labelledby", "step-stream-label");
    if (stream.live) pre.setAttribute("aria-busy", "true");
    section.append(pre);
  }
  if (stream.logCount > 0) section.append(...logSection(stream));
  if (stream.hasValue) {
    section.append(make("p", { className: "detail-label", textContent: "Latest value" }));
    const pre = make("pre", { className: "code", textContent: prettyJson(stream.value) });
    pre.dataset.testid = "step-stream-value";
    section.append(pre);
  }
  return section;
}

/** "2 log lines", or "250 log lines · the last 200 shown" once the oldest are dropped. */
const logLabel = (stream) => logLineCount(stream.logCount)
  + (stream.logCount > stream.logs.length ? ` · the last ${stream.logs.length} shown` : "");

/**
 * One log record as a line: level, logger, message (spaces between, for copying and screen
 * readers). `data-level` colours the warnings and errors.
 */
function logLine(record) {
  const li = make("li", { className: "log-line" });
  li.dataset.testid = "step-log-line";
  li.dataset.level = record.level;
  li.append(
    make("span", { className: "log-level", textContent: record.level }), " ",
    make("span", { className: "log-logger", textContent: record.logger }), " ",
    make("span", { className: "log-message", textContent: record.message }),
  );
  return li;
}

/** The stream's log records: a label with their count, then the lines, oldest first. */
function logSection(stream) {
  const label = make("p", { className: "detail-label", id: "step-log-label", textContent: logLabel(stream) });
  label.dataset.testid = "step-log-label";
  const list = make("ol", { className: "code stream-log", tabIndex: 0 });
  list.dataset.testid = "step-log";
  list.dataset.lines = String(stream.logCount); // the records it took in, the dropped ones included
  list.setAttribute("aria-labelledby", "step-log-label");
  if (stream.live) list.setAttribute("aria-busy", "true");
  list.append(...stream.logs.map(logLine));
  return [label, list];
}

/**
 * Brings the log list in `section` up to `stream`: the new lines appended, the oldest dropped
 * past LOG_LINES. False when it shows records `stream` does not have (not its continuation).
 */
function updateLog(section, stream) {
  const list = section.querySelector('[data-testid="step-log"]');
  if (!list) return true;
  const fresh = stream.logCount - Number(list.dataset.lines);
  if (!(fresh >= 0)) return false;
  if (fresh === 0) return true;
  const follow = atEnd(list);
  if (fresh >= stream.logs.length) list.replaceChildren(...stream.logs.map(logLine));
  else list.append(...stream.logs.slice(-fresh).map(logLine));
  while (list.childElementCount > LOG_LINES) list.firstElementChild.remove();
  list.dataset.lines = String(stream.logCount);
  const label = section.querySelector('[data-testid="step-log-label"]');
  if (label) label.textContent = logLabel(stream);
  if (follow) list.scrollTop = list.scrollHeight;
  return true;
}

/** Whether `el` is scrolled to its end (or does not scroll). */
const atEnd = (el) => el.scrollHeight - el.scrollTop - el.clientHeight < 24;

/**
 * Brings the step detail's stream section (in `body`) up to `stream`: the new text and log
 * lines appended, the count and latest value replaced, the text and log kept scrolled to their
 * end if they were. False when the section is missing or shaped otherwise (another attempt, a
 * first log record or other non-string chunk, the stream ended): then the caller draws the
 * whole detail anew.
 */
export function updateStream(body, stream) {
  const section = body.querySelector('[data-live="stream"]');
  if (!stream || !section || section.dataset.key !== streamKey(stream)) return false;
  const count = section.querySelector('[data-testid="step-stream-count"]');
  if (count) count.textContent = chunkCount(stream.count);
  const pre = section.querySelector('[data-testid="step-stream-text"]');
  if (pre) {
    const shown = Number(pre.dataset.chars);
    if (!(stream.text.length >= shown)) return false; // not this text's continuation
    if (stream.text.length > shown) {
      const follow = atEnd(pre);
      pre.append(stream.text.slice(shown)); // appended, so a selection in the text stays
      pre.dataset.chars = String(stream.text.length);
      if (follow) pre.scrollTop = pre.scrollHeight;
    }
  }
  if (!updateLog(section, stream)) return false;
  const value = section.querySelector('[data-testid="step-stream-value"]');
  if (value) {
    const text = prettyJson(stream.value);
    if (value.textContent !== text) value.textContent = text;
  }
  return true;
}

/** Scrolls the stream text and log in `body` to their end: a stream is read as it grows. */
export function followStream(body) {
  for (const el of body.querySelectorAll('[data-testid="step-stream-text"], [data-testid="step-log"]')) {
    el.scrollTop = el.scrollHeight;
  }
}

/** The hover/focus tooltip of a node: slug, status line, attempt, error. Same `ctx` as above. */
export function tipContent(ctx) {
  const { slug, options: opts, state, timing, now } = ctx;
  const frag = document.createDocumentFragment();
  frag.append(make("strong", { textContent: slug }));
  if (!state) {
    const deps = opts.depends_on ?? [];
    frag.append(deps.length ? `after ${deps.join(", ")}` : "root step");
    return frag;
  }
  const look = stepLook(state, timing, opts, now);
  frag.append(look.sub);
  if (look.progress) {
    // a map's elements are attempted one by one: their counts say more than the step's attempt
    frag.append(document.createElement("br"), progressLabel(look.progress));
    const latest = state.taskErrors?.at(-1);
    if (latest && !lastError(state)) { // a failed map's own error (below) already names it
      const text = `task ${latest.index} ${latest.final ? "failed" : "will retry"}: ${latest.error}`;
      frag.append(make("div", { className: "tip-error", textContent: clip(text, 140) }));
    }
  } else if (look.attempt) {
    frag.append(document.createElement("br"), `attempt ${look.attempt}${opts.max_attempts ? ` of ${opts.max_attempts}` : ""}`);
  }
  if ((opts.kind ?? state.kind) === "http" && typeof opts.url === "string") {
    frag.append(document.createElement("br"), `POST ${clip(opts.url, 80)}`);
  }
  const stream = stepStream(state);
  if (stream) {
    frag.append(document.createElement("br"), `${chunkCount(stream.count)} streamed${stream.live ? " so far" : ""} (attempt ${stream.attempt})`);
  }
  const error = lastError(state);
  if (error) {
    const text = state.status === "started" ? `attempt ${state.attempt - 1} failed: ${error}` : error;
    frag.append(make("div", { className: "tip-error", textContent: clip(text, 140) }));
  }
  return frag;
}

/** Puts the tooltip above the node `g` (below it when that would cover the toolbar). */
export function placeTip(tip, g) {
  const card = tip.parentElement.getBoundingClientRect();
  const box = g.getBoundingClientRect();
  const toolbar = tip.parentElement.firstElementChild?.getBoundingClientRect().height ?? 44;
  const left = Math.max(6, Math.min(card.width - tip.offsetWidth - 6, box.left - card.left + box.width / 2 - tip.offsetWidth / 2));
  let top = box.top - card.top - tip.offsetHeight - 8;
  if (top < toolbar) top = box.bottom - card.top + 8;
  tip.style.left = `${Math.round(left)}px`;
  tip.style.top = `${Math.round(top)}px`;
}
