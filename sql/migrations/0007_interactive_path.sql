-- 0007_interactive_path: the interactive path (each user's page starts a run and watches it, a
-- few steps per transaction) as cheap per run as the batch path (docs/design/scaling.md, "Many
-- users at once").
-- - The hot functions never read a table by a sequential scan (enable_seqscan off), whatever
--   its statistics: on young tables (a new install's first minutes, or a table autovacuum last
--   analyzed while it was small) the planner found a scan of runs inside a loop cheaper than its
--   index, and a report read all of runs once per run it touched.
-- - run_flows starts many runs in one call (the gateway's group commit); run_flow is run_flows
--   for one run.

-- PLAN STABILITY: no sequential scan in the hot functions
alter function pgflow.claim_tasks set enable_seqscan to off;
alter function pgflow.extend_leases set enable_seqscan to off;
alter function pgflow.release_tasks set enable_seqscan to off;
alter function pgflow.complete_step set enable_seqscan to off;
alter function pgflow.fail_step set enable_seqscan to off;
alter function pgflow._notify_events set enable_seqscan to off;
alter function pgflow._delete_run_events set enable_seqscan to off;
alter function pgflow.claim_tasks set plan_cache_mode to force_generic_plan;
alter function pgflow.extend_leases set plan_cache_mode to force_generic_plan;
alter function pgflow.release_tasks set plan_cache_mode to force_generic_plan;
alter function pgflow._notify_events set plan_cache_mode to force_generic_plan;

-- sql/schema/0100_function_run_flows.sql
-- run_flows: starts many runs in one call, one transaction and one notification: the gateway's
-- group commit (concurrent POST /rpc/run_flow requests coalesced, pgflow/db/coalescer.py), and
-- run_flow's own body.
-- Returns: for each input position, the new run_id (time-ordered, a version 7 UUID), or null
--   when that position names an unknown flow: the other positions' runs start all the same, so
--   one bad request in a batch fails alone.
-- Locks: none beyond the new rows.
-- Notifies: pgflow_events (run:started, step:started per root, per run), pgflow_tasks (each flow
--   slug once).
-- Raises: PF400 when the arrays differ in length (owners may be null: no owner for any run).
-- Idempotent: no; each position of each call is a new run.
create function pgflow.run_flows(flow_slugs text[], inputs jsonb[], owners text[] default null)
returns uuid[]
language plpgsql
volatile
set search_path to ''
-- every join here goes from a batch to rows by their key: a loop, whatever the row estimates
-- (docs/design/sql-contract.md, plan stability)
set enable_hashjoin to off
set enable_mergejoin to off
set enable_seqscan to off
-- one plan per statement for the session, made once: these statements take longer to plan
-- than a small batch takes to run, and the settings above keep the plan a loop over keys
set plan_cache_mode to force_generic_plan
as $$
declare
  v_count int := coalesce(cardinality(run_flows.flow_slugs), 0);
  v_run_ids uuid[];
  v_step_counts int[];
  v_root_counts int[];
  v_tx xid8;
  v_ranges text;
  v_flows text[];
begin
  if v_count is distinct from coalesce(cardinality(run_flows.inputs), 0)
     or (run_flows.owners is not null and cardinality(run_flows.owners) is distinct from v_count)
  then
    raise exception 'run_flows needs arrays of equal length' using errcode = 'PF400';
  end if;
  if v_count = 0 then
    return '{}';
  end if;

  -- RUNS: an id for each position whose flow exists, time-ordered (the UUID version 7 layout:
  -- milliseconds since 1970, then random bits), so new runs, their steps and their events land
  -- at the right edge of the indexes that lead with run_id and the runs being worked on share
  -- a few hot index pages: with random ids each insert and lookup touched a random leaf of
  -- indexes as large as the history
  select array_agg(case when f.step_count > 0 then
        encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid())
          placing substring(int8send((extract(epoch from clock_timestamp()) * 1000)::bigint) from 3)
          from 1 for 6), 52, 1), 53, 1), 'hex')::uuid
      end order by q.i),
    array_agg(f.step_count order by q.i),
    array_agg(f.root_count order by q.i),
    array_agg(distinct run_flows.flow_slugs[q.i]) filter (where f.step_count > 0)
    into v_run_ids, v_step_counts, v_root_counts, v_flows
  from generate_subscripts(run_flows.flow_slugs, 1) as q (i)
  cross join lateral (
    select count(*)::int as step_count,
      count(*) filter (where cardinality(s.depends_on) = 0)::int as root_count
    from pgflow.steps as s
    where s.flow_slug = run_flows.flow_slugs[q.i]
  ) as f;
  if v_flows is null then
    return v_run_ids;
  end if;

  insert into pgflow.runs (run_id, flow_slug, input, owner, remaining_steps, last_seq)
  select n.run_id, n.flow_slug, coalesce(n.input, 'null'::jsonb), n.owner, n.step_count,
    1 + n.root_count
  from unnest(v_run_ids, run_flows.flow_slugs, run_flows.inputs, run_flows.owners,
              v_step_counts, v_root_counts)
    as n (run_id, flow_slug, input, owner, step_count, root_count)
  where n.run_id is not null;

  insert into pgflow.step_states (run_id, step_slug, flow_slug, status, remaining_deps, available_at, started_at)
  select n.run_id, s.step_slug, s.flow_slug,
    case when cardinality(s.depends_on) = 0 then 'started' else 'created' end,
    cardinality(s.depends_on),
    case when cardinality(s.depends_on) = 0 then now() end,
    case when cardinality(s.depends_on) = 0 then now() end
  from unnest(v_run_ids, run_flows.flow_slugs) as n (run_id, flow_slug)
  join pgflow.steps as s on s.flow_slug = n.flow_slug
  where n.run_id is not null;

  -- EVENTS: each run's run:started and each root's step:started, in one insert (their payloads
  -- hold nothing, as _event stores them), noted as one range per run for the commit-time
  -- notification
  v_tx := pgflow._events_tx();
  with roots as (
    select n.run_id, s.step_slug,
      row_number() over (partition by n.run_id order by s.step_index) as ord
    from unnest(v_run_ids, run_flows.flow_slugs) as n (run_id, flow_slug)
    join pgflow.steps as s on s.flow_slug = n.flow_slug and cardinality(s.depends_on) = 0
    where n.run_id is not null
  ), inserted as (
    insert into pgflow.run_events (run_id, seq, event, step_slug, attempt, tx)
    select n.run_id, 1, 'run:started', null, null, v_tx
    from unnest(v_run_ids) as n (run_id)
    where n.run_id is not null
    union all
    select r.run_id, 1 + r.ord, 'step:started', r.step_slug, 1, v_tx
    from roots as r
    returning run_id, seq
  )
  select string_agg(x.run_id || ',1,' || x.last_seq || ';', '')
    into v_ranges
  from (select i.run_id, max(i.seq) as last_seq from inserted as i group by i.run_id) as x;
  if v_tx is null then
    perform pgflow._note_events(v_ranges);
  end if;
  perform pg_notify('pgflow_tasks', f) from unnest(v_flows) as f;
  return v_run_ids;
end;
$$;

-- sql/schema/0100_function_get_runs_events.sql
-- get_runs_events: many runs' events in one call, each as get_run_events gives it: for each
-- position i, the events of run_ids[i] with since[i] < seq (<= until[i], when not null), in
-- seq order, positions in order. One plan for the whole read, kept for the session: the
-- gateway reads the events of many runs at once (the runs a notification named by reference,
-- the first reads of concurrent subscriptions), and get_run_events per run was a function call
-- and a plan per run.
-- Returns: (position, run_id, seq, event) rows.
-- Locks: none. Notifies: nothing.
-- Raises: PF400 when the arrays differ in length.
-- Idempotent: yes (reads only).
create function pgflow.get_runs_events(run_ids uuid[], since bigint[], until bigint[])
returns table (pos bigint, run_id uuid, seq bigint, event jsonb)
language plpgsql
stable
set search_path to ''
-- from each position to its events by primary key, whatever the estimates
set enable_hashjoin to off
set enable_mergejoin to off
set enable_seqscan to off
set plan_cache_mode to force_generic_plan
as $$
begin
  if coalesce(cardinality(get_runs_events.run_ids), 0)
       is distinct from coalesce(cardinality(get_runs_events.since), 0)
     or coalesce(cardinality(get_runs_events.run_ids), 0)
       is distinct from coalesce(cardinality(get_runs_events.until), 0) then
    raise exception 'get_runs_events needs arrays of equal length' using errcode = 'PF400';
  end if;
  return query
  -- the same rebuild as get_run_events' and _notify_events'
  select r.o, e.run_id, e.seq, jsonb_build_object(
      'run_id', e.run_id, 'seq', e.seq, 'event', e.event, 'step_slug', e.step_slug,
      'status', split_part(e.event, ':', 2), 'output', null, 'error', null, 'attempt', e.attempt,
      'at', to_char(e.at at time zone 'utc', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
    ) || e.payload
  from unnest(get_runs_events.run_ids, get_runs_events.since, get_runs_events.until)
    with ordinality as r (run_id, since, until, o)
  join pgflow.run_events as e
    on e.run_id = r.run_id and e.seq > coalesce(r.since, 0)
    and (r.until is null or e.seq <= r.until)
  order by r.o, e.seq;
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
--   whose tasks became ready (held for report_and_claim, which calls it, to decide).
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
set enable_seqscan to off
-- one plan per statement for the session, made once: these statements take longer to plan
-- than a small batch takes to run, and the settings above keep the plan a loop over keys
set plan_cache_mode to force_generic_plan
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
    if current_setting('pgflow.hold_task_wakeups', true) = 'on' then
      -- report_and_claim claims next and sends only the wake-ups its claim leaves needed
      perform set_config('pgflow.held_task_wakeups', v_flows::text, true);
    else
      perform pg_notify('pgflow_tasks', f) from unnest(v_flows) as f;
    end if;
  end if;
  return v_applied;
end;
$$;

-- sql/schema/0100_function_report_and_claim.sql
-- report_and_claim: a worker's report (report_steps) and its next claim (claim_tasks) in one
-- call and one transaction: the steps the report made ready are claimed at once by the worker
-- that reported them (with the oldest other ready tasks first, as any claim), without a
-- notification, a wake-up and a claim of their own. Up to max_tasks (0 to 1000; 0: report only).
-- Returns: the report's applied array (as report_steps) on every row, and one row per claimed
--   task (as claim_tasks), or a single row with null task columns when nothing was claimed.
-- Locks: as report_steps, then as claim_tasks.
-- Notifies: pgflow_events (both parts' events, one notification); pgflow_tasks for each flow the
--   report made ready whose tasks this claim may have left: those outside flow_slugs, and every
--   one when the claim took max_tasks (more may be waiting). When the claim took fewer, it took
--   every ready task of its flows not locked by another claim: a wake-up would find nothing.
-- Raises: as report_steps and claim_tasks; PF400 for max_tasks out of its range.
-- Idempotent: no; the report part is, the claim takes new leases.
create function pgflow.report_and_claim(
  worker_id text,
  run_ids uuid[],
  step_slugs text[],
  attempts int[],
  outputs jsonb[],
  errors text[],
  max_tasks int,
  flow_slugs text[] default null,
  lease_seconds double precision default 30
) returns table (
  applied boolean[],
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
  v_applied boolean[];
  v_ready_flows text[];
  v_claimed bigint := 0;
begin
  if (report_and_claim.max_tasks between 0 and 1000) is not true then
    perform pgflow._bad_argument('report_and_claim', 'max_tasks', 'an integer from 0 to 1000',
                                 report_and_claim.max_tasks::text);
  end if;

  perform set_config('pgflow.hold_task_wakeups', 'on', true);
  v_applied := pgflow.report_steps(report_and_claim.worker_id, report_and_claim.run_ids,
    report_and_claim.step_slugs, report_and_claim.attempts, report_and_claim.outputs,
    report_and_claim.errors);
  perform set_config('pgflow.hold_task_wakeups', '', true);
  v_ready_flows := nullif(current_setting('pgflow.held_task_wakeups', true), '')::text[];
  perform set_config('pgflow.held_task_wakeups', '', true);

  if report_and_claim.max_tasks > 0 then
    return query
    select v_applied, c.run_id, c.flow_slug, c.step_slug, c.attempt, c.input, c.timeout,
      c.max_attempts
    from pgflow.claim_tasks(report_and_claim.worker_id, report_and_claim.max_tasks,
                            report_and_claim.flow_slugs, report_and_claim.lease_seconds) as c;
    get diagnostics v_claimed = row_count;
  end if;

  perform pg_notify('pgflow_tasks', f)
  from unnest(v_ready_flows) as f
  where v_claimed >= report_and_claim.max_tasks
     or (report_and_claim.flow_slugs is not null and not f = any(report_and_claim.flow_slugs));

  if v_claimed = 0 then
    return query select v_applied, null::uuid, null::text, null::text, null::int, null::jsonb,
      null::int, null::int;
  end if;
end;
$$;

-- sql/schema/0100_function_run_flow.sql
-- run_flow: starts a run of a flow and queues its root steps (run_flows for one run).
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
  v_run_id uuid := (pgflow.run_flows(array[run_flow.flow_slug], array[run_flow.input],
                                     array[run_flow.owner]))[1];
begin
  if v_run_id is null then
    raise exception 'unknown flow %', quote_literal(run_flow.flow_slug) using errcode = 'PF404';
  end if;
  return v_run_id;
end;
$$;

-- sql/schema/0110_function__grant_roles.sql
-- _grant_roles: gives the roles pgflow_worker, pgflow_gateway and pgflow_pruner (so their
-- members too) exactly the privileges their processes need, and no more
-- (docs/reference/sql-api.md#roles-and-grants): each role's privileges in the schema are revoked
-- first, so this list is the whole of them. A role that does not exist is granted nothing, with
-- a NOTICE: roles belong to the cluster, and a migration does not create them (sql/roles.sql,
-- run by an administrator, does).
-- Run by the migrations and, after creating the roles later, by the schema's owner:
-- `select pgflow._grant_roles()`.
-- The public functions are security definer (0900_grants.sql): a role needs EXECUTE on a
-- function, never a privilege on the tables it writes. The direct reads of pgflow/db/store.py
-- are granted column by column.
-- Locks: none beyond GRANT's own. Notifies: nothing. Raises: nothing (NOTICE for a missing role).
-- Idempotent: yes.
create or replace function pgflow._grant_roles() returns void
language plpgsql
set search_path to ''
as $$
declare
  v_role text;
  v_missing text[] := '{}';
  v_bookkeeping boolean := to_regclass('pgflow.schema_migrations') is not null;
begin
  -- RESET: what each existing role holds in the schema
  foreach v_role in array array['pgflow_worker', 'pgflow_gateway', 'pgflow_pruner'] loop
    if exists (select from pg_catalog.pg_roles as r where r.rolname = v_role) then
      execute format('revoke all on all functions in schema pgflow from %I', v_role);
      execute format('revoke all on all tables in schema pgflow from %I', v_role);
      execute format('grant usage on schema pgflow to %I', v_role);
      if v_bookkeeping then
        -- `pgflow worker` and `serve` migrate on start: reading the record finds nothing to do
        execute format('grant select on pgflow.schema_migrations to %I', v_role);
      end if;
    else
      v_missing := v_missing || v_role;
    end if;
  end loop;

  -- WORKER: claims, reports, keeps and gives back leases; defines the flows it runs
  if not 'pgflow_worker' = any (v_missing) then
    grant execute on function
      pgflow.claim_tasks, pgflow.report_steps, pgflow.report_and_claim, pgflow.complete_step,
      pgflow.fail_step,
      pgflow.extend_leases, pgflow.release_tasks, pgflow.define_flow, pgflow.get_flow
      to pgflow_worker;
    -- Store.retry_delays: when a reported failure's retry may be claimed
    grant select (run_id, step_slug, attempt, status, available_at, lease_expires_at)
      on pgflow.step_states to pgflow_worker;
  end if;

  -- GATEWAY: starts, reads and lists runs, replays their events; defines the flows it loads
  if not 'pgflow_gateway' = any (v_missing) then
    grant execute on function
      pgflow.run_flow, pgflow.run_flows, pgflow.get_run, pgflow.get_run_events,
      pgflow.get_runs_events, pgflow.list_runs,
      pgflow.define_flow, pgflow.get_flow
      to pgflow_gateway;
    -- Store.get_run_replay and get_run_owner: a subscription's access check and its replay
    grant select (run_id, flow_slug, owner, last_seq) on pgflow.runs to pgflow_gateway;
  end if;

  -- PRUNER: deletes finished runs (`pgflow prune`, the worker's --retention)
  if not 'pgflow_pruner' = any (v_missing) then
    grant execute on function pgflow.prune_runs to pgflow_pruner;
  end if;

  if cardinality(v_missing) > 0 then
    raise notice 'pgflow: granted nothing to %: no such role', array_to_string(v_missing, ', ')
      using hint = 'create the roles (sql/roles.sql), then run `select pgflow._grant_roles()` '
                   || 'as the owner of the schema pgflow';
  end if;
end;
$$;

-- ATTRIBUTES, as sql/schema/0900_grants.sql sets them (create or replace reset them)
alter function pgflow.run_flows set search_path to pg_catalog, pg_temp;
alter function pgflow.get_runs_events set search_path to pg_catalog, pg_temp;
alter function pgflow.report_steps set search_path to pg_catalog, pg_temp;
alter function pgflow.report_and_claim set search_path to pg_catalog, pg_temp;
alter function pgflow.run_flow set search_path to pg_catalog, pg_temp;
alter function pgflow._grant_roles set search_path to pg_catalog, pg_temp;
revoke all on function pgflow.run_flows from public;
revoke all on function pgflow.get_runs_events from public;
revoke all on function pgflow.report_steps from public;
revoke all on function pgflow.report_and_claim from public;
revoke all on function pgflow.run_flow from public;
revoke all on function pgflow._grant_roles from public;
alter function pgflow.run_flows security definer;
alter function pgflow.run_flow security definer;
alter function pgflow.get_runs_events security definer;
alter function pgflow.report_steps security definer;
alter function pgflow.report_and_claim security definer;

-- ROLES: pgflow_worker, pgflow_gateway and pgflow_pruner, those that exist
select pgflow._grant_roles();
