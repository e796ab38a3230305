// The live page's step looks (gateway/static/format.js, pure): a retried step shows as waiting
// for its retry during the backoff, then as running attempt N once its step:started arrives.
import assert from "node:assert/strict";
import { test } from "node:test";

import { applyTiming, newTiming, STATUS_LABELS, stepLook } from "../../gateway/static/format.js";

const T0 = Date.parse("2026-01-01T00:00:00Z");
const at = (ms) => new Date(T0 + ms).toISOString();
const OPTIONS = { max_attempts: 3, base_delay: 1 };

function timingOf(events) {
  const timing = newTiming();
  for (const e of events) applyTiming(timing, e);
  return timing;
}

const FIRST_TRY = [
  { event: "run:started", step_slug: null, at: at(0) },
  { event: "step:started", step_slug: "charge", attempt: 1, at: at(0) },
  { event: "step:retrying", step_slug: "charge", attempt: 1, error: "card declined", at: at(500) },
];

test("during the backoff a step is waiting to retry, with the time left, then waiting for a worker", () => {
  const timing = timingOf(FIRST_TRY);
  const state = { slug: "charge", status: "retrying", attempt: 1, error: "card declined" };
  const during = stepLook(state, timing, OPTIONS, T0 + 800);
  assert.equal(during.sub, "retry in 700 ms");
  assert.equal(during.label, "charge: waiting to retry, attempt 1 of 3 failed, 800 ms, error: card declined");
  const after = stepLook(state, timing, OPTIONS, T0 + 2_000); // delay over, no worker yet
  assert.equal(after.sub, "waiting to retry");
  assert.equal(STATUS_LABELS.retrying, "waiting to retry");
});

test("once attempt 2's step:started arrives the step is running attempt 2, timed from that start", () => {
  const timing = timingOf([...FIRST_TRY, { event: "step:started", step_slug: "charge", attempt: 2, at: at(1_600) }]);
  const look = stepLook({ slug: "charge", status: "started", attempt: 2, error: "card declined" }, timing, OPTIONS, T0 + 2_000);
  assert.equal(look.status, "started");
  assert.equal(look.sub, "running attempt 2 · 400 ms");
  assert.equal(look.pill, "try 2/3");
  assert.equal(look.label, "charge: running, attempt 2 of 3, 2.0 s");
  assert.equal(look.duration, 2_000, "the step's whole time, first attempt included");
});

test("a first attempt running reads as before", () => {
  const timing = timingOf(FIRST_TRY.slice(0, 2));
  const look = stepLook({ slug: "charge", status: "started", attempt: 1 }, timing, OPTIONS, T0 + 300);
  assert.equal(look.sub, "running · 300 ms");
  assert.equal(look.pill, null);
});
