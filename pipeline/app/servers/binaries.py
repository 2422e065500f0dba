"""Find the server binaries the local stack runs, with an install hint when one is missing."""

from __future__ import annotations

import glob
import shutil
import sys
from pathlib import Path

from pipeline.core.errors import ConfigError

INSTALL_HINT = "run `make deps` (or scripts/install-deps.sh), which installs it"


def redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    raise ConfigError(f"redis-server not found on PATH; {INSTALL_HINT}")


def postgres_bin(name: str) -> str:
    """initdb / pg_ctl / postgres: PATH first, then Debian's versioned directories (newest)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if candidates:
        return candidates[-1]
    raise ConfigError(f"PostgreSQL's {name} not found; {INSTALL_HINT}")


def kinesis_mock(search_dirs: list[Path]) -> Path:
    """kinesis-mock's Node entry point (npm package ``kinesis-local``)."""
    for base in search_dirs:
        main = base / "node_modules" / "kinesis-local" / "main.js"
        if main.exists():
            return main
    raise ConfigError(f"kinesis-mock (npm kinesis-local) not found; {INSTALL_HINT}")


def node() -> str:
    found = shutil.which("node")
    if found:
        return found
    raise ConfigError(f"node not found on PATH (needed for kinesis-mock); {INSTALL_HINT}")


def python() -> str:
    return sys.executable
