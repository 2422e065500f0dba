"""The demo's long-running roles as separate OS processes (as they run in production)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.app.servers.process import pid_alive, spawn, stop_pid, stop_pids

CLI = [sys.executable, "-c", "from pipeline.app.cli import main; main()"]


@dataclass
class Role:
    name: str
    args: list[str]
    metrics_port: int
    log: Path
    pid: int = 0
    #: Times this role was killed and replaced (a replaced worker gets a new worker id, as a
    #: replacement spot instance would).
    restarts: int = 0
    env: Mapping[str, str] = field(default_factory=dict)

    def start(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.pid = spawn(
            [*CLI, *self.args],
            log_path=self.log,
            env={**env, "SHARDHOUSE_METRICS_PORT": str(self.metrics_port)},
        )

    @property
    def alive(self) -> bool:
        return self.pid > 0 and pid_alive(self.pid)

    @property
    def is_worker(self) -> bool:
        return "--worker-id" in self.args

    def stop(self, grace: float = 20.0) -> None:
        if self.pid:
            stop_pid(self.pid, grace=grace)

    def kill(self) -> None:
        """SIGKILL, no goodbye: what a spot reclaim without notice or an OOM kill does."""
        if self.pid and pid_alive(self.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while pid_alive(self.pid) and time.monotonic() < deadline:
                time.sleep(0.05)

    def replace(self) -> None:
        """Kill it and start a successor (a worker under a fresh worker id)."""
        self.kill()
        self.restarts += 1
        if self.is_worker:
            i = self.args.index("--worker-id") + 1
            self.args[i] = f"{self.args[i].split('~')[0]}~{self.restarts}"
        self.start(self.env)


def stop_roles(roles: Sequence[Role], say: Callable[[str], None], grace: float = 20.0) -> None:
    """SIGTERM every role at once — workers flush and hand their leases over, the inserter
    finishes its load — and say how long it took and what had to be killed."""
    running = [r for r in roles if r.alive]
    if not running:
        return
    say(f"stopping {', '.join(r.name for r in running)} (workers flush what they hold; up to {grace:.0f}s)")
    started = time.monotonic()
    killed = set(stop_pids([r.pid for r in running], grace=grace))
    late = [r.name for r in running if r.pid in killed]
    note = f"; killed after {grace:.0f}s: {', '.join(late)}" if late else ""
    say(f"roles stopped in {time.monotonic() - started:.1f}s{note}")
