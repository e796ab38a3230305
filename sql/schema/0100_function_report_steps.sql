-- report_steps: completes (errors[i] is null) or fails (errors[i] is not null) many leased steps,
-- a worker's batch of results in one call, one transaction, one notification. Completions are
-- the engine's hot path, so they are applied set-based: a handful of statements for the whole
-- batch. Failures are rare and take the per-step path (fail_step: retries, failing the run).
-- A map step's element tasks ('<slug>[<i>]') complete the same way and count their map step
-- down; a map step whose last element completed here completes last, through this function.
-- Returns: for each input position, whether it was applied (false: a stale report — the caller
--   no longer holds a live lease on that step, with that worker_id and attempt, or the run ended).
-- Locks: every run of the batch, in run_id order (the engine's lock order), before anything else,
--   so two workers reporting overlapping runs cannot deadlock; then the step rows it changes.
-- Notifies: pgflow_events (through the transaction's one notification), pgflow_tasks per flow
--   whose tasks became ready (held for report_and_claim, which calls it, to decide); an input
--   step made ready waits instead (step:waiting).
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
  v_ready_kinds text[];
  v_ready_payloads jsonb[];
  -- per completion: the map step of an element task (null for a step)
  v_done_parents text[];
  -- map steps whose last element completed here, and their outputs
  v_maps_runs uuid[];
  v_maps_slugs text[];
  v_maps_attempts int[];
  v_maps_outputs jsonb[];
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
    returning v.i, s.attempt, s.flow_slug, s.map_parent
  )
  select array_agg(c.i order by c.i), array_agg(c.attempt order by c.i),
    array_agg(c.flow_slug order by c.i), array_agg(c.map_parent order by c.i)
    into v_done, v_done_attempts, v_done_flows, v_done_parents
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
    array_agg(st.step_index), array_agg(distinct r.flow_slug) filter (where st.kind <> 'input'),
    array_agg(st.kind)
    into v_ready_runs, v_ready_slugs, v_ready_last, v_ready_index, v_flows, v_ready_kinds
  from ready as r
  join pgflow.steps as st on st.flow_slug = r.flow_slug and st.step_slug = r.step_slug
  where r.remaining_deps = 0;
  -- an input step made ready waits for its value instead, a map step starts its element tasks
  -- (rare: one statement more then)
  if 'input' = any(v_ready_kinds) or 'map' = any(v_ready_kinds) then
    v_ready_payloads := array(
      select case w.kind when 'input' then pgflow._wait_for_input(w.run_id, w.step_slug)
                         when 'map' then pgflow._begin_map(w.run_id, w.step_slug) end
      from unnest(v_ready_runs, v_ready_slugs, v_ready_kinds) with ordinality as w (run_id, step_slug, kind, o)
      order by w.o);
  end if;

  -- MAP STEPS: element tasks completed count down their map step; one whose last element
  -- completed here is completed with their outputs in index order, last (below)
  if cardinality(array_remove(v_done_parents, null)) > 0 then
    with counted as (
      select report_steps.run_ids[d.i] as run_id, d.parent, count(*)::int as n
      from unnest(v_done, v_done_parents) as d (i, parent)
      where d.parent is not null
      group by 1, 2
    ), left_now as (
      update pgflow.step_states as s
      set map_left = s.map_left - c.n
      from counted as c
      where s.run_id = c.run_id and s.step_slug = c.parent
      returning s.run_id, s.step_slug, s.attempt, s.map_left
    )
    select array_agg(l.run_id order by l.run_id, l.step_slug),
      array_agg(l.step_slug order by l.run_id, l.step_slug),
      array_agg(l.attempt order by l.run_id, l.step_slug),
      array_agg((select coalesce(jsonb_agg(e.output order by e.map_index), '[]'::jsonb)
                 from pgflow.step_states as e
                 where e.run_id = l.run_id and e.map_parent = l.step_slug)
                order by l.run_id, l.step_slug)
      into v_maps_runs, v_maps_slugs, v_maps_attempts, v_maps_outputs
    from left_now as l
    where l.map_left = 0;
  end if;

  -- RUNS: what the batch does to each (read from the rows locked above, through their key:
  -- a batch touches a few dozen runs of a table that holds them all)
  select array_agg(r.run_id order by r.run_id),
    array_agg(p.n order by r.run_id),
    array_agg(r.last_seq order by r.run_id),
    array_agg(r.remaining_steps = p.n order by r.run_id)
    into v_runs, v_runs_done, v_runs_seq, v_runs_finished
  from (
    -- element tasks count no step of their run: their map step does, once complete
    select report_steps.run_ids[d.i] as run_id, count(*) filter (where d.parent is null)::int as n
    from unnest(v_done, v_done_parents) as d (i, parent) group by 1
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
    -- an element task's event carries no output: its map step's step:completed has them all
    select report_steps.run_ids[d.i] as run_id, d.i as ord, 1 as kind, 0 as sub,
      'step:completed' as event, report_steps.step_slugs[d.i] as step_slug,
      'completed' as status,
      case when d.parent is null then coalesce(report_steps.outputs[d.i], 'null'::jsonb) end
        as output,
      null::jsonb as payload, d.attempt, null::bigint as last_seq
    from unnest(v_done, v_done_attempts, v_done_parents) as d (i, attempt, parent)
    union all
    select g.run_id, g.last_i, 2, g.step_index,
      case when g.kind = 'input' then 'step:waiting' else 'step:started' end, g.step_slug,
      null, null::jsonb, g.payload, 1, null
    from unnest(v_ready_runs, v_ready_slugs, v_ready_last, v_ready_index, v_ready_payloads,
                v_ready_kinds)
      as g (run_id, step_slug, last_i, step_index, payload, kind)
    union all
    select f.run_id, 2147483647, 3, 0, 'run:completed', null, 'completed', f.output, null, null, null
    from unnest(v_runs, v_runs_finished, v_runs_output) as f (run_id, finished, output)
    where f.finished
    union all
    -- each run's last seq so far, on a row of its own that sorts first: numbered reads it
    -- through its window instead of joining two arrays
    select b.run_id, -1, 0, 0, null, null, null, null, null, null, b.last_seq
    from unnest(v_runs, v_runs_seq) as b (run_id, last_seq)
  ), numbered as (
    select raw.*, max(raw.last_seq) over w + row_number() over w - 1 as seq
    from raw
    window w as (partition by raw.run_id order by raw.ord, raw.kind, raw.sub)
  ), inserted as (
    insert into pgflow.run_events (run_id, seq, at, attempt, event, step_slug, tx, payload)
    select n.run_id, n.seq, v_at, n.attempt, n.event, n.step_slug, v_tx,
      case when n.output is not null then jsonb_build_object('output', n.output)
           else coalesce(n.payload, '{}'::jsonb) end
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

  -- LAST, numbered after this batch's events: map steps whose elements are all done complete
  -- (through this function again, under their engine lease); map steps started here with
  -- nothing to run complete or fail at once
  if v_maps_runs is not null then
    perform pgflow.report_steps('pgflow:map', v_maps_runs, v_maps_slugs, v_maps_attempts,
      v_maps_outputs, array_fill(null::text, array[cardinality(v_maps_runs)]));
  end if;
  if 'map' = any(v_ready_kinds) then
    perform pgflow._settle_maps(v_ready_runs, v_ready_slugs);
  end if;

  if v_flows is not null then
    if current_setting('pgflow.hold_task_wakeups', true) = 'on' then
      -- report_and_claim claims next and sends only the wake-ups its claim leaves needed; a
      -- call within this one (a map step completing) may have held some already
      perform set_config('pgflow.held_task_wakeups', (
        select array_agg(distinct f)::text from unnest(v_flows || coalesce(
          nullif(current_setting('pgflow.held_task_wakeups', true), '')::text[], '{}')) as f),
        true);
    else
      perform pg_notify('pgflow_tasks', f) from unnest(v_flows) as f;
    end if;
  end if;
  return v_applied;
end;
$$;
