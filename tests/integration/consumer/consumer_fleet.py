"""Helpers for runtime tests: a provisioned stream, worker processes, the recorder's output."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from pipeline.app.provision import ensure_stream
from pipeline.consumer.diagnostic import recorder_keys
from pipeline.consumer.lease_store import LeaseStore
from pipeline.consumer.leases import Lease
from pipeline.consumer.shard_sync import stream_pages
from pipeline.core.clients import ClientFactory


@dataclass
class Fleet:
    """Worker processes of one application on one stream, all killed at teardown."""

    clients: ClientFactory
    stream: str
    app: str
    tmp: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "SHARDHOUSE_STREAM": self.stream,
            "SHARDHOUSE_FAILOVER_MS": "3000",
            "SHARDHOUSE_IDLE_BETWEEN_READS_MS": "200",
            "SHARDHOUSE_PARENT_POLL_MS": "500",
            "SHARDHOUSE_LOG_LEVEL": "INFO",
            **extra,
        }

    def start(self, worker_id: str, processor: str = "recorder", **env: str) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{worker_id}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [sys.executable, "-c", "from pipeline.app.cli import main; main()", "worker",
             "--app", self.app, "--processor", processor, "--worker-id", worker_id],
            stdout=log, stderr=log, env=self.env(**env),
        )  # fmt: skip
        self.procs[worker_id] = proc
        return proc

    def signal(self, worker_id: str, sig: signal.Signals) -> None:
        self.procs[worker_id].send_signal(sig)

    def leases(self) -> list[Lease]:
        return LeaseStore(self.clients.dynamodb(), self.app).list_leases()

    def owners(self) -> dict[str, str | None]:
        return {lease.lease_key: lease.lease_owner for lease in self.leases()}

    def split(self) -> list[int]:
        """Leases per worker, sorted; [] while any lease is unowned (mid-take is not balanced)."""
        owners = list(self.owners().values())
        return [] if None in owners else sorted(Counter(owners).values())

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = 60.0) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            try:
                if check():
                    return time.monotonic() - start
            except Exception:
                pass
            time.sleep(0.1)
        logs = "\n".join(p.read_text()[-2000:] for p in self.tmp.glob("*.log"))
        raise AssertionError(f"timed out waiting for {what}\n{logs}")

    def recorded(self) -> list[dict[str, object]]:
        raw = self.clients.redis().lrange(recorder_keys(self.stream)[0], 0, -1)
        return [orjson.loads(item) for item in raw]

    def events(self) -> list[dict[str, object]]:
        raw = self.clients.redis().lrange(recorder_keys(self.stream)[1], 0, -1)
        return [orjson.loads(item) for item in raw]

    def recorded_data(self) -> list[bytes]:
        return [base64.b64decode(str(doc["data"])) for doc in self.recorded()]

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture
def fleet(clients: ClientFactory, unique_name: str, tmp_path: Path) -> Iterator[Fleet]:
    ensure_stream(clients.kinesis(), unique_name, 4)
    f = Fleet(clients=clients, stream=unique_name, app=f"{unique_name}-app", tmp=tmp_path)
    try:
        yield f
    finally:
        f.stop_all()


def put(clients: ClientFactory, stream: str, payloads: list[bytes]) -> None:
    kinesis = clients.kinesis()
    for start in range(0, len(payloads), 500):
        chunk = payloads[start : start + 500]
        out = kinesis.put_records(
            StreamName=stream,
            Records=[{"Data": p, "PartitionKey": f"pk-{start + i}"} for i, p in enumerate(chunk)],
        )
        assert out["FailedRecordCount"] == 0


def stream_positions(clients: ClientFactory, stream: str) -> set[tuple[str, str]]:
    """Every (shard, sequence number) the stream holds, read straight from Kinesis."""
    pages = stream_pages(clients.kinesis(), stream)
    return {(shard_id, r["SequenceNumber"]) for shard_id, page in pages for r in page}


def recorded_positions(fleet: Fleet) -> Counter[tuple[str, str]]:
    return Counter((str(doc["shard"]), str(doc["seq"])) for doc in fleet.recorded())


def unexplained_repeats(fleet: Fleet) -> list[tuple[str, str, int]]:
    """Records delivered more than once where an earlier delivery is not explained by a lost lease.

    At-least-once is KCL's contract: when a lease is stolen, the victim's batch in flight is
    delivered again by the thief, and the victim learns it lost the lease when its checkpoint is
    refused (or its renewal fails). Victim and thief may deliver in either order, so: of the
    workers that delivered a record, all but one must have lost that shard's lease at some point.
    Any other repeat is a bug.
    """
    lost = {
        (str(e["worker"]), str(e["shard"]))
        for e in fleet.events()
        if e["event"] in {"checkpoint_refused", "lease_lost"}
        or (e["event"] == "shutdown_requested" and e["refused"])
    }
    deliveries: dict[tuple[str, str, int], list[str]] = {}
    for doc in fleet.recorded():
        key = (str(doc["shard"]), str(doc["seq"]), int(str(doc["subseq"])))
        deliveries.setdefault(key, []).append(str(doc["worker"]))
    return [
        key
        for key, workers in deliveries.items()
        if len(workers) > 1 and sum((w, key[0]) not in lost for w in workers) > 1
    ]


def explain(fleet: Fleet, keys: list[tuple[str, str, int]]) -> str:
    """Who delivered these records when, and every lifecycle event of their shards (for failures)."""
    shards = {k[0] for k in keys}
    wanted = {(k[0], k[1]) for k in keys}
    lines = [
        f"record {doc['shard']} {doc['seq']} by {doc['worker']} at {doc['at']}"
        for doc in fleet.recorded()
        if (doc["shard"], doc["seq"]) in wanted
    ]
    lines += [str(e) for e in fleet.events() if e["shard"] in shards]
    return "\n".join(lines)


def settled(fleet: Fleet) -> bool:
    """Every consumer that started on a shard now owned by someone else has ended (lease_lost, or
    shutdown_requested on a graceful hand-over, or shard_ended).

    Until then a stolen shard's old consumer may still deliver a batch (KCL's victim learns of a
    steal at its next renewal), so tests that count exact deliveries wait for this.
    """
    owners = fleet.owners()
    started: set[tuple[str, str]] = set()
    lost: set[tuple[str, str]] = set()
    for e in fleet.events():
        pair = (str(e["worker"]), str(e["shard"]))
        if e["event"] == "initialize":
            started.add(pair)
            lost.discard(pair)
        elif e["event"] in {"lease_lost", "shutdown_requested", "shard_ended"}:
            lost.add(pair)
    return all(pair in lost for pair in started if owners.get(pair[1]) != pair[0])
