"""The worker: claims ready tasks, runs their handlers, reports the results in batches.

    worker.py      Worker: the claim loop, running handlers, start-up and shutdown
    _wakeup.py     what wakes the claim loop: NOTIFY pgflow_tasks, retries coming due, polling
    _attempts.py   one attempt of one step: the handler, its timeout, its output checked
    _reporter.py   finished attempts reported in batches, split around what the database refuses
    _heartbeat.py  extending the leases of running handlers
    _retry.py      a loop's database errors: backoff and bounded logging of an outage
    _options.py    the worker's options: defaults and bounds
    cli.py         `pgflow worker`: the process, its signals, its exit statuses
"""

from __future__ import annotations

from pgflow.db.definitions import sync_flows
from pgflow.worker.worker import STUCK_EXIT_STATUS, StuckThreadsError, Worker

__all__ = ["STUCK_EXIT_STATUS", "StuckThreadsError", "Worker", "sync_flows"]
