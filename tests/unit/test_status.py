"""``shardhouse status``: liveness from two lease reads, staleness, and the one-screen text."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from pipeline.app.status.model import (
    CustomerLoad,
    QueueView,
    ReadModelView,
    ShardView,
    Snapshot,
    WorkerView,
    default_sample_seconds,
    staleness_ms,
    worker_views,
)
from pipeline.app.status.render import render, seconds_text
from pipeline.consumer.leases import Lease
from pipeline.consumer.sequence import SHARD_END, ExtendedSequenceNumber

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def lease(key: str, owner: str | None, counter: int, checkpoint: str = "49000") -> Lease:
    return Lease(key, counter, owner, ExtendedSequenceNumber(checkpoint))


def test_a_worker_is_alive_when_a_counter_of_its_leases_moved_between_reads() -> None:
    before = [lease("s0", "w1", 5), lease("s1", "w1", 9), lease("s2", "w2", 3)]
    after = [lease("s0", "w1", 6), lease("s1", "w1", 9), lease("s2", "w2", 3)]
    assert worker_views("app", before, after) == [
        WorkerView("app", "w1", 2, True),
        WorkerView("app", "w2", 1, False),
    ]


def test_a_lease_taken_between_reads_counts_for_its_new_owner() -> None:
    views = worker_views("app", [lease("s0", "w1", 5)], [lease("s0", "w2", 6)])
    assert [(v.worker, v.leases, v.renewing) for v in views] == [("w2", 1, True)]


def test_unowned_and_finished_leases_belong_to_no_worker() -> None:
    after = [lease("s0", None, 1), lease("s1", "w1", 4, SHARD_END), lease("s2", "w1", 7)]
    views = worker_views("app", after, after)
    assert [(v.worker, v.leases, v.renewing) for v in views] == [("w1", 1, False)]


def test_a_new_lease_seen_only_in_the_second_read_is_not_proof_of_life() -> None:
    assert [v.renewing for v in worker_views("app", [], [lease("s0", "w1", 1)])] == [False]


@given(st.lists(st.tuples(st.sampled_from(["w1", "w2", "w3"]), st.integers(0, 5)), max_size=12))
def test_leases_per_worker_add_up_to_the_owned_leases(owners: list[tuple[str, int]]) -> None:
    before = [lease(f"s{i}", o, 10) for i, (o, _) in enumerate(owners)]
    after = [lease(f"s{i}", o, 10 + bump) for i, (o, bump) in enumerate(owners)]
    views = worker_views("app", before, after)
    assert sum(v.leases for v in views) == len(owners)
    for v in views:
        assert v.renewing == any(o == v.worker and bump for o, bump in owners)


def test_sample_covers_one_kcl_renewal_interval() -> None:
    assert default_sample_seconds(10_000) > 10_000 / 3 / 1000
    assert default_sample_seconds(3_000) == 1.7


def test_staleness_is_the_projectors_largest_known_lag_over_unfinished_shards() -> None:
    shards = [
        ShardView("proj", "s0", "p1", "1", millis_behind=300),
        ShardView("proj", "s1", "p1", "2", millis_behind=None),
        ShardView("proj", "s2", None, SHARD_END, millis_behind=90_000),
        ShardView("batch", "s0", "b1", "1", millis_behind=5_000),
    ]
    assert staleness_ms(shards, "proj") == 300
    assert staleness_ms(shards, "other") is None


def test_seconds_text_picks_a_readable_unit() -> None:
    assert [seconds_text(x) for x in (None, 0.25, 12.34, 300, 9000, 400_000)] == [
        "-", "250ms", "12.3s", "5.0m", "2.5h", "4.6d",
    ]  # fmt: skip


def test_render_shows_every_part_on_one_screen() -> None:
    snap = Snapshot(
        stream="events",
        taken_at=NOW,
        sample_s=3.9,
        open_shards=4,
        workers=worker_views("batcher", [lease("s0", "w1", 1)], [lease("s0", "w1", 2), lease("s1", "w2", 1)]),
        shards=[
            ShardView("batcher", "shardId-000000000000", "w1", "1", millis_behind=1500, checkpoint_age_s=2.0),
            ShardView("batcher", "shardId-000000000001", None, SHARD_END, millis_behind=0),
        ],
        queues=[QueueView("batches", 3, 1, 0), QueueView("batches-dlq", 0, 0, 0)],
        customers=[
            CustomerLoad("cust_0001", NOW - timedelta(seconds=4), NOW - timedelta(seconds=9), 1234, 5)
        ],
        read_models=ReadModelView("7", "stream", 250),
        problems=["queue other: does not exist"],
    )
    text = render(snap)
    lines = text.splitlines()
    assert lines[0].startswith("shardhouse status — stream events (4 open shards)")
    assert any("w1" in line and "alive" in line for line in lines)
    assert any("w2" in line and "NOT RENEWING" in line for line in lines)
    assert any("shardId-000000000000" in line and "1.5s" in line and "2.0s" in line for line in lines)
    assert any("shardId-000000000001" in line and "ended" in line for line in lines)
    assert any("batches " in line and "waiting      3" in line for line in lines)
    assert any("cust_0001" in line and "4.0s ago" in line and "9.0s ago" in line and "1,234" in line
               for line in lines)  # fmt: skip
    assert "read models: generation 7 (stream), staleness 250ms" in text
    assert lines[-1] == "! queue other: does not exist"
    assert len(lines) < 40


def test_snapshot_json_is_plain_data() -> None:
    snap = Snapshot(stream="events", taken_at=NOW, sample_s=1.0)
    snap.customers.append(CustomerLoad("c", NOW, None, 1, 1))
    doc = snap.to_json()
    assert doc["taken_at"] == "2026-11-23T12:00:00+00:00"
    assert doc["customers"] == [
        {
            "customer": "c",
            "last_load": "2026-11-23T12:00:00+00:00",
            "newest_event": None,
            "rows": 1,
            "loads": 1,
        }
    ]
