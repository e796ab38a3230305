-- _normalise_flow: validates a flow definition and returns its normalised shape, in time linear
-- in its steps and dependencies.
-- Locks: none; reads no table. Notifies: nothing.
-- Raises: PF400 for a bad definition (slugs, types, ranges, unknown deps, cycles, output_step).
-- Idempotent: yes.
create function pgflow._normalise_flow(p_definition jsonb) returns jsonb
language plpgsql
stable
set search_path to ''
as $$
declare
  c_slug_pattern constant text := '^[A-Za-z_][A-Za-z0-9_-]{0,127}$';
  v_flow_slug text;
  v_default_attempts jsonb;
  v_default_delay jsonb;
  v_default_timeout jsonb;
  v_problem text;
  v_steps jsonb;
  v_slugs text[];
  v_n int;
  v_value jsonb;
  v_output_step text;
  v_leaves text[];
  -- the dependency graph by step position: step i's dependents are
  -- v_targets[v_first[i] .. v_first[i + 1] - 1]; v_indegree[i] counts its dependencies
  v_indegree int[];
  v_outdegree int[];
  v_first int[];
  v_targets int[];
  v_queue int[];
  v_head int := 1;
  v_tail int := 0;
  v_i int;
  v_k int;
  v_w int;
begin
  -- SHAPE OF THE DOCUMENT
  if p_definition is null or jsonb_typeof(p_definition) <> 'object' then
    perform pgflow._flow_error(null, 'the definition must be a JSON object');
  end if;
  if jsonb_typeof(p_definition -> 'slug') is distinct from 'string' then
    perform pgflow._flow_error(null, '"slug" must be a string');
  end if;
  v_flow_slug := p_definition ->> 'slug';
  if v_flow_slug !~ c_slug_pattern then
    perform pgflow._flow_error(v_flow_slug, 'the slug must match ' || c_slug_pattern);
  end if;
  if jsonb_typeof(p_definition -> 'steps') is distinct from 'array'
     or jsonb_array_length(p_definition -> 'steps') = 0 then
    perform pgflow._flow_error(v_flow_slug, '"steps" must be a non-empty array');
  end if;
  v_default_attempts := coalesce(p_definition -> 'max_attempts', '3');
  v_default_delay := coalesce(p_definition -> 'base_delay', '1');
  v_default_timeout := coalesce(p_definition -> 'timeout', '60');

  -- STEPS, in one pass: the first problem in step order is raised, naming its step; the casts
  -- sit behind `case` so that a value of the wrong type is reported, never cast
  with raw as (
    select e.i, e.s,
      case when jsonb_typeof(e.s) = 'object' and jsonb_typeof(e.s -> 'slug') = 'string'
        then e.s ->> 'slug' end as slug,
      coalesce(e.s -> 'max_attempts', v_default_attempts) as attempts,
      coalesce(e.s -> 'base_delay', v_default_delay) as delay,
      -- a person's answer may take longer than a handler: an input step waits a day unless
      -- told otherwise, and up to 30 days
      coalesce(e.s -> 'timeout', case when e.s -> 'kind' = '"input"' then '86400'::jsonb
                                      else v_default_timeout end) as timeout,
      case when e.s -> 'kind' = '"input"' then 2592000 else 86400 end as max_timeout,
      coalesce(e.s -> 'kind', '"task"'::jsonb) as kind,
      e.s -> 'schema' as schema,
      e.s -> 'over' as over,
      e.s -> 'url' as url,
      coalesce(e.s -> 'depends_on', '[]'::jsonb) as deps
    from jsonb_array_elements(p_definition -> 'steps') with ordinality as e (s, i)
  ), typed as (
    select r.*,
      case when jsonb_typeof(r.attempts) = 'number' then (r.attempts::text)::numeric end as attempts_n,
      case when jsonb_typeof(r.delay) = 'number' then (r.delay::text)::numeric end as delay_n,
      case when jsonb_typeof(r.timeout) = 'number' then (r.timeout::text)::numeric end as timeout_n,
      row_number() over (partition by r.slug order by r.i) as nth
    from raw as r
  ), checked as (
    select t.*, case
      when t.slug is null then 'each step must be an object with a string "slug"'
      when t.slug !~ c_slug_pattern then
        format('step slug %s must match %s', quote_literal(t.slug), c_slug_pattern)
      when t.slug = 'run' then
        'step slug ''run'' is reserved: handler input carries the run''s input under "run"'
      when t.nth > 1 then format('duplicate step slug %s', quote_literal(t.slug))
      when t.attempts_n is null or t.attempts_n <> trunc(t.attempts_n)
           or t.attempts_n not between 1 and 1000 then
        format('step %s: max_attempts must be an integer from 1 to 1000', quote_literal(t.slug))
      when t.delay_n is null or t.delay_n not between 0 and 86400
           or (t.delay_n > 0 and t.delay_n < 0.000001) then
        format('step %s: base_delay must be a number of seconds from 0 to 86400 (0, or at least 0.000001)',
               quote_literal(t.slug))
      when t.kind not in ('"task"', '"input"', '"map"', '"http"') then
        format('step %s: kind must be "task", "input", "map" or "http"', quote_literal(t.slug))
      when t.timeout_n is null or t.timeout_n <> trunc(t.timeout_n)
           or t.timeout_n not between 1 and t.max_timeout then
        format('step %s: timeout must be a whole number of seconds from 1 to %s', quote_literal(t.slug),
               t.max_timeout)
      when t.schema is not null and t.kind <> '"input"' then
        format('step %s: only an input step (kind "input") takes a schema', quote_literal(t.slug))
      when jsonb_typeof(t.schema) not in ('object', 'boolean') then
        format('step %s: schema must be a JSON Schema (an object or a boolean)', quote_literal(t.slug))
      when (t.kind = '"map"') <> (t.over is not null) then
        format('step %s: a map step (kind "map") needs "over", and only a map step takes it',
               quote_literal(t.slug))
      when t.over is not null and (jsonb_typeof(t.over) <> 'string'
           or (t.over <> '"run"' and not (jsonb_typeof(t.deps) = 'array' and t.deps ? (t.over #>> '{}'))))
        then format('step %s: "over" must be "run" or one of its depends_on', quote_literal(t.slug))
      when (t.kind = '"http"') <> (t.url is not null) then
        format('step %s: an HTTP step (kind "http") needs "url", and only an HTTP step takes it',
               quote_literal(t.slug))
      when t.url is not null and (jsonb_typeof(t.url) <> 'string'
           or (t.url #>> '{}') !~ '^(https?://[^\s/?#]+|/)[^\s]*$'
           or length(t.url #>> '{}') > 2000) then
        format('step %s: "url" must be an http(s) URL or a path starting with "/", without '
               'spaces, at most 2000 characters', quote_literal(t.slug))
      when jsonb_typeof(t.deps) <> 'array' or d.non_strings > 0 then
        format('step %s: depends_on must be an array of step slugs', quote_literal(t.slug))
      when d.twice is not null then
        format('step %s depends on %s twice', quote_literal(t.slug), quote_literal(d.twice))
    end as problem
    from typed as t
    cross join lateral (
      select count(*) filter (where jsonb_typeof(x.v) <> 'string') as non_strings,
        (array_agg(x.v #>> '{}' order by x.j) filter (where x.nth = 2))[1] as twice
      from (
        select y.v, y.j, row_number() over (partition by y.v order by y.j) as nth
        from jsonb_array_elements(case when jsonb_typeof(t.deps) = 'array' then t.deps
                                       else '[]'::jsonb end) with ordinality as y (v, j)
      ) as x
    ) as d
  )
  select (array_agg(c.problem order by c.i) filter (where c.problem is not null))[1],
    jsonb_agg(case when c.problem is null then jsonb_build_object(
      'slug', c.slug,
      'depends_on', to_jsonb(array(select jsonb_array_elements_text(c.deps) order by 1)),
      'max_attempts', c.attempts_n::int,
      'base_delay', (c.delay::text)::double precision,
      'timeout', c.timeout_n::int
    ) || case when c.kind = '"input"' then jsonb_build_object(
      'kind', 'input', 'schema', coalesce(c.schema, '{}'::jsonb))
      when c.kind = '"map"' then jsonb_build_object('kind', 'map', 'over', c.over)
      when c.kind = '"http"' then jsonb_build_object('kind', 'http', 'url', c.url)
      else '{}'::jsonb end
    end order by c.i),
    array_agg(c.slug order by c.i),
    count(*)
    into v_problem, v_steps, v_slugs, v_n
  from checked as c;
  if v_problem is not null then
    perform pgflow._flow_error(v_flow_slug, v_problem);
  end if;

  -- DEPENDENCIES: every one known, none on itself
  with s as (
    select e.i, e.s ->> 'slug' as slug, e.s -> 'depends_on' as deps
    from jsonb_array_elements(v_steps) with ordinality as e (s, i)
  )
  select format('step %s depends on unknown step %s', quote_literal(s.slug), quote_literal(d.dep))
    into v_problem
  from s cross join lateral jsonb_array_elements_text(s.deps) with ordinality as d (dep, j)
  where not exists (select 1 from s as known where known.slug = d.dep)
  order by s.i, d.j
  limit 1;
  if v_problem is not null then
    perform pgflow._flow_error(v_flow_slug, v_problem);
  end if;
  select format('step %s depends on itself', quote_literal(e.s ->> 'slug')) into v_problem
  from jsonb_array_elements(v_steps) with ordinality as e (s, i)
  where (e.s -> 'depends_on') ? (e.s ->> 'slug')
  order by e.i
  limit 1;
  if v_problem is not null then
    perform pgflow._flow_error(v_flow_slug, v_problem);
  end if;

  -- THE GRAPH by position: in-degrees, out-degrees, and the dependents of each step
  with s as (
    select e.i::int as i, e.s ->> 'slug' as slug, e.s -> 'depends_on' as deps
    from jsonb_array_elements(v_steps) with ordinality as e (s, i)
  ), edges as (
    select dep.i as src, s.i as dst
    from s cross join lateral jsonb_array_elements_text(s.deps) as d (slug)
    join s as dep on dep.slug = d.slug
  )
  select
    (select array_agg(jsonb_array_length(s.deps) order by s.i) from s),
    (select array_agg(coalesce(o.n, 0) order by s.i)
       from s left join (select e.src, count(*)::int as n from edges as e group by e.src) as o
       on o.src = s.i),
    (select coalesce(array_agg(e.dst order by e.src, e.dst), '{}') from edges as e)
    into v_indegree, v_outdegree, v_targets;
  v_first := array_fill(1, array[v_n + 1]);
  for v_i in 1 .. v_n loop
    v_first[v_i + 1] := v_first[v_i] + v_outdegree[v_i];
  end loop;

  -- CYCLES: Kahn's algorithm over the arrays (each step and dependency visited once);
  -- whatever cannot be ordered sits on or behind a cycle
  v_queue := array_fill(0, array[v_n]);
  for v_i in 1 .. v_n loop
    if v_indegree[v_i] = 0 then
      v_tail := v_tail + 1;
      v_queue[v_tail] := v_i;
    end if;
  end loop;
  while v_head <= v_tail loop
    v_i := v_queue[v_head];
    v_head := v_head + 1;
    for v_k in v_first[v_i] .. v_first[v_i + 1] - 1 loop
      v_w := v_targets[v_k];
      v_indegree[v_w] := v_indegree[v_w] - 1;
      if v_indegree[v_w] = 0 then
        v_tail := v_tail + 1;
        v_queue[v_tail] := v_w;
      end if;
    end loop;
  end loop;
  if v_tail < v_n then
    select string_agg(g.slug, ', ' order by g.slug) into v_problem
    from unnest(v_slugs, v_indegree) as g (slug, indegree)
    where g.indegree > 0;
    perform pgflow._flow_error(v_flow_slug, format('the steps contain a cycle through %s', v_problem));
  end if;

  -- OUTPUT STEP: explicit, else the single leaf, else none (the run's output joins the leaves)
  select array_agg(g.slug order by g.slug) into v_leaves
  from unnest(v_slugs, v_outdegree) as g (slug, outdegree)
  where g.outdegree = 0;
  v_value := p_definition -> 'output_step';
  if v_value is null or jsonb_typeof(v_value) = 'null' then
    v_output_step := case when cardinality(v_leaves) = 1 then v_leaves[1] end;
  elsif jsonb_typeof(v_value) <> 'string' or not (v_value #>> '{}' = any(v_slugs)) then
    perform pgflow._flow_error(v_flow_slug, format('output_step %s is not one of its steps', v_value::text));
  else
    v_output_step := v_value #>> '{}';
  end if;

  return jsonb_build_object('slug', v_flow_slug, 'steps', v_steps, 'output_step', v_output_step);
end;
$$;
