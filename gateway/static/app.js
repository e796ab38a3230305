// PGFlow live page: pick a flow, start runs, watch each one live (DAG, events, output).
//
// Everything live comes from the JS client (/client.js): one FlowRun per run, followed over the
// client's one websocket. The page keeps every run it has seen (state.js, so several runs go on
// at once and switching between them is instant) and draws the one that is open (views.js).
// This module wires them: HTTP reads, the client's runs, the URL, and the controls.
// HTTP it reads itself: GET /flows, GET /flows/{slug}, GET /runs?limit=20; a run's steering
// (cancel, retry, an input step's answer) goes through the client's FlowRun, which follows a
// retried run on. Every URL is relative to the gateway's base (client.url), so the page works
// under a prefix too.

import { createClient } from "../client.js";
import { prettyJson } from "./format.js";
import { formModel, readForm, readValues, refusalErrors } from "./inputform.js";
import { announcement, answerOf, PageState, parseInput, steerOutcome } from "./state.js";
import { PageView } from "./views.js";

const RECENT_LIMIT = 20; // runs asked of GET /runs
const RECENT_REFRESH = 20_000; // ms between GET /runs while the tab is visible
const TICK = 250; // ms between live duration updates
const ZOOM_STEP = 1.25;

// A token for gateways that require one (see the README): localStorage "pgflow.token".
const token = (() => {
  try {
    return localStorage.getItem("pgflow.token") || undefined;
  } catch {
    return undefined;
  }
})();
const client = createClient(token ? { token } : {});

const state = new PageState();
const view = new PageView(document, state);
const { ui, dag } = view;
const graphs = new Map(); // slug -> Promise<graph>, for previews

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
  const known = state.flows.get(slug);
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
function track(run, options) {
  const entry = state.track(run, options);
  run.on("*", (e) => onEvent(entry, e));
  watchOutcome(entry);
  return entry;
}

// A run that can no longer be followed is a problem the view shows. Its outcome is asked again
// after a retry: the retried run has a new one.
function watchOutcome(entry) {
  entry.run.result().catch((err) => {
    // one that failed or was cancelled is drawn from its events
    if (err?.code === "run_failed" || err?.code === "run_cancelled") return;
    entry.problem = err;
    if (entry === state.current) view.renderProblem();
    view.renderRecent();
  });
}

function onEvent(entry, e) {
  state.apply(entry, e);
  if (entry === state.current && e.event.startsWith("task:")) {
    // an element of a map step: drawn with the others of its burst, on the next frame
    if (e.step_slug) view.queueTasks(e.step_slug);
  } else if (entry === state.current) {
    view.flushTasks(); // the task events before this one first: the page keeps their order
    if (e.step_slug && !dag.has(e.step_slug) && (entry.run.graph || entry.graphFailed)) view.drawGraph(entry);
    const changed = e.step_slug && !e.event.startsWith("run:") ? e.step_slug : null; // null: any step may have
    view.paintSteps(changed);
    view.refreshTip(changed);
    view.syncTimeline();
    view.renderRunState();
    if (e.step_slug && dag.selected === e.step_slug && changed) {
      if (e.event === "step:stream") view.renderStream();
      else view.renderDetail();
    } else if (!changed && dag.selected) {
      view.renderDetail(); // a run's end, cancel or retry changes its unfinished steps too
    }
    // a question for the person watching: its form shows unless they are looking at another step
    if (e.event === "step:waiting" && !dag.selected && dag.has(e.step_slug)) dag.select(e.step_slug);
    const text = announcement(entry, e);
    if (text) view.announce(text);
  }
  if (e.event.startsWith("run:")) {
    view.renderRecent();
    if (e.event !== "run:started" && e.event !== "run:retried") setTimeout(refreshRecent, 400);
  }
}

// ---- steering: cancel, retry, answer an input step -----------------------------------------------

/**
 * Cancels or retries the open run; the outcome shows next to the buttons (and is announced).
 * The events tell the rest: run:cancelled, or run:retried and the re-run steps (the client
 * follows a retried run on).
 */
async function steer(kind) {
  const entry = state.current;
  if (!entry || entry.action.busy) return;
  entry.action = { busy: kind, message: null, failed: false };
  view.renderControls();
  let err = null;
  try {
    await (kind === "cancel" ? entry.run.cancel() : entry.run.retry());
  } catch (e) {
    err = e;
  }
  const outcome = steerOutcome(kind, err);
  entry.action = { busy: null, message: outcome.text, failed: !outcome.ok };
  if (!err && kind === "retry") {
    entry.problem = null;
    watchOutcome(entry);
  }
  if (entry === state.current) {
    view.renderControls();
    view.announce(outcome.text);
  }
}

/** An input step's form was submitted: check what can be checked here, then POST the answer. */
async function answer(form, submitter) {
  const entry = state.current;
  const slug = form.dataset.inputForm;
  if (!entry || !slug) return;
  const ans = answerOf(entry, slug);
  if (ans.busy) return;
  const prompt = entry.prompts.get(slug);
  const model = formModel(prompt ? prompt.schema : entry.run.step(slug).schema);
  const raw = readForm(form, submitter);
  if (model.kind !== "boolean") ans.draft = raw;
  const read = readValues(model, raw);
  const redraw = () => {
    if (entry === state.current && dag.selected === slug) view.renderDetail();
  };
  // refused (here or by the server): the first field named gets the focus, its error read with it
  const focusError = () => {
    if (entry === state.current && dag.selected === slug) ui.detail.querySelector('.input-form [aria-invalid="true"]')?.focus();
  };
  if (!read.ok) {
    Object.assign(ans, { errors: read.errors, message: null });
    redraw();
    focusError();
    return;
  }
  Object.assign(ans, { busy: true, errors: [], message: "Sending the answer…" });
  redraw();
  let err = null;
  try {
    await entry.run.submit(slug, read.value);
  } catch (e) {
    err = e;
  }
  const outcome = steerOutcome("input", err);
  // sent: the form stays disabled until the step's step:completed replaces it
  Object.assign(ans, { busy: outcome.ok, message: outcome.text, errors: err?.status === 400 ? refusalErrors(err) : [] });
  redraw();
  focusError();
  if (entry === state.current) {
    const errors = ans.errors.map((e) => (e.path ? `${e.path}: ${e.message}` : e.message)).join(" ");
    view.announce(errors ? `${outcome.text} ${errors}` : outcome.text);
  }
}

/** Opens a run by id: one this tab follows, or attaches to it (replaying its events). */
function openRun(runId, { push = true } = {}) {
  let entry = state.tracked.get(runId);
  if (!entry) {
    const listed = state.listed.get(runId);
    const flowSlug = listed?.flow_slug;
    let run;
    try {
      run = client.getRun(runId, { flowSlug, flowVersion: listed?.version });
    } catch (err) {
      view.showStartError(err);
      return;
    }
    entry = track(run, { flowSlug: flowSlug ?? null });
  }
  if (push) {
    const url = `${location.pathname}?run=${encodeURIComponent(runId)}`;
    if (`${location.pathname}${location.search}` !== url) history.pushState({ run: runId }, "", url);
  }
  openEntry(entry);
}

function openEntry(entry) {
  state.current = entry;
  ui.view.dataset.runId = entry.runId;
  view.hideTip();
  view.renderTimeline();
  if (entry.run.graph) view.drawGraph(entry);
  else {
    dag.clear();
    view.showDagMessage("Loading the flow's graph…");
    whenKnown(entry).then(() => entry.run.loadGraph()).then(() => {
      entry.flowSlug = entry.run.flowSlug;
      if (state.current === entry) {
        view.drawGraph(entry);
        view.renderRunState();
        view.renderDetail();
      }
      view.renderRecent();
    }, (err) => {
      entry.graphFailed = true;
      if (state.current !== entry || entry.problem) return;
      // no graph: still draw the steps the events name, without edges
      view.drawGraph(entry);
      if (dag.nodes.size === 0) view.showDagMessage(`The flow's graph could not be loaded: ${err.message}`);
    });
  }
  view.renderRunState();
  view.renderDetail();
  view.renderRecent();
  if (entry.problem) view.renderProblem();
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
  state.current = null;
  delete ui.view.dataset.runId;
  ui.timelineBody.replaceChildren();
  view.renderRunState();
  view.renderRecent();
  showPreview();
}

// ---- flow picker and preview -------------------------------------------------------------------

async function loadFlows() {
  ui.flowsError.hidden = true;
  try {
    state.setFlows(await api("/flows"));
  } catch (err) {
    ui.flowsError.textContent = `Could not load the flows: ${err.message}`;
    ui.flowsError.hidden = false;
  }
  ui.select.replaceChildren();
  if (state.flows.size === 0) {
    ui.select.append(new Option(ui.flowsError.hidden ? "No flows defined" : "Flows unavailable", ""));
    ui.select.disabled = true;
    ui.runButton.disabled = true;
    renderFlow();
    return;
  }
  for (const f of state.flows.values()) ui.select.append(new Option(f.slug, f.slug));
  const wanted = new URLSearchParams(location.search).get("flow");
  if (wanted && state.flows.has(wanted)) ui.select.value = wanted;
  ui.select.disabled = false;
  ui.runButton.disabled = false;
  renderFlow();
}

function exampleText(flow) {
  return prettyJson(flow?.example_input ?? {});
}

function renderFlow() {
  const flow = state.flows.get(ui.select.value);
  ui.description.textContent = flow ? flow.description || "No description." : "";
  ui.editor.value = flow ? state.drafts.get(flow.slug) ?? exampleText(flow) : "";
  view.clearInputError();
  if (!state.current) showPreview();
}

async function showPreview() {
  const slug = ui.select.value;
  view.renderRunState();
  view.renderDetail();
  if (!slug) {
    view.showDagMessage(state.flows.size ? "" : "No flows to show.", { clear: true });
    return;
  }
  try {
    const graph = await graphFor(slug);
    if (state.current || ui.select.value !== slug) return;
    view.drawPreview(graph);
    view.renderDetail();
  } catch (err) {
    if (state.current || ui.select.value !== slug) return;
    view.showDagMessage(`The graph of ${slug} could not be loaded: ${err.message}`, { clear: true });
  }
}

// ---- starting runs -------------------------------------------------------------------------------

let starting = false;
async function submit() {
  const slug = ui.select.value;
  if (!slug || starting) return;
  const parsed = parseInput(ui.editor.value);
  if (!parsed.ok) {
    view.showInputError(parsed.message);
    ui.editor.focus();
    return;
  }
  view.clearInputError();
  view.showStartError(null);
  starting = true;
  view.setStarting(true);
  try {
    const run = await client.startFlow(slug, parsed.value);
    const entry = track(run, { local: true, flowSlug: slug });
    openRun(entry.runId);
    view.announce(`Started a run of ${slug}.`);
    if (stacked()) ui.view.scrollIntoView({ block: "start", behavior: "smooth" });
  } catch (err) {
    view.showStartError(err);
  } finally {
    starting = false;
    view.setStarting(false);
  }
}

// ---- recent runs ------------------------------------------------------------------------------------

async function refreshRecent() {
  try {
    state.setListed(await api(`/runs?limit=${RECENT_LIMIT}`));
    ui.recentError.hidden = true;
  } catch (err) {
    ui.recentError.textContent = `Could not list past runs: ${err.message}`;
    ui.recentError.hidden = false;
  }
  view.renderRecent();
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
    view.hideTip();
  }
});
ui.select.addEventListener("change", () => {
  view.showStartError(null);
  renderFlow();
});
ui.editor.addEventListener("input", () => {
  if (ui.select.value) state.drafts.set(ui.select.value, ui.editor.value);
  if (!ui.inputError.hidden && parseInput(ui.editor.value).ok) view.clearInputError();
});
ui.resetInput.addEventListener("click", () => {
  const flow = state.flows.get(ui.select.value);
  if (!flow) return;
  state.drafts.delete(flow.slug);
  ui.editor.value = exampleText(flow);
  view.clearInputError();
  ui.editor.focus();
});
// No confirmation before Cancel: a cancelled run is not lost, Retry runs it on.
ui.cancelRun.addEventListener("click", () => steer("cancel"));
ui.retryRun.addEventListener("click", () => steer("retry"));
ui.detail.addEventListener("submit", (e) => {
  const form = e.target.closest("form[data-input-form]");
  if (!form) return;
  e.preventDefault();
  answer(form, e.submitter);
});
// What is typed into an answer's form is kept: the panel is redrawn as events come in.
for (const type of ["input", "change"]) {
  ui.detail.addEventListener(type, (e) => {
    const form = e.target.closest?.("form[data-input-form]");
    if (!form || !state.current || form.dataset.kind === "boolean") return;
    answerOf(state.current, form.dataset.inputForm).draft = readForm(form);
  });
}
ui.showFailed.addEventListener("click", () => {
  if (state.current?.failedStep) dag.focus(state.current.failedStep);
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
ui.dagScroll.addEventListener("scroll", () => view.hideTip(), { passive: true });
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
  else if (state.current) closeRun();
}

setInterval(() => {
  view.renderConnection(client.state);
  view.tickSteps();
}, TICK);
setInterval(() => view.tickRecentTimes(), 5_000);
setInterval(() => {
  if (document.visibilityState === "visible") refreshRecent();
}, RECENT_REFRESH);

await loadFlows();
routeFromUrl();
refreshRecent();
