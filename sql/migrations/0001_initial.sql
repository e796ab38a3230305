-- 0001_initial: the engine's schema, as first released.
--
-- The pre-release migrations 0001_tables ... 0007_field_hardening folded into one baseline: this
-- file is sql/schema/*.sql concatenated in name order when they were folded. It is frozen from
-- then on, like every migration: a later change edits sql/schema/ and adds a migration, and
-- tests/migration/test_schema_matches_migrations.py proves the two agree (sql/README.md).

-- sql/schema/0010_schema.sql

-- The schema that holds the engine: its tables and the functions that are its only writers.
-- Python never writes these tables directly: the functions are the engine
-- (docs/design/sql-contract.md). `if not exists`: pgflow migrate creates the schema first, to
-- hold its bookkeeping table pgflow.schema_migrations.

create schema if not exists pgflow;

-- sql/schema/0030_table_flows.sql

-- flows: a flow's shape, normalised by define_flow so that the same shape always compares equal.
-- definition_hash is the sha-256 of the document (its jsonb text) that created the flow: the same
-- document again is answered from the row without validating it.

create table pgflow.flows (
  flow_slug text primary key,
  output_step text,
  definition jsonb not null,
  created_at timestamptz not null default now(),
  definition_hash bytea
);

-- sql/schema/0031_table_steps.sql

-- steps: a flow's steps, in definition order (step_index), with their dependencies both ways and
-- their retry and timeout options.

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

-- sql/schema/0040_table_runs.sql

-- runs: one row per run of a flow. Its row lock serialises everything that happens to the run:
-- a run's row first (for update), then its step_states rows; several runs in run_id order.
-- last_seq is the seq of the run's last event.

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

-- list_runs: newest first, the order it pages in, (started_at, run_id) descending.
create index runs_started_at_run_id_idx on pgflow.runs (started_at desc, run_id desc);

-- sql/schema/0041_table_step_states.sql

-- step_states: one row per step of a run; it is also the task queue: a row with status
-- started/retrying and no lease is a task a worker may claim once available_at has passed.

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

-- claim_tasks' sweep for leases whose holder vanished, longest expired first.
create index step_states_leased_idx on pgflow.step_states (lease_expires_at)
  where lease_expires_at is not null;

-- sql/schema/0042_table_run_events.sql

-- run_events: the append-only event log. seq is 1, 2, 3, ... per run, assigned under the run's
-- row lock, so it is gap-free and in commit order. payload is the event as clients receive it.

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

-- _notify_events reads the committing transaction's events back through this index.
create index run_events_tx_idx on pgflow.run_events (tx);

-- sql/schema/0100_function_claim_tasks.sql

-- claim_tasks: leases up to max_tasks (1 to 1000) ready tasks, oldest first, for lease_seconds
-- (0.1 to 86400).
-- Before claiming it sweeps leases that ran out, longest expired first: each counts as a failed
-- attempt ('lease expired') and is claimable again at once, or fails the step on its last attempt.
-- A claimed retry (a row in status 'retrying': attempt 2 or later) gets its step:started, with
-- its attempt, in the same transaction; first attempts had theirs when they were queued.
-- Returns: one row per task with the handler's assembled input
--   {"run": <run input>, "<dep slug>": <dep output>, ...} and the step's timeout.
-- Locks: for update skip locked on ready rows; the run row of each expired lease it sweeps; for a
--   retry, its run's row with skip locked too (the event's seq): a claim never waits for a run,
--   so it cannot deadlock with a run-locked path waiting for the step row; a retry whose run is
--   being written at that instant stays queued for the next claim.
-- Notifies: pgflow_events (step:started of claimed retries; the sweep's step:retrying /
--   step:failed / run:failed); pgflow_tasks for a swept lease that is claimable again.
-- Raises: PF400 for a missing worker_id or an argument out of its range.
-- Idempotent: no; each call takes new leases.
create function pgflow.claim_tasks(
  worker_id text,
  max_tasks int,
  flow_slugs text[] default null,
  lease_seconds double precision default 30
) returns table (
  run_id uuid,
  flow_slug text,
  step_slug text,
  attempt int,
  input jsonb,
  timeout int,
  max_attempts int
)
language plpgsql
volatile
set search_path to ''
as $$
declare
  -- a variable, not clock_timestamp() in the queries: a volatile call there defeats the indexes
  v_now timestamptz := clock_timestamp();
  v_expired record;
begin
  -- ARGUMENTS
  if claim_tasks.worker_id is null or claim_tasks.worker_id = '' then
    perform pgflow._bad_argument('claim_tasks', 'worker_id', 'a non-empty string', quote_literal(claim_tasks.worker_id));
  end if;
  if (claim_tasks.max_tasks between 1 and 1000) is not true then
    perform pgflow._bad_argument('claim_tasks', 'max_tasks', 'an integer from 1 to 1000', claim_tasks.max_tasks::text);
  end if;
  if (claim_tasks.lease_seconds between 0.1 and 86400) is not true then
    perform pgflow._bad_argument('claim_tasks', 'lease_seconds', 'a number of seconds from 0.1 to 86400',
                                 claim_tasks.lease_seconds::text);
  end if;

  -- SWEEP: leases whose holder vanished, rechecked under each run's lock
  for v_expired in
    select e.run_id, e.step_slug from (
      -- in the lease index's order, so that it is read from its start and stops at the first
      -- live lease: a scan of the table costs as much as the queue is long, every call
      select s.run_id, s.step_slug from pgflow.step_states as s
      where s.lease_expires_at < v_now
        and (claim_tasks.flow_slugs is null or s.flow_slug = any(claim_tasks.flow_slugs))
      order by s.lease_expires_at
      limit 100
    ) as e
    order by e.run_id
  loop
    perform 1 from pgflow.runs as r
    where r.run_id = v_expired.run_id and r.status = 'started'
    for update;
    if found then
      perform 1 from pgflow.step_states as s
      where s.run_id = v_expired.run_id and s.step_slug = v_expired.step_slug
        and s.status = 'started' and s.lease_expires_at < clock_timestamp();
      if found then
        perform pgflow._fail_attempt(v_expired.run_id, v_expired.step_slug, 'lease expired', true);
      end if;
    end if;
  end loop;

  -- CLAIM (what the sweep made claimable again included). A retry's run lock and event come
  -- from function calls made only for rows that were retrying: a first attempt pays one
  -- comparison. The run lock is taken before the limit counts the row, so a retry whose run is
  -- busy leaves its slot to the next ready task instead of shrinking the batch.
  v_now := clock_timestamp();
  return query
  with claimed as (
    select s.run_id, s.step_slug, s.status = 'retrying' as retry
    from pgflow.step_states as s
    where s.status in ('started', 'retrying')
      and s.lease_expires_at is null
      and s.available_at <= v_now
      and (claim_tasks.flow_slugs is null or s.flow_slug = any(claim_tasks.flow_slugs))
      and (s.status <> 'retrying' or pgflow._lock_run_for_retry(s.run_id))
    order by s.available_at
    limit claim_tasks.max_tasks
    for update skip locked
  ), leased as (
    update pgflow.step_states as s
    set status = 'started',
        attempt = s.attempt + 1,
        leased_by = claim_tasks.worker_id,
        lease_expires_at = v_now + claim_tasks.lease_seconds * interval '1 second'
    from claimed as c
    where s.run_id = c.run_id and s.step_slug = c.step_slug
    -- RETURNING runs once per updated row: one event per claimed retry (read below, so that
    -- no plan can leave it out)
    returning s.run_id, s.flow_slug, s.step_slug, s.attempt,
      case when c.retry then pgflow._announce_retry(s.run_id, s.step_slug, s.attempt) end
        as announced
  )
  select l.run_id, l.flow_slug, l.step_slug, l.attempt,
    jsonb_build_object('run', r.input) || coalesce((
      select jsonb_object_agg(d.step_slug, d.output)
      from pgflow.step_states as d
      where d.run_id = l.run_id and d.step_slug = any(st.depends_on)
    ), '{}'::jsonb),
    st.timeout,
    st.max_attempts
  from leased as l
  join pgflow.runs as r on r.run_id = l.run_id
  join pgflow.steps as st on st.flow_slug = l.flow_slug and st.step_slug = l.step_slug
  where l.announced is not false;
end;
$$;

-- sql/schema/0100_function_complete_step.sql

-- complete_step: completes a leased step, starts the dependents that became ready and, when it
-- was the run's last step, completes the run with its output.
-- Returns: true if applied; false (and changes nothing) when the caller no longer holds the
--   task: lease lost or run out, another attempt, run already finished.
-- Locks: the run's row, then its step rows.
-- Notifies: pgflow_events (step:completed, step:started..., run:completed), pgflow_tasks.
-- Raises: nothing of its own; a stale completion returns false.
-- Idempotent: yes; a repeat is a stale completion and returns false.
create function pgflow.complete_step(
  run_id uuid,
  step_slug text,
  output jsonb,
  worker_id text default null,
  attempt int default null
) returns boolean
language plpgsql
volatile
set search_path to ''
as $$
declare
  v_output jsonb := coalesce(complete_step.output, 'null'::jsonb);
  v_run pgflow.runs%rowtype;
  v_attempt int;
  v_dependents text[];
  v_ready text[];
  v_slug text;
  v_seq bigint;
  v_run_output jsonb;
begin
  if not pgflow._lock_leased_step(complete_step.run_id, complete_step.step_slug,
                                  complete_step.worker_id, complete_step.attempt) then
    return false;
  end if;
  select * into v_run from pgflow.runs as r where r.run_id = complete_step.run_id;
  v_seq := v_run.last_seq + 1;

  -- THE STEP
  update pgflow.step_states as s
  set status = 'completed', output = v_output, error = null, completed_at = now(),
      leased_by = null, lease_expires_at = null
  where s.run_id = complete_step.run_id and s.step_slug = complete_step.step_slug
  returning s.attempt into v_attempt;
  perform pgflow._event(v_run.run_id, v_seq, 'step:completed', complete_step.step_slug,
                        'completed', v_output, null, v_attempt);

  -- DEPENDENTS whose last dependency this was
  select st.dependents into v_dependents from pgflow.steps as st
  where st.flow_slug = v_run.flow_slug and st.step_slug = complete_step.step_slug;
  if cardinality(v_dependents) > 0 then
    with updated as (
      update pgflow.step_states as s
      set remaining_deps = s.remaining_deps - 1,
          status = case when s.remaining_deps = 1 then 'started' else s.status end,
          available_at = case when s.remaining_deps = 1 then now() else s.available_at end,
          started_at = case when s.remaining_deps = 1 then now() else s.started_at end
      where s.run_id = complete_step.run_id and s.step_slug = any(v_dependents)
      returning s.step_slug, s.remaining_deps
    )
    select array_agg(u.step_slug order by array_position(v_dependents, u.step_slug)) into v_ready
    from updated as u where u.remaining_deps = 0;
    if v_ready is not null then
      foreach v_slug in array v_ready loop
        v_seq := v_seq + 1;
        perform pgflow._event(v_run.run_id, v_seq, 'step:started', v_slug, 'started', null, null, 1);
      end loop;
      perform pg_notify('pgflow_tasks', v_run.flow_slug);
    end if;
  end if;

  -- THE RUN, when this was its last step
  if v_run.remaining_steps > 1 then
    update pgflow.runs as r set remaining_steps = r.remaining_steps - 1, last_seq = v_seq
    where r.run_id = v_run.run_id;
    return true;
  end if;
  v_run_output := pgflow._run_output(v_run.run_id);
  v_seq := v_seq + 1;
  perform pgflow._event(v_run.run_id, v_seq, 'run:completed', null, 'completed', v_run_output, null, null);
  update pgflow.runs as r
  set remaining_steps = 0, status = 'completed', output = v_run_output, completed_at = now(),
      last_seq = v_seq
  where r.run_id = v_run.run_id;
  return true;
end;
$$;

-- sql/schema/0100_function_define_flow.sql

-- define_flow: creates a flow's shape, or checks that it equals the stored one.
-- Input: {"slug", "steps": [{"slug", "depends_on", "max_attempts", "base_delay", "timeout"}],
--         "output_step", and optional flow-wide defaults "max_attempts", "base_delay", "timeout"}.
-- Returns: the normalised shape, as get_flow returns it.
-- Cost: linear in the steps and dependencies; the document a flow was created from (its jsonb
--   text, so key order and spacing do not matter) is recognised by its stored sha-256 and
--   answered with the stored shape, without validating or comparing anything again.
-- Locks: a transaction advisory lock on the slug, so two processes defining at once agree (not
--   taken on the fast path: a stored shape never changes).
-- Notifies: nothing.
-- Raises: PF400 for a bad definition (slugs, types, ranges, unknown deps, cycles, output_step);
--         PF409 when the slug exists with another shape (the message lists the differences).
-- Idempotent: yes, for the same shape.
create function pgflow.define_flow(definition jsonb) returns jsonb
language plpgsql
volatile
set search_path to ''
as $$
declare
  v_hash bytea := sha256(convert_to(define_flow.definition::text, 'UTF8'));
  v_flow_slug text;
  v_normalised jsonb;
  v_existing jsonb;
  v_existing_hash bytea;
  v_diff text;
begin
  -- FAST PATH: the very document this flow was defined from
  if jsonb_typeof(define_flow.definition -> 'slug') = 'string' then
    select f.definition into v_existing from pgflow.flows as f
    where f.flow_slug = define_flow.definition ->> 'slug' and f.definition_hash = v_hash;
    if found then
      return v_existing;
    end if;
  end if;

  v_normalised := pgflow._normalise_flow(define_flow.definition);
  v_flow_slug := v_normalised ->> 'slug';

  -- STORE OR COMPARE, serialised per slug
  perform pg_advisory_xact_lock(hashtextextended('pgflow.define_flow:' || v_flow_slug, 0));
  select f.definition, f.definition_hash into v_existing, v_existing_hash
  from pgflow.flows as f where f.flow_slug = v_flow_slug;
  if found then
    v_diff := pgflow._shape_diff(v_existing, v_normalised);
    if v_diff <> '' then
      raise exception 'flow % already exists with a different shape (%); give the new shape a new slug, e.g. %',
        quote_literal(v_flow_slug), v_diff, quote_literal(v_flow_slug || '_v2')
        using errcode = 'PF409';
    end if;
    if v_existing_hash is null then
      update pgflow.flows as f set definition_hash = v_hash where f.flow_slug = v_flow_slug;
    end if;
    return v_existing;
  end if;

  insert into pgflow.flows (flow_slug, output_step, definition, definition_hash)
  values (v_flow_slug, v_normalised ->> 'output_step', v_normalised, v_hash);
  with s as (
    select e.i, e.s from jsonb_array_elements(v_normalised -> 'steps') with ordinality as e (s, i)
  ), dependents as (
    select d.slug, array_agg(s.s ->> 'slug' order by s.i) as slugs
    from s cross join lateral jsonb_array_elements_text(s.s -> 'depends_on') as d (slug)
    group by d.slug
  )
  insert into pgflow.steps (flow_slug, step_slug, step_index, depends_on, dependents, max_attempts, base_delay, timeout)
  select
    v_flow_slug,
    s.s ->> 'slug',
    s.i,
    array(select jsonb_array_elements_text(s.s -> 'depends_on')),
    coalesce(d.slugs, '{}'),
    (s.s ->> 'max_attempts')::int,
    (s.s ->> 'base_delay')::double precision,
    (s.s ->> 'timeout')::int
  from s left join dependents as d on d.slug = s.s ->> 'slug';
  return v_normalised;
end;
$$;

-- sql/schema/0100_function_extend_leases.sql

-- extend_leases: keeps the leases of tasks a worker is still running for lease_seconds (0.1 to
-- 86400); returns how many it kept. A lease that already ran out is not revived: the task may be
-- someone else's by now.
-- Locks: the step rows whose lease it extends (row locks of the update).
-- Notifies: nothing.
-- Raises: PF400 for an argument out of its range, or run_ids and step_slugs of unequal length.
-- Idempotent: yes; a repeat moves the same leases' expiry again.
create function pgflow.extend_leases(
  worker_id text,
  run_ids uuid[],
  step_slugs text[],
  lease_seconds double precision default 30
) returns int
language plpgsql
volatile
set search_path to ''
as $$
declare
  v_kept int;
begin
  if (extend_leases.lease_seconds between 0.1 and 86400) is not true then
    perform pgflow._bad_argument('extend_leases', 'lease_seconds', 'a number of seconds from 0.1 to 86400',
                                 extend_leases.lease_seconds::text);
  end if;
  if coalesce(cardinality(extend_leases.run_ids), 0) <> coalesce(cardinality(extend_leases.step_slugs), 0) then
    perform pgflow._bad_argument('extend_leases', 'step_slugs', 'as long as run_ids',
      format('%s against %s', coalesce(cardinality(extend_leases.step_slugs), 0),
             coalesce(cardinality(extend_leases.run_ids), 0)));
  end if;
  with extended as (
    update pgflow.step_states as s
    set lease_expires_at = clock_timestamp() + extend_leases.lease_seconds * interval '1 second'
    from unnest(extend_leases.run_ids, extend_leases.step_slugs) as t (run_id, step_slug)
    where s.run_id = t.run_id and s.step_slug = t.step_slug
      and s.leased_by = extend_leases.worker_id
      and s.lease_expires_at >= clock_timestamp()
    returning 1
  )
  select count(*)::int into v_kept from extended;
  return v_kept;
end;
$$;

-- sql/schema/0100_function_fail_step.sql

-- fail_step: ends a leased step's attempt with an error; retries with exponential backoff
-- (base_delay * 2^(attempt-1) seconds, at most 30 days) until max_attempts, then fails the step
-- and the run.
-- Returns: true if applied; false (and changes nothing) for a caller that no longer holds the
--   task, as complete_step.
-- Locks: the run's row, then its step rows.
-- Notifies: pgflow_events (step:retrying, or step:failed and run:failed).
-- Raises: nothing of its own; a stale report returns false.
-- Idempotent: yes; a repeat is stale and returns false.
create function pgflow.fail_step(
  run_id uuid,
  step_slug text,
  error text,
  worker_id text default null,
  attempt int default null
) returns boolean
language plpgsql
volatile
set search_path to ''
as $$
begin
  if not pgflow._lock_leased_step(fail_step.run_id, fail_step.step_slug,
                                  fail_step.worker_id, fail_step.attempt) then
    return false;
  end if;
  perform pgflow._fail_attempt(fail_step.run_id, fail_step.step_slug,
                               coalesce(fail_step.error, 'failed without a message'), false);
  return true;
end;
$$;

-- sql/schema/0100_function_get_flow.sql

-- get_flow: the shape the browser draws, in define_flow's normalised form; null if unknown.
-- Locks: none. Notifies: nothing. Raises: nothing. Idempotent: yes (reads only).
create function pgflow.get_flow(flow_slug text) returns jsonb
language sql
stable
set search_path to ''
as $$
  select f.definition from pgflow.flows as f where f.flow_slug = get_flow.flow_slug;
$$;

-- sql/schema/0100_function_get_run.sql

-- get_run: the run now, with every step in flow order; null for an unknown run.
-- Locks: none. Notifies: nothing. Raises: nothing. Idempotent: yes (reads only).
create function pgflow.get_run(run_id uuid) returns jsonb
language sql
stable
set search_path to ''
as $$
  select jsonb_build_object(
    'run_id', r.run_id,
    'flow_slug', r.flow_slug,
    'status', r.status,
    'input', r.input,
    'output', r.output,
    'error', r.error,
    'failed_step', r.failed_step,
    'owner', r.owner,
    'seq', r.last_seq,
    'started_at', r.started_at,
    'completed_at', r.completed_at,
    'failed_at', r.failed_at,
    'steps', (
      select coalesce(jsonb_agg(jsonb_build_object(
        'step_slug', s.step_slug,
        'status', s.status,
        'attempt', s.attempt,
        'output', s.output,
        'error', s.error,
        'created_at', s.created_at,
        'started_at', s.started_at,
        'completed_at', s.completed_at,
        'failed_at', s.failed_at
      ) order by st.step_index), '[]'::jsonb)
      from pgflow.step_states as s
      join pgflow.steps as st on st.flow_slug = s.flow_slug and st.step_slug = s.step_slug
      where s.run_id = r.run_id
    )
  )
  from pgflow.runs as r
  where r.run_id = get_run.run_id;
$$;

-- sql/schema/0100_function_get_run_events.sql

-- get_run_events: the run's events with since < seq (<= until, when given), in seq order.
-- Locks: none. Notifies: nothing. Raises: nothing. Idempotent: yes (reads only).
create function pgflow.get_run_events(run_id uuid, since bigint default 0, until bigint default null)
returns setof jsonb
language sql
stable
set search_path to ''
as $$
  select e.payload from pgflow.run_events as e
  where e.run_id = get_run_events.run_id
    and e.seq > coalesce(get_run_events.since, 0)
    and (get_run_events.until is null or e.seq <= get_run_events.until)
  order by e.seq;
$$;

-- sql/schema/0100_function_list_runs.sql

-- list_runs: runs newest first ((started_at, run_id) descending), at most max_runs (1 to 10000),
-- filtered by flow, owner, statuses (any of 'started', 'completed', 'failed') and a start-time
-- window (started_after < started_at < started_before), continuing after the run at
-- (after_started_at, after_run_id) when given: keyset paging, the last row of a page being the
-- next call's position.
-- Returns: {"run_id", "flow_slug", "status", "seq", "started_at", "completed_at", "failed_at"}.
-- Locks: none. Notifies: nothing.
-- Raises: PF400 for an argument out of its range, or half a position.
-- Idempotent: yes (reads only).
create function pgflow.list_runs(
  max_runs int default 20,
  flow_slug text default null,
  owner text default null,
  statuses text[] default null,
  started_after timestamptz default null,
  started_before timestamptz default null,
  after_started_at timestamptz default null,
  after_run_id uuid default null
) returns setof jsonb
language plpgsql
stable
set search_path to ''
as $$
begin
  if (list_runs.max_runs between 1 and 10000) is not true then
    perform pgflow._bad_argument('list_runs', 'max_runs', 'an integer from 1 to 10000', list_runs.max_runs::text);
  end if;
  if list_runs.statuses is not null and (cardinality(list_runs.statuses) = 0
      or not list_runs.statuses <@ array['started', 'completed', 'failed']) then
    perform pgflow._bad_argument('list_runs', 'statuses', 'null or a non-empty array of started, completed, failed',
                                 list_runs.statuses::text);
  end if;
  if (list_runs.after_started_at is null) <> (list_runs.after_run_id is null) then
    perform pgflow._bad_argument('list_runs', 'after_started_at and after_run_id', 'both given or both null',
      format('%s and %s', coalesce(list_runs.after_started_at::text, 'null'), coalesce(list_runs.after_run_id::text, 'null')));
  end if;

  -- the position and the window bound the index scan; the other filters are checked on the way
  return query
  select jsonb_build_object(
    'run_id', r.run_id, 'flow_slug', r.flow_slug, 'status', r.status, 'seq', r.last_seq,
    'started_at', r.started_at, 'completed_at', r.completed_at, 'failed_at', r.failed_at
  )
  from pgflow.runs as r
  where (r.started_at, r.run_id) < (coalesce(list_runs.after_started_at, 'infinity'),
                                    coalesce(list_runs.after_run_id, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
    and r.started_at < coalesce(list_runs.started_before, 'infinity')
    and r.started_at > coalesce(list_runs.started_after, '-infinity')
    and (list_runs.flow_slug is null or r.flow_slug = list_runs.flow_slug)
    and (list_runs.owner is null or r.owner = list_runs.owner)
    and (list_runs.statuses is null or r.status = any(list_runs.statuses))
  order by r.started_at desc, r.run_id desc
  limit list_runs.max_runs;
end;
$$;

-- sql/schema/0100_function_release_tasks.sql

-- release_tasks: gives back leased tasks unrun (a worker shutting down), claimable at once;
-- the attempt they were claimed for is not counted. Without ids, every task the worker holds.
-- Returns: how many it released.
-- Locks: the step rows it releases (row locks of the update).
-- Notifies: pgflow_tasks, once per flow of the released tasks, so another worker takes them.
-- Raises: nothing.
-- Idempotent: yes; a repeat finds nothing leased and returns 0.
create function pgflow.release_tasks(
  worker_id text,
  run_ids uuid[] default null,
  step_slugs text[] default null
) returns int
language plpgsql
volatile
set search_path to ''
as $$
declare
  v_flows text[];
  v_count int;
begin
  with released as (
    update pgflow.step_states as s
    set leased_by = null, lease_expires_at = null, attempt = s.attempt - 1
    where s.leased_by = release_tasks.worker_id
      and s.status = 'started'
      and (release_tasks.run_ids is null or (s.run_id, s.step_slug) in (
        select t.run_id, t.step_slug from unnest(release_tasks.run_ids, release_tasks.step_slugs) as t (run_id, step_slug)
      ))
    returning s.flow_slug
  )
  select array_agg(distinct r.flow_slug), count(*) into v_flows, v_count from released as r;
  if v_count > 0 then
    perform pg_notify('pgflow_tasks', f) from unnest(v_flows) as f;
  end if;
  return v_count;
end;
$$;

-- sql/schema/0100_function_report_steps.sql

-- report_steps: completes (errors[i] is null) or fails (errors[i] is not null) many leased steps,
-- a worker's batch of results in one call, one transaction, one notification. Completions are
-- the engine's hot path, so they are applied set-based: a handful of statements for the whole
-- batch. Failures are rare and take the per-step path (fail_step: retries, failing the run).
-- Returns: for each input position, whether it was applied (false: a stale report — the caller
--   no longer holds a live lease on that step, with that worker_id and attempt, or the run ended).
-- Locks: every run of the batch, in run_id order (the engine's lock order), before anything else,
--   so two workers reporting overlapping runs cannot deadlock; then the step rows it changes.
-- Notifies: pgflow_events (through the transaction's one notification), pgflow_tasks per flow
--   whose tasks became ready.
-- Raises: PF400 when the arrays differ in length.
-- Idempotent: yes; a repeated report is stale and changes nothing.
create function pgflow.report_steps(
  worker_id text,
  run_ids uuid[],
  step_slugs text[],
  attempts int[],
  outputs jsonb[],
  errors text[]
) returns boolean[]
language plpgsql
volatile
set search_path to ''
as $$
declare
  v_count int := coalesce(cardinality(report_steps.run_ids), 0);
  v_applied boolean[] := array_fill(false, array[coalesce(cardinality(report_steps.run_ids), 0)]);
  v_i int;
  v_done int[];
  v_done_attempts int[];
  v_done_flows text[];
  v_ready_runs uuid[];
  v_ready_slugs text[];
  v_ready_last int[];
  v_ready_index int[];
  v_flows text[];
  -- per run of the batch with a completion, in run_id order
  v_runs uuid[];
  v_runs_done int[];
  v_runs_seq bigint[];
  v_runs_finished boolean[];
  v_runs_output jsonb[];
  v_at text := to_char(clock_timestamp() at time zone 'utc', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"');
begin
  if v_count is distinct from coalesce(cardinality(report_steps.step_slugs), 0)
     or v_count is distinct from coalesce(cardinality(report_steps.attempts), 0)
     or v_count is distinct from coalesce(cardinality(report_steps.outputs), 0)
     or v_count is distinct from coalesce(cardinality(report_steps.errors), 0) then
    raise exception 'report_steps needs arrays of equal length' using errcode = 'PF400';
  end if;
  if v_count = 0 then
    return v_applied;
  end if;

  -- LOCK ACQUISITION: all the batch's runs, in run_id order
  perform 1 from pgflow.runs as r
  where r.run_id = any(report_steps.run_ids)
  order by r.run_id
  for update;

  -- FAILURES, one by one: each may retry, or fail its step and its run
  for v_i in
    select i from generate_subscripts(report_steps.run_ids, 1) as i
    where report_steps.errors[i] is not null
    order by report_steps.run_ids[i], i
  loop
    v_applied[v_i] := pgflow.fail_step(report_steps.run_ids[v_i], report_steps.step_slugs[v_i],
      report_steps.errors[v_i], report_steps.worker_id, report_steps.attempts[v_i]);
  end loop;

  -- COMPLETIONS: only from the live lease holder of a step of a run still going
  with reported as (
    select i, report_steps.run_ids[i] as run_id, report_steps.step_slugs[i] as step_slug,
      report_steps.attempts[i] as attempt, coalesce(report_steps.outputs[i], 'null'::jsonb) as output
    from generate_subscripts(report_steps.run_ids, 1) as i
    where report_steps.errors[i] is null
  ), valid as (
    select distinct on (p.run_id, p.step_slug) p.*
    from reported as p
    join pgflow.step_states as s on s.run_id = p.run_id and s.step_slug = p.step_slug
    join pgflow.runs as r on r.run_id = p.run_id
    where r.status = 'started'
      and s.status = 'started'
      and s.leased_by = report_steps.worker_id
      and s.lease_expires_at >= clock_timestamp()
      and (p.attempt is null or s.attempt = p.attempt)
    order by p.run_id, p.step_slug, p.i
  ), completed as (
    update pgflow.step_states as s
    set status = 'completed', output = v.output, error = null, completed_at = now(),
        leased_by = null, lease_expires_at = null
    from valid as v
    where s.run_id = v.run_id and s.step_slug = v.step_slug
    returning v.i, s.attempt, s.flow_slug
  )
  select array_agg(c.i order by c.i), array_agg(c.attempt order by c.i),
    array_agg(c.flow_slug order by c.i)
    into v_done, v_done_attempts, v_done_flows
  from completed as c;
  if v_done is null then
    return v_applied;
  end if;
  foreach v_i in array v_done loop
    v_applied[v_i] := true;
  end loop;

  -- DEPENDENTS: one decrement per completed dependency; those reaching zero start, each
  -- remembering which completion (the last of its dependencies) started it
  with completed as (
    select report_steps.run_ids[c.i] as run_id, c.flow_slug,
      report_steps.step_slugs[c.i] as step_slug, c.i
    from unnest(v_done, v_done_flows) as c (i, flow_slug)
  ), decrements as (
    select c.run_id, d.dependent, count(*)::int as n, max(c.i) as last_i
    from completed as c
    join pgflow.steps as st on st.flow_slug = c.flow_slug and st.step_slug = c.step_slug
    cross join unnest(st.dependents) as d (dependent)
    group by c.run_id, d.dependent
  ), ready as (
    update pgflow.step_states as s
    set remaining_deps = s.remaining_deps - d.n,
        status = case when s.remaining_deps = d.n then 'started' else s.status end,
        available_at = case when s.remaining_deps = d.n then now() else s.available_at end,
        started_at = case when s.remaining_deps = d.n then now() else s.started_at end
    from decrements as d
    where s.run_id = d.run_id and s.step_slug = d.dependent
    returning s.run_id, s.step_slug, s.flow_slug, s.remaining_deps, d.last_i
  )
  select array_agg(r.run_id), array_agg(r.step_slug), array_agg(r.last_i),
    array_agg(st.step_index), array_agg(distinct r.flow_slug)
    into v_ready_runs, v_ready_slugs, v_ready_last, v_ready_index, v_flows
  from ready as r
  join pgflow.steps as st on st.flow_slug = r.flow_slug and st.step_slug = r.step_slug
  where r.remaining_deps = 0;

  -- RUNS: what the batch does to each (read from the rows locked above, through their key:
  -- a batch touches a few dozen runs of a table that holds them all)
  select array_agg(r.run_id order by r.run_id),
    array_agg(p.n order by r.run_id),
    array_agg(r.last_seq order by r.run_id),
    array_agg(r.remaining_steps = p.n order by r.run_id)
    into v_runs, v_runs_done, v_runs_seq, v_runs_finished
  from (
    select report_steps.run_ids[i] as run_id, count(*)::int as n
    from unnest(v_done) as i group by 1
  ) as p
  join pgflow.runs as r on r.run_id = p.run_id
  where r.run_id = any(report_steps.run_ids);
  -- a finished run's output, once its steps' outputs are written
  select array_agg(case when f.finished then pgflow._run_output(f.run_id) end order by f.ord)
    into v_runs_output
  from unnest(v_runs, v_runs_finished) with ordinality as f (run_id, finished, ord);

  -- EVENTS, in the order completing the steps one by one would give: each step:completed (in
  -- report order) followed by the step:started of the steps it was the last dependency of (in
  -- flow order), then run:completed — written in one insert, notified at commit. Its own
  -- statement, before the runs' update: the foreign key checks of the new rows then find each
  -- run's row already locked by this transaction, and have nothing to write.
  with raw as (
    select report_steps.run_ids[d.i] as run_id, d.i as ord, 1 as kind, 0 as sub,
      'step:completed' as event, report_steps.step_slugs[d.i] as step_slug,
      'completed' as status, coalesce(report_steps.outputs[d.i], 'null'::jsonb) as output,
      d.attempt
    from unnest(v_done, v_done_attempts) as d (i, attempt)
    union all
    select g.run_id, g.last_i, 2, g.step_index, 'step:started', g.step_slug, 'started',
      null::jsonb, 1
    from unnest(v_ready_runs, v_ready_slugs, v_ready_last, v_ready_index)
      as g (run_id, step_slug, last_i, step_index)
    union all
    select f.run_id, 2147483647, 3, 0, 'run:completed', null, 'completed', f.output, null
    from unnest(v_runs, v_runs_finished, v_runs_output) as f (run_id, finished, output)
    where f.finished
  ), numbered as (
    select raw.*, b.last_seq + row_number() over (
      partition by raw.run_id order by raw.ord, raw.kind, raw.sub
    ) as seq
    from raw
    join unnest(v_runs, v_runs_seq) as b (run_id, last_seq) on b.run_id = raw.run_id
  ), inserted as (
    insert into pgflow.run_events (run_id, seq, event, step_slug, payload)
    select n.run_id, n.seq, n.event, n.step_slug, jsonb_build_object(
        'run_id', n.run_id, 'seq', n.seq, 'event', n.event, 'step_slug', n.step_slug,
        'status', n.status, 'output', n.output, 'error', null, 'attempt', n.attempt,
        'at', v_at
      )
    from numbered as n
    returning run_id, seq
  )
  select array_agg(x.last_seq order by x.run_id) into v_runs_seq
  from (select i.run_id, max(i.seq) as last_seq from inserted as i group by i.run_id) as x;

  -- THE RUNS' ROWS, each updated once: steps counted down, last seq, and the finished ones
  -- completed with their output
  update pgflow.runs as r
  set remaining_steps = r.remaining_steps - u.n,
      last_seq = u.last_seq,
      status = case when u.finished then 'completed' else r.status end,
      output = case when u.finished then u.output else r.output end,
      completed_at = case when u.finished then now() else r.completed_at end
  from unnest(v_runs, v_runs_done, v_runs_seq, v_runs_finished, v_runs_output)
    as u (run_id, n, last_seq, finished, output)
  where r.run_id = u.run_id and r.run_id = any(v_runs);

  perform set_config('pgflow.events_pending', 'on', true);
  if v_flows is not null then
    perform pg_notify('pgflow_tasks', f) from unnest(v_flows) as f;
  end if;
  return v_applied;
end;
$$;

-- sql/schema/0100_function_run_flow.sql

-- run_flow: starts a run of a flow and queues its root steps.
-- Returns: the new run_id.
-- Locks: none beyond the new rows.
-- Notifies: pgflow_events (run:started, step:started per root), pgflow_tasks (the flow slug).
-- Raises: PF404 for an unknown flow.
-- Idempotent: no; each call is a new run.
create function pgflow.run_flow(flow_slug text, input jsonb, owner text default null) returns uuid
language plpgsql
volatile
set search_path to ''
as $$
declare
  v_run_id uuid := gen_random_uuid();
  v_input jsonb := coalesce(run_flow.input, 'null'::jsonb);
  v_step_count int;
  v_roots text[];
  v_seq bigint := 1;
  v_slug text;
begin
  select count(*), array_agg(s.step_slug order by s.step_index) filter (where cardinality(s.depends_on) = 0)
    into v_step_count, v_roots
  from pgflow.steps as s
  where s.flow_slug = run_flow.flow_slug;
  if v_step_count = 0 then
    raise exception 'unknown flow %', quote_literal(run_flow.flow_slug) using errcode = 'PF404';
  end if;

  insert into pgflow.runs (run_id, flow_slug, input, owner, remaining_steps, last_seq)
  values (v_run_id, run_flow.flow_slug, v_input, run_flow.owner, v_step_count, 1 + cardinality(v_roots));

  insert into pgflow.step_states (run_id, step_slug, flow_slug, status, remaining_deps, available_at, started_at)
  select v_run_id, s.step_slug, s.flow_slug,
    case when cardinality(s.depends_on) = 0 then 'started' else 'created' end,
    cardinality(s.depends_on),
    case when cardinality(s.depends_on) = 0 then now() end,
    case when cardinality(s.depends_on) = 0 then now() end
  from pgflow.steps as s
  where s.flow_slug = run_flow.flow_slug;

  -- EVENTS
  perform pgflow._event(v_run_id, v_seq, 'run:started', null, 'started', null, null, null);
  foreach v_slug in array v_roots loop
    v_seq := v_seq + 1;
    perform pgflow._event(v_run_id, v_seq, 'step:started', v_slug, 'started', null, null, 1);
  end loop;
  perform pg_notify('pgflow_tasks', run_flow.flow_slug);
  return v_run_id;
end;
$$;

-- sql/schema/0110_function__announce_retry.sql

-- _announce_retry: appends step:started for a retry attempt claim_tasks has just leased.
-- Returns: true.
-- Locks: none of its own; the caller holds the run's row lock (_lock_run_for_retry).
-- Notifies: pgflow_events, at commit.
-- Raises: nothing.
-- Idempotent: no (it appends an event).
create function pgflow._announce_retry(p_run_id uuid, p_step_slug text, p_attempt int)
returns boolean
language plpgsql
volatile
set search_path to ''
as $$
declare
  v_seq bigint;
begin
  update pgflow.runs as r set last_seq = r.last_seq + 1 where r.run_id = p_run_id
  returning r.last_seq into v_seq;
  perform pgflow._event(p_run_id, v_seq, 'step:started', p_step_slug, 'started', null, null, p_attempt);
  return true;
end;
$$;

-- sql/schema/0110_function__bad_argument.sql

-- _bad_argument: raises PF400 for an argument out of its documented range.
-- Locks: none. Notifies: nothing.
-- Raises: always (SQLSTATE PF400), '<function>: <argument> must be <range>, not <value>'.
-- Idempotent: yes (it changes nothing).
create function pgflow._bad_argument(p_function text, p_argument text, p_range text, p_value text)
returns void
language plpgsql
set search_path to ''
as $$
begin
  raise exception '%: % must be %, not %', p_function, p_argument, p_range, coalesce(p_value, 'null')
    using errcode = 'PF400';
end;
$$;

-- sql/schema/0110_function__event.sql

-- _event: appends one event to a run's log and raises the transaction's pgflow.events_pending
-- flag; the event is notified at commit.
-- Locks: none of its own; the caller must hold the run's row lock (it owns p_seq).
-- Notifies: pgflow_events, at commit, through _notify_events.
-- Raises: a unique violation when p_seq was written already (a caller's bug).
-- Idempotent: no (a seq can be written once).
create function pgflow._event(
  p_run_id uuid,
  p_seq bigint,
  p_event text,
  p_step_slug text,
  p_status text,
  p_output jsonb,
  p_error text,
  p_attempt int
) returns void
language plpgsql
volatile
set search_path to ''
as $$
begin
  insert into pgflow.run_events (run_id, seq, event, step_slug, payload)
  values (p_run_id, p_seq, p_event, p_step_slug, jsonb_build_object(
    'run_id', p_run_id,
    'seq', p_seq,
    'event', p_event,
    'step_slug', p_step_slug,
    'status', p_status,
    'output', p_output,
    'error', p_error,
    'attempt', p_attempt,
    'at', to_char(clock_timestamp() at time zone 'utc', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
  ));
  perform set_config('pgflow.events_pending', 'on', true);
end;
$$;

-- sql/schema/0110_function__fail_attempt.sql

-- _fail_attempt: ends the current attempt of a leased step with an error: a retry after
-- base_delay * 2^(attempt-1) seconds, at most 30 days (or at once, p_retry_now, for an expired
-- lease) while attempts remain, else the step and its run fail.
-- Locks: the caller holds the run's row lock and has checked the step is leased; it locks the
--   step's row.
-- Notifies: pgflow_events (step:retrying, or step:failed and run:failed); pgflow_tasks for a
--   retry claimable at once.
-- Raises: nothing.
-- Idempotent: no (it appends events).
create function pgflow._fail_attempt(p_run_id uuid, p_step_slug text, p_error text, p_retry_now boolean)
returns void
language plpgsql
volatile
set search_path to ''
as $$
declare
  -- the longest backoff: 2^(attempt-1) would overflow an interval after a few dozen attempts
  c_max_backoff constant double precision := 2592000;  -- seconds (30 days)
  v_state pgflow.step_states%rowtype;
  v_step pgflow.steps%rowtype;
  v_seq bigint;
begin
  select * into v_state from pgflow.step_states as s
  where s.run_id = p_run_id and s.step_slug = p_step_slug
  for update;
  select * into v_step from pgflow.steps as st
  where st.flow_slug = v_state.flow_slug and st.step_slug = p_step_slug;
  select r.last_seq + 1 into v_seq from pgflow.runs as r where r.run_id = p_run_id;

  -- RETRY while attempts remain
  if v_state.attempt < v_step.max_attempts then
    update pgflow.step_states as s
    set status = 'retrying', error = p_error, leased_by = null, lease_expires_at = null,
        available_at = case when p_retry_now then clock_timestamp()
          else clock_timestamp() + least(v_step.base_delay * power(2, v_state.attempt - 1), c_max_backoff)
                                   * interval '1 second' end
    where s.run_id = p_run_id and s.step_slug = p_step_slug;
    perform pgflow._event(p_run_id, v_seq, 'step:retrying', p_step_slug, 'retrying', null, p_error, v_state.attempt);
    update pgflow.runs as r set last_seq = v_seq where r.run_id = p_run_id;
    if p_retry_now then
      perform pg_notify('pgflow_tasks', v_state.flow_slug);
    end if;
    return;
  end if;

  -- FINAL FAILURE of the step, then of the run
  update pgflow.step_states as s
  set status = 'failed', error = p_error, failed_at = now(), leased_by = null, lease_expires_at = null
  where s.run_id = p_run_id and s.step_slug = p_step_slug;
  perform pgflow._event(p_run_id, v_seq, 'step:failed', p_step_slug, 'failed', null, p_error, v_state.attempt);
  perform pgflow._fail_run(p_run_id, v_seq, p_step_slug, p_error, v_state.attempt);
end;
$$;

-- sql/schema/0110_function__fail_run.sql

-- _fail_run: fails a run because p_step_slug failed for good; cancels its unfinished steps.
-- Returns: the run's new last seq.
-- Locks: the caller holds the run's row lock; it updates the run's unfinished step rows.
-- Notifies: pgflow_events (run:failed), at commit.
-- Raises: nothing.
-- Idempotent: no (it appends an event).
create function pgflow._fail_run(p_run_id uuid, p_seq bigint, p_step_slug text, p_error text, p_attempt int)
returns bigint
language plpgsql
volatile
set search_path to ''
as $$
declare
  v_seq bigint := p_seq + 1;
begin
  -- no other step of this run may start: cancelled rows leave the ready index
  update pgflow.step_states as s
  set status = 'cancelled', leased_by = null, lease_expires_at = null
  where s.run_id = p_run_id and s.status in ('created', 'started', 'retrying');

  perform pgflow._event(p_run_id, v_seq, 'run:failed', p_step_slug, 'failed', null, p_error, p_attempt);
  update pgflow.runs as r
  set status = 'failed', error = p_error, failed_step = p_step_slug, failed_at = now(),
      last_seq = v_seq
  where r.run_id = p_run_id;
  return v_seq;
end;
$$;

-- sql/schema/0110_function__flow_error.sql

-- _flow_error: raises a definition error naming the flow.
-- Locks: none. Notifies: nothing.
-- Raises: always (SQLSTATE PF400), 'invalid flow <slug>: <message>'.
-- Idempotent: yes (it changes nothing).
create function pgflow._flow_error(p_flow_slug text, p_message text) returns void
language plpgsql
set search_path to ''
as $$
begin
  raise exception 'invalid flow %: %', coalesce(quote_literal(p_flow_slug), '(no slug)'), p_message
    using errcode = 'PF400';
end;
$$;

-- sql/schema/0110_function__lock_leased_step.sql

-- _lock_leased_step: locks the run and returns true when the step is leased by this holder
-- (worker_id and attempt, when given) and its lease has not run out.
-- Locks: the run's row, for update (waits for it): the first lock of complete_step/fail_step.
-- Notifies: nothing. Raises: nothing.
-- Idempotent: yes (it only takes a lock this transaction keeps).
create function pgflow._lock_leased_step(p_run_id uuid, p_step_slug text, p_worker_id text, p_attempt int)
returns boolean
language plpgsql
volatile
set search_path to ''
as $$
declare
  v_run_status text;
  v_state pgflow.step_states%rowtype;
begin
  -- LOCK ACQUISITION: everything that happens to a run is serialised on its row
  select r.status into v_run_status from pgflow.runs as r where r.run_id = p_run_id for update;
  -- GUARD: no mutations on finished runs
  if v_run_status is distinct from 'started' then
    return false;
  end if;
  select * into v_state from pgflow.step_states as s
  where s.run_id = p_run_id and s.step_slug = p_step_slug;
  -- GUARD: only the current holder of a live lease
  return found
    and v_state.status = 'started'
    and v_state.lease_expires_at is not null
    and v_state.lease_expires_at >= clock_timestamp()
    and (p_worker_id is null or v_state.leased_by = p_worker_id)
    and (p_attempt is null or v_state.attempt = p_attempt);
end;
$$;

-- sql/schema/0110_function__lock_run_for_retry.sql

-- _lock_run_for_retry: locks a run whose retry claim_tasks is taking, without waiting.
-- Returns: true when this transaction holds the run's row lock (maybe from before), false when
--   another transaction holds it: the claim then leaves that retry for its next call.
-- Locks: the run's row, for update skip locked (claim_tasks may hold other step rows already:
--   waiting here could deadlock with _fail_run, which holds the run and cancels step rows).
-- Notifies: nothing. Raises: nothing.
-- Idempotent: yes.
create function pgflow._lock_run_for_retry(p_run_id uuid) returns boolean
language plpgsql
volatile
set search_path to ''
as $$
begin
  perform 1 from pgflow.runs as r where r.run_id = p_run_id for update skip locked;
  return found;
end;
$$;

-- sql/schema/0110_function__normalise_flow.sql

-- _normalise_flow: validates a flow definition and returns its normalised shape, in time linear
-- in its steps and dependencies.
-- Locks: none; reads no table. Notifies: nothing.
-- Raises: PF400 for a bad definition (slugs, types, ranges, unknown deps, cycles, output_step).
-- Idempotent: yes.
create function pgflow._normalise_flow(p_definition jsonb) returns jsonb
language plpgsql
stable
set search_path to ''
as $$
declare
  c_slug_pattern constant text := '^[A-Za-z_][A-Za-z0-9_-]{0,127}$';
  v_flow_slug text;
  v_default_attempts jsonb;
  v_default_delay jsonb;
  v_default_timeout jsonb;
  v_problem text;
  v_steps jsonb;
  v_slugs text[];
  v_n int;
  v_value jsonb;
  v_output_step text;
  v_leaves text[];
  -- the dependency graph by step position: step i's dependents are
  -- v_targets[v_first[i] .. v_first[i + 1] - 1]; v_indegree[i] counts its dependencies
  v_indegree int[];
  v_outdegree int[];
  v_first int[];
  v_targets int[];
  v_queue int[];
  v_head int := 1;
  v_tail int := 0;
  v_i int;
  v_k int;
  v_w int;
begin
  -- SHAPE OF THE DOCUMENT
  if p_definition is null or jsonb_typeof(p_definition) <> 'object' then
    perform pgflow._flow_error(null, 'the definition must be a JSON object');
  end if;
  if jsonb_typeof(p_definition -> 'slug') is distinct from 'string' then
    perform pgflow._flow_error(null, '"slug" must be a string');
  end if;
  v_flow_slug := p_definition ->> 'slug';
  if v_flow_slug !~ c_slug_pattern then
    perform pgflow._flow_error(v_flow_slug, 'the slug must match ' || c_slug_pattern);
  end if;
  if jsonb_typeof(p_definition -> 'steps') is distinct from 'array'
     or jsonb_array_length(p_definition -> 'steps') = 0 then
    perform pgflow._flow_error(v_flow_slug, '"steps" must be a non-empty array');
  end if;
  v_default_attempts := coalesce(p_definition -> 'max_attempts', '3');
  v_default_delay := coalesce(p_definition -> 'base_delay', '1');
  v_default_timeout := coalesce(p_definition -> 'timeout', '60');

  -- STEPS, in one pass: the first problem in step order is raised, naming its step; the casts
  -- sit behind `case` so that a value of the wrong type is reported, never cast
  with raw as (
    select e.i, e.s,
      case when jsonb_typeof(e.s) = 'object' and jsonb_typeof(e.s -> 'slug') = 'string'
        then e.s ->> 'slug' end as slug,
      coalesce(e.s -> 'max_attempts', v_default_attempts) as attempts,
      coalesce(e.s -> 'base_delay', v_default_delay) as delay,
      coalesce(e.s -> 'timeout', v_default_timeout) as timeout,
      coalesce(e.s -> 'depends_on', '[]'::jsonb) as deps
    from jsonb_array_elements(p_definition -> 'steps') with ordinality as e (s, i)
  ), typed as (
    select r.*,
      case when jsonb_typeof(r.attempts) = 'number' then (r.attempts::text)::numeric end as attempts_n,
      case when jsonb_typeof(r.delay) = 'number' then (r.delay::text)::numeric end as delay_n,
      case when jsonb_typeof(r.timeout) = 'number' then (r.timeout::text)::numeric end as timeout_n,
      row_number() over (partition by r.slug order by r.i) as nth
    from raw as r
  ), checked as (
    select t.*, case
      when t.slug is null then 'each step must be an object with a string "slug"'
      when t.slug !~ c_slug_pattern then
        format('step slug %s must match %s', quote_literal(t.slug), c_slug_pattern)
      when t.slug = 'run' then
        'step slug ''run'' is reserved: handler input carries the run''s input under "run"'
      when t.nth > 1 then format('duplicate step slug %s', quote_literal(t.slug))
      when t.attempts_n is null or t.attempts_n <> trunc(t.attempts_n)
           or t.attempts_n not between 1 and 1000 then
        format('step %s: max_attempts must be an integer from 1 to 1000', quote_literal(t.slug))
      when t.delay_n is null or t.delay_n not between 0 and 86400
           or (t.delay_n > 0 and t.delay_n < 0.000001) then
        format('step %s: base_delay must be a number of seconds from 0 to 86400 (0, or at least 0.000001)',
               quote_literal(t.slug))
      when t.timeout_n is null or t.timeout_n <> trunc(t.timeout_n)
           or t.timeout_n not between 1 and 86400 then
        format('step %s: timeout must be a whole number of seconds from 1 to 86400', quote_literal(t.slug))
      when jsonb_typeof(t.deps) <> 'array' or d.non_strings > 0 then
        format('step %s: depends_on must be an array of step slugs', quote_literal(t.slug))
      when d.twice is not null then
        format('step %s depends on %s twice', quote_literal(t.slug), quote_literal(d.twice))
    end as problem
    from typed as t
    cross join lateral (
      select count(*) filter (where jsonb_typeof(x.v) <> 'string') as non_strings,
        (array_agg(x.v #>> '{}' order by x.j) filter (where x.nth = 2))[1] as twice
      from (
        select y.v, y.j, row_number() over (partition by y.v order by y.j) as nth
        from jsonb_array_elements(case when jsonb_typeof(t.deps) = 'array' then t.deps
                                       else '[]'::jsonb end) with ordinality as y (v, j)
      ) as x
    ) as d
  )
  select (array_agg(c.problem order by c.i) filter (where c.problem is not null))[1],
    jsonb_agg(case when c.problem is null then jsonb_build_object(
      'slug', c.slug,
      'depends_on', to_jsonb(array(select jsonb_array_elements_text(c.deps) order by 1)),
      'max_attempts', c.attempts_n::int,
      'base_delay', (c.delay::text)::double precision,
      'timeout', c.timeout_n::int
    ) end order by c.i),
    array_agg(c.slug order by c.i),
    count(*)
    into v_problem, v_steps, v_slugs, v_n
  from checked as c;
  if v_problem is not null then
    perform pgflow._flow_error(v_flow_slug, v_problem);
  end if;

  -- DEPENDENCIES: every one known, none on itself
  with s as (
    select e.i, e.s ->> 'slug' as slug, e.s -> 'depends_on' as deps
    from jsonb_array_elements(v_steps) with ordinality as e (s, i)
  )
  select format('step %s depends on unknown step %s', quote_literal(s.slug), quote_literal(d.dep))
    into v_problem
  from s cross join lateral jsonb_array_elements_text(s.deps) with ordinality as d (dep, j)
  where not exists (select 1 from s as known where known.slug = d.dep)
  order by s.i, d.j
  limit 1;
  if v_problem is not null then
    perform pgflow._flow_error(v_flow_slug, v_problem);
  end if;
  select format('step %s depends on itself', quote_literal(e.s ->> 'slug')) into v_problem
  from jsonb_array_elements(v_steps) with ordinality as e (s, i)
  where (e.s -> 'depends_on') ? (e.s ->> 'slug')
  order by e.i
  limit 1;
  if v_problem is not null then
    perform pgflow._flow_error(v_flow_slug, v_problem);
  end if;

  -- THE GRAPH by position: in-degrees, out-degrees, and the dependents of each step
  with s as (
    select e.i::int as i, e.s ->> 'slug' as slug, e.s -> 'depends_on' as deps
    from jsonb_array_elements(v_steps) with ordinality as e (s, i)
  ), edges as (
    select dep.i as src, s.i as dst
    from s cross join lateral jsonb_array_elements_text(s.deps) as d (slug)
    join s as dep on dep.slug = d.slug
  )
  select
    (select array_agg(jsonb_array_length(s.deps) order by s.i) from s),
    (select array_agg(coalesce(o.n, 0) order by s.i)
       from s left join (select e.src, count(*)::int as n from edges as e group by e.src) as o
       on o.src = s.i),
    (select coalesce(array_agg(e.dst order by e.src, e.dst), '{}') from edges as e)
    into v_indegree, v_outdegree, v_targets;
  v_first := array_fill(1, array[v_n + 1]);
  for v_i in 1 .. v_n loop
    v_first[v_i + 1] := v_first[v_i] + v_outdegree[v_i];
  end loop;

  -- CYCLES: Kahn's algorithm over the arrays (each step and dependency visited once);
  -- whatever cannot be ordered sits on or behind a cycle
  v_queue := array_fill(0, array[v_n]);
  for v_i in 1 .. v_n loop
    if v_indegree[v_i] = 0 then
      v_tail := v_tail + 1;
      v_queue[v_tail] := v_i;
    end if;
  end loop;
  while v_head <= v_tail loop
    v_i := v_queue[v_head];
    v_head := v_head + 1;
    for v_k in v_first[v_i] .. v_first[v_i + 1] - 1 loop
      v_w := v_targets[v_k];
      v_indegree[v_w] := v_indegree[v_w] - 1;
      if v_indegree[v_w] = 0 then
        v_tail := v_tail + 1;
        v_queue[v_tail] := v_w;
      end if;
    end loop;
  end loop;
  if v_tail < v_n then
    select string_agg(g.slug, ', ' order by g.slug) into v_problem
    from unnest(v_slugs, v_indegree) as g (slug, indegree)
    where g.indegree > 0;
    perform pgflow._flow_error(v_flow_slug, format('the steps contain a cycle through %s', v_problem));
  end if;

  -- OUTPUT STEP: explicit, else the single leaf, else none (the run's output joins the leaves)
  select array_agg(g.slug order by g.slug) into v_leaves
  from unnest(v_slugs, v_outdegree) as g (slug, outdegree)
  where g.outdegree = 0;
  v_value := p_definition -> 'output_step';
  if v_value is null or jsonb_typeof(v_value) = 'null' then
    v_output_step := case when cardinality(v_leaves) = 1 then v_leaves[1] end;
  elsif jsonb_typeof(v_value) <> 'string' or not (v_value #>> '{}' = any(v_slugs)) then
    perform pgflow._flow_error(v_flow_slug, format('output_step %s is not one of its steps', v_value::text));
  else
    v_output_step := v_value #>> '{}';
  end if;

  return jsonb_build_object('slug', v_flow_slug, 'steps', v_steps, 'output_step', v_output_step);
end;
$$;

-- sql/schema/0110_function__notify_events.sql

-- _notify_events: sends this transaction's events as one pgflow_events notification; the
-- function of the trigger run_events_notify_at_commit.
-- Payload (version 1, docs/reference/events.md): {"v":1,"events":[...]} when it fits in 7900
-- bytes, otherwise {"v":1,"refs":[{"run_id","from","to"}, ...]} and the listener reads the log.
-- Only when even the refs overflow (hundreds of runs in one transaction) is it split in several.
-- Fires once per transaction (the trigger's WHEN), and lowers pgflow.notify_queued so that
-- events written after it queue another firing.
-- Locks: none; reads the transaction's own event rows through run_events_tx_idx.
-- Notifies: pgflow_events.
-- Raises: nothing.
-- Idempotent: yes, within a transaction (it lowers the writers' flag). Under
-- `set constraints all immediate` it fires per statement and a later firing may repeat earlier
-- events: listeners drop what they have by seq.
create function pgflow._notify_events() returns trigger
language plpgsql
set search_path to ''
as $$
declare
  v_events text;
  v_bytes bigint;
  v_ref text;
  v_chunk text := '';
  v_chunk_refs int := 0;
  v_chunk_bytes int := 0;
begin
  perform set_config('pgflow.notify_queued', '', true);
  if current_setting('pgflow.events_pending', true) is distinct from 'on' then
    return null;
  end if;
  perform set_config('pgflow.events_pending', '', true);

  -- each payload printed once, for both the text and its length
  select string_agg(p.payload, ',' order by p.run_id, p.seq), sum(octet_length(p.payload))
    into v_events, v_bytes
  from (
    select e.run_id, e.seq, e.payload::text as payload
    from pgflow.run_events as e
    where e.tx = pg_current_xact_id()
  ) as p;
  if v_events is null then
    return null;
  end if;
  if v_bytes + 40 <= 7900 then
    perform pg_notify('pgflow_events', '{"v": 1, "events": [' || v_events || ']}');
    return null;
  end if;

  -- BY REFERENCE: per run, the seq range this transaction wrote (contiguous: the run was locked).
  -- A chunk is written as the very text jsonb prints for {"v": 1, "refs": [ref, ...]} (20 bytes
  -- around refs joined by ', '), so its length is summed as it grows rather than printed again
  -- for each ref (quadratic in the refs of a chunk).
  for v_ref in
    select jsonb_build_object('run_id', e.run_id, 'from', min(e.seq), 'to', max(e.seq))::text
    from pgflow.run_events as e
    where e.tx = pg_current_xact_id()
    group by e.run_id
    order by e.run_id
  loop
    if 20 + v_chunk_bytes + 2 * v_chunk_refs + octet_length(v_ref) > 7900 then
      perform pg_notify('pgflow_events', '{"v": 1, "refs": [' || v_chunk || ']}');
      v_chunk := '';
      v_chunk_refs := 0;
      v_chunk_bytes := 0;
    end if;
    v_chunk := case when v_chunk_refs = 0 then v_ref else v_chunk || ', ' || v_ref end;
    v_chunk_refs := v_chunk_refs + 1;
    v_chunk_bytes := v_chunk_bytes + octet_length(v_ref);
  end loop;
  if v_chunk_refs > 0 then
    perform pg_notify('pgflow_events', '{"v": 1, "refs": [' || v_chunk || ']}');
  end if;
  return null;
end;
$$;

-- sql/schema/0110_function__run_output.sql

-- _run_output: a finished run's output: its output step's, or {leaf: output} for several leaves.
-- Locks: none. Notifies: nothing. Raises: nothing. Idempotent: yes (reads only).
create function pgflow._run_output(p_run_id uuid) returns jsonb
language sql
stable
set search_path to ''
as $$
  select case when f.output_step is not null then (
      select s.output from pgflow.step_states as s
      where s.run_id = r.run_id and s.step_slug = f.output_step
    ) else (
      select jsonb_object_agg(s.step_slug, s.output)
      from pgflow.steps as st
      join pgflow.step_states as s on s.run_id = r.run_id and s.step_slug = st.step_slug
      where st.flow_slug = r.flow_slug and cardinality(st.dependents) = 0
    ) end
  from pgflow.runs as r
  join pgflow.flows as f on f.flow_slug = r.flow_slug
  where r.run_id = p_run_id;
$$;

-- sql/schema/0110_function__shape_diff.sql

-- _shape_diff: what differs between two normalised definitions, as readable text; '' if none.
-- Locks: none. Notifies: nothing. Raises: nothing. Idempotent: yes (immutable).
create function pgflow._shape_diff(p_old jsonb, p_new jsonb) returns text
language sql
immutable
set search_path to ''
as $$
  with old_steps as (
    select s ->> 'slug' as slug, s - 'slug' as opts
    from jsonb_array_elements(p_old -> 'steps') as s
  ), new_steps as (
    select s ->> 'slug' as slug, s - 'slug' as opts
    from jsonb_array_elements(p_new -> 'steps') as s
  ), diffs as (
    select 1 as o, n.slug as k, format('step %s added', quote_literal(n.slug)) as d
    from new_steps as n left join old_steps as o using (slug) where o.slug is null
    union all
    select 2, o.slug, format('step %s removed', quote_literal(o.slug))
    from old_steps as o left join new_steps as n using (slug) where n.slug is null
    union all
    select 3, o.slug || kv.key, format('step %s %s %s -> %s', quote_literal(o.slug), kv.key,
      kv.value::text, n.opts -> kv.key)
    from old_steps as o join new_steps as n using (slug), jsonb_each(o.opts) as kv
    where n.opts -> kv.key is distinct from kv.value
    union all
    select 4, '', format('output_step %s -> %s', p_old -> 'output_step', p_new -> 'output_step')
    where p_old -> 'output_step' is distinct from p_new -> 'output_step'
  )
  select coalesce(string_agg(d, '; ' order by o, k), '') from diffs;
$$;

-- sql/schema/0200_trigger_run_events_notify_at_commit.sql

-- run_events_notify_at_commit: one pgflow_events notification per transaction, sent at commit.
--
-- NOTIFY serialises commits on a global lock, so a transaction that completes fifty steps must
-- send one notification, not fifty. Every event row records its top-level transaction (tx), and
-- writers raise the transaction-local flag pgflow.events_pending; this deferred constraint
-- trigger fires at commit, and _notify_events reads the transaction's events back through the tx
-- index, sends them as one NOTIFY and lowers the flag. A rolled-back subtransaction takes its
-- rows with it, so what is notified is exactly what commits. The work is linear in the
-- transaction's events, however many.
--
-- One firing per transaction: a constraint trigger's WHEN is evaluated as each row is inserted,
-- not at commit. It queues a firing only for the transaction's first event row, and raises
-- pgflow.notify_queued so the next rows queue none; the firing lowers it again, so rows written
-- after it (under `set constraints all immediate`, or by another deferred trigger) queue a firing
-- of their own. Both the queued firing and the setting belong to the (sub)transaction: a
-- rolled-back savepoint drops its queued firing and restores the setting together, so the next
-- row queues again. `case`, unlike `and`, fixes the order: the flag is read before it is raised.

create constraint trigger run_events_notify_at_commit
  after insert on pgflow.run_events
  deferrable initially deferred
  for each row
  when (
    case when current_setting('pgflow.notify_queued', true) = 'on' then false
      else set_config('pgflow.notify_queued', 'on', true) = 'on' end
  )
  execute function pgflow._notify_events();
