-- 0006_cheaper_steps: less server work and less waiting per step on the hot path
-- (docs/design/scaling.md, "Where a step's time goes").
-- - runs keeps half of each page free (fillfactor 50), so the updates of a run's row while its
--   steps complete are heap-only tuples, with no index entry.
-- - run_events loses its foreign key to runs (a query per event row); the trigger
--   runs_delete_events deletes a deleted run's events instead.
-- - Writers note their events' seq ranges in the transaction's setting pgflow.pending_events
--   (_note_events), and only past its cap put the transaction's id in run_events.tx, whose index
--   becomes partial: an event written the usual way adds no index entry. _notify_events reads
--   both, and counts the events before printing them (past 52 they cannot fit in one
--   notification, so a large report goes straight to refs without reading its events).
-- - run_flow writes its events in one insert.
-- - claim_tasks commits without waiting for its WAL flush when it wrote no event.
-- - _run_output becomes _run_outputs, taking a batch: report_steps computes the outputs of every
--   run its report finishes in one call instead of one call per run.

alter table pgflow.runs set (fillfactor = 50);
alter table pgflow.run_events drop constraint run_events_run_id_fkey;
drop index pgflow.run_events_tx_idx;
alter table pgflow.run_events drop column tx;
alter table pgflow.run_events add column tx xid8;
create index run_events_tx_idx on pgflow.run_events (tx) where tx is not null;

drop function pgflow._run_output(uuid);

-- sql/schema/0110_function__delete_run_events.sql
-- _delete_run_events: deletes the events of the runs a statement deleted, in place of the
-- foreign key run_events does not have (0042_table_run_events.sql); the function of the trigger
-- runs_delete_events.
-- Locks: the event rows it deletes. Notifies: nothing. Raises: nothing.
-- Idempotent: yes (a run's events are deleted once; none are left to find again).
create function pgflow._delete_run_events() returns trigger
language plpgsql
set search_path to ''
-- from the deleted runs to their events through the primary key, whatever the estimates
set enable_hashjoin to off
set enable_mergejoin to off
as $$
begin
  delete from pgflow.run_events as e
  using deleted_runs as d
  where e.run_id = d.run_id;
  return null;
end;
$$;

-- sql/schema/0200_trigger_runs_delete_events.sql
-- runs_delete_events: a deleted run's events go with it (prune_runs, or a delete by hand), once
-- per statement for all the runs it deleted.

create trigger runs_delete_events
  after delete on pgflow.runs
  referencing old table as deleted_runs
  for each statement
  execute function pgflow._delete_run_events();

-- sql/schema/0110_function__events_tx.sql
-- _events_tx: what a writer of events puts in their tx column, decided once per call before it
-- inserts them: null while the transaction's pgflow.pending_events holds less than 8 KB (the
-- writer then appends its seq ranges there, _note_events), else the transaction's id. The
-- commit-time notification finds the transaction's events through both
-- (0200_trigger_run_events_notify_at_commit.sql): the setting is copied whole on every append,
-- so past its cap (about 180 ranges: thousands of runs started in one statement) the events
-- are found through the partial index on tx instead, which holds only such events.
-- Locks: none. Notifies: nothing. Raises: nothing. Idempotent: yes (reads only).
create function pgflow._events_tx() returns xid8
language plpgsql
volatile
set search_path to ''
as $$
begin
  return case when octet_length(coalesce(current_setting('pgflow.pending_events', true), '')) < 8192
    then null else pg_current_xact_id() end;
end;
$$;

-- sql/schema/0110_function__note_events.sql
-- _note_events: appends seq ranges ('run_id,from,to;' each) to the transaction's
-- pgflow.pending_events, where the commit-time notification finds the events a writer inserted
-- with a null tx (_events_tx). A savepoint rolled back restores the setting as it takes the
-- rows, so what is notified is exactly what commits.
-- Locks: none. Notifies: nothing (the trigger does, at commit). Raises: nothing.
-- Idempotent: no (each call appends).
create function pgflow._note_events(p_ranges text) returns void
language plpgsql
volatile
set search_path to ''
as $$
begin
  perform set_config('pgflow.pending_events',
    coalesce(current_setting('pgflow.pending_events', true), '') || p_ranges, true);
end;
$$;

-- sql/schema/0110_function__run_outputs.sql
-- _run_outputs: finished runs' outputs, one per given run_id and in its order (null for a null
-- run_id): the output step's output, or {leaf: output} when the flow has several leaves. Takes a
-- batch, so report_steps pays one call for all the runs its report finishes. PL/pgSQL, not SQL:
-- a SQL function called from PL/pgSQL is planned again on every call (0.24 ms, more than the
-- rest of a one-step report), where PL/pgSQL keeps its plan for the session.
-- Locks: none. Notifies: nothing. Raises: nothing. Idempotent: yes (reads only).
create function pgflow._run_outputs(p_run_ids uuid[]) returns jsonb[]
language plpgsql
stable
set search_path to ''
as $$
begin
  return (
    select array_agg(o.output order by i.ord)
    from unnest(p_run_ids) with ordinality as i (run_id, ord)
    left join lateral (
      select case when f.output_step is not null then (
          select s.output from pgflow.step_states as s
          where s.run_id = r.run_id and s.step_slug = f.output_step
        ) else (
          select jsonb_object_agg(s.step_slug, s.output)
          from pgflow.steps as st
          join pgflow.step_states as s on s.run_id = r.run_id and s.step_slug = st.step_slug
          where st.flow_slug = r.flow_slug and cardinality(st.dependents) = 0
        ) end as output
      from pgflow.runs as r
      join pgflow.flows as f on f.flow_slug = r.flow_slug
      where r.run_id = i.run_id
    ) as o on true
  );
end;
$$;

-- sql/schema/0110_function__event.sql
-- _event: appends one event to a run's log and notes it for the commit-time notification
-- (_events_tx, _note_events); the event is notified at commit. Stores it compact (0042_table_run_events.sql): the
-- payload keeps output when given, error when not null, status only when it is not the event's.
-- Locks: none of its own; the caller must hold the run's row lock (it owns p_seq).
-- Notifies: pgflow_events, at commit, through _notify_events.
-- Raises: a unique violation when p_seq was written already (a caller's bug).
-- Idempotent: no (a seq can be written once).
create or replace function pgflow._event(
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
declare
  v_tx xid8 := pgflow._events_tx();
begin
  insert into pgflow.run_events (run_id, seq, event, step_slug, attempt, tx, payload)
  values (p_run_id, p_seq, p_event, p_step_slug, p_attempt, v_tx,
    case when p_output is null then '{}'::jsonb else jsonb_build_object('output', p_output) end
    || case when p_error is null then '{}'::jsonb else jsonb_build_object('error', p_error) end
    || case when p_status is not distinct from split_part(p_event, ':', 2) then '{}'::jsonb
         else jsonb_build_object('status', p_status) end);
  if v_tx is null then
    perform pgflow._note_events(p_run_id || ',' || p_seq || ',' || p_seq || ';');
  end if;
end;
$$;

-- sql/schema/0100_function_run_flow.sql
-- run_flow: starts a run of a flow and queues its root steps.
-- Returns: the new run_id, time-ordered (a version 7 UUID).
-- Locks: none beyond the new rows.
-- Notifies: pgflow_events (run:started, step:started per root), pgflow_tasks (the flow slug).
-- Raises: PF404 for an unknown flow.
-- Idempotent: no; each call is a new run.
create or replace function pgflow.run_flow(flow_slug text, input jsonb, owner text default null) returns uuid
language plpgsql
volatile
set search_path to ''
as $$
declare
  -- time-ordered (the UUID version 7 layout: milliseconds since 1970, then random bits), so new
  -- runs, their steps and their events land at the right edge of the indexes that lead with
  -- run_id, and the runs being worked on share a few hot index pages: with random ids each
  -- insert and lookup touched a random leaf of indexes as large as the history
  v_run_id uuid := encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid())
    placing substring(int8send((extract(epoch from clock_timestamp()) * 1000)::bigint) from 3)
    from 1 for 6), 52, 1), 53, 1), 'hex')::uuid;
  v_input jsonb := coalesce(run_flow.input, 'null'::jsonb);
  v_step_count int;
  v_roots text[];
  v_tx xid8 := pgflow._events_tx();
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

  -- EVENTS: run:started and each root's step:started, in one insert (their payloads hold
  -- nothing, as _event stores them), noted as one range for the commit-time notification
  insert into pgflow.run_events (run_id, seq, event, step_slug, attempt, tx)
  select v_run_id, 1, 'run:started', null, null, v_tx
  union all
  select v_run_id, 1 + r.ord, 'step:started', r.slug, 1, v_tx
  from unnest(v_roots) with ordinality as r (slug, ord);
  if v_tx is null then
    perform pgflow._note_events(v_run_id || ',1,' || (1 + cardinality(v_roots)) || ';');
  end if;
  perform pg_notify('pgflow_tasks', run_flow.flow_slug);
  return v_run_id;
end;
$$;

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
create or replace function pgflow.claim_tasks(
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
-- every join here goes from a batch to rows by their key: a loop, whatever the row estimates
-- (docs/design/sql-contract.md, plan stability)
set enable_hashjoin to off
set enable_mergejoin to off
as $$
declare
  -- a variable, not clock_timestamp() in the queries: a volatile call there defeats the indexes
  v_now timestamptz := clock_timestamp();
  v_expired record;
  v_status text;
  v_expires_at timestamptz;
  -- the claimed batch
  v_run_ids uuid[];
  v_step_slugs text[];
  v_retries boolean[];
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
      -- read by its key, checked here: a lease condition in the query would let the planner
      -- scan the leased-step index instead, row after row, for every expired lease
      select s.status, s.lease_expires_at into v_status, v_expires_at from pgflow.step_states as s
      where s.run_id = v_expired.run_id and s.step_slug = v_expired.step_slug;
      if v_status = 'started' and v_expires_at < clock_timestamp() then
        perform pgflow._fail_attempt(v_expired.run_id, v_expired.step_slug, 'lease expired', true);
      end if;
    end if;
  end loop;

  -- CLAIM (what the sweep made claimable again included). A retry's run lock and event come
  -- from function calls made only for rows that were retrying: a first attempt pays one
  -- comparison. The run lock is taken before the limit counts the row, so a retry whose run is
  -- busy leaves its slot to the next ready task instead of shrinking the batch.
  -- PLAN: the ready rows are read from the ready index in its order until the limit, locked,
  -- and kept in arrays: the statements after see the batch as what it is, a few rows (an
  -- array's length, or 10 in a generic plan), never a tenth of the ready rows (what a generic
  -- plan guesses for `limit $1`, and with it a hash join over the whole table). The leases are
  -- then written through the primary key, and each task's run and step read through theirs.
  v_now := clock_timestamp();
  select array_agg(c.run_id), array_agg(c.step_slug), array_agg(c.retry)
    into v_run_ids, v_step_slugs, v_retries
  from (
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
  ) as c;
  if v_run_ids is null then
    return;
  end if;

  -- LEASES
  return query
  with leased as (
    update pgflow.step_states as s
    set status = 'started',
        attempt = s.attempt + 1,
        leased_by = claim_tasks.worker_id,
        lease_expires_at = v_now + claim_tasks.lease_seconds * interval '1 second'
    from unnest(v_run_ids, v_step_slugs, v_retries) as c (run_id, step_slug, retry)
    where s.run_id = c.run_id and s.step_slug = c.step_slug
    -- RETURNING runs once per updated row: one event per claimed retry (read below, so that
    -- no plan can leave it out)
    returning s.run_id, s.flow_slug, s.step_slug, s.attempt,
      case when c.retry then pgflow._announce_retry(s.run_id, s.step_slug, s.attempt) end
        as announced
  )
  select l.run_id, l.flow_slug, l.step_slug, l.attempt,
    jsonb_build_object('run', (
      select r.input from pgflow.runs as r where r.run_id = l.run_id
    )) || coalesce((
      select jsonb_object_agg(d.step_slug, d.output)
      from pgflow.step_states as d
      where d.run_id = l.run_id and d.step_slug = any(st.depends_on)
    ), '{}'::jsonb),
    st.timeout,
    st.max_attempts
  from leased as l
  cross join lateral (
    select t.depends_on, t.timeout, t.max_attempts from pgflow.steps as t
    where t.flow_slug = l.flow_slug and t.step_slug = l.step_slug
    limit 1
  ) as st
  where l.announced is not false;

  -- DURABILITY: a claim that wrote no event commits without waiting for its WAL to reach disk.
  -- A crash can then lose only leases: their tasks are claimable again, and a report under a
  -- lost lease is stale, so the step runs again (at least once, as for an expired lease). A
  -- claim that wrote events (a retry's step:started, the sweep's) is notified, so it stays
  -- durable: no subscriber may see an event a crash then takes back.
  if coalesce(current_setting('pgflow.pending_events', true), '') = ''
     and not exists (select from pgflow.run_events as e where e.tx = pg_current_xact_id()) then
    perform set_config('synchronous_commit', 'off', true);
  end if;
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
create or replace function pgflow.report_steps(
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
-- every join here goes from a batch to rows by their key: a loop, whatever the row estimates
-- (docs/design/sql-contract.md, plan stability)
set enable_hashjoin to off
set enable_mergejoin to off
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
  v_tx xid8 := pgflow._events_tx();
  v_ranges text;
  v_at timestamptz := clock_timestamp();
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

  -- COMPLETIONS: only from the live lease holder of a step of a run still going.
  -- PLAN: the batch drives the lookups. Each reported step is read through its primary key in
  -- a lateral subquery that the limit keeps whole, so the lease checks are applied to the row
  -- found and cannot steer the planner to the leased-step index or to a join order (after an
  -- ANALYZE taken while nothing was leased, it started from that index and compared every
  -- leased row with every report); the update then finds its rows by key, the batch (a few
  -- rows to the planner, whatever the tables hold) driving the loop.
  with reported as materialized (
    select i, report_steps.run_ids[i] as run_id, report_steps.step_slugs[i] as step_slug,
      report_steps.attempts[i] as attempt, coalesce(report_steps.outputs[i], 'null'::jsonb) as output
    from generate_subscripts(report_steps.run_ids, 1) as i
    where report_steps.errors[i] is null
    order by 2, 3, 1
  ), valid as (
    select distinct on (p.run_id, p.step_slug) p.*
    from reported as p
    cross join lateral (
      select s.status, s.leased_by, s.lease_expires_at, s.attempt from pgflow.step_states as s
      where s.run_id = p.run_id and s.step_slug = p.step_slug
      limit 1
    ) as s
    cross join lateral (
      select r.status from pgflow.runs as r where r.run_id = p.run_id limit 1
    ) as r
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
  ), decrements as materialized (
    -- in key order, the order complete_step updates them in: the steps made ready together
    -- then sit in the ready index (same available_at) in the same order either way
    select c.run_id, d.dependent, count(*)::int as n, max(c.i) as last_i
    from completed as c
    join pgflow.steps as st on st.flow_slug = c.flow_slug and st.step_slug = c.step_slug
    cross join unnest(st.dependents) as d (dependent)
    group by c.run_id, d.dependent
    order by c.run_id, d.dependent
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
  join pgflow.runs as r on r.run_id = p.run_id;
  -- a finished run's output, once its steps' outputs are written
  v_runs_output := pgflow._run_outputs(array(
    select case when f.finished then f.run_id end
    from unnest(v_runs, v_runs_finished) with ordinality as f (run_id, finished, ord)
    order by f.ord));

  -- EVENTS, in the order completing the steps one by one would give: each step:completed (in
  -- report order) followed by the step:started of the steps it was the last dependency of (in
  -- flow order), then run:completed — written in one insert, notified at commit. Its own
  -- statement, before the runs' update: the foreign key checks of the new rows then find each
  -- run's row already locked by this transaction, and have nothing to write.
  with raw as (
    select report_steps.run_ids[d.i] as run_id, d.i as ord, 1 as kind, 0 as sub,
      'step:completed' as event, report_steps.step_slugs[d.i] as step_slug,
      'completed' as status, coalesce(report_steps.outputs[d.i], 'null'::jsonb) as output,
      d.attempt, null::bigint as last_seq
    from unnest(v_done, v_done_attempts) as d (i, attempt)
    union all
    select g.run_id, g.last_i, 2, g.step_index, 'step:started', g.step_slug, 'started',
      null::jsonb, 1, null
    from unnest(v_ready_runs, v_ready_slugs, v_ready_last, v_ready_index)
      as g (run_id, step_slug, last_i, step_index)
    union all
    select f.run_id, 2147483647, 3, 0, 'run:completed', null, 'completed', f.output, null, null
    from unnest(v_runs, v_runs_finished, v_runs_output) as f (run_id, finished, output)
    where f.finished
    union all
    -- each run's last seq so far, on a row of its own that sorts first: numbered reads it
    -- through its window instead of joining two arrays
    select b.run_id, -1, 0, 0, null, null, null, null, null, b.last_seq
    from unnest(v_runs, v_runs_seq) as b (run_id, last_seq)
  ), numbered as (
    select raw.*, max(raw.last_seq) over w + row_number() over w - 1 as seq
    from raw
    window w as (partition by raw.run_id order by raw.ord, raw.kind, raw.sub)
  ), inserted as (
    insert into pgflow.run_events (run_id, seq, at, attempt, event, step_slug, tx, payload)
    select n.run_id, n.seq, v_at, n.attempt, n.event, n.step_slug, v_tx,
      case when n.output is null then '{}'::jsonb else jsonb_build_object('output', n.output) end
    from numbered as n
    where n.kind > 0
    returning run_id, seq
  )
  select array_agg(x.last_seq order by x.run_id),
    string_agg(x.run_id || ',' || x.first_seq || ',' || x.last_seq || ';', '' order by x.run_id)
    into v_runs_seq, v_ranges
  from (
    select i.run_id, min(i.seq) as first_seq, max(i.seq) as last_seq
    from inserted as i group by i.run_id
  ) as x;

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
  where r.run_id = u.run_id;

  if v_tx is null then
    perform pgflow._note_events(v_ranges);
  end if;
  if v_flows is not null then
    perform pg_notify('pgflow_tasks', f) from unnest(v_flows) as f;
  end if;
  return v_applied;
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
create or replace function pgflow.complete_step(
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
  v_run_output := (pgflow._run_outputs(array[v_run.run_id]))[1];
  v_seq := v_seq + 1;
  perform pgflow._event(v_run.run_id, v_seq, 'run:completed', null, 'completed', v_run_output, null, null);
  update pgflow.runs as r
  set remaining_steps = 0, status = 'completed', output = v_run_output, completed_at = now(),
      last_seq = v_seq
  where r.run_id = v_run.run_id;
  return true;
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
-- Finds them by the seq ranges writers noted in pgflow.pending_events (_note_events) and, past
-- that setting's cap, by their tx (_events_tx, through the partial run_events_tx_idx).
-- Locks: none; reads the transaction's own event rows by primary key (inline payloads only).
-- Notifies: pgflow_events.
-- Raises: nothing.
-- Idempotent: yes, within a transaction (it empties pgflow.pending_events). Under
-- `set constraints all immediate` it fires per statement, and a later firing may repeat earlier
-- events written past the cap: listeners drop what they have by seq.
create or replace function pgflow._notify_events() returns trigger
language plpgsql
set search_path to ''
-- from the ranges to their rows by primary key, whatever the estimates
set enable_hashjoin to off
set enable_mergejoin to off
as $$
declare
  v_pending text := coalesce(current_setting('pgflow.pending_events', true), '');
  v_runs uuid[];
  v_from bigint[];
  v_to bigint[];
  v_count bigint;
  v_events text;
  v_bytes bigint;
  v_ref text;
  v_chunk text := '';
  v_chunk_refs int := 0;
  v_chunk_bytes int := 0;
begin
  perform set_config('pgflow.notify_queued', '', true);
  perform set_config('pgflow.pending_events', '', true);

  -- THE RANGES, one per run (a run's events in one transaction are contiguous: it was locked):
  -- those noted in the setting, and those of events that carry this transaction's id
  select array_agg(x.run_id order by x.run_id), array_agg(x.lo order by x.run_id),
    array_agg(x.hi order by x.run_id), sum(x.hi - x.lo + 1)
    into v_runs, v_from, v_to, v_count
  from (
    select r.run_id, min(r.lo) as lo, max(r.hi) as hi
    from (
      select split_part(p.ref, ',', 1)::uuid as run_id, split_part(p.ref, ',', 2)::bigint as lo,
        split_part(p.ref, ',', 3)::bigint as hi
      from string_to_table(v_pending, ';') as p (ref)
      where p.ref <> ''
      union all
      select e.run_id, e.seq, e.seq from pgflow.run_events as e where e.tx = pg_current_xact_id()
    ) as r
    group by r.run_id
  ) as x;
  if v_runs is null then
    return null;
  end if;

  -- INLINE, when they may fit: no event prints shorter than 150 bytes (its nine keys and the
  -- run_id alone take more), so past 52 events the text is not built: a worker's report of a
  -- few hundred steps would print every event only to send refs
  if v_count <= 7900 / 150 then
    -- each event rebuilt from its compact row (the same rebuild as get_run_events') and printed
    -- once, for both the text and its length
    select string_agg(p.payload, ',' order by p.run_id, p.seq), sum(octet_length(p.payload))
      into v_events, v_bytes
    from (
      select e.run_id, e.seq, (jsonb_build_object(
          'run_id', e.run_id, 'seq', e.seq, 'event', e.event, 'step_slug', e.step_slug,
          'status', split_part(e.event, ':', 2), 'output', null, 'error', null, 'attempt', e.attempt,
          'at', to_char(e.at at time zone 'utc', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
        ) || e.payload)::text as payload
      from unnest(v_runs, v_from, v_to) as r (run_id, lo, hi)
      join pgflow.run_events as e on e.run_id = r.run_id and e.seq between r.lo and r.hi
    ) as p;
    if v_bytes + 40 <= 7900 then
      perform pg_notify('pgflow_events', '{"v": 1, "events": [' || v_events || ']}');
      return null;
    end if;
  end if;

  -- BY REFERENCE: per run, the seq range this transaction wrote. A chunk is written as the very
  -- text jsonb prints for {"v": 1, "refs": [ref, ...]} (20 bytes around refs joined by ', '), so
  -- its length is summed as it grows rather than printed again for each ref (quadratic in the
  -- refs of a chunk).
  for v_ref in
    select jsonb_build_object('run_id', r.run_id, 'from', r.lo, 'to', r.hi)::text
    from unnest(v_runs, v_from, v_to) as r (run_id, lo, hi)
    order by r.run_id
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

-- ATTRIBUTES, as sql/schema/0900_grants.sql sets them (create or replace reset them)
alter function pgflow._delete_run_events set search_path to pg_catalog, pg_temp;
alter function pgflow._events_tx set search_path to pg_catalog, pg_temp;
alter function pgflow._note_events set search_path to pg_catalog, pg_temp;
alter function pgflow._event set search_path to pg_catalog, pg_temp;
alter function pgflow._run_outputs set search_path to pg_catalog, pg_temp;
alter function pgflow.run_flow set search_path to pg_catalog, pg_temp;
alter function pgflow.claim_tasks set search_path to pg_catalog, pg_temp;
alter function pgflow.report_steps set search_path to pg_catalog, pg_temp;
alter function pgflow.complete_step set search_path to pg_catalog, pg_temp;
alter function pgflow._notify_events set search_path to pg_catalog, pg_temp;
revoke all on function pgflow._delete_run_events from public;
revoke all on function pgflow._events_tx from public;
revoke all on function pgflow._note_events from public;
revoke all on function pgflow._event from public;
revoke all on function pgflow._run_outputs from public;
revoke all on function pgflow.run_flow from public;
revoke all on function pgflow.claim_tasks from public;
revoke all on function pgflow.report_steps from public;
revoke all on function pgflow.complete_step from public;
revoke all on function pgflow._notify_events from public;
alter function pgflow.run_flow security definer;
alter function pgflow.claim_tasks security definer;
alter function pgflow.report_steps security definer;
alter function pgflow.complete_step security definer;
alter function pgflow._notify_events security definer;

-- ROLES: pgflow_worker, pgflow_gateway and pgflow_pruner, those that exist
select pgflow._grant_roles();
