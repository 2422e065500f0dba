"""The real batcher (workers.batcher:create_processor) under the Java MultiLangDaemon: every valid
event lands in S3 exactly once, manifests reach SQS, checkpoints reach the lease table — and
records the processor raises on, in the same GetRecords pages, are dead-lettered with reason
processor_error instead of taking their batch down with them (KCL itself skips such a batch)."""

from __future__ import annotations

import io
import json
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from kcl_harness import (
    DaemonStarter,
    bootstrap_leases,
    create_stream,
    daemon_log,
    leases,
    per_shard_last,
    put_payloads,
    wait_until,
)
from support.poison import MARK

from pipeline.app.provision import ensure_bucket, ensure_queues
from pipeline.core.clients import ClientFactory
from pipeline.core.manifest import decode_manifest
from pipeline.core.settings import Settings
from pipeline.producer.synthetic import SyntheticConfig, generate

pytestmark = [pytest.mark.integration, pytest.mark.kcl, pytest.mark.timeout(240)]


def objects_by_event_id(clients: ClientFactory, bucket: str) -> dict[str, list[str]]:
    s3 = clients.s3()
    where: dict[str, list[str]] = defaultdict(list)
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="events/"):
        for obj in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            table = pq.read_table(io.BytesIO(body), columns=["event_id"])
            for event_id in table.column("event_id").to_pylist():
                where[event_id].append(obj["Key"])
    return where


def test_batcher_under_the_java_daemon(
    kcl_settings: Settings, start_daemon: DaemonStarter, tmp_path: Path, unique_name: str
) -> None:
    name = unique_name
    settings = replace(
        kcl_settings,
        resources=replace(
            kcl_settings.resources, stream=name, bucket=name, queue=name, dead_letter_queue=f"{name}-dlq"
        ),
        worker=replace(kcl_settings.worker, flush_records=150, flush_age_seconds=2.0),
    )
    clients = ClientFactory(settings)
    ensure_bucket(clients.s3(), name, settings.aws.region)
    ensure_queues(clients.sqs(), settings.resources, visibility_timeout=30)
    kinesis = clients.kinesis()
    create_stream(kinesis, name, 2)
    bootstrap_leases(clients.dynamodb(), kinesis, name, name)

    synthetic = list(
        generate(SyntheticConfig(seed=11, customers=4, duplicate_ratio=0.1, invalid_ratio=0.05), 700)
    )
    # The producer's partition keys: a duplicate goes to its original's shard, where the batcher's
    # Redis dedupe drops it (cross-shard duplicates are the inserter's job).
    payloads, keys = [r.data for r in synthetic], [r.partition_key for r in synthetic]
    for i in (5, 250, 251, 600):  # poison records among valid ones, on both shards
        payloads.insert(i, MARK + str(i).encode())
        keys.insert(i, f"poison-{i}")
    puts = put_payloads(kinesis, name, payloads, keys=keys)
    expected = {r.event_id for r in synthetic if r.valid}
    poisoned = {(p.shard_id, p.seq) for p, data in zip(puts, payloads, strict=True) if data.startswith(MARK)}

    start_daemon(
        settings, app=name, worker_id="java-batcher", processor="tests.support.poison:create_batcher"
    )
    # Full batches flush on size; the tails flush on the idle rule, fed by empty processRecords calls.
    wait_until(
        lambda: set(objects_by_event_id(clients, name)) >= expected,
        timeout=120,
        what="every valid event in S3",
        detail=lambda: daemon_log(tmp_path, "java-batcher"),
    )
    last = per_shard_last(puts)
    wait_until(
        lambda: {k: v["checkpoint"] for k, v in leases(clients.dynamodb(), name).items()} == last,
        timeout=30,
        what="checkpoints at each shard's last record",
        detail=lambda: str(leases(clients.dynamodb(), name)),
    )
    where = objects_by_event_id(clients, name)
    assert set(where) == expected
    repeated = {k: v for k, v in where.items() if len(v) > 1}
    assert not repeated, f"{len(repeated)} events written twice, e.g. {list(repeated.items())[:3]}"

    sqs = clients.sqs()
    queue_url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    manifests = []
    while True:
        got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get(
            "Messages", []
        )
        if not got:
            break
        for msg in got:
            manifests.append(decode_manifest(msg["Body"]))
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=msg["ReceiptHandle"])
    assert sum(o.rows for m in manifests for o in m.objects) == len(expected)
    assert {m.shard_id for m in manifests} == set(last)
    assert processor_errors(clients, name) == poisoned


def processor_errors(clients: ClientFactory, bucket: str) -> set[tuple[str, str]]:
    """(shard, sequence) of every processor_error dead letter, checking each names the exception."""
    s3 = clients.s3()
    out: set[tuple[str, str]] = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="dead-letter/"):
        for obj in page.get("Contents", []):
            if "/processor_error/" not in obj["Key"]:
                continue
            for line in s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read().splitlines():
                doc = json.loads(line)
                assert doc["reason"] == "processor_error" and doc["detail"].startswith("RuntimeError: ")
                out.add((doc["shard_id"], doc["sequence_number"]))
    return out
