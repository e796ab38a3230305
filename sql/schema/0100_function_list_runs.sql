-- list_runs: runs newest first ((started_at, run_id) descending), at most max_runs (1 to 10000),
-- filtered by flow, owner, statuses (any of 'started', 'completed', 'failed', 'cancelled') and a
-- start-time window (started_after < started_at < started_before), continuing after the run at
-- (after_started_at, after_run_id) when given: keyset paging, the last row of a page being the
-- next call's position.
-- Returns: {"run_id", "flow_slug", "version", "status", "seq", "started_at", "completed_at",
--   "failed_at", "cancelled_at"}.
-- Locks: none. Notifies: nothing.
-- Raises: PF400 for an argument out of its range, or half a position.
-- Idempotent: yes (reads only).
create function pgflow.list_runs(
  max_runs int default 20,
  flow_slug text default null,
  owner text default null,
  statuses text[] default null,
  started_after timestamptz default null,
  started_before timestamptz default null,
  after_started_at timestamptz default null,
  after_run_id uuid default null
) returns setof jsonb
language plpgsql
stable
set search_path to ''
as $$
begin
  if (list_runs.max_runs between 1 and 10000) is not true then
    perform pgflow._bad_argument('list_runs', 'max_runs', 'an integer from 1 to 10000', list_runs.max_runs::text);
  end if;
  if list_runs.statuses is not null and (cardinality(list_runs.statuses) = 0
      or not list_runs.statuses <@ array['started', 'completed', 'failed', 'cancelled']) then
    perform pgflow._bad_argument('list_runs', 'statuses', 'null or a non-empty array of started, completed, failed, cancelled',
                                 list_runs.statuses::text);
  end if;
  if (list_runs.after_started_at is null) <> (list_runs.after_run_id is null) then
    perform pgflow._bad_argument('list_runs', 'after_started_at and after_run_id', 'both given or both null',
      format('%s and %s', coalesce(list_runs.after_started_at::text, 'null'), coalesce(list_runs.after_run_id::text, 'null')));
  end if;

  -- the position and the window bound the index scan; the other filters are checked on the way
  return query
  select jsonb_build_object(
    'run_id', r.run_id, 'flow_slug', r.flow_slug, 'version', r.flow_version, 'status', r.status,
    'seq', r.last_seq,
    'started_at', r.started_at, 'completed_at', r.completed_at, 'failed_at', r.failed_at,
    'cancelled_at', r.cancelled_at
  )
  from pgflow.runs as r
  where (r.started_at, r.run_id) < (coalesce(list_runs.after_started_at, 'infinity'),
                                    coalesce(list_runs.after_run_id, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
    and r.started_at < coalesce(list_runs.started_before, 'infinity')
    and r.started_at > coalesce(list_runs.started_after, '-infinity')
    and (list_runs.flow_slug is null or r.flow_slug = list_runs.flow_slug)
    and (list_runs.owner is null or r.owner = list_runs.owner)
    and (list_runs.statuses is null or r.status = any(list_runs.statuses))
  order by r.started_at desc, r.run_id desc
  limit list_runs.max_runs;
end;
$$;
