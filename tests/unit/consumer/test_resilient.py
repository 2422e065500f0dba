"""The runtime never skips: failing records are redelivered, isolated and dead-lettered."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from support.checkpoints import Checkpoints
from support.records import deliver, records_of

from pipeline.consumer.checkpointing import ShardFailed
from pipeline.consumer.processor import (
    InitializeInput,
    LeaseLostInput,
    ProcessRecordsInput,
    Record,
    ShardEndedInput,
    ShutdownRequestedInput,
)
from pipeline.consumer.resilient import RecoveryPolicy, ResilientProcessor, is_outage
from pipeline.core.errors import RetriesExhausted
from pipeline.core.retry import Backoff

FAST = RecoveryPolicy(backoff=Backoff(base=0.0, cap=0.0, max_attempts=4), isolate_after=2)


@dataclass
class World:
    """What every processor the factory made did, and how the dependency behaves."""

    processed: list[str] = field(default_factory=list)  # data of records written (at checkpoint)
    outage: int = 0  # deliveries that still fail as a dependency outage would
    outage_hits_single_records: bool = False  # a one-record delivery fails during the outage too
    made: int = 0
    dead: list[tuple[str, str]] = field(default_factory=list)


class Flaky:
    """Buffers records, 'writes' them at each checkpoint; raises on b"boom" and during outages."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.buffer: list[Record] = []
        world.made += 1

    def initialize(self, initialize_input: InitializeInput) -> None:
        pass

    def process_records(self, process_records_input: ProcessRecordsInput) -> None:
        for record in process_records_input.records:
            if record.binary_data == b"boom":
                raise RecursionError("maximum recursion depth exceeded")
            self.buffer.append(record)
        if self.world.outage and (len(self.buffer) > 1 or self.world.outage_hits_single_records):
            self.world.outage -= 1
            raise ConnectionError("redis: connection refused")
        if self.buffer:
            last = self.buffer[-1]
            process_records_input.checkpointer.checkpoint(last.sequence_number, last.sub_sequence_number)
            self.world.processed.extend(r.binary_data.decode() for r in self.buffer)
            self.buffer.clear()

    def lease_lost(self, lease_lost_input: LeaseLostInput) -> None:
        self.buffer.clear()

    def shard_ended(self, shard_ended_input: ShardEndedInput) -> None:
        shard_ended_input.checkpointer.checkpoint()

    def shutdown_requested(self, shutdown_requested_input: ShutdownRequestedInput) -> None:
        shutdown_requested_input.checkpointer.checkpoint()


def wrapped(world: World, **kw: object) -> ResilientProcessor:
    def sink(shard: str, record: Record, reason: str, detail: str) -> None:
        assert reason == "processor_error"
        world.dead.append((record.sequence_number, detail.split(":")[0]))

    proc = ResilientProcessor(lambda: Flaky(world), sink, policy=FAST, **kw)  # type: ignore[arg-type]
    proc.initialize(InitializeInput("shardId-000000000001", "TRIM_HORIZON", 0))
    return proc


def test_a_record_that_fails_alone_is_dead_lettered_and_the_rest_land_once() -> None:
    world, ckpt = World(), Checkpoints()
    datas = [b"boom" if i in (3, 7) else f"ok{i}".encode() for i in range(10)]
    deliver(wrapped(world), records_of(datas), ckpt, chunk=4)
    assert world.dead == [("103", "RecursionError"), ("107", "RecursionError")]
    # At least once (a probe may write, as a crash mid-flush may; downstream dedupe makes it once).
    assert set(world.processed) == {f"ok{i}" for i in range(10) if i not in (3, 7)}
    assert ckpt.last == ("109", 0)


def test_an_outage_heals_without_dead_letters_or_losses() -> None:
    world, ckpt = World(outage=5), Checkpoints()
    failures: list[str | None] = []
    proc = wrapped(world, on_failure=lambda _s, reason: failures.append(reason))
    deliver(proc, records_of([f"ok{i}".encode() for i in range(6)]), ckpt, chunk=3)
    assert world.dead == [] and set(world.processed) == {f"ok{i}" for i in range(6)}
    assert failures[0] == "ConnectionError: redis: connection refused" and failures[-1] is None
    assert proc.failures == 0 and ckpt.last == ("105", 0)


def test_the_checkpoint_never_passes_what_was_not_written() -> None:
    world, ckpt = World(outage=10**6), Checkpoints()
    stop = {"now": False}
    waits: list[float] = []

    def wait(seconds: float) -> None:
        waits.append(seconds)
        stop["now"] = len(waits) >= 5

    proc = wrapped(world, stopping=lambda: stop["now"], wait=wait)
    with pytest.raises(ShardFailed, match="stopped while recovering from ConnectionError"):
        deliver(proc, records_of([b"a", b"b", b"c"]), ckpt)
    proc.shutdown_requested(ShutdownRequestedInput(ckpt))  # kept records: no "all delivered" checkpoint
    assert ckpt.calls == [] and world.dead == []  # nothing saved, nothing dropped: all replayed later


def test_a_dead_letter_that_fails_keeps_the_record() -> None:
    world, ckpt = World(), Checkpoints()
    tries = {"n": 0}

    def sink(shard: str, record: Record, reason: str, detail: str) -> None:
        tries["n"] += 1
        if tries["n"] < 3:
            raise OSError("s3 unreachable")
        world.dead.append((record.sequence_number, detail.split(":")[0]))

    proc = ResilientProcessor(lambda: Flaky(world), sink, policy=FAST)
    proc.initialize(InitializeInput("shardId-000000000001", "TRIM_HORIZON", 0))
    deliver(proc, records_of([b"ok0", b"boom", b"ok2"]), ckpt)
    assert world.dead == [("101", "RecursionError")] and set(world.processed) == {"ok0", "ok2"}


def test_isolation_bisects_instead_of_probing_every_record() -> None:
    world, ckpt = World(), Checkpoints()
    datas = [b"boom" if i == 500 else f"ok{i}".encode() for i in range(1000)]
    deliver(wrapped(world), records_of(datas), ckpt, chunk=1000)
    assert world.dead == [("600", "RecursionError")]
    assert set(world.processed) == {f"ok{i}" for i in range(1000) if i != 500}
    # One processor per delivery and restart, plus ~2·log2(1000) probes — not 1000.
    assert world.made < 40


def test_a_dead_lettered_record_at_the_tail_is_checkpointed_past() -> None:
    world, ckpt = World(), Checkpoints()
    deliver(wrapped(world), records_of([b"ok0", b"ok1", b"boom"]), ckpt)
    assert world.dead == [("102", "RecursionError")] and ckpt.last == ("102", 0)


def test_an_outage_never_dead_letters_records_even_when_probes_fail_too() -> None:
    # Every delivery and every probe fails as it would while Redis is down: only the outage rule
    # keeps bisection from dead-lettering each record.
    world, ckpt = World(outage=40, outage_hits_single_records=True), Checkpoints()
    deliver(wrapped(world), records_of([f"ok{i}".encode() for i in range(8)]), ckpt, chunk=8)
    assert world.dead == [] and set(world.processed) == {f"ok{i}" for i in range(8)}
    assert ckpt.last == ("107", 0)


@pytest.mark.parametrize(
    ("exc", "outage"),
    [
        (ConnectionError("refused"), True),
        (TimeoutError(), True),
        (RetriesExhausted("flush", 4, OSError("x")), True),
        (RecursionError(), False),
        (ValueError("bad decimal"), False),
    ],
)
def test_outage_classification_follows_the_cause_chain(exc: BaseException, outage: bool) -> None:
    try:
        try:
            raise exc
        except BaseException as inner:
            raise ShardFailed("flush failed") from inner
    except ShardFailed as wrapped_exc:
        assert is_outage(wrapped_exc) is outage
