"""Arrow schemas derived from definitions (imported lazily: producers need no pyarrow)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from schemas.definition import FieldDef


def field_type(f: FieldDef) -> Any:
    """Arrow type of a payload field; ``json`` is a string column holding the JSON text."""
    if f.kind == "string" or f.kind == "json":
        return pa.string()
    if f.kind == "int":
        return pa.int64()
    if f.kind == "float":
        return pa.float64()
    if f.kind == "bool":
        return pa.bool_()
    if f.kind == "timestamp":
        return pa.timestamp("us", tz="UTC")
    if f.kind == "decimal":
        assert f.precision is not None and f.scale is not None
        return pa.decimal128(f.precision, f.scale)
    raise ValueError(f"unknown kind {f.kind!r}")


def row_schema(fields: Sequence[FieldDef]) -> Any:
    """Warehouse row schema: envelope columns, payload columns (definition order), metadata.

    Envelope and metadata columns are always present, hence not nullable; a payload column is
    not nullable exactly when its field is required (and the evolution rule keeps it required in
    every later version, so the union schema stays truthful)."""
    columns = [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("customer_id", pa.string(), nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("event_version", pa.int16(), nullable=False),
        pa.field("occurred_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
    columns += [pa.field(f.name, field_type(f), nullable=not f.required) for f in fields]
    columns += [
        pa.field("_shard_id", pa.string(), nullable=False),
        pa.field("_sequence_number", pa.string(), nullable=False),
        pa.field("_sub_sequence_number", pa.int32(), nullable=False),
    ]
    return pa.schema(columns)
