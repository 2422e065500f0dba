"""Nothing is skipped or unbounded in the native runtime: valid events and records the processor raises on share
GetRecords pages; a worker process runs the real batcher behind a processor that raises on the
poison records, the inserter loads what it wrote. Every valid event is in the warehouse once,
every poison record is dead-lettered with reason processor_error, and each shard's checkpoint
reaches its last record. (The same under the Java MultiLangDaemon: tests/integration/kcl/
test_daemon_batcher.py.)"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pyarrow.parquet as pq
import pytest
from consumer_fleet import Fleet
from support.kpl import forged_aggregate
from support.poison import MARK
from support.tcp_proxy import TcpProxy

from pipeline.app.provision import ensure_bucket, ensure_database, ensure_queues
from pipeline.app.servers import stack as local_stack
from pipeline.core.clients import ClientFactory
from pipeline.core.settings import Settings
from pipeline.producer.synthetic import SyntheticConfig, SyntheticRecord, generate
from schemas import load_registry
from workers.projector.fold import fold
from workers.projector.keys import Namespace
from workers.projector.store import ProjectionStore

pytestmark = pytest.mark.timeout(180)


def test_poison_records_are_dead_lettered_and_every_valid_event_loads_once(
    fleet: Fleet, settings: Settings, clients: ClientFactory, tmp_path: Path
) -> None:
    name = fleet.stream
    resources = provision(fleet, settings, clients)
    db = psycopg.conninfo.make_conninfo(settings.warehouse.url, dbname=f"{name}_poison")
    ensure_database(db)
    synthetic = valid_events(seed=5, customers=3, count=400)
    payloads = [r.data for r in synthetic]
    for i in (0, 7, 8, 200, 399):
        payloads.insert(i, MARK + str(i).encode())
    kinesis = clients.kinesis()
    out = kinesis.put_records(
        StreamName=name, Records=[{"Data": p, "PartitionKey": f"pk-{i % 16}"} for i, p in enumerate(payloads)]
    )
    assert out["FailedRecordCount"] == 0
    positions = [(r["ShardId"], r["SequenceNumber"]) for r in out["Records"]]
    poisoned = {pos for pos, data in zip(positions, payloads, strict=True) if data.startswith(MARK)}
    last = {}
    for shard, seq in positions:
        last[shard] = max(int(seq), int(last.get(shard, 0)))

    fleet.start(
        "w1", processor="tests.support.poison:create_batcher",
        SHARDHOUSE_FLUSH_RECORDS="1000", SHARDHOUSE_FLUSH_AGE_SECONDS="1", **resources,
    )  # fmt: skip

    fleet.wait_for(
        f"checkpoints at every shard's last record {last}", lambda: checkpoints(fleet) == last, timeout=60
    )
    assert dead_lettered(clients, name) == poisoned

    env = fleet.env(SHARDHOUSE_WAREHOUSE_URL=db, **resources)
    subprocess.run(
        [sys.executable, "-c", "from pipeline.app.cli import main; main()", "inserter", "--once", "--wait-seconds", "1"],
        env=env, check=True, timeout=120, capture_output=True,
    )  # fmt: skip
    with psycopg.connect(db) as conn:
        tables = [t for (t,) in conn.execute("SELECT DISTINCT target_table FROM shardhouse.load_ledger")]
        loaded = [eid for t in tables for (eid,) in conn.execute(f"SELECT event_id::text FROM {t}")]
    assert sorted(loaded) == sorted(str(r.event_id) for r in synthetic)


def test_a_hostile_aggregate_is_dead_lettered_whole_and_its_neighbours_land(
    fleet: Fleet, settings: Settings, clients: ClientFactory
) -> None:
    """Plain boto3, one shard: valid events, a forged aggregate of 100,000 empty sub-records
    (~600 KB; KCL would hand all of them to the processor at once), more valid events."""
    name = fleet.stream
    resources = provision(fleet, settings, clients)
    synthetic = valid_events(seed=8, customers=2, count=60)
    payloads = (
        [r.data for r in synthetic[:30]]
        + [forged_aggregate([b""] * 100_000)]
        + [r.data for r in synthetic[30:]]
    )
    kinesis = clients.kinesis()
    shard = kinesis.list_shards(StreamName=name)["Shards"][0]
    positions = []
    for data in payloads:  # one at a time: the aggregate alone is most of a PutRecords call's 5 MB
        out = kinesis.put_record(
            StreamName=name,
            Data=data,
            PartitionKey="pk",
            ExplicitHashKey=shard["HashKeyRange"]["StartingHashKey"],
        )
        positions.append((out["ShardId"], out["SequenceNumber"]))
    fleet.start(
        "w1",
        processor="batcher",
        SHARDHOUSE_FLUSH_RECORDS="1000",
        SHARDHOUSE_FLUSH_AGE_SECONDS="1",
        **resources,
    )

    def done() -> bool:
        lease = {x.lease_key: x for x in fleet.leases()}[positions[-1][0]]
        return lease.checkpoint.sequence_number == positions[-1][1]

    fleet.wait_for("the checkpoint past the aggregate, at the shard's last record", done, timeout=60)
    assert dead_lettered(clients, name, "aggregate_too_many_records", "100000 sub-records") == {positions[30]}
    written = []
    for obj in clients.s3().list_objects_v2(Bucket=name, Prefix="events/").get("Contents", []):
        body = clients.s3().get_object(Bucket=name, Key=obj["Key"])["Body"].read()
        written += pq.read_table(io.BytesIO(body), columns=["event_id"]).column("event_id").to_pylist()
    assert sorted(map(str, written)) == sorted(str(r.event_id) for r in synthetic)


def test_redis_frozen_for_ten_seconds_mid_flush_heals_without_a_restart_or_a_loss(
    fleet: Fleet, settings: Settings, clients: ClientFactory, stack: local_stack.StackState
) -> None:
    """SIGSTOP the session's redis-server for 10 s while the batcher flushes (connections hang,
    then time out: an outage, not a poison record), then SIGCONT: the same worker process
    resumes, every event reaches S3, nothing is dead-lettered, the checkpoints reach the end."""
    name = fleet.stream
    resources = provision(fleet, settings, clients)
    synthetic = valid_events(seed=12, customers=2, count=300)
    kinesis = clients.kinesis()

    worker = fleet.start(
        "w1", processor="batcher", SHARDHOUSE_FLUSH_RECORDS="1000", SHARDHOUSE_FLUSH_AGE_SECONDS="1",
        SHARDHOUSE_REDIS_SOCKET_TIMEOUT="1", **resources,
    )  # fmt: skip
    put_records(kinesis, name, synthetic[:100])
    fleet.wait_for("a first flush", lambda: bool(s3_event_ids(clients, name)), timeout=30)
    redis_pid = stack.services["redis"].pid
    os.kill(redis_pid, signal.SIGSTOP)
    try:
        last = put_records(kinesis, name, synthetic[100:])  # flushed while Redis does not answer
        time.sleep(10)
    finally:
        os.kill(redis_pid, signal.SIGCONT)

    fleet.wait_for(
        "every shard's checkpoint past the outage",
        lambda: all(checkpoints(fleet).get(k, 0) >= v for k, v in last.items()),
        timeout=90,
    )
    assert worker.poll() is None, "the worker process exited"
    assert s3_event_ids(clients, name) == {str(r.event_id) for r in synthetic}
    assert clients.s3().list_objects_v2(Bucket=name, Prefix="dead-letter/").get("KeyCount", 0) == 0


def test_s3_and_sqs_cut_for_fifteen_seconds_mid_flush_heal_without_a_restart_or_a_loss(
    fleet: Fleet, settings: Settings, clients: ClientFactory
) -> None:
    """The worker reaches S3 and SQS through a proxy that is cut (connections reset, new ones
    refused) for 15 s while it flushes: the flush waits — retries, then the consumer's outage
    wait — and the same process finishes it when they answer again. Every event is in S3 once,
    every object is announced, nothing is dead-lettered, the checkpoints reach the end."""
    name = fleet.stream
    resources = provision(fleet, settings, clients)
    synthetic = valid_events(seed=13, customers=3, count=300)
    kinesis = clients.kinesis()
    target = urlsplit(settings.aws.endpoint_for("s3"))

    with TcpProxy(target.hostname or "127.0.0.1", target.port or 80) as proxy:
        via = f"http://127.0.0.1:{proxy.port}"
        worker = fleet.start(
            "w1", processor="batcher", SHARDHOUSE_FLUSH_RECORDS="1000", SHARDHOUSE_FLUSH_AGE_SECONDS="1",
            AWS_ENDPOINT_URL_S3=via, AWS_ENDPOINT_URL_SQS=via, **resources,
        )  # fmt: skip
        put_records(kinesis, name, synthetic[:100])
        fleet.wait_for("a first flush", lambda: bool(s3_event_ids(clients, name)), timeout=30)
        # flushed while S3 and SQS do not answer
        ride_out_a_cut(fleet, proxy, worker, lambda: put_records(kinesis, name, synthetic[100:]))
    rows = s3_event_id_list(clients, name)
    assert sorted(rows) == sorted(str(r.event_id) for r in synthetic)  # each once
    assert clients.s3().list_objects_v2(Bucket=name, Prefix="dead-letter/").get("KeyCount", 0) == 0
    announced = announced_keys(clients, name)
    objects = {
        o["Key"] for o in clients.s3().list_objects_v2(Bucket=name, Prefix="events/").get("Contents", [])
    }
    assert objects <= announced


def test_redis_cut_for_fifteen_seconds_mid_apply_heals_the_projector_without_a_loss(
    fleet: Fleet, settings: Settings, clients: ClientFactory
) -> None:
    """The projector reaches Redis through a proxy that is cut for 15 s while records arrive:
    the apply waits and the same process carries on when Redis answers again; the read models
    are exactly the fold of every event (none applied twice, none skipped), the checkpoints
    reach the end."""
    name = fleet.stream
    synthetic = generate(SyntheticConfig(seed=14, customers=3, duplicate_ratio=0.05, invalid_ratio=0.0), 400)
    records = list(synthetic)
    kinesis = clients.kinesis()
    target = urlsplit(settings.redis.url)

    store = ProjectionStore(clients.redis(), Namespace.for_stream(name))
    with TcpProxy(target.hostname or "127.0.0.1", target.port or 6379) as proxy:
        worker = fleet.start(
            "p1", processor="projector", SHARDHOUSE_REDIS_URL=f"redis://127.0.0.1:{proxy.port}{target.path}",
            SHARDHOUSE_REDIS_SOCKET_TIMEOUT="1",
        )  # fmt: skip
        put_records(kinesis, name, records[:100])
        fleet.wait_for("a first apply", lambda: store.status().current is not None, timeout=30)
        # delivered while Redis does not answer
        ride_out_a_cut(fleet, proxy, worker, lambda: put_records(kinesis, name, records[100:]))
    events = [load_registry().decode(r.data) for r in records]
    diff = store.snapshot().diff(fold(events))
    assert diff == [], "\n".join(diff)


def announced_keys(clients: ClientFactory, queue: str) -> set[str]:
    """Every object key the batch messages on ``queue`` announce (messages left in flight)."""
    sqs = clients.sqs()
    url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
    keys: set[str] = set()
    while True:
        got = sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=600, WaitTimeSeconds=1
        )
        messages = got.get("Messages", [])
        if not messages:
            return keys
        for m in messages:
            keys |= {o["key"] for o in json.loads(m["Body"])["objects"]}


def s3_event_id_list(clients: ClientFactory, bucket: str) -> list[str]:
    s3, out = clients.s3(), []
    for obj in s3.list_objects_v2(Bucket=bucket, Prefix="events/").get("Contents", []):
        body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
        out += map(str, pq.read_table(io.BytesIO(body), columns=["event_id"]).column("event_id").to_pylist())
    return out


def put_records(kinesis: Any, stream: str, records: Sequence[SyntheticRecord]) -> dict[str, int]:
    """Put ``records`` on ``stream``; each shard's highest sequence number among them."""
    out = kinesis.put_records(
        StreamName=stream, Records=[{"Data": r.data, "PartitionKey": r.partition_key} for r in records]
    )
    assert out["FailedRecordCount"] == 0
    last: dict[str, int] = {}
    for r in out["Records"]:
        last[r["ShardId"]] = max(int(r["SequenceNumber"]), last.get(r["ShardId"], 0))
    return last


def ride_out_a_cut(
    fleet: Fleet,
    proxy: TcpProxy,
    worker: subprocess.Popen[bytes],
    during: Callable[[], dict[str, int]],
    seconds: float = 15.0,
) -> None:
    """Cut ``proxy`` for ``seconds`` while ``during`` puts records (it returns each shard's last
    sequence number), restore it, then wait until every shard's checkpoint passes those records
    — in the same worker process."""
    proxy.cut()
    try:
        last = during()
        time.sleep(seconds)
        assert proxy.refused > 0, "the worker never tried to reach the cut dependency"
    finally:
        proxy.restore()
    fleet.wait_for(
        "every shard's checkpoint past the outage",
        lambda: all(checkpoints(fleet).get(k, 0) >= v for k, v in last.items()),
        timeout=120,
    )
    assert worker.poll() is None, "the worker process exited"


def checkpoints(fleet: Fleet) -> dict[str, int]:
    """Each lease's checkpointed sequence number (leases still at a position name left out)."""
    return {
        x.lease_key: int(x.checkpoint.sequence_number)
        for x in fleet.leases()
        if x.checkpoint.sequence_number.isdigit()
    }


def s3_event_ids(clients: ClientFactory, bucket: str) -> set[str]:
    s3, out = clients.s3(), set()
    for obj in s3.list_objects_v2(Bucket=bucket, Prefix="events/").get("Contents", []):
        body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
        out.update(
            map(str, pq.read_table(io.BytesIO(body), columns=["event_id"]).column("event_id").to_pylist())
        )
    return out


def provision(fleet: Fleet, settings: Settings, clients: ClientFactory) -> dict[str, str]:
    """The batcher's bucket and queues, named after the fleet's stream; the workers' settings."""
    name = fleet.stream
    ensure_bucket(clients.s3(), name, settings.aws.region)
    ensure_queues(clients.sqs(), replace(settings.resources, queue=name, dead_letter_queue=f"{name}-dlq"))
    return {
        "SHARDHOUSE_BUCKET": name,
        "SHARDHOUSE_QUEUE": name,
        "SHARDHOUSE_DEAD_LETTER_QUEUE": f"{name}-dlq",
    }


def valid_events(*, seed: int, customers: int, count: int) -> list[SyntheticRecord]:
    config = SyntheticConfig(seed=seed, customers=customers, duplicate_ratio=0.0, invalid_ratio=0.0)
    return list(generate(config, count))


def dead_lettered(
    clients: ClientFactory,
    bucket: str,
    reason: str = "processor_error",
    detail: str = "RuntimeError: poisoned",
) -> set[tuple[str, str]]:
    s3 = clients.s3()
    out = set()
    for obj in s3.list_objects_v2(Bucket=bucket, Prefix="dead-letter/").get("Contents", []):
        assert f"/{reason}/" in obj["Key"], obj["Key"]
        for line in s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read().splitlines():
            doc = json.loads(line)
            assert doc["reason"] == reason and doc["detail"].startswith(detail), doc["detail"]
            out.add((doc["shard_id"], doc["sequence_number"]))
    return out
