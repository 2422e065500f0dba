"""Producer throughput against the running local stack (``shardhouse up``) or AWS_ENDPOINT_URL.

    .venv/bin/python benchmarks/bench_produce.py --count 50000 --record-bytes 250

Creates a fresh stream per configuration, sends ``count`` records with the Producer SDK (plain
and KPL-aggregated, at each concurrency given), reads them back and reports records/s and
whether every record arrived (moto loses records under concurrent writes, so the check is part
of the benchmark). Streams are deleted afterwards.
"""

from __future__ import annotations

import argparse
import time
import uuid
from typing import Any

from pipeline.app.cli import context
from pipeline.app.provision import ensure_stream
from pipeline.consumer.shard_sync import stream_pages
from pipeline.producer.client import Producer


def records(count: int, size: int) -> list[tuple[bytes, str]]:
    pad = b"x" * max(0, size - 60)
    return [
        (
            b'{"event_id":"%s","customer_id":"c%d","p":"%s"}' % (uuid.uuid4().hex.encode(), i % 100, pad),
            f"c{i % 100}",
        )
        for i in range(count)
    ]


def count_stream(kinesis: Any, stream: str) -> int:
    return sum(len(records) for _, records in stream_pages(kinesis, stream))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=50_000)
    parser.add_argument("--record-bytes", type=int, default=250)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    kinesis = context.clients().kinesis()
    data = records(args.count, args.record_bytes)
    print(f"{args.count:,} records of ~{args.record_bytes} B to {kinesis.meta.endpoint_url}")
    for aggregated in (False, True):
        for concurrency in args.concurrency:
            stream = f"bench-produce-{uuid.uuid4().hex[:8]}"
            ensure_stream(kinesis, stream, args.shards)
            source: Any = data
            if aggregated:
                from pipeline.producer.aggregation import aggregate, load_shard_map

                source = aggregate(data, shard_map=load_shard_map(kinesis, stream))
            started = time.monotonic()
            result = Producer(kinesis, stream, concurrency=concurrency).put(source)
            elapsed = time.monotonic() - started
            arrived = count_stream(kinesis, stream)
            kind = "aggregated" if aggregated else "plain"
            print(
                f"  {kind:10} concurrency {concurrency}: {args.count / elapsed:>9,.0f} user rec/s "
                f"({result.sent:,} Kinesis records, {result.calls} calls, {elapsed:.1f}s); "
                f"read back {arrived:,}/{result.sent:,} Kinesis records"
            )
            kinesis.delete_stream(StreamName=stream, EnforceConsumerDeletion=True)


if __name__ == "__main__":
    main()
