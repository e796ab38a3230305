-- stream_steps: appends many running steps' chunks to their runs' logs, a worker's flush of
-- every step that streamed since its last one: one call, one transaction, one notification,
-- however many chunks. Position i carries chunks[i] (a JSON array of one or more chunks, in
-- order) of attempt attempts[i] of (run_ids[i], step_slugs[i]), and becomes one step:stream
-- event {"chunks": [...]} in position order; positions of one step keep their order.
-- Only from the live lease holder of a step of a run still going, for the attempt it holds:
-- so every chunk of an attempt precedes its step:completed / step:failed / step:retrying.
-- Returns: for each position, whether it was written (false: stale, as for report_steps).
-- Locks: every run of the call, in run_id order (the engine's lock order), before anything else.
-- Notifies: pgflow_events (through the transaction's one notification).
-- Raises: PF400 when the arrays differ in length or a position's chunks is not a non-empty array.
-- Idempotent: no; each call appends.
create function pgflow.stream_steps(
  worker_id text,
  run_ids uuid[],
  step_slugs text[],
  attempts int[],
  chunks jsonb[]
) returns boolean[]
language plpgsql
volatile
set search_path to ''
-- every join here goes from a batch to rows by their key: a loop, whatever the row estimates
-- (docs/design/sql-contract.md, plan stability)
set enable_hashjoin to off
set enable_mergejoin to off
set enable_seqscan to off
set plan_cache_mode to force_generic_plan
as $$
declare
  v_count int := coalesce(cardinality(stream_steps.run_ids), 0);
  v_applied boolean[] := array_fill(false, array[coalesce(cardinality(stream_steps.run_ids), 0)]);
  v_written int[];
  v_i int;
  v_runs uuid[];
  v_last bigint[];
  v_ranges text;
  v_tx xid8;
  v_at timestamptz := clock_timestamp();
begin
  if v_count is distinct from coalesce(cardinality(stream_steps.step_slugs), 0)
     or v_count is distinct from coalesce(cardinality(stream_steps.attempts), 0)
     or v_count is distinct from coalesce(cardinality(stream_steps.chunks), 0) then
    raise exception 'stream_steps needs arrays of equal length' using errcode = 'PF400';
  end if;
  if v_count = 0 then
    return v_applied;
  end if;
  if exists (select from unnest(stream_steps.chunks) as c (value)
             where jsonb_typeof(c.value) is distinct from 'array' or jsonb_array_length(c.value) = 0)
  then
    raise exception 'stream_steps needs each position''s chunks as a non-empty JSON array'
      using errcode = 'PF400';
  end if;

  -- LOCK ACQUISITION: all the call's runs, in run_id order
  perform 1 from pgflow.runs as r
  where r.run_id = any(stream_steps.run_ids)
  order by r.run_id
  for update;

  -- LIVE positions: the step leased by this worker for this attempt, in a run still going
  select array_agg(p.i order by p.i)
    into v_written
  from generate_subscripts(stream_steps.run_ids, 1) as p (i)
  cross join lateral (
    select s.status, s.leased_by, s.lease_expires_at, s.attempt from pgflow.step_states as s
    where s.run_id = stream_steps.run_ids[p.i] and s.step_slug = stream_steps.step_slugs[p.i]
    limit 1
  ) as s
  cross join lateral (
    select r.status from pgflow.runs as r where r.run_id = stream_steps.run_ids[p.i] limit 1
  ) as r
  where r.status = 'started'
    and s.status = 'started'
    and s.leased_by = stream_steps.worker_id
    and s.lease_expires_at >= clock_timestamp()
    and s.attempt = stream_steps.attempts[p.i];
  if v_written is null then
    return v_applied;
  end if;

  -- EVENTS: one per live position, numbered after its run's last seq in position order
  v_tx := pgflow._events_tx();
  with numbered as (
    select w.i, stream_steps.run_ids[w.i] as run_id,
      r.last_seq + row_number() over (partition by stream_steps.run_ids[w.i] order by w.i) as seq
    from unnest(v_written) as w (i)
    cross join lateral (
      select r.last_seq from pgflow.runs as r where r.run_id = stream_steps.run_ids[w.i] limit 1
    ) as r
  ), inserted as (
    insert into pgflow.run_events (run_id, seq, at, attempt, event, step_slug, tx, payload)
    select n.run_id, n.seq, v_at, stream_steps.attempts[n.i], 'step:stream',
      stream_steps.step_slugs[n.i], v_tx, jsonb_build_object('chunks', stream_steps.chunks[n.i])
    from numbered as n
    returning run_id, seq
  ), per_run as (
    select i.run_id, min(i.seq) as first_seq, max(i.seq) as last_seq
    from inserted as i group by i.run_id
  )
  select array_agg(p.run_id order by p.run_id), array_agg(p.last_seq order by p.run_id),
    string_agg(p.run_id || ',' || p.first_seq || ',' || p.last_seq || ';', '' order by p.run_id)
    into v_runs, v_last, v_ranges
  from per_run as p;

  update pgflow.runs as r
  set last_seq = u.last_seq
  from unnest(v_runs, v_last) as u (run_id, last_seq)
  where r.run_id = u.run_id;

  foreach v_i in array v_written loop
    v_applied[v_i] := true;
  end loop;

  if v_tx is null then
    perform pgflow._note_events(v_ranges);
  end if;
  return v_applied;
end;
$$;
