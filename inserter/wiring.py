"""Build the inserter's parts from Settings and the client factory (the CLI, the demo and the
benchmarks use this; tests build the parts directly when they need other knobs)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from inserter.dialect import PostgresDialect, RedshiftDialect
from inserter.loader import Loader
from inserter.queue import BatchQueue
from inserter.source import ObjectSource
from inserter.stagers import PostgresCopyStager, RedshiftCopyStager, Stager
from pipeline.core.clients import ClientFactory
from pipeline.core.errors import ConfigError
from pipeline.core.settings import Settings
from schemas import Registry


@dataclass(frozen=True)
class CopyTuning:
    batch_rows: int = 65_536
    #: Seconds to sleep after each written COPY batch: a crash-test hook, 0 in production.
    pause: float = 0.0


def build_loader(
    settings: Settings, clients: ClientFactory, registry: Registry, tuning: CopyTuning = CopyTuning()
) -> Loader:
    wh = settings.warehouse
    source = ObjectSource(clients.s3())
    dialect: PostgresDialect
    stager: Stager
    if wh.dialect == "redshift":
        if not wh.redshift_iam_role:
            raise ConfigError(
                "SHARDHOUSE_WAREHOUSE_REDSHIFT_IAM_ROLE is required when the dialect is redshift"
            )
        rs = RedshiftDialect(registry, iam_role=wh.redshift_iam_role)
        dialect, stager = rs, RedshiftCopyStager(source, rs, registry)
    else:
        dialect = PostgresDialect(registry)
        stager = PostgresCopyStager(source, dialect, batch_rows=tuning.batch_rows, pause=tuning.pause)
    if not 0 <= wh.dedupe_window_days <= 36500:
        raise ConfigError("SHARDHOUSE_WAREHOUSE_DEDUPE_WINDOW_DAYS must be 0..36500")
    return Loader(dialect, stager, dedupe_window=timedelta(days=wh.dedupe_window_days))


def reporting_dialect(settings: Settings, registry: Registry) -> PostgresDialect:
    """The dialect for read-only ledger queries (``loads``, ``status``): no IAM role needed."""
    if settings.warehouse.dialect == "redshift":
        return RedshiftDialect(registry, iam_role=settings.warehouse.redshift_iam_role or "")
    return PostgresDialect(registry)


def build_queue(settings: Settings, clients: ClientFactory) -> BatchQueue:
    r = settings.resources
    return BatchQueue(clients.sqs(), r.queue, r.dead_letter_queue)
