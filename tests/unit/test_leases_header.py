"""The mode / leader / workers header of ``shardhouse leases`` (pure rendering)."""

from __future__ import annotations

from pipeline.app.cli.worker import coordination_lines
from pipeline.consumer.kcl3_assignment import WorkerStats
from pipeline.consumer.kcl3_state import ClientVersion, LockItem
from pipeline.consumer.leases import Lease

NOW = 1_800_000_000.0


def test_a_2x_table_says_so() -> None:
    assert (
        coordination_lines(False, None, None, None, [], NOW)[0]
        == "mode: 2.x (no KCL 3.x CoordinatorState table)"
    )


def test_a_3x_table_shows_mode_leader_and_each_workers_metrics() -> None:
    workers = [
        WorkerStats("java-a", int(NOW - 2)),
        WorkerStats("py-1", int(NOW - 1), {"C": [10.0, 20.0, 30.0, 40.0]}, {"C": [100]}),
        WorkerStats("gone", int(NOW - 600)),
    ]
    leases = [Lease("s0", 1, "java-a"), Lease("s1", 1, "py-1"), Lease("s2", 1, "py-1")]
    lines = coordination_lines(True, ClientVersion.V3X, LockItem("java-a", "r", 120.0), workers, leases, NOW)
    assert lines[0] == "mode: 3.x (Migration3.0 cv=CLIENT_VERSION_3X)"
    assert lines[1] == "leader: java-a (lock 120 s)"
    assert lines[2] == "workers (3 in WorkerMetricStats, 2 active):"
    gone, java, py = lines[3:6]
    assert (
        "java-a" in java
        and "updated 2 s ago" in java
        and "leases   1" in java
        and "default (throughput)" in java
    )
    assert gone.endswith("(inactive)")
    assert "leases   2" in py and "C=[20.0, 30.0, 40.0]/[100]" in py


def test_an_upgrading_table_is_still_2x() -> None:
    lines = coordination_lines(True, ClientVersion.UPGRADE_FROM_2X, None, [], [], NOW)
    assert lines[:2] == ["mode: 2.x (Migration3.0 cv=CLIENT_VERSION_UPGRADE_FROM_2X)", "leader: (none)"]
