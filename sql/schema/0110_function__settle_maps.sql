-- _settle_maps: the map steps among (p_run_ids[i], p_step_slugs[i]) that _begin_map started with
-- nothing to run end at once: with no element left (an empty array: []), completed with their
-- elements' outputs (through report_steps, as any completion: dependents, events, the run's end);
-- with no array to map over, failed for good
-- (`map step 'x' maps over an array: 'y' gave an object`), and the run with it. The others run.
-- Called last by the functions that start steps, once their own events are written: what it
-- writes is numbered after them.
-- Locks: the caller holds the runs' row locks.
-- Notifies: pgflow_events, at commit; pgflow_tasks for steps a completion made ready.
-- Raises: nothing.
-- Idempotent: no (it appends events).
create function pgflow._settle_maps(p_run_ids uuid[], p_step_slugs text[]) returns void
language plpgsql
volatile
set search_path to ''
as $$
declare
  v_map record;
  v_what text;
begin
  for v_map in
    select s.run_id, s.step_slug, s.map_tasks, s.attempt, st.map_over, r.input as run_input
    from unnest(p_run_ids, p_step_slugs) as m (run_id, step_slug)
    join pgflow.step_states as s on s.run_id = m.run_id and s.step_slug = m.step_slug
    join pgflow.steps as st on st.flow_slug = s.flow_slug and st.step_slug = s.step_slug
    join pgflow.runs as r on r.run_id = s.run_id
    where st.kind = 'map' and s.status = 'started' and (s.map_tasks is null or s.map_left = 0)
    order by s.run_id, s.step_slug
  loop
    if v_map.map_tasks is not null then
      -- no element left to run: none at all, or (retried) all completed before
      perform pgflow.report_steps('pgflow:map', array[v_map.run_id], array[v_map.step_slug],
        array[v_map.attempt], array[(
          select coalesce(jsonb_agg(e.output order by e.map_index), '[]'::jsonb)
          from pgflow.step_states as e
          where e.run_id = v_map.run_id and e.map_parent = v_map.step_slug)],
        array[null::text]);
    else
      select case when jsonb_typeof(x.v) = 'array'
               then format('%s elements, over the 100000 a map step takes', jsonb_array_length(x.v))
               else 'a' || case when jsonb_typeof(x.v) ~ '^[aeiou]' then 'n ' else ' ' end
                    || coalesce(jsonb_typeof(x.v), 'nothing') end
        into v_what
      from (select case when v_map.map_over = 'run' then v_map.run_input
                   else (select d.output from pgflow.step_states as d
                         where d.run_id = v_map.run_id and d.step_slug = v_map.map_over)
                   end as v) as x;
      perform pgflow._fail_for_good(v_map.run_id, v_map.step_slug,
        format('map step %s maps over an array: %s gave %s', quote_literal(v_map.step_slug),
               case when v_map.map_over = 'run' then 'the run''s input'
                    else quote_literal(v_map.map_over) end, v_what),
        v_map.attempt);
    end if;
  end loop;
end;
$$;
