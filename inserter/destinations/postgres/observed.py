"""What the PostgreSQL stager works out from the rows it sends, so the server need not scan its
staging table for it: whether an event id repeats, and each (object, customer) slice's rows and
ranges. Pure functions over Arrow data; no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from inserter.destinations.staging import SliceRow

#: The columns a slice's statistics read, cast as COPY writes them.
_CASTS = {
    "customer_id": pa.string(),
    "occurred_at": pa.timestamp("us", tz="UTC"),
    "event_type": pa.string(),
    "event_version": pa.int64(),
}


def repeats(ids: Sequence[Any]) -> bool:
    """Whether any value occurs twice among arrays of encoded UUIDs — the 16 bytes PostgreSQL
    stores, so two spellings of one UUID (case, hyphens) count as one. Conservative for the
    dedupe: an id two customers share also says yes."""
    total = sum(len(a) for a in ids)
    return total > 0 and pc.count_distinct(pa.chunked_array(ids, pa.large_binary())).as_py() != total


def batch_slices(batch: Any, ordinal: int) -> list[SliceRow]:
    """The slices of one record batch of object ``ordinal``: what ``stage_stats`` would return
    for its rows (NULLs skipped by min/max, counted by rows)."""
    table = pa.table({name: _column(batch, name, kind) for name, kind in _CASTS.items()})
    grouped = table.group_by("customer_id", use_threads=False).aggregate(
        [([], "count_all")]
        + [(c, f) for c in ("occurred_at", "event_type", "event_version") for f in ("min", "max")]
    )
    return [
        (
            ordinal,
            r["customer_id"],
            r["count_all"],
            r["occurred_at_min"],
            r["occurred_at_max"],
            r["event_type_min"],
            r["event_type_max"],
            r["event_version_min"],
            r["event_version_max"],
        )
        for r in grouped.to_pylist()
    ]


def _column(batch: Any, name: str, kind: Any) -> Any:
    col = batch.column(name)
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    return col if col.type == kind else col.cast(kind)
