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
alter function pgflow.report_steps set enable_seqscan to off;
alter function pgflow.extend_leases set enable_seqscan to off;
alter function pgflow.release_tasks set enable_seqscan to off;
alter function pgflow.complete_step set enable_seqscan to off;
alter function pgflow.fail_step set enable_seqscan to off;
alter function pgflow._notify_events set enable_seqscan to off;
alter function pgflow._delete_run_events set enable_seqscan to off;
alter function pgflow.claim_tasks set plan_cache_mode to force_generic_plan;
alter function pgflow.report_steps set plan_cache_mode to force_generic_plan;
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
      pgflow.claim_tasks, pgflow.report_steps, pgflow.complete_step, pgflow.fail_step,
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
alter function pgflow.run_flow set search_path to pg_catalog, pg_temp;
alter function pgflow._grant_roles set search_path to pg_catalog, pg_temp;
revoke all on function pgflow.run_flows from public;
revoke all on function pgflow.get_runs_events from public;
revoke all on function pgflow.run_flow from public;
revoke all on function pgflow._grant_roles from public;
alter function pgflow.run_flows security definer;
alter function pgflow.run_flow security definer;
alter function pgflow.get_runs_events security definer;

-- ROLES: pgflow_worker, pgflow_gateway and pgflow_pruner, those that exist
select pgflow._grant_roles();
