"""Batch → groups, keys, dead letters, manifests; the dedupe key layout. Pure, no servers."""

from __future__ import annotations

import base64
import struct
import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.consumer.processor import Record
from pipeline.core.dead_letters import Rejected, dead_letter_document
from pipeline.core.layout import parse_event_key
from pipeline.core.manifest import BatchObject, decode_manifest, encode_manifest
from schemas import load_registry
from workers.batcher import plan
from workers.batcher.buffer import Batch, Position, ShardBuffer
from workers.batcher.commit import build_tables
from workers.batcher.dedupe import pack_batch, pack_columns, parse_check_reply
from workers.batcher.plan import object_key
from workers.batcher.policy import FlushReason
from workers.idset.identity import identity
from workers.idset.layout import DedupeLayout, uuid_bytes

REGISTRY = load_registry()
T0 = datetime(2024, 5, 1, 23, 59, 59, tzinfo=UTC)
SHARD = "shardId-000000000007"


def _event(n: int, customer: str = "c1", version: int = 1, at: datetime = T0) -> bytes:
    payload = {"user_id": "u", "url": "x"}
    if version == 2:
        payload["session_id"] = "s"
    return orjson.dumps(
        {
            "event_id": str(uuid.UUID(int=n, version=4)),
            "customer_id": customer,
            "type": "page_view",
            "version": version,
            "occurred_at": at.isoformat(),
            "payload": payload,
        }
    )


def _batch(datas: list[bytes], arrival_ms: int = 1714607999000) -> Batch:
    buf = ShardBuffer(SHARD)
    for i, data in enumerate(datas):
        record = Record(data, "pk", str(1000 + i), 0, arrival_ms + i)
        buf.add_valid(record, REGISTRY.decode(data))
    return buf.seal(FlushReason.RECORDS)


def test_groups_type_by_type_customers_in_first_seen_order() -> None:
    batch = _batch([_event(1, "b", 2), _event(2, "b"), _event(3, "a"), _event(4, "b"), _event(5, "a", 2)])
    groups = build_tables(REGISTRY, batch, own_rows=1)
    assert list(groups) == [
        ("b", "page_view", 2),
        ("a", "page_view", 2),
        ("b", "page_view", 1),
        ("a", "page_view", 1),
    ]
    # rows keep their arrival order inside a group; positions index the batch's dedupe ids
    assert groups[("b", "page_view", 1)][1].column("_sequence_number").to_pylist() == ["1001", "1003"]
    assert [groups[g][0].to_pylist() for g in groups] == [[0], [1], [2, 4], [3]]


def test_small_customers_share_one_object_per_type_sorted_by_customer() -> None:
    """Below the threshold every customer's rows go into one object per (type, version), sorted
    by customer (each in arrival order); a customer at the threshold gets its own."""
    batch = _batch([_event(1, "b"), _event(2, "c"), _event(3, "a"), _event(4, "b"), _event(5, "c")])
    groups = build_tables(REGISTRY, batch, own_rows=2)
    assert set(groups) == {("b", "page_view", 1), ("c", "page_view", 1), (None, "page_view", 1)}
    where, shared = groups[(None, "page_view", 1)]
    assert shared.column("customer_id").to_pylist() == ["a"] and where.to_pylist() == [2]
    everyone = build_tables(REGISTRY, batch)  # the default threshold: one object
    ((group, (where, table)),) = everyone.items()
    assert group == (None, "page_view", 1)
    assert table.column("customer_id").to_pylist() == ["a", "b", "b", "c", "c"]
    assert where.to_pylist() == [2, 0, 3, 1, 4]
    assert object_key(batch, group).startswith("events/shared/type=page_view/v=1/")


def test_keys_come_from_stream_position_and_arrival_day() -> None:
    batch = _batch(
        [_event(1), _event(2)], arrival_ms=int(datetime(2024, 5, 1, 23, 59, tzinfo=UTC).timestamp() * 1000)
    )
    key = plan.object_key(batch, ("c1", "page_view", 1))
    assert key == (
        "events/customer=c1/type=page_view/v=1/dt=2024-05-01/shardId-000000000007-1000-1001.parquet"
    )
    assert plan.batch_id_of("s", batch) == "s/shardId-000000000007/1000-1001"
    assert plan.dead_letter_key_of("s", batch) == (
        "dead-letter/stream=s/dt=2024-05-01/shardId-000000000007-1000-1001.jsonl"
    )


@given(
    customer=st.from_regex(r"[a-z0-9][a-z0-9_]{0,47}", fullmatch=True),
    first=st.integers(0, 10**40),
    span=st.integers(0, 10**6),
    arrival=st.integers(0, 4102444800000),
)
def test_object_keys_parse_back(customer: str, first: int, span: int, arrival: int) -> None:
    batch = Batch(
        shard_id=SHARD,
        first=Position(str(first), 0),
        last=Position(str(first + span), 3),
        first_arrival_ms=arrival,
        types=[],
        rejected=[],
        records=0,
        raw_bytes=0,
        duplicates_in_batch=0,
        reason=FlushReason.AGE,
    )
    key = plan.object_key(batch, (customer, "order_placed", 2))
    parsed = parse_event_key(key)
    assert (parsed.customer_id, parsed.event_type, parsed.version) == (customer, "order_placed", 2)
    assert (parsed.first_sequence, parsed.last_sequence) == (str(first), str(first + span))


def test_dead_letter_document_keeps_raw_bytes() -> None:
    raw = b"\xff\xfe not utf8 \x00"
    doc = dead_letter_document("s", SHARD, [Rejected(raw, "pk", "17", 2, 1234, "not_utf8", "x" * 5000)])
    lines = doc.splitlines()
    assert len(lines) == 1 and doc.endswith(b"\n")
    entry = orjson.loads(lines[0])
    assert base64.b64decode(entry["data_base64"]) == raw
    assert (entry["shard_id"], entry["sequence_number"], entry["sub_sequence_number"]) == (SHARD, "17", 2)
    assert entry["reason"] == "not_utf8" and len(entry["detail"]) == 2000
    assert dead_letter_document("s", SHARD, []) == b""


def test_manifest_round_trips_and_splits_deterministically() -> None:
    batch = _batch([_event(1)])
    objs = [
        BatchObject(f"events/customer=c{i:04d}/k", f"c{i:04d}", "page_view", 1, 1, 10, "a", "b")
        for i in range(3000)
    ]
    one = plan.build_manifests(stream="s", bucket="b", batch=batch, objects=objs[:5], created_at=T0)
    assert len(one) == 1 and one[0].batch_id == "s/shardId-000000000007/1000-1000"
    assert decode_manifest(encode_manifest(one[0])) == one[0]
    parts = plan.build_manifests(stream="s", bucket="b", batch=batch, objects=objs, created_at=T0)
    assert len(parts) > 1
    assert all(len(encode_manifest(m)) <= plan.MAX_MANIFEST_BYTES for m in parts)
    assert [m.batch_id for m in parts] == [
        f"s/shardId-000000000007/1000-1000#{i}of{len(parts)}" for i in range(1, len(parts) + 1)
    ]
    assert sorted(o.key for m in parts for o in m.objects) == sorted(o.key for o in objs)
    again = plan.build_manifests(
        stream="s", bucket="b", batch=batch, objects=list(reversed(objs)), created_at=T0
    )
    assert again == parts


def test_rfc3339_is_utc_z() -> None:
    local = datetime(2024, 5, 1, 14, 0, tzinfo=UTC) + timedelta(microseconds=5)
    assert plan.rfc3339(local) == "2024-05-01T14:00:00.000005Z"


# -- dedupe layout ----------------------------------------------------------------------------


def test_pack_batch_matches_pack() -> None:
    lay = DedupeLayout.for_stream("s", 86400)
    batch = _batch([_event(1), _event(2, at=datetime(1970, 1, 1, tzinfo=UTC))])
    assert pack_batch(lay, batch.types) == [lay.pack(r[1], r[0], r[2]) for r in batch.rows()]


def test_pack_columns_refuses_columns_of_different_lengths() -> None:
    lay = DedupeLayout.for_stream("s", 86400)
    eid, at = "0190f0e2-8c2b-7a6b-9c3d-1234567890ab", datetime(2024, 5, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="different lengths"):
        pack_columns(lay, [eid, eid], ["acme"], [at, at])
    with pytest.raises(ValueError, match="not canonical"):
        pack_columns(lay, [eid + "00"], ["acme"], [at])


def test_pack_is_hour_slot_hash_and_identity() -> None:
    lay = DedupeLayout.for_stream("s", 86400)
    eid = "0190f0e2-8c2b-7a6b-9c3d-1234567890ab"
    blob = lay.pack("acme", eid, datetime(2024, 5, 1, 12, 30, tzinfo=UTC))
    ident = identity("acme", uuid.UUID(eid).bytes)
    assert len(blob) == 24 and blob[8:] == ident and blob[4:8] == ident[:4]
    hour = struct.unpack(">I", blob[:4])[0]
    assert hour == int(datetime(2024, 5, 1, 12, tzinfo=UTC).timestamp()) // 3600
    # Same event (a producer retry) → same lookup record; another hour → another bucket.
    assert lay.pack("acme", eid, datetime(2024, 5, 1, 12, 59, tzinfo=UTC)) == blob
    assert lay.pack("acme", eid, datetime(2024, 5, 1, 13, 0, tzinfo=UTC)) != blob
    # Another customer's event with the same id: another identity, in the same bucket.
    other = lay.pack("acme2", eid, datetime(2024, 5, 1, 12, 30, tzinfo=UTC))
    assert other[:4] == blob[:4] and other[8:] != blob[8:]
    # Before 1970 clamps to bucket 0 rather than failing.
    assert struct.unpack(">I", lay.pack("acme", eid, datetime(1960, 1, 1, tzinfo=UTC))[:4]) == (0,)


@given(st.uuids())
def test_uuid_bytes_matches_uuid_module(u: uuid.UUID) -> None:
    assert uuid_bytes(str(u)) == u.bytes


def test_uuid_bytes_refuses_non_uuid() -> None:
    with pytest.raises(ValueError):
        uuid_bytes("0000")


def test_paths_fan_out_from_parent_slots() -> None:
    lay = DedupeLayout.for_stream("s", 86400)
    blob = lay.pack("acme", str(uuid.uuid4()), T0)
    path = lay.path(blob)
    assert len(path) == lay.max_level + 1
    slots = [int(p.rsplit(":", 1)[1]) for p in path]
    for level in range(1, len(slots)):
        # A child's slot reduces to its parent's slot: one parent per child hash.
        assert slots[level] % (lay.base_slots * lay.fanout ** (level - 1)) == slots[level - 1]
    assert path[0].startswith("seen:s:")


def test_layout_refuses_slot_space_beyond_hash() -> None:
    with pytest.raises(ValueError):
        DedupeLayout(prefix="p", base_bits=12, level_bits=4, max_level=6)


def test_parse_check_reply() -> None:
    assert parse_check_reply(b"1", 3).batch_committed
    reply = parse_check_reply(b"0101", 3)
    assert not reply.batch_committed and reply.seen == [True, False, True]
    with pytest.raises(Exception, match="malformed"):
        parse_check_reply(b"01", 3)


def test_rows_hold_the_position_and_the_shard_column() -> None:
    batch = _batch([_event(1), _event(2)])
    ((_, table),) = build_tables(REGISTRY, batch).values()
    assert table.column("_sequence_number").to_pylist() == ["1000", "1001"]
    assert table.column("_shard_id").to_pylist() == [SHARD, SHARD]
