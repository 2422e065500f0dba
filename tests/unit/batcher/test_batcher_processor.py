"""The processor's decisions over in-memory adapters: cuts, order, lease loss, failure, pressure.

The adapters here are in-memory implementations of the batcher's own interfaces; the same
scenarios against real S3/SQS/Redis live in tests/integration/batcher/.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.batcher_fakes import (
    SHARD,
    T0_MS,
    Checkpoints,
    deliver,
    deliver_in_chunks,
    event_bytes,
    harness,
    records_of,
)

from pipeline.consumer.checkpointing import ShardFailed
from pipeline.consumer.processor import (
    CheckpointError,
    LeaseLostInput,
    Record,
    ShardEndedInput,
    ShutdownRequestedInput,
)
from pipeline.core.errors import TerminalError, TransientError
from workers.batcher.commit import ANNOUNCED, MARKED, WRITTEN


class Kill(BaseException):
    """kill -9 stand-in: not an Exception, so nothing in the processor catches it."""


def _run(
    chunks: list[int], n: int = 23, flush_records: int = 5
) -> tuple[list[str], list[tuple[str | None, int | None]]]:
    h = harness(flush_records=flush_records)
    proc = h.processor()
    ckpt = Checkpoints()
    deliver_in_chunks(proc, records_of([event_bytes(i) for i in range(n)]), ckpt, chunks)
    return sorted(h.store.objects), ckpt.calls


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(1, 9), min_size=1, max_size=12))
def test_cuts_do_not_depend_on_delivery_chunks(chunks: list[int]) -> None:
    keys, calls = _run(chunks)
    assert (keys, calls) == _run([23])
    assert calls == [(str(100 + i), 0) for i in (4, 9, 14, 19)]


def test_age_cut_uses_arrival_timestamps() -> None:
    h = harness(flush_age_seconds=1.0)
    proc = h.processor()
    ckpt = Checkpoints()
    recs = records_of([event_bytes(i) for i in range(7)], step_ms=400)  # 0,400,...,2400 ms
    deliver(proc, recs[:3], ckpt)
    deliver(proc, recs[3:], ckpt)
    # 0..800 ms form a batch; 1200 ms is ≥ 1 s after its first record and starts the next one,
    # which 2400 ms closes in turn.
    assert ckpt.calls == [("102", 0), ("105", 0)]
    assert proc.buffer.records == 1


def test_idle_flush_when_caught_up() -> None:
    h = harness(flush_age_seconds=1.0)
    proc = h.processor()
    proc.clock_ms = lambda: T0_MS + 5_000
    ckpt = Checkpoints()
    deliver(proc, records_of([event_bytes(1)]), ckpt, behind_ms=3_000)
    assert ckpt.calls == []  # behind: the clock does not cut
    deliver(proc, [], ckpt, behind_ms=0)
    assert ckpt.calls == [("100", 0)]
    assert proc.metrics.flushes_by_reason == Counter({"idle": 1})


def test_checkpoint_trails_one_batch_while_behind() -> None:
    """Catching up, a batch is committed (checked, written, announced, marked) while the next one
    is decoded; its checkpoint comes right before the next flush, or at once when caught up, and
    the next batch is checked against Redis only after it was marked."""
    h = harness(flush_records=3)
    proc = h.processor()
    ckpt = Checkpoints()
    deliver(proc, records_of([event_bytes(i) for i in range(4)]), ckpt, behind_ms=60_000)
    assert ckpt.calls == []  # batch 1 sealed, its commit under way
    deliver(proc, records_of([event_bytes(i) for i in range(4, 6)], first_seq=104), ckpt, behind_ms=60_000)
    assert ckpt.calls == [("102", 0)] and h.dedupe.marks >= 1 and len(h.announcer.manifests) >= 1
    deliver(proc, [], ckpt, behind_ms=0)
    assert ckpt.calls == [("102", 0), ("105", 0)]
    assert h.dedupe.calls == ["check", "mark", "check", "mark"]
    assert len(h.announcer.manifests) == 2


def test_lease_lost_during_a_commit_stops_it_before_the_next_write() -> None:
    h = harness(flush_records=3)
    h.store.gate = threading.Event()
    proc = h.processor()
    ckpt = Checkpoints()
    deliver(proc, records_of([event_bytes(i) for i in range(4)]), ckpt, behind_ms=60_000)
    while h.dedupe.checks == 0:  # the commit thread reached its S3 writes
        time.sleep(0.001)
    proc.lease_lost(LeaseLostInput())
    h.store.gate.set()
    proc._committer.shutdown(wait=True)
    # The write in flight may land (write-once keys: harmless); nothing is announced or marked.
    assert h.announcer.manifests == [] and h.dedupe.marks == 0 and ckpt.calls == []
    assert h.context.budget.total == 0


def test_aggregated_record_is_never_split() -> None:
    h = harness(flush_records=3)
    proc = h.processor()
    ckpt = Checkpoints()
    agg = [Record(event_bytes(i), "pk", "500", i, T0_MS) for i in range(5)]  # one KPL record
    tail = [Record(event_bytes(10), "pk", "501", 0, T0_MS)]
    deliver(proc, agg[:2], ckpt)
    deliver(proc, agg[2:] + tail, ckpt)
    assert ckpt.calls == [("500", 4)]
    (key,) = h.store.objects
    assert key.endswith("-500-500.parquet")
    assert len(h.store.rows()) == 5


def test_duplicates_in_batch_and_across_batches() -> None:
    h = harness(flush_records=4)
    proc = h.processor()
    ckpt = Checkpoints()
    same = event_bytes(1)
    deliver(proc, records_of([same, same, event_bytes(2), same]), ckpt)  # batch 1: 2 unique
    deliver(proc, records_of([same, event_bytes(2), event_bytes(3), event_bytes(3)], first_seq=200), ckpt)
    rows = h.store.rows()
    assert sorted(r["event_id"][-2:] for r in rows) == ["01", "02", "03"]
    m = proc.metrics
    assert (m.duplicates_in_batch, m.duplicates_redis, m.rows_written) == (3, 2, 3)
    assert ckpt.calls == [("103", 0), ("203", 0)]


def test_invalid_records_are_dead_lettered_with_reasons_and_checkpointed() -> None:
    h = harness(flush_records=4)
    proc = h.processor()
    ckpt = Checkpoints()
    bad = [b"\xff\xfe", b"{not json", event_bytes(1, customer="../../etc"), event_bytes(2, customer="")]
    deliver(proc, records_of(bad), ckpt)
    assert ckpt.calls == [("103", 0)]  # nothing valid, still checkpointed after the dead letters
    (dl_key,) = h.store.objects
    assert dl_key.startswith("dead-letter/stream=events/") and dl_key.endswith("-100-103.jsonl")
    assert h.announcer.manifests == []
    assert proc.metrics.invalid_by_reason == Counter({"not_utf8": 1, "bad_json": 1, "unsafe_customer_id": 2})


def test_shard_end_flushes_and_checkpoints_without_arguments() -> None:
    h = harness()
    proc = h.processor()
    ckpt = Checkpoints()
    deliver(proc, records_of([event_bytes(1), event_bytes(2)]), ckpt)
    proc.shard_ended(ShardEndedInput(ckpt))
    assert ckpt.calls == [(None, None)]
    assert len(h.store.rows()) == 2
    empty = harness().processor()
    ckpt2 = Checkpoints()
    empty.shard_ended(ShardEndedInput(ckpt2))
    assert ckpt2.calls == [(None, None)]


def test_shutdown_requested_flushes_and_checkpoints_last_record() -> None:
    h = harness()
    proc = h.processor()
    ckpt = Checkpoints()
    deliver(proc, records_of([event_bytes(1), event_bytes(2)]), ckpt)
    proc.shutdown_requested(ShutdownRequestedInput(ckpt))
    assert ckpt.calls == [("101", 0)]
    assert proc.metrics.flushes_by_reason == Counter({"shutdown": 1})


def test_lease_lost_drops_the_buffer_without_writing() -> None:
    h = harness()
    proc = h.processor()
    ckpt = Checkpoints()
    deliver(proc, records_of([event_bytes(1)]), ckpt)
    proc.lease_lost(LeaseLostInput())
    deliver(proc, records_of([event_bytes(2)], first_seq=300), ckpt)
    proc.shutdown_requested(ShutdownRequestedInput(ckpt))
    assert h.store.puts == 0 and h.announcer.manifests == [] and ckpt.calls == []
    assert h.context.budget.total == 0


def test_checkpoint_refused_with_shutdown_exception_stops_the_shard() -> None:
    h = harness(flush_records=2)
    proc = h.processor()
    ckpt = Checkpoints(refuse=CheckpointError("ShutdownException"))
    deliver(proc, records_of([event_bytes(i) for i in range(5)]), ckpt)
    # The first flush was written and announced, then the checkpoint was refused: stop there.
    assert len(h.announcer.manifests) == 1
    assert proc.buffer.records == 0
    deliver(proc, records_of([event_bytes(9)], first_seq=900), ckpt)
    assert len(h.announcer.manifests) == 1


def test_checkpoint_throttling_is_retried() -> None:
    h = harness(flush_records=1)
    proc = h.processor()
    attempts: list[int] = []

    class Flaky(Checkpoints):
        def checkpoint(
            self, sequence_number: str | None = None, sub_sequence_number: int | None = None
        ) -> None:
            attempts.append(1)
            if len(attempts) < 3:
                raise CheckpointError("ThrottlingException")
            super().checkpoint(sequence_number, sub_sequence_number)

    ckpt = Flaky()
    deliver(proc, records_of([event_bytes(1)]), ckpt)
    assert ckpt.calls == [("100", 0)] and len(attempts) == 3


def test_terminal_error_fails_loudly_without_checkpoint() -> None:
    h = harness(flush_records=2)
    h.store.fail_with = TerminalError("AccessDenied")
    proc = h.processor()
    ckpt = Checkpoints()
    with pytest.raises(ShardFailed, match="AccessDenied"):
        deliver(proc, records_of([event_bytes(i) for i in range(3)]), ckpt)
    assert ckpt.calls == [] and h.announcer.manifests == []
    with pytest.raises(ShardFailed):
        deliver(proc, records_of([event_bytes(7)], first_seq=700), ckpt)
    proc.shutdown_requested(ShutdownRequestedInput(ckpt))
    assert ckpt.calls == []
    with pytest.raises(ShardFailed):
        proc.shard_ended(ShardEndedInput(ckpt))
    assert ckpt.calls == []


def test_transient_errors_are_retried_then_give_up_without_checkpoint() -> None:
    h = harness(flush_records=1)
    h.store.fail_with = TransientError("SlowDown")
    proc = h.processor()
    ckpt = Checkpoints()
    with pytest.raises(ShardFailed, match="gave up after 3 attempts"):
        deliver(proc, records_of([event_bytes(1)]), ckpt)
    assert h.store.puts == 3 and ckpt.calls == []


def test_committed_batch_is_not_redone() -> None:
    h = harness(flush_records=3)
    recs = records_of([event_bytes(i) for i in range(3)])
    first = h.processor()
    deliver(first, recs, Checkpoints())
    puts, manifests = h.store.puts, len(h.announcer.manifests)
    replay = h.processor()
    ckpt = Checkpoints()
    deliver(replay, recs, ckpt)
    assert (h.store.puts, len(h.announcer.manifests)) == (puts, manifests)
    assert ckpt.calls == [("102", 0)]
    # Metrics are per shard per process: both owners' flushes count.
    assert replay.metrics.batches_by_outcome == Counter({"written": 1, "skipped": 1})


@pytest.mark.parametrize("step", [WRITTEN, ANNOUNCED, MARKED])
def test_crash_at_each_step_then_replay_loses_nothing(step: str) -> None:
    h = harness(flush_records=4)
    recs = records_of([event_bytes(i) for i in range(10)])

    def crash(at: str) -> None:
        if at == step:
            raise Kill(at)

    first = h.processor(crash=crash)
    ckpt = Checkpoints()
    with pytest.raises(Kill):
        deliver(first, recs, ckpt)
    assert ckpt.calls == []
    replay = h.processor()
    deliver(replay, recs, ckpt)
    replay.shard_ended(ShardEndedInput(ckpt))
    rows = h.store.rows()
    assert sorted(r["event_id"] for r in rows) == sorted({r["event_id"] for r in rows})
    assert len(rows) == 10
    # Same cuts → same batch ids: at most one manifest id per batch, whatever was resent.
    assert {m.batch_id for m in h.announcer.manifests} == {
        "events/shardId-000000000001/100-103",
        "events/shardId-000000000001/104-107",
        "events/shardId-000000000001/108-109",
    }


def test_memory_pressure_flushes_the_largest_buffer_early() -> None:
    limit = 12_000
    h = harness(flush_records=10_000, max_buffer_bytes=limit)
    a = h.processor("shardId-000000000001")
    b = h.processor("shardId-000000000002")
    ck_a, ck_b = Checkpoints(), Checkpoints()
    deliver(a, records_of([event_bytes(i) for i in range(15)]), ck_a)  # ~10 KB estimated
    deliver(b, records_of([event_bytes(100 + i) for i in range(10)], first_seq=5000), ck_b)
    deliver(a, [], ck_a)  # a is largest: asked to flush, does so at its next delivery
    assert ck_a.calls and a.metrics.flushes_by_reason["pressure"] >= 1
    assert h.context.budget.total <= limit + limit // 4
    peak = 0
    for i in range(40):
        deliver(b, records_of([event_bytes(1000 + i)], first_seq=6000 + i), ck_b)
        peak = max(peak, h.context.budget.total)
    assert peak <= limit + limit // 4 + 1_000
    assert b.metrics.flushes_by_reason["pressure"] >= 1


def test_metrics_dict() -> None:
    h = harness(flush_records=3)
    proc = h.processor()
    same = event_bytes(1)
    deliver(proc, records_of([same, same, b"{"]), Checkpoints())
    shard = h.context.shard_metrics(SHARD).as_dict()
    assert shard["records_in"] == 3 and shard["valid"] == 2 and shard["invalid"] == 1
    assert shard["duplicates_dropped"] == 1 and shard["batches"] == 1 and shard["rows_written"] == 1
    assert shard["invalid_by_reason"] == {"bad_json": 1}
    assert shard["flush_seconds_max"] > 0


def test_one_json_log_line_per_flush(caplog: pytest.LogCaptureFixture) -> None:
    import orjson

    from pipeline.core.observability import JsonFormatter

    h = harness(flush_records=2)
    proc = h.processor()
    with caplog.at_level(logging.INFO, logger="shardhouse.batcher"):
        deliver(
            proc, records_of([event_bytes(1), event_bytes(2), event_bytes(3), event_bytes(4)]), Checkpoints()
        )
    lines = [orjson.loads(JsonFormatter().format(r)) for r in caplog.records if r.getMessage() == "flush"]
    assert len(lines) == 2
    assert lines[0]["batch_id"] == "events/shardId-000000000001/100-101"
    assert (
        lines[0]["rows_written"] == 2 and lines[0]["reason"] == "records" and lines[0]["outcome"] == "written"
    )
    assert set(lines[0]["steps"]) >= {"check+arrow", "write", "announce", "mark", "wait", "checkpoint"}
