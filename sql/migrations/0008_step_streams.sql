-- 0008_step_streams: steps stream partial output into their run's log (docs/reference/events.md,
-- step:stream). stream_steps appends many running steps' chunks in one call; every reader
-- rebuilds a step:stream event as {seq, run_id, event, step_slug, attempt, chunks, at}.

-- a weaker check replaced by a wider one: validated without blocking writers
alter table pgflow.run_events drop constraint event_is_known;
alter table pgflow.run_events add constraint event_is_known check (
    event in ('run:started', 'run:completed', 'run:failed',
              'step:started', 'step:completed', 'step:failed', 'step:retrying', 'step:stream')
  ) not valid;
alter table pgflow.run_events validate constraint event_is_known;

-- sql/schema/0100_function_stream_steps.sql
-- stream_steps: appends many running steps' chunks to their runs' logs, a worker's flush of
-- every step that streamed since its last one: one call, one transaction, one notification,
-- however many chunks. Position i carries chunks[i] (a JSON array of one or more chunks, in
-- order) of attempt attempts[i] of (run_ids[i], step_slugs[i]), and becomes one step:stream
-- event {"chunks": [...]} in position order; positions of one step keep their order.
-- Only from the live lease holder of a step of a run still going, for the attempt it holds:
-- so every chunk of an attempt precedes its step:completed / step:failed / step:retrying.
-- Returns: for each position, whether it was written (false: stale, as for report_steps).
-- Locks: every run of the call, in run_id order (the engine's lock order), before anything else.
-- Notifies: pgflow_events (through the transaction's one notification).
-- Raises: PF400 when the arrays differ in length or a position's chunks is not a non-empty array.
-- Idempotent: no; each call appends.
create function pgflow.stream_steps(
  worker_id text,
  run_ids uuid[],
  step_slugs text[],
  attempts int[],
  chunks jsonb[]
) returns boolean[]
language plpgsql
volatile
set search_path to ''
-- every join here goes from a batch to rows by their key: a loop, whatever the row estimates
-- (docs/design/sql-contract.md, plan stability)
set enable_hashjoin to off
set enable_mergejoin to off
set enable_seqscan to off
set plan_cache_mode to force_generic_plan
as $$
declare
  v_count int := coalesce(cardinality(stream_steps.run_ids), 0);
  v_applied boolean[] := array_fill(false, array[coalesce(cardinality(stream_steps.run_ids), 0)]);
  v_written int[];
  v_i int;
  v_runs uuid[];
  v_last bigint[];
  v_ranges text;
  v_tx xid8;
  v_at timestamptz := clock_timestamp();
begin
  if v_count is distinct from coalesce(cardinality(stream_steps.step_slugs), 0)
     or v_count is distinct from coalesce(cardinality(stream_steps.attempts), 0)
     or v_count is distinct from coalesce(cardinality(stream_steps.chunks), 0) then
    raise exception 'stream_steps needs arrays of equal length' using errcode = 'PF400';
  end if;
  if v_count = 0 then
    return v_applied;
  end if;
  if exists (select from unnest(stream_steps.chunks) as c (value)
             where jsonb_typeof(c.value) is distinct from 'array' or jsonb_array_length(c.value) = 0)
  then
    raise exception 'stream_steps needs each position''s chunks as a non-empty JSON array'
      using errcode = 'PF400';
  end if;

  -- LOCK ACQUISITION: all the call's runs, in run_id order
  perform 1 from pgflow.runs as r
  where r.run_id = any(stream_steps.run_ids)
  order by r.run_id
  for update;

  -- LIVE positions: the step leased by this worker for this attempt, in a run still going
  select array_agg(p.i order by p.i)
    into v_written
  from generate_subscripts(stream_steps.run_ids, 1) as p (i)
  cross join lateral (
    select s.status, s.leased_by, s.lease_expires_at, s.attempt from pgflow.step_states as s
    where s.run_id = stream_steps.run_ids[p.i] and s.step_slug = stream_steps.step_slugs[p.i]
    limit 1
  ) as s
  cross join lateral (
    select r.status from pgflow.runs as r where r.run_id = stream_steps.run_ids[p.i] limit 1
  ) as r
  where r.status = 'started'
    and s.status = 'started'
    and s.leased_by = stream_steps.worker_id
    and s.lease_expires_at >= clock_timestamp()
    and s.attempt = stream_steps.attempts[p.i];
  if v_written is null then
    return v_applied;
  end if;

  -- EVENTS: one per live position, numbered after its run's last seq in position order
  v_tx := pgflow._events_tx();
  with numbered as (
    select w.i, stream_steps.run_ids[w.i] as run_id,
      r.last_seq + row_number() over (partition by stream_steps.run_ids[w.i] order by w.i) as seq
    from unnest(v_written) as w (i)
    cross join lateral (
      select r.last_seq from pgflow.runs as r where r.run_id = stream_steps.run_ids[w.i] limit 1
    ) as r
  ), inserted as (
    insert into pgflow.run_events (run_id, seq, at, attempt, event, step_slug, tx, payload)
    select n.run_id, n.seq, v_at, stream_steps.attempts[n.i], 'step:stream',
      stream_steps.step_slugs[n.i], v_tx, jsonb_build_object('chunks', stream_steps.chunks[n.i])
    from numbered as n
    returning run_id, seq
  ), per_run as (
    select i.run_id, min(i.seq) as first_seq, max(i.seq) as last_seq
    from inserted as i group by i.run_id
  )
  select array_agg(p.run_id order by p.run_id), array_agg(p.last_seq order by p.run_id),
    string_agg(p.run_id || ',' || p.first_seq || ',' || p.last_seq || ';', '' order by p.run_id)
    into v_runs, v_last, v_ranges
  from per_run as p;

  update pgflow.runs as r
  set last_seq = u.last_seq
  from unnest(v_runs, v_last) as u (run_id, last_seq)
  where r.run_id = u.run_id;

  foreach v_i in array v_written loop
    v_applied[v_i] := true;
  end loop;

  if v_tx is null then
    perform pgflow._note_events(v_ranges);
  end if;
  return v_applied;
end;
$$;

-- sql/schema/0100_function_get_run_events.sql
-- get_run_events: the run's events with since < seq (<= until, when given), in seq order, each
-- rebuilt from its compact row (0042_table_run_events.sql) as clients receive it (events.md).
-- Locks: none. Notifies: nothing. Raises: nothing. Idempotent: yes (reads only).
create or replace function pgflow.get_run_events(run_id uuid, since bigint default 0, until bigint default null)
returns setof jsonb
language plpgsql
stable
set search_path to ''
as $$
begin
  -- one run of get_runs_events, which holds the one rebuild of the compact rows (PL/pgSQL: its
  -- body is resolved when called, so this file may load before get_runs_events')
  return query
  select e.event
  from pgflow.get_runs_events(array[get_run_events.run_id], array[get_run_events.since],
                              array[get_run_events.until]) as e
  order by e.seq;
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
  select r.o, e.run_id, e.seq, (case when e.event = 'step:stream' then jsonb_build_object(
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
set enable_seqscan to off
-- one plan per statement for the session, made once: these statements take longer to plan
-- than a small batch takes to run, and the settings above keep the plan a loop over keys
set plan_cache_mode to force_generic_plan
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
    -- each event as every reader gets it (get_runs_events, the one rebuild of the compact rows),
    -- printed once for both the text and its length
    select string_agg(p.payload, ',' order by p.pos, p.seq), sum(octet_length(p.payload))
      into v_events, v_bytes
    from (
      select e.pos, e.seq, e.event::text as payload
      from pgflow.get_runs_events(v_runs, array(select f - 1 from unnest(v_from) as f), v_to) as e
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
alter function pgflow.stream_steps set search_path to pg_catalog, pg_temp;
alter function pgflow.get_run_events set search_path to pg_catalog, pg_temp;
alter function pgflow.get_runs_events set search_path to pg_catalog, pg_temp;
alter function pgflow._notify_events set search_path to pg_catalog, pg_temp;
alter function pgflow._grant_roles set search_path to pg_catalog, pg_temp;
revoke all on function pgflow.stream_steps from public;
revoke all on function pgflow.get_run_events from public;
revoke all on function pgflow.get_runs_events from public;
revoke all on function pgflow._notify_events from public;
revoke all on function pgflow._grant_roles from public;
alter function pgflow.stream_steps security definer;
alter function pgflow.get_run_events security definer;
alter function pgflow.get_runs_events security definer;
alter function pgflow._notify_events security definer;

-- ROLES: pgflow_worker, pgflow_gateway and pgflow_pruner, those that exist
select pgflow._grant_roles();
