"""One shard's open batch: valid rows (first occurrence of each event_id), rejected records, and
the stream position it covers. Plain data; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from workers.batcher.policy import FlushReason

if TYPE_CHECKING:
    from pipeline.consumer.processor import Record
    from schemas import Event

# A buffered valid row is estimated at its raw record size plus this: the decoded msgspec Event
# (envelope strings, aware datetime, payload struct), the row tuple, list and set slots — the raw
# bytes themselves are not kept. tracemalloc on the synthetic mix (mean record 465 bytes): 894
# bytes per buffered event, estimate 465 + 450 = 915 (benchmarks/bench_batcher.py --mode memory).
ROW_OVERHEAD_BYTES = 450
# A rejected record keeps its raw bytes plus the Rejected object and strings.
REJECTED_OVERHEAD_BYTES = 250


# A buffered valid event, in the exact shape EventType.to_columns takes:
# (event, shard_id, sequence_number, sub_sequence_number). A tuple, because one is built per
# record on the hot path (a frozen dataclass costs ~0.5 µs more per record).
Row = tuple["Event", str, str, int]


@dataclass(frozen=True, slots=True)
class Rejected:
    """An invalid record, kept byte for byte for its dead letter."""

    data: bytes
    partition_key: str
    sequence_number: str
    sub_sequence_number: int
    arrival_ms: int
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class Position:
    sequence_number: str
    sub_sequence_number: int


@dataclass(frozen=True, slots=True)
class Batch:
    """A sealed batch: everything a flush needs, nothing it has to ask the processor for."""

    shard_id: str
    first: Position
    last: Position
    first_arrival_ms: int
    rows: list[Row]
    rejected: list[Rejected]
    records: int
    raw_bytes: int
    duplicates_in_batch: int
    reason: FlushReason


class ShardBuffer:
    """The open batch of one shard. Hot path: one call per record, no allocation but the row."""

    __slots__ = (
        "duplicates",
        "first_arrival_ms",
        "first_sequence",
        "first_sub",
        "ids",
        "last_sequence",
        "last_sub",
        "memory",
        "raw_bytes",
        "records",
        "rejected",
        "rows",
        "shard_id",
    )

    def __init__(self, shard_id: str = "") -> None:
        self.shard_id = shard_id
        self.clear()

    def __len__(self) -> int:
        return self.records

    def add_valid(self, record: Record, event: Event) -> int:
        """Buffer a decoded event; returns the memory it added (0 for an in-batch duplicate)."""
        seq = record.sequence_number
        size = len(record.binary_data)
        if not self.records:
            self.first_sequence, self.first_sub = seq, record.sub_sequence_number
            self.first_arrival_ms = record.approximate_arrival_timestamp
        self.last_sequence, self.last_sub = seq, record.sub_sequence_number
        self.records += 1
        self.raw_bytes += size
        event_id = event.event_id
        if event_id in self.ids:
            self.duplicates += 1
            return 0
        self.ids.add(event_id)
        self.rows.append((event, self.shard_id, seq, record.sub_sequence_number))
        added = size + ROW_OVERHEAD_BYTES
        self.memory += added
        return added

    def add_invalid(self, record: Record, reason: str, detail: str) -> int:
        if not self.records:
            self.first_sequence, self.first_sub = record.sequence_number, record.sub_sequence_number
            self.first_arrival_ms = record.approximate_arrival_timestamp
        self.last_sequence, self.last_sub = record.sequence_number, record.sub_sequence_number
        self.records += 1
        self.raw_bytes += len(record.binary_data)
        self.rejected.append(
            Rejected(
                data=record.binary_data,
                partition_key=record.partition_key,
                sequence_number=record.sequence_number,
                sub_sequence_number=record.sub_sequence_number,
                arrival_ms=record.approximate_arrival_timestamp,
                reason=reason,
                detail=detail,
            )
        )
        added = len(record.binary_data) + REJECTED_OVERHEAD_BYTES
        self.memory += added
        return added

    def seal(self, reason: FlushReason) -> Batch:
        """Hand the contents over as a Batch and start empty."""
        if not self.records:
            raise ValueError("cannot seal an empty buffer")
        batch = Batch(
            shard_id=self.shard_id,
            first=Position(self.first_sequence, self.first_sub),
            last=Position(self.last_sequence, self.last_sub),
            first_arrival_ms=self.first_arrival_ms,
            rows=self.rows,
            rejected=self.rejected,
            records=self.records,
            raw_bytes=self.raw_bytes,
            duplicates_in_batch=self.duplicates,
            reason=reason,
        )
        self.clear()
        return batch

    def clear(self) -> None:
        self.rows: list[Row] = []
        self.rejected: list[Rejected] = []
        self.ids: set[str] = set()
        self.records = self.raw_bytes = self.memory = self.duplicates = 0
        self.first_sequence = self.last_sequence = ""
        self.first_sub = self.last_sub = 0
        self.first_arrival_ms = 0
