"""The batcher against the real local servers: Kinesis (moto) → processor → S3, SQS, Redis."""

from __future__ import annotations

import base64
import io
import re
from collections import Counter

import pyarrow.parquet as pq
import pytest
from batcher_harness import (
    Checkpoints,
    all_rows,
    deliver,
    ids_in_objects,
    make_env,
    read_shard,
    records,
)
from prometheus_client import generate_latest

from pipeline.consumer.processor import ShardEndedInput, ShutdownRequestedInput
from pipeline.core.clients import ClientFactory
from pipeline.core.layout import parse_event_key
from pipeline.core.settings import Settings
from pipeline.producer.synthetic import UNSAFE_CUSTOMER_IDS, SyntheticConfig, generate
from schemas import encode_event, is_safe_customer_id, load_registry
from schemas.errors import DECODE_REASONS

pytestmark = pytest.mark.integration

REGISTRY = load_registry()
DEAD_LETTER_KEY = re.compile(
    r"^dead-letter/stream=[A-Za-z0-9_.-]+/dt=\d{4}-\d{2}-\d{2}/shardId-\d{12}-\d+-\d+\.jsonl$"
)


def test_end_to_end_from_kinesis(clients: ClientFactory, settings: Settings, unique_name: str) -> None:
    env = make_env(clients, settings, unique_name, shards=1)
    synthetic = list(
        generate(SyntheticConfig(seed=7, customers=5, duplicate_ratio=0.1, invalid_ratio=0.05), 1500)
    )
    kinesis = clients.kinesis()
    for i in range(0, len(synthetic), 500):
        chunk = synthetic[i : i + 500]
        resp = kinesis.put_records(
            StreamName=env.stream, Records=[{"Data": r.data, "PartitionKey": r.partition_key} for r in chunk]
        )
        assert resp["FailedRecordCount"] == 0
    recs = read_shard(clients, env.stream, "shardId-000000000000")
    assert len(recs) == 1500

    proc = env.processor(flush_records=400)
    ckpt = Checkpoints()
    deliver(proc, recs, ckpt, chunk=250)
    proc.shard_ended(ShardEndedInput(ckpt))

    expected = {r.event_id for r in synthetic if r.valid}
    by_key = env.rows_by_key()
    where = ids_in_objects(by_key)
    assert set(where) == expected
    assert all(len(keys) == 1 for keys in where.values()), "a producer retry became a second row"
    # Every object: its group's schema, zstd, the deterministic key, rows of one type+version
    # only — of one customer, or (a shared object) of many, sorted by customer.
    for key, rows in by_key.items():
        parsed = parse_event_key(key)
        et = REGISTRY.get(parsed.event_type, parsed.version)
        pf = pq.ParquetFile(io.BytesIO(env.body(key)))
        assert pf.schema_arrow == et.arrow_schema
        assert pf.metadata.row_group(0).column(0).compression == "ZSTD"
        assert {(r["event_type"], r["event_version"]) for r in rows} == {(parsed.event_type, parsed.version)}
        owners = [r["customer_id"] for r in rows]
        assert owners == sorted(owners) if parsed.shared else set(owners) == {parsed.customer_id}
    # Manifests describe exactly what is in S3.
    manifests = env.manifests()
    described = {o.key: o for m in manifests for o in m.objects}
    assert set(described) == set(by_key)
    for key, obj in described.items():
        assert obj.rows == len(by_key[key])
        assert obj.bytes == len(env.body(key))
        if obj.customers:  # a shared object's entry lists each customer's rows
            assert [(c.customer_id, c.rows) for c in obj.customers] == sorted(
                Counter(r["customer_id"] for r in by_key[key]).items()
            )
    assert len({m.batch_id for m in manifests}) == len(manifests) == 4
    # Dead letters: every invalid record, with its reason, raw bytes intact.
    dead = env.dead_letters()
    invalid = [r for r in synthetic if not r.valid]
    assert sorted(base64.b64decode(d["data_base64"]) for d in dead) == sorted(r.data for r in invalid)
    assert Counter(d["reason"] for d in dead) == Counter(r.invalid_reason for r in invalid)
    # Checkpoints: one per flush, the last one SHARD_END.
    assert ckpt.calls[-1] == (None, None) and len(ckpt.calls) == 4
    # Metrics: plain dict and Prometheus agree with the data.
    m = proc.metrics.as_dict()
    assert m["records_in"] == 1500 and m["rows_written"] == len(expected)
    assert m["invalid"] == len(invalid) and m["valid"] == 1500 - len(invalid)
    assert m["duplicates_dropped"] == sum(1 for r in synthetic if r.is_duplicate)
    text = generate_latest(env.prom).decode()
    assert (
        f'shardhouse_batcher_rows_written_total{{shard_id="shardId-000000000000"}} {len(expected)}.0' in text
    )


def test_producer_retries_across_shards_leave_no_duplicate_rows(
    clients: ClientFactory, settings: Settings, unique_name: str
) -> None:
    """The same event_id in one batch, in a later batch, and on another shard: one row."""
    env = make_env(clients, settings, unique_name)
    synthetic = list(
        generate(SyntheticConfig(seed=11, customers=3, duplicate_ratio=0.3, invalid_ratio=0.0), 900)
    )
    datas = [r.data for r in synthetic]
    context = env.context(flush_records=100)
    a = env.processor("shardId-000000000000", context=context)
    b = env.processor("shardId-000000000001", context=context)
    ck_a, ck_b = Checkpoints(), Checkpoints()
    # Shard b receives a retry of every 5th record shard a received, after a has flushed them.
    deliver(a, records(datas), ck_a)
    a.shutdown_requested(ShutdownRequestedInput(ck_a))
    deliver(b, records(datas[::5], first_seq=50_000), ck_b)
    b.shutdown_requested(ShutdownRequestedInput(ck_b))

    where = ids_in_objects(env.rows_by_key())
    assert set(where) == {r.event_id for r in synthetic}
    assert [i for i, keys in where.items() if len(keys) > 1] == []
    assert b.metrics.rows_written == 0
    assert b.metrics.duplicates_dropped == len(datas[::5])
    assert a.metrics.duplicates_dropped == sum(1 for r in synthetic if r.is_duplicate)


def test_every_invalid_input_is_dead_lettered_and_never_reaches_a_key(
    clients: ClientFactory, settings: Settings, unique_name: str
) -> None:
    env = make_env(clients, settings, unique_name)
    good = encode_event(
        {
            "event_id": "7b0c5a4e-1f7e-4c8e-9a6e-5d1f0f7f2a10",
            "customer_id": "cust_ok",
            "type": "page_view",
            "version": 1,
            "occurred_at": "2024-05-01T12:00:00Z",
            "payload": {"user_id": "u1", "url": "https://example.com/"},
        }
    )
    unsafe = [
        encode_event(
            {
                "event_id": f"7b0c5a4e-1f7e-4c8e-9a6e-{n:012d}",
                "customer_id": customer,
                "type": "page_view",
                "version": 1,
                "occurred_at": "2024-05-01T12:00:00Z",
                "payload": {"user_id": "u1", "url": "https://example.com/"},
            }
        )
        for n, customer in enumerate(UNSAFE_CUSTOMER_IDS)
    ]
    kinds = [
        r
        for r in generate(SyntheticConfig(seed=3, duplicate_ratio=0.0, invalid_ratio=0.9), 400)
        if not r.valid
    ]
    assert {r.invalid_reason for r in kinds} == set(DECODE_REASONS) - {"undecodable"}
    datas = [good, *unsafe, *(r.data for r in kinds)]
    proc = env.processor(flush_records=50)
    ckpt = Checkpoints()
    deliver(proc, records(datas), ckpt)
    proc.shutdown_requested(ShutdownRequestedInput(ckpt))

    keys = env.keys()
    event_keys = [k for k in keys if k.startswith("events/")]
    assert [pq.read_table(io.BytesIO(env.body(k))).column("customer_id").to_pylist() for k in event_keys] == [
        ["cust_ok"]
    ]
    assert all(k.startswith("events/") or DEAD_LETTER_KEY.fullmatch(k) for k in keys)
    for bad in ("..", "etc", "drop", "'", " ", "ü", "Cust", "ccccccccccc"):
        assert not any(bad in k for k in keys), bad
    dead = env.dead_letters()
    assert len(dead) == len(datas) - 1
    assert Counter(d["reason"] for d in dead) == Counter(
        ["unsafe_customer_id"] * len(unsafe) + [r.invalid_reason or "" for r in kinds]
    )
    assert all(d["shard_id"] == "shardId-000000000000" and d["sequence_number"].isdigit() for d in dead)
    assert ckpt.last == (str(1000 + len(datas) - 1), 0)  # bad input never stops the shard
    manifests = env.manifests()
    listed = [c.customer_id for m in manifests for o in m.objects for c in o.customers]
    assert listed == ["cust_ok"]
    assert all(is_safe_customer_id(c) for c in listed)


def test_redis_forgetting_allows_duplicates_but_loses_nothing(
    clients: ClientFactory, settings: Settings, unique_name: str
) -> None:
    env = make_env(clients, settings, unique_name)
    synthetic = list(generate(SyntheticConfig(seed=5, duplicate_ratio=0.0, invalid_ratio=0.0), 300))
    datas = [r.data for r in synthetic]
    first = env.processor()
    ckpt = Checkpoints()
    deliver(first, records(datas), ckpt)
    first.shutdown_requested(ShutdownRequestedInput(ckpt))

    clients.redis().flushall()  # Redis restarted without persistence: every dedupe id is gone

    retry = env.processor("shardId-000000000001")  # the producer retried them all, to another shard
    ckpt2 = Checkpoints()
    deliver(retry, records(datas, first_seq=90_000), ckpt2)
    retry.shutdown_requested(ShutdownRequestedInput(ckpt2))

    by_key = env.rows_by_key()
    where = ids_in_objects(by_key)
    assert set(where) == {r.event_id for r in synthetic}  # nothing lost
    assert all(len(keys) == 2 for keys in where.values())  # duplicated: the inserter's merge removes them
    # The duplicates are the same event: identical apart from where they were read.
    rows: dict[str, list[dict[str, object]]] = {}
    for row in all_rows(by_key):
        rows.setdefault(str(row["event_id"]), []).append(
            {k: v for k, v in row.items() if not k.startswith("_")}
        )
    assert all(a == b for a, b in rows.values())
