-- flows: a flow's shape, normalised by define_flow so that the same shape always compares equal.
-- definition_hash is the sha-256 of the document (its jsonb text) that created the flow: the same
-- document again is answered from the row without validating it.

create table pgflow.flows (
  flow_slug text primary key,
  output_step text,
  definition jsonb not null,
  created_at timestamptz not null default now(),
  definition_hash bytea
);
