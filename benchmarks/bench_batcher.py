"""Batcher hot path, memory under many open partitions, and Redis bytes per remembered id.

    .venv/bin/python benchmarks/bench_batcher.py --events 1000000              # all three modes
    .venv/bin/python benchmarks/bench_batcher.py --mode hotpath --events 1000000
    .venv/bin/python benchmarks/bench_batcher.py --mode memory --events 1000000
    .venv/bin/python benchmarks/bench_batcher.py --mode redis --ids 5000000

Redis is a real redis-server: the benchmark starts its own on a free port (pipeline.app.servers),
or uses ``REDIS_URL`` if set. Parquet goes to **local files** (a temporary directory, write-once
like S3 with If-None-Match), SQS announcements to an in-memory list: the benchmark measures the
process, not the emulators.

* ``hotpath``: one process, one shard. Synthetic events of 372 B mean (``--event-bytes N``: all
  N bytes; pipeline.producer.synthetic, 2 % producer retries, 0.5 % invalid) are first run stage
  by stage — decode+validate (+ buffer), dedupe pack, Redis check, Arrow build, Parquet encode,
  file write, Redis mark — then through the real BatcherProcessor (the check overlaps the Arrow
  build there). Reports events/s overall, the cost of each stage, and peak RSS (ru_maxrss; it
  includes the input records held in memory, reported separately).
* ``memory``: one process, 16 shards, 200 customers (≈1,000 open customer/type/version groups
  per shard), default flush thresholds and max_buffer_bytes; inputs are generated on the fly
  (not held) and delivered 10,000 records per call, round-robin over shards. Reports peak RSS
  and how many flushes memory pressure forced.
* ``redis``: marks ``--ids`` ids of one hour bucket into an empty redis-server and reports
  used_memory per id, hash encodings and levels, next to a plain SET-per-id baseline.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import redis

from pipeline.app.servers import binaries
from pipeline.app.servers.process import free_port, spawn, stop_pid, wait_for_port
from pipeline.consumer.processor import (
    InitializeInput,
    ProcessRecordsInput,
    Record,
    ShutdownRequestedInput,
)
from pipeline.core.manifest import BatchManifest
from pipeline.core.retry import Backoff
from pipeline.core.settings import Settings, WorkerSettings
from pipeline.producer.synthetic import SyntheticConfig, generate
from schemas import InvalidEvent, load_registry
from workers.batcher import BatcherContext, BatcherProcessor
from workers.batcher.budget import MemoryBudget
from workers.batcher.buffer import ShardBuffer
from workers.batcher.commit import FlushDeps, build_tables, encode_objects
from workers.batcher.context import tune_interpreter
from workers.batcher.dedupe import RedisDedupeStore, pack_batch
from workers.batcher.policy import FlushPolicy, FlushReason
from workers.batcher.sinks import StoredObject
from workers.idset.layout import DedupeLayout

MiB = 1024 * 1024
ORIGIN_MS = int(datetime(2024, 5, 1, 12, tzinfo=UTC).timestamp() * 1000)


# -- adapters for the benchmark ---------------------------------------------------------------


class LocalDirStore:
    """Write-once files under a directory (the ObjectStore contract, like S3 with If-None-Match)."""

    def __init__(self, root: Path, *, keep: bool = True) -> None:
        self.root = root
        self.keep = keep
        self.bytes = 0
        self.objects = 0

    def put_once(
        self, key: str, body: bytes, *, metadata: Mapping[str, str], content_type: str
    ) -> StoredObject:
        self.bytes += len(body)
        self.objects += 1
        if self.keep:
            path = self.root / key
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                with open(path, "xb") as f:
                    f.write(body)
            except FileExistsError:
                return StoredObject(key, path.stat().st_size, dict(metadata), created=False)
        return StoredObject(key, len(body), dict(metadata), created=True)

    def read(self, key: str) -> bytes:
        return (self.root / key).read_bytes()


@dataclass
class ListAnnouncer:
    manifests: int = 0

    def announce(self, manifest: BatchManifest) -> None:
        self.manifests += 1


@dataclass
class CountingCheckpointer:
    calls: int = 0

    def checkpoint(self, sequence_number: str | None = None, sub_sequence_number: int | None = None) -> None:
        self.calls += 1


@contextmanager
def redis_url() -> Iterator[str]:
    """REDIS_URL if set, else a private redis-server on a free port (stopped afterwards)."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="bench-redis-"))
    log = workdir / "redis.log"
    cmd = [binaries.redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
           "--appendonly", "no", "--dir", str(workdir)]  # fmt: skip
    pid = spawn(cmd, log_path=log)
    try:
        wait_for_port("redis-server", "127.0.0.1", port, pid=pid, log_path=log)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop_pid(pid)


@contextmanager
def redis_server() -> Iterator[redis.Redis]:
    """A client of :func:`redis_url`'s server, once a private one answers."""
    with redis_url() as url:
        client = redis.Redis.from_url(url, socket_timeout=30)
        if "REDIS_URL" not in os.environ:
            for _ in range(100):
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.05)
        yield client


def context(
    client: redis.Redis, store: Any, *, stream: str, worker: WorkerSettings, executor: ThreadPoolExecutor
) -> BatcherContext:
    tune_interpreter(worker)
    registry = load_registry()
    layout = DedupeLayout.for_stream(stream, 3600)
    deps = FlushDeps(
        stream=stream,
        bucket="local",
        registry=registry,
        layout=layout,
        dedupe=RedisDedupeStore(client, layout),
        store=store,
        announcer=ListAnnouncer(),
        executor=executor,
        backoff=Backoff(),
    )
    return BatcherContext(
        settings=Settings(worker=worker),
        registry=registry,
        policy=FlushPolicy.from_settings(worker),
        budget=MemoryBudget(worker.max_buffer_bytes),
        deps=deps,
        prom=None,
    )


def rss_mib() -> float:
    """Current RSS (from /proc), MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MiB


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def exact_bytes(data: bytes) -> bytes:
    """A right-sized copy: orjson's output (the synthetic generator's) keeps a ~4 KiB allocation
    per record, which would make held inputs look 10x their size; Kinesis records arrive from
    botocore as exact-sized bytes."""
    return memoryview(data).tobytes()


def trim() -> None:
    """Return freed heap to the OS so RSS readings mean what is held."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def make_records(count: int, *, seed: int = 1, customers: int = 20, event_bytes: int = 0) -> list[Record]:
    config = SyntheticConfig(seed=seed, customers=customers, duplicate_ratio=0.02, invalid_ratio=0.005)
    resize = partial(sized, size=event_bytes, optional=optional_fields()) if event_bytes else None
    out = []
    for i, r in enumerate(generate(config, count)):
        data = resize(r.data) if resize and r.valid else r.data
        out.append(Record(exact_bytes(data), r.partition_key, str(10_000 + i), 0, ORIGIN_MS + i // 100))
    trim()
    return out


def optional_fields() -> dict[tuple[str, int], list[str]]:
    """Per (type, version), the payload fields the schema does not require, last first."""
    return {
        (et.definition.type, et.definition.version): [
            f.name for f in reversed(et.definition.fields) if not f.required
        ]
        for et in load_registry().types()
    }


def sized(data: bytes, *, size: int, optional: dict[tuple[str, int], list[str]]) -> bytes:
    """A valid event at exactly ``size`` bytes, so runs compare at a fixed record size: optional
    payload fields are dropped while it is too long, then a ``pad`` string (a field the schema
    does not know, which the validator skips) fills it. A retry re-sends the same bytes."""
    event = orjson.loads(data)
    payload = event["payload"]
    droppable = list(optional.get((event["type"], event["version"]), ()))
    while True:
        payload["pad"] = ""
        short = size - len(orjson.dumps(event))
        if short >= 0:
            payload["pad"] = "x" * short
            return orjson.dumps(event)
        if not droppable:
            raise SystemExit(f"--event-bytes {size}: a {event['type']} event needs {size - short} bytes")
        payload.pop(droppable.pop(0), None)


# -- hot path ---------------------------------------------------------------------------------


@dataclass
class Stages:
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    @contextmanager
    def time(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[name] += time.perf_counter() - start


class GcPauses:
    """Time the cyclic collector spends per generation (gc.callbacks), so a run shows its share."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.counts = [0, 0, 0]
        self._started = 0.0
        gc.callbacks.append(self._observe)

    def _observe(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        generation = info["generation"]
        self.seconds[generation] += time.perf_counter() - self._started
        self.counts[generation] += 1

    def take(self) -> str:
        text = ", ".join(
            f"gen{g} {n} x {1000 * s:.0f} ms"
            for g, (n, s) in enumerate(zip(self.counts, self.seconds, strict=True))
        )
        self.seconds, self.counts = [0.0, 0.0, 0.0], [0, 0, 0]
        return text


def hotpath(args: argparse.Namespace) -> None:
    print(f"generating {args.events:,} synthetic events ...", flush=True)
    records = make_records(args.events, event_bytes=args.event_bytes)
    pauses = GcPauses()
    input_mib = sum(len(r.binary_data) for r in records) / MiB
    mean = sum(len(r.binary_data) for r in records) / len(records)
    base_rss = rss_mib()
    print(f"  mean record {mean:.0f} bytes, {input_mib:.0f} MiB of input; RSS with inputs {base_rss:.0f} MiB")
    worker = WorkerSettings()
    batch_size = worker.flush_records
    with redis_server() as client, tempfile.TemporaryDirectory(prefix="bench-parquet-") as tmp:
        executor = ThreadPoolExecutor(16)
        # 1. stage by stage (sequential), on the real functions
        store = LocalDirStore(Path(tmp) / "stages")
        ctx = context(client, store, stream=f"bench-{uuid.uuid4().hex[:8]}", worker=worker, executor=executor)
        deps, registry, layout = ctx.deps, ctx.registry, ctx.deps.layout
        dedupe = deps.dedupe
        stages = Stages()
        gc.collect()
        total_start = time.perf_counter()
        for start in range(0, len(records), batch_size):
            chunk = records[start : start + batch_size]
            buf = ShardBuffer("shardId-000000000000")
            with stages.time("1 decode+validate+buffer"):
                for record in chunk:
                    try:
                        event = registry.decode(record.binary_data)
                    except InvalidEvent as exc:
                        buf.add_invalid(record, exc.reason, exc.detail)
                    else:
                        buf.add_valid(record, event)
            batch = buf.seal(FlushReason.RECORDS)
            with stages.time("2 dedupe pack (uuid, hour, crc)"):
                ids = pack_batch(layout, batch.types)
            with stages.time("3 redis check (1 round trip)"):
                checked = dedupe.check("b" + batch.last.sequence_number, ids)
            with stages.time("4 arrow build"):
                tables = build_tables(registry, batch)
            with stages.time("5 parquet encode (zstd)"):
                writes = encode_objects(batch, tables, checked.seen)
            with stages.time("6 write files"):
                for _group, key, body, meta in writes:
                    store.put_once(key, body, metadata=meta.to_s3("b"), content_type="x")
            with stages.time("7 redis mark (1 round trip)"):
                kept = [i for i, seen in zip(ids, checked.seen, strict=True) if not seen]
                dedupe.mark("b" + batch.last.sequence_number, kept)
        stage_total = time.perf_counter() - total_start
        n = len(records)
        print(f"\nstages, sequential, {n:,} events in batches of {batch_size:,}:")
        for name, secs in sorted(stages.seconds.items()):
            share = 100 * secs / stage_total
            print(f"  {name:36s} {secs:7.2f} s  {1e6 * secs / n:6.2f} µs/event  {share:5.1f} %")
        per_event = 1e6 * stage_total / n
        print(
            f"  {'total':36s} {stage_total:7.2f} s  {per_event:6.2f} µs/event"
            f"  -> {n / stage_total:,.0f} events/s"
        )
        print(f"  parquet: {store.objects:,} objects, {store.bytes / MiB:.1f} MiB")

        # 2. the real processor end to end (check overlapped with the Arrow build)
        rates = []
        for run in range(args.repeats):
            store = LocalDirStore(Path(tmp) / f"run{run}")
            ctx = context(
                client, store, stream=f"bench-{uuid.uuid4().hex[:8]}", worker=worker, executor=executor
            )
            proc = BatcherProcessor(ctx)
            proc.initialize(InitializeInput("shardId-000000000000", "TRIM_HORIZON", 0))
            ckpt = CountingCheckpointer()
            gc.collect()
            pauses.take()
            began = time.perf_counter()
            for i in range(0, n, worker.max_records):
                proc.process_records(ProcessRecordsInput(records[i : i + worker.max_records], 1000, ckpt))
            proc.shutdown_requested(ShutdownRequestedInput(ckpt))
            elapsed = time.perf_counter() - began
            rates.append(n / elapsed)
            m = proc.metrics
            print(
                f"\nprocessor run {run + 1}: {n:,} events in {elapsed:.2f} s -> {n / elapsed:,.0f} events/s "
                f"({m.batches} flushes, {m.rows_written:,} rows, {m.duplicates_dropped:,} duplicates, "
                f"{m.invalid:,} invalid, flush p-max {m.flush_seconds_max:.2f} s, {store.objects} objects)"
                f"\n  collector pauses: {pauses.take()}"
            )
        print(f"\nprocessor median: {statistics.median(rates):,.0f} events/s/process")
        print(f"peak RSS {peak_rss_mib():.0f} MiB (includes {base_rss:.0f} MiB of interpreter + inputs held)")
        executor.shutdown()


# -- memory under pressure --------------------------------------------------------------------


def memory(args: argparse.Namespace) -> None:
    shards, customers = args.shards, args.customers
    worker = WorkerSettings()
    print(
        f"{shards} shards, {customers} customers, {args.events:,} events; flush at {worker.flush_records:,} "
        f"records / {worker.flush_bytes // MiB} MiB / {worker.flush_age_seconds:.0f} s, "
        f"max_buffer_bytes {worker.max_buffer_bytes // MiB} MiB, {worker.max_records:,} records per delivery"
    )
    base = rss_mib()
    with redis_server() as client:
        executor = ThreadPoolExecutor(16)
        store = LocalDirStore(Path("/nonexistent"), keep=False)  # bytes are produced, then dropped
        ctx = context(client, store, stream=f"bench-{uuid.uuid4().hex[:8]}", worker=worker, executor=executor)
        procs = []
        for s in range(shards):
            proc = BatcherProcessor(ctx)
            proc.initialize(InitializeInput(f"shardId-{s:012d}", "TRIM_HORIZON", 0))
            procs.append(proc)
        ckpts = [CountingCheckpointer() for _ in range(shards)]
        pending: list[list[Record]] = [[] for _ in range(shards)]
        seqs = [0] * shards
        config = SyntheticConfig(seed=9, customers=customers, duplicate_ratio=0.02, invalid_ratio=0.005)
        start = time.perf_counter()
        peak_buffer = 0
        for i, r in enumerate(generate(config, args.events)):
            shard = zlib.crc32(r.partition_key.encode()) % shards
            seqs[shard] += 1
            pending[shard].append(
                Record(exact_bytes(r.data), r.partition_key, str(seqs[shard]), 0, ORIGIN_MS + i // 100)
            )
            if len(pending[shard]) >= worker.max_records:
                procs[shard].process_records(ProcessRecordsInput(pending[shard], 1000, ckpts[shard]))
                pending[shard] = []
                peak_buffer = max(peak_buffer, ctx.budget.total)
        for shard in range(shards):
            if pending[shard]:
                procs[shard].process_records(ProcessRecordsInput(pending[shard], 1000, ckpts[shard]))
            procs[shard].shutdown_requested(ShutdownRequestedInput(ckpts[shard]))
        elapsed = time.perf_counter() - start
        reasons: Counter[str] = Counter()
        groups = 0
        for proc in procs:
            reasons.update(proc.metrics.flushes_by_reason)
            groups += proc.metrics.objects
        flushes = sum(reasons.values())
        rate = args.events / elapsed
        print(f"  {args.events:,} events in {elapsed:.1f} s ({rate:,.0f} events/s incl. generation)")
        print(f"  flushes: {dict(reasons)}; {groups:,} objects ({groups / max(1, flushes):.0f} per flush)")
        budget = worker.max_buffer_bytes // MiB
        print(f"  peak buffered (estimate) {peak_buffer / MiB:.0f} MiB of {budget} MiB budget")
        print(f"  peak RSS {peak_rss_mib():.0f} MiB (interpreter + libraries before start: {base:.0f} MiB)")
        executor.shutdown()
    # What one buffered event really costs (Python allocations), against the budget's estimate.
    records = make_records(50_000, seed=5, customers=customers)
    registry = load_registry()
    gc.collect()
    tracemalloc.start()
    buf = ShardBuffer("shardId-000000000000")
    for record in records:
        try:
            buf.add_valid(record, registry.decode(record.binary_data))
        except InvalidEvent as exc:
            buf.add_invalid(record, exc.reason, exc.detail)
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    raw = sum(len(r.binary_data) for r in records) / len(records)
    print(
        f"  one buffered event: {held / len(records):.0f} bytes allocated (tracemalloc: decoded values, "
        f"flat row tuple, list/set slots; mean record {raw:.0f} bytes, not kept), budget estimate "
        f"{buf.memory / len(records):.0f} bytes"
    )


# -- Redis bytes per id -----------------------------------------------------------------------


def redis_bytes(args: argparse.Namespace) -> None:
    n = args.ids
    with redis_server() as client:
        if os.environ.get("REDIS_URL"):
            print("REDIS_URL is set: measuring on a shared server, numbers include other traffic")
        layout = DedupeLayout.for_stream("mem", 86400)
        store = RedisDedupeStore(client, layout)
        now = datetime.now(UTC)
        client.flushdb()
        before = int(client.info("memory")["used_memory"])
        batch = 50_000
        start = time.perf_counter()
        mark_s = check_s = 0.0
        for i in range(0, n, batch):
            ids = [layout.pack(f"c{j % 200}", str(uuid.uuid4()), now) for j in range(min(batch, n - i))]
            t = time.perf_counter()
            store.check(None, ids)
            check_s += time.perf_counter() - t
            t = time.perf_counter()
            store.mark(None, ids)
            mark_s += time.perf_counter() - t
        elapsed = time.perf_counter() - start
        info = client.info("memory")
        used = int(info["used_memory"]) - before
        per_id = used / n
        levels: Counter[str] = Counter()
        sizes = []
        for i, key in enumerate(client.scan_iter(match=f"{layout.prefix}*", count=10_000)):
            parts = key.decode().split(":")
            levels[parts[3]] += 1
            if i % 50 == 0:
                sizes.append(client.memory_usage(key) or 0)
        print(f"{n:,} ids in one hour bucket; {layout.ids_per_key} ids per full key:")
        print(f"  used_memory +{used / MiB:.1f} MiB -> {per_id:.1f} bytes per id")
        print(f"  keys per level: {dict(sorted(levels.items()))}")
        print(f"  MEMORY USAGE of sampled keys: median {statistics.median(sizes):.0f} bytes")
        print(
            f"  check {1e6 * check_s / n:.2f} µs/id, mark {1e6 * mark_s / n:.2f} µs/id "
            f"(batches of {batch:,}; {elapsed:.0f} s incl. id generation)"
        )
        print(
            f"  one day of 1e9 events at this density: {1e9 * per_id / 2**30:.1f} GiB "
            f"(+1 hour while the oldest bucket expires: {25 / 24 * 1e9 * per_id / 2**30:.1f} GiB)"
        )
        # Baseline: one plain key per id.
        client.flushdb()
        before = int(client.info("memory")["used_memory"])
        pipe = client.pipeline(transaction=False)
        plain = 200_000
        for _ in range(plain):
            pipe.set(f"seen:{uuid.uuid4()}", b"1", ex=86400)
        pipe.execute()
        per_plain = (int(client.info("memory")["used_memory"]) - before) / plain
        print(f"  baseline SET seen:<uuid> 1 EX 86400: {per_plain:.0f} bytes per id")
        client.flushdb()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", choices=("all", "hotpath", "memory", "redis"), default="all")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument(
        "--event-bytes",
        type=int,
        default=0,
        metavar="N",
        help="hotpath: every valid event exactly N bytes (0: the generator's sizes, 372 B mean)",
    )
    parser.add_argument("--repeats", type=int, default=1, help="processor runs in hotpath mode")
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--customers", type=int, default=200)
    parser.add_argument("--ids", type=int, default=5_000_000, help="ids to remember in redis mode")
    args = parser.parse_args()
    if args.mode == "all":
        # Each mode in its own process: ru_maxrss is a lifetime peak.
        for mode in ("hotpath", "memory", "redis"):
            argv = [a for a in sys.argv[1:] if not a.startswith("--mode")]
            subprocess.run([sys.executable, __file__, "--mode", mode, *argv], check=True)
        return
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus")
    if args.mode == "hotpath":
        print("== hot path ==")
        hotpath(args)
    elif args.mode == "memory":
        print(f"== memory: {args.shards} shards x {args.customers} customers ==")
        memory(args)
    else:
        print("== redis bytes per remembered id ==")
        redis_bytes(args)
    print(flush=True)


if __name__ == "__main__":
    main()
