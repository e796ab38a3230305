-- step_states: one row per step of a run, and one per element of a map step's array (its
-- task '<map step>[<index>]'); it is also the task queue: a row with status started/retrying and
-- no lease is a task a worker may claim once available_at has passed. A map step's own row holds
-- a lease of the engine's ('pgflow:map', never expiring) while its elements run: no one claims it.

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
  -- the attempt a retry_run started from: attempts are numbered on, and max_attempts counts
  -- those after it
  attempt_base int not null default 0,
  -- a map step's element task (step_slug '<map step>[<index>]'): its map step, index and item
  map_parent text,
  map_index int,
  item jsonb,
  -- a map step's row: its element tasks, and how many are not completed yet
  map_tasks int,
  map_left int,
  primary key (run_id, step_slug),
  constraint status_is_known check (
    status in ('created', 'started', 'retrying', 'waiting', 'completed', 'failed', 'cancelled')
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

-- claim_tasks' sweep for leases whose holder vanished, longest expired first.
create index step_states_leased_idx on pgflow.step_states (lease_expires_at)
  where lease_expires_at is not null;

-- claim_tasks' sweep for input steps waiting past their timeout (available_at: the deadline).
create index step_states_waiting_idx on pgflow.step_states (available_at)
  where status = 'waiting';
