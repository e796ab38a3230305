// PGFlow live page: pick a flow, start runs, watch each one live (DAG, events, output).
//
// Everything live comes from the JS client (/client.js): one FlowRun per run, followed over the
// client's one websocket. The page keeps every run it has seen in `tracked` (so several runs go
// on at once and switching between them is instant) and draws the one that is open.
// HTTP it reads itself: GET /flows, GET /flows/{slug}, GET /runs?limit=20. Every URL is
// relative to the gateway's base (client.url), so the page works under a prefix too.

import { createClient } from "../client.js";
import { DagView } from "./dag.js";
import {
  applyTiming, formatAgo, formatClock, formatDuration, newTiming, prettyJson, RUN_STATUS_LABELS,
  shortId, stepLook,
} from "./format.js";
import { eventRow, placeTip, stepDetail, tipContent } from "./panels.js";

const RECENT_LIMIT = 20; // runs asked of GET /runs
const RECENT_SHOWN = 30; // runs listed, with those started in this tab
const RECENT_REFRESH = 20_000; // ms between GET /runs while the tab is visible
const TICK = 250; // ms between live duration updates
const ZOOM_STEP = 1.25;
const CONN_LABELS = { idle: "Ready", connecting: "Connecting…", open: "Live", reconnecting: "Reconnecting…", closed: "Closed" };

const $ = (id) => document.getElementById(id);
const ui = {
  form: $("run-form"), select: $("flow-select"), description: $("flow-description"), flowsError: $("flows-error"),
  editor: $("input-editor"), inputError: $("input-error"), resetInput: $("reset-input"),
  runButton: $("run-button"), startError: $("start-error"),
  view: $("run-view"), eyebrow: $("run-eyebrow"), title: $("run-title"), subtitle: $("run-subtitle"),
  meta: $("run-meta"), runId: $("run-id"), started: $("run-started"), elapsed: $("run-elapsed"),
  badge: $("run-status"), badgeText: $("run-status-text"),
  dagScroll: $("dag-scroll"), dagEmpty: $("dag-empty"), tip: $("dag-tip"),
  zoomIn: $("zoom-in"), zoomOut: $("zoom-out"), zoomFit: $("zoom-fit"),
  errorCard: $("run-error"), errorSummary: $("run-error-summary"), errorText: $("run-error-text"), showFailed: $("show-failed-step"),
  outputCard: $("output-card"), output: $("run-output"), copyOutput: $("copy-output"),
  detail: $("step-detail-body"),
  timelineBody: $("timeline-body"), timelineScroll: $("timeline-scroll"), timelineEmpty: $("timeline-empty"), timelineCount: $("timeline-count"),
  recent: $("recent-runs"), recentEmpty: $("recent-empty"), recentError: $("recent-error"), refreshRuns: $("refresh-runs"),
  conn: $("conn"), connText: $("conn-text"), announcer: $("announcer"),
};

// A token for gateways that require one (see the README): localStorage "pgflow.token".
const token = (() => {
  try {
    return localStorage.getItem("pgflow.token") || undefined;
  } catch {
    return undefined;
  }
})();
const client = createClient(token ? { token } : {});

const flows = new Map(); // slug -> {slug, description, example_input, steps?, output_step?}
const graphs = new Map(); // slug -> Promise<graph>, for previews
const drafts = new Map(); // slug -> the input text as edited, kept across flow switches
const tracked = new Map(); // run_id -> Entry, every run this tab follows or followed
const listed = new Map(); // run_id -> summary from GET /runs
let current = null; // the Entry on display, or null for the selected flow's preview
let skew = 0; // ms the gateway's clock is ahead of ours (events cannot come from the future)

const dag = new DagView($("dag"), ui.dagScroll, {
  onSelect: () => renderDetail(),
  onHover: (slug, g) => showTip(slug, g),
  onZoom: (scale, fit) => {
    ui.zoomFit.textContent = `${Math.round(scale * 100)}%`;
    ui.zoomFit.setAttribute("aria-label", `Zoom ${Math.round(scale * 100)}%${fit ? ", fitted" : ""}: fit to width`);
    ui.zoomFit.setAttribute("aria-pressed", String(fit));
  },
});

const serverNow = () => Date.now() + skew;

// ---- HTTP ----------------------------------------------------------------------------------

async function api(path) {
  const headers = { accept: "application/json" };
  if (token) headers.authorization = `Bearer ${token}`;
  const res = await fetch(client.url + path, { headers });
  let body = null;
  try {
    body = await res.json();
  } catch {
    // not JSON: the status says enough
  }
  if (!res.ok) throw new Error(body?.error?.message ?? `HTTP ${res.status} for ${path}`);
  return body;
}

function graphFor(slug) {
  const known = flows.get(slug);
  if (known?.steps) return Promise.resolve(known);
  let g = graphs.get(slug);
  if (!g) {
    g = api(`/flows/${encodeURIComponent(slug)}`);
    graphs.set(slug, g);
    g.catch(() => graphs.delete(slug));
  }
  return g;
}

// ---- runs ----------------------------------------------------------------------------------

/** Starts following `run`: its events update the list, and the view while it is open. */
function track(run, { local = false, flowSlug = null } = {}) {
  const entry = {
    runId: run.runId, run, local, flowSlug: run.flowSlug ?? flowSlug,
    openedAt: new Date().toISOString(), timing: newTiming(), failedStep: null, problem: null,
  };
  for (const e of run.events) { // applied before startFlow resolved
    applyTiming(entry.timing, e);
    if (e.event === "run:failed") entry.failedStep = e.step_slug;
  }
  tracked.set(run.runId, entry);
  run.on("*", (e) => onEvent(entry, e));
  run.result().catch((err) => {
    if (err?.code === "run_failed") return; // drawn from the run:failed event
    entry.problem = err;
    if (entry === current) renderProblem();
    renderRecent();
  });
  return entry;
}

function onEvent(entry, e) {
  const at = Date.parse(e.at);
  if (Number.isFinite(at)) skew = Math.max(skew, at - Date.now());
  applyTiming(entry.timing, e);
  if (e.event === "run:failed") entry.failedStep = e.step_slug;
  if (entry === current) {
    if (e.step_slug && !dag.has(e.step_slug) && (entry.run.graph || entry.graphFailed)) drawGraph(entry);
    paintSteps(e.event === "run:failed" ? null : e.step_slug);
    appendEvent(e, serverNow() - Date.parse(e.at) < 3000); // a replay does not flash
    renderRunState();
    if (e.step_slug && dag.selected === e.step_slug) renderDetail();
    announceEvent(entry, e);
  }
  if (e.event === "run:started" || e.event === "run:completed" || e.event === "run:failed") {
    renderRecent();
    if (e.event !== "run:started") setTimeout(refreshRecent, 400);
  }
}

function announceEvent(entry, e) {
  const flow = entry.flowSlug ?? "the run";
  if (e.event === "run:completed") announce(`Run of ${flow} completed.`);
  else if (e.event === "run:failed") announce(`Run of ${flow} failed at step ${e.step_slug}: ${e.error}`);
  else if (e.event === "step:retrying") announce(`Step ${e.step_slug} failed attempt ${e.attempt}, waiting to retry.`);
  else if (e.event === "step:started" && e.attempt > 1) announce(`Step ${e.step_slug} is running attempt ${e.attempt}.`);
}

function announce(text) {
  ui.announcer.textContent = "";
  setTimeout(() => (ui.announcer.textContent = text), 50);
}

/** Opens a run by id: one this tab follows, or attaches to it (replaying its events). */
function openRun(runId, { push = true } = {}) {
  let entry = tracked.get(runId);
  if (!entry) {
    let run;
    try {
      run = client.getRun(runId, { flowSlug: listed.get(runId)?.flow_slug });
    } catch (err) {
      showStartError(err);
      return;
    }
    entry = track(run, { flowSlug: listed.get(runId)?.flow_slug ?? null });
  }
  if (push) {
    const url = `${location.pathname}?run=${encodeURIComponent(runId)}`;
    if (`${location.pathname}${location.search}` !== url) history.pushState({ run: runId }, "", url);
  }
  openEntry(entry);
}

function openEntry(entry) {
  current = entry;
  ui.view.dataset.runId = entry.runId;
  hideTip();
  ui.timelineBody.replaceChildren();
  for (const e of entry.run.events) appendEvent(e, false);
  ui.timelineScroll.scrollTop = ui.timelineScroll.scrollHeight;
  if (entry.run.graph) drawGraph(entry);
  else {
    dag.clear();
    showDagMessage("Loading the flow's graph…");
    whenKnown(entry).then(() => entry.run.loadGraph()).then(() => {
      entry.flowSlug = entry.run.flowSlug;
      if (current === entry) {
        drawGraph(entry);
        renderRunState();
        renderDetail();
      }
      renderRecent();
    }, (err) => {
      entry.graphFailed = true;
      if (current !== entry || entry.problem) return;
      // no graph: still draw the steps the events name, without edges
      drawGraph(entry);
      if (dag.nodes.size === 0) showDagMessage(`The flow's graph could not be loaded: ${err.message}`);
    });
  }
  renderRunState();
  renderDetail();
  renderRecent();
  if (entry.problem) renderProblem();
}

// A run opened by id alone needs GET /runs/{id} to learn its flow: wait until the socket has
// shown the run exists, so a mistyped id costs one refused subscription and no failed request.
function whenKnown(entry) {
  if (entry.flowSlug || entry.run.events.length > 0) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const off = entry.run.on("*", () => {
      off();
      resolve();
    });
    entry.run.result().catch((err) => {
      off();
      reject(err);
    });
  });
}

function closeRun() {
  current = null;
  delete ui.view.dataset.runId;
  ui.timelineBody.replaceChildren();
  renderRunState();
  renderRecent();
  showPreview();
}

function drawGraph(entry) {
  const run = entry.run;
  const graph = run.graph ?? { slug: entry.flowSlug, steps: [], output_step: null };
  ui.dagEmpty.hidden = true;
  dag.setGraph(graph, [...run.steps.keys()]);
  paintSteps();
}

function showDagMessage(text) {
  ui.dagEmpty.textContent = text;
  ui.dagEmpty.hidden = false;
}

function stepOptions(slug) {
  const graph = current ? current.run.graph : flows.get(ui.select.value);
  return graph?.steps?.find((s) => s.slug === slug) ?? null;
}

/** Repaints one step, or all (their states change together when a run fails). */
function paintSteps(slug = null) {
  if (!current) return;
  const now = serverNow();
  const slugs = slug ? [slug] : [...dag.nodes.keys()];
  for (const s of slugs) {
    const look = stepLook(current.run.step(s), current.timing, stepOptions(s), now);
    look.culprit = current.run.status === "failed" && s === current.failedStep;
    dag.update(s, look);
  }
}

// ---- run header, result ----------------------------------------------------------------------

function renderRunState() {
  const entry = current;
  ui.badge.hidden = !entry || (entry.problem && entry.run.events.length === 0);
  ui.meta.hidden = !entry;
  if (!entry) {
    ui.eyebrow.textContent = "Preview";
    const flow = flows.get(ui.select.value);
    ui.title.textContent = flow ? flow.slug : "Pick a flow";
    ui.subtitle.hidden = false;
    ui.subtitle.textContent = flow
      ? "Its steps are drawn below. Press Run to start a run and watch it live."
      : "Choose a flow on the left to see its steps.";
    ui.errorCard.hidden = true;
    ui.outputCard.hidden = true;
    ui.timelineEmpty.hidden = false;
    ui.timelineEmpty.textContent = "Events appear here as soon as a run starts.";
    ui.timelineCount.textContent = "";
    document.title = "PGFlow — live runs";
    return;
  }
  const run = entry.run;
  ui.eyebrow.textContent = entry.local ? "Run started here" : "Run";
  ui.title.textContent = entry.flowSlug ?? "Run";
  ui.subtitle.hidden = true;
  ui.runId.textContent = entry.runId;
  const startedIso = run.startedAt ?? listed.get(entry.runId)?.started_at ?? null;
  ui.started.textContent = startedIso ? formatClock(startedIso) : "—";
  ui.badge.dataset.status = run.status;
  ui.badgeText.textContent = RUN_STATUS_LABELS[run.status] ?? run.status;
  renderElapsed();
  document.title = `${entry.flowSlug ?? "Run"} · ${(RUN_STATUS_LABELS[run.status] ?? run.status).toLowerCase()} — PGFlow`;

  const count = run.events.length;
  ui.timelineEmpty.hidden = count > 0;
  ui.timelineEmpty.textContent = "Waiting for the first event…";
  ui.timelineCount.textContent = count ? `${count} event${count === 1 ? "" : "s"}` : "";

  ui.outputCard.hidden = run.status !== "completed";
  if (run.status === "completed") {
    const text = prettyJson(run.output);
    if (ui.output.textContent !== text) ui.output.textContent = text;
  }
  ui.errorCard.hidden = run.status !== "failed";
  if (run.status === "failed") {
    const slug = entry.failedStep;
    const attempts = slug ? run.step(slug).attempt : null;
    ui.errorSummary.replaceChildren(
      "Step ", Object.assign(document.createElement("strong"), { textContent: slug ?? "?" }),
      ` failed${attempts ? ` after ${attempts} attempt${attempts === 1 ? "" : "s"}` : ""}; the steps after it were cancelled.`,
    );
    ui.errorText.textContent = run.error ?? "";
    ui.showFailed.hidden = !slug || !dag.has(slug);
  }
}

function renderElapsed() {
  if (!current) return;
  const t = current.timing;
  ui.elapsed.textContent = t.runStart === null ? "—" : formatDuration((t.runEnd ?? serverNow()) - t.runStart);
}

function renderProblem() {
  const err = current?.problem;
  if (!err) return;
  renderRunState();
  const what = err.code === "not_found" ? "No run has this id (or it is not visible to you)."
    : err.code === "forbidden" ? "You may not see this run."
    : err.code === "bad_request" ? "This is not a valid run id."
    : `The run could not be followed: ${err.message}`;
  ui.subtitle.hidden = false;
  ui.subtitle.textContent = what;
  if (current.run.events.length === 0) {
    // nothing to draw: the message takes the graph's place
    dag.clear();
    showDagMessage(what);
  }
}

// ---- timeline, step details, tooltip ---------------------------------------------------------

function appendEvent(e, live) {
  const scroller = ui.timelineScroll;
  const atBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 24;
  ui.timelineBody.appendChild(eventRow(e, current?.timing.runStart, live));
  if (live && atBottom) scroller.scrollTop = scroller.scrollHeight;
}

function stepContext(slug) {
  return {
    slug,
    options: stepOptions(slug) ?? {},
    state: current ? current.run.step(slug) : null,
    timing: current?.timing ?? null,
    now: serverNow(),
  };
}

function renderDetail() {
  ui.detail.replaceChildren(stepDetail(dag.selected ? stepContext(dag.selected) : null));
}

function showTip(slug, g) {
  if (!slug) return hideTip();
  ui.tip.replaceChildren(tipContent(stepContext(slug)));
  ui.tip.hidden = false;
  placeTip(ui.tip, g);
}

function hideTip() {
  ui.tip.hidden = true;
}

// ---- flow picker and preview -------------------------------------------------------------------

async function loadFlows() {
  ui.flowsError.hidden = true;
  try {
    const body = await api("/flows");
    const list = Array.isArray(body) ? body : body?.flows ?? [];
    flows.clear();
    for (const f of list) if (f && typeof f.slug === "string") flows.set(f.slug, f);
  } catch (err) {
    ui.flowsError.textContent = `Could not load the flows: ${err.message}`;
    ui.flowsError.hidden = false;
  }
  ui.select.replaceChildren();
  if (flows.size === 0) {
    ui.select.append(new Option(ui.flowsError.hidden ? "No flows defined" : "Flows unavailable", ""));
    ui.select.disabled = true;
    ui.runButton.disabled = true;
    renderFlow();
    return;
  }
  for (const f of flows.values()) ui.select.append(new Option(f.slug, f.slug));
  const wanted = new URLSearchParams(location.search).get("flow");
  if (wanted && flows.has(wanted)) ui.select.value = wanted;
  ui.select.disabled = false;
  ui.runButton.disabled = false;
  renderFlow();
}

function exampleText(flow) {
  return prettyJson(flow?.example_input ?? {});
}

function renderFlow() {
  const flow = flows.get(ui.select.value);
  ui.description.textContent = flow ? flow.description || "No description." : "";
  ui.editor.value = flow ? drafts.get(flow.slug) ?? exampleText(flow) : "";
  clearInputError();
  if (!current) showPreview();
}

async function showPreview() {
  const slug = ui.select.value;
  renderRunState();
  renderDetail();
  if (!slug) {
    dag.clear();
    showDagMessage(flows.size ? "" : "No flows to show.");
    return;
  }
  try {
    const graph = await graphFor(slug);
    if (current || ui.select.value !== slug) return;
    ui.dagEmpty.hidden = true;
    dag.setGraph(graph);
    for (const s of graph.steps ?? []) {
      const o = s.max_attempts ? `up to ${s.max_attempts} ${s.max_attempts === 1 ? "try" : "tries"}` : "not started";
      dag.update(s.slug, { status: "created", attempt: null, sub: o, pill: null, label: `${s.slug}: not started` });
    }
    renderDetail();
  } catch (err) {
    if (current || ui.select.value !== slug) return;
    dag.clear();
    showDagMessage(`The graph of ${slug} could not be loaded: ${err.message}`);
  }
}

// ---- starting runs -------------------------------------------------------------------------------

function parseInput() {
  const text = ui.editor.value.trim();
  if (text === "") return { ok: true, value: {} };
  try {
    return { ok: true, value: JSON.parse(text) };
  } catch (err) {
    return { ok: false, message: `Not valid JSON: ${err.message}` };
  }
}

function showInputError(message) {
  ui.inputError.textContent = message;
  ui.inputError.hidden = false;
  ui.editor.setAttribute("aria-invalid", "true");
}

function clearInputError() {
  ui.inputError.hidden = true;
  ui.inputError.textContent = "";
  ui.editor.removeAttribute("aria-invalid");
}

function showStartError(err) {
  ui.startError.textContent = err ? `Could not start the run: ${err.message}` : "";
  ui.startError.hidden = !err;
}

let starting = false;
async function submit() {
  const slug = ui.select.value;
  if (!slug || starting) return;
  const parsed = parseInput();
  if (!parsed.ok) {
    showInputError(parsed.message);
    ui.editor.focus();
    return;
  }
  clearInputError();
  showStartError(null);
  starting = true;
  ui.runButton.disabled = true;
  ui.runButton.setAttribute("aria-busy", "true");
  try {
    const run = await client.startFlow(slug, parsed.value);
    const entry = track(run, { local: true, flowSlug: slug });
    openRun(entry.runId);
    announce(`Started a run of ${slug}.`);
    if (stacked()) ui.view.scrollIntoView({ block: "start", behavior: "smooth" });
  } catch (err) {
    showStartError(err);
  } finally {
    starting = false;
    ui.runButton.disabled = false;
    ui.runButton.removeAttribute("aria-busy");
  }
}

// ---- recent runs ------------------------------------------------------------------------------------

async function refreshRecent() {
  try {
    const body = await api(`/runs?limit=${RECENT_LIMIT}`);
    const list = Array.isArray(body) ? body : body?.runs ?? [];
    listed.clear();
    for (const r of list) if (r && typeof r.run_id === "string") listed.set(r.run_id, r);
    ui.recentError.hidden = true;
  } catch (err) {
    ui.recentError.textContent = `Could not list past runs: ${err.message}`;
    ui.recentError.hidden = false;
  }
  renderRecent();
}

function recentRows() {
  const rows = new Map();
  for (const r of listed.values()) {
    rows.set(r.run_id, { runId: r.run_id, flow: r.flow_slug, status: r.status, startedAt: r.started_at ?? r.created_at ?? null });
  }
  for (const entry of tracked.values()) {
    const known = rows.get(entry.runId);
    if (!known && !entry.local && entry !== current) continue; // a bad id typed in the URL stays out
    rows.set(entry.runId, {
      runId: entry.runId,
      flow: entry.flowSlug ?? known?.flow ?? "…",
      status: entry.problem ? "unknown" : entry.run.events.length || !known ? entry.run.status : known.status,
      startedAt: entry.run.startedAt ?? known?.startedAt ?? entry.openedAt,
    });
  }
  return [...rows.values()]
    .sort((a, b) => (Date.parse(b.startedAt) || 0) - (Date.parse(a.startedAt) || 0))
    .slice(0, RECENT_SHOWN);
}

function renderRecent() {
  const rows = recentRows();
  const focused = document.activeElement?.closest?.("#recent-runs a")?.dataset.runId;
  const items = rows.map((r) => {
    const li = document.createElement("li");
    const a = document.createElement("a");
    a.href = `${location.pathname}?run=${encodeURIComponent(r.runId)}`;
    a.dataset.runId = r.runId;
    a.dataset.status = r.status;
    if (current?.runId === r.runId) a.setAttribute("aria-current", "page");
    const label = RUN_STATUS_LABELS[r.status] ?? (r.status === "unknown" ? "Unavailable" : r.status);
    a.setAttribute("aria-label", `${r.flow}, ${label.toLowerCase()}, run ${shortId(r.runId)}, started ${formatAgo(r.startedAt)}`);
    const span = (cls, text) => Object.assign(document.createElement("span"), { className: cls, textContent: text });
    a.append(span("dot", ""), span("flow", r.flow), span("status", label), span("rid", shortId(r.runId)), span("when", formatAgo(r.startedAt)));
    a.lastChild.dataset.at = r.startedAt ?? "";
    li.append(a);
    return li;
  });
  ui.recent.replaceChildren(...items);
  ui.recentEmpty.hidden = rows.length > 0;
  if (focused) ui.recent.querySelector(`a[data-run-id="${CSS.escape(focused)}"]`)?.focus();
}

function tickRecentTimes() {
  for (const span of ui.recent.querySelectorAll(".when")) span.textContent = formatAgo(span.dataset.at);
}

// ---- wiring -----------------------------------------------------------------------------------------

ui.form.addEventListener("submit", (e) => {
  e.preventDefault();
  submit();
});
document.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey) && !e.altKey) {
    e.preventDefault();
    submit();
  } else if (e.key === "Escape" && !ui.tip.hidden) {
    hideTip();
  }
});
ui.select.addEventListener("change", () => {
  showStartError(null);
  renderFlow();
});
ui.editor.addEventListener("input", () => {
  if (ui.select.value) drafts.set(ui.select.value, ui.editor.value);
  if (!ui.inputError.hidden && parseInput().ok) clearInputError();
});
ui.resetInput.addEventListener("click", () => {
  const flow = flows.get(ui.select.value);
  if (!flow) return;
  drafts.delete(flow.slug);
  ui.editor.value = exampleText(flow);
  clearInputError();
  ui.editor.focus();
});
ui.showFailed.addEventListener("click", () => {
  if (current?.failedStep) dag.focus(current.failedStep);
});
ui.copyOutput.addEventListener("click", async () => {
  try {
    await navigator.clipboard.writeText(ui.output.textContent);
    ui.copyOutput.textContent = "Copied";
  } catch {
    ui.copyOutput.textContent = "Copy failed";
  }
  setTimeout(() => (ui.copyOutput.textContent = "Copy"), 1500);
});
ui.zoomIn.addEventListener("click", () => dag.zoomBy(ZOOM_STEP));
ui.zoomOut.addEventListener("click", () => dag.zoomBy(1 / ZOOM_STEP));
ui.zoomFit.addEventListener("click", () => dag.zoomFit());
ui.dagScroll.addEventListener("scroll", hideTip, { passive: true });
ui.refreshRuns.addEventListener("click", refreshRecent);
ui.recent.addEventListener("click", (e) => {
  const a = e.target.closest("a[data-run-id]");
  if (!a || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
  e.preventDefault();
  openRun(a.dataset.runId);
  ui.view.focus({ preventScroll: true });
  if (stacked()) ui.view.scrollIntoView({ block: "start" });
});
window.addEventListener("popstate", () => routeFromUrl());
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible") refreshRecent();
});

if (/Mac|iPhone|iPad/.test(navigator.platform ?? "")) {
  for (const k of document.querySelectorAll("kbd[data-mod]")) k.textContent = "⌘";
}

// One column (the CSS breakpoint): the run view sits below the form, out of sight.
const stacked = () => window.matchMedia("(max-width: 860px)").matches;

function routeFromUrl() {
  const runId = new URLSearchParams(location.search).get("run");
  if (runId) openRun(runId, { push: false });
  else if (current) closeRun();
}

function tick() {
  const state = client.state;
  if (ui.conn.dataset.state !== state) {
    ui.conn.dataset.state = state;
    ui.connText.textContent = CONN_LABELS[state] ?? state;
  }
  if (!current) return;
  const now = serverNow();
  renderElapsed();
  for (const [slug] of dag.nodes) {
    const st = current.run.step(slug);
    if (st.status !== "started" && st.status !== "retrying") continue;
    const look = stepLook(st, current.timing, stepOptions(slug), now);
    dag.updateSub(slug, look);
    if (dag.selected === slug) {
      const dd = ui.detail.querySelector('[data-live="duration"]');
      if (dd && look.duration !== null) dd.textContent = formatDuration(look.duration);
    }
  }
}

setInterval(tick, TICK);
setInterval(tickRecentTimes, 5_000);
setInterval(() => {
  if (document.visibilityState === "visible") refreshRecent();
}, RECENT_REFRESH);

await loadFlows();
routeFromUrl();
refreshRecent();
