"""``shardhouse status`` against a real worker: a shard's lag rises while its worker is stopped
(SIGSTOP: alive but frozen, as a stalled spot instance) and falls once it runs again."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import orjson
import pytest
from consumer_fleet import Fleet

from pipeline.app.status.collect import StatusScope, collect
from pipeline.app.status.model import Snapshot


class SteadyLoad:
    """A few records every 100 ms, on every shard, until stopped."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        kinesis = self.fleet.clients.kinesis()
        n = 0
        while not self.stop.is_set():
            # Explicit hash keys: one record per quarter of the key space, so every shard ticks.
            records = [{"Data": f"tick-{n}".encode(), "PartitionKey": "k", "ExplicitHashKey": str(q << 126)}
                       for q in range(4)]  # fmt: skip
            assert (
                kinesis.put_records(StreamName=self.fleet.stream, Records=records)["FailedRecordCount"] == 0
            )
            n += 1
            time.sleep(0.1)


@pytest.fixture
def load(fleet: Fleet) -> Iterator[SteadyLoad]:
    lo = SteadyLoad(fleet)
    lo.thread.start()
    try:
        yield lo
    finally:
        lo.stop.set()
        lo.thread.join(timeout=10)


def snapshot(fleet: Fleet) -> Snapshot:
    scope = StatusScope(stream=fleet.stream, apps=(fleet.app,), projector_app=None, queues=(), sample_s=1.5)
    snap = collect(scope, fleet.clients)
    assert snap.problems == []
    return snap


def lags(snap: Snapshot) -> dict[str, int]:
    return {s.shard_id: s.millis_behind for s in snap.shards if s.millis_behind is not None}


def test_lag_rises_while_the_worker_is_stopped_and_falls_when_it_returns(
    fleet: Fleet, load: SteadyLoad
) -> None:
    proc = fleet.start("w1", processor="noop")
    fleet.wait_for("w1 to own every shard", lambda: fleet.split() == [4], timeout=60)

    def caught_up() -> bool:
        snap = snapshot(fleet)
        return len(lags(snap)) == 4 and max(lags(snap).values()) < 2_000 and snap.workers[0].renewing

    fleet.wait_for("w1 caught up", caught_up, timeout=60)

    proc.send_signal(signal.SIGSTOP)
    try:
        time.sleep(1.0)
        first = snapshot(fleet)
        time.sleep(3.0)
        second = snapshot(fleet)
    finally:
        proc.send_signal(signal.SIGCONT)
    assert [(w.worker, w.renewing) for w in second.workers] == [("w1", False)]
    for shard, lag in lags(second).items():
        assert lag >= lags(first)[shard] + 2_500, (shard, lags(first), lags(second))
        assert lag >= 4_000
    ages = {s.shard_id: s.checkpoint_age_s for s in second.shards}
    assert all(age is not None and age >= 4.0 for age in ages.values()), ages

    fleet.wait_for("the lag to fall again", caught_up, timeout=60)


def test_status_command_prints_workers_lag_and_what_it_could_not_read(fleet: Fleet, load: SteadyLoad) -> None:
    fleet.start("w1", processor="noop")
    fleet.wait_for("w1 to own every shard", lambda: fleet.split() == [4], timeout=60)
    env = {**fleet.env(), "SHARDHOUSE_BATCHER_APP": fleet.app, "SHARDHOUSE_PROJECTOR_APP": f"{fleet.app}-none",
           "SHARDHOUSE_QUEUE": f"{fleet.stream}-q", "SHARDHOUSE_DEAD_LETTER_QUEUE": f"{fleet.stream}-dlq"}  # fmt: skip
    cli = [sys.executable, "-c", "from pipeline.app.cli import main; main()", "status", "--sample", "1.5"]
    out = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=60, check=True).stdout
    lines = out.splitlines()
    assert lines[0].startswith(f"shardhouse status — stream {fleet.stream} (4 open shards)")
    assert any(fleet.app in line and "w1" in line and " 4 " in line and "alive" in line for line in lines), (
        out
    )
    assert sum(1 for line in lines if "shardId-" in line and "w1" in line) == 4, out
    assert f"! lease table {fleet.app}-none: does not exist" in out
    assert f"! queue {fleet.stream}-q: does not exist" in out

    doc = orjson.loads(
        subprocess.run([*cli, "--json"], env=env, capture_output=True, timeout=60, check=True).stdout
    )
    assert [(w["worker"], w["leases"]) for w in doc["workers"]] == [("w1", 4)]
