-- complete_step: completes a leased step, starts the dependents that became ready and, when it
-- was the run's last step, completes the run with its output.
-- Returns: true if applied; false (and changes nothing) when the caller no longer holds the
--   task: lease lost or run out, another attempt, run already finished.
-- Locks: the run's row, then its step rows.
-- Notifies: pgflow_events (step:completed, step:started or step:waiting..., run:completed),
--   pgflow_tasks.
-- Raises: nothing of its own; a stale completion returns false.
-- Idempotent: yes; a repeat is a stale completion and returns false.
create function pgflow.complete_step(
  run_id uuid,
  step_slug text,
  output jsonb,
  worker_id text default null,
  attempt int default null
) returns boolean
language plpgsql
volatile
set search_path to ''
-- rows by their key, whatever the statistics (docs/design/sql-contract.md, plan stability)
set enable_seqscan to off
as $$
declare
  v_output jsonb := coalesce(complete_step.output, 'null'::jsonb);
  v_run pgflow.runs%rowtype;
  v_attempt int;
  v_flow_key text;  -- the key of the run's flow version (0030_table_flows.sql)
  v_maps text[];  -- map steps started here
  v_element pgflow.step_states%rowtype;
  v_dependents text[];
  v_ready text[];
  v_slug text;
  v_seq bigint;
  v_run_output jsonb;
begin
  if not pgflow._lock_leased_step(complete_step.run_id, complete_step.step_slug,
                                  complete_step.worker_id, complete_step.attempt) then
    return false;
  end if;
  -- an element task of a map step completes as report_steps completes them (its map step
  -- counts down, and completes with its last element)
  select * into v_element from pgflow.step_states as s
  where s.run_id = complete_step.run_id and s.step_slug = complete_step.step_slug;
  if v_element.map_parent is not null then
    return (pgflow.report_steps(coalesce(complete_step.worker_id, v_element.leased_by),
      array[complete_step.run_id], array[complete_step.step_slug],
      array[coalesce(complete_step.attempt, v_element.attempt)], array[v_output],
      array[null::text]))[1];
  end if;
  select * into v_run from pgflow.runs as r where r.run_id = complete_step.run_id;
  v_seq := v_run.last_seq + 1;

  -- THE STEP
  update pgflow.step_states as s
  set status = 'completed', output = v_output, error = null, completed_at = now(),
      leased_by = null, lease_expires_at = null
  where s.run_id = complete_step.run_id and s.step_slug = complete_step.step_slug
  returning s.attempt, s.flow_slug into v_attempt, v_flow_key;
  perform pgflow._event(v_run.run_id, v_seq, 'step:completed', complete_step.step_slug,
                        'completed', v_output, null, v_attempt);

  -- DEPENDENTS whose last dependency this was
  select st.dependents into v_dependents from pgflow.steps as st
  where st.flow_slug = v_flow_key and st.step_slug = complete_step.step_slug;
  if cardinality(v_dependents) > 0 then
    with updated as (
      update pgflow.step_states as s
      set remaining_deps = s.remaining_deps - 1,
          status = case when s.remaining_deps = 1 then 'started' else s.status end,
          available_at = case when s.remaining_deps = 1 then now() else s.available_at end,
          started_at = case when s.remaining_deps = 1 then now() else s.started_at end
      where s.run_id = complete_step.run_id and s.step_slug = any(v_dependents)
      returning s.step_slug, s.remaining_deps
    )
    select array_agg(u.step_slug order by array_position(v_dependents, u.step_slug)) into v_ready
    from updated as u where u.remaining_deps = 0;
    if v_ready is not null then
      foreach v_slug in array v_ready loop
        v_seq := v_seq + 1;
        if pgflow._start_step(v_run.run_id, v_seq, v_slug) = 'map' then
          v_maps := v_maps || v_slug;
        end if;
      end loop;
      perform pg_notify('pgflow_tasks', v_flow_key);
    end if;
  end if;

  -- THE RUN, when this was its last step
  if v_run.remaining_steps > 1 then
    update pgflow.runs as r set remaining_steps = r.remaining_steps - 1, last_seq = v_seq
    where r.run_id = v_run.run_id;
    if v_maps is not null then  -- last: a map step with nothing to run ends at once
      perform pgflow._settle_maps(array_fill(v_run.run_id, array[cardinality(v_maps)]), v_maps);
    end if;
    return true;
  end if;
  v_run_output := (pgflow._run_outputs(array[v_run.run_id]))[1];
  v_seq := v_seq + 1;
  perform pgflow._event(v_run.run_id, v_seq, 'run:completed', null, 'completed', v_run_output, null, null);
  update pgflow.runs as r
  set remaining_steps = 0, status = 'completed', output = v_run_output, completed_at = now(),
      last_seq = v_seq
  where r.run_id = v_run.run_id;
  return true;
end;
$$;
