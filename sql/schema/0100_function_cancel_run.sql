-- cancel_run: ends a run that is still going: each unfinished step is cancelled (a step:cancelled
-- event each, in flow order), then the run (run:cancelled, with the reason). Leases held on its
-- steps die with it, so a handler's late report or stream is stale; workers hear of it on
-- pgflow_cancels and cancel the handlers still running.
-- Returns: true if cancelled; false when the run had already ended (completed, failed,
--   cancelled).
-- Locks: the run's row, then its step rows.
-- Notifies: pgflow_events (at commit), pgflow_cancels (the run_id).
-- Raises: PF404 for an unknown run.
-- Idempotent: yes; a repeat finds the run ended and returns false.
create function pgflow.cancel_run(run_id uuid, reason text default null) returns boolean
language plpgsql
volatile
set search_path to ''
-- rows by their key, whatever the statistics (docs/design/sql-contract.md, plan stability)
set enable_seqscan to off
as $$
declare
  v_status text;
  v_seq bigint;
  v_tx xid8 := pgflow._events_tx();
begin
  select r.status, r.last_seq into v_status, v_seq
  from pgflow.runs as r where r.run_id = cancel_run.run_id for update;
  if not found then
    raise exception 'unknown run %', cancel_run.run_id using errcode = 'PF404';
  end if;
  if v_status <> 'started' then
    return false;
  end if;

  with cancelled as (
    update pgflow.step_states as s
    set status = 'cancelled', leased_by = null, lease_expires_at = null
    where s.run_id = cancel_run.run_id
      and s.status in ('created', 'started', 'retrying', 'waiting')
    returning s.step_slug, s.flow_slug, case when s.attempt > 0 then s.attempt end as attempt
  ), inserted as (
    insert into pgflow.run_events (run_id, seq, event, step_slug, attempt, tx, payload)
    select cancel_run.run_id, v_seq + row_number() over (order by st.step_index), 'step:cancelled',
      c.step_slug, c.attempt, v_tx, '{}'::jsonb
    from cancelled as c
    join pgflow.steps as st on st.flow_slug = c.flow_slug and st.step_slug = c.step_slug
    returning seq
  )
  select coalesce(max(i.seq), v_seq) + 1 into v_seq from inserted as i;
  insert into pgflow.run_events (run_id, seq, event, step_slug, attempt, tx, payload)
  values (cancel_run.run_id, v_seq, 'run:cancelled', null, null, v_tx,
          jsonb_build_object('reason', cancel_run.reason));
  if v_tx is null then
    perform pgflow._note_events(cancel_run.run_id || ',' || (select r.last_seq + 1 from pgflow.runs as r
      where r.run_id = cancel_run.run_id) || ',' || v_seq || ';');
  end if;
  update pgflow.runs as r
  set status = 'cancelled', cancelled_at = now(), cancel_reason = cancel_run.reason, last_seq = v_seq
  where r.run_id = cancel_run.run_id;
  perform pg_notify('pgflow_cancels', cancel_run.run_id::text);
  return true;
end;
$$;
