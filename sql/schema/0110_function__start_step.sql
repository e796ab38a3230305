-- _start_step: a step whose dependencies completed starts, as its kind does, with its event at
-- p_seq: a task is queued (step:started); an input step waits for its value (_wait_for_input,
-- step:waiting with its schema and input); a map step starts its element tasks (_begin_map,
-- step:started with {"tasks": n}, which _settle_maps completes or fails once the caller's
-- events are written, when there is nothing to run). The per-step paths (complete_step,
-- retry_run) call it; the set-based ones write their events in their own insert.
-- Returns: the step's kind.
-- Locks: the caller holds the run's row lock (it owns p_seq) and has queued the step's row.
-- Notifies: pgflow_events, at commit. Raises: nothing.
-- Idempotent: no (it appends an event).
create function pgflow._start_step(p_run_id uuid, p_seq bigint, p_step_slug text) returns text
language plpgsql
volatile
set search_path to ''
as $$
declare
  v_tx xid8 := pgflow._events_tx();
  v_kind text;
  v_payload jsonb := '{}';
begin
  select st.kind into v_kind
  from pgflow.step_states as s
  join pgflow.steps as st on st.flow_slug = s.flow_slug and st.step_slug = s.step_slug
  where s.run_id = p_run_id and s.step_slug = p_step_slug;
  if v_kind = 'input' then
    v_payload := pgflow._wait_for_input(p_run_id, p_step_slug);
  elsif v_kind = 'map' then
    v_payload := pgflow._begin_map(p_run_id, p_step_slug);  -- counts the attempt itself
  end if;
  insert into pgflow.run_events (run_id, seq, event, step_slug, attempt, tx, payload)
  select p_run_id, p_seq, case when v_kind = 'input' then 'step:waiting' else 'step:started' end,
    p_step_slug, case when v_kind = 'map' then s.attempt else s.attempt + 1 end, v_tx, v_payload
  from pgflow.step_states as s
  where s.run_id = p_run_id and s.step_slug = p_step_slug;
  if v_tx is null then
    perform pgflow._note_events(p_run_id || ',' || p_seq || ',' || p_seq || ';');
  end if;
  return v_kind;
end;
$$;
