"""``shardhouse demo``: the whole pipeline end to end on local servers."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from pipeline.app.cli.app import app
from pipeline.app.demo.main import run_demo
from pipeline.app.demo.run import DemoConfig


@app.command()
def demo(
    events: Annotated[
        int, typer.Option(min=100, help="Records to produce (duplicates and invalid included).")
    ] = 100_000,
    customers: Annotated[int, typer.Option(min=1, max=99_999)] = 20,
    duplicate_ratio: Annotated[float, typer.Option(min=0.0, max=0.5)] = 0.02,
    invalid_ratio: Annotated[float, typer.Option(min=0.0, max=0.5)] = 0.005,
    seed: Annotated[int, typer.Option()] = 42,
    timeout: Annotated[
        float, typer.Option(min=10, help="Give up if not caught up after this many seconds.")
    ] = 600,
    keep: Annotated[bool, typer.Option(help="Leave the local stack running afterwards.")] = False,
    state_dir: Annotated[Path, typer.Option()] = Path(".shardhouse/demo"),
    rate: Annotated[
        float | None,
        typer.Option(min=0, help="Records/s to produce (0: unthrottled) [default: 0, 2500 with --chaos]."),
    ] = None,
    chaos: Annotated[
        bool,
        typer.Option(
            help="kill -9 a random worker every few seconds, the inserter once, Redis once (then "
            "rebuild the read models), while the load runs."
        ),
    ] = False,
    chaos_seed: Annotated[int, typer.Option()] = 7,
) -> None:
    """Provision, start 2 batchers + projector + inserter, produce a seeded load, show progress
    until warehouse and read models caught up, print a summary checked against the stores.
    Exits 1 if any event is missing, doubled, or not dead-lettered."""
    console = Console() if sys.stdout.isatty() else Console(width=120)  # logs and CI: no 80-column wrap
    config = DemoConfig(
        events=events, customers=customers, duplicate_ratio=duplicate_ratio, invalid_ratio=invalid_ratio,
        seed=seed, timeout=timeout, keep=keep, state_dir=state_dir,
        rate=rate if rate is not None else (2500.0 if chaos else 0.0), chaos=chaos, chaos_seed=chaos_seed,
    )  # fmt: skip
    raise typer.Exit(run_demo(config, console, lambda m: console.print(f"[dim]{m}[/dim]", highlight=False)))
