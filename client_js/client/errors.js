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

/**
 * A listener that throws must not corrupt the client's state, yet must not vanish either:
 * report it the way EventTarget does (browsers), or as an uncaught exception (Node < 22).
 * @param {unknown} err
 */
export function reportListenerError(err) {
  if (typeof globalThis.reportError === "function") globalThis.reportError(err);
  else setTimeout(() => { throw err; });
}
