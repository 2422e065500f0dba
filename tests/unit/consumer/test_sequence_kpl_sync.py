from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.consumer.kpl import MAGIC, deaggregate
from pipeline.consumer.processor import CheckpointError
from pipeline.consumer.sequence import (
    AT_TIMESTAMP,
    LATEST,
    SHARD_END,
    TRIM_HORIZON,
    validate_checkpoint,
)
from pipeline.consumer.sequence import (
    ExtendedSequenceNumber as E,
)
from pipeline.consumer.shard_sync import leases_to_create


def test_sentinel_order() -> None:
    ordered = [E(AT_TIMESTAMP), E(TRIM_HORIZON), E(LATEST), E("5"), E("5", 1), E("40"), E(SHARD_END)]
    assert sorted(reversed(ordered)) == ordered


@given(st.integers(0, 10**56), st.integers(0, 10**56), st.integers(0, 100), st.integers(0, 100))
def test_numeric_order_is_numeric_not_lexical(a: int, b: int, sa: int, sb: int) -> None:
    assert (E(str(a), sa) < E(str(b), sb)) == ((a, sa) < (b, sb))


def test_checkpoint_validation() -> None:
    last, delivered = E("10"), E("20", 2)
    assert validate_checkpoint(E("15"), last_checkpoint=last, largest_delivered=delivered, shard_ended=False)
    assert not validate_checkpoint(
        E("10"), last_checkpoint=last, largest_delivered=delivered, shard_ended=False
    )
    with pytest.raises(CheckpointError) as before:
        validate_checkpoint(E("9"), last_checkpoint=last, largest_delivered=delivered, shard_ended=False)
    assert before.value.value == "IllegalArgumentException"
    with pytest.raises(CheckpointError, match="beyond the largest"):
        validate_checkpoint(E("20", 3), last_checkpoint=last, largest_delivered=delivered, shard_ended=False)
    assert validate_checkpoint(
        E(SHARD_END), last_checkpoint=last, largest_delivered=delivered, shard_ended=True
    )


def aggregate(records: list[tuple[str, bytes]]) -> bytes:
    import aws_kinesis_agg.aggregator as agg

    aggregator = agg.RecordAggregator()
    for key, data in records:
        aggregator.add_user_record(key, data)
    _pk, _ehk, blob = aggregator.clear_and_get().get_contents()
    return bytes(blob)


def test_kpl_aggregate_splits_into_sub_sequences() -> None:
    blob = aggregate([(f"k{i}", f"v{i}".encode()) for i in range(5)])
    out = list(deaggregate(blob, "outer", "777", 1))
    assert [(r.partition_key, r.binary_data, r.sequence_number, r.sub_sequence_number) for r in out] == [
        (f"k{i}", f"v{i}".encode(), "777", i) for i in range(5)
    ]


def test_bad_md5_passes_through_as_one_raw_record() -> None:
    blob = aggregate([("k", b"v"), ("k2", b"v2")])
    broken = blob[:-1] + bytes([blob[-1] ^ 0xFF])
    out = list(deaggregate(broken, "outer", "9", 1))
    assert len(out) == 1 and out[0].binary_data == broken and out[0].sub_sequence_number == 0


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    out = list(deaggregate(MAGIC + data + hashlib.md5(data).digest(), "k", "1", 0))
    assert out


def shard(sid: str, parent: str | None = None, closed: bool = False) -> dict[str, object]:
    rng: dict[str, str] = {"StartingSequenceNumber": "1"}
    if closed:
        rng["EndingSequenceNumber"] = "9"
    return {"ShardId": sid, "ParentShardId": parent, "SequenceNumberRange": rng,
            "HashKeyRange": {"StartingHashKey": "0", "EndingHashKey": "9"}}  # fmt: skip


def test_sync_creates_missing_leases_only() -> None:
    shards = [shard("s0"), shard("s1")]
    made = leases_to_create(shards, {"s0"}, TRIM_HORIZON)
    assert [m.lease_key for m in made] == ["s1"]
    assert made[0].checkpoint == E(TRIM_HORIZON) and made[0].starting_hash_key == "0"


def test_sync_skips_closed_parent_whose_children_have_leases() -> None:
    shards = [shard("p", closed=True), shard("c1", parent="p"), shard("c2", parent="p")]
    assert [m.lease_key for m in leases_to_create(shards, {"c1", "c2"}, TRIM_HORIZON)] == []
    fresh = leases_to_create(shards, set(), TRIM_HORIZON)
    assert {m.lease_key for m in fresh} == {"p", "c1", "c2"}
    assert {m.lease_key: m.parent_shard_ids for m in fresh}["c1"] == {"p"}
    assert [m.lease_key for m in leases_to_create(shards, set(), LATEST)] == ["c1", "c2"]
