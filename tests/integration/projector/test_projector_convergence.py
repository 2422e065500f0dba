"""Read models converge, on a real redis-server: applying events twice, out of order within the
window, or across a processor killed mid-stream and restarted from its last checkpoint, leaves
exactly the read models of a straightforward fold of the distinct events."""

from __future__ import annotations

import random

import pytest
from projector_harness import (
    SHARD,
    Checkpoints,
    Env,
    after,
    chunks,
    deliver,
    events_of,
    expected,
    make_env,
    records_of,
    shuffled_within,
    synthetic,
)

from pipeline.consumer.processor import LeaseLostInput, ProcessRecordsInput
from pipeline.core.settings import Settings
from workers.projector import fold

pytestmark = pytest.mark.integration


class Kill(BaseException):
    """kill -9 stand-in: not an Exception, so nothing in the processor catches it."""


@pytest.fixture
def env(settings: Settings, unique_name: str) -> Env:
    return make_env(settings, unique_name)


def assert_models(env: Env, items) -> None:  # type: ignore[no-untyped-def]
    want = expected(items)
    got = env.snapshot()
    assert got == want, "\n".join(got.diff(want))


def test_duplicates_and_a_shuffled_replay_converge(env: Env) -> None:
    items = synthetic(4000, duplicate_ratio=0.05, invalid_ratio=0.01)
    records = records_of(items)
    proc = env.processor()
    ckpt = Checkpoints()
    deliver(proc, chunks(records, [500, 137, 900]), ckpt)
    assert_models(env, items)
    applied_once = proc.stats.applied
    assert applied_once == len({ev.event_id for ev in events_of(items)})  # producer retries gated
    assert sum(proc.stats.invalid.values()) == sum(not s.valid for s in items)

    # the same events again, out of order within windows of 300, cut differently
    again = shuffled_within(records, 300, seed=5, first_seq=2 * 10**20)
    deliver(proc, chunks(again, [333, 71]), ckpt)
    assert_models(env, items)
    assert proc.stats.applied == applied_once
    assert ckpt.last_sequence == again[-1].sequence_number


def test_fully_out_of_order_delivery_converges(env: Env) -> None:
    items = synthetic(3000, duplicate_ratio=0.02, invalid_ratio=0.0)
    records = shuffled_within(records_of(items), len(items), seed=9, first_seq=10**20)
    deliver(env.processor(), chunks(records, [250]), Checkpoints())
    assert_models(env, items)


def test_processor_killed_after_apply_before_checkpoint_replays_to_the_same_models(env: Env) -> None:
    items = synthetic(3000, duplicate_ratio=0.03, invalid_ratio=0.01)
    records = records_of(items)
    batches = list(chunks(records, [400]))

    class DiesAtCheckpoint(Checkpoints):
        def checkpoint(
            self, sequence_number: str | None = None, sub_sequence_number: int | None = None
        ) -> None:
            if len(self.calls) == 3:
                raise Kill
            super().checkpoint(sequence_number, sub_sequence_number)

    ckpt = DiesAtCheckpoint()
    proc = env.processor()
    with pytest.raises(Kill):
        deliver(proc, iter(batches), ckpt)
    assert len(ckpt.calls) == 3  # batch 4 was applied, its checkpoint never happened

    restarted = env.processor(context=env.context())  # a new process: fresh context, same Redis
    ckpt2 = Checkpoints(list(ckpt.calls))
    deliver(restarted, chunks(after(records, ckpt.last), [400]), ckpt2)
    assert_models(env, items)
    assert restarted.stats.duplicates >= 400  # the replayed batch was recognised


def test_processor_killed_between_chunks_of_a_batch_replays_to_the_same_models(env: Env) -> None:
    items = synthetic(2000, duplicate_ratio=0.0, invalid_ratio=0.0)
    records = records_of(items)
    ctx = env.context(chunk_events=150)
    real_apply = ctx.store.apply
    calls = {"n": 0}

    def dies_on_the_fifth_message(messages):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 5:
            raise Kill
        return real_apply(messages)

    ctx.store.apply = dies_on_the_fifth_message  # type: ignore[method-assign]
    proc = env.processor(context=ctx)
    ckpt = Checkpoints()
    with pytest.raises(Kill):
        deliver(proc, chunks(records, [500]), ckpt)
    partial = env.snapshot()
    assert 0 < partial.summary()["events_counted"] < len(records)

    deliver(env.processor(context=env.context()), chunks(after(records, ckpt.last), [500]), Checkpoints())
    assert_models(env, items)


def test_after_lease_loss_nothing_more_is_written(env: Env) -> None:
    items = synthetic(1200, duplicate_ratio=0.0, invalid_ratio=0.0)
    records = records_of(items)
    proc = env.processor()
    ckpt = Checkpoints()
    deliver(proc, chunks(records[:600], [300]), ckpt)
    proc.lease_lost(LeaseLostInput())
    proc.process_records(ProcessRecordsInput(records[600:], 0, ckpt))
    assert env.snapshot() == fold(events_of(records[:600]))
    assert env.store.status().positions == {SHARD: records[599].sequence_number}
    assert ckpt.last_sequence == records[599].sequence_number


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_lua_path_equals_reference_fold_for_other_loads(
    settings: Settings, unique_name: str, seed: int
) -> None:
    env = make_env(settings, f"{unique_name}s{seed}")
    rng = random.Random(seed)
    items = synthetic(1500, seed=seed, customers=1 + seed * 3, step_ms=rng.choice([1, 200, 5000]))
    records = records_of(items)
    twice = shuffled_within(records + rng.sample(records, 500), 2000, seed=seed, first_seq=10**20)
    deliver(env.processor(), chunks(twice, [rng.randint(50, 700) for _ in range(8)]), Checkpoints())
    assert_models(env, items)
