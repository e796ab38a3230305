-- 0003_define_flow: flow shapes — validation, normalisation, storage and reading back.

-- _flow_error: raises a definition error (SQLSTATE PF400) naming the flow.
create function pgflow._flow_error(p_flow_slug text, p_message text) returns void
language plpgsql
set search_path to ''
as $$
begin
  raise exception 'invalid flow %: %', coalesce(quote_literal(p_flow_slug), '(no slug)'), p_message
    using errcode = 'PF400';
end;
$$;

-- _shape_diff: what differs between two normalised definitions, as readable text; '' if none.
create function pgflow._shape_diff(p_old jsonb, p_new jsonb) returns text
language sql
immutable
set search_path to ''
as $$
  with old_steps as (
    select s ->> 'slug' as slug, s - 'slug' as opts
    from jsonb_array_elements(p_old -> 'steps') as s
  ), new_steps as (
    select s ->> 'slug' as slug, s - 'slug' as opts
    from jsonb_array_elements(p_new -> 'steps') as s
  ), diffs as (
    select 1 as o, n.slug as k, format('step %s added', quote_literal(n.slug)) as d
    from new_steps as n left join old_steps as o using (slug) where o.slug is null
    union all
    select 2, o.slug, format('step %s removed', quote_literal(o.slug))
    from old_steps as o left join new_steps as n using (slug) where n.slug is null
    union all
    select 3, o.slug || kv.key, format('step %s %s %s -> %s', quote_literal(o.slug), kv.key,
      kv.value::text, n.opts -> kv.key)
    from old_steps as o join new_steps as n using (slug), jsonb_each(o.opts) as kv
    where n.opts -> kv.key is distinct from kv.value
    union all
    select 4, '', format('output_step %s -> %s', p_old -> 'output_step', p_new -> 'output_step')
    where p_old -> 'output_step' is distinct from p_new -> 'output_step'
  )
  select coalesce(string_agg(d, '; ' order by o, k), '') from diffs;
$$;

-- define_flow: creates a flow's shape, or checks that it equals the stored one.
-- Input: {"slug", "steps": [{"slug", "depends_on", "max_attempts", "base_delay", "timeout"}],
--         "output_step", and optional flow-wide defaults "max_attempts", "base_delay", "timeout"}.
-- Returns: the normalised shape, as get_flow returns it.
-- Locks: a transaction advisory lock on the slug, so two processes defining at once agree.
-- Raises: PF400 for a bad definition (slugs, types, unknown deps, cycles, output_step);
--         PF409 when the slug exists with another shape (the message lists the differences).
-- Idempotent: yes, for the same shape.
create function pgflow.define_flow(definition jsonb) returns jsonb
language plpgsql
volatile
set search_path to ''
as $$
declare
  c_slug_pattern constant text := '^[A-Za-z_][A-Za-z0-9_-]{0,127}$';
  v_flow_slug text;
  v_step jsonb;
  v_dep jsonb;
  v_slug text;
  v_slugs text[] := '{}';
  v_deps text[];
  v_steps jsonb := '[]'::jsonb;
  v_output_step text;
  v_leaves text[];
  v_default_attempts jsonb;
  v_default_delay jsonb;
  v_default_timeout jsonb;
  v_value jsonb;
  v_max_attempts int;
  v_base_delay double precision;
  v_timeout int;
  v_normalised jsonb;
  v_existing jsonb;
  v_diff text;
  v_done text[];
  v_ready text[];
  v_cycle text[];
begin
  -- SHAPE OF THE DOCUMENT
  if definition is null or jsonb_typeof(definition) <> 'object' then
    perform pgflow._flow_error(null, 'the definition must be a JSON object');
  end if;
  if jsonb_typeof(definition -> 'slug') is distinct from 'string' then
    perform pgflow._flow_error(null, '"slug" must be a string');
  end if;
  v_flow_slug := definition ->> 'slug';
  if v_flow_slug !~ c_slug_pattern then
    perform pgflow._flow_error(v_flow_slug, 'the slug must match ' || c_slug_pattern);
  end if;
  if jsonb_typeof(definition -> 'steps') is distinct from 'array'
     or jsonb_array_length(definition -> 'steps') = 0 then
    perform pgflow._flow_error(v_flow_slug, '"steps" must be a non-empty array');
  end if;
  v_default_attempts := coalesce(definition -> 'max_attempts', '3');
  v_default_delay := coalesce(definition -> 'base_delay', '1');
  v_default_timeout := coalesce(definition -> 'timeout', '60');

  -- STEPS: slugs, options, dependencies
  for v_step in select s from jsonb_array_elements(definition -> 'steps') as s loop
    if jsonb_typeof(v_step) <> 'object' or jsonb_typeof(v_step -> 'slug') is distinct from 'string' then
      perform pgflow._flow_error(v_flow_slug, 'each step must be an object with a string "slug"');
    end if;
    v_slug := v_step ->> 'slug';
    if v_slug !~ c_slug_pattern then
      perform pgflow._flow_error(v_flow_slug, format('step slug %s must match %s', quote_literal(v_slug), c_slug_pattern));
    end if;
    if v_slug = 'run' then
      perform pgflow._flow_error(v_flow_slug, 'step slug ''run'' is reserved: handler input carries the run''s input under "run"');
    end if;
    if v_slug = any(v_slugs) then
      perform pgflow._flow_error(v_flow_slug, format('duplicate step slug %s', quote_literal(v_slug)));
    end if;
    v_slugs := v_slugs || v_slug;

    v_value := coalesce(v_step -> 'max_attempts', v_default_attempts);
    if jsonb_typeof(v_value) <> 'number' or (v_value::text)::numeric <> trunc((v_value::text)::numeric)
       or (v_value::text)::numeric not between 1 and 1000 then
      perform pgflow._flow_error(v_flow_slug, format('step %s: max_attempts must be an integer from 1 to 1000', quote_literal(v_slug)));
    end if;
    v_max_attempts := (v_value::text)::int;
    v_value := coalesce(v_step -> 'base_delay', v_default_delay);
    if jsonb_typeof(v_value) <> 'number' or (v_value::text)::numeric not between 0 and 86400 then
      perform pgflow._flow_error(v_flow_slug, format('step %s: base_delay must be a number of seconds from 0 to 86400', quote_literal(v_slug)));
    end if;
    v_base_delay := (v_value::text)::double precision;
    v_value := coalesce(v_step -> 'timeout', v_default_timeout);
    if jsonb_typeof(v_value) <> 'number' or (v_value::text)::numeric <> trunc((v_value::text)::numeric)
       or (v_value::text)::numeric not between 1 and 86400 then
      perform pgflow._flow_error(v_flow_slug, format('step %s: timeout must be a whole number of seconds from 1 to 86400', quote_literal(v_slug)));
    end if;
    v_timeout := (v_value::text)::int;

    v_value := coalesce(v_step -> 'depends_on', '[]');
    if jsonb_typeof(v_value) <> 'array' then
      perform pgflow._flow_error(v_flow_slug, format('step %s: depends_on must be an array of step slugs', quote_literal(v_slug)));
    end if;
    v_deps := '{}';
    for v_dep in select d from jsonb_array_elements(v_value) as d loop
      if jsonb_typeof(v_dep) <> 'string' then
        perform pgflow._flow_error(v_flow_slug, format('step %s: depends_on must be an array of step slugs', quote_literal(v_slug)));
      end if;
      if v_dep #>> '{}' = any(v_deps) then
        perform pgflow._flow_error(v_flow_slug, format('step %s depends on %s twice', quote_literal(v_slug), quote_literal(v_dep #>> '{}')));
      end if;
      v_deps := v_deps || (v_dep #>> '{}');
    end loop;

    v_steps := v_steps || jsonb_build_array(jsonb_build_object(
      'slug', v_slug,
      'depends_on', to_jsonb(array(select unnest(v_deps) order by 1)),
      'max_attempts', v_max_attempts,
      'base_delay', v_base_delay,
      'timeout', v_timeout
    ));
  end loop;

  -- DEPENDENCIES: every one known, none on itself
  select format('step %s depends on unknown step %s', quote_literal(s ->> 'slug'), quote_literal(d))
    into v_diff
  from jsonb_array_elements(v_steps) as s, jsonb_array_elements_text(s -> 'depends_on') as d
  where d <> all(v_slugs)
  limit 1;
  if v_diff is not null then
    perform pgflow._flow_error(v_flow_slug, v_diff);
  end if;
  select format('step %s depends on itself', quote_literal(s ->> 'slug')) into v_diff
  from jsonb_array_elements(v_steps) as s
  where (s -> 'depends_on') ? (s ->> 'slug')
  limit 1;
  if v_diff is not null then
    perform pgflow._flow_error(v_flow_slug, v_diff);
  end if;

  -- CYCLES: Kahn's algorithm; whatever cannot be ordered sits on or behind a cycle
  v_done := '{}';
  loop
    select array_agg(s ->> 'slug') into v_ready
    from jsonb_array_elements(v_steps) as s
    where not ((s ->> 'slug') = any(v_done))
      and array(select jsonb_array_elements_text(s -> 'depends_on')) <@ v_done;
    exit when v_ready is null;
    v_done := v_done || v_ready;
  end loop;
  if cardinality(v_done) < cardinality(v_slugs) then
    select array_agg(slug order by slug) into v_cycle
    from unnest(v_slugs) as slug where not (slug = any(v_done));
    perform pgflow._flow_error(v_flow_slug, format('the steps contain a cycle through %s', array_to_string(v_cycle, ', ')));
  end if;

  -- OUTPUT STEP: explicit, else the single leaf, else none (the run's output joins the leaves)
  select array_agg(s ->> 'slug' order by s ->> 'slug') into v_leaves
  from jsonb_array_elements(v_steps) as s
  where not exists (
    select 1 from jsonb_array_elements(v_steps) as t where (t -> 'depends_on') ? (s ->> 'slug')
  );
  v_value := definition -> 'output_step';
  if v_value is null or jsonb_typeof(v_value) = 'null' then
    v_output_step := case when cardinality(v_leaves) = 1 then v_leaves[1] end;
  elsif jsonb_typeof(v_value) <> 'string' or not (v_value #>> '{}' = any(v_slugs)) then
    perform pgflow._flow_error(v_flow_slug, format('output_step %s is not one of its steps', v_value::text));
  else
    v_output_step := v_value #>> '{}';
  end if;

  v_normalised := jsonb_build_object('slug', v_flow_slug, 'steps', v_steps, 'output_step', v_output_step);

  -- STORE OR COMPARE, serialised per slug
  perform pg_advisory_xact_lock(hashtextextended('pgflow.define_flow:' || v_flow_slug, 0));
  select f.definition into v_existing from pgflow.flows as f where f.flow_slug = v_flow_slug;
  if found then
    v_diff := pgflow._shape_diff(v_existing, v_normalised);
    if v_diff <> '' then
      raise exception 'flow % already exists with a different shape (%); give the new shape a new slug, e.g. %',
        quote_literal(v_flow_slug), v_diff, quote_literal(v_flow_slug || '_v2')
        using errcode = 'PF409';
    end if;
    return v_existing;
  end if;

  insert into pgflow.flows (flow_slug, output_step, definition)
  values (v_flow_slug, v_output_step, v_normalised);
  insert into pgflow.steps (flow_slug, step_slug, step_index, depends_on, dependents, max_attempts, base_delay, timeout)
  select
    v_flow_slug,
    s ->> 'slug',
    i,
    array(select jsonb_array_elements_text(s -> 'depends_on')),
    array(
      select t ->> 'slug' from jsonb_array_elements(v_steps) with ordinality as x (t, j)
      where (t -> 'depends_on') ? (s ->> 'slug') order by j
    ),
    (s ->> 'max_attempts')::int,
    (s ->> 'base_delay')::double precision,
    (s ->> 'timeout')::int
  from jsonb_array_elements(v_steps) with ordinality as e (s, i);
  return v_normalised;
end;
$$;

-- get_flow: the shape the browser draws, in define_flow's normalised form; null if unknown.
create function pgflow.get_flow(flow_slug text) returns jsonb
language sql
stable
set search_path to ''
as $$
  select f.definition from pgflow.flows as f where f.flow_slug = get_flow.flow_slug;
$$;
