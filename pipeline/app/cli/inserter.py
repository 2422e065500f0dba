"""``shardhouse inserter`` (the loader), ``shardhouse loads`` (recent loads per customer) and
``shardhouse replay`` (re-announce batches already in S3)."""

from __future__ import annotations

import signal
from datetime import UTC, date, datetime
from typing import Annotated, Any

import psycopg
import typer

from inserter.replay import Replayer, parse_location
from inserter.service import Inserter, InserterConfig, InserterMetrics
from inserter.source import ObjectSource
from inserter.wiring import CopyTuning, build_loader, build_queue, dependency_probes, reporting_dialect
from pipeline.app.cli import context
from pipeline.app.cli.app import app
from pipeline.core.errors import ConfigError
from pipeline.core.manifest import BatchManifest
from pipeline.core.observability import configure_logging, serve_metrics
from schemas import load_registry


@app.command()
def inserter(
    wait_seconds: Annotated[int, typer.Option(min=0, max=20, help="SQS long-poll wait per receive.")] = 20,
    visibility_timeout: Annotated[
        int, typer.Option(min=5, max=43_200, help="Seconds a held message stays invisible per heartbeat.")
    ] = 60,
    max_messages: Annotated[int, typer.Option(min=1, max=10, help="Messages per receive.")] = 10,
    once: Annotated[bool, typer.Option("--once", help="Exit after a receive that returns nothing.")] = False,
    copy_pause: Annotated[
        float, typer.Option(hidden=True, help="Test hook: sleep after each COPY batch.")
    ] = 0.0,
    copy_batch_rows: Annotated[int, typer.Option(hidden=True, min=1)] = 65_536,
) -> None:
    """Load announced batches into per-customer warehouse tables, exactly once.

    JSON logs on stderr; Prometheus metrics on SHARDHOUSE_METRICS_PORT. SIGTERM/SIGINT: the
    current load finishes, received-but-unstarted messages go back to the queue, then exit."""
    settings = context.settings()
    configure_logging(settings.log_level, role="inserter")
    serve_metrics(settings.worker.metrics_port)
    clients = context.clients()
    registry = load_registry()
    service = Inserter(
        InserterConfig(
            bucket=settings.resources.bucket,
            max_messages=max_messages,
            wait_seconds=wait_seconds,
            visibility_timeout=visibility_timeout,
            heartbeat_seconds=max(1.0, visibility_timeout / 3),
            max_receive_count=settings.resources.max_receive_count,
            exit_when_idle=once,
        ),
        queue=build_queue(settings, clients),
        loader=build_loader(settings, clients, registry, CopyTuning(copy_batch_rows, copy_pause)),
        registry=registry,
        connect=lambda: clients.warehouse(autocommit=True),
        metrics=InserterMetrics(),
        probes=dependency_probes(settings, clients),
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: service.request_stop(signal.Signals(signum).name))
    service.run()


@app.command()
def loads(
    customer: Annotated[str | None, typer.Option(help="Only this customer.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="Most recent loads to show.")] = 20,
) -> None:
    """Recent loads per customer: objects, rows loaded/skipped, duration, lag (load time minus
    the newest and the oldest occurred_at of the load)."""
    settings = context.settings()
    registry = load_registry()
    dialect = reporting_dialect(settings, registry)
    params: tuple[Any, ...] = (customer, limit) if customer else (limit,)
    with context.clients().warehouse() as conn:
        try:
            rows = conn.execute(dialect.recent_loads(customer=customer is not None), params).fetchall()
        except psycopg.errors.UndefinedTable:
            typer.echo("(no loads recorded: the inserter has not run against this warehouse yet)")
            return
    typer.echo(
        f"{'customer':<20} {'loaded at (UTC)':<19} {'objects':>7} {'rows':>9} {'skipped':>8} "
        f"{'ms':>6} {'lag new':>9} {'lag old':>9}  batch"
    )
    for cust, _load_id, batch, objects, loaded, skipped, ms, at, oldest, newest in rows:
        typer.echo(
            f"{cust:<20} {at.astimezone(UTC):%Y-%m-%d %H:%M:%S} {objects:>7} {loaded:>9} {skipped:>8} "
            f"{ms:>6} {_lag(at, newest):>9} {_lag(at, oldest):>9}  {batch}"
        )
    if not rows:
        typer.echo("(no loads recorded)" if not customer else f"(no loads recorded for {customer})")


def _lag(loaded_at: datetime, occurred: datetime | None) -> str:
    if occurred is None:
        return "-"
    seconds = (loaded_at - occurred).total_seconds()
    if abs(seconds) < 120:
        return f"{seconds:.1f}s"
    if abs(seconds) < 7200:
        return f"{seconds / 60:.1f}m"
    if abs(seconds) < 172_800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


@app.command()
def replay(
    source: Annotated[
        str, typer.Option("--from", help="s3://bucket/prefix, or a prefix in the configured bucket.")
    ],
    since: Annotated[
        str | None, typer.Option(help="First batch day (YYYY-MM-DD, the key's dt=) to replay.")
    ] = None,
    until: Annotated[str | None, typer.Option(help="Last batch day (YYYY-MM-DD) to replay.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the manifests, send nothing.")] = False,
) -> None:
    """Re-announce batches already in S3 through the normal queue (backfill, recovery).

    Objects are grouped back into their original batches (shard + sequence range from the key),
    described from their Parquet footers, and announced; loading them again changes nothing."""
    settings = context.settings()
    configure_logging(settings.log_level, role="replay")
    clients = context.clients()
    bucket, prefix = parse_location(source, settings.resources.bucket)
    first, last = _day(since, "--since"), _day(until, "--until")
    if first and last and first > last:
        raise ConfigError(f"--since {since} is after --until {until}")
    replayer = Replayer(
        clients.s3(),
        ObjectSource(clients.s3()),
        None if dry_run else build_queue(settings, clients),
        stream=settings.resources.stream,
    )

    def show(m: BatchManifest) -> None:
        if dry_run:
            rows = sum(o.rows for o in m.objects)
            typer.echo(f"{m.batch_id}  objects={len(m.objects)} rows={rows}")

    report = replayer.run(bucket, prefix, since=first, until=last, on_manifest=show)
    verb = "would announce" if dry_run else "announced"
    typer.echo(
        f"{verb} {report.batches} batches ({report.messages} messages, {report.selected} objects, "
        f"{report.rows} rows) from s3://{bucket}/{prefix}"
        + (f"; {len(report.ignored)} non-event keys ignored" if report.ignored else "")
    )


def _day(value: str | None, flag: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise ConfigError(f"{flag} {value!r}: expected YYYY-MM-DD") from exc
