"""When a shard's buffer is cut into a batch: pure decisions over plain numbers.

Cuts are made on record boundaries that a replay reproduces — count, bytes and the age of the
batch measured on the records' own ``approximate_arrival_timestamp`` — so a new owner that replays
from the last checkpoint cuts the same batches, derives the same S3 keys and batch ids, and finds
its work already done. Two cuts are not reproducible (memory pressure, and the idle flush of a
caught-up shard); a replay that cuts differently only produces duplicates the inserter's merge
collapses (and Redis usually drops first). A batch never splits the sub-records of one KPL
aggregated record: they share a sequence number, and the keys are built from sequence numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pipeline.core.settings import WorkerSettings


class FlushReason(StrEnum):
    RECORDS = "records"  # flush_records reached
    BYTES = "bytes"  # flush_bytes reached
    AGE = "age"  # the next record arrived flush_age after the batch's first record
    IDLE = "idle"  # caught up, and the batch is flush_age old by the clock
    PRESSURE = "pressure"  # the process-wide buffer budget is exceeded
    SHUTDOWN = "shutdown"  # shutdown_requested
    SHARD_END = "shard_end"  # shard_ended


DETERMINISTIC_REASONS = frozenset({FlushReason.RECORDS, FlushReason.BYTES, FlushReason.AGE})


@dataclass(frozen=True, slots=True)
class FlushPolicy:
    """Thresholds of one shard's buffer (settings.worker.flush_*)."""

    max_records: int = 50_000
    max_bytes: int = 32 * 1024 * 1024
    max_age_ms: int = 30_000

    @classmethod
    def from_settings(cls, worker: WorkerSettings) -> FlushPolicy:
        return cls(
            max_records=max(1, worker.flush_records),
            max_bytes=max(1, worker.flush_bytes),
            max_age_ms=max(0, int(worker.flush_age_seconds * 1000)),
        )

    def full(self, records: int, raw_bytes: int) -> FlushReason | None:
        """Checked after a record is added: is the batch complete?"""
        if records >= self.max_records:
            return FlushReason.RECORDS
        if raw_bytes >= self.max_bytes:
            return FlushReason.BYTES
        return None

    def too_old_for(self, first_arrival_ms: int, next_arrival_ms: int) -> bool:
        """Checked before a record is added: does it start the next batch by age?"""
        return next_arrival_ms - first_arrival_ms >= self.max_age_ms

    def idle_due(self, first_arrival_ms: int, now_ms: int, millis_behind_latest: int) -> bool:
        """Flush a caught-up shard's batch by the clock, so a quiet shard still delivers.

        Only when caught up: while a consumer is behind, every batch would look old by the clock
        and cuts would follow GetRecords boundaries instead of the records.
        """
        return millis_behind_latest <= 0 and now_ms - first_arrival_ms >= self.max_age_ms


def may_cut_between(previous_sequence: str | None, next_sequence: str) -> bool:
    """Never between two sub-records of one aggregated record (they share the sequence number)."""
    return previous_sequence is None or previous_sequence != next_sequence


@dataclass(frozen=True, slots=True)
class PressureDecision:
    flush_self: bool
    ask_largest: bool


def pressure_decision(*, total: int, limit: int, mine: int, largest: int) -> PressureDecision:
    """What a processor does after adding a record, given the process-wide buffer total.

    Over the limit, the largest buffer is the one to flush (it frees the most and makes the
    biggest objects). The adding processor flushes itself when it is that buffer, or when the
    total is well past the limit (the largest may sit on a quiet thread), so memory stays bounded.
    """
    if limit <= 0 or total <= limit or mine <= 0:
        return PressureDecision(flush_self=False, ask_largest=limit > 0 and total > limit)
    if mine >= largest:
        return PressureDecision(flush_self=True, ask_largest=False)
    return PressureDecision(flush_self=total > limit + limit // 4, ask_largest=True)
