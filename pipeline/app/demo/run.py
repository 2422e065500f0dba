"""Orchestrate the demo: stack → provision → roles → load → live progress → summary.

Every role is a separate process talking to real local servers, as in production; the demo
only starts them, feeds the stream, watches the metrics each role exposes and, at the end,
asks the stores themselves (warehouse, S3, Redis) for the figures of the summary.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from psycopg import sql

from pipeline.app.demo.expected import Expected, Observed
from pipeline.app.demo.metrics_scrape import bucket_quantile, histogram_buckets, merged, scrape
from pipeline.app.demo.roles import Role
from pipeline.app.provision import drop_database, provision_all
from pipeline.app.servers import stack as local_stack
from pipeline.app.servers.process import free_port, pid_alive, port_open
from pipeline.core.clients import ClientFactory
from pipeline.core.errors import TerminalError
from pipeline.core.ratelimit import throttle
from pipeline.core.settings import Settings, load_settings
from pipeline.producer.client import Producer
from pipeline.producer.synthetic import SyntheticConfig, SyntheticRecord, generate
from workers.projector.keys import Namespace, glob_escape
from workers.projector.store import ProjectionStore


@dataclass(frozen=True)
class DemoConfig:
    events: int = 100_000
    customers: int = 20
    duplicate_ratio: float = 0.02
    invalid_ratio: float = 0.005
    seed: int = 42
    shards: int = 4
    batchers: int = 2
    timeout: float = 600.0
    keep: bool = False
    state_dir: Path = Path(".shardhouse/demo")
    #: Records per second the producer may send (0: as fast as the stream takes them).
    rate: float = 0.0
    #: Kill and restart roles while the load runs (see pipeline.app.demo.chaos).
    chaos: bool = False
    chaos_seed: int = 7


@dataclass
class DemoRun:
    """State shared between the producing thread, the progress loop and the summary."""

    config: DemoConfig
    settings: Settings
    clients: ClientFactory
    roles: list[Role] = field(default_factory=list)
    #: Held while a role is being replaced, so the watcher does not mistake it for a crash.
    roles_lock: threading.Lock = field(default_factory=threading.Lock)
    expected: Expected = field(default_factory=Expected)
    #: Everything produced, for the final check of the read models against a fold.
    records: list[SyntheticRecord] = field(default_factory=list)
    produced: int = 0
    producing_done: bool = False
    producing_error: BaseException | None = None
    started_at: float = field(default_factory=time.monotonic)
    produce_seconds: float = 0.0
    caught_up_seconds: float = 0.0


def _port(preferred: int) -> int:
    return preferred if not port_open("127.0.0.1", preferred) else free_port()


def start_stack(
    config: DemoConfig, say: Callable[[str], None]
) -> tuple[local_stack.StackConfig, local_stack.StackState]:
    """A clean stack for this run: a previous demo's stack (``--keep``, or one a crash left) is
    stopped first — moto, kinesis-mock and redis-server start empty — and only PostgreSQL's data
    directory survives a restart, so the warehouse is reset in :func:`provision`."""
    if local_stack.read_state(config.state_dir) is not None:
        say(f"stopping the previous demo's stack in {config.state_dir} (each run starts clean)")
        local_stack.down(config.state_dir)
    cfg = local_stack.StackConfig(
        state_dir=config.state_dir,
        aws_port=_port(4566),
        redis_port=_port(6379),
        pg_port=_port(5432),
        npm_dirs=(Path(".shardhouse/npm"),),
    )
    state, _ = local_stack.up(cfg, on_event=say)
    return cfg, state


def restart_redis(cfg: local_stack.StackConfig, say: Callable[[str], None]) -> None:
    """kill -9 the stack's redis-server and start an empty one on the same port (no
    persistence: every dedupe id, batch marker and read model is gone)."""
    state = local_stack.read_state(cfg.state_dir)
    if state is None or "redis" not in state.services:
        raise TerminalError("no redis-server recorded for this stack")
    pid = state.services["redis"].pid
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    local_stack.up(cfg, on_event=say)


def demo_settings(state: local_stack.StackState, config: DemoConfig) -> dict[str, str]:
    """The environment every role of the demo runs with."""
    chaos = {"SHARDHOUSE_FAILOVER_MS": "3000"} if config.chaos else {}  # replaced workers take over fast
    return {
        **os.environ,
        **state.env,
        "SHARDHOUSE_STREAM": "shardhouse-demo",
        "SHARDHOUSE_SHARD_COUNT": str(config.shards),
        "SHARDHOUSE_BUCKET": "shardhouse-demo",
        "SHARDHOUSE_QUEUE": "shardhouse-demo-batches",
        "SHARDHOUSE_DEAD_LETTER_QUEUE": "shardhouse-demo-batches-dlq",
        "SHARDHOUSE_BATCHER_APP": "shardhouse-demo-batcher",
        "SHARDHOUSE_PROJECTOR_APP": "shardhouse-demo-projector",
        # Small batches and quick reads: the demo is about latency, not batch economics. A flush
        # writes one shared object per type and version (plus one per large customer), so its
        # cost no longer follows the customers and a 2 s age keeps produce → warehouse short.
        "SHARDHOUSE_FLUSH_AGE_SECONDS": "2",
        "SHARDHOUSE_FLUSH_RECORDS": "10000",
        "SHARDHOUSE_IDLE_BETWEEN_READS_MS": "250",
        "SHARDHOUSE_LOG_LEVEL": "INFO",
        "SHARDHOUSE_STATE_DIR": str(config.state_dir),
        **chaos,
    }


def produce(run: DemoRun) -> None:
    """Feed the stream from the seeded generator, tallying what the pipeline must end with."""
    cfg = run.config
    synthetic = SyntheticConfig(
        seed=cfg.seed,
        customers=cfg.customers,
        duplicate_ratio=cfg.duplicate_ratio,
        invalid_ratio=cfg.invalid_ratio,
    )

    def tallied() -> Iterator[tuple[bytes, str]]:
        for record in throttle(generate(synthetic, cfg.events), cfg.rate):
            run.expected.add(record)
            run.records.append(record)
            yield record.data, record.partition_key

    def progress(total: object) -> None:
        run.produced = int(getattr(total, "sent", 0))

    start = time.monotonic()
    try:
        producer = Producer(run.clients.kinesis(), run.settings.resources.stream, on_progress=progress)
        result = producer.put(tallied())
        if result.failed:
            raise TerminalError(f"{len(result.failed)} records were not accepted by the stream")
    except BaseException as exc:
        run.producing_error = exc
    finally:
        run.produce_seconds = time.monotonic() - start
        run.producing_done = True


def observe(run: DemoRun, loaded_rows: Callable[[], int], projected: Callable[[], int]) -> Observed:
    batchers = merged([scrape(r.metrics_port) for r in run.roles if r.name.startswith("batcher")])
    return Observed(
        produced=run.produced,
        consumed=int(batchers.get("shardhouse_batcher_records_total", 0)),
        batched_rows=int(batchers.get("shardhouse_batcher_rows_written_total", 0)),
        duplicates_dropped=int(batchers.get("shardhouse_batcher_duplicates_total", 0)),
        dead_lettered=int(batchers.get("shardhouse_batcher_invalid_total", 0)),
        loaded_rows=loaded_rows(),
        projected=projected(),
        max_lag_ms=batchers.get("max:shardhouse_consumer_millis_behind_latest", 0.0),
    )


def provision(run: DemoRun, say: Callable[[str], None] = lambda _m: None) -> None:
    s = run.settings
    if drop_database(s.warehouse.url):
        say("dropped the previous run's warehouse database (its checks count only this run's events)")
    provision_all(
        kinesis=run.clients.kinesis(),
        s3=run.clients.s3(),
        sqs=run.clients.sqs(),
        resources=s.resources,
        region=s.aws.region,
        warehouse_url=s.warehouse.url,
    )


def new_run(config: DemoConfig, env: dict[str, str]) -> DemoRun:
    settings = dataclasses.replace(load_settings(env), state_dir=config.state_dir)
    return DemoRun(config=config, settings=settings, clients=ClientFactory(settings))


def start_producing(run: DemoRun) -> threading.Thread:
    thread = threading.Thread(target=produce, args=(run,), name="demo-producer", daemon=True)
    thread.start()
    return thread


# -- the stores' own answers, for the summary ------------------------------------------------------


def warehouse_tables(conn: Any) -> list[tuple[str, str]]:
    """Every customer's tables as its readers see them: views of the type's pool (a table kept
    as ``__pre_pool`` after an upgrade is not one of them)."""
    return [
        (str(s), str(t))
        for s, t in conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema LIKE 'c\\_%' AND table_type = 'VIEW' ORDER BY 1, 2"
        )
    ]


def _ledger_total(run: DemoRun, column: str) -> int:
    """sum(column) over the load ledger; 0 while no inserter has created it yet."""
    try:
        with run.clients.warehouse() as conn:
            query = sql.SQL("SELECT coalesce(sum({}), 0) FROM shardhouse.load_ledger").format(
                sql.Identifier(column)
            )
            row = conn.execute(query).fetchone()
            return int(row[0]) if row else 0
    except Exception:
        return 0


def loaded_rows(run: DemoRun) -> int:
    return _ledger_total(run, "rows_loaded")


def rows_skipped(run: DemoRun) -> int:
    """Rows the warehouse merge dropped as already present (duplicates that got past Redis)."""
    return _ledger_total(run, "rows_skipped")


def warehouse_latency(run: DemoRun) -> tuple[float, float]:
    """p50/p99 seconds from event time (stamped at produce) to load, weighted by rows: per loaded
    object, its load time against the middle of its events' occurred_at range (the object's rows
    were produced within that range, at most a flush age wide)."""
    query = (
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY s), percentile_cont(0.99) WITHIN GROUP (ORDER BY s)"
        " FROM (SELECT extract(epoch FROM loaded_at - (min_occurred_at + (max_occurred_at - min_occurred_at) / 2))"
        " AS s FROM shardhouse.load_ledger, generate_series(1, greatest(rows_loaded, 1))) x"
    )
    try:
        with run.clients.warehouse() as conn:
            row = conn.execute(query).fetchone()
    except Exception:
        return 0.0, 0.0
    return (float(row[0] or 0), float(row[1] or 0)) if row else (0.0, 0.0)


def read_model_latency(run: DemoRun) -> tuple[float | None, float | None]:
    """p50/p99 seconds from event time to its apply, from the projectors' histogram (None when
    no projector exposes it)."""
    roles = [r for r in run.roles if r.name == "projector"]
    buckets = histogram_buckets([r.metrics_port for r in roles], "shardhouse_projector_event_age_seconds")
    return bucket_quantile(buckets, 0.5), bucket_quantile(buckets, 0.99)


@dataclass(frozen=True)
class DeadLetters:
    lines: int
    #: Distinct records (shard, sequence, sub-sequence): a batch replayed with different cuts
    #: after a crash can write a record's dead letter twice, under two keys.
    records: int


def dead_letters(run: DemoRun) -> DeadLetters:
    """What S3's dead-letter objects hold, not what a metric said."""
    s3 = run.clients.s3()
    lines, seen = 0, set()
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=run.settings.resources.bucket, Prefix="dead-letter/"):
        for obj in page.get("Contents", []):
            body = s3.get_object(Bucket=run.settings.resources.bucket, Key=obj["Key"])["Body"].read()
            for line in body.splitlines():
                if line.strip():
                    doc = orjson.loads(line)
                    lines += 1
                    seen.add((doc["shard_id"], doc["sequence_number"], doc["sub_sequence_number"]))
    return DeadLetters(lines, len(seen))


def projection_store(run: DemoRun) -> ProjectionStore:
    return ProjectionStore(run.clients.redis(), Namespace.for_stream(run.settings.resources.stream))


def projected_events(run: DemoRun) -> int:
    """Events counted by the current read models (their daily counters): what a reader sees,
    whichever projector process applied them."""
    try:
        store = projection_store(run)
        gen = store.status().current
        if gen is None:
            return 0
        client = run.clients.redis()
        pattern = f"{glob_escape(store.namespace.generation(gen))}cd:*"  # the daily counters
        return sum(int(v) for key in client.scan_iter(match=pattern, count=1000) for v in client.hvals(key))
    except Exception:
        return 0
