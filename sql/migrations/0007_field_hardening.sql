-- 0007_field_hardening: bounded arguments, a linear define_flow, a retry's step:started, and
-- list_runs with filters and keyset paging.
--
--   * Every numeric argument of the SQL API is checked against a documented range and refused
--     with PF400 naming the argument, the range and the value (NaN and infinity included):
--     claim_tasks' lease_seconds was unbounded ('infinity' leased a task forever; NaN and 1e300
--     gave raw errors). A retry's backoff is capped, so that no max_attempts/base_delay pair can
--     overflow an interval on a late attempt (which failed the whole report of the batch).
--   * define_flow was superlinear (membership tests against arrays, a jsonb rebuilt per step,
--     Kahn's algorithm rescanning every step per level: a 1,000-step chain took seconds) and
--     redefining an unchanged shape cost as much. It is now set-based with a linear
--     topological sort, and the hash of the document that created a flow is stored on its row:
--     the same document again returns the stored shape without any other work.
--   * A retry attempt gets its own step:started, written when a worker claims it, so a client can
--     tell "waiting for its backoff" (step:retrying) from "running again". Only claims of a
--     retrying row pay for it; first attempts cost what they did.
--   * list_runs filters by statuses and a start-time window and pages by keyset
--     (started_at, run_id), on an index of that order.
-- Other functions keep their signatures, results, events, errors and lock order.

-- _bad_argument: raises PF400 for an argument out of its documented range.
-- Raises: always (SQLSTATE PF400), '<function>: <argument> must be <range>, not <value>'.
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

-- FLOWS: the hash of the document each flow was defined from (null for flows defined before
-- this migration until they are defined again)
alter table pgflow.flows add column definition_hash bytea;

-- _normalise_flow: validates a flow definition and returns its normalised shape, in time linear
-- in its steps and dependencies.
-- Raises: PF400 for a bad definition (slugs, types, ranges, unknown deps, cycles, output_step).
-- Locks: none; reads no table. Idempotent: yes.
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

-- define_flow: creates a flow's shape, or checks that it equals the stored one.
-- Input: {"slug", "steps": [{"slug", "depends_on", "max_attempts", "base_delay", "timeout"}],
--         "output_step", and optional flow-wide defaults "max_attempts", "base_delay", "timeout"}.
-- Returns: the normalised shape, as get_flow returns it.
-- Cost: linear in the steps and dependencies; the document a flow was created from (its jsonb
--   text, so key order and spacing do not matter) is recognised by its stored sha-256 and
--   answered with the stored shape, without validating or comparing anything again.
-- Locks: a transaction advisory lock on the slug, so two processes defining at once agree (not
--   taken on the fast path: a stored shape never changes).
-- Raises: PF400 for a bad definition (slugs, types, ranges, unknown deps, cycles, output_step);
--         PF409 when the slug exists with another shape (the message lists the differences).
-- Idempotent: yes, for the same shape.
create or replace function pgflow.define_flow(definition jsonb) returns jsonb
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

-- _fail_attempt: ends the current attempt of a leased step with an error: a retry after
-- base_delay * 2^(attempt-1) seconds, at most 30 days (or at once, p_retry_now, for an expired
-- lease) while attempts remain, else the step and its run fail.
-- Locks: the caller holds the run's row lock and has checked the step is leased.
-- Notifies: pgflow_events (step:retrying, or step:failed and run:failed); pgflow_tasks for a
--   retry claimable at once.
create or replace function pgflow._fail_attempt(p_run_id uuid, p_step_slug text, p_error text, p_retry_now boolean)
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

-- _lock_run_for_retry: locks a run whose retry claim_tasks is taking, without waiting.
-- Returns: true when this transaction holds the run's row lock (maybe from before), false when
--   another transaction holds it: the claim then leaves that retry for its next call.
-- Locks: the run's row, for update skip locked (claim_tasks may hold other step rows already:
--   waiting here could deadlock with _fail_run, which holds the run and cancels step rows).
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

-- _announce_retry: appends step:started for a retry attempt claim_tasks has just leased.
-- Locks: none of its own; the caller holds the run's row lock (_lock_run_for_retry).
-- Notifies: pgflow_events, at commit. Returns: true.
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
--   step:failed / run:failed).
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

-- extend_leases: keeps the leases of tasks a worker is still running for lease_seconds (0.1 to
-- 86400); returns how many it kept. A lease that already ran out is not revived: the task may be
-- someone else's by now.
-- Raises: PF400 for an argument out of its range, or run_ids and step_slugs of unequal length.
create or replace function pgflow.extend_leases(
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

-- RUNS, newest first: the order list_runs pages in, (started_at, run_id) descending
create index runs_started_at_run_id_idx on pgflow.runs (started_at desc, run_id desc);
drop index pgflow.runs_started_at_idx;

-- list_runs: runs newest first ((started_at, run_id) descending), at most max_runs (1 to 10000),
-- filtered by flow, owner, statuses (any of 'started', 'completed', 'failed') and a start-time
-- window (started_after < started_at < started_before), continuing after the run at
-- (after_started_at, after_run_id) when given: keyset paging, the last row of a page being the
-- next call's position.
-- Returns: {"run_id", "flow_slug", "status", "seq", "started_at", "completed_at", "failed_at"}.
-- Raises: PF400 for an argument out of its range, or half a position.
drop function pgflow.list_runs(int, text, text);
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
