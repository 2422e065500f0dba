"""Split and merge on kinesis-mock (moto never ends a split parent): parents first, always."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import boto3
import pytest
from botocore.config import Config

from pipeline.consumer.lease_store import LeaseStore
from pipeline.consumer.processor import (
    InitializeInput,
    LeaseLostInput,
    ProcessRecordsInput,
    ShardEndedInput,
    ShutdownRequestedInput,
)
from pipeline.consumer.sequence import SHARD_END
from pipeline.consumer.worker import Worker, WorkerConfig
from pipeline.core.clients import ClientFactory


class Log:
    """Shared across the worker's processors: what each shard delivered, and when it ended."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[tuple[str, str, bytes]] = []  # (kind, shard, data)

    def add(self, kind: str, shard: str, data: bytes = b"") -> None:
        with self.lock:
            self.events.append((kind, shard, data))


class Processor:
    def __init__(self, log: Log) -> None:
        self.log = log
        self.shard = "?"

    def initialize(self, initialize_input: InitializeInput) -> None:
        self.shard = initialize_input.shard_id

    def process_records(self, process_records_input: ProcessRecordsInput) -> None:
        for r in process_records_input.records:
            self.log.add("record", self.shard, r.binary_data)
        if process_records_input.records:
            process_records_input.checkpointer.checkpoint()

    def lease_lost(self, lease_lost_input: LeaseLostInput) -> None:
        pass

    def shard_ended(self, shard_ended_input: ShardEndedInput) -> None:
        shard_ended_input.checkpointer.checkpoint()
        self.log.add("end", self.shard)

    def shutdown_requested(self, shutdown_requested_input: ShutdownRequestedInput) -> None:
        pass


@pytest.fixture
def mock_kinesis(kinesis_mock_endpoint: str) -> object:
    return boto3.client(
        "kinesis", endpoint_url=kinesis_mock_endpoint, region_name="us-east-1",
        config=Config(retries={"max_attempts": 5, "mode": "standard"}, read_timeout=30),
    )  # fmt: skip


@pytest.fixture
def running(clients: ClientFactory, mock_kinesis: object, unique_name: str) -> Iterator[tuple[Worker, Log]]:
    log = Log()
    worker = Worker(
        WorkerConfig(application=unique_name, stream=unique_name, worker_id="w1", failover_s=3.0,
                     idle_between_reads_s=0.2, parent_poll_s=0.3, release_scan_s=0.5, shard_sync_s=2.0),
        store=LeaseStore(clients.dynamodb(), unique_name),
        kinesis=mock_kinesis,  # type: ignore[arg-type]
        processor_factory=lambda: Processor(log),
    )  # fmt: skip
    yield worker, log
    worker.request_shutdown()


def wait(what: str, check: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out: {what}")


def put(kinesis: object, stream: str, tag: str, n: int) -> set[bytes]:
    data = {f"{tag}-{i}".encode() for i in range(n)}
    for i, d in enumerate(sorted(data)):
        kinesis.put_record(StreamName=stream, Data=d, PartitionKey=f"k{i}")  # type: ignore[attr-defined]
    return data


def active(kinesis: object, stream: str) -> None:
    wait("stream ACTIVE", lambda: kinesis.describe_stream_summary(StreamName=stream)  # type: ignore[attr-defined]
         ["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE")  # fmt: skip


def test_split_children_wait_for_parent_shard_end(
    running: tuple[Worker, Log], mock_kinesis: object, clients: ClientFactory, unique_name: str
) -> None:
    worker, log = running
    k = mock_kinesis
    k.create_stream(StreamName=unique_name, ShardCount=1)  # type: ignore[attr-defined]
    active(k, unique_name)
    before = put(k, unique_name, "before", 30)
    parent = k.list_shards(StreamName=unique_name)["Shards"][0]["ShardId"]  # type: ignore[attr-defined]
    k.split_shard(StreamName=unique_name, ShardToSplit=parent,  # type: ignore[attr-defined]
                  NewStartingHashKey=str(2**127))  # fmt: skip
    active(k, unique_name)
    after = put(k, unique_name, "after", 30)
    threading.Thread(target=worker.run, daemon=True).start()
    wait("every record", lambda: {e[2] for e in log.events if e[0] == "record"} >= before | after)
    events = list(log.events)
    end_at = events.index(("end", parent, b""))
    parent_records = [i for i, e in enumerate(events) if e[0] == "record" and e[1] == parent]
    child_records = [i for i, e in enumerate(events) if e[0] == "record" and e[1] != parent]
    assert {events[i][2] for i in parent_records} == before
    assert {events[i][2] for i in child_records} == after
    assert max(parent_records) < end_at < min(child_records)  # children only after SHARD_END
    store = LeaseStore(clients.dynamodb(), unique_name)
    by_key = {lease.lease_key: lease for lease in store.list_leases()}
    children = {key for key in by_key if key != parent}
    assert len(children) == 2
    for child in children:
        assert by_key[child].parent_shard_ids == {parent}
    if parent in by_key:  # deleted once both children progressed
        assert by_key[parent].checkpoint.sequence_number == SHARD_END
        assert by_key[parent].child_shard_ids == children


def test_merge_child_waits_for_both_parents(
    running: tuple[Worker, Log], mock_kinesis: object, unique_name: str
) -> None:
    worker, log = running
    k = mock_kinesis
    k.create_stream(StreamName=unique_name, ShardCount=2)  # type: ignore[attr-defined]
    active(k, unique_name)
    before = put(k, unique_name, "before", 40)
    a, b = (s["ShardId"] for s in k.list_shards(StreamName=unique_name)["Shards"])  # type: ignore[attr-defined]
    k.merge_shards(StreamName=unique_name, ShardToMerge=a, AdjacentShardToMerge=b)  # type: ignore[attr-defined]
    active(k, unique_name)
    after = put(k, unique_name, "after", 20)
    threading.Thread(target=worker.run, daemon=True).start()
    wait("every record", lambda: {e[2] for e in log.events if e[0] == "record"} >= before | after)
    events = list(log.events)
    ends = [events.index(("end", a, b"")), events.index(("end", b, b""))]
    child_records = [i for i, e in enumerate(events) if e[0] == "record" and e[1] not in {a, b}]
    assert {events[i][2] for i in child_records} == after
    assert max(ends) < min(child_records)
