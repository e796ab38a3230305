"""Who uses one data folder's embedded server, so that it stops only when the last one exits.

Every pgflow process that uses the embedded server of a data folder (``demo``, ``serve``,
``worker``, ``migrate``, ``db psql``) writes ``users/<pid>`` there, holding a line that says
what it is; ``pgflow db start`` writes ``server.pinned`` instead, because it exits at once. The
server is stopped by the process that leaves last while nothing pins it. Entries of processes
that died without cleaning up are ignored and removed. ``server.lock`` (``flock``) serialises
starting, stopping and these files between processes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServerUser:
    pid: int
    description: str

    def __str__(self) -> str:
        return f"pid {self.pid} ({self.description})"


class ServerUsers:
    """The ``users/`` registry and the pin of one data folder."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._folder = data_dir / "users"
        self._lock_file = data_dir / "server.lock"
        self._pin_file = data_dir / "server.pinned"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Holds the data folder's lock: one process starts, stops or registers at a time."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def add(self, description: str, pid: int | None = None) -> None:
        self._folder.mkdir(exist_ok=True)
        (self._folder / str(pid or os.getpid())).write_text(description + "\n")

    def remove(self, pid: int | None = None) -> None:
        (self._folder / str(pid or os.getpid())).unlink(missing_ok=True)

    def live(self, *, exclude: int | None = None) -> list[ServerUser]:
        """The registered processes that still run (stale entries are removed)."""
        users = []
        try:
            entries = sorted(self._folder.iterdir())
        except FileNotFoundError:
            return []
        for entry in entries:
            try:
                pid = int(entry.name)
            except ValueError:
                continue
            if not alive(pid):
                entry.unlink(missing_ok=True)
                continue
            if pid == exclude:
                continue
            try:
                description = entry.read_text().strip() or "pgflow"
            except FileNotFoundError:
                continue
            users.append(ServerUser(pid, description))
        return users

    @property
    def pinned(self) -> bool:
        return self._pin_file.exists()

    def pin(self) -> None:
        self._pin_file.write_text("pgflow db start\n")

    def unpin(self) -> None:
        self._pin_file.unlink(missing_ok=True)


def alive(pid: int) -> bool:
    """Whether a process with this pid exists (ours or not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True
