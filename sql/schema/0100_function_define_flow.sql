-- define_flow: records a flow's shape, or finds it among the flow's versions. A shape that
-- differs from every version stored under its slug becomes the next version, which new runs
-- start on (runs already going finish on theirs); the same shape again is answered with the
-- version that has it, so a worker running older code serves that older version.
-- Input: {"slug", "steps": [{"slug", "depends_on", "max_attempts", "base_delay", "timeout",
--         "kind" ("task"; "input": a step that waits for submit_input; "map": a task per element
--         of "over"'s array; "http": a task dispatched to "url"), "schema" (an input step's
--         JSON Schema), "over" (a map step's: "run" or one of its depends_on), "url" (an HTTP
--         step's)}],
--         "output_step", and optional flow-wide defaults "max_attempts", "base_delay", "timeout"}.
-- Returns: the normalised shape with its "version", as get_flow returns it.
-- Cost: linear in the steps and dependencies, and in the versions when the shape is new; the
--   document a version was created from (its jsonb text, so key order and spacing do not
--   matter) is recognised by its stored sha-256 and answered with the stored shape, without
--   validating or comparing anything again.
-- Locks: a transaction advisory lock on the slug, so two processes defining at once agree (not
--   taken on the fast path: a stored shape never changes).
-- Notifies: nothing.
-- Raises: PF400 for a bad definition (slugs, types, ranges, unknown deps, cycles, output_step).
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
  v_version record;
  v_newest int := 0;
  v_key text;
begin
  -- FAST PATH: the very document a version was defined from
  if jsonb_typeof(define_flow.definition -> 'slug') = 'string' then
    select f.definition into v_normalised from pgflow.flows as f
    where f.name = define_flow.definition ->> 'slug' and f.definition_hash = v_hash
    order by f.version desc
    limit 1;
    if found then
      return v_normalised;
    end if;
  end if;

  v_normalised := pgflow._normalise_flow(define_flow.definition);
  v_flow_slug := v_normalised ->> 'slug';

  -- FIND OR ADD THE VERSION, serialised per slug: the newest with this shape, else a new one
  perform pg_advisory_xact_lock(hashtextextended('pgflow.define_flow:' || v_flow_slug, 0));
  for v_version in
    select f.flow_slug, f.version, f.definition, f.definition_hash from pgflow.flows as f
    where f.name = v_flow_slug
    order by f.version desc
  loop
    v_newest := greatest(v_newest, v_version.version);
    if pgflow._shape_diff(v_version.definition, v_normalised) = '' then
      if v_version.definition_hash is null then
        update pgflow.flows as f set definition_hash = v_hash where f.flow_slug = v_version.flow_slug;
      end if;
      return v_version.definition;
    end if;
  end loop;

  v_key := case when v_newest = 0 then v_flow_slug else v_flow_slug || '@' || (v_newest + 1) end;
  v_normalised := v_normalised || jsonb_build_object('version', v_newest + 1);
  insert into pgflow.flows (flow_slug, output_step, definition, definition_hash, name, version)
  values (v_key, v_normalised ->> 'output_step', v_normalised, v_hash, v_flow_slug, v_newest + 1);
  with s as (
    select e.i, e.s from jsonb_array_elements(v_normalised -> 'steps') with ordinality as e (s, i)
  ), dependents as (
    select d.slug, array_agg(s.s ->> 'slug' order by s.i) as slugs
    from s cross join lateral jsonb_array_elements_text(s.s -> 'depends_on') as d (slug)
    group by d.slug
  )
  insert into pgflow.steps (flow_slug, step_slug, step_index, depends_on, dependents, max_attempts, base_delay, timeout,
                            kind, input_schema, map_over, http_url)
  select
    v_key,
    s.s ->> 'slug',
    s.i,
    array(select jsonb_array_elements_text(s.s -> 'depends_on')),
    coalesce(d.slugs, '{}'),
    (s.s ->> 'max_attempts')::int,
    (s.s ->> 'base_delay')::double precision,
    (s.s ->> 'timeout')::int,
    coalesce(s.s ->> 'kind', 'task'),
    s.s -> 'schema',
    s.s ->> 'over',
    s.s ->> 'url'
  from s left join dependents as d on d.slug = s.s ->> 'slug';
  return v_normalised;
end;
$$;
