-- fail_step: ends a leased step's attempt with an error; retries with exponential backoff
-- (base_delay * 2^(attempt-1) seconds, at most 30 days) until max_attempts, then fails the step
-- and the run; with retry => false it fails them at once (an error no attempt can mend: an HTTP
-- step's function answering 4xx).
-- Returns: true if applied; false (and changes nothing) for a caller that no longer holds the
--   task, as complete_step.
-- Locks: the run's row, then its step rows.
-- Notifies: pgflow_events (step:retrying, or step:failed and run:failed).
-- Raises: nothing of its own; a stale report returns false.
-- Idempotent: yes; a repeat is stale and returns false.
create function pgflow.fail_step(
  run_id uuid,
  step_slug text,
  error text,
  worker_id text default null,
  attempt int default null,
  retry boolean default true
) returns boolean
language plpgsql
volatile
set search_path to ''
-- rows by their key, whatever the statistics (docs/design/sql-contract.md, plan stability)
set enable_seqscan to off
as $$
begin
  if not pgflow._lock_leased_step(fail_step.run_id, fail_step.step_slug,
                                  fail_step.worker_id, fail_step.attempt) then
    return false;
  end if;
  perform pgflow._fail_attempt(fail_step.run_id, fail_step.step_slug,
                               coalesce(fail_step.error, 'failed without a message'), false,
                               not coalesce(fail_step.retry, true));
  return true;
end;
$$;
