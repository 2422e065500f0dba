"""The PostgreSQL stager's duplicate check, on the ids exactly as COPY sends them."""

from __future__ import annotations

import uuid

import pyarrow as pa
from hypothesis import given
from hypothesis import strategies as st

from inserter.destinations.postgres.pgbinary import Column, encode_batch
from inserter.destinations.postgres.stager import repeats

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
