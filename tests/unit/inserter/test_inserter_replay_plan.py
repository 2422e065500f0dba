"""Replay's pure parts (selection, grouping into batches, manifests), Parquet footer summaries
and the classification of warehouse errors."""

from __future__ import annotations

import io
from datetime import UTC, date, datetime, timedelta

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg import errors as pg_errors

from inserter.errors import LoadError, classify_pg, is_transient_pg
from inserter.replay import build_manifests, group_batches, parse_location, select
from inserter.source import ParquetSummary, summarize_footer
from pipeline.core.errors import ConfigError, TerminalError, TransientError
from pipeline.core.layout import EventObjectKey
from pipeline.core.manifest import decode_manifest, encode_manifest

NOW = datetime(2024, 6, 1, tzinfo=UTC)


def key(customer: str, shard: int, first: int, last: int, day: int = 1, version: int = 1) -> str:
    return str(
        EventObjectKey(
            customer, "page_view", version, date(2024, 5, day), f"shardId-{shard:012d}", str(first), str(last)
        )
    )


def test_select_filters_on_the_batch_day_and_reports_foreign_keys() -> None:
    listing = [
        (key("a", 0, 1, 9, day=1), 10),
        (key("a", 0, 10, 19, day=2), 10),
        (key("a", 0, 20, 29, day=3), 10),
        ("events/readme.txt", 3),
        ("dead-letter/stream=s/dt=2024-05-01/x.jsonl", 5),
    ]
    chosen, ignored = select(listing, date(2024, 5, 2), date(2024, 5, 3))
    assert [c.parsed.day.day for c in chosen] == [2, 3]
    assert ignored == ["events/readme.txt", "dead-letter/stream=s/dt=2024-05-01/x.jsonl"]
    assert len(select(listing, None, None)[0]) == 3


def test_batches_group_by_shard_and_sequence_range_in_stream_order() -> None:
    chosen, _ = select(
        [
            (key("b", 0, 100, 199), 1),
            (key("a", 0, 100, 199), 1),
            (key("a", 0, 9, 99), 1),  # numerically before 100 (not as a string)
            (key("a", 1, 5, 7), 1),
            (key("a", 0, 100, 199, version=2), 1),
        ],
        None,
        None,
    )
    groups = group_batches(chosen)
    assert list(groups) == [
        ("shardId-000000000000", 9, 99),
        ("shardId-000000000000", 100, 199),
        ("shardId-000000000001", 5, 7),
    ]
    assert [o.parsed.customer_id for o in groups[("shardId-000000000000", 100, 199)]] == ["a", "a", "b"]


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c1"]), st.integers(0, 3), st.integers(0, 10**30), st.integers(1, 5)
        ),
        max_size=30,
    )
)
def test_every_object_lands_in_exactly_its_own_batch(specs: list[tuple[str, int, int, int]]) -> None:
    listing = {(key(c, shard, first, first + span), span) for c, shard, first, span in specs}
    chosen, ignored = select(sorted(listing), None, None)
    assert ignored == []
    groups = group_batches(chosen)
    assert sorted(o.key for objs in groups.values() for o in objs) == sorted(k for k, _ in listing)
    for (shard, first, last), objs in groups.items():
        assert all(
            (o.parsed.shard_id, int(o.parsed.first_sequence), int(o.parsed.last_sequence))
            == (shard, first, last)
            for o in objs
        )
    assert list(groups) == sorted(groups)


def test_manifests_rebuild_the_batch_and_split_when_too_big() -> None:
    chosen, _ = select([(key(f"c{i:03d}", 0, 1, 9), 100 + i) for i in range(40)], None, None)
    (batch_key, objects) = next(iter(group_batches(chosen).items()))
    lo, hi = datetime(2024, 5, 1, 12, tzinfo=UTC), datetime(2024, 5, 1, 13, tzinfo=UTC)
    described = [(o, ParquetSummary(7, lo, hi)) for o in objects]
    (whole,) = build_manifests("s", "bkt", batch_key, described, created_at=NOW)
    assert whole.batch_id == "s/shardId-000000000000/1-9" and whole.bucket == "bkt"
    first = whole.objects[0]
    assert (first.rows, first.bytes, first.min_occurred_at, first.max_occurred_at) == (
        7,
        100,
        "2024-05-01T12:00:00.000000Z",
        "2024-05-01T13:00:00.000000Z",
    )
    assert decode_manifest(encode_manifest(whole)) == whole
    parts = build_manifests("s", "bkt", batch_key, described, created_at=NOW, max_bytes=3000)
    assert len(parts) > 1 and all(len(encode_manifest(p)) <= 3000 for p in parts)
    assert [o for p in parts for o in p.objects] == list(whole.objects)
    assert {p.batch_id for p in parts} == {whole.batch_id}


def test_locations() -> None:
    assert parse_location("s3://bkt/events/customer=a/", "default") == ("bkt", "events/customer=a/")
    assert parse_location("/events/", "default") == ("default", "events/")
    with pytest.raises(ConfigError):
        parse_location("s3:///x", "default")


def footer_of(table: pa.Table, **write: object) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, **write)
    body = sink.getvalue()
    n = int.from_bytes(body[-8:-4], "little")
    return body[-(n + 8) :]


def test_footers_give_rows_and_the_occurred_at_range_across_row_groups() -> None:
    base = datetime(2024, 5, 1, tzinfo=UTC)
    stamps = [base + timedelta(minutes=(i * 37) % 500) for i in range(1000)]
    table = pa.table(
        {
            "event_id": [str(i) for i in range(1000)],
            "occurred_at": pa.array(stamps, pa.timestamp("us", tz="UTC")),
        }
    )
    summary = summarize_footer(footer_of(table, row_group_size=100))
    assert summary == ParquetSummary(1000, min(stamps), max(stamps))
    assert summarize_footer(footer_of(table, write_statistics=False)) == ParquetSummary(1000, None, None)
    with pytest.raises(LoadError, match="no occurred_at"):
        summarize_footer(footer_of(pa.table({"x": [1]})))
    with pytest.raises(LoadError, match="unreadable"):
        summarize_footer(b"garbage" * 3 + b"\x05\x00\x00\x00PAR1")


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (pg_errors.SerializationFailure("x"), True),
        (pg_errors.DeadlockDetected("x"), True),
        (pg_errors.LockNotAvailable("x"), True),
        (pg_errors.AdminShutdown("x"), True),
        (pg_errors.QueryCanceled("x"), True),
        (psycopg.OperationalError("server closed the connection unexpectedly"), True),
        (pg_errors.UndefinedTable("x"), False),
        (pg_errors.InsufficientPrivilege("x"), False),
        (pg_errors.InvalidTextRepresentation("x"), False),
        (ValueError("x"), False),
    ],
)
def test_warehouse_errors_are_classified_where_they_enter(exc: Exception, transient: bool) -> None:
    assert is_transient_pg(exc) is transient
    wrapped = classify_pg(exc, "load b1")
    assert isinstance(wrapped, TransientError if transient else TerminalError)
    assert str(wrapped).startswith("load b1: ")
