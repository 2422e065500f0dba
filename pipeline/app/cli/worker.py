"""``shardhouse worker`` (the native KCL-compatible runtime) and ``shardhouse leases``."""

from __future__ import annotations

import signal
import threading
from dataclasses import replace
from typing import Annotated

import typer

from pipeline.app.cli import context
from pipeline.app.cli.app import app
from pipeline.app.processors import resolve_processor
from pipeline.consumer.lease_store import LeaseStore
from pipeline.consumer.spot import watch_spot_notice
from pipeline.consumer.worker import Worker, WorkerConfig, WorkerMetrics
from pipeline.core.observability import configure_logging, serve_metrics


@app.command()
def worker(
    app_name: Annotated[str, typer.Option("--app", help="Application name = lease table name.")],
    processor: Annotated[
        str, typer.Option(help="batcher, projector, noop, recorder or package.module:factory.")
    ] = "batcher",
    worker_id: Annotated[str | None, typer.Option(help="Defaults to host name + random suffix.")] = None,
    status_every: Annotated[float, typer.Option(help="Seconds between progress log lines.")] = 10.0,
) -> None:
    """Consume the stream with the native runtime: leases in DynamoDB, one thread per shard."""
    base = context.settings()
    # The processor sees the same worker id as the lease table (the recorder writes it down).
    settings = replace(base, worker=replace(base.worker, worker_id=worker_id or base.worker.worker_id))
    factory = resolve_processor(processor)
    configure_logging(settings.log_level, role=f"worker:{app_name}")
    serve_metrics(settings.worker.metrics_port)
    clients = context.clients()
    w = settings.worker
    config = WorkerConfig(
        application=app_name,
        stream=settings.resources.stream,
        worker_id=w.worker_id,
        failover_s=w.failover_ms / 1000,
        max_leases_for_worker=w.max_leases_for_worker,
        initial_position=w.initial_position,
        max_records=w.max_records,
        idle_between_reads_s=w.idle_between_reads_ms / 1000,
        parent_poll_s=w.parent_poll_ms / 1000,
        status_log_s=status_every,
    )
    runtime = Worker(
        config,
        store=LeaseStore(clients.dynamodb(), app_name),
        kinesis=clients.kinesis(),
        processor_factory=lambda: factory(clients, settings),
        metrics=WorkerMetrics(),
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: runtime.request_shutdown(signal.Signals(signum).name))
    stop = threading.Event()
    watch_spot_notice(w.spot_action_url, w.spot_poll_seconds, lambda: runtime.request_shutdown("spot"), stop)
    try:
        runtime.run()
    finally:
        stop.set()


@app.command()
def leases(
    app_name: Annotated[str, typer.Option("--app", help="Application name = lease table name.")],
) -> None:
    """Show each lease: owner, counter, checkpoint, owner switches, parents, lag."""
    settings = context.settings()
    clients = context.clients()
    store = LeaseStore(clients.dynamodb(), app_name)
    rows = sorted(store.list_leases(), key=lambda lease: lease.lease_key)
    kinesis = clients.kinesis()
    typer.echo(
        f"{'shard':<22} {'owner':<28} {'counter':>7} {'checkpoint':<28} "
        f"{'switches':>8} {'lag(ms)':>8}  parents"
    )
    for lease in rows:
        lag = "-"
        if not lease.checkpoint.is_sentinel:
            lag = str(
                _lag_ms(kinesis, settings.resources.stream, lease.lease_key, lease.checkpoint.sequence_number)
            )
        cp = f"{lease.checkpoint.sequence_number}/{lease.checkpoint.sub_sequence_number}"
        parents = ",".join(sorted(lease.parent_shard_ids)) or "-"
        typer.echo(
            f"{lease.lease_key:<22} {lease.lease_owner or '(none)':<28} {lease.lease_counter:>7} "
            f"{cp[-28:]:<28} {lease.owner_switches:>8} {lag:>8}  {parents}"
        )
    if not rows:
        typer.echo(f"(no leases in table {app_name})")


def _lag_ms(kinesis: object, stream: str, shard_id: str, sequence: str) -> int | str:
    """millisBehindLatest as seen right after the checkpoint (one cheap GetRecords of 1 record)."""
    try:
        it = kinesis.get_shard_iterator(  # type: ignore[attr-defined]
            StreamName=stream, ShardId=shard_id, ShardIteratorType="AFTER_SEQUENCE_NUMBER",
            StartingSequenceNumber=sequence,
        )["ShardIterator"]  # fmt: skip
        page = kinesis.get_records(ShardIterator=it, Limit=1)  # type: ignore[attr-defined]
        return int(page.get("MillisBehindLatest", 0) or 0)
    except Exception:
        return "?"
