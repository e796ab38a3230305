-- get_run_events: the run's events with since < seq (<= until, when given), in seq order.
-- Locks: none. Notifies: nothing. Raises: nothing. Idempotent: yes (reads only).
create function pgflow.get_run_events(run_id uuid, since bigint default 0, until bigint default null)
returns setof jsonb
language sql
stable
set search_path to ''
as $$
  select e.payload from pgflow.run_events as e
  where e.run_id = get_run_events.run_id
    and e.seq > coalesce(get_run_events.since, 0)
    and (get_run_events.until is null or e.seq <= get_run_events.until)
  order by e.seq;
$$;
