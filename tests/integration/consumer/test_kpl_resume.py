"""KPL aggregates on a real stream: sub-sequence numbers, and resuming mid-aggregate."""

from __future__ import annotations

import time
from dataclasses import replace

import aws_kinesis_agg.aggregator as agg

from pipeline.app.provision import ensure_stream
from pipeline.consumer.handle import LeaseHandle
from pipeline.consumer.lease_store import LeaseStore
from pipeline.consumer.leases import Lease
from pipeline.consumer.processor import (
    InitializeInput,
    LeaseLostInput,
    ProcessRecordsInput,
    ShardEndedInput,
    ShutdownRequestedInput,
)
from pipeline.consumer.sequence import ExtendedSequenceNumber
from pipeline.consumer.shard_consumer import ConsumerConfig, ShardConsumer
from pipeline.core.clients import ClientFactory


class Collect:
    def __init__(self) -> None:
        self.seen: list[tuple[str, int, bytes]] = []

    def initialize(self, initialize_input: InitializeInput) -> None:
        pass

    def process_records(self, process_records_input: ProcessRecordsInput) -> None:
        self.seen += [
            (r.sequence_number, r.sub_sequence_number, r.binary_data) for r in process_records_input.records
        ]

    def lease_lost(self, lease_lost_input: LeaseLostInput) -> None:
        pass

    def shard_ended(self, shard_ended_input: ShardEndedInput) -> None:
        shard_ended_input.checkpointer.checkpoint()

    def shutdown_requested(self, shutdown_requested_input: ShutdownRequestedInput) -> None:
        pass


def consume(
    clients: ClientFactory, store: LeaseStore, stream: str, handle: LeaseHandle, expect: int
) -> Collect:
    proc = Collect()
    consumer = ShardConsumer(
        kinesis=clients.kinesis(), store=store, handle=handle, processor=proc,
        config=ConsumerConfig(stream=stream, idle_between_reads_s=0.1),
    )  # fmt: skip
    consumer.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(proc.seen) < expect:
        time.sleep(0.1)
    time.sleep(0.5)
    consumer.shutdown_requested.set()
    consumer.join(10)
    return proc


def test_aggregate_delivers_sub_sequences_and_resumes_after_checkpointed_sub_record(
    clients: ClientFactory, unique_name: str
) -> None:
    ensure_stream(clients.kinesis(), unique_name, 1)
    aggregator = agg.RecordAggregator()
    for i in range(5):
        aggregator.add_user_record(f"user-{i}", f"event-{i}".encode())
    pk, _ehk, blob = aggregator.clear_and_get().get_contents()
    seq = clients.kinesis().put_record(StreamName=unique_name, Data=bytes(blob), PartitionKey=pk)[
        "SequenceNumber"
    ]
    store = LeaseStore(clients.dynamodb(), unique_name)
    store.ensure_table()
    shard_id = clients.kinesis().list_shards(StreamName=unique_name)["Shards"][0]["ShardId"]
    store.create_if_absent(Lease(shard_id))
    lease = store.get(shard_id)
    assert lease is not None and store.take(lease, "me")
    first = consume(clients, store, unique_name, LeaseHandle(store.get(shard_id)), 5)  # type: ignore[arg-type]
    assert [(s, sub) for s, sub, _ in first.seen] == [(seq, i) for i in range(5)]
    assert [d for _, _, d in first.seen] == [f"event-{i}".encode() for i in range(5)]

    # Checkpoint at (seq, 2) and restart: only sub-records 3 and 4 come again.
    current = store.get(shard_id)
    assert current is not None and store.checkpoint(current, ExtendedSequenceNumber(seq, 2))
    resumed = store.get(shard_id)
    assert resumed is not None
    second = consume(clients, store, unique_name, LeaseHandle(replace(resumed)), 2)
    assert [(s, sub) for s, sub, _ in second.seen] == [(seq, 3), (seq, 4)]


def test_aggregate_with_a_bad_md5_arrives_as_one_raw_record(clients: ClientFactory, unique_name: str) -> None:
    ensure_stream(clients.kinesis(), unique_name, 1)
    aggregator = agg.RecordAggregator()
    for i in range(3):
        aggregator.add_user_record(f"user-{i}", f"event-{i}".encode())
    pk, _ehk, blob = aggregator.clear_and_get().get_contents()
    broken = bytes(blob[:-1]) + bytes([blob[-1] ^ 0xFF])  # last byte of the MD5 trailer flipped
    seq = clients.kinesis().put_record(StreamName=unique_name, Data=broken, PartitionKey=pk)["SequenceNumber"]
    store = LeaseStore(clients.dynamodb(), unique_name)
    store.ensure_table()
    shard_id = clients.kinesis().list_shards(StreamName=unique_name)["Shards"][0]["ShardId"]
    store.create_if_absent(Lease(shard_id))
    lease = store.get(shard_id)
    assert lease is not None and store.take(lease, "me")
    seen = consume(clients, store, unique_name, LeaseHandle(store.get(shard_id)), expect=1)  # type: ignore[arg-type]
    assert seen.seen == [(seq, 0, broken)]
