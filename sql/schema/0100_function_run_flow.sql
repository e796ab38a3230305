-- run_flow: starts a run of a flow and queues its root steps (run_flows for one run).
-- Returns: the new run_id, time-ordered (a version 7 UUID).
-- Locks: none beyond the new rows.
-- Notifies: pgflow_events (run:started, step:started per root), pgflow_tasks (the flow slug).
-- Raises: PF404 for an unknown flow.
-- Idempotent: no; each call is a new run.
create function pgflow.run_flow(flow_slug text, input jsonb, owner text default null) returns uuid
language plpgsql
volatile
set search_path to ''
as $$
declare
  v_run_id uuid := (pgflow.run_flows(array[run_flow.flow_slug], array[run_flow.input],
                                     array[run_flow.owner]))[1];
begin
  if v_run_id is null then
    raise exception 'unknown flow %', quote_literal(run_flow.flow_slug) using errcode = 'PF404';
  end if;
  return v_run_id;
end;
$$;
