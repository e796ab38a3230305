// The client's errors, and how a throwing listener is reported.

/**
 * @typedef {object} PGFlowErrorOptions
 * @property {string} [code] a docs/reference/http.md error code, or one of the client's own
 * @property {number} [status] HTTP status, for an error from an HTTP answer
 * @property {string} [runId]
 * @property {number} [closeCode] websocket close code, for an error caused by a close
 * @property {unknown} [cause]
 */

/** Any error this client raises itself; `code` is a docs/reference/http.md error code or a client one. */
export class PGFlowError extends Error {
  /**
   * @param {string} message
   * @param {PGFlowErrorOptions} [options]
   */
  constructor(message, { code, status, runId, closeCode, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = "PGFlowError";
    this.code = code ?? "error";
    if (status !== undefined) this.status = status;
    if (runId !== undefined) this.runId = runId;
    if (closeCode !== undefined) this.closeCode = closeCode;
  }
}

/** The run ended with `run:failed`. */
export class FlowFailedError extends PGFlowError {
  /** @param {{run_id: string, step_slug?: string | null, error?: string | null, attempt?: number | null}} event */
  constructor(event) {
    super(
      `run ${event.run_id} failed at step ${event.step_slug} (attempt ${event.attempt}): ${event.error}`,
      { code: "run_failed", runId: event.run_id },
    );
    this.name = "FlowFailedError";
    this.stepSlug = event.step_slug ?? null;
    this.error = event.error ?? null;
    this.attempt = event.attempt ?? null;
    this.event = event;
  }
}

/** The run ended with `run:cancelled`: someone called cancel on it (this client or another). */
export class FlowCancelledError extends PGFlowError {
  /** @param {{run_id: string, reason?: string | null}} event */
  constructor(event) {
    const reason = event.reason ?? null;
    super(`run ${event.run_id} was cancelled${reason ? `: ${reason}` : ""}`,
      { code: "run_cancelled", runId: event.run_id });
    this.name = "FlowCancelledError";
    this.reason = reason;
    this.event = event;
  }
}

/**
 * The gateway refused a value for an input step (400 `invalid_input`): it does not match the
 * step's JSON Schema. `errors` says where and why, one entry per problem.
 */
export class InputRejectedError extends PGFlowError {
  /**
   * @param {string} message
   * @param {{runId: string, stepSlug: string, errors: {path: string, message: string}[]}} details
   */
  constructor(message, { runId, stepSlug, errors }) {
    super(message, { code: "invalid_input", status: 400, runId });
    this.name = "InputRejectedError";
    this.stepSlug = stepSlug;
    this.errors = errors;
  }
}

/**
 * The error for a non-2xx answer: its status, the body's `error.code`, and for a refused input
 * value an InputRejectedError with the body's `error.errors`.
 * @param {string} label what the message names first (the call, the run)
 * @param {number} status
 * @param {any} body the parsed answer, null when it was not JSON
 * @param {{runId?: string | undefined, stepSlug?: string | undefined}} about
 */
export function httpError(label, status, body, { runId, stepSlug } = {}) {
  const e = body?.error;
  const message = `${label}: ${e?.message ?? `HTTP ${status}`}`;
  if (status === 400 && e?.code === "invalid_input" && runId !== undefined && stepSlug !== undefined) {
    const errors = Array.isArray(e.errors) ? e.errors : [];
    // The first problems in the message, so a log line says what was wrong without a debugger.
    const shown = errors.slice(0, 3).map((/** @type {any} */ x) => `${x?.path || "/"}: ${x?.message}`).join("; ");
    return new InputRejectedError(shown ? `${message} (${shown})` : message, { runId, stepSlug, errors });
  }
  return new PGFlowError(message, { code: e?.code ?? "http_error", status, ...(runId === undefined ? {} : { runId }) });
}

/**
 * A listener that throws must not corrupt the client's state, yet must not vanish either:
 * report it the way EventTarget does (browsers), or as an uncaught exception (Node < 22).
 * @param {unknown} err
 */
export function reportListenerError(err) {
  if (typeof globalThis.reportError === "function") globalThis.reportError(err);
  else setTimeout(() => { throw err; });
}
