// Streamed steps: `run.stream(slug)`, an async iterator over the chunks a step streams. It reads
// the step state the run keeps (its `chunks` of one attempt, replaced by a retry's) after each
// change of the run, so it needs no events of its own and sees a replay like a live stream.

/** @typedef {import("../client.js").StepStream<unknown>} StepStream */

const STEP_FINAL_STATUSES = new Set(["completed", "failed", "cancelled"]);

/**
 * `run.stream(slug)`: the chunks step `slug` streams (`step:stream`), those received so far and
 * then each one as it arrives, a retry's included, until the step or the run ends or the client
 * stops following the run. Leaving the loop early removes its listener.
 * @param {import("./run.js").FlowRun} run
 * @param {string} slug
 * @returns {StepStream}
 */
export function stepChunks(run, slug) {
  const step = run.step(slug);
  /** @type {[number | null, unknown][]} chunks received and not yet yielded, with their attempt */
  const queue = [];
  let head = 0; // index of the next one: shift() would make a long stream quadratic
  /** @type {((result: IteratorResult<unknown, undefined>) => void)[]} */
  const waiting = [];
  let attempt = step.streamAttempt; // the attempt step.chunks held when last read
  let read = 0; // how many of step.chunks are queued already
  /** @type {number | null} */
  let yielded = null; // the attempt of the chunk yielded last
  let ended = false;
  let off = () => {};
  const flush = () => {
    while (waiting.length > 0 && (head < queue.length || ended)) {
      const resolve = /** @type {(result: IteratorResult<unknown, undefined>) => void} */ (waiting.shift());
      if (head < queue.length) {
        const [chunkAttempt, chunk] = /** @type {[number | null, unknown]} */ (queue[head++]);
        yielded = chunkAttempt;
        resolve({ done: false, value: chunk });
      } else {
        resolve({ done: true, value: undefined });
      }
    }
    if (head === queue.length) queue.length = head = 0;
  };
  // Called after every change of the run: queue what step.chunks gained, then see if it ended.
  const pull = () => {
    // A new attempt's stream replaced step.chunks: read it from its start.
    if (step.streamAttempt !== attempt) [attempt, read] = [step.streamAttempt, 0];
    while (read < step.chunks.length) queue.push([attempt, step.chunks[read++]]);
    if (STEP_FINAL_STATUSES.has(step.status) || run._settled) {
      ended = true;
      off();
    }
    flush();
  };
  pull();
  if (!ended) off = run.subscribe(pull);
  return {
    get attempt() {
      return yielded;
    },
    next: () => new Promise((resolve) => {
      waiting.push(resolve);
      flush();
    }),
    return: () => {
      ended = true;
      off();
      queue.length = head = 0;
      flush(); // a next() still pending ends too
      return Promise.resolve({ done: true, value: undefined });
    },
    [Symbol.asyncIterator]() {
      return this;
    },
  };
}
