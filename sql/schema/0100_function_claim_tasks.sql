-- claim_tasks: leases up to max_tasks (1 to 1000) ready tasks, oldest first, for lease_seconds
-- (0.1 to 86400).
-- Before claiming it sweeps leases that ran out, longest expired first: each counts as a failed
-- attempt ('lease expired') and is claimable again at once, or fails the step on its last attempt;
-- and input steps of any flow waiting past their timeout, which fail (and their runs with them).
-- A claimed retry (a row in status 'retrying': attempt 2 or later) gets its step:started, with
-- its attempt, in the same transaction; first attempts had theirs when they were queued.
-- Returns: one row per task with the handler's assembled input
--   {"run": <run input>, "<dep slug>": <dep output>, ...} (a map step's element task
--   '<slug>[<i>]': the map step's, without the array it maps over, with "item" and "index"), the
--   step's timeout, and the attempt
--   number of its last attempt (max_attempts counted from the run's start or last retry_run).
-- Locks: for update skip locked on ready rows; the run row of each expired lease it sweeps; for a
--   retry, its run's row with skip locked too (the event's seq): a claim never waits for a run,
--   so it cannot deadlock with a run-locked path waiting for the step row; a retry whose run is
--   being written at that instant stays queued for the next claim.
-- Notifies: pgflow_events (step:started of claimed retries; the sweep's step:retrying /
--   step:failed / run:failed, and an input's timeout); pgflow_tasks for a swept lease that is
--   claimable again.
-- Raises: PF400 for a missing worker_id or an argument out of its range.
-- Idempotent: no; each call takes new leases.
create function pgflow.claim_tasks(
  worker_id text,
  max_tasks int,
  flow_slugs text[] default null,
  lease_seconds double precision default 30
) returns table (
  run_id uuid,
  flow_slug text,
  step_slug text,
  attempt int,
  input jsonb,
  timeout int,
  max_attempts int
)
language plpgsql
volatile
set search_path to ''
-- every join here goes from a batch to rows by their key: a loop, whatever the row estimates
-- (docs/design/sql-contract.md, plan stability)
set enable_hashjoin to off
set enable_mergejoin to off
set enable_seqscan to off
-- one plan per statement for the session, made once: these statements take longer to plan
-- than a small batch takes to run, and the settings above keep the plan a loop over keys
set plan_cache_mode to force_generic_plan
as $$
declare
  -- a variable, not clock_timestamp() in the queries: a volatile call there defeats the indexes
  v_now timestamptz := clock_timestamp();
  v_expired record;
  v_status text;
  v_expires_at timestamptz;
  -- the claimed batch
  v_run_ids uuid[];
  v_step_slugs text[];
  v_retries boolean[];
begin
  -- ARGUMENTS
  if claim_tasks.worker_id is null or claim_tasks.worker_id = '' then
    perform pgflow._bad_argument('claim_tasks', 'worker_id', 'a non-empty string', quote_literal(claim_tasks.worker_id));
  end if;
  if (claim_tasks.max_tasks between 1 and 1000) is not true then
    perform pgflow._bad_argument('claim_tasks', 'max_tasks', 'an integer from 1 to 1000', claim_tasks.max_tasks::text);
  end if;
  if (claim_tasks.lease_seconds between 0.1 and 86400) is not true then
    perform pgflow._bad_argument('claim_tasks', 'lease_seconds', 'a number of seconds from 0.1 to 86400',
                                 claim_tasks.lease_seconds::text);
  end if;

  -- SWEEP: leases whose holder vanished, rechecked under each run's lock
  for v_expired in
    select e.run_id, e.step_slug from (
      -- in the lease index's order, so that it is read from its start and stops at the first
      -- live lease: a scan of the table costs as much as the queue is long, every call
      select s.run_id, s.step_slug from pgflow.step_states as s
      where s.lease_expires_at < v_now
        and (claim_tasks.flow_slugs is null or s.flow_slug = any(claim_tasks.flow_slugs))
      order by s.lease_expires_at
      limit 100
    ) as e
    order by e.run_id
  loop
    perform 1 from pgflow.runs as r
    where r.run_id = v_expired.run_id and r.status = 'started'
    for update;
    if found then
      -- read by its key, checked here: a lease condition in the query would let the planner
      -- scan the leased-step index instead, row after row, for every expired lease
      select s.status, s.lease_expires_at into v_status, v_expires_at from pgflow.step_states as s
      where s.run_id = v_expired.run_id and s.step_slug = v_expired.step_slug;
      if v_status = 'started' and v_expires_at < clock_timestamp() then
        perform pgflow._fail_attempt(v_expired.run_id, v_expired.step_slug, 'lease expired', true);
      end if;
    end if;
  end loop;

  -- SWEEP: input steps waiting past their deadline (available_at), rechecked under each run's
  -- lock; of every flow, not only the caller's: failing one needs no handler, and a flow made
  -- of input steps alone has no worker of its own
  for v_expired in
    select e.run_id, e.step_slug from (
      select s.run_id, s.step_slug from pgflow.step_states as s
      where s.status = 'waiting' and s.available_at < v_now
      order by s.available_at
      limit 100
    ) as e
    order by e.run_id
  loop
    perform 1 from pgflow.runs as r
    where r.run_id = v_expired.run_id and r.status = 'started'
    for update;
    if found then
      select s.status, s.available_at into v_status, v_expires_at from pgflow.step_states as s
      where s.run_id = v_expired.run_id and s.step_slug = v_expired.step_slug;
      if v_status = 'waiting' and v_expires_at < clock_timestamp() then
        perform pgflow._time_out_input(v_expired.run_id, v_expired.step_slug);
      end if;
    end if;
  end loop;

  -- CLAIM (what the sweep made claimable again included). A retry's run lock and event come
  -- from function calls made only for rows that were retrying: a first attempt pays one
  -- comparison. The run lock is taken before the limit counts the row, so a retry whose run is
  -- busy leaves its slot to the next ready task instead of shrinking the batch.
  -- PLAN: the ready rows are read from the ready index in its order until the limit, locked,
  -- and kept in arrays: the statements after see the batch as what it is, a few rows (an
  -- array's length, or 10 in a generic plan), never a tenth of the ready rows (what a generic
  -- plan guesses for `limit $1`, and with it a hash join over the whole table). The leases are
  -- then written through the primary key, and each task's run and step read through theirs.
  v_now := clock_timestamp();
  select array_agg(c.run_id), array_agg(c.step_slug), array_agg(c.retry)
    into v_run_ids, v_step_slugs, v_retries
  from (
    select s.run_id, s.step_slug, s.status = 'retrying' as retry
    from pgflow.step_states as s
    where s.status in ('started', 'retrying')
      and s.lease_expires_at is null
      and s.available_at <= v_now
      and (claim_tasks.flow_slugs is null or s.flow_slug = any(claim_tasks.flow_slugs))
      and (s.status <> 'retrying' or pgflow._lock_run_for_retry(s.run_id))
    order by s.available_at
    limit claim_tasks.max_tasks
    for update skip locked
  ) as c;
  if v_run_ids is null then
    return;
  end if;

  -- LEASES
  return query
  with leased as (
    update pgflow.step_states as s
    set status = 'started',
        attempt = s.attempt + 1,
        leased_by = claim_tasks.worker_id,
        lease_expires_at = v_now + claim_tasks.lease_seconds * interval '1 second'
    from unnest(v_run_ids, v_step_slugs, v_retries) as c (run_id, step_slug, retry)
    where s.run_id = c.run_id and s.step_slug = c.step_slug
    -- RETURNING runs once per updated row: one event per claimed retry (read below, so that
    -- no plan can leave it out)
    returning s.run_id, s.flow_slug, s.step_slug, s.attempt, s.attempt_base, s.map_parent,
      s.map_index, s.item,
      case when c.retry then pgflow._announce_retry(s.run_id, s.step_slug, s.attempt) end
        as announced
  )
  -- an element task of a map step: its map step's input with the element as "item" and its
  -- "index", without the array mapped over (its dependency's key, or "run"), which would be
  -- repeated in every element's input
  select l.run_id, l.flow_slug, l.step_slug, l.attempt,
    case when st.map_over = 'run' then '{}'::jsonb else jsonb_build_object('run', (
      select r.input from pgflow.runs as r where r.run_id = l.run_id
    )) end || coalesce((
      select jsonb_object_agg(d.step_slug, d.output)
      from pgflow.step_states as d
      where d.run_id = l.run_id and d.step_slug = any(st.depends_on)
        and d.step_slug is distinct from st.map_over
    ), '{}'::jsonb)
    || case when l.map_parent is null then '{}'::jsonb
            else jsonb_build_object('item', l.item, 'index', l.map_index) end,
    st.timeout,
    st.max_attempts + l.attempt_base
  from leased as l
  cross join lateral (
    select t.depends_on, t.timeout, t.max_attempts, t.map_over from pgflow.steps as t
    where t.flow_slug = l.flow_slug and t.step_slug = coalesce(l.map_parent, l.step_slug)
    limit 1
  ) as st
  where l.announced is not false;

  -- DURABILITY: a claim that wrote no event commits without waiting for its WAL to reach disk.
  -- A crash can then lose only leases: their tasks are claimable again, and a report under a
  -- lost lease is stale, so the step runs again (at least once, as for an expired lease). A
  -- claim that wrote events (a retry's step:started, the sweep's) is notified, so it stays
  -- durable: no subscriber may see an event a crash then takes back.
  if coalesce(current_setting('pgflow.pending_events', true), '') = ''
     and not exists (select from pgflow.run_events as e where e.tx = pg_current_xact_id()) then
    perform set_config('synchronous_commit', 'off', true);
  end if;
end;
$$;
