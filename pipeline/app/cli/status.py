"""``shardhouse status``: the operator's one screen (workers, lag, queues, loads, read models)."""

from __future__ import annotations

import time
from typing import Annotated

import orjson
import typer

from inserter.wiring import reporting_dialect
from pipeline.app.cli import context
from pipeline.app.cli.app import app
from pipeline.app.status.collect import StatusScope, collect
from pipeline.app.status.model import default_sample_seconds
from pipeline.app.status.render import render
from schemas import load_registry


@app.command()
def status(
    sample: Annotated[
        float | None,
        typer.Option(min=0.0, help="Seconds to watch lease renewals [default: failover/3 + 0.7]."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document instead of text.")] = False,
    watch: Annotated[float, typer.Option(min=0.0, help="Repeat every N seconds (0: once).")] = 0.0,
) -> None:
    """Workers alive, leases per worker, per-shard lag and checkpoint age, queue depths, last
    load per customer, read-model staleness. Parts that cannot be read are listed, not fatal."""
    settings = context.settings()
    clients = context.clients()
    sample_s = default_sample_seconds(settings.worker.failover_ms) if sample is None else sample
    scope = StatusScope.from_settings(settings, sample_s)
    dialect = reporting_dialect(settings, load_registry())
    while True:
        snap = collect(scope, clients, ledger_query=dialect.customer_freshness)
        if as_json:
            typer.echo(orjson.dumps(snap.to_json()).decode())
        else:
            typer.echo(render(snap))
        if watch <= 0:
            return
        time.sleep(watch)
        if not as_json:
            typer.echo("")
