"""The decoder is total and what it accepts is safe downstream (issue 12, item 1).

Arbitrary bytes and arbitrary JSON — deep nesting, huge and edge numbers, every field kind at and
past its limits — give an :class:`Event` or :class:`InvalidEvent`, nothing else; and every event
accepted goes through the batcher's Arrow build and Parquet encoding, the PostgreSQL binary COPY
encoding of the staged rows, the projector's plan and reference fold, and the loader's merge
window without an exception. Pure: no servers.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.field_values import OCCURRED, field_value, text

import schemas.registry
from inserter.destinations.postgres.dialect import PostgresDialect
from inserter.destinations.postgres.pgbinary import Column, encode_batch
from inserter.plan import merge_window
from pipeline.consumer.processor import Record
from schemas import REASONS, Event, EventType, InvalidEvent, load_registry
from schemas.definition import FieldDef
from schemas.errors import DECODE_REASONS
from schemas.read_models import ENTITY_RETENTION
from schemas.registry import MAX_JSON_DEPTH, OCCURRED_AT_MAX, OCCURRED_AT_MIN, too_deep
from workers.batcher.buffer import ShardBuffer
from workers.batcher.commit import build_tables, encode_objects
from workers.batcher.policy import FlushReason
from workers.projector import keys
from workers.projector.fold import fold
from workers.projector.plan import GateConfig, Planner

REGISTRY = load_registry()
DIALECT = PostgresDialect(REGISTRY)
PLANNER = Planner(
    REGISTRY, keys.Namespace("rm:total:"), GateConfig(), entity_ttl=int(ENTITY_RETENTION.total_seconds())
)
NOW = datetime(2026, 12, 1, tzinfo=UTC)
F = orjson.Fragment

# -- edge values, as JSON fragments (so numbers no Python float holds can be written) ---------------

_INT_EDGES = [0, -1, 2**31, 2**53 + 1, 2**63 - 1, -(2**63), 2**63, -(2**63) - 1, 2**64, 10**40]
_FLOAT_EDGES = ["5e-324", "-5e-324", "2.2250738585072014e-308", "1.7976931348623157e308", "-0.0",
                "1e400", "-1e400", "1e-400", "0.1"]  # fmt: skip
_DECIMAL_EDGES = ["1e26", "-1e26", "1E+999999999", "1e9999999999999999999", "1E-10", "1e-999999999",
                  "0E+99999999999", "-0", "0.000", "99999999.99", "-99999999.99", "100000000.00",
                  "9" * 38, "0." + "9" * 38, "12.345", "12.340", "NaN", "Infinity"]  # fmt: skip
_TIME_EDGES = ["0001-01-01T00:00:00Z", "9999-12-31T12:00:00Z", "0001-01-02T00:00:00Z", "0001-01-01T00:00:00+00:01", "9999-12-31T23:59:59.999999Z",
               "9999-12-31T23:59:59-00:01", "1969-12-31T23:59:59.999999Z", "1970-01-01T00:00:00Z",
               "2199-12-31T23:59:59.999999Z", "2200-01-01T00:00:00Z", "2106-02-07T06:28:16Z",
               "2024-05-01T12:00:00+23:59", "2024-05-01T12:00:00-23:59", "2024-02-30T00:00:00Z",
               "2024-05-01T24:00:00Z", "2024-05-01T12:00:60Z"]  # fmt: skip


def _nested(depth: int, inner: bytes = b"1") -> F:
    kind = depth % 2
    return F((b"[" if kind else b'{"a":') * depth + inner + (b"]" if kind else b"}") * depth)


_DEPTHS = st.sampled_from(
    [1, 10, MAX_JSON_DEPTH - 3, MAX_JSON_DEPTH - 2, MAX_JSON_DEPTH - 1, MAX_JSON_DEPTH, 100, 1000, 30_000]
)


def _edge(f: FieldDef | None) -> st.SearchStrategy[Any]:
    """A value for a field of ``f``'s kind at or past its limits, or of another kind."""
    numbers = st.sampled_from(
        [F(str(i).encode()) for i in _INT_EDGES] + [F(x.encode()) for x in _FLOAT_EDGES]
    )
    anything = numbers | st.none() | st.booleans() | text(8) | _DEPTHS.map(_nested)
    if f is None:
        return anything
    limit = f.limit
    if f.kind == "string":
        sized = st.sampled_from([limit, limit + 1, max(0, limit - 1)])
        return sized.map(lambda n: "\U0001f600" * n) | sized.map(lambda n: "é" * n) | anything
    if f.kind == "decimal":
        return (
            st.sampled_from(_DECIMAL_EDGES).flatmap(lambda d: st.sampled_from([d, F(d.encode())])) | anything
        )
    if f.kind == "timestamp":
        return st.sampled_from(_TIME_EDGES) | anything
    if f.kind == "json":
        body = st.sampled_from([limit - 2, limit - 1, limit])
        return (
            body.map(lambda n: F(b"[" + b"1," * ((n - 2) // 2) + b"1" + b"]"))
            | _DEPTHS.map(lambda d: _nested(d, b"[]"))
            | anything
        )
    return anything


@st.composite
def _records(draw: st.DrawFn) -> bytes:
    """A valid event of a random type+version, then a few fields (envelope or payload, known or
    not) replaced by edge values; or, sometimes, plain random bytes."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=300))
    et: EventType = draw(st.sampled_from(REGISTRY.types()))
    payload: dict[str, Any] = {}
    for f in et.fields:
        if f.required or draw(st.booleans()):
            payload[f.name] = draw(
                field_value(f, text_size=20, json=st.integers(-(2**63), 2**63 - 1), json_items=3)
            )
    event: dict[str, Any] = {
        "event_id": str(draw(st.uuids())),
        "customer_id": draw(st.sampled_from(["c1", "cust_0002", "z" * 48])),
        "type": et.name,
        "version": et.version,
        "occurred_at": draw(OCCURRED | st.sampled_from(_TIME_EDGES)),
        "payload": payload,
    }
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.sampled_from(["payload", "envelope", "unknown"]))
        if where == "payload" and et.fields:
            f = draw(st.sampled_from(et.fields))
            payload[f.name] = draw(_edge(f))
        elif where == "envelope":
            event[draw(st.sampled_from(["event_id", "customer_id", "type", "version", "occurred_at"]))] = (
                draw(_edge(None))
            )
        else:
            (payload if draw(st.booleans()) else event)["zz_unknown"] = draw(_edge(None))
    return orjson.dumps(event, option=orjson.OPT_UTC_Z, default=str)


def _decode_all(datas: list[bytes]) -> list[tuple[Record, Event]]:
    accepted = []
    for i, data in enumerate(datas):
        try:
            event = REGISTRY.decode(data)
        except InvalidEvent as exc:
            assert exc.reason in DECODE_REASONS and exc.detail
            continue
        assert isinstance(event, Event)
        accepted.append((Record(data, "pk", str(1000 + i), 0, 1_714_000_000_000 + i), event))
    return accepted


def _through_every_stage(accepted: list[tuple[Record, Event]]) -> None:
    """The batcher's build, Parquet, binary COPY, projector plan and fold, the merge window."""
    if not accepted:
        return
    buf = ShardBuffer("shardId-000000000000")
    for record, event in accepted:
        buf.add_valid(record, event)
    batch = buf.seal(FlushReason.RECORDS)
    tables = build_tables(REGISTRY, batch)
    written = encode_objects(batch, tables, [False] * len(batch.rows()))
    assert sum(meta.rows for *_, meta in written) == batch.valid
    for (_customer, etype, _version), _key, body, _meta in written:
        table = pq.read_table(pa.BufferReader(body))
        columns = {c.name: c for c in DIALECT.columns(etype)}
        wire = [Column(name, columns[name].staging_type) for name in table.column_names if name in columns]
        for rb in table.to_batches():
            encode_batch(rb, wire)
        for name in table.column_names:  # Redshift VARCHAR(n) counts bytes, at most 65535
            if pa.types.is_string(table.schema.field(name).type) or pa.types.is_large_string(
                table.schema.field(name).type
            ):
                assert all(len(v.encode()) <= 65535 for v in table.column(name).to_pylist() if v is not None)
    events = [event for _, event in accepted]
    PLANNER.plan_events(events, now=int(NOW.timestamp()), target="")
    fold(events, now=NOW)
    times = [event.occurred_at for event in events]
    assert all(OCCURRED_AT_MIN <= t < OCCURRED_AT_MAX for t in times)
    for window in (timedelta(days=7), timedelta(days=36500), timedelta.max):
        lo, hi = merge_window(min(times), max(times), window)
        assert lo <= min(times) and hi >= max(times)


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(st.lists(_records(), min_size=1, max_size=6))
def test_decode_is_total_and_what_it_accepts_passes_every_stage(datas: list[bytes]) -> None:
    _through_every_stage(_decode_all(datas))


@settings(max_examples=300)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_give_an_event_or_invalid_event(raw: bytes) -> None:
    _decode_all([raw])


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH - 1, MAX_JSON_DEPTH, MAX_JSON_DEPTH + 1, 1000, 30_000])
def test_depth_limit_counts_the_envelope_and_payload(depth: int) -> None:
    """A json field's value may nest MAX_JSON_DEPTH levels (64 with the envelope and payload)."""
    items = b"[" * depth + b"]" * depth
    raw = orjson.dumps(_order(F(items)))
    if depth <= MAX_JSON_DEPTH:
        assert bytes(REGISTRY.decode(raw).payload.items) == items  # type: ignore[attr-defined]
    else:
        with pytest.raises(InvalidEvent) as info:
            REGISTRY.decode(raw)
        assert info.value.reason == "too_deep"


def test_30000_deep_unknown_field_and_escaped_strings() -> None:
    deep = {**_order(F(b"[]")), "zz": _nested(30_000)}
    with pytest.raises(InvalidEvent, match="too_deep"):
        REGISTRY.decode(orjson.dumps(deep))
    # brackets inside strings (escaped quotes too) do not nest
    tricky = _order(F(b'["' + b"[" * 500 + b'\\"' + b"{" * 500 + b'"]'))
    assert REGISTRY.decode(orjson.dumps(tricky)).customer_id == "c1"


@pytest.mark.parametrize(
    ("raw", "deep"),
    [(b"[]" * 100, False), (b"[" * 63 + b"]" * 63, True), (b"{" * 62 + b"}" * 62, False),
     (b'["' + b"[" * 100 + b'"]', False), (b'["\\\\", ' + b"[]," * 100 + b"[]]", False),
     (b'"\\"\\"' * 50 + b"[" * 70, False), ((b"[" * 62 + b"]" * 62) * 100, False)],
)  # fmt: skip
def test_too_deep(raw: bytes, deep: bool) -> None:
    assert too_deep(raw) is deep


def test_unforeseen_errors_become_undecodable(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = load_registry()

    class Boom:
        def decode(self, raw: bytes) -> Event:
            raise LookupError("a converter failed")

    monkeypatch.setattr(schemas.registry, "_ENVELOPE_DECODER", Boom())
    with pytest.raises(InvalidEvent) as info:
        registry.decode(b"{}")
    assert info.value.reason == "undecodable" and "LookupError" in info.value.detail
    assert "undecodable" in REASONS


def _order(items: Any) -> dict[str, Any]:
    return {
        "event_id": str(uuid.UUID(int=1, version=4)),
        "customer_id": "c1",
        "type": "order_placed",
        "version": 1,
        "occurred_at": "2024-05-01T12:00:00Z",
        "payload": {"order_id": "o1", "user_id": "u1", "status": "paid", "currency": "EUR",
                    "total_cents": 2**63 - 1, "item_count": 1, "items": items, "discount_cents": 0},
    }  # fmt: skip
