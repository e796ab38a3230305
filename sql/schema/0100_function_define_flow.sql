-- define_flow: creates a flow's shape, or checks that it equals the stored one.
-- Input: {"slug", "steps": [{"slug", "depends_on", "max_attempts", "base_delay", "timeout",
--         "kind" ("task", or "input": a step that waits for submit_input), "schema" (an input
--         step's JSON Schema)}],
--         "output_step", and optional flow-wide defaults "max_attempts", "base_delay", "timeout"}.
-- Returns: the normalised shape, as get_flow returns it.
-- Cost: linear in the steps and dependencies; the document a flow was created from (its jsonb
--   text, so key order and spacing do not matter) is recognised by its stored sha-256 and
--   answered with the stored shape, without validating or comparing anything again.
-- Locks: a transaction advisory lock on the slug, so two processes defining at once agree (not
--   taken on the fast path: a stored shape never changes).
-- Notifies: nothing.
-- Raises: PF400 for a bad definition (slugs, types, ranges, unknown deps, cycles, output_step);
--         PF409 when the slug exists with another shape (the message lists the differences).
-- Idempotent: yes, for the same shape.
create function pgflow.define_flow(definition jsonb) returns jsonb
language plpgsql
volatile
set search_path to ''
as $$
declare
  v_hash bytea := sha256(convert_to(define_flow.definition::text, 'UTF8'));
  v_flow_slug text;
  v_normalised jsonb;
  v_existing jsonb;
  v_existing_hash bytea;
  v_diff text;
begin
  -- FAST PATH: the very document this flow was defined from
  if jsonb_typeof(define_flow.definition -> 'slug') = 'string' then
    select f.definition into v_existing from pgflow.flows as f
    where f.flow_slug = define_flow.definition ->> 'slug' and f.definition_hash = v_hash;
    if found then
      return v_existing;
    end if;
  end if;

  v_normalised := pgflow._normalise_flow(define_flow.definition);
  v_flow_slug := v_normalised ->> 'slug';

  -- STORE OR COMPARE, serialised per slug
  perform pg_advisory_xact_lock(hashtextextended('pgflow.define_flow:' || v_flow_slug, 0));
  select f.definition, f.definition_hash into v_existing, v_existing_hash
  from pgflow.flows as f where f.flow_slug = v_flow_slug;
  if found then
    v_diff := pgflow._shape_diff(v_existing, v_normalised);
    if v_diff <> '' then
      raise exception 'flow % already exists with a different shape (%); give the new shape a new slug, e.g. %',
        quote_literal(v_flow_slug), v_diff, quote_literal(v_flow_slug || '_v2')
        using errcode = 'PF409';
    end if;
    if v_existing_hash is null then
      update pgflow.flows as f set definition_hash = v_hash where f.flow_slug = v_flow_slug;
    end if;
    return v_existing;
  end if;

  insert into pgflow.flows (flow_slug, output_step, definition, definition_hash)
  values (v_flow_slug, v_normalised ->> 'output_step', v_normalised, v_hash);
  with s as (
    select e.i, e.s from jsonb_array_elements(v_normalised -> 'steps') with ordinality as e (s, i)
  ), dependents as (
    select d.slug, array_agg(s.s ->> 'slug' order by s.i) as slugs
    from s cross join lateral jsonb_array_elements_text(s.s -> 'depends_on') as d (slug)
    group by d.slug
  )
  insert into pgflow.steps (flow_slug, step_slug, step_index, depends_on, dependents, max_attempts, base_delay, timeout,
                            kind, input_schema)
  select
    v_flow_slug,
    s.s ->> 'slug',
    s.i,
    array(select jsonb_array_elements_text(s.s -> 'depends_on')),
    coalesce(d.slugs, '{}'),
    (s.s ->> 'max_attempts')::int,
    (s.s ->> 'base_delay')::double precision,
    (s.s ->> 'timeout')::int,
    coalesce(s.s ->> 'kind', 'task'),
    s.s -> 'schema'
  from s left join dependents as d on d.slug = s.s ->> 'slug';
  return v_normalised;
end;
$$;
