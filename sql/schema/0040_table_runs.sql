-- runs: one row per run of a flow. Its row lock serialises everything that happens to the run:
-- a run's row first (for update), then its step_states rows; several runs in run_id order.
-- last_seq is the seq of the run's last event.

create table pgflow.runs (
  run_id uuid primary key default gen_random_uuid(),
  flow_slug text not null,
  status text not null default 'started',
  input jsonb not null,
  output jsonb,
  error text,
  failed_step text,
  owner text,
  remaining_steps int not null,
  last_seq bigint not null default 0,
  started_at timestamptz not null default now(),
  completed_at timestamptz,
  failed_at timestamptz,
  -- cancel_run's; retry_run clears them
  cancelled_at timestamptz,
  cancel_reason text,
  -- run_flow's idempotency_key: unique per flow and owner while the run exists
  idempotency_key text,
  -- the version of its flow it started on, and runs to its end
  flow_version int not null default 1,
  constraint runs_flow_fkey foreign key (flow_slug, flow_version)
    references pgflow.flows (name, version),
  constraint status_is_known check (status in ('started', 'completed', 'failed', 'cancelled')),
  constraint cancelled_run_has_cancelled_at check ((status = 'cancelled') = (cancelled_at is not null)),
  constraint completed_run_has_completed_at check ((status = 'completed') = (completed_at is not null)),
  constraint failed_run_has_failed_at check ((status = 'failed') = (failed_at is not null)),
  constraint remaining_steps_is_not_negative check (remaining_steps >= 0)
)
-- Half of each page left free: a run's row is updated by every report that completes one of its
-- steps (its count of remaining steps, its last seq), and with room on its page that update is
-- a heap-only tuple, with no new entry in any of the table's indexes. Full pages made nine
-- updates in ten write an entry in every index.
with (fillfactor = 50);

-- list_runs: newest first, the order it pages in, (started_at, run_id) descending.
create index runs_started_at_run_id_idx on pgflow.runs (started_at desc, run_id desc);

-- run_flow's idempotent starts: one run per (flow, owner, key); partial, so runs started without
-- a key add no entry.
create unique index runs_idempotency_key_idx on pgflow.runs (flow_slug, coalesce(owner, ''), idempotency_key)
  where idempotency_key is not null;
