"""Projector apply throughput and read-model read latency, on a real redis-server.

    .venv/bin/python benchmarks/bench_projector.py                       # both modes
    .venv/bin/python benchmarks/bench_projector.py --mode apply --events 500000
    .venv/bin/python benchmarks/bench_projector.py --mode read --seconds 10 --clients 4

Redis is a private redis-server on a free port (pipeline.app.servers), or ``REDIS_URL`` if set.

* ``apply``: one process, one ProjectorProcessor (the real one: decode, plan, apply.lua, streamed
  on its background thread), synthetic events (pipeline.producer.synthetic: 20 customers, 2 % producer
  retries, 0.5 % invalid, ≈ 1,000 events per second of event time), delivered 10,000 records per
  call (GetRecords' maximum) while "behind" (the catch-up case), then the same records again (a
  replay: everything is a duplicate). Also, apart: decode + plan alone (Python's share) and the
  script alone on pre-built messages (Redis' share). Reports the best of ``--runs`` (the machine
  is shared) and the median events applied/s: records/s, events applied/s, CPU per record on
  each side, Redis memory per family. ``--chunk-events`` sets the events per script call.
* ``read``: models from ``apply``, then the HTTP read API in its own process (``shardhouse
  serve-api``) hit by ``--clients`` client processes over keep-alive connections with a query
  mix (entity 50 %, top 20 %, hourly counts 20 %, calendar 10 %): closed loop (as fast as it
  answers) and paced (``--rate`` requests/s in total). Then the same mix straight to Redis
  (ReadModelReader, no HTTP). Reports p50/p90/p99/max and requests/s.
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing as mp
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import redis
from bench_batcher import redis_url  # the same throwaway redis-server

from pipeline.app.servers.process import free_port, wait_for_port
from pipeline.consumer.processor import InitializeInput, ProcessRecordsInput, Record
from pipeline.core.clients import ClientFactory
from pipeline.core.settings import RedisSettings, ResourceSettings, Settings
from pipeline.producer.synthetic import SyntheticConfig, generate
from schemas import load_registry
from workers.projector import Namespace, ProjectorProcessor, build_context
from workers.projector.plan import DEFAULT_CHUNK_EVENTS
from workers.projector.reader import ReadModelReader
from workers.projector.store import ApplyResult

STREAM = "bench"
SHARD = "shardId-000000000000"
BATCH = 10_000


def settings_for(url: str) -> Settings:
    return Settings(
        redis=RedisSettings(url=url, socket_timeout=60), resources=ResourceSettings(stream=STREAM)
    )


class _Checkpoints:
    def checkpoint(self, sequence_number: str | None = None, sub_sequence_number: int | None = None) -> None:
        pass


class _NullStore:
    """Python's share alone: plans are built and thrown away (an empty namespace: no legacy
    gate records)."""

    def gate_since(self) -> int:
        return 0

    def apply(self, messages: Sequence[Any]) -> list[ApplyResult]:
        return [ApplyResult(0, 0, ())]


def make_records(count: int, *, seed: int = 1, customers: int = 20, step_us: int = 1000) -> list[Record]:
    start = datetime.now(UTC) - timedelta(microseconds=count * step_us + 3_600_000_000)
    ticks = iter(range(10**12))
    gen = generate(
        SyntheticConfig(seed=seed, customers=customers),
        count,
        now=lambda: start + timedelta(microseconds=next(ticks) * step_us),
    )
    return [Record(s.data, s.partition_key, str(10**20 + i), 0, 0) for i, s in enumerate(gen)]


@dataclass
class Run:
    wall: float  # seconds
    python_cpu: float  # this process (both threads)
    redis_cpu: float  # redis-server (user + sys)


def redis_cpu(client: redis.Redis | None) -> float:
    if client is None:
        return 0.0
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def run_processor(
    proc: ProjectorProcessor, records: Sequence[Record], client: redis.Redis | None = None
) -> Run:
    ckpt = _Checkpoints()
    r0, c0, start = redis_cpu(client), time.process_time(), time.perf_counter()
    for i in range(0, len(records), BATCH):
        proc.process_records(ProcessRecordsInput(records[i : i + BATCH], 60_000, ckpt))
    proc.process_records(ProcessRecordsInput([], 0, ckpt))  # settle the last batch
    return Run(time.perf_counter() - start, time.process_time() - c0, redis_cpu(client) - r0)


def apply_mode(args: argparse.Namespace, url: str) -> None:
    print(f"generating {args.events:,} synthetic records ...", flush=True)
    records = make_records(args.events)
    settings = settings_for(url)
    clients = ClientFactory(settings)
    client = clients.redis()
    registry = load_registry()
    valid = sum(1 for r in records[:20000] if _valid(registry, r)) / min(len(records), 20000)
    print(
        f"{len(records):,} records, ≈{valid:.1%} valid, mean {statistics.mean(len(r.binary_data) for r in records):.0f} B"
    )

    rows: list[tuple[Run, Run, int]] = []
    for run in range(args.runs):
        client.flushall()
        ctx = build_context(
            clients, settings, registry=registry, prom_registry=None, chunk_events=args.chunk_events
        )
        proc = ProjectorProcessor(ctx)
        proc.initialize(InitializeInput(SHARD, "TRIM_HORIZON", 0))
        load = os.getloadavg()[0]
        first = run_processor(proc, records, client)
        applied = proc.stats.applied
        again = run_processor(proc, records, client)
        rows.append((first, again, applied))
        print(
            f"run {run + 1} (load {load:.1f}): first pass {len(records) / first.wall:,.0f} records/s "
            f"({applied / first.wall:,.0f} events applied/s), replay {len(records) / again.wall:,.0f} records/s",
            flush=True,
        )
    memory = client.info("memory")["used_memory"]
    keys = client.dbsize()
    families = memory_by_family(client, Namespace.for_stream(STREAM))

    # Python's share: decode + plan only
    ctx = build_context(
        clients, settings, registry=registry, prom_registry=None, chunk_events=args.chunk_events
    )
    ctx.store = _NullStore()  # type: ignore[assignment]
    proc = ProjectorProcessor(ctx)
    proc.initialize(InitializeInput(SHARD, "TRIM_HORIZON", 0))
    plan = run_processor(proc, records)
    # Redis' share: the script alone on pre-built messages, one after the other
    client.flushall()
    ctx = build_context(
        clients, settings, registry=registry, prom_registry=None, chunk_events=args.chunk_events
    )
    planner = ctx.planner()
    messages = [
        m
        for i in range(0, len(records), BATCH)
        for m in planner.plan_records(records[i : i + BATCH], SHARD, int(time.time())).messages
    ]
    r0, start = redis_cpu(client), time.perf_counter()
    for m in messages:
        ctx.store.apply([m])
    script = Run(time.perf_counter() - start, 0.0, redis_cpu(client) - r0)

    n = len(records)
    best = min(rows, key=lambda r: r[0].wall)
    first, again, applied = best
    us = 1e6 / n
    print()
    print(f"apply, best of {args.runs} ({n:,} records, batches of {BATCH:,}):")
    print(
        f"  first pass   {n / first.wall:>10,.0f} records/s   {applied / first.wall:>10,.0f} events applied/s"
    )
    median = statistics.median(r[2] / r[0].wall for r in rows)
    print(f"  median       {median:>10,.0f} events applied/s over {len(rows)} runs")
    print(f"  replay       {n / again.wall:>10,.0f} records/s   (all duplicates)")
    print(
        f"  cpu/record   python {first.python_cpu * us:.2f} µs (both threads), redis {first.redis_cpu * us:.2f} µs"
        f"  → on two free cores ≈ {1e6 / max(first.python_cpu * us, first.redis_cpu * us):,.0f} records/s"
    )
    print(
        f"  decode+plan  {n / plan.wall:>10,.0f} records/s   (Python alone, {plan.python_cpu * us:.2f} µs cpu/record)"
    )
    print(
        f"  script       {n / script.wall:>10,.0f} records/s   (Redis alone, {script.redis_cpu * 1e6 / applied:.2f} µs cpu/event)"
    )
    print(
        f"  redis        {memory / 2**20:,.0f} MiB, {keys:,} keys after {applied:,} events ({memory / applied:.0f} B/event)"
    )
    for family, (count, size) in sorted(families.items()):
        print(f"    {family:<3} {count:>8,} keys {size / 2**20:>8,.1f} MiB  {size / applied:>6.1f} B/event")


def memory_by_family(client: redis.Redis, ns: Namespace) -> dict[str, tuple[int, int]]:
    """Keys and MEMORY USAGE per key family of the current generation (ap = the applied set)."""
    gen: Any = client.get(ns.current)
    prefix = ns.generation(gen.decode() if gen else "1")
    out: dict[str, tuple[int, int]] = {}
    names = [k for k in client.scan_iter(match=prefix + "*", count=5000)]
    for i in range(0, len(names), 1000):
        pipe = client.pipeline(transaction=False)
        for name in names[i : i + 1000]:
            pipe.memory_usage(name, samples=0)
        for name, size in zip(names[i : i + 1000], pipe.execute(), strict=True):
            family = name.decode()[len(prefix) :].split(":", 1)[0]
            count, total = out.get(family, (0, 0))
            out[family] = (count + 1, total + (size or 0))
    return out


def _valid(registry: Any, r: Record) -> bool:
    try:
        registry.decode(r.binary_data)
    except Exception:
        return False
    return True


# -- reads ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Targets:
    entities: list[tuple[str, str, str]]
    customers: list[str]
    providers: list[tuple[str, str]]


def targets(reader: ReadModelReader, client: redis.Redis) -> Targets:
    prefix = reader.namespace.generation(reader.store.status().current or "1")
    entities, providers = [], []
    for key in client.scan_iter(match=prefix + "e:*", count=5000):
        _, customer, kind, entity_id = key.decode()[len(prefix) :].split(":", 3)
        entities.append((customer, kind, entity_id))
        if len(entities) >= 20000:
            break
    for key in client.scan_iter(match=prefix + "x:*", count=5000):
        _, customer, _index, owner = key.decode()[len(prefix) :].split(":", 3)
        providers.append((customer, owner))
    customers = sorted({c for c, _, _ in entities})
    return Targets(entities, customers, providers)


def queries(t: Targets, rng: random.Random) -> Iterator[tuple[str, tuple[Any, ...]]]:
    """The mix: (name, args) for both the HTTP path and the direct reader."""
    while True:
        roll = rng.random()
        if roll < 0.5:
            yield "entity", rng.choice(t.entities)
        elif roll < 0.7:
            yield "top", (rng.choice(t.customers), "page_views", 10)
        elif roll < 0.9:
            yield "counts", (rng.choice(t.customers), "page_view", "hour")
        else:
            yield "calendar", rng.choice(t.providers)


def http_path(name: str, args: tuple[Any, ...]) -> str:
    if name == "entity":
        c, kind, entity_id = args
        return f"/v1/customers/{c}/entities/{kind}/{quote(entity_id, safe='')}"
    if name == "top":
        return f"/v1/customers/{args[0]}/top/{args[1]}?n={args[2]}"
    if name == "counts":
        return f"/v1/customers/{args[0]}/counts/{args[1]}?by={args[2]}"
    return (
        f"/v1/customers/{args[0]}/calendars/{quote(args[1], safe='')}?from=2000-01-01&to=2100-01-01&limit=20"
    )


def _http_client(port: int, t: Targets, seconds: float, interval: float, seed: int, out: Any) -> None:
    rng = random.Random(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    lat: list[float] = []
    mix = queries(t, rng)
    deadline = time.perf_counter() + seconds
    next_at = time.perf_counter()
    errors = 0
    while time.perf_counter() < deadline:
        if interval:
            next_at += rng.expovariate(1 / interval)
            pause = next_at - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
        name, args = next(mix)
        start = time.perf_counter()
        conn.request("GET", http_path(name, args))
        resp = conn.getresponse()
        resp.read()
        lat.append(time.perf_counter() - start)
        errors += resp.status >= 500
    conn.close()
    out.put((lat, errors))


def _direct_client(url: str, t: Targets, seconds: float, seed: int, out: Any) -> None:
    rng = random.Random(seed)
    reader = ReadModelReader(
        redis.Redis.from_url(url), Namespace.for_stream(STREAM), load_registry().type_names()
    )
    calls: dict[str, Callable[..., Any]] = {
        "entity": reader.entity,
        "top": reader.top,
        "counts": reader.counts,
        "calendar": lambda c, p: reader.calendar(
            c, p, datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC), 20
        ),
    }
    lat: list[float] = []
    mix = queries(t, rng)
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        name, args = next(mix)
        start = time.perf_counter()
        calls[name](*args)
        lat.append(time.perf_counter() - start)
    out.put((lat, 0))


def _collect(procs: list[Any], out: Any) -> tuple[list[float], int]:
    lat: list[float] = []
    errors = 0
    for _ in procs:
        part, errs = out.get()
        lat.extend(part)
        errors += errs
    for p in procs:
        p.join()
    return lat, errors


def report(label: str, lat: list[float], seconds: float, errors: int = 0) -> None:
    lat.sort()
    q = statistics.quantiles(lat, n=100, method="inclusive")
    print(
        f"  {label:<34} {len(lat) / seconds:>8,.0f} req/s  p50 {q[49] * 1e3:5.2f} ms  p90 {q[89] * 1e3:5.2f} ms  "
        f"p99 {q[98] * 1e3:5.2f} ms  max {lat[-1] * 1e3:6.2f} ms" + (f"  errors {errors}" if errors else "")
    )


def read_mode(args: argparse.Namespace, url: str) -> None:
    client = redis.Redis.from_url(url)
    settings = settings_for(url)
    reader = ReadModelReader(client, Namespace.for_stream(STREAM), load_registry().type_names())
    if reader.store.status().current is None:
        print(f"no read models yet: applying {args.read_events:,} events first ...", flush=True)
        clients = ClientFactory(settings)
        proc = ProjectorProcessor(build_context(clients, settings, prom_registry=None))
        proc.initialize(InitializeInput(SHARD, "TRIM_HORIZON", 0))
        run_processor(proc, make_records(args.read_events), client)
    t = targets(reader, client)
    print(
        f"read targets: {len(t.entities):,} entities, {len(t.customers)} customers, {len(t.providers)} calendars"
    )

    port = free_port()
    env = {**os.environ, **settings.to_env(), "SHARDHOUSE_STATE_DIR": tempfile.mkdtemp(prefix="bench-api-")}
    server = subprocess.Popen(
        [sys.executable, "-c", "from pipeline.app.cli import main; main()", "serve-api", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port("read api", "127.0.0.1", port, pid=server.pid, log_path=Path(os.devnull))
        ctx = mp.get_context("fork")
        print(f"\nread latency ({args.clients} client processes, {args.seconds:.0f} s each):")
        for label, interval in (
            ("HTTP API, closed loop", 0.0),
            (f"HTTP API, paced {args.rate:,} req/s", args.clients / args.rate),
        ):
            out = ctx.Queue()
            procs = [
                ctx.Process(target=_http_client, args=(port, t, args.seconds, interval, i, out))
                for i in range(args.clients)
            ]
            for p in procs:
                p.start()
            lat, errors = _collect(procs, out)
            report(label, lat, args.seconds, errors)
    finally:
        server.terminate()
        server.wait(10)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_direct_client, args=(url, t, args.seconds, i, out)) for i in range(args.clients)
    ]
    for p in procs:
        p.start()
    lat, _ = _collect(procs, out)
    report("direct Redis (read.lua), closed loop", lat, args.seconds)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", choices=("apply", "read", "all"), default="all")
    parser.add_argument("--events", type=int, default=500_000, help="records for the apply mode")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--chunk-events", type=int, default=DEFAULT_CHUNK_EVENTS, help="events per apply.lua call"
    )
    parser.add_argument("--read-events", type=int, default=200_000, help="records to build models for reads")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=1000, help="paced run: requests/s over all clients")
    args = parser.parse_args()
    with redis_url() as url:
        if args.mode in ("apply", "all"):
            apply_mode(args, url)
        if args.mode in ("read", "all"):
            redis.Redis.from_url(url).flushall() if args.mode == "all" else None
            read_mode(args, url)


if __name__ == "__main__":
    main()
