-- _notify_events: sends this transaction's events as one pgflow_events notification; the
-- function of the trigger run_events_notify_at_commit.
-- Payload (version 1, docs/reference/events.md): {"v":1,"events":[...]} when it fits in 7900
-- bytes, otherwise {"v":1,"refs":[{"run_id","from","to"}, ...]} and the listener reads the log.
-- Only when even the refs overflow (hundreds of runs in one transaction) is it split in several.
-- Fires once per transaction (the trigger's WHEN), and lowers pgflow.notify_queued so that
-- events written after it queue another firing.
-- Finds them by the seq ranges writers noted in pgflow.pending_events (_note_events) and, past
-- that setting's cap, by their tx (_events_tx, through the partial run_events_tx_idx).
-- Locks: none; reads the transaction's own event rows by primary key (inline payloads only).
-- Notifies: pgflow_events.
-- Raises: nothing.
-- Idempotent: yes, within a transaction (it empties pgflow.pending_events). Under
-- `set constraints all immediate` it fires per statement, and a later firing may repeat earlier
-- events written past the cap: listeners drop what they have by seq.
create function pgflow._notify_events() returns trigger
language plpgsql
set search_path to ''
-- from the ranges to their rows by primary key, whatever the estimates
set enable_hashjoin to off
set enable_mergejoin to off
set enable_seqscan to off
-- one plan per statement for the session, made once: these statements take longer to plan
-- than a small batch takes to run, and the settings above keep the plan a loop over keys
set plan_cache_mode to force_generic_plan
as $$
declare
  v_pending text := coalesce(current_setting('pgflow.pending_events', true), '');
  v_runs uuid[];
  v_from bigint[];
  v_to bigint[];
  v_count bigint;
  v_events text;
  v_bytes bigint;
  v_ref text;
  v_chunk text := '';
  v_chunk_refs int := 0;
  v_chunk_bytes int := 0;
begin
  perform set_config('pgflow.notify_queued', '', true);
  perform set_config('pgflow.pending_events', '', true);

  -- THE RANGES, one per run (a run's events in one transaction are contiguous: it was locked):
  -- those noted in the setting, and those of events that carry this transaction's id
  select array_agg(x.run_id order by x.run_id), array_agg(x.lo order by x.run_id),
    array_agg(x.hi order by x.run_id), sum(x.hi - x.lo + 1)
    into v_runs, v_from, v_to, v_count
  from (
    select r.run_id, min(r.lo) as lo, max(r.hi) as hi
    from (
      select split_part(p.ref, ',', 1)::uuid as run_id, split_part(p.ref, ',', 2)::bigint as lo,
        split_part(p.ref, ',', 3)::bigint as hi
      from string_to_table(v_pending, ';') as p (ref)
      where p.ref <> ''
      union all
      select e.run_id, e.seq, e.seq from pgflow.run_events as e where e.tx = pg_current_xact_id()
    ) as r
    group by r.run_id
  ) as x;
  if v_runs is null then
    return null;
  end if;

  -- INLINE, when they may fit: no event prints shorter than 150 bytes (its nine keys and the
  -- run_id alone take more), so past 52 events the text is not built: a worker's report of a
  -- few hundred steps would print every event only to send refs
  if v_count <= 7900 / 150 then
    -- each event as every reader gets it (get_runs_events, the one rebuild of the compact rows),
    -- printed once for both the text and its length
    select string_agg(p.payload, ',' order by p.pos, p.seq), sum(octet_length(p.payload))
      into v_events, v_bytes
    from (
      select e.pos, e.seq, e.event::text as payload
      from pgflow.get_runs_events(v_runs, array(select f - 1 from unnest(v_from) as f), v_to) as e
    ) as p;
    if v_bytes + 40 <= 7900 then
      perform pg_notify('pgflow_events', '{"v": 1, "events": [' || v_events || ']}');
      return null;
    end if;
  end if;

  -- BY REFERENCE: per run, the seq range this transaction wrote. A chunk is written as the very
  -- text jsonb prints for {"v": 1, "refs": [ref, ...]} (20 bytes around refs joined by ', '), so
  -- its length is summed as it grows rather than printed again for each ref (quadratic in the
  -- refs of a chunk).
  for v_ref in
    select jsonb_build_object('run_id', r.run_id, 'from', r.lo, 'to', r.hi)::text
    from unnest(v_runs, v_from, v_to) as r (run_id, lo, hi)
    order by r.run_id
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
