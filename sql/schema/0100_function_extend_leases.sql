-- extend_leases: keeps the leases of tasks a worker is still running for lease_seconds (0.1 to
-- 86400); returns how many it kept. A lease that already ran out is not revived: the task may be
-- someone else's by now.
-- Locks: the step rows whose lease it extends (row locks of the update).
-- Notifies: nothing.
-- Raises: PF400 for an argument out of its range, or run_ids and step_slugs of unequal length.
-- Idempotent: yes; a repeat moves the same leases' expiry again.
create function pgflow.extend_leases(
  worker_id text,
  run_ids uuid[],
  step_slugs text[],
  lease_seconds double precision default 30
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
  v_kept int;
begin
  if (extend_leases.lease_seconds between 0.1 and 86400) is not true then
    perform pgflow._bad_argument('extend_leases', 'lease_seconds', 'a number of seconds from 0.1 to 86400',
                                 extend_leases.lease_seconds::text);
  end if;
  if coalesce(cardinality(extend_leases.run_ids), 0) <> coalesce(cardinality(extend_leases.step_slugs), 0) then
    perform pgflow._bad_argument('extend_leases', 'step_slugs', 'as long as run_ids',
      format('%s against %s', coalesce(cardinality(extend_leases.step_slugs), 0),
             coalesce(cardinality(extend_leases.run_ids), 0)));
  end if;
  -- PLAN: each step is read and locked through its primary key (a lateral subquery the limit
  -- keeps whole), in key order; the lease checks apply to the row found, so they cannot steer
  -- the planner to the leased-step index; the update then finds the kept rows by key.
  with asked as materialized (
    select t.run_id, t.step_slug
    from unnest(extend_leases.run_ids, extend_leases.step_slugs) as t (run_id, step_slug)
    order by 1, 2
  ), kept as (
    select a.run_id, a.step_slug
    from asked as a
    cross join lateral (
      select s.leased_by, s.lease_expires_at from pgflow.step_states as s
      where s.run_id = a.run_id and s.step_slug = a.step_slug
      limit 1
      for update
    ) as s
    where s.leased_by = extend_leases.worker_id
      and s.lease_expires_at >= clock_timestamp()
  ), extended as (
    update pgflow.step_states as s
    set lease_expires_at = clock_timestamp() + extend_leases.lease_seconds * interval '1 second'
    from kept as k
    where s.run_id = k.run_id and s.step_slug = k.step_slug
    returning 1
  )
  select count(*)::int into v_kept from extended;
  return v_kept;
end;
$$;
