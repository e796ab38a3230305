// Map steps: the progress of their elements. A map step runs its handler once per element of an
// array, each element its own task with its own attempts, lease and retries; the gateway reports
// them as `task:*` events that name the map step (`step_slug`) and the element (`index`).
//
// Following a 100,000-element map must stay cheap, so each task event is O(1): one byte per
// element says where it is, and the step's counts move with each change. Nothing here grows per
// event, and the step state carries counts and a few recent errors only, never a per-element array
// (a snapshot copies the step state whenever it changed: copying a per-element array on each of
// 100,000 events would make following the map quadratic).

/** The errors of failed element attempts a map step keeps: the latest ones. */
export const TASK_ERRORS_KEPT = 10;
// The engine's bound (MAX_MAP_TASKS): an index at or past it is not an element of any map.
const MAX_TASKS = 100_000;

// Per-element codes, one byte each. PENDING: queued or running its first attempt (no event says
// which); STARTED: a retry running (task:started comes for attempts 2 and up only).
const PENDING = 0;
const STARTED = 1;
const RETRYING = 2;
const COMPLETED = 3;
const FAILED = 4;
/** @type {readonly import("../client.js").TaskStatus[]} by code */
const STATUS_NAMES = ["pending", "started", "retrying", "completed", "failed"];
/** @type {Record<string, number>} the code each event name moves an element to */
const CODE_OF_EVENT = { "task:started": STARTED, "task:retrying": RETRYING, "task:completed": COMPLETED, "task:failed": FAILED };

/**
 * The counters a map step's state carries (StepState's task fields, writable).
 * @typedef {object} TaskCounts
 * @property {number | null} tasks
 * @property {number} tasksCompleted
 * @property {number} tasksFailed
 * @property {number} tasksRetrying
 * @property {readonly import("../client.js").TaskError[]} taskErrors
 */

/** @type {readonly import("../client.js").TaskError[]} a step's taskErrors before any */
export const NO_TASK_ERRORS = Object.freeze([]);

/**
 * Whether `index` can name an element of a map.
 * @param {unknown} index
 * @returns {index is number}
 */
function isIndex(index) {
  return Number.isInteger(index) && /** @type {number} */ (index) >= 0 && /** @type {number} */ (index) < MAX_TASKS;
}

/**
 * Whether `tasks` can be a map's element count.
 * @param {unknown} tasks
 * @returns {tasks is number}
 */
function isCount(tasks) {
  return Number.isInteger(tasks) && /** @type {number} */ (tasks) >= 0 && /** @type {number} */ (tasks) <= MAX_TASKS;
}

/** One map step's elements: where each one is, and the step's counts kept in step with them. */
export class TaskBoard {
  constructor() {
    /** @type {Uint8Array} a code per element */
    this.codes = new Uint8Array(0);
  }

  /**
   * The map step started with `tasks` elements (its step:started). A step started anew (after a
   * run:retried) keeps the elements that completed, if it has as many: only the others run again.
   * O(elements), once per start of the step.
   * @param {TaskCounts} step
   * @param {number | null | undefined} tasks
   */
  start(step, tasks) {
    if (isCount(tasks) && tasks !== this.codes.length) this.codes = new Uint8Array(tasks);
    this.rewind(step);
    if (isCount(tasks)) step.tasks = tasks;
  }

  /**
   * The elements that did not complete go back to pending (a retried run re-queues them); the
   * errors of their attempts go too.
   * @param {TaskCounts} step
   */
  rewind(step) {
    const codes = this.codes;
    let completed = 0;
    for (let i = 0; i < codes.length; i++) {
      if (codes[i] === COMPLETED) completed++;
      else codes[i] = PENDING;
    }
    Object.assign(step, { tasksCompleted: completed, tasksFailed: 0, tasksRetrying: 0, taskErrors: NO_TASK_ERRORS });
  }

  /**
   * One task event of the map step. Only its elements' counts move: the step's own status is
   * step:*'s business (a failed element fails the step through the step:failed that follows).
   * @param {TaskCounts} step
   * @param {any} event
   */
  apply(step, event) {
    const code = CODE_OF_EVENT[event.event];
    const index = event.index;
    if (code === undefined || !isIndex(index)) return; // task:stream, or an index no map has
    if (index >= this.codes.length) this._grow(index + 1);
    const was = this.codes[index];
    if (was === code) return;
    this.codes[index] = code;
    this._count(step, was, -1);
    this._count(step, code, +1);
    if (code === RETRYING || code === FAILED) {
      // A new frozen array each time, of at most TASK_ERRORS_KEPT: snapshots share it as it is.
      const error = Object.freeze({
        index, attempt: event.attempt ?? null, error: String(event.error ?? ""), final: code === FAILED,
        at: event.at ?? null, seq: event.seq,
      });
      step.taskErrors = Object.freeze([...step.taskErrors.slice(1 - TASK_ERRORS_KEPT), error]);
    }
  }

  /**
   * Where element `index` is, or null for an index the step has not heard of.
   * @param {number} index
   * @returns {import("../client.js").TaskStatus | null}
   */
  status(index) {
    return isIndex(index) && index < this.codes.length ? /** @type {any} */ (STATUS_NAMES[this.codes[index]]) : null;
  }

  /**
   * Room for `size` elements: a task event came before (or without) a step:started that gave the
   * count. Doubling keeps growing element by element O(1) amortised.
   * @param {number} size
   */
  _grow(size) {
    const codes = new Uint8Array(Math.min(MAX_TASKS, Math.max(size, 2 * this.codes.length)));
    codes.set(this.codes);
    this.codes = codes;
  }

  /**
   * @param {TaskCounts} step
   * @param {number} code
   * @param {number} delta
   */
  _count(step, code, delta) {
    if (code === COMPLETED) step.tasksCompleted += delta;
    else if (code === FAILED) step.tasksFailed += delta;
    else if (code === RETRYING) step.tasksRetrying += delta;
  }
}
