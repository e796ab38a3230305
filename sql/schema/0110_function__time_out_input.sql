-- _time_out_input: an input step that waited past its timeout fails ('no input within N s'),
-- and its run with it, as any step failing for good.
-- Locks: the caller holds the run's row lock and has checked the step is waiting past its
--   deadline; it updates the run's step rows.
-- Notifies: pgflow_events (step:failed, run:failed), at commit.
-- Raises: nothing.
-- Idempotent: no (it appends events).
create function pgflow._time_out_input(p_run_id uuid, p_step_slug text) returns void
language plpgsql
volatile
set search_path to ''
as $$
declare
  v_timeout int;
  v_attempt int;
begin
  -- the attempt its value would have been
  update pgflow.step_states as s set attempt = s.attempt + 1
  from pgflow.steps as st
  where s.run_id = p_run_id and s.step_slug = p_step_slug
    and st.flow_slug = s.flow_slug and st.step_slug = s.step_slug
  returning st.timeout, s.attempt into v_timeout, v_attempt;
  perform pgflow._fail_for_good(p_run_id, p_step_slug, format('no input within %s s', v_timeout),
                                v_attempt);
end;
$$;
