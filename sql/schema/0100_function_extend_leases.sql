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
  with extended as (
    update pgflow.step_states as s
    set lease_expires_at = clock_timestamp() + extend_leases.lease_seconds * interval '1 second'
    from unnest(extend_leases.run_ids, extend_leases.step_slugs) as t (run_id, step_slug)
    where s.run_id = t.run_id and s.step_slug = t.step_slug
      and s.leased_by = extend_leases.worker_id
      and s.lease_expires_at >= clock_timestamp()
    returning 1
  )
  select count(*)::int into v_kept from extended;
  return v_kept;
end;
$$;
