"""A real :class:`Worker` (in this process, moto underneath) losing leases in the ways KCL does.

In-process so the test can hold a processor at an exact point (a "pause" between delivery and
checkpoint) — the moment a zombie's late checkpoint would do harm.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from pipeline.app.provision import ensure_stream
from pipeline.consumer.lease_store import LeaseStore
from pipeline.consumer.leases import Lease
from pipeline.consumer.processor import (
    Checkpointer,
    CheckpointError,
    InitializeInput,
    LeaseLostInput,
    ProcessRecordsInput,
    ShardEndedInput,
    ShutdownRequestedInput,
)
from pipeline.consumer.worker import Worker, WorkerConfig
from pipeline.core.clients import ClientFactory

FAILOVER = 2.0


@dataclass
class Shared:
    """What every processor of one worker saw; ``gate`` (when set) holds process_records."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    events: list[tuple[str, str]] = field(default_factory=list)
    records: list[tuple[str, str, bytes]] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    gate: threading.Event | None = None
    paused: threading.Event = field(default_factory=threading.Event)
    checkpointers: dict[str, Checkpointer] = field(default_factory=dict)


class Probe:
    def __init__(self, shared: Shared) -> None:
        self.s = shared
        self.shard = "?"

    def initialize(self, initialize_input: InitializeInput) -> None:
        self.shard = initialize_input.shard_id
        with self.s.lock:
            self.s.events.append(("initialize", self.shard))

    def process_records(self, process_records_input: ProcessRecordsInput) -> None:
        records = process_records_input.records
        if not records:
            return
        with self.s.lock:
            self.s.records += [(self.shard, r.sequence_number, r.binary_data) for r in records]
            self.s.checkpointers[self.shard] = process_records_input.checkpointer
        if self.s.gate is not None:
            self.s.paused.set()
            self.s.gate.wait(60)
        try:
            process_records_input.checkpointer.checkpoint()
        except CheckpointError as exc:
            with self.s.lock:
                self.s.refusals.append(exc.value)

    def lease_lost(self, lease_lost_input: LeaseLostInput) -> None:
        with self.s.lock:
            self.s.events.append(("lease_lost", self.shard))

    def shard_ended(self, shard_ended_input: ShardEndedInput) -> None:
        shard_ended_input.checkpointer.checkpoint()

    def shutdown_requested(self, shutdown_requested_input: ShutdownRequestedInput) -> None:
        shutdown_requested_input.checkpointer.checkpoint()


@dataclass
class Running:
    worker: Worker
    shared: Shared
    store: LeaseStore
    stream: str
    thread: threading.Thread


@pytest.fixture
def one_shard_worker(clients: ClientFactory, unique_name: str) -> Iterator[Running]:
    ensure_stream(clients.kinesis(), unique_name, 1)
    shared = Shared()
    store = LeaseStore(clients.dynamodb(), unique_name)
    store.ensure_table()
    worker = Worker(
        WorkerConfig(application=unique_name, stream=unique_name, worker_id="w1", failover_s=FAILOVER,
                     idle_between_reads_s=0.1, release_scan_s=0.3, shard_sync_s=60.0),
        store=store, kinesis=clients.kinesis(), processor_factory=lambda: Probe(shared),
    )  # fmt: skip
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    running = Running(worker, shared, store, unique_name, thread)
    try:
        yield running
    finally:
        if shared.gate is not None:
            shared.gate.set()
        worker.request_shutdown()
        thread.join(30)


def wait(what: str, check: Callable[[], bool], timeout: float = 30.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if check():
                return time.monotonic() - start
        except ValueError:  # no lease yet
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def only_lease(store: LeaseStore) -> Lease:
    (lease,) = store.list_leases()
    return lease


def put(clients: ClientFactory, stream: str, *payloads: bytes) -> None:
    for p in payloads:
        clients.kinesis().put_record(StreamName=stream, Data=p, PartitionKey="k")


def release(shared: Shared) -> None:
    gate, shared.gate = shared.gate, None
    assert gate is not None
    gate.set()


def test_outside_counter_bump_loses_the_lease_then_the_worker_takes_it_back(
    one_shard_worker: Running, clients: ClientFactory
) -> None:
    r = one_shard_worker
    wait("w1 holds the lease", lambda: only_lease(r.store).lease_owner == "w1")
    shard = only_lease(r.store).lease_key
    r.shared.gate = threading.Event()
    put(clients, r.stream, b"one")
    wait("processor holding the batch", r.shared.paused.is_set)

    # Someone else moves the counter (owner unchanged) by two: w1's next renewal's condition
    # fails. (By one it would look like w1's own write whose reply was lost — the spurious
    # failure KCL's renewer, and ours, forgive: owner = me and counter = mine + 1.)
    for _ in range(2):
        assert r.store.renew(only_lease(r.store), "someone-else")
    wait("renewer noticed", lambda: r.worker.handles[shard].lost.is_set(), timeout=5)
    counter = only_lease(r.store).lease_counter
    release(r.shared)  # the processor checkpoints its batch now
    wait("refused", lambda: r.shared.refusals == ["ShutdownException"], timeout=5)
    wait("lease_lost delivered", lambda: ("lease_lost", shard) in r.shared.events, timeout=5)
    assert only_lease(r.store).lease_counter == counter  # nothing written
    assert only_lease(r.store).checkpoint.is_sentinel

    # The lease still names w1 but nobody renews it: after failover it is expired, and w1's
    # taker takes it back, resuming from the checkpoint (so "one" comes again: at least once).
    wait(
        "re-initialized", lambda: r.shared.events.count(("initialize", shard)) == 2, timeout=4 * FAILOVER + 5
    )
    put(clients, r.stream, b"two")
    wait("second record", lambda: [d for _, _, d in r.shared.records] == [b"one", b"one", b"two"])
    wait("checkpointed", lambda: not only_lease(r.store).checkpoint.is_sentinel)
    assert only_lease(r.store).owner_switches == 0  # same owner: no switch counted


def test_zombie_that_believes_it_holds_the_lease_cannot_checkpoint_after_a_takeover(
    one_shard_worker: Running, clients: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = one_shard_worker
    wait("w1 holds the lease", lambda: only_lease(r.store).lease_owner == "w1")
    put(clients, r.stream, b"first")
    wait("first checkpointed", lambda: not only_lease(r.store).checkpoint.is_sentinel)
    stored = only_lease(r.store).checkpoint

    # w1 freezes (as under SIGSTOP): its renewer stops, its processor holds a batch ...
    monkeypatch.setattr(r.worker, "_renew", lambda: None)
    r.shared.gate = threading.Event()
    put(clients, r.stream, b"second")
    wait("processor paused mid-batch", r.shared.paused.is_set)
    # ... and w2 takes the lease. w1 has not noticed: locally the lease still looks held.
    assert r.store.take(only_lease(r.store), "w2")
    shard = only_lease(r.store).lease_key
    assert not r.worker.handles[shard].lost.is_set()

    release(r.shared)  # the zombie wakes and checkpoints "second": the conditional write fails
    wait("refused", lambda: r.shared.refusals == ["ShutdownException"], timeout=10)
    after = only_lease(r.store)
    assert after.lease_owner == "w2"
    assert after.checkpoint == stored  # unchanged by the zombie
    wait("lease_lost delivered", lambda: ("lease_lost", shard) in r.shared.events, timeout=5)
