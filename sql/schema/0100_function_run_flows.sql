-- run_flows: starts many runs in one call, one transaction and one notification (start_runs
-- without idempotency keys, answering the run ids alone).
-- Returns: for each input position, the new run_id (time-ordered, a version 7 UUID), or null
--   when that position names an unknown flow: the other positions' runs start all the same.
-- Locks: none beyond the new rows.
-- Notifies: pgflow_events (run:started, step:started or step:waiting per root, per run),
--   pgflow_tasks (each flow slug once).
-- Raises: PF400 when the arrays differ in length (owners may be null: no owner for any run).
-- Idempotent: no; each position of each call is a new run.
create function pgflow.run_flows(flow_slugs text[], inputs jsonb[], owners text[] default null)
returns uuid[]
language plpgsql
volatile
set search_path to ''
as $$
begin
  return (select coalesce(array_agg(s.run_id order by s.o), '{}')
          from pgflow.start_runs(run_flows.flow_slugs, run_flows.inputs, run_flows.owners)
            with ordinality as s (run_id, created, version, o));
end;
$$;
