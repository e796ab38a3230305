-- run_flow: starts a run of a flow and queues its root steps.
-- Returns: the new run_id, time-ordered (a version 7 UUID).
-- Locks: none beyond the new rows.
-- Notifies: pgflow_events (run:started, step:started per root), pgflow_tasks (the flow slug).
-- Raises: PF404 for an unknown flow.
-- Idempotent: no; each call is a new run.
create function pgflow.run_flow(flow_slug text, input jsonb, owner text default null) returns uuid
language plpgsql
volatile
set search_path to ''
as $$
declare
  -- time-ordered (the UUID version 7 layout: milliseconds since 1970, then random bits), so new
  -- runs, their steps and their events land at the right edge of the indexes that lead with
  -- run_id, and the runs being worked on share a few hot index pages: with random ids each
  -- insert and lookup touched a random leaf of indexes as large as the history
  v_run_id uuid := encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid())
    placing substring(int8send((extract(epoch from clock_timestamp()) * 1000)::bigint) from 3)
    from 1 for 6), 52, 1), 53, 1), 'hex')::uuid;
  v_input jsonb := coalesce(run_flow.input, 'null'::jsonb);
  v_step_count int;
  v_roots text[];
  v_tx xid8 := pgflow._events_tx();
begin
  select count(*), array_agg(s.step_slug order by s.step_index) filter (where cardinality(s.depends_on) = 0)
    into v_step_count, v_roots
  from pgflow.steps as s
  where s.flow_slug = run_flow.flow_slug;
  if v_step_count = 0 then
    raise exception 'unknown flow %', quote_literal(run_flow.flow_slug) using errcode = 'PF404';
  end if;

  insert into pgflow.runs (run_id, flow_slug, input, owner, remaining_steps, last_seq)
  values (v_run_id, run_flow.flow_slug, v_input, run_flow.owner, v_step_count, 1 + cardinality(v_roots));

  insert into pgflow.step_states (run_id, step_slug, flow_slug, status, remaining_deps, available_at, started_at)
  select v_run_id, s.step_slug, s.flow_slug,
    case when cardinality(s.depends_on) = 0 then 'started' else 'created' end,
    cardinality(s.depends_on),
    case when cardinality(s.depends_on) = 0 then now() end,
    case when cardinality(s.depends_on) = 0 then now() end
  from pgflow.steps as s
  where s.flow_slug = run_flow.flow_slug;

  -- EVENTS: run:started and each root's step:started, in one insert (their payloads hold
  -- nothing, as _event stores them), noted as one range for the commit-time notification
  insert into pgflow.run_events (run_id, seq, event, step_slug, attempt, tx)
  select v_run_id, 1, 'run:started', null, null, v_tx
  union all
  select v_run_id, 1 + r.ord, 'step:started', r.slug, 1, v_tx
  from unnest(v_roots) with ordinality as r (slug, ord);
  if v_tx is null then
    perform pgflow._note_events(v_run_id || ',1,' || (1 + cardinality(v_roots)) || ';');
  end if;
  perform pg_notify('pgflow_tasks', run_flow.flow_slug);
  return v_run_id;
end;
$$;
