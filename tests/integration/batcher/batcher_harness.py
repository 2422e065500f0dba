"""Helpers for batcher tests on the real local servers: a test's own bucket/queue/stream names,
a recording checkpointer, and readers for what landed in S3 and SQS. Nothing here fakes a
server: S3, SQS, Kinesis and Redis are the session's real processes.
"""

from __future__ import annotations

import io
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import orjson
import pyarrow.parquet as pq
from prometheus_client import CollectorRegistry
from support.checkpoints import Checkpoints
from support.records import ORIGIN_MS, after, records_of
from support.records import deliver as support_deliver

from pipeline.app.provision import ensure_bucket, ensure_queues, ensure_stream
from pipeline.consumer.processor import InitializeInput, Record
from pipeline.core.clients import ClientFactory
from pipeline.core.manifest import BatchManifest, decode_manifest
from pipeline.core.settings import Settings
from workers.batcher import BatcherContext, BatcherProcessor, build_context


@dataclass
class Env:
    settings: Settings
    clients: ClientFactory
    prom: CollectorRegistry

    @property
    def bucket(self) -> str:
        return self.settings.resources.bucket

    @property
    def stream(self) -> str:
        return self.settings.resources.stream

    def context(self, **worker: Any) -> BatcherContext:
        """A fresh process's context (a restart gets a new one), optionally other flush settings."""
        settings = replace(self.settings, worker=replace(self.settings.worker, **worker))
        return build_context(self.clients, settings, prom_registry=self.prom)

    def processor(
        self,
        shard: str = "shardId-000000000000",
        *,
        context: BatcherContext | None = None,
        crash: Callable[[str], None] | None = None,
        **worker: Any,
    ) -> BatcherProcessor:
        proc = BatcherProcessor(context or self.context(**worker), crash=crash)
        proc.initialize(InitializeInput(shard, "TRIM_HORIZON", 0))
        return proc

    # -- reading back -------------------------------------------------------------------------

    def keys(self, prefix: str = "") -> list[str]:
        s3 = self.clients.s3()
        out: list[str] = []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            out.extend(obj["Key"] for obj in page.get("Contents", []))
        return sorted(out)

    def body(self, key: str) -> bytes:
        return self.clients.s3().get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def rows_by_key(self) -> dict[str, list[dict[str, Any]]]:
        return {key: pq.read_table(io.BytesIO(self.body(key))).to_pylist() for key in self.keys("events/")}

    def dead_letters(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for key in self.keys("dead-letter/"):
            out.extend(orjson.loads(line) for line in self.body(key).splitlines())
        return out

    def manifests(self) -> list[BatchManifest]:
        """Drain the queue (messages are deleted: each test reads its own queue once)."""
        sqs = self.clients.sqs()
        url = sqs.get_queue_url(QueueName=self.settings.resources.queue)["QueueUrl"]
        out: list[BatchManifest] = []
        while True:
            resp = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
            messages = resp.get("Messages", [])
            if not messages:
                return out
            for msg in messages:
                out.append(decode_manifest(msg["Body"]))
                sqs.delete_message(QueueUrl=url, ReceiptHandle=msg["ReceiptHandle"])


def make_env(clients: ClientFactory, settings: Settings, name: str, *, shards: int = 0) -> Env:
    resources = replace(
        settings.resources,
        stream=name,
        bucket=name,
        queue=name,
        dead_letter_queue=f"{name}-dlq",
        shard_count=max(1, shards),
    )
    test_settings = replace(settings, resources=resources)
    ensure_bucket(clients.s3(), name, settings.aws.region)
    ensure_queues(clients.sqs(), resources, visibility_timeout=30)
    if shards:
        ensure_stream(clients.kinesis(), name, shards)
    return Env(test_settings, clients, CollectorRegistry())


#: A test's records: increasing sequence numbers from 1000, arrivals 5 ms apart.
records = partial(records_of, first_seq=1000, step_ms=5)
#: Deliveries of 500 records, 1 s behind the tip (so checkpoints may be deferred as in production).
deliver = partial(support_deliver, behind_ms=1000, chunk=500)


def read_shard(clients: ClientFactory, stream: str, shard_id: str) -> list[Record]:
    """Every record of a shard via GetRecords, as the consumer runtime would hand them over."""
    kinesis = clients.kinesis()
    iterator = kinesis.get_shard_iterator(
        StreamName=stream, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    out: list[Record] = []
    empty = 0
    while iterator and empty < 2:
        resp = kinesis.get_records(ShardIterator=iterator, Limit=10_000)
        got = resp["Records"]
        empty = empty + 1 if not got else 0
        for r in got:
            out.append(
                Record(
                    binary_data=r["Data"],
                    partition_key=r["PartitionKey"],
                    sequence_number=r["SequenceNumber"],
                    sub_sequence_number=0,
                    approximate_arrival_timestamp=int(r["ApproximateArrivalTimestamp"].timestamp() * 1000),
                )
            )
        iterator = resp.get("NextShardIterator")
        if not got:
            time.sleep(0.05)
    return out


def ids_in_objects(rows_by_key: dict[str, list[dict[str, Any]]]) -> dict[str, list[str]]:
    where: dict[str, list[str]] = defaultdict(list)
    for key, rows in rows_by_key.items():
        for row in rows:
            where[row["event_id"]].append(key)
    return dict(where)


def all_rows(rows_by_key: dict[str, list[dict[str, Any]]]) -> Iterator[dict[str, Any]]:
    for rows in rows_by_key.values():
        yield from rows


__all__ = ["ORIGIN_MS", "Checkpoints", "after"]
