"""The warehouses the inserter loads, one folder each (dlt's ``destinations/impl/<name>`` shape):
``postgres/`` (dialect, binary-COPY stager and its encoder) and ``redshift/`` (the PostgreSQL
dialect with Redshift's differences, the S3-manifest COPY stager). :func:`open_destination` is
the one place that chooses between them."""

from __future__ import annotations

from dataclasses import dataclass

from inserter.destinations.postgres.dialect import PostgresDialect
from inserter.destinations.postgres.stager import PostgresCopyStager
from inserter.destinations.redshift.dialect import RedshiftDialect
from inserter.destinations.redshift.stager import RedshiftCopyStager
from inserter.destinations.staging import Stager
from inserter.source import ObjectSource
from pipeline.core.errors import ConfigError
from pipeline.core.settings import WarehouseDialect, WarehouseSettings
from schemas import Registry

__all__ = [
    "CopyTuning",
    "Destination",
    "PostgresDialect",
    "RedshiftDialect",
    "open_destination",
    "reporting_dialect",
]


@dataclass(frozen=True)
class CopyTuning:
    batch_rows: int = 65_536
    #: Seconds to sleep after each written COPY batch: a crash-test hook, 0 in production.
    pause: float = 0.0


@dataclass(frozen=True)
class Destination:
    dialect: PostgresDialect
    stager: Stager


def open_destination(
    wh: WarehouseSettings, registry: Registry, source: ObjectSource, tuning: CopyTuning = CopyTuning()
) -> Destination:
    match wh.dialect:
        case WarehouseDialect.REDSHIFT:
            if not wh.redshift_iam_role:
                raise ConfigError(
                    "SHARDHOUSE_WAREHOUSE_REDSHIFT_IAM_ROLE is required when the dialect is redshift"
                )
            rs = RedshiftDialect(registry, iam_role=wh.redshift_iam_role, **_timeouts(wh))
            return Destination(rs, RedshiftCopyStager(source, rs, registry))
        case WarehouseDialect.POSTGRES:
            pg = PostgresDialect(registry, **_timeouts(wh))
            stager = PostgresCopyStager(source, pg, batch_rows=tuning.batch_rows, pause=tuning.pause)
            return Destination(pg, stager)


def _timeouts(wh: WarehouseSettings) -> dict[str, int]:
    return {"statement_timeout_s": wh.statement_timeout_seconds, "lock_timeout_s": wh.lock_timeout_seconds}


def reporting_dialect(wh: WarehouseSettings, registry: Registry) -> PostgresDialect:
    """The dialect for read-only ledger queries (``loads``, ``status``): no IAM role needed."""
    match wh.dialect:
        case WarehouseDialect.REDSHIFT:
            return RedshiftDialect(registry, iam_role=wh.redshift_iam_role or "")
        case WarehouseDialect.POSTGRES:
            return PostgresDialect(registry)
