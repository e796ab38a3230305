-- 0003_compact_events: run_events stores each field of an event once (0042_table_run_events.sql).
-- The payload no longer repeats run_id, seq, event, step_slug (columns already), attempt (now a
-- column), at (the column's time, to the microsecond the old payload printed), status (the
-- event's own) or a null error; get_run_events and _notify_events rebuild the same event.
-- Existing rows are converted by rewriting the table once into the new layout (fixed-width
-- columns first): an UPDATE of every row would leave the whole old table behind as dead tuples,
-- and could not reorder the columns. The keys, the foreign key and the index are built after the
-- copy, each in one pass, and the table's trigger is recreated as it was.

-- THE COPY: each old payload (the full event) reduced to what is not a column and not implied;
-- a key the engine never wrote is kept, so it still reads back. It goes through a scratch table
-- because the new table must be created under its own name after the old one is gone
-- (PostgreSQL 18 names NOT NULL constraints after the table, once per schema); unlogged, so it
-- costs no WAL, and in the schema, so the migrating role needs no TEMP privilege.
create unlogged table pgflow.run_events_compact as
select o.run_id, o.seq, coalesce((o.payload ->> 'at')::timestamptz, o.at) as at, o.tx,
  (o.payload ->> 'attempt')::int as attempt, o.event, o.step_slug,
  (o.payload - '{run_id,seq,event,step_slug,status,output,error,attempt,at}'::text[])
  || case when o.payload -> 'output' is null
            or (o.payload -> 'output' = 'null'::jsonb
                and o.event not in ('step:completed', 'run:completed')) then '{}'::jsonb
       else jsonb_build_object('output', o.payload -> 'output') end
  || case when coalesce(o.payload -> 'error', 'null'::jsonb) = 'null'::jsonb then '{}'::jsonb
       else jsonb_build_object('error', o.payload -> 'error') end
  || case when o.payload ->> 'status' is not distinct from split_part(o.event, ':', 2)
            and o.payload ? 'status' then '{}'::jsonb
       else jsonb_build_object('status', o.payload -> 'status') end as payload
from pgflow.run_events as o;

-- its trigger and foreign key go with it
drop table pgflow.run_events;

-- THE NEW TABLE, as in 0042_table_run_events.sql; keys and index built after the copy, in one
-- pass each
create table pgflow.run_events (
  run_id uuid not null,
  seq bigint not null,
  at timestamptz not null default clock_timestamp(),
  -- the top-level transaction that wrote it (also from inside a subtransaction): how the
  -- commit-time notification finds the transaction's events
  tx xid8 not null default pg_current_xact_id(),
  attempt int,
  event text not null,
  step_slug text,
  payload jsonb not null default '{}',
  constraint seq_is_positive check (seq >= 1),
  constraint event_is_known check (
    event in ('run:started', 'run:completed', 'run:failed',
              'step:started', 'step:completed', 'step:failed', 'step:retrying')
  )
);

insert into pgflow.run_events (run_id, seq, at, tx, attempt, event, step_slug, payload)
select c.run_id, c.seq, c.at, c.tx, c.attempt, c.event, c.step_slug, c.payload
from pgflow.run_events_compact as c
order by c.run_id, c.seq;

drop table pgflow.run_events_compact;

alter table pgflow.run_events add constraint run_events_pkey primary key (run_id, seq);
alter table pgflow.run_events add constraint run_events_run_id_fkey
  foreign key (run_id) references pgflow.runs (run_id) on delete cascade;
-- _notify_events reads the committing transaction's events back through this index (a
-- transaction's many events share one deduplicated entry's posting list).
create index run_events_tx_idx on pgflow.run_events (tx);

-- THE TRIGGER, as in 0200_trigger_run_events_notify_at_commit.sql
create constraint trigger run_events_notify_at_commit
  after insert on pgflow.run_events
  deferrable initially deferred
  for each row
  when (
    case when current_setting('pgflow.notify_queued', true) = 'on' then false
      else set_config('pgflow.notify_queued', 'on', true) = 'on' end
  )
  execute function pgflow._notify_events();

-- THE WRITER AND THE READERS
-- _event: appends one event to a run's log and raises the transaction's pgflow.events_pending
-- flag; the event is notified at commit. Stores it compact (0042_table_run_events.sql): the
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
begin
  insert into pgflow.run_events (run_id, seq, event, step_slug, attempt, payload)
  values (p_run_id, p_seq, p_event, p_step_slug, p_attempt,
    case when p_output is null then '{}'::jsonb else jsonb_build_object('output', p_output) end
    || case when p_error is null then '{}'::jsonb else jsonb_build_object('error', p_error) end
    || case when p_status is not distinct from split_part(p_event, ':', 2) then '{}'::jsonb
         else jsonb_build_object('status', p_status) end);
  perform set_config('pgflow.events_pending', 'on', true);
end;
$$;

-- get_run_events: the run's events with since < seq (<= until, when given), in seq order, each
-- rebuilt from its compact row (0042_table_run_events.sql) as clients receive it (events.md).
-- Locks: none. Notifies: nothing. Raises: nothing. Idempotent: yes (reads only).
create or replace function pgflow.get_run_events(run_id uuid, since bigint default 0, until bigint default null)
returns setof jsonb
language sql
stable
set search_path to ''
as $$
  -- the same rebuild as _notify_events'
  select jsonb_build_object(
      'run_id', e.run_id, 'seq', e.seq, 'event', e.event, 'step_slug', e.step_slug,
      'status', split_part(e.event, ':', 2), 'output', null, 'error', null, 'attempt', e.attempt,
      'at', to_char(e.at at time zone 'utc', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
    ) || e.payload
  from pgflow.run_events as e
  where e.run_id = get_run_events.run_id
    and e.seq > coalesce(get_run_events.since, 0)
    and (get_run_events.until is null or e.seq <= get_run_events.until)
  order by e.seq;
$$;

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
create or replace function pgflow._notify_events() returns trigger
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

-- report_steps writes compact rows too (its plan-stable form is from 0002).
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
    insert into pgflow.run_events (run_id, seq, at, attempt, event, step_slug, payload)
    select n.run_id, n.seq, v_at, n.attempt, n.event, n.step_slug,
      case when n.output is null then '{}'::jsonb else jsonb_build_object('output', n.output) end
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
