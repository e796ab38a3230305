-- _events_tx: what a writer of events puts in their tx column, decided once per call before it
-- inserts them: null while the transaction's pgflow.pending_events holds less than 8 KB (the
-- writer then appends its seq ranges there, _note_events), else the transaction's id. The
-- commit-time notification finds the transaction's events through both
-- (0200_trigger_run_events_notify_at_commit.sql): the setting is copied whole on every append,
-- so past its cap (about 180 ranges: thousands of runs started in one statement) the events
-- are found through the partial index on tx instead, which holds only such events.
-- Locks: none. Notifies: nothing. Raises: nothing. Idempotent: yes (reads only).
create function pgflow._events_tx() returns xid8
language plpgsql
volatile
set search_path to ''
as $$
begin
  return case when octet_length(coalesce(current_setting('pgflow.pending_events', true), '')) < 8192
    then null else pg_current_xact_id() end;
end;
$$;
