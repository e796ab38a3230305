// The flow's DAG as SVG: layout from layout.js, one focusable node per step, coloured by status.
// The view knows nothing about runs: the page hands it each step's look (`update`) and hears
// which step the user picks (`onSelect`).

import { layoutGraph } from "./layout.js";

const SVG = "http://www.w3.org/2000/svg";
const TITLE_FONT = "600 13px";
const SUB_FONT = "500 11.5px";
const MIN_SCALE = 0.3;
const MAX_SCALE = 2;
const FIT_MIN_SCALE = 0.7; // fitting the width never shrinks text below ~9px: scroll instead
const FIT_HEIGHT_MIN_SCALE = 0.8; // a tall graph shrinks this far to show more, then scrolls
const NARROW = 480; // px of container (a phone): below it, a top-to-bottom layout may fit better
// The tag a step of a special kind wears on its top left corner (an output step's is top right).
const KIND_TAGS = { map: "MAP", http: "HTTP" };

// Status icons, drawn in a 12x12 box centred on (0, 0).
const ICONS = {
  created: `<circle class="icon" r="5"/>`,
  started: `<circle class="icon" r="5" opacity="0.25"/><path class="icon spinner" d="M0,-5 A5,5 0 0 1 5,0"/>`,
  retrying: `<path class="icon" d="M4.6,-1.8 A5,5 0 1 0 4.2,2.8"/><path class="icon-fill" d="M5.8,-5.2 L5.6,-0.6 L1.6,-2.4 Z"/>`,
  completed: `<circle class="icon-fill" r="6.5"/><path class="icon-mark" d="M-3,0.2 L-0.8,2.5 L3.2,-2.3"/>`,
  failed: `<circle class="icon-fill" r="6.5"/><path class="icon-mark" d="M-2.4,-2.4 L2.4,2.4 M2.4,-2.4 L-2.4,2.4"/>`,
  cancelled: `<circle class="icon" r="5"/><path class="icon" d="M-3.4,3.4 L3.4,-3.4"/>`,
  // an input step waiting for a person: a speech bubble, the question it asks
  waiting: `<path class="icon" d="M-5.5,-4.5 H5.5 V2.5 H0 L-3,5.5 V2.5 H-5.5 Z"/>`
    + `<circle class="icon-fill" cx="-2.5" cy="-1" r="0.9"/><circle class="icon-fill" cx="0" cy="-1" r="0.9"/>`
    + `<circle class="icon-fill" cx="2.5" cy="-1" r="0.9"/>`,
  // running and streaming: three bars that rise and fall in turn
  streaming: `<rect class="icon-fill bar" x="-5.5" y="-5" width="3" height="10" rx="1.5"/>`
    + `<rect class="icon-fill bar" x="-1.5" y="-5" width="3" height="10" rx="1.5"/>`
    + `<rect class="icon-fill bar" x="2.5" y="-5" width="3" height="10" rx="1.5"/>`,
};

let canvas;

function countPerLayer(graph) {
  const deps = new Map((graph.steps ?? []).map((s) => [s.slug, s.depends_on ?? []]));
  const depth = new Map();
  const depthOf = (slug, seen = new Set()) => {
    if (depth.has(slug)) return depth.get(slug);
    if (seen.has(slug) || !deps.has(slug)) return 0;
    seen.add(slug);
    const d = Math.max(-1, ...deps.get(slug).map((x) => depthOf(x, seen))) + 1;
    depth.set(slug, d);
    return d;
  };
  const counts = [];
  for (const slug of deps.keys()) counts[depthOf(slug)] = (counts[depthOf(slug)] ?? 0) + 1;
  return counts.filter(Boolean);
}
function textWidth(text, font) {
  canvas ??= document.createElement("canvas");
  const ctx = canvas.getContext("2d");
  ctx.font = `${font} ${getComputedStyle(document.body).fontFamily}`;
  return ctx.measureText(text).width;
}

function fitText(text, font, max) {
  if (textWidth(text, font) <= max) return text;
  let lo = 0;
  let hi = text.length;
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    if (textWidth(`${text.slice(0, mid)}…`, font) <= max) lo = mid;
    else hi = mid - 1;
  }
  return `${text.slice(0, lo)}…`;
}

function el(name, attrs = {}, parent) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) if (v != null) node.setAttribute(k, String(v));
  parent?.appendChild(node);
  return node;
}

export class DagView {
  /**
   * @param {SVGSVGElement} svg
   * @param {HTMLElement} scroller the element that scrolls the drawing
   * @param {{onSelect?: (slug: string|null) => void, onZoom?: (label: string) => void, tooltip?: HTMLElement}} hooks
   */
  constructor(svg, scroller, hooks = {}) {
    this.svg = svg;
    this.scroller = scroller;
    this.hooks = hooks;
    this.graph = null;
    this.nodes = new Map(); // slug -> {g, box, icon, title, sub, pill, pillText, layout}
    this.edges = []; // {from, to, path}
    this.looks = new Map(); // slug -> last look given to update()
    this.selected = null;
    this.zoom = null; // null = fit
    this.layout = null;
    this.layoutKey = null; // which candidate layout is drawn, to re-layout only when it changes
    this.compact = false; // nodes sized to their slug: second lines show the duration only
    this.lastWidth = 0;
    new ResizeObserver(() => this.onResize()).observe(this.scroller);
  }

  /** Draws `graph` ({steps, output_step}); `extra` are step slugs seen only in events. */
  setGraph(graph, extra = []) {
    this.graph = { ...graph, steps: [...(graph?.steps ?? [])] };
    for (const slug of extra) {
      if (!this.graph.steps.some((s) => s.slug === slug)) this.graph.steps.push({ slug, depends_on: [] });
    }
    this.zoom = null;
    this.looks.clear();
    this.selected = this.graph.steps.some((s) => s.slug === this.selected) ? this.selected : null;
    this.render();
    this.scroller.scrollTo(0, 0);
  }

  clear() {
    this.graph = null;
    this.nodes.clear();
    this.edges = [];
    this.looks.clear();
    this.selected = null;
    this.svg.replaceChildren();
    this.svg.removeAttribute("width");
    this.svg.removeAttribute("height");
  }

  has(slug) {
    return this.nodes.has(slug);
  }

  // Picks the layout for the scroller's width: {layout, compact, key}.
  choose() {
    const steps = this.graph.steps;
    const width = this.scroller.clientWidth;
    const narrow = width > 0 && width < NARROW;
    const titles = new Map(steps.map((s) => [s.slug, textWidth(s.slug, TITLE_FONT)]));
    const sub = textWidth("completed · 888 ms", SUB_FONT); // the usual longest second line
    // full nodes fit their slug and "completed · 1.2 s"; compact ones fit their slug, and
    // their second line shrinks to the duration (the icon tells the status)
    const sized = (min, room) => new Map([...titles].map(([slug, w]) => [slug, Math.round(Math.min(232, Math.max(min, w + 44, room)))]));
    const wide = sized(156, sub + 44);
    const compact = sized(104, 0);
    const tall = Math.max(0, ...countPerLayer(this.graph)) > 6; // a wide fan-out: pack it closer
    const base = narrow
      ? { nodeH: 52, layerGap: 44, nodeGap: tall ? 10 : 14, pad: 12 }
      : { nodeH: 54, layerGap: 64, nodeGap: tall ? 12 : 18, pad: 16 };
    // Columns left to right, with full nodes when they fit. On a phone, rows top to bottom
    // when that shows the graph larger (a chain, a diamond); a wide fan-out stays left to
    // right, with compact nodes, and scrolls down.
    const candidates = [{ widths: wide, compact: false, key: "LR" }];
    if (narrow) candidates.push({ widths: wide, compact: false, direction: "TB", layerGap: 36, key: "TB" });
    candidates.push({ widths: compact, compact: true, layerGap: narrow ? 36 : 48, key: "LR-compact" });
    if (narrow) candidates.push({ widths: compact, compact: true, direction: "TB", layerGap: 36, key: "TB-compact" });
    const avail = Math.max(1, width - 8);
    let best = null;
    let bestScale = -1;
    for (const c of candidates) {
      const layout = layoutGraph(this.graph, { ...base, ...c });
      const scale = Math.min(1, avail / layout.width);
      if (scale >= 0.9) return { layout, compact: c.compact, key: `${c.key}/${narrow}` };
      if (scale > bestScale + 0.02) {
        best = { layout, compact: c.compact, key: `${c.key}/${narrow}` };
        bestScale = scale;
      }
    }
    return best;
  }

  onResize() {
    const w = this.scroller.clientWidth;
    if (Math.abs(w - this.lastWidth) < 2) return;
    this.lastWidth = w;
    if (!this.graph) return;
    const choice = this.choose();
    if (choice.key !== this.layoutKey) this.render(choice);
    else this.applyScale();
  }

  render(choice = this.choose()) {
    this.lastWidth = this.scroller.clientWidth;
    const { layout } = choice;
    this.layout = layout;
    this.compact = choice.compact;
    this.layoutKey = choice.key;
    const focused = this.svg.contains(document.activeElement) ? document.activeElement.dataset.slug : null;

    const svg = this.svg;
    svg.replaceChildren();
    svg.setAttribute("viewBox", `0 0 ${layout.width} ${layout.height}`);
    svg.dataset.direction = layout.direction;
    const defs = el("defs", {}, svg);
    const hatch = el("pattern", { id: "hatch", width: 7, height: 7, patternUnits: "userSpaceOnUse", patternTransform: "rotate(45)" }, defs);
    el("rect", { class: "hatch-bg", width: 7, height: 7 }, hatch);
    el("line", { class: "hatch-line", x1: 0, y1: 0, x2: 0, y2: 7 }, hatch);
    for (const kind of ["", "done", "active"]) {
      const m = el("marker", {
        id: `arrow${kind ? `-${kind}` : ""}`, viewBox: "0 0 10 10", refX: 9.5, refY: 5,
        markerWidth: 8, markerHeight: 8, markerUnits: "userSpaceOnUse", orient: "auto",
      }, defs);
      el("path", { d: "M0,0.8 L10,5 L0,9.2 Z", class: `arrow ${kind}` }, m);
    }

    const edgeLayer = el("g", { class: "edges", "aria-hidden": "true" }, svg);
    this.edges = layout.edges.map((e) => ({
      ...e,
      el: el("path", { d: e.path, class: "edge", "marker-end": "url(#arrow)" }, edgeLayer),
    }));

    const nodeLayer = el("g", { class: "nodes" }, svg);
    this.nodes.clear();
    const outputStep = this.graph.output_step;
    const kinds = new Map(this.graph.steps.map((s) => [s.slug, s.kind]));
    for (const n of layout.nodes) {
      const x = Math.round(n.x);
      const y = Math.round(n.y);
      const g = el("g", {
        class: "node", transform: `translate(${x},${y})`, tabindex: 0, role: "button",
        "data-testid": `node-${n.slug}`, "data-slug": n.slug, "data-status": "created", "data-attempt": 0,
        "data-kind": kinds.get(n.slug) ?? "task", "aria-controls": "step-detail",
      }, nodeLayer);
      el("rect", { class: "halo", x: -1, y: -1, width: n.w + 2, height: n.h + 2, rx: 9 }, g);
      el("rect", { class: "box", width: n.w, height: n.h, rx: 8 }, g);
      el("rect", { class: "ring", x: -4.5, y: -4.5, width: n.w + 9, height: n.h + 9, rx: 12 }, g);
      const icon = el("g", { transform: `translate(17,${n.h / 2 - 8})` }, g);
      const title = el("text", { class: "title", x: 31, y: n.h / 2 - 3.5 }, g);
      title.textContent = fitText(n.slug, TITLE_FONT, n.w - 31 - 10);
      const sub = el("text", { class: "sub", x: 31, y: n.h / 2 + 13 }, g);
      const pill = el("g", { class: "pill", visibility: "hidden" }, g);
      const pillBg = el("rect", { class: "pill-bg", height: 16, rx: 8 }, pill);
      const pillText = el("text", { class: "pill-text", y: 11.5 }, pill);
      if (n.slug === outputStep) {
        // on the side no edge comes in: top right when edges enter from the left, else bottom
        const tagY = layout.direction === "TB" ? n.h - 7 : -8;
        const tag = el("g", { class: "out-tag-g", transform: `translate(${n.w - 52},${tagY})` }, g);
        el("rect", { class: "out-tag-bg", width: 44, height: 15, rx: 7.5 }, tag);
        el("text", { class: "out-tag", x: 22, y: 10.8, "text-anchor": "middle" }, tag).textContent = "OUTPUT";
      }
      const tag = KIND_TAGS[kinds.get(n.slug)];
      if (tag) {
        // a map runs once per element, an http step is a POST: worth telling before it runs
        const tagW = tag.length * 7 + 12;
        const kindTag = el("g", { class: "kind-tag-g", transform: "translate(8,-8)" }, g);
        kindTag.dataset.testid = `node-kind-${n.slug}`;
        el("rect", { class: "kind-tag-bg", width: tagW, height: 15, rx: 7.5 }, kindTag);
        el("text", { class: "kind-tag", x: tagW / 2, y: 10.8, "text-anchor": "middle" }, kindTag).textContent = tag;
      }
      const ref = { g, icon, title, sub, pill, pillBg, pillText, layout: n, iconStatus: null, bar: null };
      this.nodes.set(n.slug, ref);
      g.addEventListener("focus", () => this.select(n.slug));
      g.addEventListener("click", () => this.select(n.slug));
      g.addEventListener("keydown", (e) => this.onKey(e, n));
      g.addEventListener("pointerenter", () => this.hooks.onHover?.(n.slug, g));
      g.addEventListener("pointerleave", () => this.hooks.onHover?.(null, g));
      g.addEventListener("focus", () => this.hooks.onHover?.(n.slug, g));
      g.addEventListener("blur", () => this.hooks.onHover?.(null, g));
      const look = this.looks.get(n.slug);
      this.paint(n.slug, look ?? { status: "created", attempt: null, sub: "waiting", pill: null, label: n.slug });
    }
    this.paintEdges();
    if (this.selected) this.nodes.get(this.selected)?.g.classList.add("selected");
    this.applyScale();
    if (focused) this.nodes.get(focused)?.g.focus({ preventScroll: true }); // a re-layout keeps focus
  }

  /** Sets one step's look: {status, attempt, sub, pill, label, culprit, streaming, chunks}. */
  update(slug, look) {
    this.looks.set(slug, look);
    if (!this.nodes.has(slug)) return;
    this.paint(slug, look);
    this.paintEdges(slug);
  }

  /** Updates only the second line (live durations), without touching anything else. */
  updateSub(slug, { sub, subShort, label }) {
    const ref = this.nodes.get(slug);
    const look = this.looks.get(slug);
    if (!look || !ref) return;
    Object.assign(look, { sub, subShort, label });
    const text = this.fitSub(ref, look);
    if (ref.sub.textContent !== text) ref.sub.textContent = text;
    if (label && ref.g.getAttribute("aria-label") !== label) ref.g.setAttribute("aria-label", label);
  }

  paint(slug, look) {
    const ref = this.nodes.get(slug);
    const { g } = ref;
    g.dataset.status = look.status;
    g.dataset.attempt = String(look.attempt ?? 0);
    // streaming: still `started`, with chunks of its running attempt coming in
    if (look.streaming) {
      g.dataset.streaming = "true";
      g.dataset.chunks = String(look.chunks ?? 0);
    } else {
      delete g.dataset.streaming;
      delete g.dataset.chunks;
    }
    g.classList.toggle("culprit", Boolean(look.culprit));
    g.setAttribute("aria-label", look.label ?? slug);
    const icon = look.streaming ? "streaming" : look.status;
    if (ref.iconStatus !== icon) {
      ref.icon.innerHTML = ICONS[icon] ?? ICONS.created;
      ref.iconStatus = icon;
    }
    let pillW = 0;
    if (look.pill) {
      ref.pillText.textContent = look.pill;
      pillW = Math.ceil(textWidth(look.pill, "700 10.5px")) + 12;
      const x = ref.layout.w - pillW - 8;
      ref.pill.setAttribute("transform", `translate(${x},${ref.layout.h / 2 + 1.5})`);
      ref.pillBg.setAttribute("width", pillW);
      ref.pillText.setAttribute("x", 6);
      ref.pill.setAttribute("visibility", "visible");
    } else {
      ref.pill.setAttribute("visibility", "hidden");
    }
    ref.subRoom = ref.layout.w - 31 - (pillW ? pillW + 14 : 8);
    ref.sub.textContent = this.fitSub(ref, look);
    this.paintProgress(ref, look);
  }

  /**
   * A map step's progress bar along the node's bottom edge: the done part, then the failed part.
   * The numbers are in the node's second line and its label; the bar only shows them at a glance.
   */
  paintProgress(ref, look) {
    const { g } = ref;
    const p = look.progress;
    if (!p) {
      if (ref.bar) ref.bar.group.setAttribute("visibility", "hidden");
      delete g.dataset.tasks;
      delete g.dataset.tasksDone;
      delete g.dataset.tasksFailed;
      return;
    }
    const width = ref.layout.w - 20;
    if (!ref.bar) {
      const group = el("g", { class: "progress", transform: `translate(10,${ref.layout.h - 8})`, "aria-hidden": "true" }, g);
      ref.bar = {
        group,
        track: el("rect", { class: "progress-track", width, height: 3.5, rx: 1.75 }, group),
        done: el("rect", { class: "progress-done", width: 0, height: 3.5, rx: 1.75 }, group),
        failed: el("rect", { class: "progress-failed", width: 0, height: 3.5, rx: 1.75 }, group),
      };
    }
    // an empty map completes at once: nothing to do is all of it done
    const part = (n) => (p.total > 0 ? (width * Math.min(n, p.total)) / p.total : look.status === "completed" ? width : 0);
    const done = part(p.done);
    ref.bar.done.setAttribute("width", done.toFixed(1));
    ref.bar.failed.setAttribute("x", done.toFixed(1));
    ref.bar.failed.setAttribute("width", Math.min(width - done, part(p.failed)).toFixed(1));
    ref.bar.group.setAttribute("visibility", "visible");
    g.dataset.tasks = String(p.total);
    g.dataset.tasksDone = String(p.done);
    g.dataset.tasksFailed = String(p.failed);
  }

  // The second line, shortened when it would run under the attempt pill or off the node.
  fitSub(ref, look) {
    const sub = look.sub ?? "";
    if (this.compact && look.subShort) return fitText(look.subShort, SUB_FONT, ref.subRoom);
    if (textWidth(sub, SUB_FONT) <= ref.subRoom) return sub;
    if (look.subShort && textWidth(look.subShort, SUB_FONT) <= ref.subRoom) return look.subShort;
    return fitText(look.subShort ?? sub, SUB_FONT, ref.subRoom);
  }

  paintEdges(slug) {
    for (const e of this.edges) {
      if (slug && e.from !== slug && e.to !== slug) continue;
      const from = this.looks.get(e.from)?.status;
      const to = this.looks.get(e.to)?.status;
      const kind = from === "completed" ? (to === "started" || to === "retrying" || to === "waiting" ? "active" : "done") : "";
      e.el.setAttribute("class", `edge ${kind}`);
      e.el.setAttribute("marker-end", `url(#arrow${kind ? `-${kind}` : ""})`);
    }
  }

  select(slug) {
    if (this.selected === slug) return;
    if (this.selected) this.nodes.get(this.selected)?.g.classList.remove("selected");
    this.selected = slug;
    if (slug) this.nodes.get(slug)?.g.classList.add("selected");
    this.hooks.onSelect?.(slug);
  }

  /** Moves keyboard focus to a step's node and scrolls it into view. */
  focus(slug) {
    const ref = this.nodes.get(slug);
    if (!ref) return;
    ref.g.focus({ preventScroll: true });
    this.reveal(slug);
  }

  reveal(slug) {
    const ref = this.nodes.get(slug);
    if (!ref) return;
    const s = this.scale();
    const { x, y, w, h } = ref.layout;
    const box = this.scroller;
    const left = x * s - 24;
    const top = y * s - 24;
    const right = (x + w) * s + 24;
    const bottom = (y + h) * s + 24;
    const sx = left < box.scrollLeft ? left : right > box.scrollLeft + box.clientWidth ? right - box.clientWidth : box.scrollLeft;
    const sy = top < box.scrollTop ? top : bottom > box.scrollTop + box.clientHeight ? bottom - box.clientHeight : box.scrollTop;
    box.scrollTo({ left: Math.max(0, sx), top: Math.max(0, sy) });
  }

  onKey(event, n) {
    const lr = this.layout?.direction !== "TB";
    const sameLayer = () => this.layout.nodes.filter((m) => m.layer === n.layer).sort((a, b) => a.order - b.order);
    const sibling = (delta) => {
      const row = sameLayer();
      return row[row.findIndex((m) => m.slug === n.slug) + delta]?.slug;
    };
    let target;
    switch (event.key) {
      case "Enter":
      case " ":
        event.preventDefault();
        this.select(n.slug);
        this.hooks.onActivate?.(n.slug);
        return;
      case "ArrowRight": target = lr ? n.dependents[0] : sibling(1); break;
      case "ArrowLeft": target = lr ? n.deps[0] : sibling(-1); break;
      case "ArrowDown": target = lr ? sibling(1) : n.dependents[0]; break;
      case "ArrowUp": target = lr ? sibling(-1) : n.deps[0]; break;
      case "Home": target = this.layout.nodes[0]?.slug; break;
      case "End": target = this.layout.nodes[this.layout.nodes.length - 1]?.slug; break;
      default: return;
    }
    event.preventDefault();
    if (target) this.focus(target);
  }

  // ---- zoom ----

  fitScale() {
    if (!this.layout) return 1;
    const availW = Math.max(1, this.scroller.clientWidth - 8);
    const maxH = parseFloat(getComputedStyle(this.scroller).maxHeight);
    const availH = Number.isFinite(maxH) ? maxH - 8 : Infinity;
    const byWidth = Math.min(1, availW / this.layout.width);
    const byHeight = Math.max(FIT_HEIGHT_MIN_SCALE, availH / this.layout.height);
    return Math.max(FIT_MIN_SCALE, Math.min(byWidth, byHeight));
  }

  scale() {
    return this.zoom ?? this.fitScale();
  }

  zoomBy(factor) {
    this.zoom = Math.min(MAX_SCALE, Math.max(MIN_SCALE, this.scale() * factor));
    this.applyScale();
  }

  zoomFit() {
    this.zoom = null;
    this.applyScale();
  }

  applyScale() {
    if (!this.layout) return;
    const s = this.scale();
    this.svg.setAttribute("width", Math.round(this.layout.width * s));
    this.svg.setAttribute("height", Math.round(this.layout.height * s));
    this.hooks.onZoom?.(s, this.zoom === null);
  }
}
