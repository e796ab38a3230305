// Cancellation: every wait takes `signal` and `timeout`, and its errors name what was awaited.

/**
 * The default abort reason says nothing useful; replace it with one that names the run.
 * @param {AbortSignal} signal
 * @param {string} label
 * @returns {unknown}
 */
export function abortReason(signal, label) {
  const reason = signal.reason;
  if (reason === undefined || (reason instanceof DOMException && reason.name === "AbortError")) {
    return new DOMException(`${label}: aborted`, "AbortError");
  }
  return reason;
}

/**
 * @typedef {object} Deadline
 * @property {AbortSignal | undefined} signal undefined when there is neither signal nor timeout
 * @property {string} label read when it fires, so a caller can sharpen it (say, once the run id is known)
 * @property {() => void} dispose
 */

/**
 * One signal that fires on the caller's signal or on the timeout, whichever comes first.
 * @param {AbortSignal | undefined} signal
 * @param {number | undefined | null} timeout ms
 * @param {string} label
 * @returns {Deadline}
 */
export function deadline(signal, timeout, label) {
  if (timeout != null && !(Number.isFinite(timeout) && timeout >= 0)) {
    throw new TypeError(`timeout must be a non-negative number of ms, got ${timeout}`);
  }
  /** @type {Deadline} */
  const d = { signal: undefined, label, dispose() {} };
  if (!signal && timeout == null) return d;
  const ctl = new AbortController();
  d.signal = ctl.signal;
  const onAbort = () => ctl.abort(abortReason(/** @type {AbortSignal} */ (signal), d.label));
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  let timer;
  if (signal?.aborted) onAbort();
  else signal?.addEventListener("abort", onAbort, { once: true });
  if (timeout != null && !ctl.signal.aborted) {
    timer = setTimeout(
      () => ctl.abort(new DOMException(`${d.label}: timed out after ${timeout} ms`, "TimeoutError")),
      timeout,
    );
  }
  d.dispose = () => {
    clearTimeout(timer);
    signal?.removeEventListener("abort", onAbort);
  };
  return d;
}

/**
 * `promise`, or the abort/timeout reason if that comes first. The promise itself is always
 * given handlers, so a rejection after an abort never surfaces as "unhandled".
 * @template T
 * @param {Promise<T>} promise
 * @param {{signal?: AbortSignal | undefined, timeout?: number | undefined}} options
 * @param {string} label
 * @returns {Promise<T>}
 */
export function race(promise, { signal, timeout } = {}, label) {
  let d;
  try {
    d = deadline(signal, timeout, label);
  } catch (err) {
    return Promise.reject(err);
  }
  const ds = d.signal;
  if (!ds) return promise;
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      d.dispose();
      reject(ds.reason);
    };
    /** @type {<V>(fn: (value: V) => void) => (value: V) => void} */
    const settle = (fn) => (value) => {
      d.dispose();
      ds.removeEventListener("abort", onAbort);
      fn(value);
    };
    if (ds.aborted) onAbort();
    else ds.addEventListener("abort", onAbort, { once: true });
    promise.then(settle(resolve), settle(reject));
  });
}
