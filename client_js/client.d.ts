// Types for client.js, the PGFlow JS client. Wire shapes follow docs/reference/websocket.md.

// ---- events -----------------------------------------------------------------------------------

/** A run's status; `retry()` takes a failed or cancelled run back to `started`. */
export type RunStatus = "started" | "completed" | "failed" | "cancelled";

/**
 * A step's status. `waiting`: an input step waiting for `run.submit()`. `cancelled`: by
 * step:cancelled when the run is cancelled, and implied by run:failed for unfinished steps.
 */
export type StepStatus = "created" | "started" | "retrying" | "waiting" | "completed" | "failed" | "cancelled";

/** A JSON Schema (an object such as `{"type": "object", "properties": …}`). */
export type JsonSchema = { [keyword: string]: unknown };

interface EventBase {
  run_id: string;
  /** 1, 2, 3, … per run, gap-free. */
  seq: number;
  /** ISO 8601 timestamp of the commit. */
  at: string;
}

export interface RunStartedEvent extends EventBase {
  event: "run:started";
  step_slug: null;
  status: "started";
  output: null;
  error: null;
  attempt: null;
}

export interface StepStartedEvent extends EventBase {
  event: "step:started";
  step_slug: string;
  status: "started";
  output: null;
  error: null;
  /** The attempt about to run. */
  attempt: number;
  /** A map step's: how many elements it runs, each one a task of its own (`task:*` events). */
  tasks?: number;
}

export interface StepCompletedEvent extends EventBase {
  event: "step:completed";
  step_slug: string;
  status: "completed";
  output: unknown;
  error: null;
  attempt: number;
}

export interface StepRetryingEvent extends EventBase {
  event: "step:retrying";
  step_slug: string;
  status: "retrying";
  output: null;
  /** The failed attempt's error (`lease expired` when a worker vanished). */
  error: string;
  /** The attempt that failed. */
  attempt: number;
}

/**
 * Chunks a step streamed while it ran: one or more, of one attempt, in order. Every chunk of an
 * attempt comes before that attempt's step:completed, step:failed or step:retrying.
 */
export interface StepStreamEvent extends EventBase {
  event: "step:stream";
  step_slug: string;
  /** The attempt that streamed them; a retry streams again under its own. */
  attempt: number;
  /** Strings or any JSON values, in the order the step streamed them. */
  chunks: unknown[];
  /** Not on the wire: a stream event carries no status, output or error. */
  status?: undefined;
  output?: undefined;
  error?: undefined;
}

export interface StepFailedEvent extends EventBase {
  event: "step:failed";
  step_slug: string;
  status: "failed";
  output: null;
  error: string;
  attempt: number;
}

export interface RunCompletedEvent<TOutput = unknown> extends EventBase {
  event: "run:completed";
  step_slug: null;
  status: "completed";
  /** The run's output: the output of the flow's output step. */
  output: TOutput;
  error: null;
  attempt: null;
}

export interface RunFailedEvent extends EventBase {
  event: "run:failed";
  /** The failing step. */
  step_slug: string;
  status: "failed";
  output: null;
  error: string;
  /** The failing step's last attempt. */
  attempt: number;
}

/**
 * An input step whose dependencies completed: it waits for a value (`run.submit()`) until
 * `timeout_at`; the value then arrives as its step:completed (output = the value). Past the
 * timeout it fails (step:failed, then run:failed).
 */
export interface StepWaitingEvent extends EventBase {
  event: "step:waiting";
  step_slug: string;
  status: "waiting";
  output: null;
  error: null;
  attempt: number;
  /** What a submitted value must match. */
  schema: JsonSchema;
  /** The step's assembled input: `{"run": <run input>, "<dependency>": <its output>, …}`. */
  input: Record<string, unknown>;
  /** ISO 8601: when the step fails if no value came. */
  timeout_at: string;
}

/** One per step left unfinished by a cancel, in flow order, before run:cancelled. */
export interface StepCancelledEvent extends EventBase {
  event: "step:cancelled";
  step_slug: string;
  status: "cancelled";
  output: null;
  error: null;
  /** The step's last attempt; null when it never started. */
  attempt: number | null;
}

export interface RunCancelledEvent extends EventBase {
  event: "run:cancelled";
  step_slug: null;
  status: "cancelled";
  output: null;
  error: null;
  attempt: null;
  /** The reason given to cancel, or null. */
  reason: string | null;
}

/**
 * A failed or cancelled run was retried: it is `started` again, and its re-queued steps follow
 * with their usual step:started / step:waiting.
 */
export interface RunRetriedEvent extends EventBase {
  event: "run:retried";
  step_slug: null;
  status: "started";
  output: null;
  error: null;
  attempt: null;
}

// ---- map steps: one task per element ----

/**
 * What every `task:*` event carries: the map step (`step_slug`) and the element (`index`). The
 * map step's own status only ever changes with `step:*` events: an element that fails for good
 * (`task:failed`) is followed by the step's `step:failed` (error `task <index> failed: …`).
 */
interface TaskEventBase extends EventBase {
  /** The map step the element belongs to. */
  step_slug: string;
  /** The element's index in the array the step maps over, from 0. */
  index: number;
  /** The element's attempt. */
  attempt: number;
}

/** A retry of an element was claimed (attempt 2 and up: the first attempts get no event). */
export interface TaskStartedEvent extends TaskEventBase {
  event: "task:started";
  status: "started";
  output?: null;
  error?: null;
}

/** An element completed. Its output is not in the event: the step's step:completed has them all. */
export interface TaskCompletedEvent extends TaskEventBase {
  event: "task:completed";
  status: "completed";
  output?: null;
  error?: null;
}

/** An element's attempt failed and will be retried after its backoff. */
export interface TaskRetryingEvent extends TaskEventBase {
  event: "task:retrying";
  status: "retrying";
  output?: null;
  error: string;
}

/** An element failed for good; the map step's step:failed, then run:failed, follow. */
export interface TaskFailedEvent extends TaskEventBase {
  event: "task:failed";
  status: "failed";
  output?: null;
  error: string;
}

/** Chunks an element streamed while it ran, as step:stream carries a step's. */
export interface TaskStreamEvent extends TaskEventBase {
  event: "task:stream";
  chunks: unknown[];
  status?: undefined;
  output?: undefined;
  error?: undefined;
}

/** Every event of a run, discriminated by `event`. */
export type FlowEvent<TOutput = unknown> =
  | RunStartedEvent
  | StepStartedEvent
  | StepCompletedEvent
  | StepRetryingEvent
  | StepStreamEvent
  | StepFailedEvent
  | StepWaitingEvent
  | StepCancelledEvent
  | RunCompletedEvent<TOutput>
  | RunFailedEvent
  | RunCancelledEvent
  | RunRetriedEvent
  | TaskStartedEvent
  | TaskCompletedEvent
  | TaskRetryingEvent
  | TaskFailedEvent
  | TaskStreamEvent;

export type FlowEventName = FlowEvent["event"];

/** The event type for one event name, e.g. `EventOf<"run:failed">`. */
export type EventOf<N extends FlowEventName, TOutput = unknown> = Extract<FlowEvent<TOutput>, { event: N }>;

export type EventListener<E = FlowEvent> = (event: E) => void;

/** Which element of a map step streamed a chunk (`task:stream`). */
export interface TaskChunkSource {
  index: number;
  attempt: number;
}

/**
 * Called with each chunk a step streams, in order (`onChunk`). The elements of a map step stream
 * too: their chunks come with `task`, which says which element (a step's own come without it).
 */
export type ChunkListener = (stepSlug: string, chunk: unknown, task?: TaskChunkSource) => void;

// ---- graph and state --------------------------------------------------------------------------

/**
 * What a step is. `task`: a handler a worker runs; `input`: a step that waits for a person's value
 * (`run.submit()`); `map`: a handler run once per element of an array, each element its own task
 * (`task:*` events); `http`: a task a worker hands to an HTTP endpoint (`url`).
 */
export type StepKind = "task" | "input" | "map" | "http";

/** One step of a flow's shape, as `define_flow` takes it. */
export interface FlowGraphStep {
  slug: string;
  depends_on: string[];
  /** `task` when absent. */
  kind?: StepKind;
  /** A map step's array: the output of one of `depends_on`, or `"run"` (the run's input). */
  over?: string;
  /** An HTTP step's endpoint; a relative one ("/functions/x") is resolved by the worker. */
  url?: string;
  /** An input step's JSON Schema for its value. */
  schema?: JsonSchema;
  max_attempts?: number;
  base_delay?: number;
  timeout?: number;
  [option: string]: unknown;
}

/** A flow's shape (`GET /flows/{slug}`): one version of it. */
export interface FlowGraph {
  slug: string;
  /** The version of the flow this shape is (a changed shape is the flow's next version). */
  version?: number;
  steps: FlowGraphStep[];
  output_step?: string | null;
  [option: string]: unknown;
}

/**
 * Where an element of a map step is (`run.taskStatus()`): `pending` (queued, or running its first
 * attempt: no event tells these apart), `started` (a retry running), `retrying` (waiting out its
 * backoff), `completed`, `failed` (for good).
 */
export type TaskStatus = "pending" | "started" | "retrying" | "completed" | "failed";

/** A failed attempt of an element of a map step (`task:retrying` or `task:failed`). */
export interface TaskError {
  readonly index: number;
  readonly attempt: number | null;
  readonly error: string;
  /** `task:failed`: no more attempts. `false`: `task:retrying`, another attempt follows. */
  readonly final: boolean;
  readonly at: string | null;
  /** The event's seq. */
  readonly seq: number;
}

/** Live state of one step, updated in place as events arrive. */
export interface StepState {
  readonly slug: string;
  /** From the flow's graph; `task` until the graph is loaded (a map step's step:started says `map`). */
  readonly kind: StepKind;
  readonly status: StepStatus;
  readonly output: unknown;
  readonly error: string | null;
  /** The running attempt (`started`), or the one that failed (`retrying`, `failed`). */
  readonly attempt: number | null;
  /** When the current attempt started (each attempt has its `step:started`). */
  readonly startedAt: string | null;
  readonly completedAt: string | null;
  readonly failedAt: string | null;
  /**
   * The chunks the step streamed (`step:stream`) in attempt `streamAttempt`, in order; `[]`
   * before any. A new attempt's first chunk replaces them with a new array.
   */
  readonly chunks: readonly unknown[];
  /** The string chunks of `chunks` joined (other values skipped); `""` before any. */
  readonly text: string;
  /**
   * The attempt `chunks` belong to, null before any chunk. It lags `attempt` while a retry has
   * started but not streamed yet: the failed attempt's chunks stay until then.
   */
  readonly streamAttempt: number | null;
  /** An input step's JSON Schema, from its step:waiting; null before (and for other steps). */
  readonly schema: JsonSchema | null;
  /** An input step's assembled input (`{"run": …, "<dependency>": …}`), from step:waiting; else null. */
  readonly input: Record<string, unknown> | null;
  /** ISO 8601: when a waiting input step fails without a value; from step:waiting, else null. */
  readonly timeoutAt: string | null;
  /** A map step's element count, from its step:started; null before (and for other steps). */
  readonly tasks: number | null;
  /** How many of a map step's elements completed (`task:completed`), each counted once. */
  readonly tasksCompleted: number;
  /** How many of them failed for good (`task:failed`). */
  readonly tasksFailed: number;
  /** How many of them wait out a retry's backoff (`task:retrying`, until their `task:started`). */
  readonly tasksRetrying: number;
  /**
   * The latest failed attempts of its elements, oldest first: at most 10. Replaced, not
   * changed, by each new one. A retried run's new start of the step clears them.
   */
  readonly taskErrors: readonly TaskError[];
}

/**
 * `run.stream(slug)`: an async iterator of the step's chunks, that also tells which attempt
 * each one came from.
 */
export interface StepStream<TChunk = unknown> extends AsyncIterableIterator<TChunk> {
  /** The attempt of the chunk yielded last; null before the first. */
  readonly attempt: number | null;
}

/** `run.snapshot()`: the run's state as a frozen plain object, replaced on each change. */
export interface RunSnapshot<TOutput = unknown> {
  readonly runId: string;
  readonly flowSlug: string | null;
  readonly status: RunStatus;
  readonly output: TOutput | null;
  readonly error: string | null;
  readonly startedAt: string | null;
  readonly completedAt: string | null;
  readonly failedAt: string | null;
  readonly cancelledAt: string | null;
  readonly cancelReason: string | null;
  readonly lastSeq: number;
  readonly graph: FlowGraph | null;
  /**
   * Each step known at the last change, by slug: frozen copies of `run.step(slug)` (`chunks`
   * and `taskErrors` included; a map step's elements are there as counts only). A step that did
   * not change keeps the same object from one snapshot to the next.
   */
  readonly steps: Readonly<Record<string, StepState>>;
  /**
   * Why the client stopped following the run before it ended (`client_closed`, `detached`, a
   * refused subscription, …); null otherwise. A `run:failed` is `status`, not this.
   */
  readonly followError: PGFlowError | null;
}

// ---- errors -----------------------------------------------------------------------------------

/**
 * Error codes: docs/reference/http.md's (`bad_request`, `unauthorized`, `forbidden`, `not_found`, …)
 * for HTTP and subscription errors, plus the client's own.
 */
export type PGFlowErrorCode =
  | "bad_json"
  | "bad_request"
  | "invalid_flow"
  | "unauthorized"
  | "forbidden"
  | "not_found"
  | "too_large"
  | "too_many_subscriptions"
  | "too_many_connections"
  | "unavailable"
  /** 409: the run or step is not in a state that allows it (cancel/retry an ended/live run, submit to a step not waiting). */
  | "conflict"
  /** 400 from submit: the value does not match the input step's schema (InputRejectedError). */
  | "invalid_input"
  /** 422 from a start: this Idempotency-Key was used with a different input. */
  | "idempotency_conflict"
  /** Non-2xx HTTP answer without a JSON error body. */
  | "http_error"
  /** fetch itself failed (DNS, refused connection, CORS). */
  | "network_error"
  /** A 2xx answer that lacks what the protocol promises. */
  | "bad_response"
  /** The socket was closed with 1008 (foreign Origin, bad token). */
  | "policy_violation"
  /** `client.close()` was called while the run was followed. */
  | "client_closed"
  /** `run.detach()` was called before the run finished. */
  | "detached"
  /** waitForStatus() on a run that ended in the other terminal status. */
  | "status_unreachable"
  /**
   * No WebSocket implementation available (Node 20 without --experimental-websocket); raised
   * before any run is started.
   */
  | "unsupported"
  /**
   * The socket was lost 5 times in a row, for the same reason, while the run was behind and got
   * no further event: a frame this WebSocket cannot take (the message names the close).
   */
  | "stalled"
  /** The run ended with run:failed (FlowFailedError). */
  | "run_failed"
  /** The run ended with run:cancelled (FlowCancelledError). */
  | "run_cancelled"
  | (string & {});

export interface PGFlowErrorOptions {
  code?: PGFlowErrorCode;
  status?: number;
  runId?: string;
  closeCode?: number;
  cause?: unknown;
}

/** An error raised by the client; messages name the run id where there is one. */
export class PGFlowError extends Error {
  constructor(message: string, options?: PGFlowErrorOptions);
  readonly code: PGFlowErrorCode;
  /** HTTP status, for errors from an HTTP answer. */
  readonly status?: number;
  readonly runId?: string;
  /** Websocket close code, for errors caused by a close. */
  readonly closeCode?: number;
}

/** The run ended with `run:failed`. */
export class FlowFailedError extends PGFlowError {
  constructor(event: RunFailedEvent);
  readonly name: "FlowFailedError";
  readonly code: "run_failed";
  readonly runId: string;
  /** The step whose failure failed the run. */
  readonly stepSlug: string | null;
  /** That step's error text. */
  readonly error: string | null;
  /** That step's last attempt. */
  readonly attempt: number | null;
  /** The `run:failed` event itself. */
  readonly event: RunFailedEvent;
}

/** The run ended with `run:cancelled` (by this client or anyone else allowed to). */
export class FlowCancelledError extends PGFlowError {
  constructor(event: RunCancelledEvent);
  readonly name: "FlowCancelledError";
  readonly code: "run_cancelled";
  readonly runId: string;
  /** The reason given to cancel, or null. */
  readonly reason: string | null;
  /** The `run:cancelled` event itself. */
  readonly event: RunCancelledEvent;
}

/** One reason a submitted value was refused. */
export interface InputProblem {
  /** JSON Pointer to the offending part of the value (`""` or `"/"` for the value itself). */
  path: string;
  message: string;
}

/** `run.submit()` got 400 `invalid_input`: the value does not match the step's JSON Schema. */
export class InputRejectedError extends PGFlowError {
  constructor(message: string, details: { runId: string; stepSlug: string; errors: InputProblem[] });
  readonly name: "InputRejectedError";
  readonly code: "invalid_input";
  readonly status: 400;
  readonly runId: string;
  readonly stepSlug: string;
  /** Every problem the gateway reported. */
  readonly errors: InputProblem[];
}

// ---- options ----------------------------------------------------------------------------------

/** Every wait takes an AbortSignal and a timeout. */
export interface WaitOptions {
  /** Rejects with `signal.reason` (a DOMException named "AbortError" by default). */
  signal?: AbortSignal;
  /** In ms; rejects with a DOMException named "TimeoutError". */
  timeout?: number;
}

/** A token, or a function asked for one at each request and each (re)connection. */
export type TokenSource = string | (() => string | null | undefined | Promise<string | null | undefined>);

/** The WebSocket constructor the client uses (the global one by default). */
export type WebSocketConstructor = new (url: string) => WebSocket;

export interface ReconnectOptions {
  /** ms, default 100: the shortest delay and the base of the backoff. */
  minDelay?: number;
  /** ms, default 5000: the cap of the backoff. */
  maxDelay?: number;
}

export interface ClientOptions {
  /**
   * Gateway base URL, path included ("http://127.0.0.1:8000", "https://site/pgflow"); defaults
   * to where client.js was served from, minus "client.js".
   */
  url?: string;
  /** JWT sent as `Authorization: Bearer` over HTTP and `?token=` on the socket. */
  token?: TokenSource;
  fetch?: typeof globalThis.fetch;
  WebSocket?: WebSocketConstructor;
  /** ms between pings, default 5000. */
  heartbeatInterval?: number;
  /** ms without any message after which the socket is replaced, default 10000. */
  heartbeatTimeout?: number;
  reconnect?: ReconnectOptions;
  /** ms an unused socket stays open before it is closed, default 1000. */
  idleTimeout?: number;
}

export interface StartFlowOptions<TOutput = unknown> {
  /** Aborts the HTTP request (and the wait for the graph). */
  signal?: AbortSignal;
  /** Sees every event of the run exactly once, in seq order. */
  onEvent?: EventListener<FlowEvent<TOutput>>;
  /** Called with each chunk any step streams, once, in order. */
  onChunk?: ChunkListener;
  /** Also fetch the flow's graph before resolving (default true). */
  graph?: boolean;
  /**
   * Sent as the `Idempotency-Key` header (1 to 255 visible ASCII characters): a start with a key
   * already used for this flow (and owner) gives the run it started, not a new one. Default: a
   * random key per call, the same on the client's own resends of that request.
   */
  idempotencyKey?: string;
}

export interface GetRunOptions<TOutput = unknown> {
  /** The run's flow, when known, with its version: lets `graph` load without fetching the run snapshot. */
  flowSlug?: string;
  /** The version of its flow the run is on (`version` in `GET /runs`). */
  flowVersion?: number;
  /** Sees every event of the run exactly once, in seq order (replayed ones included). */
  onEvent?: EventListener<FlowEvent<TOutput>>;
  /** Called with each chunk any step streams, once, in order (replayed ones included). */
  onChunk?: ChunkListener;
}

export interface TriggerFlowOptions<TOutput = unknown> extends WaitOptions {
  /** Gateway base URL; defaults to the default client's. */
  url?: string;
  token?: TokenSource;
  /** Use this client instead of the default one. */
  client?: PGFlowClient;
  /** Sees every event of the run exactly once, in seq order. */
  onEvent?: EventListener<FlowEvent<TOutput>>;
  /**
   * Called with `(stepSlug, chunk)` for each chunk any step streams (`step:stream`), once, in
   * order. One that throws is reported (`reportError`) and the run goes on.
   */
  onChunk?: ChunkListener;
  /** As for `startFlow`: the `Idempotency-Key`; default a random one per call. */
  idempotencyKey?: string;
}

// ---- classes ----------------------------------------------------------------------------------

/** A run followed by a client. Get one from `client.startFlow()` or `client.getRun()`. */
export class FlowRun<TOutput = unknown> {
  private constructor();
  readonly runId: string;
  /** null for a run attached by id until its graph (or snapshot) is loaded. */
  readonly flowSlug: string | null;
  /** The version of its flow the run is on; null until known (the start's answer, the snapshot). */
  readonly flowVersion: number | null;
  /** The input given to startFlow; undefined for a run attached by id. */
  readonly input: unknown;
  readonly status: RunStatus;
  /** The run's output once completed, else null. */
  readonly output: TOutput | null;
  /** The failing step's error once failed, else null. */
  readonly error: string | null;
  readonly startedAt: string | null;
  readonly completedAt: string | null;
  readonly failedAt: string | null;
  /** When the run was cancelled (run:cancelled), else null. */
  readonly cancelledAt: string | null;
  /** The reason given to cancel, else null. */
  readonly cancelReason: string | null;
  /** seq of the last event applied; 0 before any. */
  readonly lastSeq: number;
  /** Every event applied, in seq order. */
  readonly events: readonly FlowEvent<TOutput>[];
  /** The flow's graph, or null until loaded. */
  readonly graph: FlowGraph | null;
  /** Every step known so far (from the graph and the events), by slug. */
  readonly steps: ReadonlyMap<string, StepState>;

  /** Live state of one step (status `created` until an event says otherwise). */
  step(slug: string): StepState;
  /**
   * Where element `index` of map step `stepSlug` is; null for a step that is no map or an index
   * it has not heard of. O(1): the counts are on `step(stepSlug)`.
   */
  taskStatus(stepSlug: string, index: number): TaskStatus | null;
  /** Listen to one event name, or "*" for every event; returns the unsubscribe function. */
  on<N extends FlowEventName>(event: N, listener: EventListener<EventOf<N, TOutput>>): () => void;
  on(event: "*", listener: EventListener<FlowEvent<TOutput>>): () => void;
  /**
   * The chunks step `stepSlug` streams: those received so far, then each as it arrives (a
   * retry's too: see `attempt`), until the step completes or fails, the run ends, or the client
   * stops following it. Breaking out of the loop removes its listener.
   */
  stream<TChunk = unknown>(stepSlug: string): StepStream<TChunk>;
  /**
   * Calls `listener` (without arguments) after each change of the run's state: each event
   * applied, the graph loaded, the client giving up on the run. Returns the unsubscribe
   * function. Bound to the run, like `snapshot`.
   */
  readonly subscribe: (listener: () => void) => () => void;
  /**
   * The run's state as a frozen plain object: the same object until the state changes, so
   * `useSyncExternalStore(run.subscribe, run.snapshot)` works as it is.
   */
  readonly snapshot: () => RunSnapshot<TOutput>;
  /**
   * The run's output; rejects with FlowFailedError on run:failed, FlowCancelledError on
   * run:cancelled. After `retry()`, a new call waits for the new outcome.
   */
  result(options?: WaitOptions): Promise<TOutput>;
  /** Resolves with this run once it has `status`; rejects once it never can. */
  waitForStatus(status: RunStatus, options?: WaitOptions): Promise<this>;
  /**
   * Cancel the run. Resolves once the engine cancelled it; its run:cancelled follows. Rejects
   * with a PGFlowError: status 409 `conflict` when it already ended, 404 `not_found`.
   */
  cancel(reason?: string | null, options?: WaitOptions): Promise<{ run_id: string; status: "cancelled" }>;
  /**
   * Give a waiting input step its value (any JSON value, null included); the step completes with
   * it. Rejects with InputRejectedError on a value its schema refuses, a PGFlowError with
   * status 409 `conflict` when the step is not waiting (or not an input step), 404 `not_found`.
   */
  submit<TValue = unknown>(
    stepSlug: string,
    value: TValue,
    options?: WaitOptions,
  ): Promise<{ run_id: string; step_slug: string; status: "completed" }>;
  /**
   * Run a failed or cancelled run again: its failed and cancelled steps are re-queued. Resolves
   * once the gateway accepted; the run is then followed again (`run:retried`, status
   * `started`). Rejects with status 409 `conflict` for a run that is not failed or cancelled.
   */
  retry(options?: WaitOptions): Promise<{ run_id: string; status: "started" }>;
  /** Fetch the flow's graph (cached per client and flow) and set `graph`. */
  loadGraph(options?: { signal?: AbortSignal }): Promise<FlowGraph>;
  /** Stop following this run (it goes on in the gateway); a pending result() rejects. */
  detach(): void;
}

export type ConnectionState = "idle" | "connecting" | "open" | "reconnecting" | "closed";

/** A client: HTTP calls plus one websocket shared by all its runs. */
export interface PGFlowClient {
  /** The gateway base URL, without a trailing slash. */
  readonly url: string;
  readonly state: ConnectionState;
  /**
   * POST /rpc/run_flow (with an `Idempotency-Key`) and follow the new run. Rejects with
   * PGFlowError (`status`, `code`) on non-2xx, e.g. 422 `idempotency_conflict`.
   */
  startFlow<TOutput = unknown>(
    name: string,
    input?: unknown,
    options?: StartFlowOptions<TOutput>,
  ): Promise<FlowRun<TOutput>>;
  /** Follow a run started elsewhere; its events replay from seq 1. */
  getRun<TOutput = unknown>(runId: string, options?: GetRunOptions<TOutput>): FlowRun<TOutput>;
  /** Close the socket and reject every followed run with code `client_closed`. Idempotent. */
  close(): void;
}

// ---- functions --------------------------------------------------------------------------------

export function createClient(options?: ClientOptions): PGFlowClient;

/**
 * Start flow `name` with `input` and resolve with the run's output.
 * Rejects with FlowFailedError on run:failed, FlowCancelledError on run:cancelled, a
 * DOMException "AbortError" on abort and a DOMException "TimeoutError" on timeout.
 */
export function triggerFlow<TOutput = unknown>(
  name: string,
  input?: unknown,
  options?: TriggerFlowOptions<TOutput>,
): Promise<TOutput>;

/** The client triggerFlow uses without url, token or client; created on first use. */
export function getDefaultClient(): PGFlowClient;

/** Replace the default client; null goes back to the lazily created one. */
export function setDefaultClient(client: PGFlowClient | null): void;
