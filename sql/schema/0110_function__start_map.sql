-- _start_map: a map step whose dependencies completed starts its element tasks (_begin_map),
-- and its step:started event, carrying {"tasks": n}, is appended at p_seq. The per-step paths
-- (complete_step, retry_run) call it, then _settle_maps once their events are written; the
-- set-based ones write the event in their own insert.
-- Locks: the caller holds the run's row lock (it owns p_seq).
-- Notifies: pgflow_events, at commit. Raises: nothing.
-- Idempotent: no (it appends an event).
create function pgflow._start_map(p_run_id uuid, p_seq bigint, p_step_slug text) returns void
language plpgsql
volatile
set search_path to ''
as $$
declare
  v_tx xid8 := pgflow._events_tx();
  v_payload jsonb := pgflow._begin_map(p_run_id, p_step_slug);
begin
  insert into pgflow.run_events (run_id, seq, event, step_slug, attempt, tx, payload)
  select p_run_id, p_seq, 'step:started', p_step_slug, s.attempt, v_tx, v_payload
  from pgflow.step_states as s
  where s.run_id = p_run_id and s.step_slug = p_step_slug;
  if v_tx is null then
    perform pgflow._note_events(p_run_id || ',' || p_seq || ',' || p_seq || ';');
  end if;
end;
$$;
