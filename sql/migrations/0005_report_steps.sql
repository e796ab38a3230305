-- 0005_report_steps: a worker's batch of results in one call, one transaction, one NOTIFY.

-- report_steps: completes (errors[i] is null) or fails (errors[i] is not null) many leased
-- steps, in run_id order — the engine's lock order, so two workers reporting overlapping runs
-- cannot deadlock.
-- Returns: for each input position, whether it was applied (false: a stale report).
-- Locks, notifies, raises: as complete_step and fail_step, per item.
create function pgflow.report_steps(
  worker_id text,
  run_ids uuid[],
  step_slugs text[],
  attempts int[],
  outputs jsonb[],
  errors text[]
) returns boolean[]
language plpgsql
volatile
set search_path to ''
as $$
declare
  v_applied boolean[] := array_fill(false, array[coalesce(cardinality(report_steps.run_ids), 0)]);
  v_i int;
begin
  if cardinality(report_steps.run_ids) is distinct from cardinality(report_steps.step_slugs)
     or cardinality(report_steps.run_ids) is distinct from cardinality(report_steps.attempts)
     or cardinality(report_steps.run_ids) is distinct from cardinality(report_steps.outputs)
     or cardinality(report_steps.run_ids) is distinct from cardinality(report_steps.errors) then
    raise exception 'report_steps needs arrays of equal length' using errcode = 'PF400';
  end if;
  for v_i in
    select i from generate_subscripts(report_steps.run_ids, 1) as i
    order by report_steps.run_ids[i], i
  loop
    if report_steps.errors[v_i] is null then
      v_applied[v_i] := pgflow.complete_step(report_steps.run_ids[v_i], report_steps.step_slugs[v_i],
        report_steps.outputs[v_i], report_steps.worker_id, report_steps.attempts[v_i]);
    else
      v_applied[v_i] := pgflow.fail_step(report_steps.run_ids[v_i], report_steps.step_slugs[v_i],
        report_steps.errors[v_i], report_steps.worker_id, report_steps.attempts[v_i]);
    end if;
  end loop;
  return v_applied;
end;
$$;
