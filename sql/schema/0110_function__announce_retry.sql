-- _announce_retry: appends step:started for a retry attempt claim_tasks has just leased.
-- Returns: true.
-- Locks: none of its own; the caller holds the run's row lock (_lock_run_for_retry).
-- Notifies: pgflow_events, at commit.
-- Raises: nothing.
-- Idempotent: no (it appends an event).
create function pgflow._announce_retry(p_run_id uuid, p_step_slug text, p_attempt int)
returns boolean
language plpgsql
volatile
set search_path to ''
as $$
declare
  v_seq bigint;
begin
  update pgflow.runs as r set last_seq = r.last_seq + 1 where r.run_id = p_run_id
  returning r.last_seq into v_seq;
  perform pgflow._event(p_run_id, v_seq, 'step:started', p_step_slug, 'started', null, null, p_attempt);
  return true;
end;
$$;
