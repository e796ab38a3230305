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
