"""Runtime rules without servers: own expired leases come back, local expiry, the consumer loop's
reaction to expired iterators and throttling (a scripted Kinesis stand-in), the registry."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import pytest
from botocore.exceptions import ClientError

from pipeline.app.processors import register_processor, resolve_processor
from pipeline.consumer.handle import LeaseHandle, ShardCheckpointer
from pipeline.consumer.leases import ExpiryTracker, Lease, plan_take
from pipeline.consumer.processor import (
    CheckpointError,
    InitializeInput,
    LeaseLostInput,
    ProcessRecordsInput,
    ShardEndedInput,
    ShutdownRequestedInput,
)
from pipeline.consumer.sequence import TRIM_HORIZON
from pipeline.consumer.sequence import ExtendedSequenceNumber as E
from pipeline.consumer.shard_consumer import ConsumerConfig, ShardConsumer
from pipeline.core.errors import ConfigError

FAILOVER = 10.0


def lease(key: str, owner: str | None, counter: int = 1) -> Lease:
    return Lease(key, counter, owner, E(TRIM_HORIZON))


# -- taker: what this worker holds, not what the table says -------------------------------------


def test_an_expired_lease_naming_me_that_i_do_not_hold_is_taken_back() -> None:
    leases = [lease("s0", "me", counter=7)]
    tracker = ExpiryTracker(FAILOVER)
    tracker.observe(leases, 100.0)
    assert plan_take(leases, "me", tracker, 105.0, held=set()).take == ()  # not expired yet
    tracker.observe(leases, 111.0)
    assert [x.lease_key for x in plan_take(leases, "me", tracker, 111.0, held=set()).take] == ["s0"]


def test_held_leases_count_as_mine_and_are_never_retaken() -> None:
    leases = [lease("s0", "me"), lease("s1", None), lease("s2", None)]
    tracker = ExpiryTracker(FAILOVER)
    tracker.observe(leases, 100.0)
    plan = plan_take(leases, "me", tracker, 100.0, held={"s0"}, max_leases_for_worker=2)
    assert len(plan.take) == 1 and plan.take[0].lease_key in {"s1", "s2"}  # cap 2, one held


def test_default_held_is_my_unexpired_leases() -> None:
    leases = [lease(f"s{i}", "me") for i in range(3)] + [lease("s3", "other")]
    tracker = ExpiryTracker(FAILOVER)
    tracker.observe(leases, 100.0)
    assert plan_take(leases, "me", tracker, 101.0) == plan_take(
        leases, "me", tracker, 101.0, held={"s0", "s1", "s2"}
    )


# -- local expiry --------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Store:
    """In-memory stand-in for the lease table's checkpoint write (counts the writes)."""

    def __init__(self) -> None:
        self.writes: list[E] = []

    def checkpoint(self, lease: Lease, value: E) -> bool:
        self.writes.append(value)
        return True

    def get(self, key: str) -> Lease | None:
        return None


def test_a_lease_not_renewed_for_failover_is_expired_locally_and_refuses_checkpoints() -> None:
    clock = Clock()
    store = Store()
    handle = LeaseHandle(lease("s0", "me"), renewed_at=clock.now, failover_s=FAILOVER, clock=clock)
    cp = ShardCheckpointer(store, handle, handle.token)  # type: ignore[arg-type]
    cp.accepting, cp.largest_delivered = True, E("10")
    clock.now += 9.0
    cp.checkpoint("5")
    assert store.writes == [E("5")] and handle.renewed_at == 1009.0  # a checkpoint renews
    clock.now += FAILOVER + 0.1  # e.g. the process was paused
    with pytest.raises(CheckpointError) as refused:
        cp.checkpoint("10")
    assert refused.value.value == "ShutdownException"
    assert store.writes == [E("5")]  # nothing written
    assert handle.lost.is_set() and not handle.usable()


# -- the consumer loop against a scripted Kinesis -------------------------------------------------


def error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}}, "GetRecords")


def rec(seq: str) -> dict[str, Any]:
    return {"Data": seq.encode(), "PartitionKey": "k", "SequenceNumber": seq}


class ScriptedKinesis:
    """Answers GetRecords from a script: a dict is a page, an exception is raised."""

    def __init__(self, script: list[Any]) -> None:
        self.script = script
        self.iterators: list[dict[str, Any]] = []

    def get_shard_iterator(self, **kwargs: Any) -> dict[str, Any]:
        self.iterators.append(kwargs)
        return {"ShardIterator": f"it-{len(self.iterators)}"}

    def get_records(self, **kwargs: Any) -> dict[str, Any]:
        if not self.script:
            return {"Records": [], "NextShardIterator": "idle", "MillisBehindLatest": 0}
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return {"NextShardIterator": "next", "MillisBehindLatest": 5, **step}


class Seen:
    def __init__(self) -> None:
        self.records: list[str] = []
        self.lost = threading.Event()

    def initialize(self, initialize_input: InitializeInput) -> None:
        pass

    def process_records(self, process_records_input: ProcessRecordsInput) -> None:
        self.records += [r.sequence_number for r in process_records_input.records]

    def lease_lost(self, lease_lost_input: LeaseLostInput) -> None:
        self.lost.set()

    def shard_ended(self, shard_ended_input: ShardEndedInput) -> None:
        pass

    def shutdown_requested(self, shutdown_requested_input: ShutdownRequestedInput) -> None:
        pass


def run_consumer(
    script: list[Any], *, until: int, handle: LeaseHandle | None = None
) -> tuple[Seen, ScriptedKinesis]:
    kinesis = ScriptedKinesis(script)
    seen = Seen()
    consumer = ShardConsumer(
        kinesis=kinesis,  # type: ignore[arg-type]
        store=Store(),  # type: ignore[arg-type]
        handle=handle or LeaseHandle(lease("s0", "me")),
        processor=seen,
        config=ConsumerConfig(stream="s", idle_between_reads_s=0.01, busy_interval_s=0.0),
    )
    consumer.start()
    deadline = time.monotonic() + 10
    while len(seen.records) < until and time.monotonic() < deadline and not consumer.finished.is_set():
        time.sleep(0.01)
    consumer.shutdown_requested.set()
    consumer.join(5)
    return seen, kinesis


def test_expired_iterator_is_refreshed_at_the_last_delivered_record_without_repeating_it() -> None:
    script = [
        {"Records": [rec("1"), rec("2")]},
        error("ExpiredIteratorException"),
        {"Records": [rec("2"), rec("3")]},  # AT_SEQUENCE_NUMBER 2 returns 2 again
    ]
    seen, kinesis = run_consumer(script, until=3)
    assert seen.records == ["1", "2", "3"]
    assert kinesis.iterators[-1]["ShardIteratorType"] == "AT_SEQUENCE_NUMBER"
    assert kinesis.iterators[-1]["StartingSequenceNumber"] == "2"


def test_throttling_backs_off_and_carries_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(random, "uniform", lambda a, b: 0.01)
    script = [
        error("ProvisionedThroughputExceededException"),
        error("ProvisionedThroughputExceededException"),
        {"Records": [rec("1")]},
    ]
    seen, _ = run_consumer(script, until=1)
    assert seen.records == ["1"]


def test_a_batch_is_not_delivered_once_the_lease_expired_locally() -> None:
    clock = Clock()
    handle = LeaseHandle(lease("s0", "me"), renewed_at=clock.now, failover_s=FAILOVER, clock=clock)

    class Pausing(ScriptedKinesis):
        def get_records(self, **kwargs: Any) -> dict[str, Any]:
            clock.now += FAILOVER + 1  # the process froze inside this call
            return super().get_records(**kwargs)

    kinesis = Pausing([{"Records": [rec("1")]}])
    seen = Seen()
    consumer = ShardConsumer(
        kinesis=kinesis,  # type: ignore[arg-type]
        store=Store(),  # type: ignore[arg-type]
        handle=handle,
        processor=seen,
        config=ConsumerConfig(stream="s", idle_between_reads_s=0.01),
    )
    consumer.start()
    consumer.join(5)
    assert seen.records == [] and seen.lost.is_set()


# -- registry ---------------------------------------------------------------------------------------


def test_registry_resolves_names_and_import_paths() -> None:
    from pipeline.consumer.diagnostic import create_noop

    assert resolve_processor("noop") is create_noop
    assert resolve_processor("pipeline.consumer.diagnostic:create_noop") is create_noop
    register_processor("custom-noop", create_noop)
    assert resolve_processor("custom-noop") is create_noop
    with pytest.raises(ConfigError, match="unknown processor 'nope'"):
        resolve_processor("nope")
    with pytest.raises(ConfigError, match="cannot import"):
        resolve_processor("no.such.module:f")


def test_merge_child_is_created_only_when_both_or_neither_parent_lease_exists() -> None:
    from pipeline.consumer.leases import may_create_child

    both = frozenset({"a", "b"})
    assert may_create_child(both, {"a", "b"})
    assert may_create_child(both, set())
    assert not may_create_child(both, {"a"})
    assert may_create_child(frozenset({"p"}), {"p"})  # a split child: its one parent


def test_a_batch_fetched_as_shutdown_arrives_is_neither_delivered_nor_checkpointed() -> None:
    """shutdown_requested's checkpoint() (no argument) writes the largest *delivered* record."""
    store = Store()
    holder: dict[str, ShardConsumer] = {}

    class StopsDuringSecondRead(ScriptedKinesis):
        def get_records(self, **kwargs: Any) -> dict[str, Any]:
            if len(self.script) == 1:
                holder["c"].shutdown_requested.set()  # SIGTERM lands while this read is in flight
            return super().get_records(**kwargs)

    class CheckpointsOnShutdown(Seen):
        def shutdown_requested(self, shutdown_requested_input: ShutdownRequestedInput) -> None:
            shutdown_requested_input.checkpointer.checkpoint()

    seen = CheckpointsOnShutdown()
    consumer = ShardConsumer(
        kinesis=StopsDuringSecondRead([{"Records": [rec("1")]}, {"Records": [rec("2")]}]),  # type: ignore[arg-type]
        store=store,  # type: ignore[arg-type]
        handle=LeaseHandle(lease("s0", "me")),
        processor=seen,
        config=ConsumerConfig(stream="s", idle_between_reads_s=0.01, busy_interval_s=0.0),
    )
    holder["c"] = consumer
    consumer.start()
    consumer.join(5)
    assert seen.records == ["1"]
    assert store.writes == [E("1")]  # not "2", which no processor ever saw
