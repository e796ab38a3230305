-- retry_run: starts a failed or cancelled run again where it ended: its completed steps keep
-- their outputs; its failed and cancelled steps are queued again (those whose dependencies are
-- complete at once, step:started, or step:waiting for an input step; the others wait for them),
-- each with a fresh budget of max_attempts, numbered on from its last attempt so that a report
-- from an attempt before the retry is stale.
-- Returns: true if the run was retried; false when it is not failed or cancelled.
-- Locks: the run's row, then its step rows.
-- Notifies: pgflow_events (run:retried, then step:started / step:waiting, at commit),
--   pgflow_tasks (the key of the run's flow version).
-- Raises: PF404 for an unknown run.
-- Idempotent: no; a repeat while the run is going returns false, and after it failed again
--   retries it again.
create function pgflow.retry_run(run_id uuid) returns boolean
language plpgsql
volatile
set search_path to ''
-- rows by their key, whatever the statistics (docs/design/sql-contract.md, plan stability)
set enable_seqscan to off
as $$
declare
  v_run pgflow.runs%rowtype;
  v_seq bigint;
  v_step record;
  v_maps text[];  -- map steps started again here
begin
  select * into v_run from pgflow.runs as r where r.run_id = retry_run.run_id for update;
  if not found then
    raise exception 'unknown run %', retry_run.run_id using errcode = 'PF404';
  end if;
  if v_run.status not in ('failed', 'cancelled') then
    return false;
  end if;

  v_seq := v_run.last_seq + 1;
  perform pgflow._event(v_run.run_id, v_seq, 'run:retried', null, 'started', null, null, null);
  -- every step not completed goes back to the queue, the ready ones in flow order
  for v_step in
    select s.step_slug, s.remaining_deps = 0 as ready, st.kind
    from pgflow.step_states as s
    join pgflow.steps as st on st.flow_slug = s.flow_slug and st.step_slug = s.step_slug
    where s.run_id = v_run.run_id and s.status in ('failed', 'cancelled')
    order by st.step_index
  loop
    if v_step.ready and v_step.kind = 'map' then
      -- its elements not completed run again (_begin_map), under its engine lease
      update pgflow.step_states as s set error = null, failed_at = null
      where s.run_id = v_run.run_id and s.step_slug = v_step.step_slug;
      v_seq := v_seq + 1;
      perform pgflow._start_step(v_run.run_id, v_seq, v_step.step_slug);
      v_maps := v_maps || v_step.step_slug;
      continue;
    end if;
    update pgflow.step_states as s
    set status = case when v_step.ready then 'started' else 'created' end,
        attempt_base = s.attempt, error = null, failed_at = null, output = null,
        available_at = case when v_step.ready then now() end,
        started_at = case when v_step.ready then now() end,
        leased_by = null, lease_expires_at = null
    where s.run_id = v_run.run_id and s.step_slug = v_step.step_slug;
    if v_step.ready then
      v_seq := v_seq + 1;
      perform pgflow._start_step(v_run.run_id, v_seq, v_step.step_slug);
    end if;
  end loop;

  update pgflow.runs as r
  set status = 'started', error = null, failed_step = null, failed_at = null,
      cancelled_at = null, cancel_reason = null, last_seq = v_seq
  where r.run_id = v_run.run_id;
  if v_maps is not null then  -- last: a map step with nothing left to run ends at once
    perform pgflow._settle_maps(array_fill(v_run.run_id, array[cardinality(v_maps)]), v_maps);
  end if;
  perform pg_notify('pgflow_tasks', (select s.flow_slug from pgflow.step_states as s
                                     where s.run_id = v_run.run_id limit 1));
  return true;
end;
$$;
