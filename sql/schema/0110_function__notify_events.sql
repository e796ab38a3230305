-- _notify_events: sends this transaction's events as one pgflow_events notification; the
-- function of the trigger run_events_notify_at_commit.
-- Payload (version 1, docs/reference/events.md): {"v":1,"events":[...]} when it fits in 7900
-- bytes, otherwise {"v":1,"refs":[{"run_id","from","to"}, ...]} and the listener reads the log.
-- Only when even the refs overflow (hundreds of runs in one transaction) is it split in several.
-- Fires once per transaction (the trigger's WHEN), and lowers pgflow.notify_queued so that
-- events written after it queue another firing.
-- Locks: none; reads the transaction's own event rows through run_events_tx_idx.
-- Notifies: pgflow_events.
-- Raises: nothing.
-- Idempotent: yes, within a transaction (it lowers the writers' flag). Under
-- `set constraints all immediate` it fires per statement and a later firing may repeat earlier
-- events: listeners drop what they have by seq.
create function pgflow._notify_events() returns trigger
language plpgsql
set search_path to ''
as $$
declare
  v_events text;
  v_count bigint;
  v_bytes bigint;
  v_ref text;
  v_chunk text := '';
  v_chunk_refs int := 0;
  v_chunk_bytes int := 0;
begin
  perform set_config('pgflow.notify_queued', '', true);
  if current_setting('pgflow.events_pending', true) is distinct from 'on' then
    return null;
  end if;
  perform set_config('pgflow.events_pending', '', true);

  -- MORE THAN FIT: no event prints shorter than 150 bytes (its nine keys and the run_id alone
  -- take more), so past 52 events the text cannot fit and is not built: a worker's report of a
  -- few hundred steps would print every event only to send refs
  select count(*) into v_count from pgflow.run_events as e where e.tx = pg_current_xact_id();
  if v_count = 0 then
    return null;
  end if;
  if v_count <= 7900 / 150 then
    -- each event rebuilt from its compact row (the same rebuild as get_run_events') and printed
    -- once, for both the text and its length
    select string_agg(p.payload, ',' order by p.run_id, p.seq), sum(octet_length(p.payload))
      into v_events, v_bytes
    from (
      select e.run_id, e.seq, (jsonb_build_object(
          'run_id', e.run_id, 'seq', e.seq, 'event', e.event, 'step_slug', e.step_slug,
          'status', split_part(e.event, ':', 2), 'output', null, 'error', null, 'attempt', e.attempt,
          'at', to_char(e.at at time zone 'utc', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
        ) || e.payload)::text as payload
      from pgflow.run_events as e
      where e.tx = pg_current_xact_id()
    ) as p;
    if v_bytes + 40 <= 7900 then
      perform pg_notify('pgflow_events', '{"v": 1, "events": [' || v_events || ']}');
      return null;
    end if;
  end if;

  -- BY REFERENCE: per run, the seq range this transaction wrote (contiguous: the run was locked).
  -- A chunk is written as the very text jsonb prints for {"v": 1, "refs": [ref, ...]} (20 bytes
  -- around refs joined by ', '), so its length is summed as it grows rather than printed again
  -- for each ref (quadratic in the refs of a chunk).
  for v_ref in
    select jsonb_build_object('run_id', e.run_id, 'from', min(e.seq), 'to', max(e.seq))::text
    from pgflow.run_events as e
    where e.tx = pg_current_xact_id()
    group by e.run_id
    order by e.run_id
  loop
    if 20 + v_chunk_bytes + 2 * v_chunk_refs + octet_length(v_ref) > 7900 then
      perform pg_notify('pgflow_events', '{"v": 1, "refs": [' || v_chunk || ']}');
      v_chunk := '';
      v_chunk_refs := 0;
      v_chunk_bytes := 0;
    end if;
    v_chunk := case when v_chunk_refs = 0 then v_ref else v_chunk || ', ' || v_ref end;
    v_chunk_refs := v_chunk_refs + 1;
    v_chunk_bytes := v_chunk_bytes + octet_length(v_ref);
  end loop;
  if v_chunk_refs > 0 then
    perform pg_notify('pgflow_events', '{"v": 1, "refs": [' || v_chunk || ']}');
  end if;
  return null;
end;
$$;
