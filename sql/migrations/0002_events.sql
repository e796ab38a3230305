-- 0002_events: the event log writer and the one-NOTIFY-per-transaction mechanism.
--
-- NOTIFY serialises commits on a global lock, so a transaction that completes fifty steps must
-- send one notification, not fifty. _event() appends each event to a transaction-local setting;
-- a deferred constraint trigger on run_events fires at commit, sends everything pending as one
-- NOTIFY and clears the setting, so the later firings of the same transaction find nothing to do.
-- A rolled-back subtransaction rolls back both its rows and its setting changes, so what is
-- notified is exactly what commits.

-- _event: appends one event to a run's log and queues it for this transaction's notification.
-- Locks: none of its own; the caller must hold the run's row lock (it owns p_seq).
-- Notifies: pgflow_events, at commit, through _notify_events.
-- Idempotent: no (a seq can be written once).
create function pgflow._event(
  p_run_id uuid,
  p_seq bigint,
  p_event text,
  p_step_slug text,
  p_status text,
  p_output jsonb,
  p_error text,
  p_attempt int
) returns void
language plpgsql
volatile
set search_path to ''
as $$
declare
  v_payload jsonb;
  v_text text;
  v_pending text;
begin
  v_payload := jsonb_build_object(
    'run_id', p_run_id,
    'seq', p_seq,
    'event', p_event,
    'step_slug', p_step_slug,
    'status', p_status,
    'output', p_output,
    'error', p_error,
    'attempt', p_attempt,
    'at', to_char(clock_timestamp() at time zone 'utc', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
  );
  insert into pgflow.run_events (run_id, seq, event, step_slug, payload)
  values (p_run_id, p_seq, p_event, p_step_slug, v_payload);

  -- An event too large for any notification travels by reference: queue only its ids.
  v_text := v_payload::text;
  if octet_length(v_text) > 7000 then
    v_text := jsonb_build_object('run_id', p_run_id, 'seq', p_seq, 'ref', true)::text;
    perform set_config('pgflow.pending_by_ref', 'on', true);
  end if;

  v_pending := current_setting('pgflow.pending_events', true);
  if v_pending is null or v_pending = '' then
    perform set_config('pgflow.pending_events', v_text, true);
  else
    perform set_config('pgflow.pending_events', v_pending || ',' || v_text, true);
  end if;
end;
$$;

-- _notify_events: sends this transaction's pending events as one pgflow_events notification.
-- Payload (version 1, docs/protocol.md): {"v":1,"events":[...]} when it fits in 7900 bytes,
-- otherwise {"v":1,"refs":[{"run_id","from","to"}, ...]} and the listener reads the log.
-- Only when even the refs overflow (hundreds of runs in one transaction) is it split in several.
-- Idempotent: yes, within a transaction (the first firing clears what is pending).
create function pgflow._notify_events() returns trigger
language plpgsql
set search_path to ''
as $$
declare
  v_pending text;
  v_payload text;
  v_chunk jsonb := '[]'::jsonb;
  v_ref jsonb;
begin
  v_pending := current_setting('pgflow.pending_events', true);
  if v_pending is null or v_pending = '' then
    return null;
  end if;
  perform set_config('pgflow.pending_events', '', true);

  v_payload := '{"v": 1, "events": [' || v_pending || ']}';
  if octet_length(v_payload) <= 7900
     and coalesce(current_setting('pgflow.pending_by_ref', true), '') <> 'on' then
    perform pg_notify('pgflow_events', v_payload);
    return null;
  end if;
  perform set_config('pgflow.pending_by_ref', '', true);

  -- BY REFERENCE: per run, the seq range this transaction wrote (contiguous: the run was locked)
  for v_ref in
    select jsonb_build_object('run_id', e.run_id, 'from', min(e.seq), 'to', max(e.seq))
    from (
      select (item ->> 'run_id')::uuid as run_id, (item ->> 'seq')::bigint as seq, ord
      from jsonb_array_elements(('[' || v_pending || ']')::jsonb) with ordinality as t (item, ord)
    ) as e
    group by e.run_id
    order by min(e.ord)
  loop
    if octet_length(jsonb_build_object('v', 1, 'refs', v_chunk || v_ref)::text) > 7900 then
      perform pg_notify('pgflow_events', jsonb_build_object('v', 1, 'refs', v_chunk)::text);
      v_chunk := '[]'::jsonb;
    end if;
    v_chunk := v_chunk || v_ref;
  end loop;
  if jsonb_array_length(v_chunk) > 0 then
    perform pg_notify('pgflow_events', jsonb_build_object('v', 1, 'refs', v_chunk)::text);
  end if;
  return null;
end;
$$;

create constraint trigger run_events_notify_at_commit
  after insert on pgflow.run_events
  deferrable initially deferred
  for each row execute function pgflow._notify_events();
