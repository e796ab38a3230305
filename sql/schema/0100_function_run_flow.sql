-- run_flow: starts a run of a flow and queues its root steps (start_runs for one run).
-- idempotency_key: with one, a second call for the same flow, owner and key starts nothing and
-- returns the run the first started, for as long as that run exists (until prune_runs deletes
-- it); pass it by name (`idempotency_key => 'order-42'`) when there is no owner.
-- Returns: the run_id, time-ordered (a version 7 UUID).
-- Locks: none beyond the new rows.
-- Notifies: pgflow_events (run:started, step:started or step:waiting per root), pgflow_tasks
--   (the flow slug).
-- Raises: PF404 for an unknown flow; PF422 when the key names a run started with another input.
-- Idempotent: with an idempotency key, yes; without, no: each call is a new run.
create function pgflow.run_flow(flow_slug text, input jsonb, owner text default null,
                                idempotency_key text default null) returns uuid
language plpgsql
volatile
set search_path to ''
as $$
declare
  v_run_id uuid := (select s.run_id from pgflow.start_runs(array[run_flow.flow_slug],
    array[run_flow.input], array[run_flow.owner], array[run_flow.idempotency_key]) as s);
begin
  if v_run_id is null then
    raise exception 'unknown flow %', quote_literal(run_flow.flow_slug) using errcode = 'PF404';
  end if;
  return v_run_id;
end;
$$;
