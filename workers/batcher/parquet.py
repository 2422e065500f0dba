"""Rows of one (customer, type, version) group → an Arrow table → zstd Parquet bytes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from workers.batcher.buffer import Row
from workers.batcher.plan import ObjectMeta, rfc3339

if TYPE_CHECKING:
    from schemas import EventType

COMPRESSION = "zstd"
# Columns unique per row: dictionary-encoding them is wasted work (Arrow tries, then falls back).
# Measured on the synthetic mix: ~18 % faster writes and ~12 % smaller files without it.
NO_DICTIONARY = frozenset({"event_id", "occurred_at", "_sequence_number", "_sub_sequence_number"})


def build_table(et: EventType, rows: Sequence[Row]) -> Any:
    """The group's rows with the schema's own Arrow types (et.arrow_schema / et.to_columns)."""
    columns = et.to_columns(rows)
    return pa.table(columns, schema=et.arrow_schema)


def encode(table: Any) -> tuple[bytes, ObjectMeta]:
    """zstd Parquet of ``table`` and the metadata its manifest entry needs."""
    sink = pa.BufferOutputStream()
    dictionary = [name for name in table.column_names if name not in NO_DICTIONARY]
    pq.write_table(table, sink, compression=COMPRESSION, use_dictionary=dictionary)
    body: bytes = sink.getvalue().to_pybytes()
    bounds = pc.min_max(table.column("occurred_at"))
    meta = ObjectMeta(
        rows=table.num_rows,
        min_occurred_at=rfc3339(bounds["min"].as_py()),
        max_occurred_at=rfc3339(bounds["max"].as_py()),
    )
    return body, meta
