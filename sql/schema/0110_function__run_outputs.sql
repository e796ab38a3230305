-- _run_outputs: finished runs' outputs, one per given run_id and in its order (null for a null
-- run_id): the output step's output, or {leaf: output} when the flow has several leaves. Takes a
-- batch, so report_steps pays one call for all the runs its report finishes. PL/pgSQL, not SQL:
-- a SQL function called from PL/pgSQL is planned again on every call (0.24 ms, more than the
-- rest of a one-step report), where PL/pgSQL keeps its plan for the session.
-- Locks: none. Notifies: nothing. Raises: nothing. Idempotent: yes (reads only).
create function pgflow._run_outputs(p_run_ids uuid[]) returns jsonb[]
language plpgsql
stable
set search_path to ''
as $$
begin
  return (
    select array_agg(o.output order by i.ord)
    from unnest(p_run_ids) with ordinality as i (run_id, ord)
    left join lateral (
      select case when f.output_step is not null then (
          select s.output from pgflow.step_states as s
          where s.run_id = r.run_id and s.step_slug = f.output_step
        ) else (
          select jsonb_object_agg(s.step_slug, s.output)
          from pgflow.steps as st
          join pgflow.step_states as s on s.run_id = r.run_id and s.step_slug = st.step_slug
          where st.flow_slug = f.flow_slug and cardinality(st.dependents) = 0
        ) end as output
      from pgflow.runs as r
      join pgflow.flows as f on f.name = r.flow_slug and f.version = r.flow_version
      where r.run_id = i.run_id
    ) as o on true
  );
end;
$$;
