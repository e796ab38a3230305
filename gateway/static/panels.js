// DOM builders for the live page's panels: timeline rows, the step detail, the node tooltip.
// They hold no state: app.js hands them what to show.

import {
  eventStatus, formatDuration, formatOffset, jsonPreview, prettyJson, STATUS_LABELS, stepLook,
} from "./format.js";

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
  } else {
    cell("details", "");
  }
  if (live) tr.classList.add("fresh");
  return tr;
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
 * The step detail panel's content. `ctx` is {slug, options, state, timing, now}, with `state`
 * null for a flow's preview (no run); null `ctx` gives the hint shown when no step is selected.
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
    badge.dataset.status = look.status;
    badge.append(make("span", { className: "badge-dot" }), STATUS_LABELS[look.status] ?? look.status);
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
  const max = opts.max_attempts;
  if (inRun) {
    fact("Attempts", state.attempt ? `${state.attempt}${max ? ` of ${max}` : ""}` : `none yet${max ? ` (up to ${max})` : ""}`);
    const t = timing?.steps.get(slug);
    if (t?.first != null && timing.runStart != null) fact("Started", formatOffset(t.first - timing.runStart));
    fact("Duration", look.duration === null ? "—" : formatDuration(look.duration), "duration");
  } else if (max != null) {
    fact("Max attempts", String(max));
  }
  if (opts.base_delay != null) fact("Retry delay", `${opts.base_delay} s, doubling`);
  if (opts.timeout != null) fact("Timeout", `${opts.timeout} s`);
  frag.append(facts);

  const error = inRun ? lastError(state) : null;
  if (error) {
    const label = state.status === "started" ? `Error of attempt ${state.attempt - 1}` : "Error";
    frag.append(make("p", { className: "detail-label", textContent: label }));
    frag.append(make("pre", { className: "code error-text", textContent: error }));
  }
  if (inRun && state.status === "completed") {
    frag.append(make("p", { className: "detail-label", textContent: "Output" }));
    frag.append(make("pre", { className: "code", textContent: prettyJson(state.output) }));
  }
  if (!inRun) {
    frag.append(make("p", { className: "muted small", textContent: "Start a run to see this step's attempts and output." }));
  }
  return frag;
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
  if (look.attempt) {
    frag.append(document.createElement("br"), `attempt ${look.attempt}${opts.max_attempts ? ` of ${opts.max_attempts}` : ""}`);
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
