-- 0002_plan_stability: the hot path's plans no longer depend on statistics
-- (docs/design/sql-contract.md, "Plan stability"). After ANALYZE, report_steps and extend_leases
-- drove their joins from the leased-step index and compared every leased row with every
-- reported step, release_tasks read the whole of step_states, and the claim's sweep probed the
-- leased-step index once per expired lease. Each batch now drives primary-key lookups that the
-- planner cannot reorder, and updates find their rows by key.

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
end;
$$;

-- extend_leases: keeps the leases of tasks a worker is still running for lease_seconds (0.1 to
-- 86400); returns how many it kept. A lease that already ran out is not revived: the task may be
-- someone else's by now.
-- Locks: the step rows whose lease it extends (row locks of the update).
-- Notifies: nothing.
-- Raises: PF400 for an argument out of its range, or run_ids and step_slugs of unequal length.
-- Idempotent: yes; a repeat moves the same leases' expiry again.
create or replace function pgflow.extend_leases(
  worker_id text,
  run_ids uuid[],
  step_slugs text[],
  lease_seconds double precision default 30
) returns int
language plpgsql
volatile
set search_path to ''
-- every join here goes from a batch to rows by their key: a loop, whatever the row estimates
-- (docs/design/sql-contract.md, plan stability)
set enable_hashjoin to off
set enable_mergejoin to off
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
  -- PLAN: each step is read and locked through its primary key (a lateral subquery the limit
  -- keeps whole), in key order; the lease checks apply to the row found, so they cannot steer
  -- the planner to the leased-step index; the update then finds the kept rows by key.
  with asked as materialized (
    select t.run_id, t.step_slug
    from unnest(extend_leases.run_ids, extend_leases.step_slugs) as t (run_id, step_slug)
    order by 1, 2
  ), kept as (
    select a.run_id, a.step_slug
    from asked as a
    cross join lateral (
      select s.leased_by, s.lease_expires_at from pgflow.step_states as s
      where s.run_id = a.run_id and s.step_slug = a.step_slug
      limit 1
      for update
    ) as s
    where s.leased_by = extend_leases.worker_id
      and s.lease_expires_at >= clock_timestamp()
  ), extended as (
    update pgflow.step_states as s
    set lease_expires_at = clock_timestamp() + extend_leases.lease_seconds * interval '1 second'
    from kept as k
    where s.run_id = k.run_id and s.step_slug = k.step_slug
    returning 1
  )
  select count(*)::int into v_kept from extended;
  return v_kept;
end;
$$;

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

-- release_tasks: gives back leased tasks unrun (a worker shutting down), claimable at once;
-- the attempt they were claimed for is not counted. Without ids, every task the worker holds.
-- Returns: how many it released.
-- Locks: the step rows it releases (row locks of the update).
-- Notifies: pgflow_tasks, once per flow of the released tasks, so another worker takes them.
-- Raises: nothing.
-- Idempotent: yes; a repeat finds nothing leased and returns 0.
create or replace function pgflow.release_tasks(
  worker_id text,
  run_ids uuid[] default null,
  step_slugs text[] default null
) returns int
language plpgsql
volatile
set search_path to ''
-- every join here goes from a batch to rows by their key: a loop, whatever the row estimates
-- (docs/design/sql-contract.md, plan stability)
set enable_hashjoin to off
set enable_mergejoin to off
as $$
declare
  v_flows text[];
  v_count int;
begin
  -- PLAN: without ids, the worker's tasks are found among the leased rows (the leased-step
  -- index: as many rows as tasks are running, whatever the table holds). With ids, each step is
  -- read and locked through its primary key (a lateral subquery the limit keeps whole), the
  -- checks applied to the row found, and updated by key.
  if release_tasks.run_ids is null then
    with released as (
      update pgflow.step_states as s
      set leased_by = null, lease_expires_at = null, attempt = s.attempt - 1
      where s.lease_expires_at is not null
        and s.leased_by = release_tasks.worker_id
        and s.status = 'started'
      returning s.flow_slug
    )
    select array_agg(distinct r.flow_slug), count(*) into v_flows, v_count from released as r;
  else
    with asked as materialized (
      select t.run_id, t.step_slug
      from unnest(release_tasks.run_ids, release_tasks.step_slugs) as t (run_id, step_slug)
      order by 1, 2
    ), held as (
      select a.run_id, a.step_slug
      from asked as a
      cross join lateral (
        select s.leased_by, s.status from pgflow.step_states as s
        where s.run_id = a.run_id and s.step_slug = a.step_slug
        limit 1
        for update
      ) as s
      where s.leased_by = release_tasks.worker_id
        and s.status = 'started'
    ), released as (
      update pgflow.step_states as s
      set leased_by = null, lease_expires_at = null, attempt = s.attempt - 1
      from held as h
      where s.run_id = h.run_id and s.step_slug = h.step_slug
      returning s.flow_slug
    )
    select array_agg(distinct r.flow_slug), count(*) into v_flows, v_count from released as r;
  end if;
  if v_count > 0 then
    perform pg_notify('pgflow_tasks', f) from unnest(v_flows) as f;
  end if;
  return v_count;
end;
$$;

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
    insert into pgflow.run_events (run_id, seq, event, step_slug, payload)
    select n.run_id, n.seq, n.event, n.step_slug, jsonb_build_object(
        'run_id', n.run_id, 'seq', n.seq, 'event', n.event, 'step_slug', n.step_slug,
        'status', n.status, 'output', n.output, 'error', null, 'attempt', n.attempt,
        'at', v_at
      )
    from numbered as n
    where n.kind > 0
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
  where r.run_id = u.run_id;

  perform set_config('pgflow.events_pending', 'on', true);
  if v_flows is not null then
    perform pg_notify('pgflow_tasks', f) from unnest(v_flows) as f;
  end if;
  return v_applied;
end;
$$;
