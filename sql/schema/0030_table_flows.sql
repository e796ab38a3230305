-- flows: a flow's shapes, one row per version, normalised by define_flow so that the same shape
-- always compares equal. definition_hash is the sha-256 of the document (its jsonb text) that
-- created the version: the same document again is answered from the row without validating it.
--
-- Versions: name is the flow's slug (what users name), version counts its shapes from 1, and
-- flow_slug is the version's key, which its steps and its runs' step_states carry (and which
-- pgflow_tasks and claim_tasks speak): the name itself for version 1, 'name@N' after (a slug
-- cannot hold '@'), so a flow that never changed keeps the one key it always had.

create table pgflow.flows (
  flow_slug text primary key,
  output_step text,
  definition jsonb not null,
  created_at timestamptz not null default now(),
  definition_hash bytea,
  name text not null,
  version int not null,
  constraint version_is_positive check (version >= 1)
);

-- get_flow, define_flow and start_runs find a flow's versions by its name, the newest first;
-- runs reference their version through it.
create unique index flows_name_version_idx on pgflow.flows (name, version);
