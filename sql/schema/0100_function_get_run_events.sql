-- get_run_events: the run's events with since < seq (<= until, when given), in seq order, each
-- rebuilt from its compact row (0042_table_run_events.sql) as clients receive it (events.md).
-- Locks: none. Notifies: nothing. Raises: nothing. Idempotent: yes (reads only).
create function pgflow.get_run_events(run_id uuid, since bigint default 0, until bigint default null)
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
