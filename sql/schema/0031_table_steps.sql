-- steps: a flow's steps, in definition order (step_index), with their dependencies both ways and
-- their retry and timeout options.

create table pgflow.steps (
  flow_slug text not null references pgflow.flows (flow_slug) on delete cascade,
  step_slug text not null,
  step_index int not null,
  depends_on text[] not null default '{}',
  dependents text[] not null default '{}',
  max_attempts int not null,
  base_delay double precision not null,
  timeout int not null,
  -- 'task': run by a worker's handler; 'input': waits for a value submitted to it (submit_input),
  -- which input_schema describes, for at most timeout seconds; 'map': a task per element of the
  -- array map_over names (a dependency's output, or 'run': the run's input); 'http': a task a
  -- worker dispatches to http_url
  kind text not null default 'task',
  input_schema jsonb,
  map_over text,
  http_url text,
  primary key (flow_slug, step_slug),
  constraint kind_is_known check (kind in ('task', 'input', 'map', 'http')),
  constraint map_steps_map_over_something check ((kind = 'map') = (map_over is not null)),
  constraint http_steps_have_a_url check ((kind = 'http') = (http_url is not null)),
  constraint max_attempts_is_positive check (max_attempts >= 1),
  constraint base_delay_is_not_negative check (base_delay >= 0),
  constraint timeout_is_positive check (timeout >= 1)
);
