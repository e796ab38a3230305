// Layered layout of a flow's DAG: pure geometry, no DOM, so it can be tested on its own.
//
// A small Sugiyama pipeline:
//   1. layer = dependency depth (longest path from a root), drawn as columns left to right
//      (`direction: "LR"`, the default) or as rows top to bottom (`"TB"`, for narrow screens);
//   2. an edge spanning several layers gets a chain of dummy nodes, one per skipped layer, so
//      crossing reduction sees it and its curve is routed around the nodes in between;
//   3. nodes are ordered within each layer by barycenter sweeps (down, then up), keeping the
//      ordering with the fewest crossings;
//   4. vertical positions: each node is pulled toward the mean of its neighbours, keeping the
//      layer's order and spacing (isotonic regression, pool-adjacent-violators), which centres
//      a fan-out on its source and a fan-in on its sinks.

const SWEEPS = 12; // barycenter passes; small graphs converge in a handful
const PLACEMENT_ROUNDS = 6; // down+up relaxation rounds for vertical positions

export const DEFAULTS = {
  direction: "LR",
  nodeW: 168,
  nodeH: 54,
  layerGap: 64, // space between layers, for curves and arrowheads
  nodeGap: 18, // space between the nodes of one layer
  dummySize: 10, // room a long edge takes where it passes through a layer
  pad: 16, // margin around the drawing (room for the "output" tag and focus rings)
};

/**
 * Lays out `graph` ({steps: [{slug, depends_on}]}) and returns
 * {nodes: [{slug, layer, x, y, w, h, deps, dependents}], edges: [{from, to, points}], width, height}.
 * `extraSlugs` are steps known only from events (drawn as roots).
 */
export function layoutGraph(graph, options = {}, extraSlugs = []) {
  const o = { ...DEFAULTS, ...options };
  // Computed in (along the layers, across them) coordinates, mapped to (x, y) at the end.
  const lr = o.direction !== "TB";
  // Widths may differ per step (`widths`: Map slug -> px); left to right, a column takes the
  // width of its widest node, so columns stay aligned.
  const widthOf = (slug) => o.widths?.get(slug) ?? o.nodeW;
  const acrossOf = (slug) => (lr ? o.nodeH : widthOf(slug)); // a node's extent within its layer
  const order = []; // declaration order, the tie-breaker everywhere
  const deps = new Map();
  for (const s of graph?.steps ?? []) {
    if (!s || typeof s.slug !== "string" || deps.has(s.slug)) continue;
    order.push(s.slug);
    deps.set(s.slug, Array.isArray(s.depends_on) ? s.depends_on.filter((d) => typeof d === "string") : []);
  }
  for (const slug of extraSlugs) {
    if (!deps.has(slug)) {
      order.push(slug);
      deps.set(slug, []);
    }
  }
  for (const [slug, ds] of deps) deps.set(slug, [...new Set(ds)].filter((d) => deps.has(d) && d !== slug));
  const rank = new Map(order.map((slug, i) => [slug, i]));

  // 1. layers by longest path; a cycle (which define_flow refuses) is cut where it closes
  const depth = new Map();
  const visiting = new Set();
  const depthOf = (slug) => {
    if (depth.has(slug)) return depth.get(slug);
    if (visiting.has(slug)) return 0;
    visiting.add(slug);
    let d = 0;
    for (const dep of deps.get(slug)) d = Math.max(d, depthOf(dep) + 1);
    visiting.delete(slug);
    depth.set(slug, d);
    return d;
  };
  for (const slug of order) depthOf(slug);

  // 2. the layered graph, with dummies on long edges
  const items = new Map(); // id -> {id, slug|null, layer, preds: [id], succs: [id]}
  const layers = [];
  const add = (id, slug, layer) => {
    const item = { id, slug, layer, preds: [], succs: [], y: 0, h: slug === null ? o.dummySize : acrossOf(slug) };
    items.set(id, item);
    (layers[layer] ??= []).push(item);
    return item;
  };
  for (const slug of order) add(slug, slug, depth.get(slug));
  for (let l = 0; l < layers.length; l++) layers[l] ??= [];
  const chains = []; // per edge: [from id, dummy ids..., to id]
  for (const to of order) {
    for (const from of deps.get(to)) {
      const chain = [from];
      for (let l = depth.get(from) + 1; l < depth.get(to); l++) chain.push(add(`\u0000${from}\u0000${to}\u0000${l}`, null, l).id);
      chain.push(to);
      for (let i = 1; i < chain.length; i++) {
        items.get(chain[i - 1]).succs.push(chain[i]);
        items.get(chain[i]).preds.push(chain[i - 1]);
      }
      chains.push({ from, to, chain });
    }
  }

  // 3. crossing reduction
  const pos = new Map();
  const index = () => layers.forEach((layer) => layer.forEach((item, i) => pos.set(item.id, i)));
  const tieKey = (item) => rank.get(item.slug ?? item.id.split("\u0000")[1]) ?? 0;
  index();
  const sortBy = (layer, neighbours) => {
    const bary = new Map();
    for (const item of layer) {
      const ns = item[neighbours];
      bary.set(item.id, ns.length ? ns.reduce((sum, n) => sum + pos.get(n), 0) / ns.length : pos.get(item.id));
    }
    layer.sort((a, b) => bary.get(a.id) - bary.get(b.id) || pos.get(a.id) - pos.get(b.id) || tieKey(a) - tieKey(b));
    layer.forEach((item, i) => pos.set(item.id, i));
  };
  const crossings = () => {
    let total = 0;
    for (let l = 0; l + 1 < layers.length; l++) {
      const edges = [];
      for (const item of layers[l]) for (const s of item.succs) edges.push([pos.get(item.id), pos.get(s)]);
      for (let i = 0; i < edges.length; i++) {
        for (let j = i + 1; j < edges.length; j++) {
          const [a1, b1] = edges[i];
          const [a2, b2] = edges[j];
          if ((a1 - a2) * (b1 - b2) < 0) total++;
        }
      }
    }
    return total;
  };
  // initial order: each layer by its predecessors' barycenter, from the declaration order
  for (let l = 1; l < layers.length; l++) sortBy(layers[l], "preds");
  let best = layers.map((layer) => [...layer]);
  let bestCrossings = crossings();
  for (let sweep = 0; sweep < SWEEPS && bestCrossings > 0; sweep++) {
    if (sweep % 2 === 0) for (let l = 1; l < layers.length; l++) sortBy(layers[l], "preds");
    else for (let l = layers.length - 2; l >= 0; l--) sortBy(layers[l], "succs");
    const c = crossings();
    if (c < bestCrossings) {
      bestCrossings = c;
      best = layers.map((layer) => [...layer]);
    }
  }
  for (let l = 0; l < layers.length; l++) layers[l] = best[l];
  index();

  // 4. vertical placement
  const gapBetween = (a, b) => (a.slug === null || b.slug === null ? o.nodeGap / 2 : o.nodeGap);
  const tallest = Math.max(0, ...layers.map((layer) => layerHeight(layer, gapBetween)));
  for (const layer of layers) {
    let y = (tallest - layerHeight(layer, gapBetween)) / 2;
    layer.forEach((item, i) => {
      if (i > 0) y += gapBetween(layer[i - 1], item);
      item.y = y + item.h / 2; // y is the centre
      y += item.h;
    });
  }
  const centreOf = (id) => items.get(id).y;
  for (let round = 0; round < PLACEMENT_ROUNDS; round++) {
    for (let l = 1; l < layers.length; l++) place(layers[l], "preds", centreOf, gapBetween);
    for (let l = layers.length - 2; l >= 0; l--) place(layers[l], "succs", centreOf, gapBetween);
  }
  // a last downward pass, so each node sits on its dependencies where the order allows
  for (let l = 1; l < layers.length; l++) place(layers[l], "preds", centreOf, gapBetween);

  let top = Infinity;
  let bottom = -Infinity;
  for (const item of items.values()) {
    top = Math.min(top, item.y - item.h / 2);
    bottom = Math.max(bottom, item.y + item.h / 2);
  }
  if (!Number.isFinite(top)) top = bottom = 0;
  const shift = o.pad - top;
  // extent of each layer along the layer direction, and where each starts
  const alongOf = layers.map((layer) => (lr ? Math.max(0, ...layer.filter((i) => i.slug !== null).map((i) => widthOf(i.slug))) : o.nodeH));
  const starts = [];
  alongOf.forEach((a, l) => starts.push(l === 0 ? o.pad : starts[l - 1] + alongOf[l - 1] + o.layerGap));
  const layerPos = (layer) => starts[layer];
  for (const item of items.values()) item.y += shift;
  const xy = (a, c) => (lr ? [a, c] : [c, a]);

  const dependents = new Map(order.map((slug) => [slug, []]));
  for (const slug of order) for (const d of deps.get(slug)) dependents.get(d).push(slug);
  const nodes = order.map((slug) => {
    const item = items.get(slug);
    const [x, y] = xy(layerPos(item.layer), item.y - item.h / 2);
    return {
      slug, layer: item.layer, order: pos.get(slug), x, y, w: lr ? alongOf[item.layer] : widthOf(slug), h: o.nodeH,
      deps: deps.get(slug), dependents: dependents.get(slug),
    };
  });

  // ports: a node with several edges on one side spreads their ends along that side, in the
  // order of the other ends, unless they would be too close to tell apart
  const outPorts = portOffsets(items, "succs");
  const inPorts = portOffsets(items, "preds");
  const edges = chains.map(({ from, to, chain }) => {
    const points = [];
    const first = items.get(from);
    const last = items.get(to);
    points.push(xy(layerPos(first.layer) + alongOf[first.layer], first.y + outPorts.get(from).get(chain[1])));
    for (const id of chain.slice(1, -1)) {
      const d = items.get(id);
      points.push(xy(layerPos(d.layer), d.y), xy(layerPos(d.layer) + alongOf[d.layer], d.y));
    }
    points.push(xy(layerPos(last.layer), last.y + inPorts.get(to).get(chain[chain.length - 2])));
    return { from, to, points, path: curve(points, lr) };
  });

  return {
    nodes,
    edges,
    crossings: bestCrossings,
    layers: layers.length,
    direction: lr ? "LR" : "TB",
    ...(() => {
      const length = layers.length ? starts[layers.length - 1] + alongOf[layers.length - 1] + o.pad : 2 * o.pad;
      const breadth = bottom - top + 2 * o.pad;
      return lr ? { width: length, height: breadth } : { width: breadth, height: length };
    })(),
  };
}

function layerHeight(layer, gapBetween) {
  let h = 0;
  layer.forEach((item, i) => {
    if (i > 0) h += gapBetween(layer[i - 1], item);
    h += item.h;
  });
  return h;
}

// Moves a layer's centres toward the mean of their neighbours' centres while keeping the
// order and the minimum spacing: min sum (y_i - want_i)^2 s.t. y_{i+1} - y_i >= sep_i.
// With offsets c_i (cumulative separation) and z_i = y_i - c_i it is an isotonic regression
// (z non-decreasing), solved exactly by pool-adjacent-violators.
function place(layer, neighbours, centreOf, gapBetween) {
  if (layer.length === 0) return;
  const offsets = [0];
  for (let i = 1; i < layer.length; i++) {
    const a = layer[i - 1];
    const b = layer[i];
    offsets.push(offsets[i - 1] + a.h / 2 + gapBetween(a, b) + b.h / 2);
  }
  const want = layer.map((item, i) => {
    const ns = item[neighbours];
    const target = ns.length ? ns.reduce((sum, n) => sum + centreOf(n), 0) / ns.length : item.y;
    return target - offsets[i];
  });
  const blocks = []; // {sum, count}
  for (const w of want) {
    blocks.push({ sum: w, count: 1 });
    while (blocks.length > 1) {
      const b = blocks[blocks.length - 1];
      const a = blocks[blocks.length - 2];
      if (a.sum / a.count <= b.sum / b.count) break;
      blocks.pop();
      a.sum += b.sum;
      a.count += b.count;
    }
  }
  let i = 0;
  for (const b of blocks) {
    const z = b.sum / b.count;
    for (let k = 0; k < b.count; k++, i++) layer[i].y = z + offsets[i];
  }
}

function portOffsets(items, side) {
  const result = new Map();
  const MIN_SPACING = 7; // px: arrowheads closer than this would smear into one another
  for (const item of items.values()) {
    if (item.slug === null) continue;
    const others = [...item[side]].sort((a, b) => items.get(a).y - items.get(b).y);
    const k = others.length;
    const spacing = k > 1 ? Math.min(12, (item.h - 18) / (k - 1)) : 0;
    const step = spacing >= MIN_SPACING ? spacing : 0;
    result.set(item.id, new Map(others.map((id, i) => [id, (i - (k - 1) / 2) * step])));
  }
  return result;
}

/**
 * An SVG path through `points`, leaving and entering each one along the layer direction
 * (horizontal tangents for "LR", vertical for "TB"): smooth S-curves between layers.
 */
export function curve(points, lr = true) {
  const f = (n) => Math.round(n * 10) / 10;
  let d = `M${f(points[0][0])},${f(points[0][1])}`;
  for (let i = 1; i < points.length; i++) {
    const [x0, y0] = points[i - 1];
    const [x1, y1] = points[i];
    if (lr ? y0 === y1 : x0 === x1) {
      d += ` L${f(x1)},${f(y1)}`;
      continue;
    }
    if (lr) {
      const dx = Math.max((x1 - x0) / 2, 12);
      d += ` C${f(x0 + dx)},${f(y0)} ${f(x1 - dx)},${f(y1)} ${f(x1)},${f(y1)}`;
    } else {
      const dy = Math.max((y1 - y0) / 2, 12);
      d += ` C${f(x0)},${f(y0 + dy)} ${f(x1)},${f(y1 - dy)} ${f(x1)},${f(y1)}`;
    }
  }
  return d;
}
