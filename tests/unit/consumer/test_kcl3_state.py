"""KCL 3.x coordination state (pipeline.consumer.kcl3_state): mode, leader lock, metrics items."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pipeline.consumer.kcl3_assignment import WorkerStats
from pipeline.consumer.kcl3_state import (
    ClientVersion,
    LockAction,
    LockItem,
    LockWatcher,
    Protocol,
    ThroughputMeter,
    mode_for,
    parse_client_version,
    stats_from_item,
    stats_item,
)


def test_only_3x_and_3x_with_rollback_switch_to_the_3x_protocol() -> None:
    protocols = {v: mode_for(v, metrics_table=True).protocol for v in [None, *ClientVersion]}
    assert {v for v, p in protocols.items() if p is Protocol.KCL3} == {
        ClientVersion.V3X,
        ClientVersion.V3X_WITH_ROLLBACK,
    }
    # An upgrading 2.x table keeps take/steal but gets metrics, so the upgrade can complete.
    upgrading = mode_for(ClientVersion.UPGRADE_FROM_2X, metrics_table=True)
    assert upgrading.protocol is Protocol.KCL2 and upgrading.publish_metrics
    assert not mode_for(None, metrics_table=False).publish_metrics


def test_client_version_as_kcl_writes_it() -> None:
    item = {"key": {"S": "Migration3.0"}, "cv": {"S": "CLIENT_VERSION_3X"}, "mb": {"S": "java-a"}}
    assert parse_client_version(item) is ClientVersion.V3X
    assert parse_client_version(None) is None
    assert parse_client_version({"cv": {"S": "CLIENT_VERSION_9X"}}) is None


def test_lock_item_as_the_lock_client_writes_it() -> None:
    # Seen on the Leader item written by KCL 3.1.3 (dynamodb-lock-client 1.3.0).
    item = {
        "key": {"S": "Leader"},
        "ownerName": {"S": "java-a"},
        "recordVersionNumber": {"S": "d30c7881"},
        "leaseDuration": {"S": "120000"},
    }
    assert LockItem.from_item(item) == LockItem("java-a", "d30c7881", 120.0, released=False)
    assert LockItem.from_item({**item, "isReleased": {"S": "1"}}).released


def test_a_held_lock_is_taken_only_after_its_rvn_stood_still_for_its_duration() -> None:
    watcher = LockWatcher("me")
    held = LockItem("other", "rvn1", 120.0)
    assert watcher.decide(held, None, now=0) is LockAction.WAIT
    assert watcher.decide(held, None, now=119) is LockAction.WAIT
    beat = LockItem("other", "rvn2", 120.0)  # a heartbeat restarts the wait
    assert watcher.decide(beat, None, now=130) is LockAction.WAIT
    assert watcher.decide(beat, None, now=249) is LockAction.WAIT
    assert watcher.decide(beat, None, now=251) is LockAction.TAKE_EXPIRED


def test_absent_released_and_own_locks() -> None:
    watcher = LockWatcher("me")
    assert watcher.decide(None, None, now=0) is LockAction.CREATE
    assert (
        watcher.decide(LockItem("other", "r", 120.0, released=True), None, now=0) is LockAction.TAKE_RELEASED
    )
    assert watcher.decide(LockItem("me", "mine", 120.0), "mine", now=0) is LockAction.HOLD
    # Our name with someone else's rvn (a restarted process with the same id): not ours.
    assert watcher.decide(LockItem("me", "old", 120.0), "mine", now=0) is LockAction.WAIT


def test_default_metric_item_is_what_kcl_publishes() -> None:
    item = stats_item(WorkerStats("py-1", 1796526793))
    assert item == {"wid": {"S": "py-1"}, "lut": {"N": "1796526793"}, "sts": {"M": {}}, "opr": {"M": {}}}
    parsed = stats_from_item(item)
    assert parsed is not None and parsed.uses_default_metric and parsed.valid


@given(
    st.dictionaries(
        st.sampled_from(["C", "M", "NI", "NO"]),
        st.lists(st.floats(-1, 100, allow_nan=False), max_size=10),
        max_size=4,
    ),
    st.integers(0, 2**40),
)
def test_stats_items_round_trip(metrics: dict[str, list[float]], lut: int) -> None:
    stats = WorkerStats("w", lut, metrics, {k: [100] for k in metrics})
    assert stats_from_item(stats_item(stats)) == stats


def test_throughput_is_kbps_since_last_renewal_smoothed() -> None:
    meter = ThroughputMeter()
    assert meter.sample("s", 0, now=0.0) is None  # first sample: nothing to report yet
    assert meter.sample("s", 10 * 1024, now=1.0) == 10.0
    assert meter.sample("s", 10 * 1024, now=2.0) == 5.0  # EMA 0.5 of 0 and 10
    meter.forget("s")
    assert meter.sample("s", 0, now=3.0) is None
