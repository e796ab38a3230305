-- 0001_tables: the schema, its tables and their invariants.
--
-- Every workflow state lives here. Python never writes these tables directly: the functions
-- of 0002 are the engine (docs/design/sql-contract.md).

create schema if not exists pgflow;

-- A flow's shape, normalised by define_flow so that the same shape always compares equal.
create table pgflow.flows (
  flow_slug text primary key,
  output_step text,
  definition jsonb not null,
  created_at timestamptz not null default now()
);

create table pgflow.steps (
  flow_slug text not null references pgflow.flows (flow_slug) on delete cascade,
  step_slug text not null,
  step_index int not null,
  depends_on text[] not null default '{}',
  dependents text[] not null default '{}',
  max_attempts int not null,
  base_delay double precision not null,
  timeout int not null,
  primary key (flow_slug, step_slug),
  constraint max_attempts_is_positive check (max_attempts >= 1),
  constraint base_delay_is_not_negative check (base_delay >= 0),
  constraint timeout_is_positive check (timeout >= 1)
);

create table pgflow.runs (
  run_id uuid primary key default gen_random_uuid(),
  flow_slug text not null references pgflow.flows (flow_slug),
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
  constraint status_is_known check (status in ('started', 'completed', 'failed')),
  constraint completed_run_has_completed_at check ((status = 'completed') = (completed_at is not null)),
  constraint failed_run_has_failed_at check ((status = 'failed') = (failed_at is not null)),
  constraint remaining_steps_is_not_negative check (remaining_steps >= 0)
);

create index runs_started_at_idx on pgflow.runs (started_at desc);

-- One row per step of a run; it is also the task queue: a row with status started/retrying and
-- no lease is a task a worker may claim once available_at has passed.
create table pgflow.step_states (
  run_id uuid not null references pgflow.runs (run_id) on delete cascade,
  step_slug text not null,
  flow_slug text not null,
  status text not null default 'created',
  remaining_deps int not null,
  attempt int not null default 0,
  output jsonb,
  error text,
  available_at timestamptz,
  leased_by text,
  lease_expires_at timestamptz,
  created_at timestamptz not null default now(),
  started_at timestamptz,
  completed_at timestamptz,
  failed_at timestamptz,
  primary key (run_id, step_slug),
  constraint status_is_known check (
    status in ('created', 'started', 'retrying', 'completed', 'failed', 'cancelled')
  ),
  constraint remaining_deps_is_not_negative check (remaining_deps >= 0),
  constraint lease_has_holder check ((leased_by is null) = (lease_expires_at is null)),
  constraint only_queued_steps_are_leased check (
    lease_expires_at is null or status in ('started', 'retrying')
  )
);

-- claim_tasks: unleased ready tasks, oldest first.
create index step_states_ready_idx on pgflow.step_states (available_at)
  where status in ('started', 'retrying') and lease_expires_at is null;

-- claim_tasks' sweep for leases whose holder vanished.
create index step_states_leased_idx on pgflow.step_states (lease_expires_at)
  where lease_expires_at is not null;

-- The append-only event log. seq is 1, 2, 3, ... per run, assigned under the run's row lock,
-- so it is gap-free and in commit order.
create table pgflow.run_events (
  run_id uuid not null references pgflow.runs (run_id) on delete cascade,
  seq bigint not null,
  event text not null,
  step_slug text,
  payload jsonb not null,
  at timestamptz not null default clock_timestamp(),
  -- the top-level transaction that wrote it (also from inside a subtransaction): how the
  -- commit-time notification finds the transaction's events
  tx xid8 not null default pg_current_xact_id(),
  primary key (run_id, seq),
  constraint seq_is_positive check (seq >= 1),
  constraint event_is_known check (
    event in ('run:started', 'run:completed', 'run:failed',
              'step:started', 'step:completed', 'step:failed', 'step:retrying')
  )
);

create index run_events_tx_idx on pgflow.run_events (tx);
