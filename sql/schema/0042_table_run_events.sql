-- run_events: the append-only event log. seq is 1, 2, 3, ... per run, assigned under the run's
-- row lock, so it is gap-free and in commit order. payload is the event as clients receive it.

create table pgflow.run_events (
  run_id uuid not null references pgflow.runs (run_id) on delete cascade,
  seq bigint not null,
  event text not null,
  step_slug text,
  payload jsonb not null,
  at timestamptz not null default clock_timestamp(),
  -- the top-level transaction that wrote it (also from inside a subtransaction): how the
  -- commit-time notification finds the transaction's events
  tx xid8 not null default pg_current_xact_id(),
  primary key (run_id, seq),
  constraint seq_is_positive check (seq >= 1),
  constraint event_is_known check (
    event in ('run:started', 'run:completed', 'run:failed',
              'step:started', 'step:completed', 'step:failed', 'step:retrying')
  )
);

-- _notify_events reads the committing transaction's events back through this index.
create index run_events_tx_idx on pgflow.run_events (tx);
