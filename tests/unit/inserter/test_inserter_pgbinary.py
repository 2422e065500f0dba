"""The vectorized COPY BINARY encoder against a plain per-value reference encoder."""

from __future__ import annotations

import struct
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inserter.destinations.postgres.pgbinary import (
    HEADER,
    PG_EPOCH_OFFSET_US,
    TRAILER,
    Column,
    EncodeError,
    constant_piece,
    encode_batch,
    encode_column,
)

PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def reference(value: Any, wire_type: str) -> bytes:
    """One value as PostgreSQL's ``*_send`` functions write it, written the obvious way."""
    if value is None:
        return struct.pack(">i", -1)
    if wire_type == "smallint":
        body = struct.pack(">h", value)
    elif wire_type == "integer":
        body = struct.pack(">i", value)
    elif wire_type == "bigint":
        body = struct.pack(">q", value)
    elif wire_type == "double precision":
        body = struct.pack(">d", value)
    elif wire_type == "boolean":
        body = b"\x01" if value else b"\x00"
    elif wire_type == "timestamptz":
        delta = value - PG_EPOCH
        body = struct.pack(">q", (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds)
    elif wire_type == "uuid":
        body = uuid.UUID(value).bytes
    elif wire_type == "jsonb":
        body = b"\x01" + value.encode()
    else:
        body = value.encode() if isinstance(value, str) else str(value).encode()
    return struct.pack(">i", len(body)) + body


ARROW = {
    "smallint": pa.int16(),
    "integer": pa.int32(),
    "bigint": pa.int64(),
    "double precision": pa.float64(),
    "boolean": pa.bool_(),
    "timestamptz": pa.timestamp("us", tz="UTC"),
    "uuid": pa.string(),
    "text": pa.string(),
    "jsonb": pa.string(),
}
stamps = st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC))
VALUES = {
    "smallint": st.integers(-(2**15), 2**15 - 1),
    "integer": st.integers(-(2**31), 2**31 - 1),
    "bigint": st.integers(-(2**63), 2**63 - 1),
    "double precision": st.floats(allow_nan=False),
    "boolean": st.booleans(),
    "timestamptz": stamps,
    "text": st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00")),
    "jsonb": st.dictionaries(st.text(max_size=5), st.integers(), max_size=3).map(
        lambda d: __import__("json").dumps(d)
    ),
}


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    wire_type=st.sampled_from(sorted(VALUES)),
    n=st.integers(1, 40),
    cut=st.integers(0, 5),
)
def test_every_wire_type_matches_the_reference(data: st.DataObject, wire_type: str, n: int, cut: int) -> None:
    values = data.draw(st.lists(st.one_of(st.none(), VALUES[wire_type]), min_size=n + cut, max_size=n + cut))
    arr = pa.array(values, ARROW[wire_type])[cut:]  # a slice: a non-zero offset into the buffers
    got = encode_column(arr, wire_type).to_pylist()
    assert got == [reference(v, wire_type) for v in values[cut:]]


@settings(max_examples=30, deadline=None)
@given(ids=st.lists(st.uuids(), min_size=1, max_size=30), cut=st.integers(0, 3))
def test_uuids_become_their_16_bytes(ids: list[uuid.UUID], cut: int) -> None:
    text = [str(u) for u in ids]
    arr = pa.array(["00000000-0000-0000-0000-000000000000"] * cut + text)[cut:]
    assert encode_column(arr, "uuid").to_pylist() == [reference(t, "uuid") for t in text]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["not-a-uuid"], "36-character"),
        (["g" * 8 + "-0000-0000-0000-000000000000"], "not a hex UUID"),
        (["0" * 36], "hyphenated"),
        ([str(uuid.uuid4()), None], "null UUID"),
    ],
)
def test_bad_uuids_are_refused(values: list[str | None], message: str) -> None:
    with pytest.raises(EncodeError, match=message):
        encode_column(pa.array(values, pa.string()), "uuid")


def test_numeric_travels_as_text_and_timestamps_are_cast() -> None:
    dec = pa.array([Decimal("12.50"), None, Decimal("-0.01")], pa.decimal128(10, 2))
    assert encode_column(dec, "text").to_pylist() == [
        reference("12.50", "text"),
        reference(None, "text"),
        reference("-0.01", "text"),
    ]
    seconds = pa.array([0, 1], pa.timestamp("s", tz="UTC"))
    assert encode_column(seconds, "timestamptz").to_pylist() == [
        struct.pack(">iq", 8, -PG_EPOCH_OFFSET_US),
        struct.pack(">iq", 8, -PG_EPOCH_OFFSET_US + 1_000_000),
    ]
    with pytest.raises(EncodeError, match="cannot write"):
        encode_column(pa.array(["x"]), "bigint")


def test_a_batch_is_count_then_pieces_per_row() -> None:
    at = PG_EPOCH + timedelta(seconds=1)
    batch = pa.record_batch(
        {
            "a": pa.array([1, None], pa.int64()),
            "b": pa.array(["x", "yz"]),
            "c": pa.array([at, at], pa.timestamp("us", tz="UTC")),
        }
    )
    body = encode_batch(
        batch, [Column("a", "bigint"), Column("b", "text"), Column("c", "timestamptz")], [constant_piece(7)]
    )
    tag = struct.pack(">ii", 4, 7)
    row1 = (
        struct.pack(">h", 4)
        + reference(1, "bigint")
        + reference("x", "text")
        + reference(at, "timestamptz")
        + tag
    )
    row2 = (
        struct.pack(">h", 4)
        + reference(None, "bigint")
        + reference("yz", "text")
        + reference(at, "timestamptz")
        + tag
    )
    assert body == row1 + row2
    assert encode_batch(batch.slice(0, 0), [Column("a", "bigint")]) == b""
    assert HEADER.startswith(b"PGCOPY\n\xff\r\n\x00") and len(HEADER) == 19 and TRAILER == b"\xff\xff"


def test_unknown_wire_types_are_refused_up_front() -> None:
    with pytest.raises(ValueError, match="no binary COPY encoder"):
        Column("x", "numeric(10,2)")
