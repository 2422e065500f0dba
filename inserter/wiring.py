"""Build the inserter's parts from Settings and the client factory (the CLI, the demo and the
benchmarks use this; tests build the parts directly when they need other knobs)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from inserter.destinations import CopyTuning, PostgresDialect, open_destination
from inserter.destinations import reporting_dialect as _reporting_dialect
from inserter.loader import Loader
from inserter.queue import BatchQueue
from inserter.source import ObjectSource
from pipeline.core.aws_errors import is_transient_aws
from pipeline.core.clients import ClientFactory
from pipeline.core.errors import ConfigError
from pipeline.core.settings import Settings
from schemas import Registry

__all__ = ["CopyTuning", "build_loader", "build_queue", "dependency_probes", "reporting_dialect"]


def build_loader(
    settings: Settings, clients: ClientFactory, registry: Registry, tuning: CopyTuning | None = None
) -> Loader:
    wh = settings.warehouse
    destination = open_destination(wh, registry, ObjectSource(clients.s3()), tuning or CopyTuning())
    if not 0 <= wh.dedupe_window_days <= 36500:
        raise ConfigError("SHARDHOUSE_WAREHOUSE_DEDUPE_WINDOW_DAYS must be 0..36500")
    window = timedelta(days=wh.dedupe_window_days)
    return Loader(destination.dialect, destination.stager, dedupe_window=window)


def reporting_dialect(settings: Settings, registry: Registry) -> PostgresDialect:
    return _reporting_dialect(settings.warehouse, registry)


def build_queue(settings: Settings, clients: ClientFactory) -> BatchQueue:
    r = settings.resources
    return BatchQueue(clients.sqs(), r.queue, r.dead_letter_queue)


def dependency_probes(settings: Settings, clients: ClientFactory) -> dict[str, Callable[[], object]]:
    """What a load needs besides the warehouse: S3, asked about the batch bucket. Any answer
    counts (a 403 from a role without s3:ListBucket is S3 answering); only a transient failure
    (no connection, a timeout, throttling, a 5xx) is an outage."""
    s3, bucket = clients.s3(), settings.resources.bucket

    def s3_answers() -> None:
        try:
            s3.head_bucket(Bucket=bucket)
        except Exception as exc:
            if is_transient_aws(exc):
                raise

    return {"s3": s3_answers}
