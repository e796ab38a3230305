-- get_run_events: the run's events with since < seq (<= until, when given), in seq order, each
-- rebuilt from its compact row (0042_table_run_events.sql) as clients receive it (events.md).
-- Locks: none. Notifies: nothing. Raises: nothing. Idempotent: yes (reads only).
create function pgflow.get_run_events(run_id uuid, since bigint default 0, until bigint default null)
returns setof jsonb
language sql
stable
set search_path to ''
as $$
  -- the same rebuild as _notify_events'
  select (case when e.event = 'step:stream' then jsonb_build_object(
      'run_id', e.run_id, 'seq', e.seq, 'event', e.event, 'step_slug', e.step_slug,
      'attempt', e.attempt,
      'at', to_char(e.at at time zone 'utc', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
    else jsonb_build_object(
      'run_id', e.run_id, 'seq', e.seq, 'event', e.event, 'step_slug', e.step_slug,
      'status', split_part(e.event, ':', 2), 'output', null, 'error', null, 'attempt', e.attempt,
      'at', to_char(e.at at time zone 'utc', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
    end) || e.payload
  from pgflow.run_events as e
  where e.run_id = get_run_events.run_id
    and e.seq > coalesce(get_run_events.since, 0)
    and (get_run_events.until is null or e.seq <= get_run_events.until)
  order by e.seq;
$$;
