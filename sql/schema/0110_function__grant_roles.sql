-- _grant_roles: gives the roles pgflow_worker, pgflow_gateway and pgflow_pruner (so their
-- members too) exactly the privileges their processes need, and no more
-- (docs/reference/sql-api.md#roles-and-grants): each role's privileges in the schema are revoked
-- first, so this list is the whole of them. A role that does not exist is granted nothing, with
-- a NOTICE: roles belong to the cluster, and a migration does not create them (sql/roles.sql,
-- run by an administrator, does).
-- Run by the migrations and, after creating the roles later, by the schema's owner:
-- `select pgflow._grant_roles()`.
-- The public functions are security definer (0900_grants.sql): a role needs EXECUTE on a
-- function, never a privilege on the tables it writes. The direct reads of pgflow/db/store.py
-- are granted column by column.
-- Locks: none beyond GRANT's own. Notifies: nothing. Raises: nothing (NOTICE for a missing role).
-- Idempotent: yes.
create function pgflow._grant_roles() returns void
language plpgsql
set search_path to ''
as $$
declare
  v_role text;
  v_missing text[] := '{}';
  v_bookkeeping boolean := to_regclass('pgflow.schema_migrations') is not null;
begin
  -- RESET: what each existing role holds in the schema
  foreach v_role in array array['pgflow_worker', 'pgflow_gateway', 'pgflow_pruner'] loop
    if exists (select from pg_catalog.pg_roles as r where r.rolname = v_role) then
      execute format('revoke all on all functions in schema pgflow from %I', v_role);
      execute format('revoke all on all tables in schema pgflow from %I', v_role);
      execute format('grant usage on schema pgflow to %I', v_role);
      if v_bookkeeping then
        -- `pgflow worker` and `serve` migrate on start: reading the record finds nothing to do
        execute format('grant select on pgflow.schema_migrations to %I', v_role);
      end if;
    else
      v_missing := v_missing || v_role;
    end if;
  end loop;

  -- WORKER: claims, reports, keeps and gives back leases; defines the flows it runs
  if not 'pgflow_worker' = any (v_missing) then
    grant execute on function
      pgflow.claim_tasks, pgflow.report_steps, pgflow.report_and_claim, pgflow.complete_step,
      pgflow.fail_step, pgflow.stream_steps,
      pgflow.extend_leases, pgflow.release_tasks, pgflow.define_flow, pgflow.get_flow
      to pgflow_worker;
    -- Store.retry_delays: when a reported failure's retry may be claimed
    grant select (run_id, step_slug, attempt, status, available_at, lease_expires_at)
      on pgflow.step_states to pgflow_worker;
  end if;

  -- GATEWAY: starts, steers (cancels, answers, retries), reads and lists runs, replays their
  -- events; defines the flows it loads
  if not 'pgflow_gateway' = any (v_missing) then
    grant execute on function
      pgflow.run_flow, pgflow.run_flows, pgflow.start_runs, pgflow.get_run, pgflow.get_run_events,
      pgflow.get_runs_events, pgflow.list_runs, pgflow.cancel_run, pgflow.submit_input,
      pgflow.retry_run, pgflow.define_flow, pgflow.get_flow
      to pgflow_gateway;
    -- Store.get_run_replay and get_run_owner: a subscription's access check and its replay
    grant select (run_id, flow_slug, flow_version, owner, last_seq) on pgflow.runs to pgflow_gateway;
  end if;

  -- PRUNER: deletes finished runs (`pgflow prune`, the worker's --retention)
  if not 'pgflow_pruner' = any (v_missing) then
    grant execute on function pgflow.prune_runs to pgflow_pruner;
  end if;

  if cardinality(v_missing) > 0 then
    raise notice 'pgflow: granted nothing to %: no such role', array_to_string(v_missing, ', ')
      using hint = 'create the roles (sql/roles.sql), then run `select pgflow._grant_roles()` '
                   || 'as the owner of the schema pgflow';
  end if;
end;
$$;
