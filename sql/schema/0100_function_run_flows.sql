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
