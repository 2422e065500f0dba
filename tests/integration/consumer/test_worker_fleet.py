"""The native runtime with real worker processes against moto's Kinesis and DynamoDB."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter

from consumer_fleet import (
    Fleet,
    explain,
    put,
    recorded_positions,
    settled,
    stream_positions,
    unexplained_repeats,
)


def payloads(n: int, tag: str = "r") -> list[bytes]:
    return [f"{tag}-{i:06d}".encode() for i in range(n)]


def test_two_workers_bootstrap_without_duplicate_leases_and_read_everything(fleet: Fleet) -> None:
    sent = payloads(2000)
    put(fleet.clients, fleet.stream, sent)
    fleet.start("w1")
    fleet.start("w2")
    fleet.wait_for("every record recorded", lambda: len(fleet.recorded()) >= len(sent))
    fleet.wait_for("old consumers of stolen shards stopped", lambda: settled(fleet))
    leases = fleet.leases()
    assert sorted(lease.lease_key for lease in leases) == [f"shardId-00000000000{i}" for i in range(4)]
    assert all(lease.lease_owner in {"w1", "w2"} for lease in leases)
    got = Counter(fleet.recorded_data())
    assert set(got) == set(sent)
    # A steal while records flow (the second worker may steal on its first taker run, as KCL's
    # does) re-delivers the victim's batch; nothing else may repeat.
    repeats = unexplained_repeats(fleet)
    assert repeats == [], explain(fleet, repeats)
    # `shardhouse leases` shows each lease: owner, counter, checkpoint, switches, lag.
    out = subprocess.run(
        [sys.executable, "-c", "from pipeline.app.cli import main; main()", "leases", "--app", fleet.app],
        env=fleet.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.splitlines()
    assert out[0] == "mode: 2.x (no KCL 3.x CoordinatorState table)"  # then the leases
    out = out[out.index(next(line for line in out if line.startswith("shard "))) :]
    assert out[0].split()[:3] == ["shard", "owner", "counter"]
    rows = {line.split()[0]: line.split() for line in out[1:]}
    assert set(rows) == {lease.lease_key for lease in leases}
    for lease in fleet.leases():
        _shard, owner, _counter, checkpoint, _switches, lag = rows[lease.lease_key][:6]
        assert owner == lease.lease_owner and checkpoint.split("/")[0] == lease.checkpoint.sequence_number
        assert lag.isdigit()


def test_kill_9_one_of_two_other_takes_all_and_resumes_after_checkpoint(fleet: Fleet) -> None:
    fleet.start("w1")
    fleet.start("w2")
    # Balanced first, so no steal (which re-delivers the victim's uncheckpointed batch) muddies
    # the count: the only hand-over below is the kill.
    fleet.wait_for("2/2", lambda: fleet.split() == [2, 2])
    fleet.wait_for("stolen leases' old consumers stopped", lambda: settled(fleet))
    first = payloads(1200, "a")
    put(fleet.clients, fleet.stream, first)
    fleet.wait_for("first wave recorded", lambda: len(fleet.recorded()) >= len(first))
    fleet.wait_for("first wave checkpointed", lambda: checkpointed_all(fleet))
    before = {lease.lease_key: lease for lease in fleet.leases()}
    fleet.signal("w2", signal.SIGKILL)
    second = payloads(1200, "b")
    put(fleet.clients, fleet.stream, second)
    fleet.wait_for("w1 holds every lease", lambda: set(fleet.owners().values()) == {"w1"}, timeout=60)
    fleet.wait_for("second wave recorded", lambda: set(fleet.recorded_data()) >= set(second))
    after = {lease.lease_key: lease for lease in fleet.leases()}
    moved = [key for key, lease in before.items() if lease.lease_owner == "w2"]
    assert len(moved) == 2
    for key in moved:
        assert after[key].lease_counter > before[key].lease_counter
    resumed_at = {
        str(doc["shard"]): str(doc["seq"])
        for doc in fleet.events()
        if doc["event"] == "initialize" and doc["worker"] == "w1" and doc["shard"] in moved
    }
    assert resumed_at == {key: before[key].checkpoint.sequence_number for key in moved}  # right after it
    # Nothing skipped, nothing repeated: every record of the stream processed exactly once.
    got = recorded_positions(fleet)
    assert set(got) == stream_positions(fleet.clients, fleet.stream)
    assert max(got.values()) == 1
    assert set(fleet.recorded_data()) == set(first) | set(second)


def checkpointed_all(fleet: Fleet) -> bool:
    """Every lease's checkpoint is at the last record recorded for its shard."""
    last: dict[str, int] = {}
    for doc in fleet.recorded():
        last[str(doc["shard"])] = max(last.get(str(doc["shard"]), 0), int(str(doc["seq"])))
    return (
        all(
            lease.checkpoint.sequence_number == str(last[lease.lease_key])
            for lease in fleet.leases()
            if lease.lease_key in last
        )
        and len(last) == 4
    )


def test_graceful_sigterm_hands_leases_over_without_waiting_for_failover(fleet: Fleet) -> None:
    put(fleet.clients, fleet.stream, payloads(400))
    # A long failover: a handoff that waited for expiry would take > 30 s.
    fleet.start("w1", SHARDHOUSE_FAILOVER_MS="30000")
    fleet.wait_for("w1 holds all", lambda: set(fleet.owners().values()) == {"w1"})
    fleet.start("w2", SHARDHOUSE_FAILOVER_MS="30000")
    time.sleep(2)
    fleet.signal("w1", signal.SIGTERM)
    gap = fleet.wait_for("w2 holds every lease", lambda: set(fleet.owners().values()) == {"w2"}, timeout=25)
    assert gap < 25  # well under the 30 s failover: released, not expired
    assert fleet.procs["w1"].wait(timeout=20) == 0
    more = payloads(300, "after")
    put(fleet.clients, fleet.stream, more)
    fleet.wait_for("w2 consumes after the handoff", lambda: set(fleet.recorded_data()) >= set(more))
    got = recorded_positions(fleet)
    assert set(got) == stream_positions(fleet.clients, fleet.stream)
    assert max(got.values()) == 1


def test_balancing_six_leases_from_one_worker_to_two(fleet: Fleet) -> None:
    from pipeline.app.provision import ensure_stream

    stream = f"{fleet.stream}-six"
    ensure_stream(fleet.clients.kinesis(), stream, 6)
    fleet.stream = stream
    fleet.start("w1")
    fleet.wait_for("w1 holds six", lambda: list(fleet.owners().values()).count("w1") == 6)
    fleet.start("w2")
    # One steal per taker run (2 x (failover + epsilon), about 6 s here) until 3/3.
    fleet.wait_for("3/3", lambda: fleet.split() == [3, 3], timeout=90)
