-- _fail_for_good: a step fails without another attempt (its last attempt failed, an input step
-- timed out, a map step got no array to map over, an HTTP step's function refused its input):
-- step:failed, then its run fails. An element task of a map step takes its map step with it:
-- the element's own failure (task:failed), then the map step's (`task i failed: ...`), then the
-- run's.
-- Locks: the caller holds the run's row lock; it updates the run's step rows.
-- Notifies: pgflow_events, at commit.
-- Raises: nothing.
-- Idempotent: no (it appends events).
create function pgflow._fail_for_good(p_run_id uuid, p_step_slug text, p_error text, p_attempt int)
returns void
language plpgsql
volatile
set search_path to ''
as $$
declare
  v_seq bigint;
  v_parent text;
  v_index int;
  v_parent_attempt int;
  v_error text := p_error;
  v_failed text := p_step_slug;
begin
  update pgflow.step_states as s
  set status = 'failed', error = p_error, failed_at = now(), leased_by = null, lease_expires_at = null
  where s.run_id = p_run_id and s.step_slug = p_step_slug
  returning s.map_parent, s.map_index into v_parent, v_index;
  select r.last_seq + 1 into v_seq from pgflow.runs as r where r.run_id = p_run_id;
  perform pgflow._event(p_run_id, v_seq, 'step:failed', p_step_slug, 'failed', null, p_error, p_attempt);
  if v_parent is not null then
    v_error := format('task %s failed: %s', v_index, p_error);
    v_failed := v_parent;
    update pgflow.step_states as s
    set status = 'failed', error = v_error, failed_at = now(), leased_by = null,
        lease_expires_at = null
    where s.run_id = p_run_id and s.step_slug = v_parent
    returning s.attempt into v_parent_attempt;
    v_seq := v_seq + 1;
    perform pgflow._event(p_run_id, v_seq, 'step:failed', v_parent, 'failed', null, v_error,
                          v_parent_attempt);
  end if;
  perform pgflow._fail_run(p_run_id, v_seq, v_failed, v_error,
                           coalesce(v_parent_attempt, p_attempt));
end;
$$;
