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
create function pgflow.start_runs(flow_slugs text[], inputs jsonb[], owners text[] default null,
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
