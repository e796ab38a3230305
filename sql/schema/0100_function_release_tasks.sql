-- release_tasks: gives back leased tasks unrun (a worker shutting down), claimable at once;
-- the attempt they were claimed for is not counted. Without ids, every task the worker holds.
-- Returns: how many it released.
-- Locks: the step rows it releases (row locks of the update).
-- Notifies: pgflow_tasks, once per flow of the released tasks, so another worker takes them.
-- Raises: nothing.
-- Idempotent: yes; a repeat finds nothing leased and returns 0.
create function pgflow.release_tasks(
  worker_id text,
  run_ids uuid[] default null,
  step_slugs text[] default null
) returns int
language plpgsql
volatile
set search_path to ''
as $$
declare
  v_flows text[];
  v_count int;
begin
  with released as (
    update pgflow.step_states as s
    set leased_by = null, lease_expires_at = null, attempt = s.attempt - 1
    where s.leased_by = release_tasks.worker_id
      and s.status = 'started'
      and (release_tasks.run_ids is null or (s.run_id, s.step_slug) in (
        select t.run_id, t.step_slug from unnest(release_tasks.run_ids, release_tasks.step_slugs) as t (run_id, step_slug)
      ))
    returning s.flow_slug
  )
  select array_agg(distinct r.flow_slug), count(*) into v_flows, v_count from released as r;
  if v_count > 0 then
    perform pg_notify('pgflow_tasks', f) from unnest(v_flows) as f;
  end if;
  return v_count;
end;
$$;
