"""``pgflow worker``: the worker as a process, its signals, and the exit of a process whose
plain handlers are stuck in their threads (``exit_if_threads_stuck``, used by every command).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

from pgflow import event_loop
from pgflow.errors import ConfigurationError
from pgflow.flows import Flow, load_flows
from pgflow.worker._attempts import abandoned_threads, describe_error
from pgflow.worker._options import http_step_options
from pgflow.worker._retry import OUTAGE, Retry
from pgflow.worker.worker import STUCK_EXIT_STATUS, StuckThreadsError, Worker

logger = logging.getLogger(__name__)


async def _migrate(url: str, worker: Worker) -> bool:
    """Applies migrations, waiting for the database to come up; False if stopped meanwhile."""
    from pgflow.db.migrate import migrate_url

    retry = Retry("migrating")
    while not worker._stopping.is_set():
        try:
            await migrate_url(url)
        except OUTAGE as exc:
            await worker._wait(worker._stopping, retry.failed(exc))
            continue
        except ConfigurationError:  # already says what is wrong (migrate.connect_or_explain)
            raise
        except Exception as exc:  # a failing migration
            raise ConfigurationError(f"cannot migrate the database: {describe_error(exc)}") from exc
        retry.succeeded()
        return True
    return False


async def _worker_main(args: argparse.Namespace, flows: Sequence[Flow]) -> Worker:
    from pgflow.db.local_server import database_url

    with database_url(args.database_url, args.data_dir) as url:
        worker = Worker(
            url, flows, concurrency=args.concurrency, batch_size=args.batch_size,
            lease_seconds=args.lease, poll_interval=args.poll_interval,
            stream_interval=args.stream_interval, stream_logs=args.stream_logs,
            shutdown_grace=args.shutdown_grace, max_stuck_threads=args.max_stuck_threads,
            listen_database_url=args.listen_database_url, pgbouncer=args.pgbouncer,
            retention=args.retention, retention_interval=args.retention_interval,
            **http_step_options(args.http_secret, args.http_concurrency, args.http_base_url,
                                args.callback_url),
        )
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT)
        for signum in signals:
            # first: graceful; second: abort (Worker.stop escalates)
            loop.add_signal_handler(signum, worker.stop)
        try:
            # the migrations' advisory lock needs a session: not through PgBouncer
            if await _migrate(worker.listen_database_url, worker):
                await worker.run()
        finally:
            for signum in signals:
                loop.remove_signal_handler(signum)
    return worker


def worker_command(args: argparse.Namespace) -> int:
    """``pgflow worker``: runs the handlers of ``--flows`` until SIGTERM or SIGINT.

    Exits 0 after a graceful shutdown, 1 after an abort (a second signal), 3 after stopping
    because too many plain handlers were stuck in their threads.
    """
    flows = load_flows(args.flows)
    try:
        worker = event_loop.run(_worker_main(args, flows))
    except StuckThreadsError as exc:
        print(f"pgflow worker: {exc}", file=sys.stderr)
        return STUCK_EXIT_STATUS
    return 1 if worker.aborted else 0


def exit_if_threads_stuck(code: int) -> int:
    """Ends the process at once with ``code`` if a plain handler's thread still runs.

    Python joins the threads of every thread pool at exit, so a handler that never returns
    would keep the process alive after a clean shutdown (``pgflow worker``, ``serve``,
    ``demo``); returns ``code`` when there is none.
    """
    stuck = abandoned_threads()
    if not stuck:
        return code
    logger.warning("exiting with %d handler thread(s) still running", stuck,
                   extra={"action": "worker_exit", "stuck": stuck})
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
