-- _fail_attempt: ends the current attempt of a leased step with an error: a retry after
-- base_delay * 2^(n-1) seconds (n: the attempts since the run was started or last retried), at
-- most 30 days (or at once, p_retry_now, for an expired lease) while attempts remain, else (or
-- at once, p_final) the step and its run fail (_fail_for_good).
-- Locks: the caller holds the run's row lock and has checked the step is leased; it locks the
--   step's row.
-- Notifies: pgflow_events (step:retrying, or step:failed and run:failed); pgflow_tasks for a
--   retry claimable at once.
-- Raises: nothing.
-- Idempotent: no (it appends events).
create function pgflow._fail_attempt(p_run_id uuid, p_step_slug text, p_error text, p_retry_now boolean,
                                     p_final boolean default false)
returns void
language plpgsql
volatile
set search_path to ''
as $$
declare
  -- the longest backoff: 2^(attempt-1) would overflow an interval after a few dozen attempts
  c_max_backoff constant double precision := 2592000;  -- seconds (30 days)
  v_state pgflow.step_states%rowtype;
  v_step pgflow.steps%rowtype;
  v_seq bigint;
begin
  select * into v_state from pgflow.step_states as s
  where s.run_id = p_run_id and s.step_slug = p_step_slug
  for update;
  -- an element task of a map step retries by its map step's options
  select * into v_step from pgflow.steps as st
  where st.flow_slug = v_state.flow_slug and st.step_slug = coalesce(v_state.map_parent, p_step_slug);
  select r.last_seq + 1 into v_seq from pgflow.runs as r where r.run_id = p_run_id;

  -- RETRY while attempts remain
  if v_state.attempt - v_state.attempt_base < v_step.max_attempts and not p_final then
    update pgflow.step_states as s
    set status = 'retrying', error = p_error, leased_by = null, lease_expires_at = null,
        available_at = case when p_retry_now then clock_timestamp()
          else clock_timestamp() + least(v_step.base_delay * power(2, v_state.attempt - v_state.attempt_base - 1),
                                         c_max_backoff)
                                   * interval '1 second' end
    where s.run_id = p_run_id and s.step_slug = p_step_slug;
    perform pgflow._event(p_run_id, v_seq, 'step:retrying', p_step_slug, 'retrying', null, p_error, v_state.attempt);
    update pgflow.runs as r set last_seq = v_seq where r.run_id = p_run_id;
    if p_retry_now then
      perform pg_notify('pgflow_tasks', v_state.flow_slug);
    end if;
    return;
  end if;

  -- FINAL FAILURE of the step (and of its map step), then of the run
  perform pgflow._fail_for_good(p_run_id, p_step_slug, p_error, v_state.attempt);
end;
$$;
