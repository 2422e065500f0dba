"""Warehouse shapes derived from definitions: Arrow schemas, to_columns, PostgreSQL and Redshift DDL."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlglot
from sqlglot import exp

from schemas import Event, encode_event, load_registry

REGISTRY = load_registry()
ENVELOPE = [
    ("event_id", pa.string(), False),
    ("customer_id", pa.string(), False),
    ("event_type", pa.string(), False),
    ("event_version", pa.int16(), False),
    ("occurred_at", pa.timestamp("us", tz="UTC"), False),
]
METADATA = [
    ("_shard_id", pa.string(), False),
    ("_sequence_number", pa.string(), False),
    ("_sub_sequence_number", pa.int32(), False),
]
UNSAFE_NAMES = ["", "Events", "a;drop table x", 'a"b', "a b", "1abc", "x" * 64, "a-b", "événement", "a\n"]


def _columns(schema: Any) -> list[tuple[str, Any, bool]]:
    return [(f.name, f.type, f.nullable) for f in schema]


def test_page_view_v1_arrow_schema_has_the_documented_columns() -> None:
    payload = [
        ("user_id", pa.string(), False),
        ("url", pa.string(), False),
        ("title", pa.string(), True),
        ("duration_ms", pa.int64(), True),
        ("scroll_depth", pa.float64(), True),
    ]
    assert _columns(REGISTRY.get("page_view", 1).arrow_schema) == ENVELOPE + payload + METADATA


def test_every_kind_maps_to_its_arrow_type() -> None:
    order = dict((n, t) for n, t, _ in _columns(REGISTRY.get("order_placed", 1).arrow_schema))
    assert order["items"] == pa.string() and order["placed_at"] == pa.timestamp("us", tz="UTC")
    appt = dict((n, t) for n, t, _ in _columns(REGISTRY.get("appointment_booked", 1).arrow_schema))
    assert appt["telehealth"] == pa.bool_() and appt["fee"] == pa.decimal128(10, 2)


@pytest.mark.parametrize("type_name", ["page_view", "order_placed", "appointment_booked"])
def test_table_schema_is_the_union_of_versions_in_latest_order(type_name: str) -> None:
    table = REGISTRY.table_schema(type_name)
    assert table.equals(REGISTRY.latest(type_name).arrow_schema)
    names = table.names
    assert names[:5] == [c[0] for c in ENVELOPE] and names[-3:] == [c[0] for c in METADATA]
    for et in REGISTRY.types():
        if et.name == type_name:
            for field in et.arrow_schema:
                assert table.field(field.name).equals(field)


def _rows() -> dict[tuple[str, int], list[tuple[Event, str, str, int]]]:
    from pipeline.producer.synthetic import SyntheticConfig, generate

    rows: dict[tuple[str, int], list[tuple[Event, str, str, int]]] = {}
    clock = iter(range(10**9))
    records = generate(
        SyntheticConfig(seed=7, invalid_ratio=0.0),
        3000,
        now=lambda: datetime.fromtimestamp(1_714_560_000 + next(clock), UTC),
    )
    for n, record in enumerate(records):
        ev = REGISTRY.decode(record.data)
        rows.setdefault((ev.type, ev.version), []).append(
            (ev, "shardId-000000000001", f"4959{n:040d}", n % 3)
        )
    return rows


ROWS = _rows()


@pytest.mark.parametrize("key", sorted(ROWS))
def test_to_columns_builds_a_table_with_the_arrow_schema(key: tuple[str, int]) -> None:
    et = REGISTRY.get(*key)
    rows = ROWS[key]
    cols = et.to_columns(rows)
    assert list(cols) == et.arrow_schema.names
    table = pa.table(cols, schema=et.arrow_schema)
    table.validate(full=True)
    assert table.num_rows == len(rows)
    first, shard, seq, sub = rows[0]
    row = table.slice(0, 1).to_pylist()[0]
    assert row["event_id"] == first.event_id and row["customer_id"] == first.customer_id
    assert (row["event_type"], row["event_version"]) == key
    assert row["occurred_at"] == first.occurred_at
    assert (row["_shard_id"], row["_sequence_number"], row["_sub_sequence_number"]) == (shard, seq, sub)
    for f in et.fields:
        value = getattr(first.payload, f.name)
        if f.kind == "json":
            assert row[f.name] == (None if value is None else bytes(value).decode())
        else:
            assert row[f.name] == value, f.name
    # Parquet honours the not-null columns and reads back the same.
    buf = io.BytesIO()
    pq.write_table(table, buf)
    assert pq.read_table(io.BytesIO(buf.getvalue())).equals(table)


def test_to_columns_of_edge_values() -> None:
    et = REGISTRY.get("appointment_booked", 1)
    event = {
        "event_id": "0190f0e2-8c2b-7a6b-9c3d-1234567890ab",
        "customer_id": "c",
        "type": "appointment_booked",
        "version": 1,
        "occurred_at": "2024-05-01T12:00:00Z",
        "payload": {
            "appointment_id": "a", "provider_id": "p", "patient_id": "q", "status": "booked",
            "starts_at": "0001-01-01T01:30:00+01:00", "duration_minutes": 2**63 - 1, "fee": "-99999999.99",
            "notes": "naïve \u00e9 😀",
        },
    }  # fmt: skip
    ev = REGISTRY.decode(encode_event(event))
    table = pa.table(et.to_columns([(ev, "s", "1", 0)]), schema=et.arrow_schema)
    row = table.to_pylist()[0]
    assert row["fee"] == Decimal("-99999999.99") and row["duration_minutes"] == 2**63 - 1
    assert row["notes"] == "naïve é 😀"
    assert row["starts_at"] == datetime(1, 1, 1, 0, 30, tzinfo=UTC)


def test_to_columns_refuses_another_types_events() -> None:
    ev = ROWS[("page_view", 1)][0]
    with pytest.raises(ValueError, match="page_view v2 given a PageViewV1 payload"):
        REGISTRY.get("page_view", 2).to_columns([ev])


def test_to_columns_of_nothing_is_an_empty_table() -> None:
    et = REGISTRY.get("order_placed", 2)
    assert pa.table(et.to_columns([]), schema=et.arrow_schema).num_rows == 0


# -- DDL ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("type_name", ["page_view", "order_placed", "appointment_booked"])
def test_column_lists_match_the_table_schema(type_name: str) -> None:
    names = REGISTRY.table_schema(type_name).names
    assert [c for c, _ in REGISTRY.postgres_columns(type_name)] == names
    assert [c for c, _ in REGISTRY.redshift_columns(type_name)] == names
    assert [c for c, _ in REGISTRY.redshift_staging_columns(type_name)] == names


def test_type_mapping() -> None:
    pg = dict(REGISTRY.postgres_columns("order_placed"))
    assert pg["event_id"] == "uuid" and pg["event_version"] == "smallint"
    assert pg["occurred_at"] == "timestamptz" and pg["placed_at"] == "timestamptz"
    assert pg["items"] == "jsonb" and pg["total_cents"] == "bigint" and pg["status"] == "text"
    assert pg["_sub_sequence_number"] == "integer"
    rs = dict(REGISTRY.redshift_columns("order_placed"))
    assert rs["items"] == "SUPER" and rs["total_cents"] == "BIGINT" and rs["status"] == "VARCHAR(128)"
    assert rs["event_id"] == "VARCHAR(36)" and rs["occurred_at"] == "TIMESTAMPTZ"
    assert dict(REGISTRY.redshift_staging_columns("order_placed"))["items"] == "VARCHAR(65535)"
    appt_pg = dict(REGISTRY.postgres_columns("appointment_booked"))
    appt_rs = dict(REGISTRY.redshift_columns("appointment_booked"))
    assert appt_pg["fee"] == "numeric(10,2)" and appt_rs["fee"] == "DECIMAL(10,2)"
    assert appt_pg["telehealth"] == "boolean" and appt_rs["telehealth"] == "BOOLEAN"
    assert appt_rs["notes"] == "VARCHAR(16000)"  # 4000 characters, up to 4 bytes each


def test_postgres_ddl_quotes_every_identifier() -> None:
    sql = REGISTRY.postgres_ddl("page_view", "warehouse", "events_cust_0001_page_view")
    assert sql.startswith('CREATE TABLE IF NOT EXISTS "warehouse"."events_cust_0001_page_view" (')
    assert '"event_id" uuid NOT NULL' in sql and '"referrer" text,' in sql and '"url" text NOT NULL' in sql
    assert "PRIMARY KEY" not in sql
    parsed = sqlglot.parse_one(sql, read="postgres")
    defs = list(parsed.find_all(exp.ColumnDef))
    assert [d.this.name for d in defs] == REGISTRY.table_schema("page_view").names
    assert all(d.this.args.get("quoted") for d in defs)


@pytest.mark.parametrize("type_name", ["page_view", "order_placed", "appointment_booked"])
def test_redshift_ddl_parses_and_distributes_by_event_id(type_name: str) -> None:
    for staging in (False, True):
        sql = REGISTRY.redshift_ddl(type_name, "wh", "t", staging=staging)
        parsed = sqlglot.parse_one(sql, read="redshift")
        assert isinstance(parsed, exp.Create)
        defs = list(parsed.find_all(exp.ColumnDef))
        assert [d.this.name for d in defs] == REGISTRY.table_schema(type_name).names
        assert all(d.this.args.get("quoted") for d in defs)
        assert parsed.find(exp.DistKeyProperty).this.name == "event_id"  # type: ignore[union-attr]
        assert 'SORTKEY ("occurred_at")' in sql and "DISTSTYLE KEY" in sql


@pytest.mark.parametrize("name", UNSAFE_NAMES)
def test_ddl_refuses_unsafe_names(name: str) -> None:
    for build in (REGISTRY.postgres_ddl, REGISTRY.redshift_ddl):
        with pytest.raises(ValueError, match="unsafe SQL identifier"):
            build("page_view", name, "t")
        with pytest.raises(ValueError, match="unsafe SQL identifier"):
            build("page_view", "s", name)


def test_ddl_of_unknown_type() -> None:
    from schemas import InvalidEvent

    with pytest.raises(InvalidEvent, match="unknown_type"):
        REGISTRY.postgres_ddl("nope", "s", "t")
