"""De-aggregation is bounded: any bytes give records or a refusal with a reason, never more than
the limits' worth of sub-records, and the KPL's own aggregates are never refused."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.kpl import forged_aggregate

from pipeline.consumer.kpl import (
    MAGIC,
    TOO_LARGE,
    TOO_MANY_RECORDS,
    AggregateLimits,
    AggregateRefused,
    deaggregate,
)

SMALL = AggregateLimits(max_records=100, max_bytes=4096)


def test_too_many_sub_records_is_refused_before_any_is_built() -> None:
    blob = forged_aggregate([b""] * 167_000)  # ~1 MB: what one forged record can hold
    with pytest.raises(AggregateRefused) as refused:
        deaggregate(blob, "k", "1", 0)
    assert refused.value.reason == TOO_MANY_RECORDS
    assert refused.value.detail == "167000 sub-records (limit 50000)"


def test_too_many_sub_record_bytes_is_refused() -> None:
    with pytest.raises(AggregateRefused) as refused:
        deaggregate(forged_aggregate([b"x" * 1000] * 5), "k", "1", 0, SMALL)
    assert refused.value.reason == TOO_LARGE and "limit 4096" in refused.value.detail


def test_a_kpl_sized_aggregate_passes_the_defaults() -> None:
    # The KPL's largest aggregate (AggregationMaxSize 1 MiB) of small events stays under both.
    datas = [b'{"e":%d}' % i for i in range(40_000)]
    out = deaggregate(forged_aggregate(datas), "k", "7", 0)
    assert [r.binary_data for r in out] == datas and out[-1].sub_sequence_number == 39_999


@given(
    st.binary(max_size=400), st.integers(min_value=1, max_value=50), st.integers(min_value=1, max_value=500)
)
def test_any_bytes_give_bounded_records_or_a_reason(data: bytes, max_records: int, max_bytes: int) -> None:
    limits = AggregateLimits(max_records=max_records, max_bytes=max_bytes)
    for blob in (data, MAGIC + data + hashlib.md5(data).digest()):
        try:
            out = deaggregate(blob, "k", "1", 0, limits)
        except AggregateRefused as refused:
            assert refused.reason in {TOO_MANY_RECORDS, TOO_LARGE}
            continue
        assert out and (len(out) == 1 or len(out) <= max_records)
        if len(out) == 1 and out[0].binary_data == blob:
            continue  # passed through whole, as KCL does
        assert sum(len(r.binary_data) for r in out) <= max_bytes


@given(st.lists(st.binary(max_size=40), min_size=1, max_size=60))
def test_forged_aggregates_split_or_are_refused_by_the_limits(datas: list[bytes]) -> None:
    blob = forged_aggregate(datas)
    size = sum(map(len, datas)) + 1
    if len(datas) > SMALL.max_records or size > SMALL.max_bytes:
        with pytest.raises(AggregateRefused):
            deaggregate(blob, "k", "1", 0, SMALL)
    else:
        assert [r.binary_data for r in deaggregate(blob, "k", "1", 0, SMALL)] == datas
