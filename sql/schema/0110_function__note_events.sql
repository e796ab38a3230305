-- _note_events: appends seq ranges ('run_id,from,to;' each) to the transaction's
-- pgflow.pending_events, where the commit-time notification finds the events a writer inserted
-- with a null tx (_events_tx). A savepoint rolled back restores the setting as it takes the
-- rows, so what is notified is exactly what commits.
-- Locks: none. Notifies: nothing (the trigger does, at commit). Raises: nothing.
-- Idempotent: no (each call appends).
create function pgflow._note_events(p_ranges text) returns void
language plpgsql
volatile
set search_path to ''
as $$
begin
  perform set_config('pgflow.pending_events',
    coalesce(current_setting('pgflow.pending_events', true), '') || p_ranges, true);
end;
$$;
