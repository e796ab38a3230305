// The live page's views: they draw the PageState into index.html's elements (the run header,
// graph, timeline, step detail, tooltip, recent runs, connection badge) and hold no state of
// their own. The DOM builders they use live in panels.js, the graph in dag.js.

import { DagView } from "./dag.js";
import { formatAgo, formatClock, formatDuration, prettyJson, shortId, stepLook } from "./format.js";
import {
  eventRow, foldRow, followStream, placeTip, stepDetail, tipContent, updateFoldRow, updateStream, updateTasks,
} from "./panels.js";
import {
  cancelledText, CONN_LABELS, documentTitle, eventCount, failureTail, needsInput, problemText, runControls,
  runStatusLabel, stepStream,
} from "./state.js";

/** @typedef {import("./state.js").PageState} PageState */
/** @typedef {import("./state.js").Entry} Entry */

const FRESH = 3000; // ms: an event younger than this flashes in the timeline (a replay does not)

/** @param {Document} doc */
function elements(doc) {
  const $ = (/** @type {string} */ id) => /** @type {any} */ (doc.getElementById(id));
  return {
    form: $("run-form"), select: $("flow-select"), description: $("flow-description"), flowsError: $("flows-error"),
    editor: $("input-editor"), inputError: $("input-error"), resetInput: $("reset-input"),
    runButton: $("run-button"), startError: $("start-error"),
    view: $("run-view"), eyebrow: $("run-eyebrow"), title: $("run-title"), subtitle: $("run-subtitle"),
    meta: $("run-meta"), runId: $("run-id"), started: $("run-started"), elapsed: $("run-elapsed"),
    badge: $("run-status"), badgeText: $("run-status-text"),
    cancelRun: $("cancel-run"), retryRun: $("retry-run"), runAction: $("run-action"),
    cancelledCard: $("run-cancelled"), cancelledText: $("run-cancelled-text"),
    dag: $("dag"), dagScroll: $("dag-scroll"), dagEmpty: $("dag-empty"), tip: $("dag-tip"),
    zoomIn: $("zoom-in"), zoomOut: $("zoom-out"), zoomFit: $("zoom-fit"),
    errorCard: $("run-error"), errorSummary: $("run-error-summary"), errorText: $("run-error-text"), showFailed: $("show-failed-step"),
    outputCard: $("output-card"), output: $("run-output"), copyOutput: $("copy-output"),
    detail: $("step-detail-body"),
    timelineBody: $("timeline-body"), timelineScroll: $("timeline-scroll"), timelineEmpty: $("timeline-empty"), timelineCount: $("timeline-count"),
    recent: $("recent-runs"), recentEmpty: $("recent-empty"), recentError: $("recent-error"), refreshRuns: $("refresh-runs"),
    conn: $("conn"), connText: $("conn-text"), announcer: $("announcer"),
  };
}

export class PageView {
  /**
   * @param {Document} doc
   * @param {PageState} state
   */
  constructor(doc, state) {
    this.doc = doc;
    this.state = state;
    this.ui = elements(doc);
    /** @type {string | null} the step the tooltip is about, while it shows */
    this.tipSlug = null;
    /** @type {Map<object, HTMLTableRowElement>} the open run's fold rows (timeline.js) -> their <tr> */
    this.foldRows = new Map();
    /** @type {Set<string>} map steps whose elements moved since the last frame */
    this.pendingTasks = new Set();
    /** @type {number | null} the animation frame that draws them */
    this.taskFrame = null;
    const ui = this.ui;
    this.dag = new DagView(ui.dag, ui.dagScroll, {
      onSelect: () => this.renderDetail(),
      onHover: (/** @type {string | null} */ slug, /** @type {Element} */ g) => this.showTip(slug, g),
      onZoom: (/** @type {number} */ scale, /** @type {boolean} */ fit) => {
        ui.zoomFit.textContent = `${Math.round(scale * 100)}%`;
        ui.zoomFit.setAttribute("aria-label", `Zoom ${Math.round(scale * 100)}%${fit ? ", fitted" : ""}: fit to width`);
        ui.zoomFit.setAttribute("aria-pressed", String(fit));
      },
    });
  }

  // ---- graph ----

  /** @param {Entry} entry */
  drawGraph(entry) {
    const run = entry.run;
    const graph = run.graph ?? { slug: entry.flowSlug, steps: [], output_step: null };
    this.ui.dagEmpty.hidden = true;
    this.dag.setGraph(graph, [...run.steps.keys()]);
    this.paintSteps();
  }

  /** A flow's graph with no run: every step not started. */
  drawPreview(graph) {
    this.ui.dagEmpty.hidden = true;
    this.dag.setGraph(graph);
    for (const s of graph.steps ?? []) {
      const o = s.kind === "input" ? "asks for input"
        : s.kind === "map" ? `for each of ${s.over === "run" ? "the input" : s.over ?? "an array"}`
        : s.max_attempts ? `up to ${s.max_attempts} ${s.max_attempts === 1 ? "try" : "tries"}` : "not started";
      this.dag.update(s.slug, { status: "created", attempt: null, sub: o, pill: null, label: `${s.slug}: not started` });
    }
  }

  /** The graph's place holds a message instead (loading, an error, no flows). */
  showDagMessage(text, { clear = false } = {}) {
    if (clear) this.dag.clear();
    this.ui.dagEmpty.textContent = text;
    this.ui.dagEmpty.hidden = false;
  }

  /** @param {string} slug */
  stepOptions(slug) {
    return this.state.stepOptions(slug, this.ui.select.value);
  }

  /** Repaints one step, or all (their states change together when a run fails). */
  paintSteps(slug = null) {
    const current = this.state.current;
    if (!current) return;
    const now = this.state.serverNow();
    const slugs = slug ? [slug] : [...this.dag.nodes.keys()];
    for (const s of slugs) {
      const look = stepLook(current.run.step(s), current.timing, this.stepOptions(s), now);
      look.culprit = current.run.status === "failed" && s === current.failedStep;
      this.dag.update(s, look);
    }
  }

  // ---- run header, result ----

  renderRunState() {
    const { ui, state } = this;
    const entry = state.current;
    ui.badge.hidden = !entry || (entry.problem && entry.run.events.length === 0);
    ui.meta.hidden = !entry;
    this.doc.title = documentTitle(entry);
    this.renderControls();
    if (!entry) {
      ui.eyebrow.textContent = "Preview";
      const flow = state.flows.get(ui.select.value);
      ui.title.textContent = flow ? flow.slug : "Pick a flow";
      ui.subtitle.hidden = false;
      ui.subtitle.textContent = flow
        ? "Its steps are drawn below. Press Run to start a run and watch it live."
        : "Choose a flow on the left to see its steps.";
      ui.errorCard.hidden = true;
      ui.outputCard.hidden = true;
      ui.cancelledCard.hidden = true;
      ui.timelineEmpty.hidden = false;
      ui.timelineEmpty.textContent = "Events appear here as soon as a run starts.";
      ui.timelineCount.textContent = "";
      return;
    }
    const run = entry.run;
    ui.eyebrow.textContent = entry.local ? "Run started here" : "Run";
    ui.title.textContent = entry.flowSlug ?? "Run";
    ui.subtitle.hidden = true;
    ui.runId.textContent = entry.runId;
    const startedIso = run.startedAt ?? state.listed.get(entry.runId)?.started_at ?? null;
    ui.started.textContent = startedIso ? formatClock(startedIso) : "—";
    ui.badge.dataset.status = run.status;
    // still running, but stopped at a question only a person can answer: the header says so
    const asking = needsInput(entry);
    ui.badge.dataset.waiting = String(asking);
    ui.badgeText.textContent = asking ? "Waiting for input" : runStatusLabel(run.status);
    this.renderElapsed();

    const count = run.events.length;
    ui.timelineEmpty.hidden = count > 0;
    ui.timelineEmpty.textContent = "Waiting for the first event…";
    ui.timelineCount.textContent = eventCount(count);

    ui.outputCard.hidden = run.status !== "completed";
    if (run.status === "completed") {
      const text = prettyJson(run.output);
      if (ui.output.textContent !== text) ui.output.textContent = text;
    }
    ui.cancelledCard.hidden = run.status !== "cancelled";
    if (run.status === "cancelled") {
      const cancelled = run.events.findLast((/** @type {any} */ e) => e.event === "run:cancelled");
      ui.cancelledText.textContent = cancelledText(cancelled?.reason);
    }
    ui.errorCard.hidden = run.status !== "failed";
    if (run.status === "failed") {
      const slug = entry.failedStep;
      // a map step's elements have the attempts, each its own: its error names the one that failed
      const attempts = slug && run.step(slug).kind !== "map" ? run.step(slug).attempt : null;
      ui.errorSummary.replaceChildren(
        "Step ", Object.assign(this.doc.createElement("strong"), { textContent: slug ?? "?" }), failureTail(attempts),
      );
      ui.errorText.textContent = run.error ?? "";
      ui.showFailed.hidden = !slug || !this.dag.has(slug);
    }
  }

  /** The run's Cancel / Retry buttons, and how the last one went. */
  renderControls() {
    const { ui } = this;
    const entry = this.state.current;
    const show = runControls(entry);
    const action = entry?.action ?? { busy: null, message: null, failed: false };
    ui.cancelRun.hidden = !show.cancel;
    ui.retryRun.hidden = !show.retry;
    ui.cancelRun.disabled = action.busy !== null;
    ui.retryRun.disabled = action.busy !== null;
    for (const [button, kind] of [[ui.cancelRun, "cancel"], [ui.retryRun, "retry"]]) {
      if (action.busy === kind) button.setAttribute("aria-busy", "true");
      else button.removeAttribute("aria-busy");
    }
    const text = action.busy === "cancel" ? "Cancelling…" : action.busy === "retry" ? "Retrying…" : action.message ?? "";
    if (ui.runAction.textContent !== text) ui.runAction.textContent = text;
    ui.runAction.dataset.failed = String(action.failed && !action.busy);
  }

  renderElapsed() {
    const current = this.state.current;
    if (!current) return;
    const t = current.timing;
    this.ui.elapsed.textContent = t.runStart === null ? "—" : formatDuration((t.runEnd ?? this.state.serverNow()) - t.runStart);
  }

  /** The open run could not be followed: say why, in the graph's place if it has no events. */
  renderProblem() {
    const current = this.state.current;
    const err = current?.problem;
    if (!current || !err) return;
    this.renderRunState();
    const what = problemText(err);
    this.ui.subtitle.hidden = false;
    this.ui.subtitle.textContent = what;
    if (current.run.events.length === 0) this.showDagMessage(what, { clear: true });
  }

  // ---- timeline, step details, tooltip ----

  /** Redraws the timeline from the open run's rows. */
  renderTimeline() {
    const { ui } = this;
    ui.timelineBody.replaceChildren();
    this.foldRows.clear();
    const timeline = this.state.current?.timeline;
    if (!timeline) return;
    timeline.reset();
    this.syncTimeline(false);
    ui.timelineScroll.scrollTop = ui.timelineScroll.scrollHeight;
  }

  /**
   * Brings the timeline up to the open run's rows: new ones appended, the fold rows that took
   * more task events updated in place. O(rows changed), however many events they stand for.
   * @param {boolean} [live] false: a redraw, where no row flashes as new
   */
  syncTimeline(live = true) {
    const current = this.state.current;
    if (!current) return;
    const { added, updated } = current.timeline.take();
    if (added.length === 0 && updated.length === 0) return;
    const scroller = this.ui.timelineScroll;
    const atBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 24;
    const runStart = current.timing.runStart;
    const now = this.state.serverNow();
    for (const fold of updated) {
      const tr = this.foldRows.get(fold);
      if (tr) updateFoldRow(tr, fold, runStart);
    }
    for (const row of added) {
      if (row.kind === "fold") {
        const tr = foldRow(row, runStart);
        this.foldRows.set(row, tr);
        this.ui.timelineBody.appendChild(tr);
      } else {
        // a replayed event is old news: only one that just happened flashes
        this.ui.timelineBody.appendChild(eventRow(row.event, runStart, live && now - Date.parse(row.event.at) < FRESH));
      }
    }
    if (live && added.length > 0 && atBottom) scroller.scrollTop = scroller.scrollHeight;
  }

  /**
   * An element of map step `slug` moved. Thousands can come in a burst (a replay, a fast map):
   * they are drawn together on the next frame, not one by one.
   * @param {string} slug
   */
  queueTasks(slug) {
    this.pendingTasks.add(slug);
    this.taskFrame ??= requestAnimationFrame(() => this.flushTasks());
  }

  /**
   * Draws what the queued task events changed: the map nodes, their tooltip and details, the
   * timeline's fold rows, the event count. Called by the frame, and before any other event is
   * drawn so the page keeps the events' order.
   */
  flushTasks() {
    if (this.taskFrame !== null) cancelAnimationFrame(this.taskFrame);
    this.taskFrame = null;
    const slugs = [...this.pendingTasks];
    this.pendingTasks.clear();
    const current = this.state.current;
    if (!current || slugs.length === 0) return;
    for (const slug of slugs) {
      this.paintSteps(slug);
      this.refreshTip(slug);
      if (this.dag.selected === slug && !updateTasks(this.ui.detail, current.run.step(slug))) this.renderDetail();
    }
    this.syncTimeline();
    this.renderRunState();
  }

  /** @param {string} slug */
  stepContext(slug) {
    const current = this.state.current;
    return {
      slug,
      options: this.stepOptions(slug) ?? {},
      state: current ? current.run.step(slug) : null,
      timing: current?.timing ?? null,
      now: this.state.serverNow(),
      prompt: current?.prompts.get(slug) ?? null,
      answer: current?.answers.get(slug) ?? null,
    };
  }

  renderDetail() {
    const body = this.ui.detail;
    // The same stream's text stays where the reader scrolled it; another follows its end.
    const textOf = () => {
      const pre = body.querySelector('[data-testid="step-stream-text"]');
      return pre && { pre, key: `${pre.closest("[data-step]")?.dataset.step}|${pre.dataset.attempt}` };
    };
    const old = textOf();
    const kept = old && old.pre.scrollHeight - old.pre.scrollTop - old.pre.clientHeight >= 24
      ? { key: old.key, top: old.pre.scrollTop } : null; // read now: a detached element has no scroll
    // a redraw keeps the focus of a control in it (a field of an answer's form, say)
    const focusedId = body.contains(this.doc.activeElement) ? this.doc.activeElement?.id : null;
    body.replaceChildren(stepDetail(this.dag.selected ? this.stepContext(this.dag.selected) : null));
    if (focusedId) this.doc.getElementById(focusedId)?.focus({ preventScroll: true });
    followStream(body);
    const now = textOf();
    if (now && kept && now.key === kept.key) now.pre.scrollTop = kept.top;
  }

  /**
   * The selected step streamed more: its text grows in place (the rest of the detail is as it
   * was), or the detail is drawn anew when the stream changed shape (its first chunk, a retry's).
   */
  renderStream() {
    const slug = this.dag.selected;
    const current = this.state.current;
    if (!slug || !current) return;
    if (!updateStream(this.ui.detail, stepStream(current.run.step(slug)))) this.renderDetail();
  }

  /**
   * @param {string | null} slug
   * @param {Element} g
   */
  showTip(slug, g) {
    if (!slug) return this.hideTip();
    this.tipSlug = slug;
    this.ui.tip.replaceChildren(tipContent(this.stepContext(slug)));
    this.ui.tip.hidden = false;
    placeTip(this.ui.tip, g);
  }

  hideTip() {
    this.tipSlug = null;
    this.ui.tip.hidden = true;
  }

  /**
   * The open tooltip shows its step as it is now (a stream's count, a status that changed), if
   * it is about `slug` (any step for null).
   * @param {string | null} [slug]
   */
  refreshTip(slug = null) {
    const shown = this.tipSlug;
    if (this.ui.tip.hidden || !shown || (slug && slug !== shown)) return;
    const g = this.dag.nodes.get(shown)?.g;
    if (g?.isConnected) this.showTip(shown, g);
    else this.hideTip();
  }

  /** Live durations: the run's elapsed time and each running or retrying step's line. */
  tickSteps() {
    const current = this.state.current;
    if (!current) return;
    const now = this.state.serverNow();
    this.renderElapsed();
    const tipped = this.tipSlug ? current.run.step(this.tipSlug).status : null;
    if (tipped === "started" || tipped === "retrying" || tipped === "waiting") this.refreshTip(); // its duration, its countdown
    for (const [slug] of this.dag.nodes) {
      const st = current.run.step(slug);
      if (st.status !== "started" && st.status !== "retrying" && st.status !== "waiting") continue;
      const look = stepLook(st, current.timing, this.stepOptions(slug), now);
      this.dag.updateSub(slug, look);
      if (this.dag.selected === slug) {
        const dd = this.ui.detail.querySelector('[data-live="duration"]');
        if (dd && look.duration !== null) dd.textContent = formatDuration(look.duration);
      }
    }
  }

  // ---- recent runs, connection, announcements ----

  renderRecent() {
    const { ui, doc } = this;
    const rows = this.state.recentRows();
    const current = this.state.current;
    const focused = doc.activeElement?.closest?.("#recent-runs a")?.dataset.runId;
    const items = rows.map((r) => {
      const li = doc.createElement("li");
      const a = doc.createElement("a");
      a.href = `${location.pathname}?run=${encodeURIComponent(r.runId)}`;
      a.dataset.runId = r.runId;
      a.dataset.status = r.status;
      if (current?.runId === r.runId) a.setAttribute("aria-current", "page");
      const label = r.status === "unknown" ? "Unavailable" : runStatusLabel(r.status);
      a.setAttribute("aria-label", `${r.flow}, ${label.toLowerCase()}, run ${shortId(r.runId)}, started ${formatAgo(r.startedAt)}`);
      const span = (/** @type {string} */ cls, /** @type {string} */ text) => Object.assign(doc.createElement("span"), { className: cls, textContent: text });
      a.append(span("dot", ""), span("flow", r.flow), span("status", label), span("rid", shortId(r.runId)), span("when", formatAgo(r.startedAt)));
      /** @type {HTMLElement} */ (a.lastChild).dataset.at = r.startedAt ?? "";
      li.append(a);
      return li;
    });
    ui.recent.replaceChildren(...items);
    ui.recentEmpty.hidden = rows.length > 0;
    if (focused) ui.recent.querySelector(`a[data-run-id="${CSS.escape(focused)}"]`)?.focus();
  }

  tickRecentTimes() {
    for (const span of this.ui.recent.querySelectorAll(".when")) span.textContent = formatAgo(span.dataset.at);
  }

  /** @param {string} state the client's connection state */
  renderConnection(state) {
    const { conn, connText } = this.ui;
    if (conn.dataset.state === state) return;
    conn.dataset.state = state;
    connText.textContent = CONN_LABELS[/** @type {keyof typeof CONN_LABELS} */ (state)] ?? state;
  }

  /** @param {string} text */
  announce(text) {
    this.ui.announcer.textContent = "";
    setTimeout(() => (this.ui.announcer.textContent = text), 50);
  }

  // ---- the form ----

  /** @param {string} message */
  showInputError(message) {
    const { ui } = this;
    ui.inputError.textContent = message;
    ui.inputError.hidden = false;
    ui.editor.setAttribute("aria-invalid", "true");
  }

  clearInputError() {
    const { ui } = this;
    ui.inputError.hidden = true;
    ui.inputError.textContent = "";
    ui.editor.removeAttribute("aria-invalid");
  }

  /** @param {{message: string} | null} err */
  showStartError(err) {
    this.ui.startError.textContent = err ? `Could not start the run: ${err.message}` : "";
    this.ui.startError.hidden = !err;
  }

  /** @param {boolean} busy */
  setStarting(busy) {
    this.ui.runButton.disabled = busy;
    if (busy) this.ui.runButton.setAttribute("aria-busy", "true");
    else this.ui.runButton.removeAttribute("aria-busy");
  }
}
