-- _begin_map: a map step whose dependencies completed starts: one element task per element of
-- the array it maps over ('<slug>[<index>]', claimable at once, each with its item), while its
-- own row holds the engine's lease ('pgflow:map', never expiring: no worker claims it) until
-- its elements are done (report_steps completes it then, _fail_for_good fails it).
-- A map step retried (retry_run) that had started its elements runs those not completed again.
-- Returns: its step:started event's payload, {"tasks": n}: n null when there is no array to map
--   over (not an array, or more than 100,000 elements), which _settle_maps then fails.
-- Locks: the caller holds the run's row lock; it updates the step's row and adds its elements.
-- Notifies: nothing (the caller writes the event). Raises: nothing.
-- Idempotent: no (it adds the element tasks).
create function pgflow._begin_map(p_run_id uuid, p_step_slug text) returns jsonb
language plpgsql
volatile
set search_path to ''
as $$
declare
  c_max_tasks constant int := 100000;
  v_key text;
  v_over text;
  v_array jsonb;
  v_tasks int;
  v_had int;
begin
  select s.flow_slug, st.map_over, s.map_tasks into v_key, v_over, v_had
  from pgflow.step_states as s
  join pgflow.steps as st on st.flow_slug = s.flow_slug and st.step_slug = s.step_slug
  where s.run_id = p_run_id and s.step_slug = p_step_slug;

  -- RETRIED (retry_run): the elements that did not complete run again, the others keep their
  -- outputs
  if v_had is not null then
    update pgflow.step_states as e
    set status = 'started', attempt_base = e.attempt, error = null, failed_at = null,
        available_at = now(), started_at = now(), leased_by = null, lease_expires_at = null
    where e.run_id = p_run_id and e.map_parent = p_step_slug and e.status in ('failed', 'cancelled');
    update pgflow.step_states as s
    set status = 'started', attempt = s.attempt + 1, leased_by = 'pgflow:map',
        lease_expires_at = 'infinity', started_at = now(), available_at = now(),
        map_left = (select count(*) from pgflow.step_states as e
                    where e.run_id = p_run_id and e.map_parent = p_step_slug
                      and e.status <> 'completed')
    where s.run_id = p_run_id and s.step_slug = p_step_slug;
    return jsonb_build_object('tasks', v_had);
  end if;

  if v_over = 'run' then
    select r.input into v_array from pgflow.runs as r where r.run_id = p_run_id;
  else
    select d.output into v_array from pgflow.step_states as d
    where d.run_id = p_run_id and d.step_slug = v_over;
  end if;
  if jsonb_typeof(v_array) = 'array' and jsonb_array_length(v_array) <= c_max_tasks then
    v_tasks := jsonb_array_length(v_array);
  end if;

  update pgflow.step_states as s
  set status = 'started', attempt = s.attempt + 1, leased_by = 'pgflow:map',
      lease_expires_at = 'infinity', map_tasks = v_tasks, map_left = v_tasks,
      started_at = now(), available_at = now()
  where s.run_id = p_run_id and s.step_slug = p_step_slug;
  if v_tasks > 0 then
    insert into pgflow.step_states (run_id, step_slug, flow_slug, status, remaining_deps,
                                    available_at, started_at, map_parent, map_index, item)
    select p_run_id, p_step_slug || '[' || (e.i - 1) || ']', v_key, 'started', 0, now(), now(),
      p_step_slug, (e.i - 1)::int, e.v
    from jsonb_array_elements(v_array) with ordinality as e (v, i);
  end if;
  return jsonb_build_object('tasks', v_tasks);
end;
$$;
