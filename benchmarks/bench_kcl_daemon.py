"""Records/s the Java KCL MultiLangDaemon drains with a no-op processor (pipeline.app.kcl_entry + noop).

    .venv/bin/python benchmarks/bench_kcl_daemon.py --shards 8 --count 16000 --idle-ms 1500 200

Starts its own local stack in a temporary directory (moto for DynamoDB, kinesis-mock for Kinesis:
the Java KCL needs HTTP/2), fills one stream with ``count`` records, pre-creates the leases (so
KCL's random 1-30 s empty-table wait is not measured), then for each ``--idle-ms`` runs a daemon
under a fresh application name and polls the lease table until every shard's checkpoint is at its
last record. Reports:

* ``drain rec/s``: all records divided by the time from "every lease has an owner" to "every
  checkpoint at its shard's last record" (polled every 100 ms): reading from TRIM_HORIZON, the
  MultiLang pipes and the checkpoint round trips, without JVM start and lease taking;
* ``wall s``: daemon start to fully checkpointed (JVM start, lease taking included);
* ``raw GetRecords rec/s``: one boto3 loop reading the same stream: the emulator's ceiling here.

The native runtime's figure comes from the consumer-runtime benchmark on the same stack shape.
"""

from __future__ import annotations

import argparse
import bisect
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from pipeline.app import kcl_daemon
from pipeline.app.servers import stack as local_stack
from pipeline.consumer.shard_sync import stream_pages
from pipeline.core.clients import ClientFactory
from pipeline.core.settings import load_settings

REPO = Path(__file__).resolve().parent.parent


def fill(kinesis: Any, stream: str, count: int, size: int) -> dict[str, list[int]]:
    """Put ``count`` records; return each shard's sorted sequence numbers."""
    pad = b"x" * max(0, size - 40)
    seqs: dict[str, list[int]] = {}
    batch = 500
    for start in range(0, count, batch):
        pending = [
            {"Data": b'{"i":%d,"p":"%s"}' % (i, pad), "PartitionKey": uuid.uuid4().hex}
            for i in range(start, min(count, start + batch))
        ]
        while pending:
            resp = kinesis.put_records(StreamName=stream, Records=pending)
            retry = []
            for entry, result in zip(pending, resp["Records"], strict=True):
                if "ErrorCode" in result:
                    retry.append(entry)
                else:
                    seqs.setdefault(result["ShardId"], []).append(int(result["SequenceNumber"]))
            pending = retry
    return {k: sorted(v) for k, v in seqs.items()}


def raw_get_records(kinesis: Any, stream: str) -> tuple[int, float]:
    t0 = time.perf_counter()
    total = sum(len(records) for _, records in stream_pages(kinesis, stream))
    return total, time.perf_counter() - t0


def covered(dynamodb: Any, table: str, seqs: dict[str, list[int]]) -> tuple[int, int]:
    """(records the lease table's checkpoints account for, leases with an owner)."""
    items = dynamodb.scan(TableName=table, ConsistentRead=True)["Items"]
    done = owned = 0
    for item in items:
        shard = item["leaseKey"]["S"]
        checkpoint = item["checkpoint"]["S"]
        owned += "leaseOwner" in item
        if shard in seqs and checkpoint.isdigit():
            done += bisect.bisect_right(seqs[shard], int(checkpoint))
    return done, owned


def run_daemon(
    settings: Any,
    clients: ClientFactory,
    stream: str,
    seqs: dict[str, list[int]],
    idle_ms: int,
    max_records: int,
    workdir: Path,
) -> dict[str, float]:
    app = f"bench-{uuid.uuid4().hex[:8]}"
    kcl_daemon.precreate_leases(clients.dynamodb(), clients.kinesis(), app, stream)
    cfg = kcl_daemon.DaemonConfig.from_settings(
        settings,
        processor="noop",
        application_name=app,
        worker_id=f"bench-{idle_ms}",
        idle_between_reads_ms=idle_ms,
        max_records=max_records,
        failover_ms=10_000,
        shard_sync_interval_ms=1000,
        parent_shard_poll_ms=1000,
    )
    kcl_daemon.preflight(cfg)
    launch = kcl_daemon.prepare(cfg, workdir=workdir / app, settings=settings)
    total = sum(len(v) for v in seqs.values())
    with open(workdir / f"{app}.log", "ab") as log:
        t_start = time.perf_counter()
        daemon = kcl_daemon.DaemonProcess.start(launch, log=log, cwd=REPO)
        try:
            t_owned: float | None = None
            done = 0
            deadline = time.monotonic() + 600
            while done < total and time.monotonic() < deadline and daemon.alive():
                time.sleep(0.1)
                done, owned = covered(clients.dynamodb(), app, seqs)
                if t_owned is None and owned == len(seqs):
                    t_owned = time.perf_counter()
            t_end = time.perf_counter()
        finally:
            daemon.stop(grace=10)
    if done < total or t_owned is None:
        raise SystemExit(f"daemon did not finish: {done}/{total} checkpointed; log: {workdir / app}.log")
    drain = total / max(1e-9, t_end - t_owned)
    return {"drain_rps": drain, "drain_s": t_end - t_owned, "wall_s": t_end - t_start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--count", type=int, default=48_000)
    parser.add_argument("--record-bytes", type=int, default=250)
    parser.add_argument("--idle-ms", type=int, nargs="+", default=[1500, 200])
    parser.add_argument("--max-records", type=int, nargs="+", default=[10_000, 1_000])
    args = parser.parse_args()

    kcl_daemon.find_jars()
    state_dir = Path(tempfile.mkdtemp(prefix="bench-kcl-"))
    cfg = local_stack.StackConfig.on_free_ports(
        state_dir, with_kinesis_mock=True, npm_dirs=(REPO / ".shardhouse/npm",)
    )
    state, _ = local_stack.up(cfg)
    try:
        env = {**state.env, "AWS_ENDPOINT_URL_KINESIS": state.kinesis_mock_endpoint or ""}
        os.environ.update({k: v for k, v in state.env.items() if k.startswith("AWS_")})
        stream = f"bench{uuid.uuid4().hex[:8]}"
        settings = load_settings({**env, "SHARDHOUSE_STREAM": stream, "SHARDHOUSE_LOG_LEVEL": "WARNING"})
        clients = ClientFactory(settings)
        kinesis = clients.kinesis()
        kinesis.create_stream(StreamName=stream, ShardCount=args.shards)
        kinesis.get_waiter("stream_exists").wait(StreamName=stream, WaiterConfig={"Delay": 1})
        t0 = time.perf_counter()
        seqs = fill(kinesis, stream, args.count, args.record_bytes)
        put_s = time.perf_counter() - t0
        print(
            f"put {args.count} records x {args.record_bytes} B into {args.shards} shards: "
            f"{args.count / put_s:,.0f} rec/s",
            flush=True,
        )
        got, raw_s = raw_get_records(kinesis, stream)
        print(f"raw GetRecords (1 thread): {got} records, {got / raw_s:,.0f} rec/s", flush=True)
        for max_records in args.max_records:
            for idle in args.idle_ms:
                r = run_daemon(settings, clients, stream, seqs, idle, max_records, state_dir)
                print(
                    f"MultiLangDaemon noop maxRecords={max_records} idle={idle} ms: "
                    f"drain {r['drain_rps']:,.0f} rec/s ({r['drain_s']:.1f} s from all leases owned), "
                    f"wall {r['wall_s']:.1f} s (JVM start + lease taking included)",
                    flush=True,
                )
    finally:
        local_stack.down(state_dir, discard=True)


if __name__ == "__main__":
    main()
