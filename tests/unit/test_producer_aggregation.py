"""KPL aggregation: round trip through the official de-aggregator, shard grouping, limits."""

from __future__ import annotations

import base64
from collections import defaultdict

import pytest
from aws_kinesis_agg.deaggregator import iter_deaggregate_records
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.producer.aggregation import (
    MAX_AGGREGATE_SIZE,
    ShardMap,
    aggregate,
    count_user_records,
    hash_key,
)
from pipeline.producer.batching import MAX_RECORD_BYTES, RecordTooLarge, record_size

FOUR_SHARDS = ShardMap.from_shards(
    {
        "ShardId": f"shardId-{i:012d}",
        "HashKeyRange": {"StartingHashKey": str(i * 2**126), "EndingHashKey": str((i + 1) * 2**126 - 1)},
        "SequenceNumberRange": {"StartingSequenceNumber": "1"},
    }
    for i in (2, 0, 3, 1)  # unsorted on purpose
)


def unpack(records: list[tuple[bytes, str]]) -> list[tuple[bytes, str]]:
    """De-aggregate with aws_kinesis_agg, as a KCL consumer would."""
    wire = [
        {"Data": d, "PartitionKey": k, "SequenceNumber": "1", "ApproximateArrivalTimestamp": 0}
        for d, k in records
    ]
    out = []
    for r in iter_deaggregate_records(wire, data_format="Boto3"):
        k = r["kinesis"]
        # User records come back base64-encoded (Lambda style); plain records pass through as is.
        out.append((base64.b64decode(k["data"]) if k.get("aggregated") else k["data"], k["partitionKey"]))
    return out


entries = st.lists(st.tuples(st.binary(max_size=3_000), st.text(min_size=1, max_size=20)), max_size=300)


@settings(max_examples=40, deadline=None)
@given(entries, st.sampled_from([300, 4_096, 51_200]))
def test_round_trip_keeps_every_record_in_order_per_shard(
    users: list[tuple[bytes, str]], max_size: int
) -> None:
    packed = list(aggregate(users, shard_map=FOUR_SHARDS, max_size=max_size))
    assert all(record_size(d, k) <= MAX_RECORD_BYTES for d, k in packed)
    got = unpack(packed)
    assert sorted(got) == sorted(users)
    by_shard: dict[int, list[tuple[bytes, str]]] = defaultdict(list)
    for u in users:
        by_shard[FOUR_SHARDS.index_for(u[1])].append(u)
    got_by_shard: dict[int, list[tuple[bytes, str]]] = defaultdict(list)
    for u in got:
        got_by_shard[FOUR_SHARDS.index_for(u[1])].append(u)
    assert got_by_shard == by_shard
    assert sum(count_user_records(d) for d, _ in packed) == len(users)


def test_each_aggregate_routes_to_the_shard_of_all_its_user_records() -> None:
    users = [(b"x" * 100, f"customer-{i}") for i in range(2_000)]
    packed = list(aggregate(users, shard_map=FOUR_SHARDS, max_size=10_000))
    assert len(packed) < 100  # ~100 users per 10 kB aggregate
    for data, key in packed:
        inner = {FOUR_SHARDS.index_for(k) for _, k in unpack([(data, key)])}
        assert inner == {FOUR_SHARDS.index_for(key)}


def test_a_record_too_big_to_share_goes_alone_after_its_shards_pending_aggregate() -> None:
    key = "same-key"
    small, big = (b"s", key), (b"B" * 60_000, key)
    packed = list(aggregate([small, big, small], max_size=51_200))
    assert packed[1] == big  # sent plain; de-aggregators pass it through
    assert unpack(packed) == [small, big, small]


def test_oversize_user_record_is_rejected() -> None:
    with pytest.raises(RecordTooLarge):
        list(aggregate([(b"x" * MAX_RECORD_BYTES, "k")]))
    with pytest.raises(ValueError):
        list(aggregate([], max_size=MAX_AGGREGATE_SIZE + 1))


def test_shard_map_lookup_and_closed_shards() -> None:
    assert FOUR_SHARDS.shard_ids == tuple(f"shardId-{i:012d}" for i in range(4))
    for key in ("a", "b", "customer-17"):
        assert FOUR_SHARDS.index_for(key) == hash_key(key) // 2**126
    closed = ShardMap.from_shards(
        [
            {
                "ShardId": "old",
                "HashKeyRange": {"StartingHashKey": "0"},
                "SequenceNumberRange": {"StartingSequenceNumber": "1", "EndingSequenceNumber": "9"},
            },
            {
                "ShardId": "new",
                "HashKeyRange": {"StartingHashKey": "0"},
                "SequenceNumberRange": {"StartingSequenceNumber": "10"},
            },
        ]
    )
    assert closed.shard_ids == ("new",)


def test_count_user_records_of_plain_and_corrupt_records() -> None:
    assert count_user_records(b"plain json") == 1
    packed = list(aggregate([(b"a", "k"), (b"b", "k")]))
    assert count_user_records(packed[0][0]) == 2
    corrupt = packed[0][0][:-1] + b"\x00"
    assert count_user_records(corrupt) == 1
