-- run_events_notify_at_commit: one pgflow_events notification per transaction, sent at commit.
--
-- NOTIFY serialises commits on a global lock, so a transaction that completes fifty steps must
-- send one notification, not fifty. Each writer notes where its events are, once per call (a
-- report of 500 steps notes once): their seq ranges, appended to the transaction-local setting
-- pgflow.pending_events ('run_id,from,to;'), or, once that setting holds 8 KB, the
-- transaction's id in each event's tx column, read back through a partial index that holds only
-- such events (a setting is copied whole on every append; _events_tx). This deferred
-- constraint trigger fires at commit, and _notify_events sends the events as one NOTIFY (or
-- their ranges, when they do not fit) and empties the setting. A rolled-back subtransaction
-- restores the setting as it takes its rows, so what is notified is exactly what commits. The
-- work is linear in the transaction's events, however many.
--
-- One firing per transaction: a constraint trigger's WHEN is evaluated as each row is inserted,
-- not at commit. It queues a firing only for the transaction's first event row, and raises
-- pgflow.notify_queued so the next rows queue none; the firing lowers it again, so rows written
-- after it (under `set constraints all immediate`, or by another deferred trigger) queue a firing
-- of their own. Both the queued firing and the setting belong to the (sub)transaction: a
-- rolled-back savepoint drops its queued firing and restores the setting together, so the next
-- row queues again. `case`, unlike `and`, fixes the order: the flag is read before it is raised.

create constraint trigger run_events_notify_at_commit
  after insert on pgflow.run_events
  deferrable initially deferred
  for each row
  when (
    case when current_setting('pgflow.notify_queued', true) = 'on' then false
      else set_config('pgflow.notify_queued', 'on', true) = 'on' end
  )
  execute function pgflow._notify_events();
