-- prune_runs: finished runs, oldest finish first. Partial, so the runs still going (what the hot
-- path touches) are not in it; a run enters it when it finishes (and leaves it if retried).
create index runs_finished_at_idx on pgflow.runs ((coalesce(completed_at, failed_at, cancelled_at)))
  where status in ('completed', 'failed', 'cancelled');
