-- run_events: the append-only event log. seq is 1, 2, 3, ... per run, assigned under the run's
-- row lock, so it is gap-free and in commit order.
--
-- Compact: a row stores each field of the event once. run_id, seq, event, step_slug, attempt and
-- at are columns; payload holds only the rest, and only what is not implied: output (when the
-- event carries one, JSON null included), error (when not null), status (when it is not the
-- event's own, 'step:completed' -> 'completed': never, as the engine writes them). Readers
-- (get_runs_events, through which get_run_events and _notify_events read) rebuild the event as
-- clients receive it (events.md); a row whose payload holds more (a full event) reads the
-- same, its payload winning.
-- Fixed-width columns first, so only the tuple's end is padded.
--
-- No foreign key to runs: its check is a query per event row, an eighth of the server's work
-- per step. Every writer appends under its run's row lock (the run exists and stays), and the
-- trigger runs_delete_events deletes a deleted run's events, as a cascade would.
--
-- Whoever appends events tells the commit-time notification where they are
-- (0200_trigger_run_events_notify_at_commit.sql): their seq ranges in the transaction's setting
-- pgflow.pending_events, or, past its cap, the tx column.

create table pgflow.run_events (
  run_id uuid not null,
  seq bigint not null,
  at timestamptz not null default clock_timestamp(),
  attempt int,
  event text not null,
  step_slug text,
  payload jsonb not null default '{}',
  -- the top-level transaction that wrote it, only when the commit-time notification cannot
  -- find it through pgflow.pending_events (_events_tx): null for almost every event
  tx xid8,
  primary key (run_id, seq),
  constraint seq_is_positive check (seq >= 1),
  constraint event_is_known check (
    event in ('run:started', 'run:completed', 'run:failed', 'run:cancelled', 'run:retried',
              'step:started', 'step:completed', 'step:failed', 'step:retrying', 'step:stream',
              'step:cancelled', 'step:waiting')
  )
);

-- _notify_events reads back the committing transaction's events that carry their tx (past the
-- pending_events setting's cap): partial, so an event written the usual way adds no entry.
create index run_events_tx_idx on pgflow.run_events (tx) where tx is not null;
