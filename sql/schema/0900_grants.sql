-- Least privilege (docs/reference/sql-api.md#roles-and-grants): the worker and the gateway run
-- as roles that may call the functions their process needs and write no table directly.
--
-- PUBLIC: PostgreSQL lets every role execute a new function; no pgflow function keeps that.
--
-- search_path: `pg_catalog, pg_temp` on every function, in place of the '' of its file. With ''
-- the session's temporary schema is searched first, before pg_catalog, so in a security definer
-- function a temporary table named `jsonb` (created by the caller: TEMP is granted to PUBLIC)
-- would stand in for the type jsonb. Our names are all schema-qualified; pg_temp last means no
-- temporary object can shadow a built-in one. A migration that creates or replaces a function
-- repeats this block (`create or replace` resets search_path and security definer, not grants).
do $$
declare
  v_function regprocedure;
begin
  for v_function in
    select p.oid::regprocedure from pg_catalog.pg_proc as p
    where p.pronamespace = 'pgflow'::regnamespace
  loop
    execute format('revoke all on function %s from public', v_function);
    execute format('alter function %s set search_path to pg_catalog, pg_temp', v_function);
  end loop;
end;
$$;

-- SECURITY DEFINER: the public functions run as the schema's owner, so EXECUTE on one is all a
-- role needs; what it may do is what the function does. The private helpers run inside them as
-- the owner already and stay executable by the owner alone. The trigger's function is one too:
-- a deferred trigger fires at commit, outside the function that wrote the event, as the role of
-- the session, which may not read pgflow.run_events.
alter function pgflow.define_flow security definer;
alter function pgflow.get_flow security definer;
alter function pgflow.run_flow security definer;
alter function pgflow.run_flows security definer;
alter function pgflow.start_runs security definer;
alter function pgflow.cancel_run security definer;
alter function pgflow.submit_input security definer;
alter function pgflow.retry_run security definer;
alter function pgflow.get_run security definer;
alter function pgflow.get_run_events security definer;
alter function pgflow.get_runs_events security definer;
alter function pgflow.list_runs security definer;
alter function pgflow.claim_tasks security definer;
alter function pgflow.complete_step security definer;
alter function pgflow.fail_step security definer;
alter function pgflow.report_steps security definer;
alter function pgflow.report_and_claim security definer;
alter function pgflow.stream_steps security definer;
alter function pgflow.extend_leases security definer;
alter function pgflow.release_tasks security definer;
alter function pgflow.prune_runs security definer;
alter function pgflow._notify_events security definer;

-- ROLES: pgflow_worker, pgflow_gateway and pgflow_pruner, those that exist
select pgflow._grant_roles();
