-- _fail_run: fails a run because p_step_slug failed for good; cancels its unfinished steps.
-- Returns: the run's new last seq.
-- Locks: the caller holds the run's row lock; it updates the run's unfinished step rows.
-- Notifies: pgflow_events (run:failed), at commit.
-- Raises: nothing.
-- Idempotent: no (it appends an event).
create function pgflow._fail_run(p_run_id uuid, p_seq bigint, p_step_slug text, p_error text, p_attempt int)
returns bigint
language plpgsql
volatile
set search_path to ''
as $$
declare
  v_seq bigint := p_seq + 1;
begin
  -- no other step of this run may start: cancelled rows leave the ready index
  update pgflow.step_states as s
  set status = 'cancelled', leased_by = null, lease_expires_at = null
  where s.run_id = p_run_id and s.status in ('created', 'started', 'retrying', 'waiting');

  perform pgflow._event(p_run_id, v_seq, 'run:failed', p_step_slug, 'failed', null, p_error, p_attempt);
  update pgflow.runs as r
  set status = 'failed', error = p_error, failed_step = p_step_slug, failed_at = now(),
      last_seq = v_seq
  where r.run_id = p_run_id;
  return v_seq;
end;
$$;
