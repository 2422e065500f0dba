"""The processor's ordering rules over an in-memory store: apply before checkpoint, never past
an unapplied batch, lease loss stops everything, Redis outages are ridden out."""

from __future__ import annotations

from dataclasses import replace as dc_replace

import pytest
from prometheus_client import CollectorRegistry
from support.projector_fakes import (
    REGISTRY,
    SHARD,
    Checkpoints,
    FakeStore,
    batches,
    context,
    deliver,
    processor,
    records_of,
    synthetic,
)

from pipeline.consumer.checkpointing import ShardFailed
from pipeline.consumer.processor import (
    InitializeInput,
    LeaseLostInput,
    ShardEndedInput,
    ShutdownRequestedInput,
)
from workers.idset.identity import identity
from workers.projector import ProjectorProcessor
from workers.projector.context import prom_metrics

RECORDS = records_of(synthetic(120, duplicate_ratio=0.0, invalid_ratio=0.0))
CHUNKS = list(batches(RECORDS, 40))


def last_seq(chunk: list) -> tuple[str, int]:  # type: ignore[type-arg]
    return (chunk[-1].sequence_number, 0)


def test_each_batch_is_applied_then_checkpointed() -> None:
    log: list[str] = []
    store = FakeStore(log)
    proc = processor(store)
    ckpt = Checkpoints(log=log)
    for chunk in CHUNKS:
        deliver(proc, chunk, ckpt)
    assert log == [
        entry for chunk in CHUNKS for entry in ("apply 1", f"checkpoint {chunk[-1].sequence_number}")
    ]
    assert len(store.applied_ids()) == 120
    assert proc.stats.applied == 120 and proc.stats.checkpoints == 3


def test_while_behind_the_newest_batch_may_still_be_in_flight() -> None:
    store = FakeStore()
    proc = processor(store)
    ckpt = Checkpoints()
    for chunk in CHUNKS:
        deliver(proc, chunk, ckpt, behind_ms=60_000)
    # every checkpoint is the end of a batch whose messages were applied
    assert ckpt.calls and all(call in [last_seq(c) for c in CHUNKS] for call in ckpt.calls)
    deliver(proc, [], ckpt)  # an empty delivery settles everything
    assert ckpt.calls[-1] == last_seq(CHUNKS[-1])
    assert len(store.applied_ids()) == 120


def test_redis_outage_keeps_batches_and_checkpoints_nothing_past_them() -> None:
    store = FakeStore()
    proc = processor(store)
    ckpt = Checkpoints()
    deliver(proc, CHUNKS[0], ckpt)
    store.down = True
    deliver(proc, CHUNKS[1], ckpt)
    deliver(proc, CHUNKS[2], ckpt)
    assert ckpt.calls == [last_seq(CHUNKS[0])]
    assert proc.stats.failed_applies >= 1
    store.down = False
    deliver(proc, [], ckpt)
    assert ckpt.calls == [last_seq(CHUNKS[0]), last_seq(CHUNKS[2])]
    events = [REGISTRY.decode(r.binary_data) for r in RECORDS]
    everything = {identity(e.customer_id, bytes.fromhex(e.event_id.replace("-", ""))) for e in events}
    assert set(store.applied_ids()) == everything  # nothing lost


def test_too_long_an_outage_fails_the_shard() -> None:
    store = FakeStore()
    proc = processor(store, max_pending=2)
    ckpt = Checkpoints()
    store.down = True
    deliver(proc, CHUNKS[0], ckpt)
    deliver(proc, CHUNKS[1], ckpt)
    with pytest.raises(ShardFailed, match="Redis unreachable"):
        deliver(proc, CHUNKS[2], ckpt)
    store.down = False
    with pytest.raises(ShardFailed):
        deliver(proc, CHUNKS[0], ckpt)
    assert ckpt.calls == []


def test_lease_lost_stops_applying_and_checkpointing() -> None:
    store = FakeStore()
    proc = processor(store)
    ckpt = Checkpoints()
    deliver(proc, CHUNKS[0], ckpt)
    proc.lease_lost(LeaseLostInput())
    deliver(proc, CHUNKS[1], ckpt)
    proc.shutdown_requested(ShutdownRequestedInput(ckpt))
    assert len(store.applied_ids()) == 40
    assert ckpt.calls == [last_seq(CHUNKS[0])]


def test_checkpoint_refused_for_lease_loss_stops_the_shard() -> None:
    store = FakeStore()
    proc = processor(store)
    ckpt = Checkpoints(fail=["ShutdownException"])
    deliver(proc, CHUNKS[0], ckpt)
    deliver(proc, CHUNKS[1], ckpt)
    assert ckpt.calls == []
    assert len(store.applied_ids()) == 40


def test_throttled_checkpoints_are_retried() -> None:
    proc = processor(FakeStore())
    ckpt = Checkpoints(fail=["ThrottlingException", "ThrottlingException"])
    deliver(proc, CHUNKS[0], ckpt)
    assert ckpt.calls == [last_seq(CHUNKS[0])]


def test_other_checkpoint_refusals_are_retried_with_the_next_batch() -> None:
    proc = processor(FakeStore())
    ckpt = Checkpoints(fail=["InvalidStateException"])
    deliver(proc, CHUNKS[0], ckpt)
    deliver(proc, CHUNKS[1], ckpt)
    assert ckpt.calls == [last_seq(CHUNKS[1])]


def test_shard_end_checkpoints_only_when_everything_is_applied() -> None:
    store = FakeStore()
    proc = processor(store)
    ckpt = Checkpoints()
    deliver(proc, CHUNKS[0], ckpt)
    store.down = True
    deliver(proc, CHUNKS[1], ckpt)
    with pytest.raises(ShardFailed, match="SHARD_END"):
        proc.shard_ended(ShardEndedInput(ckpt))
    assert (None, None) not in ckpt.calls

    healthy = processor(FakeStore())
    ckpt2 = Checkpoints()
    deliver(healthy, CHUNKS[0], ckpt2, behind_ms=5_000)
    healthy.shard_ended(ShardEndedInput(ckpt2))
    assert ckpt2.calls[-1] == (None, None)


def test_invalid_records_are_counted_and_skipped() -> None:
    items = synthetic(300, invalid_ratio=0.1, duplicate_ratio=0.0)
    store = FakeStore()
    proc = processor(store)
    deliver(proc, records_of(items), Checkpoints())
    assert sum(proc.stats.invalid.values()) == sum(not s.valid for s in items)
    assert len(store.applied_ids()) == sum(s.valid for s in items)
    assert proc.shard_id == SHARD


def test_the_age_of_each_applied_batch_is_observed_from_its_stream_arrival() -> None:

    registry = CollectorRegistry()
    ctx = context(FakeStore())
    ctx.prom = prom_metrics(registry)
    proc = ProjectorProcessor(ctx, clock=lambda: 1_000.0)
    proc.initialize(InitializeInput(SHARD, "TRIM_HORIZON", 0))
    arrived = [dc_replace(r, approximate_arrival_timestamp=996_000 + i * 10) for i, r in enumerate(CHUNKS[0])]
    deliver(proc, arrived, Checkpoints())
    age = registry.get_sample_value("shardhouse_projector_event_age_seconds_sum")
    count = registry.get_sample_value("shardhouse_projector_event_age_seconds_count")
    assert count == 1 and age == pytest.approx(1_000.0 - (996_000 + 996_390) / 2 / 1000)
    deliver(proc, CHUNKS[0], Checkpoints())  # all duplicates: nothing new applied, nothing observed
    assert registry.get_sample_value("shardhouse_projector_event_age_seconds_count") == 1
