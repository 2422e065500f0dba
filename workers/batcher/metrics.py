"""Per-shard batcher metrics: a plain object (``as_dict()`` for a metrics endpoint), optional
Prometheus counters in a registry passed in, and one structured log line per flush.

Counters are updated once per flush (plus ``records_in`` once per delivery), never per record,
so metrics cost nothing on the hot path.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge as PromGauge
from prometheus_client import Histogram as PromHistogram

from pipeline.core.memo import IdentityMemo
from workers.batcher.buffer import Batch
from workers.batcher.commit import FlushResult

log = logging.getLogger("shardhouse.batcher")

FLUSH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass
class ShardMetrics:
    shard_id: str
    records_in: int = 0
    valid: int = 0
    invalid: int = 0
    invalid_by_reason: Counter[str] = field(default_factory=Counter)
    duplicates_in_batch: int = 0
    duplicates_redis: int = 0
    batches: int = 0
    batches_by_outcome: Counter[str] = field(default_factory=Counter)
    flushes_by_reason: Counter[str] = field(default_factory=Counter)
    objects: int = 0
    rows_written: int = 0
    bytes_in: int = 0
    bytes_written: int = 0
    flush_seconds_sum: float = 0.0
    flush_seconds_max: float = 0.0
    last_flush_seconds: float = 0.0

    @property
    def duplicates_dropped(self) -> int:
        return self.duplicates_in_batch + self.duplicates_redis

    def as_dict(self) -> dict[str, Any]:
        return {
            "shard_id": self.shard_id,
            "records_in": self.records_in,
            "valid": self.valid,
            "invalid": self.invalid,
            "invalid_by_reason": dict(self.invalid_by_reason),
            "duplicates_dropped": self.duplicates_dropped,
            "duplicates_in_batch": self.duplicates_in_batch,
            "duplicates_redis": self.duplicates_redis,
            "batches": self.batches,
            "batches_by_outcome": dict(self.batches_by_outcome),
            "flushes_by_reason": dict(self.flushes_by_reason),
            "objects": self.objects,
            "rows_written": self.rows_written,
            "bytes_in": self.bytes_in,
            "bytes_written": self.bytes_written,
            "flush_seconds_sum": round(self.flush_seconds_sum, 6),
            "flush_seconds_max": round(self.flush_seconds_max, 6),
            "last_flush_seconds": round(self.last_flush_seconds, 6),
        }


class PromMetrics:
    """The same numbers as Prometheus series (labels: shard_id, plus reason/outcome/where)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        ns = "shardhouse_batcher"
        self.records = PromCounter(f"{ns}_records", "Records delivered", ["shard_id"], registry=registry)
        self.valid = PromCounter(f"{ns}_valid", "Valid events", ["shard_id"], registry=registry)
        self.invalid = PromCounter(
            f"{ns}_invalid", "Dead-lettered records", ["shard_id", "reason"], registry=registry
        )
        self.duplicates = PromCounter(
            f"{ns}_duplicates", "Duplicates dropped", ["shard_id", "where"], registry=registry
        )
        self.batches = PromCounter(
            f"{ns}_batches", "Batches flushed", ["shard_id", "reason", "outcome"], registry=registry
        )
        self.rows = PromCounter(f"{ns}_rows_written", "Rows written to S3", ["shard_id"], registry=registry)
        self.bytes = PromCounter(
            f"{ns}_bytes", "Bytes in and written", ["shard_id", "kind"], registry=registry
        )
        self.flush_seconds = PromHistogram(
            f"{ns}_flush_seconds", "Flush latency", ["shard_id"], buckets=FLUSH_BUCKETS, registry=registry
        )
        self.buffer_bytes = PromGauge(
            f"{ns}_buffer_bytes", "Estimated bytes buffered by this process", registry=registry
        )


_prom_by_registry: IdentityMemo[PromMetrics] = IdentityMemo(PromMetrics)


def prom_metrics(registry: CollectorRegistry) -> PromMetrics:
    """One PromMetrics per registry (a series may be registered only once per registry)."""
    return _prom_by_registry.get(registry)


def record_flush(
    shard: ShardMetrics,
    prom: PromMetrics | None,
    batch: Batch,
    result: FlushResult,
) -> None:
    seconds = result.seconds
    invalid = Counter(result.invalid_by_reason)
    valid = batch.records - result.dead_letters
    shard.valid += valid
    shard.invalid += result.dead_letters
    shard.invalid_by_reason.update(invalid)
    shard.duplicates_in_batch += batch.duplicates_in_batch
    shard.duplicates_redis += result.duplicates_redis
    shard.batches += 1
    shard.batches_by_outcome[result.outcome] += 1
    shard.flushes_by_reason[batch.reason.value] += 1
    shard.objects += len(result.objects)
    shard.rows_written += result.rows_written
    shard.bytes_in += batch.raw_bytes
    shard.bytes_written += result.bytes_written
    shard.flush_seconds_sum += seconds
    shard.flush_seconds_max = max(shard.flush_seconds_max, seconds)
    shard.last_flush_seconds = seconds
    if prom is not None:
        sid = shard.shard_id
        prom.valid.labels(sid).inc(valid)
        for reason, n in invalid.items():
            prom.invalid.labels(sid, reason).inc(n)
        prom.duplicates.labels(sid, "batch").inc(batch.duplicates_in_batch)
        prom.duplicates.labels(sid, "redis").inc(result.duplicates_redis)
        prom.batches.labels(sid, batch.reason.value, result.outcome).inc()
        prom.rows.labels(sid).inc(result.rows_written)
        prom.bytes.labels(sid, "in").inc(batch.raw_bytes)
        prom.bytes.labels(sid, "written").inc(result.bytes_written)
        prom.flush_seconds.labels(sid).observe(seconds)
    log.info(
        "flush",
        extra={
            "shard_id": shard.shard_id,
            "batch_id": result.batch_id,
            "reason": batch.reason.value,
            "outcome": result.outcome,
            "first_sequence": batch.first.sequence_number,
            "last_sequence": batch.last.sequence_number,
            "records": batch.records,
            "valid": valid,
            "invalid": result.dead_letters,
            "duplicates_in_batch": batch.duplicates_in_batch,
            "duplicates_redis": result.duplicates_redis,
            "objects": len(result.objects),
            "reused_objects": result.reused_objects,
            "manifests": result.manifests,
            "rows_written": result.rows_written,
            "bytes_in": batch.raw_bytes,
            "bytes_written": result.bytes_written,
            "seconds": round(seconds, 4),
            "steps": {k: round(v, 4) for k, v in result.step_seconds.items()},
        },
    )
