"""KCL 3.x leader decisions (pipeline.consumer.kcl3_assignment) against KCL 3.1.3's behaviour.

Most cases restate scenarios of KCL's own ``LeaseAssignmentManagerTest`` (same workers, metrics,
throughputs and expected owners) as data; KCL's test config is: rebalance every run, dampening
80 %, reporter period one hour, and each lease first seen this run (so owned leases are live).
"""

from __future__ import annotations

import math
import random

from hypothesis import given
from hypothesis import strategies as st

from pipeline.consumer.kcl3_assignment import (
    AssignmentConfig,
    LeaderTracker,
    LeaseState,
    WorkerStats,
    active_workers,
    choose_successor,
    ema,
    plan_assignments,
)
from pipeline.consumer.leases import Lease
from pipeline.consumer.sequence import SHARD_END, ExtendedSequenceNumber

NOW = 1_800_000_000.0
KCL_TEST = AssignmentConfig(
    reporter_interval_s=3600, dampening_percentage=80, rebalance_threshold_percentage=20,
    variance_balancing_frequency=1,
)  # fmt: skip


def cpu(worker: str, *values: float, ceiling: int = 80, lut: float = NOW) -> WorkerStats:
    return WorkerStats(worker, int(lut), {"C": list(values)}, {"C": [ceiling]})


def default(worker: str) -> WorkerStats:
    return WorkerStats(worker, int(NOW))


def owned(key: str, owner: str, tp: float | None = 10.0, **kw: object) -> LeaseState:
    return LeaseState(
        Lease(key, lease_counter=123, lease_owner=owner),
        expired=False,
        last_change=NOW,
        throughput_kbps=tp,
        **kw,
    )  # type: ignore[arg-type]


def unassigned(key: str) -> LeaseState:
    return LeaseState(Lease(key), expired=True, last_change=0.0)


def owners_after(leases: list[LeaseState], workers: list[WorkerStats], **kw: object) -> dict[str, str | None]:
    plan = plan_assignments(
        leases, workers, NOW, rebalance=True, config=kw.pop("config", KCL_TEST), rng=random.Random(7), **kw
    )  # type: ignore[arg-type]
    out = {x.lease.lease_key: x.lease.lease_owner for x in leases}
    out.update({a.lease.lease.lease_key: a.new_owner for a in plan})
    return out


def count(owners: dict[str, str | None], worker: str) -> int:
    return sum(1 for owner in owners.values() if owner == worker)


def test_new_lease_goes_to_the_worker_below_average() -> None:
    owners = owners_after([unassigned("something")], [cpu("yield", 90, 90), cpu("take", 50, 50)])
    assert owners == {"something": "take"}


def test_worker_whose_metric_is_failing_gets_nothing() -> None:
    failing = cpu("failing", 50, -1)
    assert failing.valid and failing.failing
    owners = owners_after([unassigned("a"), unassigned("b")], [failing])
    assert owners == {"a": None, "b": None}


def test_a_failure_in_the_past_does_not_count() -> None:
    owners = owners_after([unassigned("a"), unassigned("b")], [cpu("w", -1, 50, 50)])
    assert owners == {"a": "w", "b": "w"}


def test_zero_throughput_moves_one_lease_per_run() -> None:
    leases = [owned(f"lease{i}", "yield", tp=0.0) for i in range(10)]
    owners = owners_after(leases, [cpu("yield", 90, 90), cpu("take", 50, 50)])
    assert count(owners, "yield") == 9 and count(owners, "take") == 1


def test_max_leases_for_worker_leaves_the_rest_unassigned() -> None:
    cfg = AssignmentConfig(**{**KCL_TEST.__dict__, "max_leases_for_worker": 2})
    owners = owners_after([unassigned(k) for k in ("l1", "l2", "l3")], [cpu("take", 50, 50)], config=cfg)
    assert count(owners, "take") == 2 and count(owners, None) == 1  # type: ignore[arg-type]


def test_unassigned_before_expired() -> None:
    expired = LeaseState(Lease("expired", 5, "gone"), expired=True, last_change=NOW - 100)
    plan = plan_assignments(
        [expired, unassigned("new")], [cpu("take", 50, 50)], NOW, rebalance=False,
        config=AssignmentConfig(max_leases_for_worker=1, reporter_interval_s=3600),
    )  # fmt: skip
    assert [(a.lease.lease.lease_key, a.new_owner) for a in plan] == [("new", "take")]


def test_above_operating_range_rebalances_inside_the_threshold() -> None:
    leases = [owned("lease1", "w2", tp=1000), owned("lease2", "w2", tp=1)]
    owners = owners_after(leases, [cpu("w1", 41, 41, ceiling=50), cpu("w2", 59, 59, ceiling=50)])
    assert count(owners, "w1") == 1


def test_inactive_worker_is_not_assigned() -> None:
    stale = cpu("inactive", 5, 5, lut=0)
    owners = owners_after([unassigned("k1"), unassigned("k2")], [cpu("yield", 90, 90), stale])
    assert owners == {"k1": "yield", "k2": "yield"}


def test_take_and_yield_moves_at_least_a_lease_worth_of_throughput() -> None:
    leases = [owned(f"lease{i}", "yield", tp=100.0 * i) for i in range(1, 5)]
    cfg = AssignmentConfig(**{**KCL_TEST.__dict__, "rebalance_threshold_percentage": 10})
    owners = owners_after(leases, [cpu("yield", 90, 90), cpu("take", 50, 50)], config=cfg)
    moved = sum(x.throughput_kbps or 0 for x in leases if owners[x.lease.lease_key] == "take")
    assert moved >= 100


def test_overshoot_takes_the_smallest_lease_only_when_allowed() -> None:
    leases = [
        owned("lease1", "yield", tp=300), owned("lease2", "yield", tp=299), owned("lease3", "yield", tp=301),
        owned("lease4", "take", tp=3000),
    ]  # fmt: skip
    workers = [cpu("yield", 90, 90), cpu("take", 50, 50)]
    strict = AssignmentConfig(
        **{**KCL_TEST.__dict__, "rebalance_threshold_percentage": 10, "allow_throughput_overshoot": False}
    )
    assert count(owners_after(leases, workers, config=strict), "take") == 1
    loose = AssignmentConfig(**{**KCL_TEST.__dict__, "rebalance_threshold_percentage": 10})
    owners = owners_after(leases, workers, config=loose)
    assert {k for k, v in owners.items() if v == "take"} == {"lease2", "lease4"}


def test_balancing_between_two_yield_workers_and_one_taker() -> None:
    leases = [
        owned("lease1", "yield1"), owned("lease2", "yield1", tp=1000),
        owned("lease3", "yield2"), owned("lease4", "yield2", tp=1000), owned("lease5", "take"),
    ]  # fmt: skip
    cfg = AssignmentConfig(**{**KCL_TEST.__dict__, "rebalance_threshold_percentage": 10})
    owners = owners_after(
        leases, [cpu("yield1", 90, 90), cpu("yield2", 90, 90), cpu("take", 50, 50)], config=cfg
    )
    assert count(owners, "take") == 3
    assert count(owners, "yield1") == 1 and count(owners, "yield2") == 1


def test_under_utilised_worker_gets_the_new_lease_and_rebalanced_ones() -> None:
    leases = [owned("leaseY1", "yield", tp=1000), unassigned("leaseT1")]
    leases += [owned(f"leaseY{i}", "yield") for i in (2, 3, 5, 6, 7, 8, 9)]
    cfg = AssignmentConfig(**{**KCL_TEST.__dict__, "rebalance_threshold_percentage": 10})
    assert count(owners_after(leases, [cpu("yield", 90, 90), cpu("take", 50, 50)], config=cfg), "take") == 4


def test_hot_worker_not_above_average_still_gives_one_lease() -> None:
    leases = [owned(f"leaseKey{i}", "hot") for i in range(1, 7)]
    owners = owners_after(leases, [cpu("hot", 90, 90, ceiling=50), cpu("take", 40, 40)])
    assert count(owners, "hot") == 5 and count(owners, "take") == 1


def test_yield_worker_with_single_lease_gives_it_up() -> None:
    leases = [owned("lease1", "yield", tp=5), owned("lease2", "take", tp=30)]
    owners = owners_after(leases, [cpu("yield", 90, 90), cpu("take", 50, 50)])
    assert owners == {"lease1": "take", "lease2": "take"}


def test_default_metric_worker_gets_new_leases_by_throughput_share() -> None:
    leases = [unassigned("lease1"), unassigned("lease2"), unassigned("lease3"), owned("lease6", "w2")]
    owners = owners_after(leases, [default("w1"), cpu("w2", 50, 50)])
    assert count(owners, "w1") == 3 and count(owners, "w2") == 1


def test_balanced_default_metric_worker_keeps_its_leases() -> None:
    leases = [
        owned("lease1", "w1", tp=100),
        owned("lease2", "w1", tp=200),
        owned("lease3", "w2", tp=300),
        owned("lease4", "w2", tp=400),
    ]
    owners = owners_after(leases, [default("w1"), cpu("w2", 50, 50)])
    assert count(owners, "w1") == 2 and count(owners, "w2") == 2


def test_overloaded_default_and_cpu_workers_keep_their_leases() -> None:
    owners = owners_after([owned("lease1", "w1"), owned("lease2", "w2")], [default("w1"), cpu("w2", 90, 90)])
    assert owners == {"lease1": "w1", "lease2": "w2"}


def test_all_default_workers_and_no_throughput_never_rebalance() -> None:
    """What KCL 3.1.3 does on a quiet stream (seen on kinesis-mock: leases carry throughputKBps
    0.0 and workers publish empty metrics): 0/0 makes every ratio NaN, nothing triggers."""
    leases = [owned(f"s{i}", "java-a", tp=0.0) for i in range(4)]
    assert plan_assignments(leases, [default("java-a"), default("java-b")], NOW, rebalance=True) == []


def test_all_default_workers_with_throughput_rebalance_towards_the_idle_one() -> None:
    leases = [owned(f"s{i}", "java-a", tp=50.0) for i in range(4)]
    plan = plan_assignments(
        leases, [default("java-a"), default("py-1")], NOW, rebalance=True, rng=random.Random(1)
    )
    assert plan and {a.new_owner for a in plan} == {"py-1"} and all(a.graceful for a in plan)


def test_expired_lease_is_a_plain_assignment_and_live_one_graceful() -> None:
    expired = LeaseState(Lease("e", 3, "dead"), expired=True, last_change=NOW - 60, throughput_kbps=0.0)
    plan = plan_assignments([expired], [default("w")], NOW, rebalance=False)
    assert [(a.new_owner, a.graceful) for a in plan] == [("w", False)]


def test_pending_handoff_is_left_alone_until_it_times_out() -> None:
    pending = owned("p", "new", tp=50.0, checkpoint_owner="old")
    workers = [default("old"), default("new"), default("third")]
    extra = [owned(f"x{i}", "third", tp=0.0) for i in range(3)]
    assert all(
        a.lease.lease.lease_key != "p"
        for a in plan_assignments([pending, *extra], workers, NOW, rebalance=True)
    )
    timed_out = owned("p", "new", tp=50.0, checkpoint_owner="old", handoff_timed_out=True)
    expired_pending = LeaseState(timed_out.lease, expired=True, last_change=NOW - 60, checkpoint_owner="old")
    plan = plan_assignments([expired_pending], [default("w")], NOW, rebalance=False)
    assert [(a.new_owner, a.graceful) for a in plan] == [("w", False)]


def test_shard_end_lease_moves_without_handoff() -> None:
    done = LeaseState(
        Lease("d", 3, "dead", ExtendedSequenceNumber(SHARD_END)), expired=True, last_change=NOW - 60
    )
    assert [a.graceful for a in plan_assignments([done], [default("w")], NOW, rebalance=False)] == [False]


def test_active_workers_window_is_two_reporter_periods() -> None:
    cfg = AssignmentConfig(reporter_interval_s=30)
    workers = [
        default("fresh"),
        WorkerStats("edge", int(NOW - 60)),
        WorkerStats("old", int(NOW - 61)),
        WorkerStats("never", None),
    ]
    assert [w.worker_id for w in active_workers(workers, NOW, cfg)] == ["fresh", "edge"]


def test_invalid_entries() -> None:
    assert not WorkerStats("w", 1, {"C": [1.0]}, {}).valid  # metric without operating range
    assert not WorkerStats("w", 1, {"C": [1.0]}, {"C": [0]}).valid  # ceiling 0
    assert WorkerStats("w", 1, {}, {}).valid and WorkerStats("w", 1).uses_default_metric


def test_ema_matches_kcl() -> None:
    assert ema([], 0.5) == 0
    assert ema([10, 20], 0.5) == 15
    assert ema([-1, 10, -1, 30], 0.5) == 20


def test_leader_tracker_sees_expiry_and_handoff_timeouts() -> None:
    tracker = LeaderTracker(failover_s=10, handoff_timeout_s=30)
    live, free = Lease("a", 1, "w"), Lease("b")
    first = tracker.observe([(live, None, None), (free, None, None)], now=100)
    assert [(s.expired, s.last_change) for s in first] == [(False, 100), (True, 0.0)]
    assert tracker.observe([(live, None, None)], now=111)[0].expired  # counter unchanged past failover
    assert not tracker.observe([(Lease("a", 2, "w"), None, None)], now=112)[0].expired
    pending = Lease("a", 2, "new")
    assert not tracker.observe([(pending, None, "w")], now=113)[0].handoff_timed_out
    assert tracker.observe([(pending, None, "w")], now=153)[0].handoff_timed_out


def test_successor_is_the_least_loaded_active_other_worker() -> None:
    workers = [default("me"), default("a"), default("b"), WorkerStats("stale", int(NOW - 1000))]
    plan = choose_successor(["s1", "s2", "s3"], workers, {"a": 2, "b": 0, "stale": 0}, "me", NOW)
    assert plan == {"s1": "b", "s2": "b", "s3": "a"}
    assert choose_successor(["s1"], [default("me")], {}, "me", NOW) == {}


def test_successor_prefers_workers_seen_alive_over_a_recent_report() -> None:
    cfg = AssignmentConfig(reporter_interval_s=30)
    # "quiet" reported 50 s ago: active for KCL (< 60 s) but overdue by one report, so likely gone.
    workers = [WorkerStats("quiet", int(NOW - 50)), WorkerStats("busy", int(NOW - 10)), default("idle")]
    assert choose_successor(["s1", "s2"], workers, {"busy": 3}, "me", NOW, cfg) == {
        "s1": "idle",
        "s2": "idle",
    }
    plan = choose_successor(["s1", "s2"], workers, {"busy": 3}, "me", NOW, cfg, proven={"busy", "quiet"})
    assert plan == {"s1": "quiet", "s2": "quiet"}  # proven alive beats fresh-but-unproven


@given(
    st.lists(st.sampled_from(["w1", "w2", "w3", None]), min_size=1, max_size=12),
    st.lists(st.one_of(st.none(), st.floats(0, 1000)), min_size=12, max_size=12),
    st.lists(st.sampled_from(["w1", "w2", "w3"]), min_size=1, max_size=3, unique=True),
    st.booleans(),
)
def test_plans_only_name_active_workers_and_each_lease_once(
    owners: list[str | None], tps: list[float | None], active: list[str], rebalance: bool
) -> None:
    leases = [
        unassigned(f"s{i}") if owner is None else owned(f"s{i}", owner, tp=tps[i])
        for i, owner in enumerate(owners)
    ]
    plan = plan_assignments(
        leases, [default(w) for w in active], NOW, rebalance=rebalance, rng=random.Random(3)
    )
    keys = [a.lease.lease.lease_key for a in plan]
    assert len(keys) == len(set(keys))
    assert all(a.new_owner in active and a.new_owner != a.lease.lease.lease_owner for a in plan)
    # every unassigned lease finds an owner when there is any active worker and no cap
    assert {x.lease.lease_key for x in leases if x.unassigned} <= set(keys)
    assert not any(math.isnan(x.last_change) for x in leases)
