-- get_flow: a version of a flow's shape, as the browser draws it, in define_flow's normalised
-- form with its "version": the newest, or the given version; null if unknown.
-- Locks: none. Notifies: nothing. Raises: nothing. Idempotent: yes (reads only).
create function pgflow.get_flow(flow_slug text, version int default null) returns jsonb
language sql
stable
set search_path to ''
as $$
  select f.definition from pgflow.flows as f
  where f.name = get_flow.flow_slug
    and (get_flow.version is null or f.version = get_flow.version)
  order by f.version desc
  limit 1;
$$;
