"""What the PostgreSQL stager works out from the rows it sends: repeated ids, and slices."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
from hypothesis import given
from hypothesis import strategies as st

from inserter.destinations.postgres.observed import batch_slices, repeats
from inserter.destinations.postgres.pgbinary import Column, encode_batch
from inserter.destinations.staging import merge_slices

POOL = [uuid.UUID(int=i * 0x9E3779B97F4A7C15F39CC0605CEDC835 % 2**128) for i in range(1, 9)]


def spelled(u: uuid.UUID, upper: bool) -> str:
    text = str(u)
    return text.upper() if upper else text


def sent_ids(batches: list[list[str]]) -> list[object]:
    """The event_id pieces of each batch, as the stager collects them while writing the COPY."""
    out = []
    for texts in batches:
        kept: dict[str, object] = {}
        encode_batch(
            pa.record_batch({"event_id": pa.array(texts, pa.string())}),
            [Column("event_id", "uuid")],
            keep=kept,
        )
        if texts:
            out.append(kept["event_id"])
    return out


@given(
    st.lists(
        st.lists(st.tuples(st.sampled_from(range(len(POOL))), st.booleans()), max_size=6),
        max_size=4,
    )
)
def test_repeats_is_true_exactly_when_a_uuid_occurs_twice(picks: list[list[tuple[int, bool]]]) -> None:
    batches = [[spelled(POOL[i], upper) for i, upper in batch] for batch in picks]
    chosen = [POOL[i] for batch in picks for i, _ in batch]
    assert repeats(sent_ids(batches)) is (len(set(chosen)) != len(chosen))


def test_two_spellings_of_one_uuid_are_one_id() -> None:
    u = uuid.uuid4()
    assert repeats(sent_ids([[str(u)], [str(u).upper()]])) is True
    assert repeats(sent_ids([[str(u), str(uuid.uuid4())]])) is False
    assert repeats([]) is False


ROW = st.tuples(
    st.sampled_from(["acme", "globex", None]),
    st.one_of(
        st.none(),
        st.integers(0, 10**6).map(lambda s: datetime(2024, 5, 1, tzinfo=UTC) + timedelta(seconds=s)),
    ),
    st.sampled_from(["page_view", "order_placed", None]),
    st.one_of(st.none(), st.integers(1, 3)),
)


def _naive(rows: list[tuple[Any, ...]], ordinal: int) -> dict[tuple[Any, Any], tuple[Any, ...]]:
    out: dict[tuple[Any, Any], tuple[Any, ...]] = {}
    for customer in {r[0] for r in rows}:
        mine = [r for r in rows if r[0] == customer]
        ranges = []
        for i in (1, 2, 3):
            vals = [r[i] for r in mine if r[i] is not None]
            ranges += [min(vals) if vals else None, max(vals) if vals else None]
        out[(ordinal, customer)] = (ordinal, customer, len(mine), *ranges)
    return out


@given(st.lists(st.lists(ROW, max_size=8), max_size=4), st.integers(0, 5))
def test_slices_merged_over_batches_equal_one_group_by_over_all_rows(
    batches: list[list[tuple[Any, ...]]], ordinal: int
) -> None:
    """What the stager reports per (object, customer) is what ``stage_stats`` would answer."""
    parts = []
    for rows in batches:
        batch = pa.record_batch(
            {
                "customer_id": pa.array([r[0] for r in rows], pa.string()),
                "occurred_at": pa.array([r[1] for r in rows], pa.timestamp("us", tz="UTC")),
                "event_type": pa.array([r[2] for r in rows], pa.string()).dictionary_encode(),
                "event_version": pa.array([r[3] for r in rows], pa.int16()),
            }
        )
        parts.append(batch_slices(batch, ordinal))
    got = {(s[0], s[1]): s for s in merge_slices(parts)}
    assert got == _naive([r for rows in batches for r in rows], ordinal)
