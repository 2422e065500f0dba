"""``shardhouse worker`` (the native KCL-compatible runtime) and ``shardhouse leases``."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import Annotated

import typer

from pipeline.app.cli import context
from pipeline.app.cli.app import app
from pipeline.app.processors import resolve_processor
from pipeline.consumer.dead_letters import S3DeadLetters
from pipeline.consumer.kcl3_assignment import AssignmentConfig, WorkerStats, active_workers
from pipeline.consumer.kcl3_state import ClientVersion, LockItem, mode_for
from pipeline.consumer.kcl3_tables import CoordinatorState, WorkerMetricsTable, checkpoint_owner
from pipeline.consumer.kpl import AggregateLimits
from pipeline.consumer.lease_store import LeaseStore
from pipeline.consumer.leases import Lease
from pipeline.consumer.spot import watch_spot_notice
from pipeline.consumer.worker import Worker, WorkerConfig, WorkerMetrics
from pipeline.core.errors import ConfigError
from pipeline.core.observability import configure_logging, serve_metrics
from pipeline.core.settings import Settings


@app.command()
def worker(
    app_name: Annotated[
        str | None,
        typer.Option(
            "--app",
            help="Application name = lease table name. Default for batcher and projector: "
            "SHARDHOUSE_BATCHER_APP / SHARDHOUSE_PROJECTOR_APP (a deployed stack's lease tables).",
        ),
    ] = None,
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
    app_name = app_name or default_application(processor, settings)
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
        aggregate_limits=AggregateLimits(w.max_aggregate_records, w.max_aggregate_bytes),
        max_delivery_records=w.max_delivery_records,
        idle_between_reads_s=w.idle_between_reads_ms / 1000,
        parent_poll_s=w.parent_poll_ms / 1000,
        status_log_s=status_every,
    )
    res = settings.resources
    runtime = Worker(
        config,
        store=LeaseStore(clients.dynamodb(), app_name),
        kinesis=clients.kinesis(),
        processor_factory=lambda: factory(clients, settings),
        dead_letter=S3DeadLetters(clients.s3(), res.bucket, res.stream, app_name),
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


def default_application(processor: str, settings: Settings) -> str:
    """The lease table of a role's own application, so `worker --processor batcher` needs no --app."""
    named = {"batcher": settings.worker.batcher_app, "projector": settings.worker.projector_app}
    if processor not in named:
        raise ConfigError(f"--app is required with --processor {processor!r} (batcher and projector default)")
    return named[processor]


@app.command()
def leases(
    app_name: Annotated[str, typer.Option("--app", help="Application name = lease table name.")],
) -> None:
    """Show the table's mode and leader, each worker's published metrics, then each lease:
    owner (old→new during a 3.x handoff), counter, checkpoint, owner switches, parents, lag."""
    settings = context.settings()
    clients = context.clients()
    store = LeaseStore(clients.dynamodb(), app_name)
    rows = sorted(store.list_leases(), key=lambda lease: lease.lease_key)
    state = CoordinatorState(clients.dynamodb(), app_name)
    metrics = WorkerMetricsTable(clients.dynamodb(), app_name)
    side = state.exists()
    version, leader = (state.client_version(), state.leader()) if side else (None, None)
    workers = metrics.all() if side and metrics.exists() else None
    for line in coordination_lines(side, version, leader, workers, rows, time.time()):
        typer.echo(line)
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
        owner = lease.lease_owner or "(none)"
        if (previous := checkpoint_owner(lease)) is not None:
            owner = f"{previous}→{owner}"  # the leader's handoff: the old owner is checkpointing
        typer.echo(
            f"{lease.lease_key:<22} {owner:<28} {lease.lease_counter:>7} "
            f"{cp[-28:]:<28} {lease.owner_switches:>8} {lag:>8}  {parents}"
        )
    if not rows:
        typer.echo(f"(no leases in table {app_name})")


def coordination_lines(
    side_tables: bool,
    version: ClientVersion | None,
    leader: LockItem | None,
    workers: Sequence[WorkerStats] | None,
    leases: Sequence[Lease],
    now_s: float,
) -> list[str]:
    """The header of ``shardhouse leases``: which protocol the table is in (KCL-SPEC §2.3 vs
    §2.6), who holds the 3.x leader lock, and what each worker last published."""
    if not side_tables:
        return ["mode: 2.x (no KCL 3.x CoordinatorState table)", ""]
    mode = mode_for(version, metrics_table=workers is not None)
    cv = version.value if version else "absent"
    lines = [f"mode: {mode.protocol.value} (Migration3.0 cv={cv})"]
    if leader is None:
        lines.append("leader: (none)")
    else:
        state = "released" if leader.released else f"lock {leader.duration_s:.0f} s"
        lines.append(f"leader: {leader.owner} ({state})")
    if workers is not None:
        active = {w.worker_id for w in active_workers(workers, now_s, AssignmentConfig())}
        held = Counter(x.lease_owner for x in leases if x.lease_owner)
        lines.append(f"workers ({len(workers)} in WorkerMetricStats, {len(active)} active):")
        for w in sorted(workers, key=lambda x: x.worker_id):
            age = f"{now_s - w.last_update:.0f} s ago" if w.last_update is not None else "never"
            shown = (
                "default (throughput)"
                if w.uses_default_metric
                else " ".join(
                    f"{name}={list(values)[-3:]}/{list(w.operating_range.get(name, []))[:1]}"
                    for name, values in sorted(w.metric_stats.items())
                )
            )
            flag = "" if w.worker_id in active else "  (inactive)"
            lines.append(
                f"  {w.worker_id:<28} updated {age:<10} leases {held.get(w.worker_id, 0):>3}  {shown}{flag}"
            )
    lines.append("")
    return lines


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
