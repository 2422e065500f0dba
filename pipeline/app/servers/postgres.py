"""A throwaway PostgreSQL cluster under the project's state directory.

PostgreSQL refuses to run as root, so as root the cluster belongs to an unprivileged account
(``postgres`` when the image has it, else a ``shardhouse`` system user we create) and every
server command is exec'd through ``setpriv`` so the recorded pid is the postmaster itself.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from pipeline.app.servers import binaries
from pipeline.app.servers.process import pid_alive
from pipeline.core.errors import ConfigError, TerminalError

SERVER_OPTIONS = (
    # A development emulator: durability traded for speed, as a CI database would be.
    "fsync=off",
    "full_page_writes=off",
    "synchronous_commit=off",
    "max_connections=200",
    "shared_buffers=256MB",
    "unix_socket_directories=",
)


def service_account() -> pwd.struct_passwd | None:
    """The account to run as, or None when we are not root and run as ourselves."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "shardhouse"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    useradd = shutil.which("useradd")
    if useradd is None:
        raise ConfigError("running as root needs an unprivileged account for PostgreSQL; none found")
    subprocess.run(
        [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "shardhouse"],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return pwd.getpwnam("shardhouse")


def as_account(cmd: list[str], account: pwd.struct_passwd | None) -> list[str]:
    if account is None:
        return cmd
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise ConfigError("setpriv (util-linux) is needed to run PostgreSQL as root")
    return [
        setpriv,
        f"--reuid={account.pw_uid}",
        f"--regid={account.pw_gid}",
        "--clear-groups",
        "--reset-env",
        *cmd,
    ]


def _usable_by(path: Path, account: pwd.struct_passwd) -> bool:
    probe = subprocess.run(
        as_account(["test", "-w", str(path), "-a", "-x", str(path)], account),
        capture_output=True,
        timeout=10,
    )
    return probe.returncode == 0


TWIN_PREFIX = "shardhouse-pg-"


def twin_dir(wanted: Path, tmp_root: Path | None = None) -> Path:
    digest = hashlib.sha256(str(wanted).encode()).hexdigest()[:10]
    return (tmp_root or Path(tempfile.gettempdir())) / f"{TWIN_PREFIX}{digest}"


def _owner_file(twin: Path) -> Path:
    """Beside the twin, not in it: initdb wants an empty directory."""
    return twin.with_name(twin.name + ".owner")


def data_dir(state_dir: Path, account: pwd.struct_passwd | None) -> Path:
    """``<state>/postgres``, unless the service account cannot reach it: then a /tmp twin,
    with a note of the state dir it belongs to (so :func:`remove_orphans` can tell when that
    state dir is gone)."""
    wanted = (state_dir / "postgres").resolve()
    wanted.mkdir(parents=True, exist_ok=True)
    if account is None:
        return wanted
    os.chown(wanted, account.pw_uid, account.pw_gid)
    if _usable_by(wanted, account):
        return wanted
    fallback = twin_dir(wanted)
    fallback.mkdir(mode=0o700, exist_ok=True)
    os.chown(fallback, account.pw_uid, account.pw_gid)
    _owner_file(fallback).write_text(str(state_dir.resolve()))
    return fallback


def _postmaster_alive(datadir: Path) -> bool:
    try:
        first = (datadir / "postmaster.pid").read_text().split("\n", 1)[0]
    except FileNotFoundError:
        return False
    except OSError:
        return True  # cannot tell: leave it
    return first.strip().isdigit() and pid_alive(int(first))


def _remove_twin(twin: Path) -> bool:
    if _postmaster_alive(twin):
        return False
    shutil.rmtree(twin, ignore_errors=True)
    _owner_file(twin).unlink(missing_ok=True)
    return True


def discard(state_dir: Path, tmp_root: Path | None = None) -> bool:
    """Remove the /tmp twin of a throwaway state dir's cluster (its server stopped): a
    cluster that took a 10M-row benchmark holds gigabytes, and its state dir is about to go."""
    twin = twin_dir((state_dir / "postgres").resolve(), tmp_root)
    return twin.exists() and _remove_twin(twin)


def remove_orphans(tmp_root: Path | None = None) -> list[Path]:
    """Twins whose state dir no longer exists and whose server is not running: left by stacks
    in temporary state dirs (a test session's, a benchmark's) that ended without
    :func:`discard`. 214 of them had filled this machine's disk. A twin with no owner note
    predates the note and is left alone (its owner cannot be told)."""
    root = tmp_root or Path(tempfile.gettempdir())
    removed = []
    for note in sorted(root.glob(f"{TWIN_PREFIX}*.owner")):
        twin = note.with_name(note.name.removesuffix(".owner"))
        try:
            owner = Path(note.read_text().strip())
        except OSError:
            continue
        if not owner.exists() and _remove_twin(twin):
            removed.append(twin)
    return removed


def init_cluster(datadir: Path, account: pwd.struct_passwd | None, superuser: str) -> None:
    if (datadir / "PG_VERSION").exists():
        return
    cmd = [
        binaries.postgres_bin("initdb"),
        "-D",
        str(datadir),
        "-U",
        superuser,
        "--auth=trust",
        "--encoding=UTF8",
        "--no-locale",
        "--no-sync",
    ]
    done = subprocess.run(as_account(cmd, account), capture_output=True, text=True, timeout=180)
    if done.returncode != 0:
        raise TerminalError(f"initdb failed: {done.stderr.strip() or done.stdout.strip()}")


def server_command(datadir: Path, port: int, host: str, account: pwd.struct_passwd | None) -> list[str]:
    cmd = [binaries.postgres_bin("postgres"), "-D", str(datadir), "-p", str(port), "-h", host]
    for option in SERVER_OPTIONS:
        cmd += ["-c", option]
    return as_account(cmd, account)
