"""In-memory implementations of the batcher's own three interfaces (ObjectStore, Announcer,
DedupeStore) for server-free unit tests of the processor's decisions. They follow the same
contract the real adapters do (write-once objects, batch marker) — the integration suite runs
the real S3/SQS/Redis adapters.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow.parquet as pq

from pipeline.consumer.processor import (
    InitializeInput,
    Record,
)
from pipeline.core.manifest import BatchManifest
from pipeline.core.retry import Backoff
from pipeline.core.settings import WorkerSettings
from schemas import encode_event, load_registry
from support.checkpoints import Checkpoints
from support.records import ORIGIN_MS, deliver, records_of
from workers.batcher.budget import MemoryBudget
from workers.batcher.commit import FlushDeps
from workers.batcher.context import BatcherContext
from workers.batcher.dedupe import DedupeCheck
from workers.batcher.policy import FlushPolicy
from workers.batcher.processor import BatcherProcessor
from workers.batcher.sinks import StoredObject
from workers.idset.layout import DedupeLayout

REGISTRY = load_registry()
SHARD = "shardId-000000000001"
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
T0_MS = ORIGIN_MS


class MemoryStore:
    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, dict[str, str]]] = {}
        self.puts = 0
        self.fail_with: Exception | None = None
        self.gate: threading.Event | None = None  # when set: every put waits for it first
        self._lock = threading.Lock()

    def put_once(
        self, key: str, body: bytes, *, metadata: Mapping[str, str], content_type: str
    ) -> StoredObject:
        if self.gate is not None:
            self.gate.wait(10)
        with self._lock:
            self.puts += 1
            if self.fail_with is not None:
                raise self.fail_with
            if key in self.objects:
                old_body, old_meta = self.objects[key]
                return StoredObject(key, len(old_body), old_meta, created=False)
            self.objects[key] = (body, dict(metadata))
        return StoredObject(key, len(body), dict(metadata), created=True)

    def read(self, key: str) -> bytes:
        with self._lock:
            return self.objects[key][0]

    def rows(self, prefix: str = "events/") -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for key, (body, _) in sorted(self.objects.items()):
            if key.startswith(prefix):
                out.extend(pq.read_table(io.BytesIO(body)).to_pylist())
        return out


class MemoryAnnouncer:
    def __init__(self) -> None:
        self.manifests: list[BatchManifest] = []

    def announce(self, manifest: BatchManifest) -> None:
        self.manifests.append(manifest)


class MemoryDedupe:
    def __init__(self) -> None:
        self.ids: set[bytes] = set()
        self.batches: set[str] = set()
        self.checks = 0
        self.marks = 0
        self.calls: list[str] = []  # "check" / "mark", in the order they came

    def check(self, batch_id: str | None, ids: Sequence[bytes]) -> DedupeCheck:
        self.checks += 1
        self.calls.append("check")
        if batch_id in self.batches:
            return DedupeCheck(True, [])
        return DedupeCheck(False, [i in self.ids for i in ids])

    def mark(self, batch_id: str | None, ids: Sequence[bytes]) -> int:
        self.marks += 1
        self.calls.append("mark")
        new = set(ids) - self.ids
        self.ids |= new
        if batch_id:
            self.batches.add(batch_id)
        return len(new)


@dataclass
class Harness:
    store: MemoryStore
    announcer: MemoryAnnouncer
    dedupe: MemoryDedupe
    context: BatcherContext
    executor: ThreadPoolExecutor

    def processor(self, shard: str = SHARD, crash: Callable[[str], None] | None = None) -> BatcherProcessor:
        proc = BatcherProcessor(self.context, crash=crash, clock_ms=lambda: T0_MS)
        proc.initialize(InitializeInput(shard, "TRIM_HORIZON", 0))
        return proc


def harness(
    *,
    flush_records: int = 1000,
    flush_bytes: int = 1 << 30,
    flush_age_seconds: float = 3600.0,
    max_buffer_bytes: int = 1 << 30,
    stream: str = "events",
) -> Harness:
    store, announcer, dedupe = MemoryStore(), MemoryAnnouncer(), MemoryDedupe()
    executor = ThreadPoolExecutor(4)
    worker = WorkerSettings(
        flush_records=flush_records,
        flush_bytes=flush_bytes,
        flush_age_seconds=flush_age_seconds,
        max_buffer_bytes=max_buffer_bytes,
    )
    deps = FlushDeps(
        stream=stream,
        bucket="bucket",
        registry=REGISTRY,
        layout=DedupeLayout.for_stream(stream, 86400),
        dedupe=dedupe,
        store=store,
        announcer=announcer,
        executor=executor,
        backoff=Backoff(base=0.0, cap=0.0, max_attempts=3),
        sleep=lambda _s: None,
        now=lambda: T0,
    )
    from pipeline.core.settings import Settings

    context = BatcherContext(
        settings=Settings(worker=worker),
        registry=REGISTRY,
        policy=FlushPolicy.from_settings(worker),
        budget=MemoryBudget(max_buffer_bytes),
        deps=deps,
        prom=None,
    )
    return Harness(store, announcer, dedupe, context, executor)


def event_bytes(
    n: int,
    *,
    customer: str = "cust_a",
    event_id: str | None = None,
    occurred_at: datetime | None = None,
    type_name: str = "page_view",
) -> bytes:
    payload: dict[str, Any] = {"user_id": f"user_{n}", "url": f"https://example.com/{n}"}
    if type_name == "page_view":
        version = 1
    else:  # pragma: no cover - only page_view is used so far
        raise ValueError(type_name)
    return encode_event(
        {
            "event_id": event_id or f"00000000-0000-4000-8000-{n:012d}",
            "customer_id": customer,
            "type": type_name,
            "version": version,
            "occurred_at": occurred_at or (T0 + timedelta(seconds=n)),
            "payload": payload,
        }
    )


def deliver_in_chunks(
    proc: BatcherProcessor, records: Sequence[Record], ckpt: Checkpoints, sizes: Iterable[int]
) -> None:
    i = 0
    for size in sizes:
        if i >= len(records):
            break
        deliver(proc, records[i : i + size], ckpt)
        i += size
    if i < len(records):
        deliver(proc, records[i:], ckpt)


__all__ = ["Checkpoints", "deliver", "records_of"]
