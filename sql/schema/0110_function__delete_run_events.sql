-- _delete_run_events: deletes the events of the runs a statement deleted, in place of the
-- foreign key run_events does not have (0042_table_run_events.sql); the function of the trigger
-- runs_delete_events.
-- Locks: the event rows it deletes. Notifies: nothing. Raises: nothing.
-- Idempotent: yes (a run's events are deleted once; none are left to find again).
create function pgflow._delete_run_events() returns trigger
language plpgsql
set search_path to ''
-- from the deleted runs to their events through the primary key, whatever the estimates
set enable_hashjoin to off
set enable_mergejoin to off
set enable_seqscan to off
as $$
begin
  delete from pgflow.run_events as e
  using deleted_runs as d
  where e.run_id = d.run_id;
  return null;
end;
$$;
