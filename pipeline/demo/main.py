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

from pipeline.demo.expected import Observed, caught_up
from pipeline.demo.metrics_scrape import merged, scrape
from pipeline.demo.roles import Role
from pipeline.demo.run import (
    DemoConfig,
    DemoRun,
    dead_lettered,
    demo_settings,
    duplicate_rows,
    loaded_rows,
    new_run,
    observe,
    provision,
    rows_per_customer,
    start_producing,
    start_stack,
    warehouse_latency,
)
from pipeline.errors import TerminalError
from pipeline.servers import stack as local_stack
from pipeline.servers.process import free_port


@dataclass
class Outcome:
    run: DemoRun
    observed: Observed
    seconds: float


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
    roles.append(Role("inserter", ["inserter", "--wait-seconds", "1"], free_port(), logs / "inserter.log"))
    return roles


def projected_count(run: DemoRun) -> int:
    roles = [r for r in run.roles if r.name == "projector"]
    if not roles:
        return run.expected.unique_valid  # no projector in this build: nothing to wait for
    metrics = merged([scrape(r.metrics_port) for r in roles])
    return int(metrics.get("shardhouse_projector_events_applied_total", 0))


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


def watch(run: DemoRun, console: Console) -> Observed:
    deadline = time.monotonic() + run.config.timeout

    def sample() -> Observed:
        return observe(run, lambda: loaded_rows(run), lambda: projected_count(run))

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
            if caught_up(run.expected, obs, producing_done=run.producing_done):
                run.caught_up_seconds = time.monotonic() - run.started_at
                return obs
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
    run, obs = outcome.run, outcome.observed
    exp = run.expected
    per_customer = rows_per_customer(run)
    p50, p99 = warehouse_latency(run)
    dl = dead_lettered(run)
    dups = duplicate_rows(run)
    mismatched = {
        c: (per_customer.get(c, 0), n) for c, n in exp.per_customer.items() if per_customer.get(c, 0) != n
    }
    console.print()
    console.print("[bold]summary[/bold]")
    console.print(f"  produced            {exp.sent:>10,} records in {run.produce_seconds:.1f}s "
                  f"({exp.sent / max(run.produce_seconds, 1e-9):,.0f}/s)")  # fmt: skip
    console.print(f"  unique valid events {exp.unique_valid:>10,}")
    console.print(
        f"  duplicates dropped  {obs.duplicates_dropped:>10,}   (producer retries sent: {exp.duplicates:,})"
    )
    console.print(f"  dead-lettered       {dl:>10,}   (invalid sent: {exp.invalid:,}; in S3 dead-letter/)")
    console.print(f"  warehouse rows      {sum(per_customer.values()):>10,}   duplicate rows: {dups}")
    console.print(f"  read models applied {obs.projected:>10,}")
    console.print(f"  produce → warehouse latency p50 {p50:.1f}s, p99 {p99:.1f}s")
    console.print(
        f"  end to end          {outcome.seconds:.1f}s ({exp.unique_valid / max(outcome.seconds, 1e-9):,.0f} events/s)"
    )
    console.print("  rows per customer:  " + ", ".join(f"{c}={n:,}" for c, n in sorted(per_customer.items())))
    verdict = "[green]exactly once: every unique valid event is in the warehouse once[/green]"
    if mismatched or dups or dl != exp.invalid:
        verdict = f"[red]MISMATCH: customers {mismatched}, duplicate rows {dups}, dead letters {dl}/{exp.invalid}[/red]"
    console.print("  " + verdict)
    console.print()
    console.print("[bold]look at the results[/bold]")
    console.print(
        f"  psql '{state.pg_url}' -c 'SELECT customer_id, event_type, count(*) FROM shardhouse.load_ledger GROUP BY 1, 2'"  # noqa: S608
    )
    first = sorted(per_customer)[0] if per_customer else "cust_0001"
    console.print(f"  psql '{state.pg_url}' -c 'SELECT * FROM c_{first}.page_view LIMIT 5'")  # noqa: S608
    console.print(f'  eval "$(shardhouse env --state-dir {run.config.state_dir})"; shardhouse loads')


def run_demo(config: DemoConfig, console: Console, say: Callable[[str], None]) -> int:
    state = start_stack(config, say)
    env = demo_settings(state, config)
    os.environ.update({k: v for k, v in state.env.items() if k.startswith("AWS_")})  # boto3 reads these
    run = new_run(config, env)
    try:
        say("provisioning a 4-shard stream, bucket, queue + DLQ, warehouse")
        provision(run)
        run.roles = _roles(config)
        for role in run.roles:
            role.start(env)
        say(f"started {', '.join(r.name for r in run.roles)} (logs in {config.state_dir / 'logs'})")
        start_producing(run)
        started = time.monotonic()
        obs = watch(run, console)
        outcome = Outcome(run, obs, time.monotonic() - started)
        summary(outcome, console, state)
        return 0
    finally:
        for role in run.roles:
            role.stop()
        if not config.keep:
            local_stack.down(config.state_dir)
            say("stopped everything (use --keep to leave the stack running)")
        else:
            say(f"stack left running; `shardhouse down --state-dir {config.state_dir}` stops it")
        sys.stdout.flush()
