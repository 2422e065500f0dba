"""The lease protocol's pure decisions (docs/consumer-runtime.md, "Protocol")."""

from __future__ import annotations

import random

import pytest

from pipeline.consumer.leases import (
    ExpiryTracker,
    Lease,
    deletable_parent,
    from_item,
    leases_to_steal,
    parents_done,
    plan_take,
    steal_count,
    steal_victim,
    table_view,
    take_count,
    target_count,
    to_new_item,
    very_old_leases,
)
from pipeline.consumer.sequence import SHARD_END, TRIM_HORIZON, ExtendedSequenceNumber

FAILOVER = 10.0


def lease(
    key: str, owner: str | None = None, counter: int = 1, cp: str = TRIM_HORIZON, **kw: object
) -> Lease:
    return Lease(key, counter, owner, ExtendedSequenceNumber(cp), **kw)  # type: ignore[arg-type]


def tracked(leases: list[Lease], *, at: float = 100.0) -> ExpiryTracker:
    tracker = ExpiryTracker(FAILOVER)
    tracker.observe(leases, at)
    return tracker


def test_unowned_new_leases_are_very_old_and_all_taken_first() -> None:
    leases = [lease(f"s{i}") for i in range(4)]
    plan = plan_take(leases, "me", tracked(leases), 100.0, rng=random.Random(1))
    assert sorted(x.lease_key for x in plan.take) == ["s0", "s1", "s2", "s3"]
    assert plan.steal == ()


def test_very_old_take_respects_max_leases_for_worker() -> None:
    leases = [lease(f"s{i}") for i in range(6)]
    plan = plan_take(leases, "me", tracked(leases), 100.0, max_leases_for_worker=2)
    assert len(plan.take) == 2


def test_fresh_owned_leases_are_not_available_and_expire_after_failover() -> None:
    leases = [lease("s0", "other"), lease("s1", "other")]
    tracker = tracked(leases, at=100.0)
    assert plan_take(leases, "me", tracker, 105.0).take == ()  # not expired yet: would steal instead
    tracker.observe(leases, 111.0)  # counters unchanged for > failover
    plan = plan_take(leases, "me", tracker, 111.0, rng=random.Random(0))
    assert len(plan.take) == 2  # 2 workers' worth? no: "other" is expired, so I am alone → target 2


def test_steal_one_from_most_loaded_when_nothing_available() -> None:
    leases = [lease(f"s{i}", "w1") for i in range(6)]
    tracker = tracked(leases)
    plan = plan_take(leases, "w2", tracker, 101.0, rng=random.Random(3))
    assert plan.take == ()
    assert len(plan.steal) == 1 and plan.steal[0].lease_owner == "w1"


def test_no_steal_when_balanced() -> None:
    leases = [lease("s0", "w1"), lease("s1", "w1"), lease("s2", "w2"), lease("s3", "w2")]
    assert plan_take(leases, "w2", tracked(leases), 101.0) == plan_take([], "w2", tracked([]), 101.0)


def test_no_steal_while_any_lease_is_available() -> None:
    leases = [lease("s0", "w1"), lease("s1", "w1"), lease("s2", "w1"), lease("s3", None)]
    tracker = tracked(leases)
    tracker.observe(leases, 100.5)
    plan = plan_take(leases, "w2", tracker, 100.5)
    assert [x.lease_key for x in plan.take] == ["s3"] and plan.steal == ()


def test_shard_end_leases_are_never_taken() -> None:
    leases = [lease("parent", cp=SHARD_END), lease("child")]
    plan = plan_take(leases, "me", tracked(leases), 100.0)
    assert [x.lease_key for x in plan.take] == ["child"]


def test_expiry_is_observed_locally_by_counter_change() -> None:
    t = ExpiryTracker(FAILOVER)
    a = lease("s0", "w1", counter=5)
    t.observe([a], 0.0)
    assert not t.expired(a, 9.0)
    t.observe([lease("s0", "w1", counter=6)], 9.0)  # renewed: clock restarts
    assert not t.expired(lease("s0", "w1", counter=6), 18.0)
    assert t.expired(lease("s0", "w1", counter=6), 19.5)


def test_children_wait_for_every_parent_at_shard_end() -> None:
    child = lease("c", parent_shard_ids=frozenset({"p1", "p2"}))
    by_key = {"p1": lease("p1", cp=SHARD_END), "p2": lease("p2", cp="100")}
    assert not parents_done(child, by_key)
    by_key["p2"] = lease("p2", cp=SHARD_END)
    assert parents_done(child, by_key)
    assert parents_done(child, {})  # a missing parent lease does not block


def test_parent_deleted_only_after_children_progress() -> None:
    parent = lease("p", cp=SHARD_END, child_shard_ids=frozenset({"c"}))
    assert not deletable_parent(parent, {"p": parent, "c": lease("c")})
    assert deletable_parent(parent, {"p": parent, "c": lease("c", cp="5")})


def test_items_written_by_java_kcl_load_and_non_lease_items_are_skipped() -> None:
    java_item = {
        "leaseKey": {"S": "shardId-000000000001"},
        "leaseOwner": {"S": "java-worker"},
        "leaseCounter": {"N": "42"},
        "checkpoint": {"S": "49590338271490256608559692538361571095921575989136588898"},
        "checkpointSubSequenceNumber": {"N": "3"},
        "ownerSwitchesSinceCheckpoint": {"N": "1"},
        "parentShardId": {"SS": ["shardId-000000000000"]},
        "startingHashKey": {"S": "0"},
        "endingHashKey": {"S": "170141183460469231731687303715884105727"},
        "throughputKBps": {"N": "0.5"},
    }
    loaded = from_item(java_item)
    assert loaded is not None
    assert loaded.lease_owner == "java-worker" and loaded.lease_counter == 42
    assert loaded.checkpoint.sub_sequence_number == 3
    assert loaded.parent_shard_ids == {"shardId-000000000000"}
    assert from_item({"leaseKey": {"S": "Leader"}, "entityType": {"S": "LEADER"}}) is None
    assert from_item({"leaseKey": {"S": "s"}, "entityType": {"S": "LEASE"}}) is not None


def test_new_item_uses_kcl_attribute_names() -> None:
    item = to_new_item(lease("s9", None, counter=0, parent_shard_ids=frozenset({"s1"})))
    assert item["parentShardId"] == {"SS": ["s1"]}  # singular name, as KCL
    assert item["checkpoint"] == {"S": "TRIM_HORIZON"}
    assert item["checkpointSubSequenceNumber"] == {"N": "0"}
    assert "leaseOwner" not in item


@pytest.mark.parametrize("workers", [1, 2, 3, 5])
def test_target_spreads_leases_evenly(workers: int) -> None:
    owners = [f"w{i}" for i in range(1, workers)]
    leases = [lease(f"s{i}", owners[i % len(owners)] if owners else None) for i in range(10)]
    tracker = tracked(leases)
    plan = plan_take(leases, "w0", tracker, 101.0, rng=random.Random(5), max_leases_to_steal=10)
    got = len(plan.take) + len(plan.steal)
    assert got <= -(-10 // workers)


# -- the named decisions plan_take is made of ----------------------------------------------------


def test_table_view_counts_me_with_what_i_hold_and_only_live_owners() -> None:
    leases = [
        lease("s0", "me"),
        lease("s1", "w1"),
        lease("s2", "w1"),
        lease("s3", "gone"),
        lease("s4", "w1", cp=SHARD_END),
    ]
    tracker = tracked(leases, at=100.0)
    tracker.observe([*leases[:3], lease("s3", "gone", counter=1), leases[4]], 100.0)
    view = table_view(leases, "me", tracker, 100.0, held={"s0", "s1"})
    assert [x.lease_key for x in view.live] == ["s0", "s1", "s2", "s3"]  # SHARD_END is not live
    assert [x.lease_key for x in view.mine] == ["s0", "s1"]  # held wins over the table's owner
    assert view.available == ()
    assert view.owners == {"me": 2, "w1": 1, "gone": 1}
    later = table_view(leases, "me", tracker, 111.0, held={"s0"})
    assert [x.lease_key for x in later.available] == ["s1", "s2", "s3"]  # unrenewed past failover
    assert later.owners == {"me": 1} and later.worker_count == 1


def test_table_view_counts_me_as_a_worker_while_holding_nothing() -> None:
    leases = [lease("s0", "w1")]
    view = table_view(leases, "me", tracked(leases), 100.0, held=None)
    assert view.owners == {"w1": 1, "me": 0} and view.worker_count == 2 and view.mine == ()


@pytest.mark.parametrize(
    ("leases", "workers", "cap", "expected"),
    [
        (10, 3, float("inf"), 4),
        (9, 3, float("inf"), 3),
        (3, 5, float("inf"), 1),
        (500, 50, 8, 8),
        (0, 1, 5, 1),
    ],
)
def test_target_count_is_the_rounded_up_share_under_the_cap(
    leases: int, workers: int, cap: float, expected: int
) -> None:
    assert target_count(leases, workers, cap) == expected


def test_very_old_is_three_failover_times_unrenewed_or_never_seen_owned() -> None:
    fresh, new = lease("s0", "w1"), lease("s1")
    tracker = tracked([fresh, new], at=100.0)
    assert [x.lease_key for x in very_old_leases([fresh, new], tracker, 100.0)] == ["s1"]
    assert very_old_leases([fresh], tracker, 130.0) == []  # exactly 3x: not yet
    assert very_old_leases([fresh], tracker, 130.5) == [fresh]


@pytest.mark.parametrize(
    ("candidates", "need", "expected"), [(5, float("inf"), 5), (5, 2, 2), (1, 3, 1), (4, -1, 0), (3, 0, 0)]
)
def test_take_count_is_bounded_by_candidates_and_need(candidates: int, need: float, expected: int) -> None:
    assert take_count(candidates, need) == expected


@pytest.mark.parametrize(
    ("load", "target", "need", "max_steal", "expected"),
    [
        (9, 3, 3, 10, 3),  # victim's excess 6, my need 3
        (5, 3, 3, 10, 2),  # excess 2
        (4, 4, 2, 10, 1),  # no excess, but I need more than one: steal one
        (4, 4, 1, 10, 0),  # no excess, need exactly one: balanced within one, stay
        (9, 3, 3, 1, 1),  # maxLeasesToStealAtOneTime
    ],
)
def test_steal_count_follows_kcl(load: int, target: int, need: int, max_steal: int, expected: int) -> None:
    assert steal_count(load, target, need, max_steal) == expected


def test_steal_victim_is_the_most_loaded_other_worker_ties_to_greatest_id() -> None:
    assert steal_victim({"me": 9, "w1": 3, "w2": 3, "w0": 1}, "me") == ("w2", 3)
    assert steal_victim({"me": 2}, "me") is None


def test_leases_to_steal_come_from_the_victim_only() -> None:
    leases = [lease(f"a{i}", "w1") for i in range(5)] + [lease(f"b{i}", "w2") for i in range(2)]
    view = table_view(leases, "me", tracked(leases), 100.0, held=None)
    stolen = leases_to_steal(view, "me", 3, 3, 10, random.Random(2))
    assert len(stolen) == 2 and {x.lease_owner for x in stolen} == {"w1"}
    assert leases_to_steal(view, "me", 5, 1, 10, random.Random(2)) == ()  # w1 holds 5 = target
