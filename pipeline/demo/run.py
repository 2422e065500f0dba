"""Orchestrate the demo: stack → provision → roles → load → live progress → summary.

Every role is a separate process talking to real local servers, as in production; the demo
only starts them, feeds the stream, watches the metrics each role exposes and, at the end,
asks the stores themselves (warehouse, S3, Redis) for the figures of the summary.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from psycopg import sql

from pipeline.clients import ClientFactory
from pipeline.demo.expected import Expected, Observed
from pipeline.demo.metrics_scrape import merged, scrape
from pipeline.demo.roles import Role
from pipeline.errors import TerminalError
from pipeline.producer import Producer
from pipeline.provision import provision_all
from pipeline.servers import stack as local_stack
from pipeline.servers.process import free_port, port_open
from pipeline.settings import Settings, load_settings
from pipeline.synthetic import SyntheticConfig, generate


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


@dataclass
class DemoRun:
    """State shared between the producing thread, the progress loop and the summary."""

    config: DemoConfig
    settings: Settings
    clients: ClientFactory
    roles: list[Role] = field(default_factory=list)
    expected: Expected = field(default_factory=Expected)
    produced: int = 0
    producing_done: bool = False
    producing_error: BaseException | None = None
    started_at: float = field(default_factory=time.monotonic)
    produce_seconds: float = 0.0
    caught_up_seconds: float = 0.0


def _port(preferred: int) -> int:
    return preferred if not port_open("127.0.0.1", preferred) else free_port()


def start_stack(config: DemoConfig, say: Callable[[str], None]) -> local_stack.StackState:
    cfg = local_stack.StackConfig(
        state_dir=config.state_dir,
        aws_port=_port(4566),
        redis_port=_port(6379),
        pg_port=_port(5432),
        npm_dirs=(Path(".shardhouse/npm"),),
    )
    state, _ = local_stack.up(cfg, on_event=say)
    return state


def demo_settings(state: local_stack.StackState, config: DemoConfig) -> dict[str, str]:
    """The environment every role of the demo runs with."""
    import os

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
        # Small batches and quick reads: the demo is about latency, not batch economics.
        "SHARDHOUSE_FLUSH_AGE_SECONDS": "2",
        "SHARDHOUSE_FLUSH_RECORDS": "5000",
        "SHARDHOUSE_IDLE_BETWEEN_READS_MS": "250",
        "SHARDHOUSE_LOG_LEVEL": "INFO",
        "SHARDHOUSE_STATE_DIR": str(config.state_dir),
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
        for record in generate(synthetic, cfg.events):
            run.expected.add(record)
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


def provision(run: DemoRun) -> None:
    s = run.settings
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
    return [
        (str(s), str(t))
        for s, t in conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema LIKE 'c\\_%' AND table_type = 'BASE TABLE' ORDER BY 1, 2"
        )
    ]


def loaded_rows(run: DemoRun) -> int:
    try:
        with run.clients.warehouse() as conn:
            row = conn.execute(
                "SELECT coalesce(sum(rows_loaded), 0) FROM shardhouse.load_ledger"
            ).fetchone()
            return int(row[0]) if row else 0
    except Exception:
        return 0


def rows_per_customer(run: DemoRun) -> dict[str, int]:
    out: dict[str, int] = {}
    with run.clients.warehouse() as conn:
        for schema, table in warehouse_tables(conn):
            query = sql.SQL("SELECT count(*) FROM {}.{}").format(
                sql.Identifier(schema), sql.Identifier(table)
            )
            row = conn.execute(query).fetchone()
            out[schema[2:]] = out.get(schema[2:], 0) + (int(row[0]) if row else 0)
    return out


def duplicate_rows(run: DemoRun) -> int:
    total = 0
    with run.clients.warehouse() as conn:
        for schema, table in warehouse_tables(conn):
            query = sql.SQL("SELECT count(*) - count(DISTINCT event_id) FROM {}.{}").format(
                sql.Identifier(schema), sql.Identifier(table)
            )
            row = conn.execute(query).fetchone()
            total += int(row[0]) if row else 0
    return total


def warehouse_latency(run: DemoRun) -> tuple[float, float]:
    """p50/p99 seconds from event time (stamped at produce) to load, per loaded object, weighted
    by its rows: the ledger's load time against the object's newest event (a lower bound per row)."""
    query = (
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY s), percentile_cont(0.99) WITHIN GROUP (ORDER BY s)"
        " FROM (SELECT extract(epoch FROM loaded_at - max_occurred_at) AS s"
        " FROM shardhouse.load_ledger, generate_series(1, greatest(rows_loaded, 1))) x"
    )
    try:
        with run.clients.warehouse() as conn:
            row = conn.execute(query).fetchone()
    except Exception:
        return 0.0, 0.0
    return (float(row[0] or 0), float(row[1] or 0)) if row else (0.0, 0.0)


def dead_lettered(run: DemoRun) -> int:
    """Lines in the dead-letter objects: what S3 holds, not what a metric said."""
    s3 = run.clients.s3()
    total = 0
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=run.settings.resources.bucket, Prefix="dead-letter/"):
        for obj in page.get("Contents", []):
            body = s3.get_object(Bucket=run.settings.resources.bucket, Key=obj["Key"])["Body"].read()
            total += sum(1 for line in body.splitlines() if line.strip())
    return total
