-- _event: appends one event to a run's log and raises the transaction's pgflow.events_pending
-- flag; the event is notified at commit.
-- Locks: none of its own; the caller must hold the run's row lock (it owns p_seq).
-- Notifies: pgflow_events, at commit, through _notify_events.
-- Raises: a unique violation when p_seq was written already (a caller's bug).
-- Idempotent: no (a seq can be written once).
create function pgflow._event(
  p_run_id uuid,
  p_seq bigint,
  p_event text,
  p_step_slug text,
  p_status text,
  p_output jsonb,
  p_error text,
  p_attempt int
) returns void
language plpgsql
volatile
set search_path to ''
as $$
begin
  insert into pgflow.run_events (run_id, seq, event, step_slug, payload)
  values (p_run_id, p_seq, p_event, p_step_slug, jsonb_build_object(
    'run_id', p_run_id,
    'seq', p_seq,
    'event', p_event,
    'step_slug', p_step_slug,
    'status', p_status,
    'output', p_output,
    'error', p_error,
    'attempt', p_attempt,
    'at', to_char(clock_timestamp() at time zone 'utc', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
  ));
  perform set_config('pgflow.events_pending', 'on', true);
end;
$$;
