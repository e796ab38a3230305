-- _event: appends one event to a run's log and notes it for the commit-time notification
-- (_events_tx, _note_events); the event is notified at commit. Stores it compact (0042_table_run_events.sql): the
-- payload keeps output when given, error when not null, status only when it is not the event's.
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
declare
  v_tx xid8 := pgflow._events_tx();
begin
  insert into pgflow.run_events (run_id, seq, event, step_slug, attempt, tx, payload)
  values (p_run_id, p_seq, p_event, p_step_slug, p_attempt, v_tx,
    case when p_output is null then '{}'::jsonb else jsonb_build_object('output', p_output) end
    || case when p_error is null then '{}'::jsonb else jsonb_build_object('error', p_error) end
    || case when p_status is not distinct from split_part(p_event, ':', 2) then '{}'::jsonb
         else jsonb_build_object('status', p_status) end);
  if v_tx is null then
    perform pgflow._note_events(p_run_id || ',' || p_seq || ',' || p_seq || ';');
  end if;
end;
$$;
