-- _lock_run_for_retry: locks a run whose retry claim_tasks is taking, without waiting.
-- Returns: true when this transaction holds the run's row lock (maybe from before), false when
--   another transaction holds it: the claim then leaves that retry for its next call.
-- Locks: the run's row, for update skip locked (claim_tasks may hold other step rows already:
--   waiting here could deadlock with _fail_run, which holds the run and cancels step rows).
-- Notifies: nothing. Raises: nothing.
-- Idempotent: yes.
create function pgflow._lock_run_for_retry(p_run_id uuid) returns boolean
language plpgsql
volatile
set search_path to ''
as $$
begin
  perform 1 from pgflow.runs as r where r.run_id = p_run_id for update skip locked;
  return found;
end;
$$;
