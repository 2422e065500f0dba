"""Helpers for inserter tests on the real local servers: events and Parquet objects written
with the schemas' own Arrow schema (``et.arrow_schema`` / ``et.to_columns``, as the batcher
does — without depending on the batcher), a test's own bucket and queues, a fresh database per
test module, and readers for what landed in the warehouse and the queues.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
from prometheus_client import CollectorRegistry

from inserter.destinations.postgres.dialect import SORTED_PROBE_BYTES, PostgresDialect
from inserter.destinations.postgres.stager import PostgresCopyStager
from inserter.loader import Loader
from inserter.queue import BatchQueue
from inserter.service import Inserter, InserterConfig, InserterMetrics
from inserter.source import ObjectSource
from pipeline.app.provision import ensure_bucket, ensure_database, ensure_queues
from pipeline.core.clients import ClientFactory
from pipeline.core.layout import EventObjectKey
from pipeline.core.manifest import FORMAT, BatchManifest, BatchObject, CustomerRows, batch_id, encode_manifest
from pipeline.core.retry import Backoff
from pipeline.core.settings import Settings
from schemas import Event, Registry, encode_event, load_registry

REPO = Path(__file__).resolve().parents[3]
REGISTRY = load_registry()
ORIGIN = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
SHARD = "shardId-000000000000"


# -- events and objects ------------------------------------------------------------------------


def payload(event_type: str, version: int, i: int) -> dict[str, Any]:
    if event_type == "page_view":
        body: dict[str, Any] = {
            "user_id": f"u{i % 97}",
            "url": f"https://example.com/p/{i}",
            "title": None if i % 3 == 0 else f"Page {i}",
            "duration_ms": i * 10,
            "scroll_depth": (i % 100) / 100,
        }
        if version >= 2:
            body |= {"referrer": f"https://ref.example/{i % 7}", "session_id": f"s{i % 13}"}
        return body
    if event_type == "order_placed":
        body = {
            "order_id": f"o{i}",
            "user_id": f"u{i % 31}",
            "status": "placed",
            "currency": "EUR",
            "total_cents": 1000 + i,
            "item_count": 1 + i % 4,
            "items": [{"sku": f"sku-{i % 5}", "qty": 1 + i % 3}],
            "placed_at": (ORIGIN + timedelta(minutes=i)).isoformat(),
        }
        if version >= 2:
            body |= {"coupon_code": f"C{i % 3}" if i % 2 else None, "discount_cents": i % 50}
        return body
    if event_type == "appointment_booked":
        return {
            "appointment_id": f"a{i}",
            "provider_id": f"p{i % 5}",
            "patient_id": f"pt{i}",
            "starts_at": (ORIGIN + timedelta(hours=i)).isoformat(),
            "duration_minutes": 30,
            "status": "booked",
            "telehealth": bool(i % 2),
            "fee": f"{i % 200}.50",
            "notes": None,
        }
    raise ValueError(event_type)


def make_events(
    customer: str,
    event_type: str = "page_view",
    version: int = 1,
    n: int = 10,
    *,
    start: int = 0,
    ids: Sequence[str] | None = None,
    at: datetime = ORIGIN,
) -> list[Event]:
    """``n`` valid events (decoded by the registry, as the batcher would have them)."""
    out = []
    for j in range(n):
        i = start + j
        raw = {
            "event_id": ids[j] if ids is not None else str(uuid.uuid4()),
            "customer_id": customer,
            "type": event_type,
            "version": version,
            "occurred_at": (at + timedelta(seconds=i)).isoformat(),
            "payload": payload(event_type, version, i),
        }
        out.append(REGISTRY.decode(encode_event(raw)))
    return out


def parquet_bytes(events: Sequence[Event], *, shard: str = SHARD, first_seq: int = 1000) -> bytes:
    et = REGISTRY.get(events[0].type, events[0].version)
    rows = [(ev, shard, str(first_seq + k), 0) for k, ev in enumerate(events)]
    table = pa.table(et.to_columns(rows), schema=et.arrow_schema)
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Env:
    settings: Settings
    clients: ClientFactory
    db_url: str

    @property
    def bucket(self) -> str:
        return self.settings.resources.bucket

    # -- S3 + SQS -------------------------------------------------------------------------------

    def put_object(
        self,
        events: Sequence[Event],
        *,
        shard: str = SHARD,
        first: int = 1000,
        last: int | None = None,
        day: date = date(2024, 5, 1),
        body: bytes | None = None,
    ) -> BatchObject:
        """Write ``events`` (one customer/type/version) as the object a batch at ``first..last``
        would write, and describe it as the manifest does."""
        ev = events[0]
        last = first + len(events) - 1 if last is None else last
        key = str(EventObjectKey(ev.customer_id, ev.type, ev.version, day, shard, str(first), str(last)))
        data = parquet_bytes(events, shard=shard, first_seq=first) if body is None else body
        self.clients.s3().put_object(Bucket=self.bucket, Key=key, Body=data)
        stamps = [e.occurred_at for e in events]
        return BatchObject(
            key=key,
            customer_id=ev.customer_id,
            type=ev.type,
            version=ev.version,
            rows=len(events),
            bytes=len(data),
            min_occurred_at=rfc3339(min(stamps)),
            max_occurred_at=rfc3339(max(stamps)),
        )

    def put_shared(
        self,
        events: Sequence[Event],
        *,
        shard: str = SHARD,
        first: int = 1000,
        last: int | None = None,
        day: date = date(2024, 5, 1),
        listed: Sequence[str] | None = None,
    ) -> BatchObject:
        """Write ``events`` (one type/version, many customers) as the shared object a batch
        writes: sorted by customer, its entry listing each customer's rows (``listed``: claim
        only these customers instead — a lying manifest)."""
        ordered = sorted(events, key=lambda e: e.customer_id)
        ev = ordered[0]
        last = first + len(events) - 1 if last is None else last
        key = str(EventObjectKey(None, ev.type, ev.version, day, shard, str(first), str(last)))
        data = parquet_bytes(ordered, shard=shard, first_seq=first)
        self.clients.s3().put_object(Bucket=self.bucket, Key=key, Body=data)
        per = Counter(e.customer_id for e in ordered)
        if listed is not None:
            per = Counter({c: per[c] for c in listed})
            per[listed[0]] += len(events) - sum(per.values())
        stamps = [e.occurred_at for e in events]
        return BatchObject(
            key=key,
            customer_id="",
            type=ev.type,
            version=ev.version,
            rows=len(events),
            bytes=len(data),
            min_occurred_at=rfc3339(min(stamps)),
            max_occurred_at=rfc3339(max(stamps)),
            customers=tuple(CustomerRows(c, n) for c, n in sorted(per.items())),
        )

    def manifest(
        self, objects: Iterable[BatchObject], *, shard: str = SHARD, first: int = 1000, last: int = 1999
    ) -> BatchManifest:
        stream = self.settings.resources.stream
        return BatchManifest(
            format=FORMAT,
            batch_id=batch_id(stream, shard, str(first), str(last)),
            stream=stream,
            shard_id=shard,
            first_sequence=str(first),
            last_sequence=str(last),
            bucket=self.bucket,
            objects=tuple(objects),
            created_at=rfc3339(datetime.now(UTC)),
        )

    def queue(self) -> BatchQueue:
        r = self.settings.resources
        return BatchQueue(self.clients.sqs(), r.queue, r.dead_letter_queue)

    def send(self, manifest: BatchManifest | str) -> str:
        body = manifest if isinstance(manifest, str) else encode_manifest(manifest)
        return self.queue().send(body)

    def queue_depth(self, name: str | None = None) -> int:
        """Visible + in flight + delayed messages of a queue."""
        sqs = self.clients.sqs()
        url = sqs.get_queue_url(QueueName=name or self.settings.resources.queue)["QueueUrl"]
        attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        return sum(
            int(attrs.get(k, "0"))
            for k in (
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
                "ApproximateNumberOfMessagesDelayed",
            )
        )

    def dead_letters(self) -> list[dict[str, Any]]:
        """Drain the dead-letter queue: body and message attributes of each message."""
        sqs = self.clients.sqs()
        url = sqs.get_queue_url(QueueName=self.settings.resources.dead_letter_queue)["QueueUrl"]
        out: list[dict[str, Any]] = []
        while True:
            resp = sqs.receive_message(
                QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0, MessageAttributeNames=["All"]
            )
            messages = resp.get("Messages", [])
            if not messages:
                return out
            for m in messages:
                attrs = {k: v.get("StringValue") for k, v in m.get("MessageAttributes", {}).items()}
                out.append({"body": m["Body"], "attributes": attrs})
                sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])

    # -- the inserter ---------------------------------------------------------------------------

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.db_url, autocommit=True, connect_timeout=10)

    def inserter(
        self,
        *,
        registry: Registry = REGISTRY,
        window_days: int = 7,
        pause: float = 0.0,
        batch_rows: int = 65_536,
        lock_timeout_s: int = 60,
        sorted_probe_bytes: int = SORTED_PROBE_BYTES,
        **config: Any,
    ) -> Inserter:
        defaults: dict[str, Any] = {
            "bucket": self.bucket,
            "wait_seconds": 0,
            "visibility_timeout": 30,
            "heartbeat_seconds": 5.0,
            "exit_when_idle": True,
            "retry_base_seconds": 1,
            "max_receive_count": self.settings.resources.max_receive_count,
        }
        dialect = PostgresDialect(
            registry, lock_timeout_s=lock_timeout_s, sorted_probe_bytes=sorted_probe_bytes
        )
        source = ObjectSource(self.clients.s3(), backoff=Backoff(base=0.05, cap=0.5, max_attempts=3))
        loader = Loader(
            dialect,
            PostgresCopyStager(source, dialect, batch_rows=batch_rows, pause=pause),
            dedupe_window=timedelta(days=window_days),
        )
        return Inserter(
            InserterConfig(**(defaults | config)),
            queue=self.queue(),
            loader=loader,
            registry=registry,
            connect=self.connect,
            metrics=InserterMetrics(CollectorRegistry()),
            backoff=Backoff(base=0.05, cap=0.5, max_attempts=3),
        )

    def drain(self, **config: Any) -> Inserter:
        """Run one inserter until a receive comes back empty."""
        ins = self.inserter(**config)
        ins.run()
        return ins

    def cli_env(self, tmp: Path) -> dict[str, str]:
        env = {**os.environ, **self.settings.to_env()}
        env["SHARDHOUSE_WAREHOUSE_URL"] = env["SHARDHOUSE_DATABASE_URL"] = self.db_url
        env["SHARDHOUSE_STATE_DIR"] = str(tmp / "no-stack")  # no recorded stack: env only
        return env

    def spawn(self, tmp: Path, log_name: str, *args: str) -> subprocess.Popen[bytes]:
        """``shardhouse <args>`` as its own process (stdout+stderr to ``tmp/log_name``)."""
        log = open(tmp / log_name, "ab")  # noqa: SIM115 - the child owns it
        return subprocess.Popen(
            [sys.executable, "-c", "from pipeline.app.cli import main; main()", *args],
            env=self.cli_env(tmp),
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def run_cli(self, tmp: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", "from pipeline.app.cli import main; main()", *args],
            env=self.cli_env(tmp),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    # -- the warehouse --------------------------------------------------------------------------

    def query(self, text: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self.connect() as conn:
            return conn.execute(text, params).fetchall()

    def event_ids(self, customer: str, event_type: str = "page_view") -> list[str]:
        rows = self.query(f'SELECT event_id::text FROM "c_{customer}"."{event_type}"')
        return [r[0] for r in rows]

    def ledger(self) -> list[dict[str, Any]]:
        """This test's ledger rows (tests name their customers after their unique name, which is
        also their bucket's)."""
        with self.connect() as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
            return cur.execute(
                "SELECT * FROM shardhouse.load_ledger WHERE customer_id LIKE %s ORDER BY object_key",
                (f"{self.bucket}%",),
            ).fetchall()


def make_env(
    clients: ClientFactory, settings: Settings, name: str, db_url: str, *, max_receive_count: int = 5
) -> Env:
    resources = replace(
        settings.resources,
        stream=name,
        bucket=name,
        queue=name,
        dead_letter_queue=f"{name}-dlq",
        max_receive_count=max_receive_count,
    )
    test_settings = replace(settings, resources=resources, warehouse=replace(settings.warehouse, url=db_url))
    ensure_bucket(clients.s3(), name, settings.aws.region)
    ensure_queues(clients.sqs(), resources, visibility_timeout=30)
    return Env(test_settings, clients, db_url)


def fresh_database(pg_url: str, prefix: str) -> str:
    """A new database on the session's PostgreSQL server, for one test module."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    url = psycopg.conninfo.make_conninfo(pg_url, dbname=name)
    ensure_database(url)
    return url


def outcomes(*inserters: Inserter) -> Counter[str]:
    """Messages handled per outcome (loaded, duplicate, dead_lettered, failed) by these inserters."""
    out: Counter[str] = Counter()
    for ins in inserters:
        for sample in next(iter(ins.metrics.messages.collect())).samples:
            if sample.name.endswith("_total"):
                out[sample.labels["outcome"]] += int(sample.value)
    return out


def wait_for(probe: Callable[[], bool], what: str, timeout: float = 30.0, every: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
