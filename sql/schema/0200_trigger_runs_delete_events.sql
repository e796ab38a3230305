-- runs_delete_events: a deleted run's events go with it (prune_runs, or a delete by hand), once
-- per statement for all the runs it deleted.

create trigger runs_delete_events
  after delete on pgflow.runs
  referencing old table as deleted_runs
  for each statement
  execute function pgflow._delete_run_events();
