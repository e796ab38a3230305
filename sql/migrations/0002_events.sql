-- 0002_events: the event log writer and the one-NOTIFY-per-transaction mechanism.
--
-- NOTIFY serialises commits on a global lock, so a transaction that completes fifty steps must
-- send one notification, not fifty. Every event row records its top-level transaction (tx), and
-- writers raise a transaction-local flag; a deferred constraint trigger on run_events fires at
-- commit, and its first firing reads the transaction's events back through the tx index, sends
-- them as one NOTIFY and lowers the flag, so the later firings of the same transaction find
-- nothing to do. A rolled-back subtransaction takes its rows with it, so what is notified is
-- exactly what commits. The work is linear in the transaction's events, however many.

-- _event: appends one event to a run's log; it is notified at commit.
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
begin
  insert into pgflow.run_events (run_id, seq, event, step_slug, payload)
  values (p_run_id, p_seq, p_event, p_step_slug, jsonb_build_object(
    'run_id', p_run_id,
    'seq', p_seq,
    'event', p_event,
    'step_slug', p_step_slug,
    'status', p_status,
    'output', p_output,
    'error', p_error,
    'attempt', p_attempt,
    'at', to_char(clock_timestamp() at time zone 'utc', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
  ));
  perform set_config('pgflow.events_pending', 'on', true);
end;
$$;

-- _notify_events: sends this transaction's events as one pgflow_events notification.
-- Payload (version 1, docs/protocol.md): {"v":1,"events":[...]} when it fits in 7900 bytes,
-- otherwise {"v":1,"refs":[{"run_id","from","to"}, ...]} and the listener reads the log.
-- Only when even the refs overflow (hundreds of runs in one transaction) is it split in several.
-- Idempotent: yes, within a transaction (the first firing lowers the flag). Under
-- `set constraints all immediate` it fires per row and a later firing may repeat earlier
-- events: listeners drop what they have by seq.
create function pgflow._notify_events() returns trigger
language plpgsql
set search_path to ''
as $$
declare
  v_events text;
  v_bytes bigint;
  v_chunk jsonb := '[]'::jsonb;
  v_ref jsonb;
begin
  if current_setting('pgflow.events_pending', true) is distinct from 'on' then
    return null;
  end if;
  perform set_config('pgflow.events_pending', '', true);

  select string_agg(e.payload::text, ',' order by e.run_id, e.seq), sum(octet_length(e.payload::text))
    into v_events, v_bytes
  from pgflow.run_events as e
  where e.tx = pg_current_xact_id();
  if v_events is null then
    return null;
  end if;
  if v_bytes + 40 <= 7900 then
    perform pg_notify('pgflow_events', '{"v": 1, "events": [' || v_events || ']}');
    return null;
  end if;

  -- BY REFERENCE: per run, the seq range this transaction wrote (contiguous: the run was locked)
  for v_ref in
    select jsonb_build_object('run_id', e.run_id, 'from', min(e.seq), 'to', max(e.seq))
    from pgflow.run_events as e
    where e.tx = pg_current_xact_id()
    group by e.run_id
    order by e.run_id
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
