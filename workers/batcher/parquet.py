"""Buffered rows of one event type+version → an Arrow table → its objects → zstd Parquet.

A type's objects: one per customer with at least ``own_rows`` rows in the batch, and one shared
object for all the others, sorted by customer (:func:`split_objects`) — so a flush writes at most
(types x versions) + rows / own_rows objects, however many customers it holds.

The table has the schema's own types (``et.arrow_schema``) and the values
``et.to_columns`` + ``pa.table`` would give (tests/unit/batcher/test_batcher_columns.py holds the
two equal, down to the Parquet bytes); it is built differently because the batcher's Arrow step
is most of its Python time: pyarrow converts each column of a type's flat buffer (a strided
slice of buffer.TypeRows.values) in one C++ pass, constant columns are repeated scalars, and the
split per customer is dictionary_encode + a stable sort_indices + take + zero-copy slices.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from workers.batcher.buffer import TypeRows
from workers.batcher.plan import ObjectMeta, rfc3339

if TYPE_CHECKING:
    from schemas import EventType

COMPRESSION = "zstd"
# Dictionary encoding pays for repeated strings (urls, statuses, user ids) only: not for columns
# unique per row, and not for numbers and timestamps, which zstd packs as well from plain pages.
# Measured on the synthetic mix (docs/benchmarks.md): each cut makes writes faster and files
# smaller.
NO_DICTIONARY = frozenset({"event_id", "_sequence_number"})
# Column statistics (min/max per column chunk) only where readers prune on them: a query over the
# S3 objects by time. Every other column's statistics cost ~10 % of the encode and ~5 % of the bytes.
# customer_id too: a shared object is sorted by customer, so its row groups' customer_id ranges
# let a reader (DuckDB, Athena) skip to one customer's rows.
STATISTICS = ["occurred_at", "customer_id"]


def type_table(et: EventType, group: TypeRows, shard_id: str) -> Any:
    """All buffered rows of one type+version, in arrival order, as a table of ``et.arrow_schema``."""
    schema = et.arrow_schema
    n = len(group)
    by_name = {
        name: pa.array(group.column(i), type=schema.field(name).type) for i, name in enumerate(group.columns)
    }
    by_name["event_type"] = pa.repeat(pa.scalar(et.name, pa.string()), n)
    by_name["event_version"] = pa.repeat(pa.scalar(et.version, pa.int16()), n)
    by_name["_shard_id"] = pa.repeat(pa.scalar(shard_id, pa.string()), n)
    return pa.Table.from_arrays([by_name[name] for name in schema.names], schema=schema)


@functools.lru_cache(maxsize=256)
def _dictionary_columns(schema: Any) -> list[str]:
    return [f.name for f in schema if f.name not in NO_DICTIONARY and pa.types.is_string(f.type)]


def split_by_customer(table: Any) -> list[tuple[str, Any, Any]]:
    """(customer_id, row indexes into ``table``, the customer's rows) per customer, in order of
    first appearance; each customer's rows keep their order (the sort is stable)."""
    encoded = pc.dictionary_encode(table.column("customer_id")).combine_chunks()
    customers = encoded.dictionary.to_pylist()
    if len(customers) == 1:
        return [(customers[0], pa.array(range(table.num_rows), pa.int64()), table)]
    order = pc.sort_indices(encoded.indices)
    ordered = table.take(order)
    runs = pc.run_end_encode(encoded.indices.take(order))
    out = []
    start = 0
    for code, end in zip(runs.values.to_pylist(), runs.run_ends.to_pylist(), strict=True):
        out.append((customers[code], order.slice(start, end - start), ordered.slice(start, end - start)))
        start = end
    return out


def split_objects(table: Any, own_rows: int) -> list[tuple[str | None, Any, Any]]:
    """(customer_id, row indexes into ``table``, rows) per object: each customer with at least
    ``own_rows`` rows alone, in order of first appearance; then (customer None) every other
    customer's rows in one table sorted by customer_id, each customer's rows in arrival order."""
    per_customer = split_by_customer(table)
    own = [part for part in per_customer if part[2].num_rows >= own_rows]
    small = [part for part in per_customer if part[2].num_rows < own_rows]
    if not small:
        return list(own)
    small.sort(key=lambda part: part[0])
    where = pa.concat_arrays([part[1].cast(pa.int64()) for part in small])
    shared = pa.concat_tables([part[2] for part in small]).combine_chunks()
    return [*own, (None, where, shared)]


def customer_counts(table: Any) -> tuple[tuple[str, int], ...]:
    """(customer_id, rows) per customer, in the table's order (a shared object's rows are sorted
    by customer, so each customer is one run)."""
    runs = pc.run_end_encode(table.column("customer_id").combine_chunks())
    ends = runs.run_ends.to_pylist()
    starts = [0, *ends[:-1]]
    customers = runs.values.to_pylist()
    if len(set(customers)) != len(customers):
        raise ValueError("rows are not sorted by customer")
    return tuple((c, end - start) for c, start, end in zip(customers, starts, ends, strict=True))


def encode(table: Any, *, shared: bool = False) -> tuple[bytes, ObjectMeta]:
    """zstd Parquet of ``table`` and the metadata its manifest entry needs (a shared object's
    customers with their row counts too)."""
    sink = pa.BufferOutputStream()
    pq.write_table(
        table,
        sink,
        compression=COMPRESSION,
        use_dictionary=_dictionary_columns(table.schema),
        write_statistics=STATISTICS,
    )
    body: bytes = sink.getvalue().to_pybytes()
    bounds = pc.min_max(table.column("occurred_at"))
    meta = ObjectMeta(
        rows=table.num_rows,
        min_occurred_at=rfc3339(bounds["min"].as_py()),
        max_occurred_at=rfc3339(bounds["max"].as_py()),
        customers=customer_counts(table) if shared else (),
    )
    return body, meta


def describe(body: bytes, metadata: dict[str, str]) -> ObjectMeta:
    """A stored shared object's metadata with its customers read from its own rows."""
    meta = ObjectMeta.from_s3(metadata)
    table = pq.read_table(pa.BufferReader(body), columns=["customer_id"])
    return ObjectMeta(meta.rows, meta.min_occurred_at, meta.max_occurred_at, customer_counts(table))
