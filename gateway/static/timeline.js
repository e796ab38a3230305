// The events table's rows, without the DOM: one row per event, except that the events of a map
// step's elements (`task:*`, one or more per element: thousands for a big map) fold into summary
// rows that update, "task:completed ×120 · 0–119". Pure: the views draw the rows, node tests
// drive it (client_js/test/page_state.test.js).
//
// Folding: while task events come one after another, each (step, event name) has one row that
// takes them all in, so a map whose elements complete, retry and complete again shows a handful
// of rows, not one per element. Any other event (the step's step:completed, another step's
// start) ends the folding: task events after it start new rows, so the table stays in time order.

/** How many distinct indices a fold lists before it shows their range instead. */
export const FOLD_INDICES_LISTED = 5;

/**
 * @typedef {object} EventRow one event, as it came
 * @property {"event"} kind
 * @property {any} event
 */

/**
 * @typedef {object} FoldRow consecutive task events of one step and one name
 * @property {"fold"} kind
 * @property {string} name the event name ("task:completed", …)
 * @property {string} step the map step
 * @property {number} count how many events it took in
 * @property {number} fromSeq the first one's seq
 * @property {number} toSeq the last one's
 * @property {number} minIndex the lowest element index among them
 * @property {number} maxIndex the highest
 * @property {number[]} indices the first FOLD_INDICES_LISTED distinct indices, in arrival order
 * @property {string | null} firstAt the first one's time
 * @property {string | null} lastAt the last one's time
 * @property {number | null} attempt the last one's attempt
 * @property {string | null} lastError the last one's error (task:retrying, task:failed)
 */

/** @typedef {EventRow | FoldRow} TimelineRow */

/** @param {any} e */
const isTaskEvent = (e) => typeof e?.event === "string" && e.event.startsWith("task:") && Boolean(e.step_slug);

export class Timeline {
  constructor() {
    /** @type {TimelineRow[]} every row, in order */
    this.rows = [];
    /** @type {Map<string, FoldRow>} "step\nname" -> the fold still taking events */
    this._open = new Map();
    /** @type {Set<FoldRow>} folds that took events since the last take() */
    this._changed = new Set();
    this._taken = 0; // rows.length at the last take()
  }

  /**
   * One event of the run, in seq order. O(1).
   * @param {any} e
   */
  add(e) {
    if (!isTaskEvent(e)) {
      this._open.clear(); // the folding run of task events ends here
      this.rows.push({ kind: "event", event: e });
      return;
    }
    const key = `${e.step_slug}\n${e.event}`;
    const index = Number.isInteger(e.index) ? e.index : null;
    let fold = this._open.get(key);
    if (!fold) {
      fold = {
        kind: "fold", name: e.event, step: e.step_slug, count: 0, fromSeq: e.seq, toSeq: e.seq,
        minIndex: index ?? 0, maxIndex: index ?? 0, indices: [], firstAt: e.at ?? null, lastAt: null,
        attempt: null, lastError: null,
      };
      this._open.set(key, fold);
      this.rows.push(fold);
    } else {
      this._changed.add(fold);
    }
    fold.count++;
    fold.toSeq = e.seq;
    fold.lastAt = e.at ?? null;
    fold.attempt = e.attempt ?? null;
    if (e.error != null) fold.lastError = String(e.error);
    if (index !== null) {
      fold.minIndex = Math.min(fold.minIndex, index);
      fold.maxIndex = Math.max(fold.maxIndex, index);
      if (fold.indices.length < FOLD_INDICES_LISTED && !fold.indices.includes(index)) fold.indices.push(index);
    }
  }

  /**
   * What changed since the last call: the rows added, then the folds drawn before that took more
   * events since. The first call gives every row.
   * @returns {{added: TimelineRow[], updated: FoldRow[]}}
   */
  take() {
    const added = this.rows.slice(this._taken);
    const fresh = new Set(added);
    const updated = [...this._changed].filter((row) => !fresh.has(row));
    this._taken = this.rows.length;
    this._changed.clear();
    return { added, updated };
  }

  /** Forget what was taken: the next take() gives every row (the table is drawn anew). */
  reset() {
    this._taken = 0;
    this._changed.clear();
  }
}

/**
 * A fold's elements: their indices while few ("3, 17, 40"), else their range ("0–119").
 * @param {FoldRow} fold
 */
export function foldIndices(fold) {
  const distinct = fold.indices.length;
  if (distinct < FOLD_INDICES_LISTED || fold.count <= distinct) return fold.indices.join(", ");
  return `${fold.minIndex}–${fold.maxIndex}`;
}

/**
 * A fold's one-line summary, as the table shows it and a screen reader reads it:
 * "task:completed ×120 · 0–119".
 * @param {FoldRow} fold
 */
export function foldSummary(fold) {
  return `${fold.name} ×${fold.count} · ${foldIndices(fold)}`;
}
