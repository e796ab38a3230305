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
  v_error text;
  v_attempt int;
  v_seq bigint;
begin
  update pgflow.step_states as s
  set status = 'failed', attempt = s.attempt + 1, failed_at = now(),
      error = format('no input within %s s', st.timeout)
  from pgflow.steps as st
  where s.run_id = p_run_id and s.step_slug = p_step_slug
    and st.flow_slug = s.flow_slug and st.step_slug = s.step_slug
  returning s.error, s.attempt into v_error, v_attempt;
  select r.last_seq + 1 into v_seq from pgflow.runs as r where r.run_id = p_run_id;
  perform pgflow._event(p_run_id, v_seq, 'step:failed', p_step_slug, 'failed', null, v_error, v_attempt);
  perform pgflow._fail_run(p_run_id, v_seq, p_step_slug, v_error, v_attempt);
end;
$$;
