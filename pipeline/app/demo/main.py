"""The demo's script: what runs in which order, with live progress and a summary."""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from rich.console import Console
from rich.live import Live
from rich.table import Table

from pipeline.app.demo.chaos import ChaosDriver, ChaosLog, ChaosPlan
from pipeline.app.demo.expected import Observed, caught_up
from pipeline.app.demo.roles import Role, stop_roles
from pipeline.app.demo.run import (
    DemoConfig,
    DemoRun,
    demo_settings,
    loaded_rows,
    new_run,
    observe,
    projected_events,
    provision,
    read_model_latency,
    restart_redis,
    rows_skipped,
    start_producing,
    start_stack,
    warehouse_latency,
)
from pipeline.app.demo.verify import Verdict, verify
from pipeline.app.servers import stack as local_stack
from pipeline.app.servers.process import free_port
from pipeline.core.errors import TerminalError


@dataclass
class Outcome:
    run: DemoRun
    observed: Observed
    seconds: float
    verdict: Verdict
    chaos: ChaosLog | None = None


def _roles(config: DemoConfig) -> list[Role]:
    logs = config.state_dir / "logs"
    roles = [
        Role(f"batcher-{i + 1}", ["worker", "--app", "shardhouse-demo-batcher", "--processor", "batcher",
                                  "--worker-id", f"batcher-{i + 1}"], free_port(), logs / f"batcher-{i + 1}.log")
        for i in range(config.batchers)
    ]  # fmt: skip
    if importlib.util.find_spec("workers.projector") is not None:
        roles.append(Role("projector", ["worker", "--app", "shardhouse-demo-projector", "--processor", "projector",
                                        "--worker-id", "projector-1"], free_port(), logs / "projector.log"))  # fmt: skip
    # Under chaos a killed inserter's messages come back after this visibility, not a minute.
    visibility = ["--visibility-timeout", "15"] if config.chaos else []
    roles.append(Role("inserter", ["inserter", "--wait-seconds", "1", *visibility], free_port(),
                      logs / "inserter.log"))  # fmt: skip
    return roles


def progress_table(run: DemoRun, obs: Observed) -> Table:
    exp = run.expected
    table = Table(title=f"shardhouse demo — {time.monotonic() - run.started_at:5.1f}s", title_justify="left")
    for column in ("stage", "count", "of"):
        table.add_column(column, justify="right" if column != "stage" else "left")
    table.add_row("produced", f"{obs.produced:,}", f"{run.config.events:,}")
    table.add_row("consumed (batchers)", f"{obs.consumed:,}", f"{exp.sent:,}")
    table.add_row("batched rows → S3", f"{obs.batched_rows:,}", f"{exp.unique_valid:,}")
    table.add_row("duplicates dropped", f"{obs.duplicates_dropped:,}", f"{exp.duplicates:,}")
    table.add_row("dead-lettered", f"{obs.dead_lettered:,}", f"{exp.invalid:,}")
    table.add_row("loaded (warehouse)", f"{obs.loaded_rows:,}", f"{exp.unique_valid:,}")
    table.add_row("projected (read models)", f"{obs.projected:,}", f"{exp.unique_valid:,}")
    table.add_row("max lag", f"{obs.max_lag_ms / 1000:.1f}s", "")
    return table


def watch(run: DemoRun, console: Console, chaos: ChaosDriver | None = None) -> Observed:
    deadline = time.monotonic() + run.config.timeout

    def sample() -> Observed:
        return observe(run, lambda: loaded_rows(run), lambda: projected_events(run))

    obs = sample()
    live_ok = console.is_terminal
    last_line = 0.0
    with (
        Live(progress_table(run, obs), console=console, refresh_per_second=4, transient=False)
        if live_ok
        else _Null() as live
    ):
        while True:
            obs = sample()
            if live_ok:
                live.update(progress_table(run, obs))
            elif time.monotonic() - last_line > 3:
                console.print(
                    f"[{time.monotonic() - run.started_at:5.1f}s] produced {obs.produced:,} consumed {obs.consumed:,} "
                    f"batched {obs.batched_rows:,} loaded {obs.loaded_rows:,}/{run.expected.unique_valid:,} "
                    f"projected {obs.projected:,} lag {obs.max_lag_ms / 1000:.1f}s",
                    highlight=False,
                    soft_wrap=True,
                )
                last_line = time.monotonic()
            if run.producing_error is not None:
                raise TerminalError(f"producing failed: {run.producing_error}")
            settled = chaos is None or chaos.done
            if settled and caught_up(run.expected, obs, producing_done=run.producing_done):
                run.caught_up_seconds = time.monotonic() - run.started_at
                return obs
            with run.roles_lock:
                dead = [r.name for r in run.roles if not r.alive]
            if dead:
                raise TerminalError(f"role(s) exited: {', '.join(dead)}; see {run.config.state_dir / 'logs'}")
            if time.monotonic() > deadline:
                raise TerminalError(
                    f"not caught up after {run.config.timeout:.0f}s; see {run.config.state_dir / 'logs'}"
                )
            time.sleep(0.5)


class _Null:
    def __enter__(self) -> _Null:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def update(self, _table: Table) -> None:
        return None


def summary(outcome: Outcome, console: Console, state: local_stack.StackState) -> None:
    run, obs, verdict = outcome.run, outcome.observed, outcome.verdict
    exp = run.expected
    per_customer = verdict.rows_per_customer
    p50, p99 = warehouse_latency(run)
    merge_skipped = rows_skipped(run)
    console.print()
    console.print("[bold]summary[/bold]")
    console.print(f"  produced            {exp.sent:>10,} records in {run.produce_seconds:.1f}s "
                  f"({exp.sent / max(run.produce_seconds, 1e-9):,.0f}/s)")  # fmt: skip
    console.print(f"  unique valid events {exp.unique_valid:>10,}")
    console.print(
        f"  duplicates dropped  {obs.duplicates_dropped:>10,}   by the batchers, {merge_skipped:,} more by the "
        f"warehouse merge (producer retries sent: {exp.duplicates:,})"
    )
    repeated = verdict.dead.lines - verdict.dead.records
    console.print(
        f"  dead-lettered       {verdict.dead.records:>10,}   (invalid sent: {exp.invalid:,}; in S3 dead-letter/"
        + (f", {repeated} written twice by replays)" if repeated else ")")
    )
    console.print(
        f"  warehouse rows      {sum(per_customer.values()):>10,}   duplicate rows: {verdict.duplicate_rows}"
    )
    models = "not checked" if verdict.model_diff is None else ("= fold of the unique events" if not
                                                               verdict.model_diff else "DIFFER from the fold")  # fmt: skip
    console.print(f"  read models         {obs.projected:>10,}   events counted; {models}")
    console.print(f"  produce → warehouse latency p50 {p50:.1f}s, p99 {p99:.1f}s")
    r50, r99 = read_model_latency(run)
    if r50 is not None and r99 is not None:
        console.print(f"  produce → read model latency p50 {r50:.2f}s, p99 {r99:.2f}s")
    console.print(
        f"  end to end          {outcome.seconds:.1f}s ({exp.unique_valid / max(outcome.seconds, 1e-9):,.0f} events/s)"
    )
    console.print("  rows per customer:  " + ", ".join(f"{c}={n:,}" for c, n in sorted(per_customer.items())))
    if outcome.chaos is not None:
        log = outcome.chaos
        console.print(
            f"  chaos               {log.worker_kills} workers killed and replaced, inserter killed "
            f"{log.inserter_kills} time(s), Redis restarted {log.redis_restarts} time(s) (rebuild exit {log.rebuild_exit})"
        )
    if verdict.ok:
        console.print("  [green]exactly once: every unique valid event is in the warehouse once, "
                      "every invalid one dead-lettered, read models equal the fold[/green]")  # fmt: skip
    else:
        console.print("  [red]MISMATCH: " + "; ".join(verdict.problems()) + "[/red]")
    console.print()
    console.print("[bold]look at the results[/bold]" + ("" if run.config.keep else " (run with --keep to leave "
                                                        "the servers up for these)"))  # fmt: skip
    console.print(
        f"  psql '{state.pg_url}' -c 'SELECT customer_id, event_type, count(*) FROM shardhouse.load_ledger GROUP BY 1, 2'"  # noqa: S608
    )
    first = sorted(per_customer)[0] if per_customer else "cust_0001"
    console.print(f"  psql '{state.pg_url}' -c 'SELECT * FROM c_{first}.page_view LIMIT 5'")  # noqa: S608
    console.print(f'  eval "$(shardhouse env --state-dir {run.config.state_dir})"; export '
                  f'SHARDHOUSE_STREAM={run.settings.resources.stream}')  # fmt: skip
    console.print("  shardhouse status; shardhouse loads")
    console.print(f"  shardhouse query counts -c {first} -t page_view --by hour")
    console.print("  shardhouse serve-api --port 8080 &  curl -s "
                  f"'http://127.0.0.1:8080/v1/customers/{first}/counts/page_view?by=day'")  # fmt: skip


def run_demo(config: DemoConfig, console: Console, say: Callable[[str], None]) -> int:
    """The demo; exit status 0 only when the stores show every event exactly once."""
    return 0 if execute(config, console, say).verdict.ok else 1


def execute(config: DemoConfig, console: Console, say: Callable[[str], None]) -> Outcome:
    cfg, state = start_stack(config, say)
    env = demo_settings(state, config)
    saved = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    # boto3 reads credentials and region from the environment; put the caller's back afterwards
    # (tests and the chaos run call execute() inside a process that has its own stack).
    os.environ.update({k: v for k, v in state.env.items() if k.startswith("AWS_")})
    try:
        return _execute(config, console, say, cfg, state, env)
    finally:
        for key in [k for k in os.environ if k.startswith("AWS_")]:
            del os.environ[key]
        os.environ.update(saved)


def _execute(
    config: DemoConfig,
    console: Console,
    say: Callable[[str], None],
    cfg: local_stack.StackConfig,
    state: local_stack.StackState,
    env: dict[str, str],
) -> Outcome:
    run = new_run(config, env)
    chaos: ChaosDriver | None = None
    try:
        say(f"provisioning a {config.shards}-shard stream, bucket, queue + DLQ, warehouse")
        provision(run, say)
        run.roles = _roles(config)
        for role in run.roles:
            role.start(env)
        say(f"started {', '.join(r.name for r in run.roles)} (logs in {config.state_dir / 'logs'})")
        if config.chaos:
            chaos = ChaosDriver(
                run,
                ChaosPlan(seed=config.chaos_seed),
                restart_redis=lambda: restart_redis(cfg, say),
                env=env,
                say=say,
            )
            chaos.start()
        start_producing(run)
        started = time.monotonic()
        obs = watch(run, console, chaos)
        seconds = time.monotonic() - started
        say("checking the warehouse, dead letters and read models against what was produced")
        outcome = Outcome(run, obs, seconds, verify(run), chaos.log if chaos else None)
        summary(outcome, console, state)
        return outcome
    finally:
        if chaos is not None:
            chaos.stop()
        stop_roles(run.roles, say)
        if not config.keep:
            local_stack.down(config.state_dir)
            say("stopped everything (use --keep to leave the stack running)")
        else:
            say(f"stack left running; `shardhouse down --state-dir {config.state_dir}` stops it")
        sys.stdout.flush()
