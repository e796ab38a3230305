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
  v_flows text[];
  v_count int;
begin
  -- PLAN: without ids, the worker's tasks are found among the leased rows (the leased-step
  -- index: as many rows as tasks are running, whatever the table holds). With ids, each step is
  -- read and locked through its primary key (a lateral subquery the limit keeps whole), the
  -- checks applied to the row found, and updated by key.
  if release_tasks.run_ids is null then
    with released as (
      update pgflow.step_states as s
      set leased_by = null, lease_expires_at = null, attempt = s.attempt - 1
      where s.lease_expires_at is not null
        and s.leased_by = release_tasks.worker_id
        and s.status = 'started'
      returning s.flow_slug
    )
    select array_agg(distinct r.flow_slug), count(*) into v_flows, v_count from released as r;
  else
    with asked as materialized (
      select t.run_id, t.step_slug
      from unnest(release_tasks.run_ids, release_tasks.step_slugs) as t (run_id, step_slug)
      order by 1, 2
    ), held as (
      select a.run_id, a.step_slug
      from asked as a
      cross join lateral (
        select s.leased_by, s.status from pgflow.step_states as s
        where s.run_id = a.run_id and s.step_slug = a.step_slug
        limit 1
        for update
      ) as s
      where s.leased_by = release_tasks.worker_id
        and s.status = 'started'
    ), released as (
      update pgflow.step_states as s
      set leased_by = null, lease_expires_at = null, attempt = s.attempt - 1
      from held as h
      where s.run_id = h.run_id and s.step_slug = h.step_slug
      returning s.flow_slug
    )
    select array_agg(distinct r.flow_slug), count(*) into v_flows, v_count from released as r;
  end if;
  if v_count > 0 then
    perform pg_notify('pgflow_tasks', f) from unnest(v_flows) as f;
  end if;
  return v_count;
end;
$$;
