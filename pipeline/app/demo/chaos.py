"""The demo's chaos driver: the faults the promise must survive, while the load runs.

* every few seconds (seeded random 2 to 5 s) a random worker — batcher or projector — is killed
  with SIGKILL and replaced by a new process under a new worker id (a reclaimed spot instance
  and its replacement);
* once, the inserter is killed with SIGKILL and restarted (its held messages come back when
  their visibility runs out);
* once, redis-server is killed and restarted empty (dedupe ids, batch markers and the read
  models are gone); then ``shardhouse rebuild-projections`` runs — the documented recovery of the
  read models — while everything keeps going.

The kills stop once the whole load is on the stream; the run then has to converge by itself.
"""

from __future__ import annotations

import random
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pipeline.app.demo.roles import CLI
from pipeline.app.demo.run import DemoRun


@dataclass(frozen=True)
class ChaosPlan:
    seed: int = 7
    kill_every_s: tuple[float, float] = (2.0, 5.0)
    #: Fractions of the load produced at which the inserter is killed and Redis restarted.
    inserter_at: float = 0.35
    redis_at: float = 0.6
    rebuild_timeout_s: float = 900.0


@dataclass
class ChaosLog:
    actions: list[str] = field(default_factory=list)
    worker_kills: int = 0
    inserter_kills: int = 0
    redis_restarts: int = 0
    rebuild_exit: int | None = None
    rebuild_output: str = ""


class ChaosDriver:
    def __init__(
        self,
        run: DemoRun,
        plan: ChaosPlan,
        *,
        restart_redis: Callable[[], None],
        env: dict[str, str],
        say: Callable[[str], None],
    ) -> None:
        self.run = run
        self.plan = plan
        self.restart_redis = restart_redis
        self.env = env
        self.say = say
        self.log = ChaosLog()
        self.rng = random.Random(plan.seed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="chaos", daemon=True)
        self._rebuild: threading.Thread | None = None
        self.started_at = time.monotonic()

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    @property
    def done(self) -> bool:
        """No fault pending: the kills are over and the read-model rebuild (if any) finished."""
        rebuilding = self._rebuild is not None and self._rebuild.is_alive()
        return not self._thread.is_alive() and not rebuilding

    # -- the faults -------------------------------------------------------------------------------

    def _note(self, action: str) -> None:
        line = f"[{time.monotonic() - self.started_at:5.1f}s] chaos: {action}"
        self.log.actions.append(line)
        self.say(line)

    def _progress(self) -> float:
        return self.run.produced / max(1, self.run.config.events)

    def _loop(self) -> None:
        while not self._stop.wait(self.rng.uniform(*self.plan.kill_every_s)):
            finished = self.run.producing_done  # the one-time faults still happen, then stop
            if not finished:
                self._kill_a_worker()
            if not self.log.inserter_kills and (finished or self._progress() >= self.plan.inserter_at):
                self._kill_the_inserter()
            if not self.log.redis_restarts and (finished or self._progress() >= self.plan.redis_at):
                self._restart_redis()
            if finished:
                return

    def _kill_a_worker(self) -> None:
        victim = self.rng.choice([r for r in self.run.roles if r.is_worker])
        with self.run.roles_lock:
            victim.replace()
        self.log.worker_kills += 1
        self._note(f"kill -9 {victim.name}; replaced by worker id {victim.args[-1]}")

    def _kill_the_inserter(self) -> None:
        inserter = next(r for r in self.run.roles if r.name == "inserter")
        with self.run.roles_lock:
            inserter.replace()
        self.log.inserter_kills += 1
        self._note("kill -9 inserter; restarted")

    def _restart_redis(self) -> None:
        self.restart_redis()
        self.log.redis_restarts += 1
        self._note("redis-server killed and restarted empty; rebuilding the read models")
        self._rebuild = threading.Thread(target=self._rebuild_projections, name="rebuild", daemon=True)
        self._rebuild.start()

    def _rebuild_projections(self) -> None:
        out = subprocess.run(
            [*CLI, "rebuild-projections", "--catch-up-timeout", str(self.plan.rebuild_timeout_s)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=self.plan.rebuild_timeout_s + 60,
            check=False,
        )
        self.log.rebuild_exit = out.returncode
        self.log.rebuild_output = (out.stdout + out.stderr)[-4000:]
        self._note(f"rebuild-projections exited {out.returncode}")
