-- _lock_leased_step: locks the run and returns true when the step is leased by this holder
-- (worker_id and attempt, when given) and its lease has not run out.
-- Locks: the run's row, for update (waits for it): the first lock of complete_step/fail_step.
-- Notifies: nothing. Raises: nothing.
-- Idempotent: yes (it only takes a lock this transaction keeps).
create function pgflow._lock_leased_step(p_run_id uuid, p_step_slug text, p_worker_id text, p_attempt int)
returns boolean
language plpgsql
volatile
set search_path to ''
as $$
declare
  v_run_status text;
  v_state pgflow.step_states%rowtype;
begin
  -- LOCK ACQUISITION: everything that happens to a run is serialised on its row
  select r.status into v_run_status from pgflow.runs as r where r.run_id = p_run_id for update;
  -- GUARD: no mutations on finished runs
  if v_run_status is distinct from 'started' then
    return false;
  end if;
  select * into v_state from pgflow.step_states as s
  where s.run_id = p_run_id and s.step_slug = p_step_slug;
  -- GUARD: only the current holder of a live lease
  return found
    and v_state.status = 'started'
    and v_state.lease_expires_at is not null
    and v_state.lease_expires_at >= clock_timestamp()
    and (p_worker_id is null or v_state.leased_by = p_worker_id)
    and (p_attempt is null or v_state.attempt = p_attempt);
end;
$$;
