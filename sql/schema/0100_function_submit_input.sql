-- submit_input: gives a waiting input step its value: the value becomes the step's output, as a
-- handler's would (step:completed), and its dependents start. The value is not checked against
-- the step's schema here: callers validate it (the gateway's input route, the Python client).
-- Returns: true if applied; false when the step is not waiting (not yet, or answered already,
--   timed out, cancelled) or its run has ended.
-- Locks: the run's row, then its step rows (through report_steps).
-- Notifies: pgflow_events (at commit), pgflow_tasks for the dependents it makes ready.
-- Raises: PF404 for an unknown run or a step the run does not have.
-- Idempotent: yes; a repeat finds the step completed and returns false.
create function pgflow.submit_input(run_id uuid, step_slug text, value jsonb) returns boolean
language plpgsql
volatile
set search_path to ''
-- rows by their key, whatever the statistics (docs/design/sql-contract.md, plan stability)
set enable_seqscan to off
as $$
declare
  -- the holder of the short lease through which the value is reported like a handler's output
  c_holder constant text := 'pgflow:submit_input';
  v_run_status text;
  v_step_status text;
  v_attempt int;
begin
  select r.status into v_run_status
  from pgflow.runs as r where r.run_id = submit_input.run_id for update;
  if not found then
    raise exception 'unknown run %', submit_input.run_id using errcode = 'PF404';
  end if;
  select s.status into v_step_status from pgflow.step_states as s
  where s.run_id = submit_input.run_id and s.step_slug = submit_input.step_slug;
  if not found then
    raise exception 'run % has no step %', submit_input.run_id, quote_literal(submit_input.step_slug)
      using errcode = 'PF404';
  end if;
  if v_run_status <> 'started' or v_step_status <> 'waiting' then
    return false;
  end if;
  -- one path for every completion: the step takes a lease for this transaction alone and the
  -- value is reported through it (dependents, events, the run's end)
  update pgflow.step_states as s
  set status = 'started', attempt = s.attempt + 1, leased_by = c_holder,
      lease_expires_at = clock_timestamp() + interval '1 hour'
  where s.run_id = submit_input.run_id and s.step_slug = submit_input.step_slug
  returning s.attempt into v_attempt;
  return (pgflow.report_steps(c_holder, array[submit_input.run_id], array[submit_input.step_slug],
    array[v_attempt], array[coalesce(submit_input.value, 'null'::jsonb)], array[null::text]))[1];
end;
$$;
