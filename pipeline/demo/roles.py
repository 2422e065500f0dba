"""The demo's long-running roles as separate OS processes (as they run in production)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pipeline.servers.process import pid_alive, spawn, stop_pid

CLI = [sys.executable, "-c", "from pipeline.cli import main; main()"]


@dataclass
class Role:
    name: str
    args: list[str]
    metrics_port: int
    log: Path
    pid: int = 0

    def start(self, env: Mapping[str, str]) -> None:
        self.pid = spawn(
            [*CLI, *self.args],
            log_path=self.log,
            env={**env, "SHARDHOUSE_METRICS_PORT": str(self.metrics_port)},
        )

    @property
    def alive(self) -> bool:
        return self.pid > 0 and pid_alive(self.pid)

    def stop(self, grace: float = 20.0) -> None:
        if self.pid:
            stop_pid(self.pid, grace=grace)
