"""Tenant scale: what a flush and a load cost at 20, 2,000 and 10,000 customers.

    .venv/bin/python benchmarks/bench_tenants.py                       # starts its own servers
    .venv/bin/python benchmarks/bench_tenants.py --customers 20,2000 --events 50000

Per customer count, on real local servers (moto S3 + SQS, redis-server, PostgreSQL): synthetic
events (pipeline.producer.synthetic: Zipf-like tenant sizes — a few large customers, a long tail
of tiny ones; 2 % producer retries, 0.5 % invalid) are spread over ``--shards`` shards by the
MD5 of their partition key, as Kinesis does, and each shard's records go through the real
batcher processor (one process, shards in turn) with a flush every ``--flush-records`` records.
The manifests it announced are then loaded the way the inserter does (up to 10 per load) through
the real Loader on a connection that counts statements.

Reported: objects per flush and S3 writes, statements per load (DDL of first sight apart: it runs
once per customer and type), events/s through the batcher and rows/s through the inserter, and
per-cycle latency (flush and load seconds). The batcher figures include moto's S3 and SQS in
the same 2 cores: they show the shape, the hot-path figure is bench_batcher's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import psycopg
from bench_inserter import servers  # the same throwaway stack

from inserter.destinations import open_destination
from inserter.loader import Loader
from inserter.plan import combine_plans, plan_load
from inserter.source import ObjectSource
from pipeline.app.provision import ensure_bucket, ensure_database, ensure_queues
from pipeline.consumer.processor import InitializeInput, ProcessRecordsInput, Record, ShutdownRequestedInput
from pipeline.core.clients import ClientFactory
from pipeline.core.manifest import decode_manifest
from pipeline.core.settings import Settings, load_settings
from pipeline.producer.synthetic import SyntheticConfig, generate
from schemas import load_registry
from workers.batcher import create_processor

ORIGIN_MS = int(datetime(2024, 5, 1, 12, tzinfo=UTC).timestamp() * 1000)
HASH_SPACE = 2**128


class CountingCursor(psycopg.Cursor[Any]):
    """Counts every statement sent (``execute`` and ``copy``) on its connection's tally."""

    def execute(self, query: Any, params: Any = None, **kw: Any) -> CountingCursor:
        self.connection.info_tally += 1  # type: ignore[attr-defined]
        super().execute(query, params, **kw)
        return self

    def copy(self, statement: Any, params: Any = None, **kw: Any) -> Any:
        self.connection.info_tally += 1  # type: ignore[attr-defined]
        return super().copy(statement, params, **kw)


class NullCheckpointer:
    def checkpoint(self, sequence_number: str | None = None, sub_sequence_number: int | None = None) -> None:
        return None


def shard_records(customers: int, events: int, shards: int, seed: int) -> list[list[Record]]:
    """Synthetic records per shard (MD5 of the partition key over equal hash-key ranges)."""
    config = SyntheticConfig(seed=seed, customers=customers, duplicate_ratio=0.02, invalid_ratio=0.005)
    out: list[list[Record]] = [[] for _ in range(shards)]
    for i, r in enumerate(generate(config, events)):
        shard = int.from_bytes(hashlib.md5(r.partition_key.encode()).digest(), "big") * shards // HASH_SPACE
        out[shard].append(Record(r.data, r.partition_key, str(10_000 + i), 0, ORIGIN_MS + i // 100))
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def run_batcher(clients: ClientFactory, settings: Settings, records: list[list[Record]]) -> dict[str, Any]:
    began = time.perf_counter()
    flush_seconds: list[float] = []
    objects = flushes = events = 0
    for shard, recs in enumerate(records):
        proc = create_processor(clients, settings)
        proc.initialize(InitializeInput(f"shardId-{shard:012d}", "TRIM_HORIZON", 0))
        ckpt = NullCheckpointer()
        step = settings.worker.max_records
        for i in range(0, len(recs), step):
            proc.process_records(ProcessRecordsInput(recs[i : i + step], 1000, ckpt))
        proc.shutdown_requested(ShutdownRequestedInput(ckpt))
        m = proc.metrics  # type: ignore[attr-defined]
        objects += m.objects
        flushes += m.batches
        events += len(recs)
        if m.batches:
            flush_seconds.append(m.flush_seconds_sum / m.batches)
    elapsed = time.perf_counter() - began
    return {
        "events": events,
        "flushes": flushes,
        "objects": objects,
        "objects_per_flush": round(objects / max(1, flushes), 1),
        "events_per_s": round(events / elapsed),
        "flush_s_mean_p50": round(statistics.median(flush_seconds), 3) if flush_seconds else 0.0,
        "flush_s_mean_max": round(max(flush_seconds, default=0.0), 3),
        "seconds": round(elapsed, 1),
    }


def drain_manifests(clients: ClientFactory, queue_url: str) -> list[Any]:
    sqs = clients.sqs()
    out: list[Any] = []
    while True:
        got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
        messages = got.get("Messages", [])
        if not messages:
            return out
        for msg in messages:
            out.append(decode_manifest(msg["Body"]))
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=msg["ReceiptHandle"])


def run_inserter(clients: ClientFactory, settings: Settings, manifests: list[Any]) -> dict[str, Any]:
    registry = load_registry()
    bucket = settings.resources.bucket
    dest = open_destination(settings.warehouse, registry, ObjectSource(clients.s3()))
    loader = Loader(dest.dialect, dest.stager)
    plans = [plan_load(m, registry, bucket=bucket) for m in manifests]
    loads = [combine_plans(plans[i : i + 10]) for i in range(0, len(plans), 10)]
    with psycopg.connect(settings.warehouse.url, autocommit=True, cursor_factory=CountingCursor) as conn:
        conn.info_tally = 0  # type: ignore[attr-defined]
        loader.prepare(conn)
        began = time.perf_counter()
        for plan in loads:
            loader.ensure_tables(conn, plan.tables)
        ddl_s, ddl_statements = time.perf_counter() - began, conn.info_tally  # type: ignore[attr-defined]
        statements: list[int] = []
        seconds: list[float] = []
        rows = 0
        began = time.perf_counter()
        for plan in loads:
            before, t0 = conn.info_tally, time.perf_counter()  # type: ignore[attr-defined]
            result = loader.load(conn, plan)
            seconds.append(time.perf_counter() - t0)
            statements.append(conn.info_tally - before)  # type: ignore[attr-defined]
            rows += result.rows_loaded
        elapsed = time.perf_counter() - began
    tables = {t.target for p in loads for t in p.tables}
    return {
        "loads": len(loads),
        "tables": len(tables),
        "first_sight_ddl_s": round(ddl_s, 1),
        "first_sight_ddl_statements": ddl_statements,
        "statements_per_load_p50": statistics.median(statements) if statements else 0,
        "statements_per_load_max": max(statements, default=0),
        "rows": rows,
        "rows_per_s": round(rows / elapsed) if elapsed else 0,
        "load_s_p50": round(pct(seconds, 0.5), 3),
        "load_s_max": round(max(seconds, default=0.0), 3),
    }


def one_scale(base: Settings, customers: int, args: argparse.Namespace) -> dict[str, Any]:
    name = f"tenants-{customers}-{uuid.uuid4().hex[:6]}"
    resources = replace(base.resources, stream=name, bucket=name, queue=name, dead_letter_queue=f"{name}-dlq")
    worker = replace(base.worker, flush_records=args.flush_records, flush_age_seconds=3600.0)
    db = psycopg.conninfo.make_conninfo(base.warehouse.url, dbname=name.replace("-", "_"))
    settings = replace(base, resources=resources, worker=worker, warehouse=replace(base.warehouse, url=db))
    clients = ClientFactory(settings)
    ensure_bucket(clients.s3(), name, settings.aws.region)
    ensure_queues(clients.sqs(), settings.resources)
    queue_url = clients.sqs().get_queue_url(QueueName=name)["QueueUrl"]
    ensure_database(db)
    records = shard_records(customers, args.events, args.shards, args.seed)
    print(f"{customers:,} customers: {args.events:,} events over {args.shards} shards ...", flush=True)
    batcher = run_batcher(clients, settings, records)
    print(f"  batcher  {json.dumps(batcher)}", flush=True)
    manifests = drain_manifests(clients, queue_url)
    inserter = run_inserter(clients, settings, manifests)
    print(f"  inserter {json.dumps(inserter)}", flush=True)
    return {"customers": customers, "batcher": batcher, "inserter": inserter}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", default="20,2000,10000", help="comma-separated customer counts")
    ap.add_argument("--events", type=int, default=100_000, help="records per customer count")
    ap.add_argument("--shards", type=int, default=16)
    ap.add_argument("--flush-records", type=int, default=1_000, help="records per flush and shard")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    with servers(None) as env:
        base = load_settings(env)
        results = [one_scale(base, int(c), args) for c in args.customers.split(",")]
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
