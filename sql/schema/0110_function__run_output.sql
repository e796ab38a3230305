-- _run_output: a finished run's output: its output step's, or {leaf: output} for several leaves.
-- Locks: none. Notifies: nothing. Raises: nothing. Idempotent: yes (reads only).
create function pgflow._run_output(p_run_id uuid) returns jsonb
language sql
stable
set search_path to ''
as $$
  select case when f.output_step is not null then (
      select s.output from pgflow.step_states as s
      where s.run_id = r.run_id and s.step_slug = f.output_step
    ) else (
      select jsonb_object_agg(s.step_slug, s.output)
      from pgflow.steps as st
      join pgflow.step_states as s on s.run_id = r.run_id and s.step_slug = st.step_slug
      where st.flow_slug = r.flow_slug and cardinality(st.dependents) = 0
    ) end
  from pgflow.runs as r
  join pgflow.flows as f on f.flow_slug = r.flow_slug
  where r.run_id = p_run_id;
$$;
