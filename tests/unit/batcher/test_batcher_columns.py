"""The batcher's Arrow build (flat row tuples → one struct conversion per type → split per customer)
against the reference path it replaced (``et.to_columns`` + ``pa.table`` per group): same groups,
same rows in the same order, equal tables and byte-identical Parquet. Pure, no servers."""

from __future__ import annotations

import struct
import uuid
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.field_values import OCCURRED, field_value, text

from pipeline.consumer.processor import Record
from schemas import Event, load_registry
from schemas.definition import FieldDef
from schemas.event import encode_event
from workers.batcher import parquet
from workers.batcher.buffer import Batch, ShardBuffer
from workers.batcher.commit import build_tables, encode_objects
from workers.batcher.dedupe import pack_batch
from workers.batcher.policy import FlushReason
from workers.idset.identity import identity
from workers.idset.layout import DedupeLayout

REGISTRY = load_registry()
SHARD = "shardId-000000000003"

_TEXT = text(12)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | _TEXT | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from("abé"), inner, max_size=3),
    max_leaves=6,
)


def _value(f: FieldDef) -> st.SearchStrategy[Any]:
    return field_value(f, text_size=12, json=_JSON, json_items=3)


@st.composite
def _event(draw: st.DrawFn, ids: list[str]) -> bytes:
    et = draw(st.sampled_from(REGISTRY.types()))
    payload: dict[str, Any] = {}
    for f in et.fields:
        if f.required or draw(st.booleans()):
            payload[f.name] = draw(_value(f) if f.required else st.none() | _value(f))
    # a few event_ids repeat, with the same customer (in-batch duplicates: the first occurrence is
    # kept) or another one (a new event of that customer: kept too)
    event_id = draw(st.sampled_from(ids)) if ids and draw(st.integers(0, 4)) == 0 else str(draw(st.uuids()))
    ids.append(event_id)
    return encode_event(
        {
            "event_id": event_id,
            "customer_id": draw(st.sampled_from(["c1", "c2", "cust_3"])),
            "type": et.name,
            "version": et.version,
            "occurred_at": draw(OCCURRED),
            "payload": payload,
        }
    )


@st.composite
def _batches(draw: st.DrawFn) -> list[bytes]:
    ids: list[str] = []
    return draw(st.lists(_event(ids), min_size=1, max_size=25))


def _buffered(datas: list[bytes]) -> tuple[Batch, list[tuple[Event, str, int]]]:
    """The batch, and the reference: first occurrences (event, sequence, sub) in arrival order."""
    buf = ShardBuffer(SHARD)
    kept: dict[tuple[str, str], tuple[Event, str, int]] = {}  # first occurrence per (customer, id)
    for i, data in enumerate(datas):
        event = REGISTRY.decode(data)
        record = Record(data, "pk", str(5000 + i), i % 3, 1714607999000 + i)
        buf.add_valid(record, event)
        kept.setdefault(
            (event.customer_id, event.event_id), (event, record.sequence_number, record.sub_sequence_number)
        )
    return buf.seal(FlushReason.RECORDS), list(kept.values())


def _reference(rows: list[tuple[Event, str, int]]) -> dict[tuple[str, str, int], Any]:
    """The old path: rows grouped per (customer, type, version), et.to_columns + pa.table."""
    groups: dict[tuple[str, str, int], list[tuple[Event, str, str, int]]] = {}
    for event, seq, sub in rows:
        key = (event.customer_id, event.type, event.version)
        groups.setdefault(key, []).append((event, SHARD, seq, sub))
    out = {}
    for key, group in groups.items():
        et = REGISTRY.get(key[1], key[2])
        out[key] = pa.table(et.to_columns(group), schema=et.arrow_schema)
    return out


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(_batches())
def test_tables_equal_the_to_columns_path_down_to_the_parquet_bytes(datas: list[bytes]) -> None:
    batch, rows = _buffered(datas)
    expected = _reference(rows)
    tables = build_tables(REGISTRY, batch, own_rows=1)
    assert set(tables) == set(expected)
    ids = [row[0] for row in batch.rows()]
    for key, (where, table) in tables.items():
        assert table.schema.equals(expected[key].schema, check_metadata=True)
        assert table.equals(expected[key]), key
        assert parquet.encode(table) == parquet.encode(expected[key])
        # the group's dedupe positions point at its own rows, in the table's order
        assert [ids[i] for i in where.to_pylist()] == table.column("event_id").to_pylist()


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(_batches(), st.data())
def test_seen_rows_are_filtered_out_of_their_group(datas: list[bytes], data: st.DataObject) -> None:
    batch, _ = _buffered(datas)
    ids = [(row[1], row[0]) for row in batch.rows()]
    seen = data.draw(st.lists(st.booleans(), min_size=len(ids), max_size=len(ids)))
    written = encode_objects(batch, build_tables(REGISTRY, batch, own_rows=1), seen)
    unseen = {i for i, dup in zip(ids, seen, strict=True) if not dup}
    got: list[tuple[str, str]] = []
    for _group, _key, body, meta in written:
        table = pq.read_table(pa.BufferReader(body))
        assert meta.rows == table.num_rows > 0
        got += zip(table.column("customer_id").to_pylist(), table.column("event_id").to_pylist(), strict=True)
    assert sorted(got) == sorted(unseen)


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(_batches())
def test_pack_batch_matches_pack_and_the_float_hour(datas: list[bytes]) -> None:
    batch, _ = _buffered(datas)
    lay = DedupeLayout.for_stream("s", 86400)
    rows = batch.rows()
    packed = pack_batch(lay, batch.types)
    assert packed == [lay.pack(r[1], r[0], r[2]) for r in rows]
    for blob, row in zip(packed, rows, strict=True):
        hour = struct.unpack(">I", blob[:4])[0]
        assert blob[8:] == identity(row[1], uuid.UUID(row[0]).bytes) and blob[4:8] == blob[8:12]
        assert hour == min(max(int(row[2].timestamp()) // 3600, 0), 0xFFFFFFFF)
    other = DedupeLayout(prefix="p", bucket_seconds=600)
    assert pack_batch(other, batch.types) == [other.pack(r[1], r[0], r[2]) for r in rows]


def test_json_values_are_the_producers_text() -> None:
    data = encode_event(
        {
            "event_id": str(uuid.UUID(int=7, version=4)),
            "customer_id": "c1",
            "type": "order_placed",
            "version": 1,
            "occurred_at": datetime(2024, 5, 1, tzinfo=UTC),
            "payload": {
                "order_id": "o",
                "user_id": "u",
                "status": "placed",
                "currency": "EUR",
                "total_cents": 1,
                "item_count": 1,
                "items": [{"sku": "é"}],
            },
        }
    )
    batch, _ = _buffered([data])
    ((_, table),) = build_tables(REGISTRY, batch, own_rows=1).values()
    assert table.column("items").to_pylist() == ['[{"sku":"é"}]']
