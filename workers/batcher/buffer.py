"""One shard's open batch: valid rows (first occurrence of each (customer_id, event_id)) per event
type+version, rejected records, and the stream position it covers. Plain data; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from pipeline.core.dead_letters import Rejected
from workers.batcher.policy import FlushReason

if TYPE_CHECKING:
    from pipeline.consumer.processor import Record
    from schemas import Event

# A buffered valid row is estimated at its raw record size plus this: the decoded values (envelope
# strings, aware datetimes, payload values), their slots in the type's flat list, set slots —
# neither the raw bytes nor the msgspec structs are kept. tracemalloc on the synthetic mix (mean
# record 471 bytes): 774 bytes per buffered event when each row was a tuple, estimate 471 + 320 =
# 791 (benchmarks/bench_batcher.py --mode memory); the flat list saves the tuple's ~56-byte
# header, so the estimate is now a little high (not re-measured).
ROW_OVERHEAD_BYTES = 320
# A rejected record keeps its raw bytes plus the Rejected object and strings.
REJECTED_OVERHEAD_BYTES = 250


# A buffered valid event is one run of values in its type's flat list, built while the decoded
# event is still in the CPU cache: (event_id, customer_id, occurred_at, sequence_number,
# sub_sequence_number, *payload values in the payload struct's field order), json values as str.
# Flat, not a tuple per event: a tuple is a container the cyclic collector must visit, and with
# 50,000 of them alive per batch the collector's young passes cost ~0.4 µs per event (bench_batcher
# "collector pauses"); a flat list is one container. At flush each column is a strided slice that
# pyarrow converts in one pass (parquet.type_table).
Row = tuple[Any, ...]
EVENT_ID, CUSTOMER_ID, OCCURRED_AT, SEQUENCE_NUMBER, SUB_SEQUENCE_NUMBER = range(5)
HEAD_COLUMNS = ("event_id", "customer_id", "occurred_at", "_sequence_number", "_sub_sequence_number")


class TypeRows:
    """The buffered rows of one event type+version (one payload struct class), in arrival order,
    flat: row ``i`` is ``values[i * width : (i + 1) * width]``."""

    __slots__ = ("fields", "json_at", "type", "values", "version", "width")

    def __init__(self, event: Event) -> None:
        infos = msgspec.structs.fields(type(event.payload))
        self.type: str = event.type
        self.version: int = event.version
        self.fields: tuple[str, ...] = tuple(f.name for f in infos)  # payload columns, row order
        # json fields are the ones typed msgspec.Raw (schemas.registry._payload_struct)
        self.json_at: tuple[int, ...] = tuple(i for i, f in enumerate(infos) if f.type is msgspec.Raw)
        self.width = len(HEAD_COLUMNS) + len(self.fields)
        self.values: list[Any] = []

    @property
    def columns(self) -> tuple[str, ...]:
        """The column name of each position of a row."""
        return HEAD_COLUMNS + self.fields

    def column(self, position: int) -> list[Any]:
        """Every row's value at ``position`` (HEAD_COLUMNS, then the payload fields)."""
        return self.values[position :: self.width]

    @property
    def rows(self) -> list[Row]:
        """The rows as tuples (tests and tools; the flush reads columns)."""
        v, w = self.values, self.width
        return [tuple(v[i : i + w]) for i in range(0, len(v), w)]

    def text(self, values: tuple[Any, ...]) -> tuple[Any, ...]:
        """Payload values with the json ones (msgspec.Raw) as str, the warehouse's JSON text."""
        out = list(values)
        for i in self.json_at:
            if out[i] is not None:
                out[i] = str(out[i], "utf-8")
        return tuple(out)

    def __len__(self) -> int:
        return len(self.values) // self.width

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TypeRows) and (self.type, self.version, self.fields, self.values) == (
            other.type,
            other.version,
            other.fields,
            other.values,
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"TypeRows({self.type!r}, {self.version}, {len(self)} rows)"


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
    types: list[TypeRows]  # valid rows per type+version, in order of first appearance
    rejected: list[Rejected]
    records: int
    raw_bytes: int
    duplicates_in_batch: int
    reason: FlushReason

    @property
    def valid(self) -> int:
        return sum(len(t) for t in self.types)

    def rows(self) -> list[Row]:
        """Every valid row as a tuple, type by type — the order of the batch's dedupe ids."""
        return [row for t in self.types for row in t.rows]


_astuple = msgspec.structs.astuple


class ShardBuffer:
    """The open batch of one shard. Hot path: one call per record, no allocation but the row."""

    __slots__ = (
        "duplicates",
        "first_arrival_ms",
        "first_sequence",
        "first_sub",
        "ids",
        "kept",
        "last_sequence",
        "last_sub",
        "memory",
        "raw_bytes",
        "records",
        "rejected",
        "shard_id",
        "types",
    )

    def __init__(self, shard_id: str = "") -> None:
        self.shard_id = shard_id
        self.clear()

    def __len__(self) -> int:
        return self.records

    def add_valid(self, record: Record, event: Event) -> int:
        """Buffer a decoded event; returns the memory it added (0 for an in-batch duplicate)."""
        seq = record.sequence_number
        sub = record.sub_sequence_number
        size = len(record.binary_data)
        if not self.records:
            self.first_sequence, self.first_sub = seq, sub
            self.first_arrival_ms = record.approximate_arrival_timestamp
        self.last_sequence, self.last_sub = seq, sub
        self.records += 1
        self.raw_bytes += size
        # identity is (customer_id, event_id): one set of event ids per customer, so no key
        # object is allocated per event
        customer = event.customer_id
        ids = self.ids.get(customer)
        if ids is None:
            ids = self.ids[customer] = set()
        kept = len(ids)
        event_id = event.event_id
        ids.add(event_id)
        if len(ids) == kept:  # one hash lookup instead of `in` + add
            self.duplicates += 1
            return 0
        self.kept += 1
        payload = event.payload
        group = self.types.get(payload.__class__)
        if group is None:
            group = self.types[payload.__class__] = TypeRows(event)
        values = _astuple(payload)
        if group.json_at:
            values = group.text(values)
        flat = group.values
        flat += (event_id, customer, event.occurred_at, seq, sub)
        flat += values
        added = size + ROW_OVERHEAD_BYTES
        self.memory += added
        return added

    @property
    def valid(self) -> int:
        """Valid rows buffered (first occurrences)."""
        return self.kept

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
            types=list(self.types.values()),
            rejected=self.rejected,
            records=self.records,
            raw_bytes=self.raw_bytes,
            duplicates_in_batch=self.duplicates,
            reason=reason,
        )
        self.clear()
        return batch

    def clear(self) -> None:
        self.types: dict[type, TypeRows] = {}  # by payload struct class
        self.rejected: list[Rejected] = []
        self.ids: dict[str, set[str]] = {}  # event ids per customer
        self.records = self.raw_bytes = self.memory = self.duplicates = self.kept = 0
        self.first_sequence = self.last_sequence = ""
        self.first_sub = self.last_sub = 0
        self.first_arrival_ms = 0
