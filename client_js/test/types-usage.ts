// Compile-time checks of client.d.ts (`npx tsc --noEmit -p .`). Nothing here runs: the
// functions are never called, so a runner that executes .ts files finds no side effect.
import {
  createClient,
  FlowCancelledError,
  FlowFailedError,
  InputRejectedError,
  FlowRun,
  getDefaultClient,
  PGFlowError,
  setDefaultClient,
  triggerFlow,
  type EventOf,
  type FlowEvent,
  type FlowGraph,
  type ChunkListener,
  type PGFlowClient,
  type RunSnapshot,
  type StepState,
  type StepStream,
  type StepStreamEvent,
  type StepKind,
  type TaskChunkSource,
  type TaskError,
  type TaskStatus,
} from "../client.js";

interface Summary {
  summary: string;
}

export async function usage(): Promise<void> {
  const controller = new AbortController();

  // triggerFlow: output type from the type argument, every option optional.
  const out = await triggerFlow<Summary>("analyze", { url: "https://example.org" }, {
    signal: controller.signal,
    timeout: 30_000,
    onEvent: (e) => {
      if (e.event === "run:completed") {
        const s: string = e.output.summary; // narrowed by the `event` discriminant
        void s;
      }
    },
  });
  const summary: string = out.summary;
  void summary;

  const client: PGFlowClient = createClient({
    url: "http://127.0.0.1:8000",
    token: async () => "jwt",
    heartbeatInterval: 5_000,
    heartbeatTimeout: 10_000,
    reconnect: { minDelay: 100, maxDelay: 5_000 },
  });
  const run: FlowRun<Summary> = await client.startFlow<Summary>("analyze", { n: 1 }, { signal: controller.signal });

  const off = run.on("step:completed", (e) => {
    const slug: string = e.step_slug;
    const attempt: number = e.attempt;
    void slug, attempt;
  });
  off();
  run.on("run:failed", (e: EventOf<"run:failed">) => {
    const err: string = e.error;
    void err;
  });
  run.on("*", (e: FlowEvent<Summary>) => {
    // @ts-expect-error run:started carries no step
    const slug: string = e.event === "run:started" ? e.step_slug : "x";
    void slug;
  });

  const graph: FlowGraph | null = run.graph;
  const loaded: FlowGraph = await run.loadGraph();
  const deps: string[] = loaded.steps[0]?.depends_on ?? [];
  void graph, deps;

  const step: StepState = run.step("summarize");
  if (step.status === "cancelled" || step.status === "retrying") void step.error;
  // @ts-expect-error step state is read-only for users
  step.status = "completed";

  // Streaming: the event, the step's chunks and text, the async iterator.
  run.on("step:stream", (e) => {
    const chunks: unknown[] = e.chunks;
    const attempt: number = e.attempt;
    void chunks, attempt;
  });
  run.on("*", (e) => {
    if (e.event === "step:stream") {
      const streamed: StepStreamEvent = e;
      void streamed;
    }
    const output: unknown = e.output; // every event has output, error and status to read
    void output, e.error, e.status;
  });
  const chunks: readonly unknown[] = step.chunks;
  const text: string = step.text;
  const streamAttempt: number | null = step.streamAttempt;
  void chunks, text, streamAttempt;
  // @ts-expect-error the chunks are read-only for users
  step.chunks.push("x");
  const words: StepStream<string> = run.stream<string>("summarize");
  for await (const word of words) {
    const w: string = word;
    const from: number | null = words.attempt;
    void w, from;
    break;
  }
  for await (const chunk of run.stream("summarize")) {
    // @ts-expect-error a chunk is unknown unless the type argument says otherwise
    const s: string = chunk;
    void s;
  }

  // The store: subscribe()/snapshot(), bound to the run.
  const { subscribe, snapshot } = run;
  const unsubscribe: () => void = subscribe(() => {});
  unsubscribe();
  const snap: RunSnapshot<Summary> = snapshot();
  const snapOutput: Summary | null = snap.output;
  const snapText: string | undefined = snap.steps["summarize"]?.text;
  const stopped: string | undefined = snap.followError?.code;
  void snapOutput, snapText, stopped, snap.lastSeq, snap.status, snap.graph;
  // @ts-expect-error a snapshot is read-only
  snap.status = "completed";
  // @ts-expect-error a subscribe listener takes no arguments
  subscribe((x: number) => void x);

  const onChunk: ChunkListener = (stepSlug, chunk) => void [stepSlug, chunk];
  await triggerFlow("analyze", {}, { onChunk });
  await client.startFlow("analyze", {}, { onChunk: (slug: string) => void slug });
  client.getRun("3f1c…", { onChunk });
  // @ts-expect-error onChunk takes the step's slug first
  await triggerFlow("analyze", {}, { onChunk: (slug: number) => void slug });

  // Map steps (one task per element) and HTTP steps.
  const square = run.step("square");
  const kind: StepKind = square.kind;
  if (kind === "map" && square.tasks !== null) {
    const progress: [number, number, number, number] = [square.tasks, square.tasksCompleted, square.tasksFailed, square.tasksRetrying];
    const latest: TaskError | undefined = square.taskErrors.at(-1);
    const where: [number, number | null, string, boolean] | null = latest ? [latest.index, latest.attempt, latest.error, latest.final] : null;
    void progress, where;
  }
  // @ts-expect-error no such kind
  const nokind: StepKind = "lambda";
  void nokind;
  // @ts-expect-error the counts are read-only for users
  square.tasksCompleted = 3;
  // @ts-expect-error the error list is read-only for users
  square.taskErrors.push({ index: 0, attempt: 1, error: "x", final: true, at: null, seq: 1 });
  const element: TaskStatus | null = run.taskStatus("square", 17);
  void element;
  run.on("step:started", (e) => {
    const tasks: number | undefined = e.tasks;
    void tasks;
  });
  run.on("task:completed", (e) => {
    const index: number = e.index;
    const attempt: number = e.attempt;
    // @ts-expect-error an element's completion carries no output
    const out: { x: number } = e.output;
    void index, attempt, out;
  });
  run.on("task:failed", (e) => void [e.index, e.error.length]);
  run.on("task:retrying", (e) => void [e.index, e.error.length]);
  run.on("task:started", (e) => void e.index);
  run.on("task:stream", (e) => {
    const chunks: unknown[] = e.chunks;
    void chunks, e.index;
  });
  run.on("*", (e) => {
    if (e.event === "task:completed" || e.event === "task:failed") void e.index;
    // @ts-expect-error a step's own events name no element
    if (e.event === "step:completed") void e.index;
  });
  const onElementChunk: ChunkListener = (stepSlug, chunk, task?: TaskChunkSource) => void [stepSlug, chunk, task?.index, task?.attempt];
  await triggerFlow("mapper", {}, { onChunk: onElementChunk });
  const mapStep = loaded.steps.find((s) => s.kind === "map");
  const over: string | undefined = mapStep?.over;
  const url: string | undefined = loaded.steps.find((s) => s.kind === "http")?.url;
  void over, url;

  const lastSeq: number = run.lastSeq;
  const events: readonly FlowEvent<Summary>[] = run.events;
  void lastSeq, events;

  try {
    const result: Summary = await run.result({ timeout: 1_000 });
    void result;
    const same: FlowRun<Summary> = await run.waitForStatus("completed", { signal: controller.signal });
    void same;
  } catch (err) {
    if (err instanceof FlowFailedError) {
      const fields: [string, string | null, string | null, number | null] = [err.runId, err.stepSlug, err.error, err.attempt];
      void fields;
    } else if (err instanceof PGFlowError) {
      const status: number | undefined = err.status;
      void status, err.code;
    } else if (err instanceof DOMException && (err.name === "AbortError" || err.name === "TimeoutError")) {
      void err.message;
    }
  }

  // @ts-expect-error a step status, not a run status
  await run.waitForStatus("waiting");
  await run.waitForStatus("cancelled");

  // Steering: cancel, input steps, retry, idempotent starts.
  const cancelled: { run_id: string; status: "cancelled" } = await run.cancel("no longer needed", { timeout: 5_000 });
  await run.cancel();
  void cancelled;
  // @ts-expect-error a reason is text
  await run.cancel(42);
  const approval = run.step("approve");
  if (approval.status === "waiting") {
    const schema: Record<string, unknown> | null = approval.schema;
    const given: Record<string, unknown> | null = approval.input;
    const until: string | null = approval.timeoutAt;
    void schema, given, until;
  }
  run.on("step:waiting", (e) => {
    const schema: Record<string, unknown> = e.schema;
    const timeoutAt: string = e.timeout_at;
    void schema, timeoutAt;
  });
  run.on("run:cancelled", (e) => {
    const reason: string | null = e.reason;
    void reason;
  });
  run.on("step:cancelled", (e) => {
    const attempt: number | null = e.attempt;
    void attempt;
  });
  run.on("run:retried", (e) => {
    const status: "started" = e.status;
    void status;
  });
  try {
    const done: { step_slug: string; status: "completed" } = await run.submit("approve", { approved: true });
    void done;
    await run.submit<{ approved: boolean }>("approve", { approved: false }, { signal: controller.signal });
    // @ts-expect-error the type argument types the value
    await run.submit<{ approved: boolean }>("approve", { approved: "yes" });
  } catch (err) {
    if (err instanceof InputRejectedError) {
      const where: string[] = err.errors.map((e) => `${e.path}: ${e.message}`);
      const step: string = err.stepSlug;
      void where, step;
    }
  }
  const again: { run_id: string; status: "started" } = await run.retry();
  void again;
  const cancelledAt: string | null = run.cancelledAt;
  const snapReason: string | null = run.snapshot().cancelReason;
  void cancelledAt, snapReason;
  try {
    await triggerFlow("analyze", {}, { idempotencyKey: "order-1234" });
    await client.startFlow("analyze", {}, { idempotencyKey: "order-1234", graph: false });
  } catch (err) {
    if (err instanceof FlowCancelledError) {
      const fields: [string, string | null, "run_cancelled"] = [err.runId, err.reason, err.code];
      void fields;
    }
  }
  // @ts-expect-error an idempotency key is a string
  await triggerFlow("analyze", {}, { idempotencyKey: 1234 });

  const attached = client.getRun("3f1c…", { flowSlug: "analyze", onEvent: (e) => void e.seq });
  attached.detach();

  setDefaultClient(client);
  setDefaultClient(null);
  getDefaultClient().close();
  await triggerFlow("analyze", undefined, { client, url: "http://127.0.0.1:8000", token: "jwt" });
  client.close();
}
