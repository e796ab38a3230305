-- _wait_for_input: puts an input step whose dependencies completed into status 'waiting' until
-- its timeout (available_at holds the deadline, which claim_tasks' sweep enforces).
-- Returns: its step:waiting event's payload {"schema", "input" (assembled as a handler's would
--   be: {"run": <run input>, "<dep slug>": <dep output>, ...}), "timeout_at"}.
-- Locks: the caller holds the run's row lock; it updates the step's row.
-- Notifies: nothing (the caller writes the event). Raises: nothing.
-- Idempotent: no (it moves the deadline).
create function pgflow._wait_for_input(p_run_id uuid, p_step_slug text) returns jsonb
language plpgsql
volatile
set search_path to ''
as $$
declare
  v_depends_on text[];
  v_schema jsonb;
  v_deadline timestamptz;
  v_input jsonb;
begin
  update pgflow.step_states as s
  set status = 'waiting', available_at = now() + st.timeout * interval '1 second',
      started_at = now(), leased_by = null, lease_expires_at = null
  from pgflow.steps as st
  where s.run_id = p_run_id and s.step_slug = p_step_slug
    and st.flow_slug = s.flow_slug and st.step_slug = s.step_slug
  returning st.depends_on, st.input_schema, s.available_at
    into v_depends_on, v_schema, v_deadline;
  v_input := jsonb_build_object('run', (
      select r.input from pgflow.runs as r where r.run_id = p_run_id
    )) || coalesce((
      select jsonb_object_agg(d.step_slug, d.output)
      from pgflow.step_states as d
      where d.run_id = p_run_id and d.step_slug = any(v_depends_on)
    ), '{}'::jsonb);
  return jsonb_build_object('schema', coalesce(v_schema, '{}'::jsonb), 'input', v_input,
    'timeout_at', to_char(v_deadline at time zone 'utc', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'));
end;
$$;
