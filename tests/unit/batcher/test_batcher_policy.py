"""Cut decisions, the shard buffer and the process-wide budget: pure, no servers."""

from __future__ import annotations

import threading

from hypothesis import given
from hypothesis import strategies as st

from pipeline.consumer.processor import Record
from pipeline.core.settings import WorkerSettings
from schemas import load_registry
from workers.batcher.budget import BudgetHandle, MemoryBudget
from workers.batcher.buffer import ROW_OVERHEAD_BYTES, ShardBuffer
from workers.batcher.policy import FlushPolicy, FlushReason, may_cut_between, pressure_decision

REGISTRY = load_registry()


def _record(seq: int, data: bytes = b"x" * 100, sub: int = 0, arrival: int = 0) -> Record:
    return Record(data, "pk", str(seq), sub, arrival)


def test_policy_from_settings_defaults() -> None:
    policy = FlushPolicy.from_settings(WorkerSettings())
    assert (policy.max_records, policy.max_bytes, policy.max_age_ms) == (50_000, 32 * 1024 * 1024, 30_000)


def test_full_on_records_then_bytes() -> None:
    policy = FlushPolicy(max_records=3, max_bytes=1000, max_age_ms=10)
    assert policy.full(2, 999) is None
    assert policy.full(3, 0) is FlushReason.RECORDS
    assert policy.full(1, 1000) is FlushReason.BYTES


def test_age_is_measured_on_arrival_times_not_the_clock() -> None:
    policy = FlushPolicy(max_age_ms=30_000)
    assert not policy.too_old_for(1_000, 30_999)
    assert policy.too_old_for(1_000, 31_000)


def test_idle_flush_only_when_caught_up() -> None:
    policy = FlushPolicy(max_age_ms=30_000)
    assert policy.idle_due(0, 30_000, millis_behind_latest=0)
    assert not policy.idle_due(0, 30_000, millis_behind_latest=5)  # replaying: cut by records only
    assert not policy.idle_due(0, 29_999, millis_behind_latest=0)


def test_never_cut_inside_an_aggregated_record() -> None:
    assert may_cut_between(None, "5")
    assert may_cut_between("4", "5")
    assert not may_cut_between("5", "5")


@given(
    total=st.integers(0, 10_000),
    limit=st.integers(0, 5_000),
    mine=st.integers(0, 5_000),
    extra=st.integers(0, 5_000),
)
def test_pressure_decision_properties(total: int, limit: int, mine: int, extra: int) -> None:
    largest = mine + extra
    d = pressure_decision(total=total, limit=limit, mine=mine, largest=largest)
    if limit <= 0 or total <= limit:
        assert not d.flush_self
    if limit > 0 and total > limit and mine > 0 and extra == 0:
        assert d.flush_self  # the largest flushes itself
    if limit > 0 and total > limit + limit // 4 and mine > 0:
        assert d.flush_self  # far over: everyone who holds something helps
    if d.flush_self:
        assert mine > 0


def test_buffer_keeps_first_occurrence_and_position() -> None:
    buf = ShardBuffer("shardId-000000000000")
    a = REGISTRY.decode(
        b'{"event_id":"00000000-0000-4000-8000-000000000001","customer_id":"c","type":"page_view",'
        b'"version":1,"occurred_at":"2024-05-01T12:00:00Z","payload":{"user_id":"u","url":"x"}}'
    )
    assert buf.add_valid(_record(10, arrival=5), a) > ROW_OVERHEAD_BYTES
    assert buf.add_valid(_record(11), a) == 0  # the same event_id again: dropped, counted
    buf.add_invalid(_record(12, b"nope"), "bad_json", "not json")
    assert (buf.records, buf.duplicates, buf.valid, len(buf.rejected)) == (3, 1, 1, 1)
    batch = buf.seal(FlushReason.RECORDS)
    assert (batch.first.sequence_number, batch.last.sequence_number, batch.first_arrival_ms) == (
        "10",
        "12",
        5,
    )
    assert batch.raw_bytes == 204 and batch.duplicates_in_batch == 1
    # one flat row: envelope, position, payload values in the payload struct's field order
    assert batch.rows() == [(a.event_id, "c", a.occurred_at, "10", 0, "u", "x", None, None, None)]
    assert [(t.type, t.version, t.columns[5:]) for t in batch.types] == [
        ("page_view", 1, ("user_id", "url", "title", "duration_ms", "scroll_depth"))
    ]
    assert buf.records == 0 and not buf.types and not buf.ids


def test_budget_asks_the_largest_and_releases() -> None:
    budget = MemoryBudget(limit=1000)
    big, small = budget.open("big"), budget.open("small")
    assert big.add(700) is None
    decision = small.add(400)  # over the limit; big holds more
    assert decision is not None and not decision.flush_self and decision.ask_largest
    assert big.flush_requested and not small.flush_requested
    decision = small.add(300)  # 1400 > 1250: far over, small helps too
    assert decision is not None and decision.flush_self
    big.release()
    assert budget.total == 700 and not big.flush_requested
    small.close()
    assert budget.total == 0


def test_budget_is_thread_safe() -> None:
    budget = MemoryBudget(limit=0)
    handles = [budget.open(str(i)) for i in range(8)]

    def work(h: BudgetHandle) -> None:
        for _ in range(10_000):
            h.add(1)

    threads = [threading.Thread(target=work, args=(h,)) for h in handles]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert budget.total == 80_000
