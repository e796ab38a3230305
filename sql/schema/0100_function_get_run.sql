-- get_run: the run now, with every step in flow order (a map step with its count of element
-- tasks and of those completed; the element tasks themselves are not listed); null for an
-- unknown run.
-- Locks: none. Notifies: nothing. Raises: nothing. Idempotent: yes (reads only).
create function pgflow.get_run(run_id uuid) returns jsonb
language sql
stable
set search_path to ''
as $$
  select jsonb_build_object(
    'run_id', r.run_id,
    'flow_slug', r.flow_slug,
    'version', r.flow_version,
    'status', r.status,
    'input', r.input,
    'output', r.output,
    'error', r.error,
    'failed_step', r.failed_step,
    'owner', r.owner,
    'seq', r.last_seq,
    'started_at', r.started_at,
    'completed_at', r.completed_at,
    'failed_at', r.failed_at,
    'cancelled_at', r.cancelled_at,
    'cancel_reason', r.cancel_reason,
    'idempotency_key', r.idempotency_key,
    'steps', (
      select coalesce(jsonb_agg(jsonb_build_object(
        'step_slug', s.step_slug,
        'kind', st.kind,
        'status', s.status,
        'attempt', s.attempt,
        'output', s.output,
        'error', s.error,
        'created_at', s.created_at,
        'started_at', s.started_at,
        'completed_at', s.completed_at,
        'failed_at', s.failed_at
      ) || case when st.kind = 'map' then jsonb_build_object(
        'tasks', s.map_tasks, 'tasks_completed', s.map_tasks - s.map_left) else '{}'::jsonb end
      order by st.step_index), '[]'::jsonb)
      from pgflow.step_states as s
      join pgflow.steps as st on st.flow_slug = s.flow_slug and st.step_slug = s.step_slug
      where s.run_id = r.run_id
    )
  )
  from pgflow.runs as r
  where r.run_id = get_run.run_id;
$$;
