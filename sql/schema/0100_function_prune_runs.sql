-- prune_runs: deletes at most batch_size (1 to 10000) runs that finished (completed, failed or cancelled)
-- before now() - older_than (0 to 36500 days), with their step_states and run_events: one batch,
-- one transaction. Call it again while it returns batch_size (`pgflow prune` and the worker's
-- --retention loop do): each call commits on its own, so no lock is held for long.
-- Returns: how many runs it deleted.
-- Locks: the runs it deletes, taken oldest finish first with `for update skip locked`: a run
-- another transaction holds (a late report, a reader locking it) is skipped, never waited for; a
-- later call takes it. Their step and event rows are then deleted under those run locks.
-- Notifies: pgflow_events, for each deleted run a reference one past its last event
-- ({"v": 1, "refs": [{"run_id", "from": last_seq + 1, "to": last_seq + 1}]}, about 60 runs per
-- notification): the log has no such event, so a gateway whose sockets follow the run reads it,
-- finds the run gone, and ends those subscriptions with not_found.
-- Raises: PF400 for an argument out of its range.
-- Idempotent: yes; a repeat deletes what has finished since, if anything.
create function pgflow.prune_runs(
  older_than interval,
  batch_size int default 1000
) returns int
language plpgsql
volatile
set search_path to ''
as $$
declare
  v_cutoff timestamptz;
  v_runs uuid[];
  v_last_seqs bigint[];
begin
  if (prune_runs.older_than between interval '0' and interval '36500 days') is not true then
    perform pgflow._bad_argument('prune_runs', 'older_than', 'an interval from 0 to 36500 days',
                                 prune_runs.older_than::text);
  end if;
  if (prune_runs.batch_size between 1 and 10000) is not true then
    perform pgflow._bad_argument('prune_runs', 'batch_size', 'an integer from 1 to 10000',
                                 prune_runs.batch_size::text);
  end if;
  v_cutoff := now() - prune_runs.older_than;

  -- LOCK ACQUISITION: the oldest finished runs through runs_finished_at_idx, skipping locked ones
  select array_agg(v.run_id order by v.run_id), array_agg(v.last_seq order by v.run_id)
    into v_runs, v_last_seqs
  from (
    select r.run_id, r.last_seq
    from pgflow.runs as r
    where r.status in ('completed', 'failed', 'cancelled')
      and coalesce(r.completed_at, r.failed_at, r.cancelled_at) < v_cutoff
    order by coalesce(r.completed_at, r.failed_at, r.cancelled_at)
    limit prune_runs.batch_size
    for update skip locked
  ) as v;
  if v_runs is null then
    return 0;
  end if;

  -- DELETE: children first, set-based; the foreign keys' cascades then find nothing left
  delete from pgflow.run_events as e
  using unnest(v_runs) as v (run_id)
  where e.run_id = v.run_id;
  delete from pgflow.step_states as s
  using unnest(v_runs) as v (run_id)
  where s.run_id = v.run_id;
  delete from pgflow.runs as r
  using unnest(v_runs) as v (run_id)
  where r.run_id = v.run_id;

  -- NOTIFY: a reference past each run's last event, in chunks well under the 8000-byte payload
  perform pg_notify('pgflow_events', '{"v": 1, "refs": [' || c.refs || ']}')
  from (
    select string_agg(jsonb_build_object('run_id', t.run_id, 'from', t.last_seq + 1,
                                         'to', t.last_seq + 1)::text, ', ' order by t.o) as refs
    from unnest(v_runs, v_last_seqs) with ordinality as t (run_id, last_seq, o)
    group by (t.o - 1) / 60
  ) as c;
  return cardinality(v_runs);
end;
$$;
