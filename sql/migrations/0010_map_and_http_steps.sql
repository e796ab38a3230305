-- 0010_map_and_http_steps: map steps (a task per element of an array, docs/reference/sql-api.md)
-- and HTTP steps (a task a worker dispatches to a URL); fail_step can fail a step for good.

-- STEPS: two more kinds
alter table pgflow.steps add column map_over text;
alter table pgflow.steps add column http_url text;
alter table pgflow.steps drop constraint kind_is_known;
alter table pgflow.steps add constraint kind_is_known check (kind in ('task', 'input', 'map', 'http'));
alter table pgflow.steps add constraint map_steps_map_over_something
  check ((kind = 'map') = (map_over is not null));
alter table pgflow.steps add constraint http_steps_have_a_url
  check ((kind = 'http') = (http_url is not null));

-- STEP STATES: a map step's element tasks, and its count of them
alter table pgflow.step_states add column map_parent text;
alter table pgflow.step_states add column map_index int;
alter table pgflow.step_states add column item jsonb;
alter table pgflow.step_states add column map_tasks int;
alter table pgflow.step_states add column map_left int;

-- new signatures: fail_step gains retry, _fail_attempt p_final
drop function pgflow.fail_step(uuid, text, text, text, int);
drop function pgflow._fail_attempt(uuid, text, text, boolean);
-- _start_step starts any kind of step, input steps included
drop function pgflow._start_waiting(uuid, bigint, text);

-- sql/schema/0110_function__fail_for_good.sql
-- _fail_for_good: a step fails without another attempt (its last attempt failed, an input step
-- timed out, a map step got no array to map over, an HTTP step's function refused its input):
-- step:failed, then its run fails. An element task of a map step takes its map step with it:
-- the element's own failure (task:failed), then the map step's (`task i failed: ...`), then the
-- run's.
-- Locks: the caller holds the run's row lock; it updates the run's step rows.
-- Notifies: pgflow_events, at commit.
-- Raises: nothing.
-- Idempotent: no (it appends events).
create function pgflow._fail_for_good(p_run_id uuid, p_step_slug text, p_error text, p_attempt int)
returns void
language plpgsql
volatile
set search_path to ''
as $$
declare
  v_seq bigint;
  v_parent text;
  v_index int;
  v_parent_attempt int;
  v_error text := p_error;
  v_failed text := p_step_slug;
begin
  update pgflow.step_states as s
  set status = 'failed', error = p_error, failed_at = now(), leased_by = null, lease_expires_at = null
  where s.run_id = p_run_id and s.step_slug = p_step_slug
  returning s.map_parent, s.map_index into v_parent, v_index;
  select r.last_seq + 1 into v_seq from pgflow.runs as r where r.run_id = p_run_id;
  perform pgflow._event(p_run_id, v_seq, 'step:failed', p_step_slug, 'failed', null, p_error, p_attempt);
  if v_parent is not null then
    v_error := format('task %s failed: %s', v_index, p_error);
    v_failed := v_parent;
    update pgflow.step_states as s
    set status = 'failed', error = v_error, failed_at = now(), leased_by = null,
        lease_expires_at = null
    where s.run_id = p_run_id and s.step_slug = v_parent
    returning s.attempt into v_parent_attempt;
    v_seq := v_seq + 1;
    perform pgflow._event(p_run_id, v_seq, 'step:failed', v_parent, 'failed', null, v_error,
                          v_parent_attempt);
  end if;
  perform pgflow._fail_run(p_run_id, v_seq, v_failed, v_error,
                           coalesce(v_parent_attempt, p_attempt));
end;
$$;

-- sql/schema/0110_function__fail_attempt.sql
-- _fail_attempt: ends the current attempt of a leased step with an error: a retry after
-- base_delay * 2^(n-1) seconds (n: the attempts since the run was started or last retried), at
-- most 30 days (or at once, p_retry_now, for an expired lease) while attempts remain, else (or
-- at once, p_final) the step and its run fail (_fail_for_good).
-- Locks: the caller holds the run's row lock and has checked the step is leased; it locks the
--   step's row.
-- Notifies: pgflow_events (step:retrying, or step:failed and run:failed); pgflow_tasks for a
--   retry claimable at once.
-- Raises: nothing.
-- Idempotent: no (it appends events).
create function pgflow._fail_attempt(p_run_id uuid, p_step_slug text, p_error text, p_retry_now boolean,
                                     p_final boolean default false)
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
  -- an element task of a map step retries by its map step's options
  select * into v_step from pgflow.steps as st
  where st.flow_slug = v_state.flow_slug and st.step_slug = coalesce(v_state.map_parent, p_step_slug);
  select r.last_seq + 1 into v_seq from pgflow.runs as r where r.run_id = p_run_id;

  -- RETRY while attempts remain
  if v_state.attempt - v_state.attempt_base < v_step.max_attempts and not p_final then
    update pgflow.step_states as s
    set status = 'retrying', error = p_error, leased_by = null, lease_expires_at = null,
        available_at = case when p_retry_now then clock_timestamp()
          else clock_timestamp() + least(v_step.base_delay * power(2, v_state.attempt - v_state.attempt_base - 1),
                                         c_max_backoff)
                                   * interval '1 second' end
    where s.run_id = p_run_id and s.step_slug = p_step_slug;
    perform pgflow._event(p_run_id, v_seq, 'step:retrying', p_step_slug, 'retrying', null, p_error, v_state.attempt);
    update pgflow.runs as r set last_seq = v_seq where r.run_id = p_run_id;
    if p_retry_now then
      perform pg_notify('pgflow_tasks', v_state.flow_slug);
    end if;
    return;
  end if;

  -- FINAL FAILURE of the step (and of its map step), then of the run
  perform pgflow._fail_for_good(p_run_id, p_step_slug, p_error, v_state.attempt);
end;
$$;

-- sql/schema/0100_function_fail_step.sql
-- fail_step: ends a leased step's attempt with an error; retries with exponential backoff
-- (base_delay * 2^(attempt-1) seconds, at most 30 days) until max_attempts, then fails the step
-- and the run; with retry => false it fails them at once (an error no attempt can mend: an HTTP
-- step's function answering 4xx).
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
  attempt int default null,
  retry boolean default true
) returns boolean
language plpgsql
volatile
set search_path to ''
-- rows by their key, whatever the statistics (docs/design/sql-contract.md, plan stability)
set enable_seqscan to off
as $$
begin
  if not pgflow._lock_leased_step(fail_step.run_id, fail_step.step_slug,
                                  fail_step.worker_id, fail_step.attempt) then
    return false;
  end if;
  perform pgflow._fail_attempt(fail_step.run_id, fail_step.step_slug,
                               coalesce(fail_step.error, 'failed without a message'), false,
                               not coalesce(fail_step.retry, true));
  return true;
end;
$$;

-- sql/schema/0110_function__begin_map.sql
-- _begin_map: a map step whose dependencies completed starts: one element task per element of
-- the array it maps over ('<slug>[<index>]', claimable at once, each with its item), while its
-- own row holds the engine's lease ('pgflow:map', never expiring: no worker claims it) until
-- its elements are done (report_steps completes it then, _fail_for_good fails it).
-- A map step retried (retry_run) that had started its elements runs those not completed again.
-- Returns: its step:started event's payload, {"tasks": n}: n null when there is no array to map
--   over (not an array, or more than 100,000 elements), which _settle_maps then fails.
-- Locks: the caller holds the run's row lock; it updates the step's row and adds its elements.
-- Notifies: nothing (the caller writes the event). Raises: nothing.
-- Idempotent: no (it adds the element tasks).
create function pgflow._begin_map(p_run_id uuid, p_step_slug text) returns jsonb
language plpgsql
volatile
set search_path to ''
as $$
declare
  c_max_tasks constant int := 100000;
  v_key text;
  v_over text;
  v_array jsonb;
  v_tasks int;
  v_had int;
begin
  select s.flow_slug, st.map_over, s.map_tasks into v_key, v_over, v_had
  from pgflow.step_states as s
  join pgflow.steps as st on st.flow_slug = s.flow_slug and st.step_slug = s.step_slug
  where s.run_id = p_run_id and s.step_slug = p_step_slug;

  -- RETRIED (retry_run): the elements that did not complete run again, the others keep their
  -- outputs
  if v_had is not null then
    update pgflow.step_states as e
    set status = 'started', attempt_base = e.attempt, error = null, failed_at = null,
        available_at = now(), started_at = now(), leased_by = null, lease_expires_at = null
    where e.run_id = p_run_id and e.map_parent = p_step_slug and e.status in ('failed', 'cancelled');
    update pgflow.step_states as s
    set status = 'started', attempt = s.attempt + 1, leased_by = 'pgflow:map',
        lease_expires_at = 'infinity', started_at = now(), available_at = now(),
        map_left = (select count(*) from pgflow.step_states as e
                    where e.run_id = p_run_id and e.map_parent = p_step_slug
                      and e.status <> 'completed')
    where s.run_id = p_run_id and s.step_slug = p_step_slug;
    return jsonb_build_object('tasks', v_had);
  end if;

  if v_over = 'run' then
    select r.input into v_array from pgflow.runs as r where r.run_id = p_run_id;
  else
    select d.output into v_array from pgflow.step_states as d
    where d.run_id = p_run_id and d.step_slug = v_over;
  end if;
  if jsonb_typeof(v_array) = 'array' and jsonb_array_length(v_array) <= c_max_tasks then
    v_tasks := jsonb_array_length(v_array);
  end if;

  update pgflow.step_states as s
  set status = 'started', attempt = s.attempt + 1, leased_by = 'pgflow:map',
      lease_expires_at = 'infinity', map_tasks = v_tasks, map_left = v_tasks,
      started_at = now(), available_at = now()
  where s.run_id = p_run_id and s.step_slug = p_step_slug;
  if v_tasks > 0 then
    insert into pgflow.step_states (run_id, step_slug, flow_slug, status, remaining_deps,
                                    available_at, started_at, map_parent, map_index, item)
    select p_run_id, p_step_slug || '[' || (e.i - 1) || ']', v_key, 'started', 0, now(), now(),
      p_step_slug, (e.i - 1)::int, e.v
    from jsonb_array_elements(v_array) with ordinality as e (v, i);
  end if;
  return jsonb_build_object('tasks', v_tasks);
end;
$$;

-- sql/schema/0110_function__settle_maps.sql
-- _settle_maps: the map steps among (p_run_ids[i], p_step_slugs[i]) that _begin_map started with
-- nothing to run end at once: with no element left (an empty array: []), completed with their
-- elements' outputs (through report_steps, as any completion: dependents, events, the run's end);
-- with no array to map over, failed for good
-- (`map step 'x' maps over an array: 'y' gave an object`), and the run with it. The others run.
-- Called last by the functions that start steps, once their own events are written: what it
-- writes is numbered after them.
-- Locks: the caller holds the runs' row locks.
-- Notifies: pgflow_events, at commit; pgflow_tasks for steps a completion made ready.
-- Raises: nothing.
-- Idempotent: no (it appends events).
create function pgflow._settle_maps(p_run_ids uuid[], p_step_slugs text[]) returns void
language plpgsql
volatile
set search_path to ''
as $$
declare
  v_map record;
  v_what text;
begin
  for v_map in
    select s.run_id, s.step_slug, s.map_tasks, s.attempt, st.map_over, r.input as run_input
    from unnest(p_run_ids, p_step_slugs) as m (run_id, step_slug)
    join pgflow.step_states as s on s.run_id = m.run_id and s.step_slug = m.step_slug
    join pgflow.steps as st on st.flow_slug = s.flow_slug and st.step_slug = s.step_slug
    join pgflow.runs as r on r.run_id = s.run_id
    where st.kind = 'map' and s.status = 'started' and (s.map_tasks is null or s.map_left = 0)
    order by s.run_id, s.step_slug
  loop
    if v_map.map_tasks is not null then
      -- no element left to run: none at all, or (retried) all completed before
      perform pgflow.report_steps('pgflow:map', array[v_map.run_id], array[v_map.step_slug],
        array[v_map.attempt], array[(
          select coalesce(jsonb_agg(e.output order by e.map_index), '[]'::jsonb)
          from pgflow.step_states as e
          where e.run_id = v_map.run_id and e.map_parent = v_map.step_slug)],
        array[null::text]);
    else
      select case when jsonb_typeof(x.v) = 'array'
               then format('%s elements, over the 100000 a map step takes', jsonb_array_length(x.v))
               else 'a' || case when jsonb_typeof(x.v) ~ '^[aeiou]' then 'n ' else ' ' end
                    || coalesce(jsonb_typeof(x.v), 'nothing') end
        into v_what
      from (select case when v_map.map_over = 'run' then v_map.run_input
                   else (select d.output from pgflow.step_states as d
                         where d.run_id = v_map.run_id and d.step_slug = v_map.map_over)
                   end as v) as x;
      perform pgflow._fail_for_good(v_map.run_id, v_map.step_slug,
        format('map step %s maps over an array: %s gave %s', quote_literal(v_map.step_slug),
               case when v_map.map_over = 'run' then 'the run''s input'
                    else quote_literal(v_map.map_over) end, v_what),
        v_map.attempt);
    end if;
  end loop;
end;
$$;

-- sql/schema/0110_function__start_step.sql
-- _start_step: a step whose dependencies completed starts, as its kind does, with its event at
-- p_seq: a task is queued (step:started); an input step waits for its value (_wait_for_input,
-- step:waiting with its schema and input); a map step starts its element tasks (_begin_map,
-- step:started with {"tasks": n}, which _settle_maps completes or fails once the caller's
-- events are written, when there is nothing to run). The per-step paths (complete_step,
-- retry_run) call it; the set-based ones write their events in their own insert.
-- Returns: the step's kind.
-- Locks: the caller holds the run's row lock (it owns p_seq) and has queued the step's row.
-- Notifies: pgflow_events, at commit. Raises: nothing.
-- Idempotent: no (it appends an event).
create function pgflow._start_step(p_run_id uuid, p_seq bigint, p_step_slug text) returns text
language plpgsql
volatile
set search_path to ''
as $$
declare
  v_tx xid8 := pgflow._events_tx();
  v_kind text;
  v_payload jsonb := '{}';
begin
  select st.kind into v_kind
  from pgflow.step_states as s
  join pgflow.steps as st on st.flow_slug = s.flow_slug and st.step_slug = s.step_slug
  where s.run_id = p_run_id and s.step_slug = p_step_slug;
  if v_kind = 'input' then
    v_payload := pgflow._wait_for_input(p_run_id, p_step_slug);
  elsif v_kind = 'map' then
    v_payload := pgflow._begin_map(p_run_id, p_step_slug);  -- counts the attempt itself
  end if;
  insert into pgflow.run_events (run_id, seq, event, step_slug, attempt, tx, payload)
  select p_run_id, p_seq, case when v_kind = 'input' then 'step:waiting' else 'step:started' end,
    p_step_slug, case when v_kind = 'map' then s.attempt else s.attempt + 1 end, v_tx, v_payload
  from pgflow.step_states as s
  where s.run_id = p_run_id and s.step_slug = p_step_slug;
  if v_tx is null then
    perform pgflow._note_events(p_run_id || ',' || p_seq || ',' || p_seq || ';');
  end if;
  return v_kind;
end;
$$;

-- sql/schema/0110_function__time_out_input.sql
-- _time_out_input: an input step that waited past its timeout fails ('no input within N s'),
-- and its run with it, as any step failing for good.
-- Locks: the caller holds the run's row lock and has checked the step is waiting past its
--   deadline; it updates the run's step rows.
-- Notifies: pgflow_events (step:failed, run:failed), at commit.
-- Raises: nothing.
-- Idempotent: no (it appends events).
create or replace function pgflow._time_out_input(p_run_id uuid, p_step_slug text) returns void
language plpgsql
volatile
set search_path to ''
as $$
declare
  v_timeout int;
  v_attempt int;
begin
  -- the attempt its value would have been
  update pgflow.step_states as s set attempt = s.attempt + 1
  from pgflow.steps as st
  where s.run_id = p_run_id and s.step_slug = p_step_slug
    and st.flow_slug = s.flow_slug and st.step_slug = s.step_slug
  returning st.timeout, s.attempt into v_timeout, v_attempt;
  perform pgflow._fail_for_good(p_run_id, p_step_slug, format('no input within %s s', v_timeout),
                                v_attempt);
end;
$$;

-- sql/schema/0110_function__normalise_flow.sql
-- _normalise_flow: validates a flow definition and returns its normalised shape, in time linear
-- in its steps and dependencies.
-- Locks: none; reads no table. Notifies: nothing.
-- Raises: PF400 for a bad definition (slugs, types, ranges, unknown deps, cycles, output_step).
-- Idempotent: yes.
create or replace function pgflow._normalise_flow(p_definition jsonb) returns jsonb
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
      -- a person's answer may take longer than a handler: an input step waits a day unless
      -- told otherwise, and up to 30 days
      coalesce(e.s -> 'timeout', case when e.s -> 'kind' = '"input"' then '86400'::jsonb
                                      else v_default_timeout end) as timeout,
      case when e.s -> 'kind' = '"input"' then 2592000 else 86400 end as max_timeout,
      coalesce(e.s -> 'kind', '"task"'::jsonb) as kind,
      e.s -> 'schema' as schema,
      e.s -> 'over' as over,
      e.s -> 'url' as url,
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
      when t.kind not in ('"task"', '"input"', '"map"', '"http"') then
        format('step %s: kind must be "task", "input", "map" or "http"', quote_literal(t.slug))
      when t.timeout_n is null or t.timeout_n <> trunc(t.timeout_n)
           or t.timeout_n not between 1 and t.max_timeout then
        format('step %s: timeout must be a whole number of seconds from 1 to %s', quote_literal(t.slug),
               t.max_timeout)
      when t.schema is not null and t.kind <> '"input"' then
        format('step %s: only an input step (kind "input") takes a schema', quote_literal(t.slug))
      when jsonb_typeof(t.schema) not in ('object', 'boolean') then
        format('step %s: schema must be a JSON Schema (an object or a boolean)', quote_literal(t.slug))
      when (t.kind = '"map"') <> (t.over is not null) then
        format('step %s: a map step (kind "map") needs "over", and only a map step takes it',
               quote_literal(t.slug))
      when t.over is not null and (jsonb_typeof(t.over) <> 'string'
           or (t.over <> '"run"' and not (jsonb_typeof(t.deps) = 'array' and t.deps ? (t.over #>> '{}'))))
        then format('step %s: "over" must be "run" or one of its depends_on', quote_literal(t.slug))
      when (t.kind = '"http"') <> (t.url is not null) then
        format('step %s: an HTTP step (kind "http") needs "url", and only an HTTP step takes it',
               quote_literal(t.slug))
      when t.url is not null and (jsonb_typeof(t.url) <> 'string'
           or (t.url #>> '{}') !~ '^(https?://[^\s/?#]+|/)[^\s]*$'
           or length(t.url #>> '{}') > 2000) then
        format('step %s: "url" must be an http(s) URL or a path starting with "/", without '
               'spaces, at most 2000 characters', quote_literal(t.slug))
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
    ) || case when c.kind = '"input"' then jsonb_build_object(
      'kind', 'input', 'schema', coalesce(c.schema, '{}'::jsonb))
      when c.kind = '"map"' then jsonb_build_object('kind', 'map', 'over', c.over)
      when c.kind = '"http"' then jsonb_build_object('kind', 'http', 'url', c.url)
      else '{}'::jsonb end
    end order by c.i),
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

-- sql/schema/0100_function_define_flow.sql
-- define_flow: records a flow's shape, or finds it among the flow's versions. A shape that
-- differs from every version stored under its slug becomes the next version, which new runs
-- start on (runs already going finish on theirs); the same shape again is answered with the
-- version that has it, so a worker running older code serves that older version.
-- Input: {"slug", "steps": [{"slug", "depends_on", "max_attempts", "base_delay", "timeout",
--         "kind" ("task"; "input": a step that waits for submit_input; "map": a task per element
--         of "over"'s array; "http": a task dispatched to "url"), "schema" (an input step's
--         JSON Schema), "over" (a map step's: "run" or one of its depends_on), "url" (an HTTP
--         step's)}],
--         "output_step", and optional flow-wide defaults "max_attempts", "base_delay", "timeout"}.
-- Returns: the normalised shape with its "version", as get_flow returns it.
-- Cost: linear in the steps and dependencies, and in the versions when the shape is new; the
--   document a version was created from (its jsonb text, so key order and spacing do not
--   matter) is recognised by its stored sha-256 and answered with the stored shape, without
--   validating or comparing anything again.
-- Locks: a transaction advisory lock on the slug, so two processes defining at once agree (not
--   taken on the fast path: a stored shape never changes).
-- Notifies: nothing.
-- Raises: PF400 for a bad definition (slugs, types, ranges, unknown deps, cycles, output_step).
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
  v_version record;
  v_newest int := 0;
  v_key text;
begin
  -- FAST PATH: the very document a version was defined from
  if jsonb_typeof(define_flow.definition -> 'slug') = 'string' then
    select f.definition into v_normalised from pgflow.flows as f
    where f.name = define_flow.definition ->> 'slug' and f.definition_hash = v_hash
    order by f.version desc
    limit 1;
    if found then
      return v_normalised;
    end if;
  end if;

  v_normalised := pgflow._normalise_flow(define_flow.definition);
  v_flow_slug := v_normalised ->> 'slug';

  -- FIND OR ADD THE VERSION, serialised per slug: the newest with this shape, else a new one
  perform pg_advisory_xact_lock(hashtextextended('pgflow.define_flow:' || v_flow_slug, 0));
  for v_version in
    select f.flow_slug, f.version, f.definition, f.definition_hash from pgflow.flows as f
    where f.name = v_flow_slug
    order by f.version desc
  loop
    v_newest := greatest(v_newest, v_version.version);
    if pgflow._shape_diff(v_version.definition, v_normalised) = '' then
      if v_version.definition_hash is null then
        update pgflow.flows as f set definition_hash = v_hash where f.flow_slug = v_version.flow_slug;
      end if;
      return v_version.definition;
    end if;
  end loop;

  v_key := case when v_newest = 0 then v_flow_slug else v_flow_slug || '@' || (v_newest + 1) end;
  v_normalised := v_normalised || jsonb_build_object('version', v_newest + 1);
  insert into pgflow.flows (flow_slug, output_step, definition, definition_hash, name, version)
  values (v_key, v_normalised ->> 'output_step', v_normalised, v_hash, v_flow_slug, v_newest + 1);
  with s as (
    select e.i, e.s from jsonb_array_elements(v_normalised -> 'steps') with ordinality as e (s, i)
  ), dependents as (
    select d.slug, array_agg(s.s ->> 'slug' order by s.i) as slugs
    from s cross join lateral jsonb_array_elements_text(s.s -> 'depends_on') as d (slug)
    group by d.slug
  )
  insert into pgflow.steps (flow_slug, step_slug, step_index, depends_on, dependents, max_attempts, base_delay, timeout,
                            kind, input_schema, map_over, http_url)
  select
    v_key,
    s.s ->> 'slug',
    s.i,
    array(select jsonb_array_elements_text(s.s -> 'depends_on')),
    coalesce(d.slugs, '{}'),
    (s.s ->> 'max_attempts')::int,
    (s.s ->> 'base_delay')::double precision,
    (s.s ->> 'timeout')::int,
    coalesce(s.s ->> 'kind', 'task'),
    s.s -> 'schema',
    s.s ->> 'over',
    s.s ->> 'url'
  from s left join dependents as d on d.slug = s.s ->> 'slug';
  return v_normalised;
end;
$$;

-- sql/schema/0100_function_start_runs.sql
-- start_runs: starts many runs in one call, one transaction and one notification: the gateway's
-- group commit (concurrent POST /rpc/run_flow requests coalesced, pgflow/db/coalescer.py), and
-- the body of run_flow and run_flows.
-- Idempotent starts: a position with an idempotency key starts no run when its flow, owner and
-- key already name a run (one started earlier, by another connection at the same instant, or
-- at an earlier position of this call): it answers that run, created false.
-- Returns: one row per input position, in order: the run_id (new ones time-ordered, version 7
--   UUIDs), whether this call created it, and the version of its flow it runs; a null run_id
--   when that position names an unknown flow: the other positions' runs start all the same, so
--   one bad request in a batch fails alone.
-- Locks: none beyond the new rows (and, for a key another transaction is inserting, a wait for
--   that transaction: the unique index's).
-- Runs start on their flow's newest version (define_flow).
-- Notifies: pgflow_events (run:started, step:started or step:waiting per root, per new run),
--   pgflow_tasks (each flow version's key once).
-- Raises: PF400 when the arrays differ in length (owners and idempotency_keys may be null:
--   none for any run); PF422 when a key names a run started with another input.
-- Idempotent: for the positions with a key, yes; the others are new runs each call.
create or replace function pgflow.start_runs(flow_slugs text[], inputs jsonb[], owners text[] default null,
                                  idempotency_keys text[] default null)
returns table (run_id uuid, created boolean, version int)
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
  v_count int := coalesce(cardinality(start_runs.flow_slugs), 0);
  v_run_ids uuid[];
  -- each position's flow version: its key (what its steps carry) and number, the newest
  v_keys text[];
  v_versions int[];
  -- whether a position's flow has a map step among its roots (it maps over the run's input)
  v_map_roots boolean;
  v_map_runs uuid[];
  v_map_slugs text[];
  v_created uuid[];
  v_new boolean[];
  v_clash record;
  v_step_counts int[];
  v_root_counts int[];
  v_tx xid8;
  v_ranges text;
  v_flows text[];
begin
  if v_count is distinct from coalesce(cardinality(start_runs.inputs), 0)
     or (start_runs.owners is not null and cardinality(start_runs.owners) is distinct from v_count)
     or (start_runs.idempotency_keys is not null
         and cardinality(start_runs.idempotency_keys) is distinct from v_count)
  then
    raise exception 'start_runs needs arrays of equal length' using errcode = 'PF400';
  end if;
  if v_count = 0 then
    return;
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
    array_agg(distinct v.flow_key) filter (where f.step_count > 0),
    array_agg(v.flow_key order by q.i),
    array_agg(v.version order by q.i),
    bool_or(f.map_root_count > 0)
    into v_run_ids, v_step_counts, v_root_counts, v_flows, v_keys, v_versions, v_map_roots
  from generate_subscripts(start_runs.flow_slugs, 1) as q (i)
  left join lateral (
    select fl.flow_slug as flow_key, fl.version from pgflow.flows as fl
    where fl.name = start_runs.flow_slugs[q.i]
    order by fl.version desc
    limit 1
  ) as v on true
  cross join lateral (
    select count(*)::int as step_count,
      count(*) filter (where cardinality(s.depends_on) = 0)::int as root_count,
      count(*) filter (where cardinality(s.depends_on) = 0 and s.kind = 'map')::int
        as map_root_count
    from pgflow.steps as s
    where s.flow_slug = v.flow_key
  ) as f;
  if v_flows is null then
    return query select u.run_id, false, null::int from unnest(v_run_ids) as u (run_id);
    return;
  end if;

  -- a position whose key is taken inserts nothing (the unique index decides, also against a
  -- transaction inserting the same key at this instant: it waits for its outcome)
  with inserted as (
    insert into pgflow.runs (run_id, flow_slug, flow_version, input, owner, remaining_steps, last_seq,
                             idempotency_key)
    select n.run_id, n.flow_slug, n.version, coalesce(n.input, 'null'::jsonb), n.owner, n.step_count,
      1 + n.root_count, n.idempotency_key
    from unnest(v_run_ids, start_runs.flow_slugs, v_versions, start_runs.inputs, start_runs.owners,
                v_step_counts, v_root_counts, start_runs.idempotency_keys)
      as n (run_id, flow_slug, version, input, owner, step_count, root_count, idempotency_key)
    where n.run_id is not null
    on conflict (flow_slug, coalesce(owner, ''), idempotency_key) where idempotency_key is not null
      do nothing
    returning pgflow.runs.run_id
  )
  select array_agg(i.run_id) into v_created from inserted as i;
  if coalesce(cardinality(v_created), 0) = cardinality(array_remove(v_run_ids, null)) then
    v_new := array(select u.run_id is not null
                   from unnest(v_run_ids) with ordinality as u (run_id, o) order by u.o);
  else
    -- some keys were taken (rare): which positions, by looking each up among the created
    v_new := array(select coalesce(u.run_id = any(v_created), false)
                   from unnest(v_run_ids) with ordinality as u (run_id, o) order by u.o);
  end if;
  if false = any(v_new) then
    -- KEYS TAKEN: each such position answers the run that holds its key, if it was started
    -- with the same input
    for v_clash in
      select u.o, r.run_id, r.flow_version,
        r.input is not distinct from coalesce(start_runs.inputs[u.o], 'null'::jsonb) as same_input
      from unnest(v_run_ids, v_new) with ordinality as u (run_id, new, o)
      join pgflow.runs as r
        on r.flow_slug = start_runs.flow_slugs[u.o]
        and coalesce(r.owner, '') = coalesce(start_runs.owners[u.o], '')
        and r.idempotency_key = start_runs.idempotency_keys[u.o]
      where u.run_id is not null and not u.new
    loop
      if not v_clash.same_input then
        raise exception 'idempotency key % already started run % of flow % with another input',
          quote_literal(start_runs.idempotency_keys[v_clash.o]), v_clash.run_id,
          quote_literal(start_runs.flow_slugs[v_clash.o])
          using errcode = 'PF422';
      end if;
      v_run_ids[v_clash.o] := v_clash.run_id;
      v_versions[v_clash.o] := v_clash.flow_version;
    end loop;
    if v_created is null then
      return query select u.run_id, false, u.version
        from unnest(v_run_ids, v_versions) as u (run_id, version);
      return;
    end if;
  end if;

  insert into pgflow.step_states (run_id, step_slug, flow_slug, status, remaining_deps, available_at, started_at)
  select n.run_id, s.step_slug, s.flow_slug,
    case when cardinality(s.depends_on) = 0 then 'started' else 'created' end,
    cardinality(s.depends_on),
    case when cardinality(s.depends_on) = 0 then now() end,
    case when cardinality(s.depends_on) = 0 then now() end
  from unnest(v_run_ids, v_keys, v_new) as n (run_id, flow_key, new)
  join pgflow.steps as s on s.flow_slug = n.flow_key
  where n.new;

  -- EVENTS: each run's run:started and each root's step:started (step:waiting for an input
  -- step, which starts waiting here), in one insert (a step:started's payload holds nothing, as
  -- _event stores it), noted as one range per run for the commit-time notification
  v_tx := pgflow._events_tx();
  with roots as (
    select n.run_id, s.step_slug, s.kind,
      row_number() over (partition by n.run_id order by s.step_index) as ord
    from unnest(v_run_ids, v_keys, v_new) as n (run_id, flow_key, new)
    join pgflow.steps as s on s.flow_slug = n.flow_key and cardinality(s.depends_on) = 0
    where n.new
  ), inserted as (
    insert into pgflow.run_events (run_id, seq, event, step_slug, attempt, tx, payload)
    select n.run_id, 1, 'run:started', null, null, v_tx, '{}'::jsonb
    from unnest(v_run_ids, v_new) as n (run_id, new)
    where n.new
    union all
    select r.run_id, 1 + r.ord, case when r.kind = 'input' then 'step:waiting' else 'step:started' end,
      r.step_slug, 1, v_tx,
      case r.kind when 'input' then pgflow._wait_for_input(r.run_id, r.step_slug)
                  when 'map' then pgflow._begin_map(r.run_id, r.step_slug)
                  else '{}'::jsonb end
    from roots as r
    returning pgflow.run_events.run_id, seq
  )
  select string_agg(x.run_id || ',1,' || x.last_seq || ';', '')
    into v_ranges
  from (select i.run_id, max(i.seq) as last_seq from inserted as i group by i.run_id) as x;
  if v_tx is null then
    perform pgflow._note_events(v_ranges);
  end if;
  -- LAST, numbered after the runs' first events: a root map step with nothing to run completes
  -- or fails at once
  if v_map_roots then
    select array_agg(n.run_id), array_agg(s.step_slug) into v_map_runs, v_map_slugs
    from unnest(v_run_ids, v_keys, v_new) as n (run_id, flow_key, new)
    join pgflow.steps as s on s.flow_slug = n.flow_key and cardinality(s.depends_on) = 0
      and s.kind = 'map'
    where n.new;
    perform pgflow._settle_maps(v_map_runs, v_map_slugs);
  end if;
  perform pg_notify('pgflow_tasks', f) from unnest(v_flows) as f;
  return query select u.run_id, coalesce(u.new, false), case when u.run_id is not null then u.version end
    from unnest(v_run_ids, v_new, v_versions) as u (run_id, new, version);
end;
$$;

-- sql/schema/0100_function_report_steps.sql
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

-- sql/schema/0100_function_claim_tasks.sql
-- claim_tasks: leases up to max_tasks (1 to 1000) ready tasks, oldest first, for lease_seconds
-- (0.1 to 86400).
-- Before claiming it sweeps leases that ran out, longest expired first: each counts as a failed
-- attempt ('lease expired') and is claimable again at once, or fails the step on its last attempt;
-- and input steps of any flow waiting past their timeout, which fail (and their runs with them).
-- A claimed retry (a row in status 'retrying': attempt 2 or later) gets its step:started, with
-- its attempt, in the same transaction; first attempts had theirs when they were queued.
-- Returns: one row per task with the handler's assembled input
--   {"run": <run input>, "<dep slug>": <dep output>, ...} (a map step's element task
--   '<slug>[<i>]': the map step's, without the array it maps over, with "item" and "index"), the
--   step's timeout, and the attempt
--   number of its last attempt (max_attempts counted from the run's start or last retry_run).
-- Locks: for update skip locked on ready rows; the run row of each expired lease it sweeps; for a
--   retry, its run's row with skip locked too (the event's seq): a claim never waits for a run,
--   so it cannot deadlock with a run-locked path waiting for the step row; a retry whose run is
--   being written at that instant stays queued for the next claim.
-- Notifies: pgflow_events (step:started of claimed retries; the sweep's step:retrying /
--   step:failed / run:failed, and an input's timeout); pgflow_tasks for a swept lease that is
--   claimable again.
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
set enable_seqscan to off
-- one plan per statement for the session, made once: these statements take longer to plan
-- than a small batch takes to run, and the settings above keep the plan a loop over keys
set plan_cache_mode to force_generic_plan
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

  -- SWEEP: input steps waiting past their deadline (available_at), rechecked under each run's
  -- lock; of every flow, not only the caller's: failing one needs no handler, and a flow made
  -- of input steps alone has no worker of its own
  for v_expired in
    select e.run_id, e.step_slug from (
      select s.run_id, s.step_slug from pgflow.step_states as s
      where s.status = 'waiting' and s.available_at < v_now
      order by s.available_at
      limit 100
    ) as e
    order by e.run_id
  loop
    perform 1 from pgflow.runs as r
    where r.run_id = v_expired.run_id and r.status = 'started'
    for update;
    if found then
      select s.status, s.available_at into v_status, v_expires_at from pgflow.step_states as s
      where s.run_id = v_expired.run_id and s.step_slug = v_expired.step_slug;
      if v_status = 'waiting' and v_expires_at < clock_timestamp() then
        perform pgflow._time_out_input(v_expired.run_id, v_expired.step_slug);
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
    returning s.run_id, s.flow_slug, s.step_slug, s.attempt, s.attempt_base, s.map_parent,
      s.map_index, s.item,
      case when c.retry then pgflow._announce_retry(s.run_id, s.step_slug, s.attempt) end
        as announced
  )
  -- an element task of a map step: its map step's input with the element as "item" and its
  -- "index", without the array mapped over (its dependency's key, or "run"), which would be
  -- repeated in every element's input
  select l.run_id, l.flow_slug, l.step_slug, l.attempt,
    case when st.map_over = 'run' then '{}'::jsonb else jsonb_build_object('run', (
      select r.input from pgflow.runs as r where r.run_id = l.run_id
    )) end || coalesce((
      select jsonb_object_agg(d.step_slug, d.output)
      from pgflow.step_states as d
      where d.run_id = l.run_id and d.step_slug = any(st.depends_on)
        and d.step_slug is distinct from st.map_over
    ), '{}'::jsonb)
    || case when l.map_parent is null then '{}'::jsonb
            else jsonb_build_object('item', l.item, 'index', l.map_index) end,
    st.timeout,
    st.max_attempts + l.attempt_base
  from leased as l
  cross join lateral (
    select t.depends_on, t.timeout, t.max_attempts, t.map_over from pgflow.steps as t
    where t.flow_slug = l.flow_slug and t.step_slug = coalesce(l.map_parent, l.step_slug)
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

-- sql/schema/0100_function_complete_step.sql
-- complete_step: completes a leased step, starts the dependents that became ready and, when it
-- was the run's last step, completes the run with its output.
-- Returns: true if applied; false (and changes nothing) when the caller no longer holds the
--   task: lease lost or run out, another attempt, run already finished.
-- Locks: the run's row, then its step rows.
-- Notifies: pgflow_events (step:completed, step:started or step:waiting..., run:completed),
--   pgflow_tasks.
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
-- rows by their key, whatever the statistics (docs/design/sql-contract.md, plan stability)
set enable_seqscan to off
as $$
declare
  v_output jsonb := coalesce(complete_step.output, 'null'::jsonb);
  v_run pgflow.runs%rowtype;
  v_attempt int;
  v_flow_key text;  -- the key of the run's flow version (0030_table_flows.sql)
  v_maps text[];  -- map steps started here
  v_element pgflow.step_states%rowtype;
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
  -- an element task of a map step completes as report_steps completes them (its map step
  -- counts down, and completes with its last element)
  select * into v_element from pgflow.step_states as s
  where s.run_id = complete_step.run_id and s.step_slug = complete_step.step_slug;
  if v_element.map_parent is not null then
    return (pgflow.report_steps(coalesce(complete_step.worker_id, v_element.leased_by),
      array[complete_step.run_id], array[complete_step.step_slug],
      array[coalesce(complete_step.attempt, v_element.attempt)], array[v_output],
      array[null::text]))[1];
  end if;
  select * into v_run from pgflow.runs as r where r.run_id = complete_step.run_id;
  v_seq := v_run.last_seq + 1;

  -- THE STEP
  update pgflow.step_states as s
  set status = 'completed', output = v_output, error = null, completed_at = now(),
      leased_by = null, lease_expires_at = null
  where s.run_id = complete_step.run_id and s.step_slug = complete_step.step_slug
  returning s.attempt, s.flow_slug into v_attempt, v_flow_key;
  perform pgflow._event(v_run.run_id, v_seq, 'step:completed', complete_step.step_slug,
                        'completed', v_output, null, v_attempt);

  -- DEPENDENTS whose last dependency this was
  select st.dependents into v_dependents from pgflow.steps as st
  where st.flow_slug = v_flow_key and st.step_slug = complete_step.step_slug;
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
        if pgflow._start_step(v_run.run_id, v_seq, v_slug) = 'map' then
          v_maps := v_maps || v_slug;
        end if;
      end loop;
      perform pg_notify('pgflow_tasks', v_flow_key);
    end if;
  end if;

  -- THE RUN, when this was its last step
  if v_run.remaining_steps > 1 then
    update pgflow.runs as r set remaining_steps = r.remaining_steps - 1, last_seq = v_seq
    where r.run_id = v_run.run_id;
    if v_maps is not null then  -- last: a map step with nothing to run ends at once
      perform pgflow._settle_maps(array_fill(v_run.run_id, array[cardinality(v_maps)]), v_maps);
    end if;
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

-- sql/schema/0100_function_retry_run.sql
-- retry_run: starts a failed or cancelled run again where it ended: its completed steps keep
-- their outputs; its failed and cancelled steps are queued again (those whose dependencies are
-- complete at once, step:started, or step:waiting for an input step; the others wait for them),
-- each with a fresh budget of max_attempts, numbered on from its last attempt so that a report
-- from an attempt before the retry is stale.
-- Returns: true if the run was retried; false when it is not failed or cancelled.
-- Locks: the run's row, then its step rows.
-- Notifies: pgflow_events (run:retried, then step:started / step:waiting, at commit),
--   pgflow_tasks (the key of the run's flow version).
-- Raises: PF404 for an unknown run.
-- Idempotent: no; a repeat while the run is going returns false, and after it failed again
--   retries it again.
create or replace function pgflow.retry_run(run_id uuid) returns boolean
language plpgsql
volatile
set search_path to ''
-- rows by their key, whatever the statistics (docs/design/sql-contract.md, plan stability)
set enable_seqscan to off
as $$
declare
  v_run pgflow.runs%rowtype;
  v_seq bigint;
  v_step record;
  v_maps text[];  -- map steps started again here
begin
  select * into v_run from pgflow.runs as r where r.run_id = retry_run.run_id for update;
  if not found then
    raise exception 'unknown run %', retry_run.run_id using errcode = 'PF404';
  end if;
  if v_run.status not in ('failed', 'cancelled') then
    return false;
  end if;

  v_seq := v_run.last_seq + 1;
  perform pgflow._event(v_run.run_id, v_seq, 'run:retried', null, 'started', null, null, null);
  -- every step not completed goes back to the queue, the ready ones in flow order
  for v_step in
    select s.step_slug, s.remaining_deps = 0 as ready, st.kind
    from pgflow.step_states as s
    join pgflow.steps as st on st.flow_slug = s.flow_slug and st.step_slug = s.step_slug
    where s.run_id = v_run.run_id and s.status in ('failed', 'cancelled')
    order by st.step_index
  loop
    if v_step.ready and v_step.kind = 'map' then
      -- its elements not completed run again (_begin_map), under its engine lease
      update pgflow.step_states as s set error = null, failed_at = null
      where s.run_id = v_run.run_id and s.step_slug = v_step.step_slug;
      v_seq := v_seq + 1;
      perform pgflow._start_step(v_run.run_id, v_seq, v_step.step_slug);
      v_maps := v_maps || v_step.step_slug;
      continue;
    end if;
    update pgflow.step_states as s
    set status = case when v_step.ready then 'started' else 'created' end,
        attempt_base = s.attempt, error = null, failed_at = null, output = null,
        available_at = case when v_step.ready then now() end,
        started_at = case when v_step.ready then now() end,
        leased_by = null, lease_expires_at = null
    where s.run_id = v_run.run_id and s.step_slug = v_step.step_slug;
    if v_step.ready then
      v_seq := v_seq + 1;
      perform pgflow._start_step(v_run.run_id, v_seq, v_step.step_slug);
    end if;
  end loop;

  update pgflow.runs as r
  set status = 'started', error = null, failed_step = null, failed_at = null,
      cancelled_at = null, cancel_reason = null, last_seq = v_seq
  where r.run_id = v_run.run_id;
  if v_maps is not null then  -- last: a map step with nothing left to run ends at once
    perform pgflow._settle_maps(array_fill(v_run.run_id, array[cardinality(v_maps)]), v_maps);
  end if;
  perform pg_notify('pgflow_tasks', (select s.flow_slug from pgflow.step_states as s
                                     where s.run_id = v_run.run_id limit 1));
  return true;
end;
$$;

-- sql/schema/0100_function_get_run.sql
-- get_run: the run now, with every step in flow order (a map step with its count of element
-- tasks and of those completed; the element tasks themselves are not listed); null for an
-- unknown run.
-- Locks: none. Notifies: nothing. Raises: nothing. Idempotent: yes (reads only).
create or replace function pgflow.get_run(run_id uuid) returns jsonb
language sql
stable
set search_path to ''
as $$
  select jsonb_build_object(
    'run_id', r.run_id,
    'flow_slug', r.flow_slug,
    'version', r.flow_version,
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
    'cancelled_at', r.cancelled_at,
    'cancel_reason', r.cancel_reason,
    'idempotency_key', r.idempotency_key,
    'steps', (
      select coalesce(jsonb_agg(jsonb_build_object(
        'step_slug', s.step_slug,
        'kind', st.kind,
        'status', s.status,
        'attempt', s.attempt,
        'output', s.output,
        'error', s.error,
        'created_at', s.created_at,
        'started_at', s.started_at,
        'completed_at', s.completed_at,
        'failed_at', s.failed_at
      ) || case when st.kind = 'map' then jsonb_build_object(
        'tasks', s.map_tasks, 'tasks_completed', s.map_tasks - s.map_left) else '{}'::jsonb end
      order by st.step_index), '[]'::jsonb)
      from pgflow.step_states as s
      join pgflow.steps as st on st.flow_slug = s.flow_slug and st.step_slug = s.step_slug
      where s.run_id = r.run_id
    )
  )
  from pgflow.runs as r
  where r.run_id = get_run.run_id;
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
create or replace function pgflow.get_runs_events(run_ids uuid[], since bigint[], until bigint[])
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
  -- the one rebuild of the compact rows (0042_table_run_events.sql) into events as clients
  -- receive them (events.md): get_run_events and _notify_events read through here
  -- an element task's event ('<map step>[<index>]') reads as a task:* event of its map step
  select r.o, e.run_id, e.seq, (case when right(e.step_slug, 1) = ']' then jsonb_build_object(
      'run_id', e.run_id, 'seq', e.seq, 'event', 'task:' || split_part(e.event, ':', 2),
      'step_slug', left(e.step_slug, strpos(e.step_slug, '[') - 1),
      'index', substr(e.step_slug, strpos(e.step_slug, '[') + 1,
                      length(e.step_slug) - strpos(e.step_slug, '[') - 1)::int,
      'attempt', e.attempt,
      'at', to_char(e.at at time zone 'utc', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
      || case when e.event = 'step:stream' then '{}'::jsonb
              else jsonb_build_object('status', split_part(e.event, ':', 2), 'error', null) end
    when e.event = 'step:stream' then jsonb_build_object(
      'run_id', e.run_id, 'seq', e.seq, 'event', e.event, 'step_slug', e.step_slug,
      'attempt', e.attempt,
      'at', to_char(e.at at time zone 'utc', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
    else jsonb_build_object(
      'run_id', e.run_id, 'seq', e.seq, 'event', e.event, 'step_slug', e.step_slug,
      'status', split_part(e.event, ':', 2), 'output', null, 'error', null, 'attempt', e.attempt,
      'at', to_char(e.at at time zone 'utc', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
    end) || e.payload
  from unnest(get_runs_events.run_ids, get_runs_events.since, get_runs_events.until)
    with ordinality as r (run_id, since, until, o)
  join pgflow.run_events as e
    on e.run_id = r.run_id and e.seq > coalesce(r.since, 0)
    and (r.until is null or e.seq <= r.until)
  order by r.o, e.seq;
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
      pgflow.fail_step, pgflow.stream_steps,
      pgflow.extend_leases, pgflow.release_tasks, pgflow.define_flow, pgflow.get_flow
      to pgflow_worker;
    -- Store.retry_delays: when a reported failure's retry may be claimed
    grant select (run_id, step_slug, attempt, status, available_at, lease_expires_at)
      on pgflow.step_states to pgflow_worker;
  end if;

  -- GATEWAY: starts, steers (cancels, answers, retries), reads and lists runs, replays their
  -- events; defines the flows it loads
  if not 'pgflow_gateway' = any (v_missing) then
    grant execute on function
      pgflow.run_flow, pgflow.run_flows, pgflow.start_runs, pgflow.get_run, pgflow.get_run_events,
      pgflow.get_runs_events, pgflow.list_runs, pgflow.cancel_run, pgflow.submit_input,
      pgflow.retry_run, pgflow.define_flow, pgflow.get_flow
      to pgflow_gateway;
    -- Store.get_run_replay and get_run_owner: a subscription's access check and its replay
    grant select (run_id, flow_slug, flow_version, owner, last_seq) on pgflow.runs to pgflow_gateway;
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
alter function pgflow._fail_for_good set search_path to pg_catalog, pg_temp;
alter function pgflow._fail_attempt set search_path to pg_catalog, pg_temp;
alter function pgflow.fail_step set search_path to pg_catalog, pg_temp;
alter function pgflow._begin_map set search_path to pg_catalog, pg_temp;
alter function pgflow._settle_maps set search_path to pg_catalog, pg_temp;
alter function pgflow._start_step set search_path to pg_catalog, pg_temp;
alter function pgflow._time_out_input set search_path to pg_catalog, pg_temp;
alter function pgflow._normalise_flow set search_path to pg_catalog, pg_temp;
alter function pgflow.define_flow set search_path to pg_catalog, pg_temp;
alter function pgflow.start_runs set search_path to pg_catalog, pg_temp;
alter function pgflow.report_steps set search_path to pg_catalog, pg_temp;
alter function pgflow.claim_tasks set search_path to pg_catalog, pg_temp;
alter function pgflow.complete_step set search_path to pg_catalog, pg_temp;
alter function pgflow.retry_run set search_path to pg_catalog, pg_temp;
alter function pgflow.get_run set search_path to pg_catalog, pg_temp;
alter function pgflow.get_runs_events set search_path to pg_catalog, pg_temp;
alter function pgflow._grant_roles set search_path to pg_catalog, pg_temp;
revoke all on function pgflow._fail_for_good from public;
revoke all on function pgflow._fail_attempt from public;
revoke all on function pgflow.fail_step from public;
revoke all on function pgflow._begin_map from public;
revoke all on function pgflow._settle_maps from public;
revoke all on function pgflow._start_step from public;
revoke all on function pgflow._time_out_input from public;
revoke all on function pgflow._normalise_flow from public;
revoke all on function pgflow.define_flow from public;
revoke all on function pgflow.start_runs from public;
revoke all on function pgflow.report_steps from public;
revoke all on function pgflow.claim_tasks from public;
revoke all on function pgflow.complete_step from public;
revoke all on function pgflow.retry_run from public;
revoke all on function pgflow.get_run from public;
revoke all on function pgflow.get_runs_events from public;
revoke all on function pgflow._grant_roles from public;
alter function pgflow.fail_step security definer;
alter function pgflow.define_flow security definer;
alter function pgflow.start_runs security definer;
alter function pgflow.report_steps security definer;
alter function pgflow.claim_tasks security definer;
alter function pgflow.complete_step security definer;
alter function pgflow.retry_run security definer;
alter function pgflow.get_run security definer;
alter function pgflow.get_runs_events security definer;

-- ROLES: pgflow_worker, pgflow_gateway and pgflow_pruner, those that exist
select pgflow._grant_roles();
