"""Consumer runtime benchmark: records/s with a no-op processor, the emulator's raw GetRecords
ceiling beside it, and the graceful handoff gap.

    .venv/bin/python benchmarks/bench_consumer.py --records 200000 --shards 8

Starts its own moto server and redis-server (free ports, temporary state dir).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.app.provision import ensure_stream
from pipeline.app.servers import stack
from pipeline.consumer.lease_store import LeaseStore
from pipeline.consumer.shard_sync import stream_pages
from pipeline.core.clients import ClientFactory
from pipeline.core.settings import load_settings

CLI = [sys.executable, "-c", "from pipeline.app.cli import main; main()"]


def fill(clients: ClientFactory, stream: str, n: int) -> None:
    kinesis = clients.kinesis()
    blob = b"x" * 250
    for start in range(0, n, 500):
        count = min(500, n - start)
        kinesis.put_records(
            StreamName=stream, Records=[{"Data": blob, "PartitionKey": f"k{start + i}"} for i in range(count)]
        )


def raw_ceiling(clients: ClientFactory, stream: str, last: dict[str, str]) -> float:
    """Read every shard once (recording each shard's last sequence number into ``last``)."""
    kinesis = clients.kinesis()
    total, start = 0, time.perf_counter()
    for shard_id, records in stream_pages(kinesis, stream):
        total += len(records)
        last[shard_id] = records[-1]["SequenceNumber"]
    return total / (time.perf_counter() - start)


def all_checkpointed(clients: ClientFactory, app: str, last: dict[str, str]) -> bool:
    """Every shard's checkpoint has reached its last record (works for any engine's sequences)."""
    got = {
        lease.lease_key: lease.checkpoint.sequence_number
        for lease in LeaseStore(clients.dynamodb(), app).list_leases()
    }
    return all(got.get(shard) == seq for shard, seq in last.items())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument(
        "--kinesis",
        type=stack.KinesisEngine,
        choices=list(stack.KinesisEngine),
        default=stack.KinesisEngine.MOTO,
        help="kinesis-mock: the engine the Java MultiLangDaemon benchmark uses",
    )
    args = parser.parse_args()
    state_dir = Path(tempfile.mkdtemp(prefix="bench-consumer-"))
    cfg = stack.StackConfig.on_free_ports(state_dir, kinesis_engine=args.kinesis)
    state, _ = stack.up(cfg)
    try:
        env = {
            **os.environ,
            **state.env,
            "SHARDHOUSE_STREAM": "bench",
            "SHARDHOUSE_IDLE_BETWEEN_READS_MS": "200",
        }
        os.environ.update(state.env)  # the fake credentials boto3 reads itself
        clients = ClientFactory(load_settings(env))
        ensure_stream(clients.kinesis(), "bench", args.shards)
        t0 = time.perf_counter()
        fill(clients, "bench", args.records)
        print(f"filled {args.records:,} records in {time.perf_counter() - t0:.1f}s")
        last: dict[str, str] = {}
        ceiling = raw_ceiling(clients, "bench", last)
        print(f"emulator raw GetRecords ceiling (one client, sequential): {ceiling:,.0f} records/s")

        proc = subprocess.Popen([*CLI, "worker", "--app", "bench-noop", "--processor", "noop", "--worker-id", "a"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        start = time.perf_counter()
        while not _table_ready(clients) or not all_checkpointed(clients, "bench-noop", last):
            time.sleep(0.2)
            if time.perf_counter() - start > 600:
                raise SystemExit("timed out")
        elapsed = time.perf_counter() - start
        print(f"native worker, noop processor, {args.shards} shards: {args.records / elapsed:,.0f} records/s "
              f"({elapsed:.1f}s incl. start-up)")  # fmt: skip

        second = subprocess.Popen([*CLI, "worker", "--app", "bench-noop", "--processor", "noop", "--worker-id", "b"],
                                  env={**env, "SHARDHOUSE_FAILOVER_MS": "10000"},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        time.sleep(3)
        t_signal = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        store = LeaseStore(clients.dynamodb(), "bench-noop")
        while {lease.lease_owner for lease in store.list_leases()} != {"b"}:
            time.sleep(0.02)
        gap = time.perf_counter() - t_signal
        print(f"graceful handoff: SIGTERM → other worker holds all {args.shards} leases in {gap:.2f}s "
              f"(failover is 10 s; KCL waits failover + a taker period)")  # fmt: skip
        second.send_signal(signal.SIGTERM)
        second.wait(30)
        proc.wait(30)
    finally:
        stack.down(state_dir, discard=True)


def _table_ready(clients: ClientFactory) -> bool:
    try:
        return bool(LeaseStore(clients.dynamodb(), "bench-noop").list_leases())
    except Exception:
        return False


if __name__ == "__main__":
    main()
