-- 0004_runs: the run lifecycle — start, claim, complete, fail, leases — and reading runs back.
--
-- Lock order, everywhere: a run's row first (for update), then its step_states rows. Callers
-- that touch several runs in one transaction lock them in run_id order. claim_tasks locks only
-- ready, unleased step rows (skip locked), which no run-locked path ever waits for.

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

-- _fail_run: fails a run because p_step_slug failed for good; cancels its unfinished steps.
-- Locks: the caller holds the run's row lock. Returns the run's new last seq.
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

-- _fail_attempt: ends the current attempt of a leased step with an error: a retry after
-- base_delay * 2^(attempt-1) seconds (or at once, p_retry_now, for an expired lease) while
-- attempts remain, else the step and its run fail.
-- Locks: the caller holds the run's row lock and has checked the step is leased.
create function pgflow._fail_attempt(p_run_id uuid, p_step_slug text, p_error text, p_retry_now boolean)
returns void
language plpgsql
volatile
set search_path to ''
as $$
declare
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
          else clock_timestamp() + v_step.base_delay * power(2, v_state.attempt - 1) * interval '1 second' end
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

-- _lock_leased_step: locks the run and returns true when the step is leased by this holder
-- (worker_id and attempt, when given) and its lease has not run out.
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

-- claim_tasks: leases up to max_tasks ready tasks, oldest first, for lease_seconds.
-- Before claiming it sweeps leases that ran out: each counts as a failed attempt
-- ('lease expired') and is claimable again at once, or fails the step on its last attempt.
-- Returns: one row per task with the handler's assembled input
--   {"run": <run input>, "<dep slug>": <dep output>, ...} and the step's timeout.
-- Locks: for update skip locked on ready rows; the run row of each expired lease it sweeps.
-- Notifies: only through the sweep (step:retrying / step:failed / run:failed).
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
  if claim_tasks.worker_id is null or claim_tasks.max_tasks is null or claim_tasks.max_tasks < 1
     or coalesce(claim_tasks.lease_seconds, 0) <= 0 then
    raise exception 'claim_tasks needs a worker_id, max_tasks >= 1 and lease_seconds > 0'
      using errcode = 'PF400';
  end if;

  -- SWEEP: leases whose holder vanished, rechecked under each run's lock
  for v_expired in
    select e.run_id, e.step_slug from (
      -- found through the lease index, then sorted into lock order
      select s.run_id, s.step_slug from pgflow.step_states as s
      where s.lease_expires_at < v_now
        and (claim_tasks.flow_slugs is null or s.flow_slug = any(claim_tasks.flow_slugs))
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

  -- CLAIM (what the sweep made claimable again included)
  v_now := clock_timestamp();
  return query
  with claimed as (
    select s.run_id, s.step_slug
    from pgflow.step_states as s
    where s.status in ('started', 'retrying')
      and s.lease_expires_at is null
      and s.available_at <= v_now
      and (claim_tasks.flow_slugs is null or s.flow_slug = any(claim_tasks.flow_slugs))
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
    returning s.run_id, s.flow_slug, s.step_slug, s.attempt
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
  join pgflow.steps as st on st.flow_slug = l.flow_slug and st.step_slug = l.step_slug;
end;
$$;

-- extend_leases: keeps the leases of tasks a worker is still running; returns how many it kept.
-- A lease that already ran out is not revived: the task may be someone else's by now.
create function pgflow.extend_leases(
  worker_id text,
  run_ids uuid[],
  step_slugs text[],
  lease_seconds double precision default 30
) returns int
language sql
volatile
set search_path to ''
as $$
  with extended as (
    update pgflow.step_states as s
    set lease_expires_at = clock_timestamp() + extend_leases.lease_seconds * interval '1 second'
    from unnest(extend_leases.run_ids, extend_leases.step_slugs) as t (run_id, step_slug)
    where s.run_id = t.run_id and s.step_slug = t.step_slug
      and s.leased_by = extend_leases.worker_id
      and s.lease_expires_at >= clock_timestamp()
    returning 1
  )
  select count(*)::int from extended;
$$;

-- release_tasks: gives back leased tasks unrun (a worker shutting down), claimable at once;
-- the attempt they were claimed for is not counted. Without ids, every task the worker holds.
-- Notifies: pgflow_tasks, so another worker takes them at once.
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

-- _run_output: a finished run's output: its output step's, or {leaf: output} for several leaves.
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

-- complete_step: completes a leased step, starts the dependents that became ready and, when it
-- was the run's last step, completes the run with its output.
-- Returns: true if applied; false (and changes nothing) when the caller no longer holds the
--   task: lease lost or run out, another attempt, run already finished.
-- Locks: the run's row, then its step rows.
-- Notifies: pgflow_events (step:completed, step:started..., run:completed), pgflow_tasks.
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

-- fail_step: ends a leased step's attempt with an error; retries with exponential backoff
-- (base_delay * 2^(attempt-1) seconds) until max_attempts, then fails the step and the run.
-- Returns: true if applied; false (and changes nothing) for a caller that no longer holds the
--   task, as complete_step.
-- Locks: the run's row, then its step rows.
-- Notifies: pgflow_events (step:retrying, or step:failed and run:failed).
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

-- get_run: the run now, with every step; null for an unknown run.
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

-- get_run_events: the run's events with since < seq (<= until, when given), in seq order.
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

-- list_runs: the most recent runs, newest first, optionally of one flow or one owner.
create function pgflow.list_runs(
  max_runs int default 20,
  flow_slug text default null,
  owner text default null
) returns setof jsonb
language sql
stable
set search_path to ''
as $$
  select jsonb_build_object(
    'run_id', r.run_id, 'flow_slug', r.flow_slug, 'status', r.status, 'seq', r.last_seq,
    'started_at', r.started_at, 'completed_at', r.completed_at, 'failed_at', r.failed_at
  )
  from pgflow.runs as r
  where (list_runs.flow_slug is null or r.flow_slug = list_runs.flow_slug)
    and (list_runs.owner is null or r.owner = list_runs.owner)
  order by r.started_at desc
  limit least(greatest(coalesce(list_runs.max_runs, 20), 1), 1000);
$$;
