-- _shape_diff: what differs between two normalised definitions, as readable text; '' if none.
-- Locks: none. Notifies: nothing. Raises: nothing. Idempotent: yes (immutable).
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
    -- the keys of both sides: an option only one side has (an input step's kind and schema)
    select 3, o.slug || k.key, format('step %s %s %s -> %s', quote_literal(o.slug), k.key,
      coalesce(o.opts -> k.key, 'null'), coalesce(n.opts -> k.key, 'null'))
    from old_steps as o join new_steps as n using (slug),
      lateral (select jsonb_object_keys(o.opts) union select jsonb_object_keys(n.opts)) as k (key)
    where n.opts -> k.key is distinct from o.opts -> k.key
    union all
    select 4, '', format('output_step %s -> %s', p_old -> 'output_step', p_new -> 'output_step')
    where p_old -> 'output_step' is distinct from p_new -> 'output_step'
  )
  select coalesce(string_agg(d, '; ' order by o, k), '') from diffs;
$$;
