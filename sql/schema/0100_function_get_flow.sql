-- get_flow: the shape the browser draws, in define_flow's normalised form; null if unknown.
-- Locks: none. Notifies: nothing. Raises: nothing. Idempotent: yes (reads only).
create function pgflow.get_flow(flow_slug text) returns jsonb
language sql
stable
set search_path to ''
as $$
  select f.definition from pgflow.flows as f where f.flow_slug = get_flow.flow_slug;
$$;
