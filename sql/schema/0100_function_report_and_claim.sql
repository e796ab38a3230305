-- report_and_claim: a worker's report (report_steps) and its next claim (claim_tasks) in one
-- call and one transaction: the steps the report made ready are claimed at once by the worker
-- that reported them (with the oldest other ready tasks first, as any claim), without a
-- notification, a wake-up and a claim of their own. Up to max_tasks (0 to 1000; 0: report only).
-- Returns: the report's applied array (as report_steps) on every row, and one row per claimed
--   task (as claim_tasks), or a single row with null task columns when nothing was claimed.
-- Locks: as report_steps, then as claim_tasks.
-- Notifies: pgflow_events (both parts' events, one notification); pgflow_tasks for each flow the
--   report made ready whose tasks this claim may have left: those outside flow_slugs, and every
--   one when the claim took max_tasks (more may be waiting). When the claim took fewer, it took
--   every ready task of its flows not locked by another claim: a wake-up would find nothing.
-- Raises: as report_steps and claim_tasks; PF400 for max_tasks out of its range.
-- Idempotent: no; the report part is, the claim takes new leases.
create function pgflow.report_and_claim(
  worker_id text,
  run_ids uuid[],
  step_slugs text[],
  attempts int[],
  outputs jsonb[],
  errors text[],
  max_tasks int,
  flow_slugs text[] default null,
  lease_seconds double precision default 30
) returns table (
  applied boolean[],
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
as $$
declare
  v_applied boolean[];
  v_ready_flows text[];
  v_claimed bigint := 0;
begin
  if (report_and_claim.max_tasks between 0 and 1000) is not true then
    perform pgflow._bad_argument('report_and_claim', 'max_tasks', 'an integer from 0 to 1000',
                                 report_and_claim.max_tasks::text);
  end if;

  perform set_config('pgflow.hold_task_wakeups', 'on', true);
  v_applied := pgflow.report_steps(report_and_claim.worker_id, report_and_claim.run_ids,
    report_and_claim.step_slugs, report_and_claim.attempts, report_and_claim.outputs,
    report_and_claim.errors);
  perform set_config('pgflow.hold_task_wakeups', '', true);
  v_ready_flows := nullif(current_setting('pgflow.held_task_wakeups', true), '')::text[];
  perform set_config('pgflow.held_task_wakeups', '', true);

  if report_and_claim.max_tasks > 0 then
    return query
    select v_applied, c.run_id, c.flow_slug, c.step_slug, c.attempt, c.input, c.timeout,
      c.max_attempts
    from pgflow.claim_tasks(report_and_claim.worker_id, report_and_claim.max_tasks,
                            report_and_claim.flow_slugs, report_and_claim.lease_seconds) as c;
    get diagnostics v_claimed = row_count;
  end if;

  perform pg_notify('pgflow_tasks', f)
  from unnest(v_ready_flows) as f
  where v_claimed >= report_and_claim.max_tasks
     or (report_and_claim.flow_slugs is not null and not f = any(report_and_claim.flow_slugs));

  if v_claimed = 0 then
    return query select v_applied, null::uuid, null::text, null::text, null::int, null::jsonb,
      null::int, null::int;
  end if;
end;
$$;
