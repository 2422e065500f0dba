"""What the shards of one process share: registry, adapters, thread pool, buffer budget, metrics.

Built from the process's one ClientFactory and Settings (the adapters are handed clients; they
never build their own). :func:`context_for` returns the same context for the same pair, which is
what makes ``max_buffer_bytes`` a process-wide budget although the runtime creates processors one
shard at a time.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from prometheus_client import REGISTRY, CollectorRegistry

from pipeline.core.clients import ClientFactory
from pipeline.core.memo import IdentityMemo
from pipeline.core.settings import Settings, WorkerSettings
from schemas import Registry, load_registry
from workers.batcher.budget import MemoryBudget
from workers.batcher.commit import FlushDeps
from workers.batcher.dedupe import RedisDedupeStore
from workers.batcher.metrics import PromMetrics, ShardMetrics, prom_metrics
from workers.batcher.policy import FlushPolicy
from workers.batcher.sinks import S3ObjectStore, SqsAnnouncer
from workers.idset.layout import DedupeLayout
from workers.tenancy.admission import Admission

log = logging.getLogger("shardhouse.batcher")

# Parallel S3 puts of one flush (one object per customer/type/version) and the overlapped Redis
# check; boto3 clients and redis-py's pool are thread-safe.
IO_THREADS = 16


@dataclass
class BatcherContext:
    settings: Settings
    registry: Registry
    policy: FlushPolicy
    budget: MemoryBudget
    deps: FlushDeps
    prom: PromMetrics | None
    admission: Admission = field(default_factory=Admission.everyone)
    _metrics: dict[str, ShardMetrics] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def shard_metrics(self, shard_id: str) -> ShardMetrics:
        with self._lock:
            metrics = self._metrics.get(shard_id)
            if metrics is None:
                metrics = self._metrics[shard_id] = ShardMetrics(shard_id=shard_id)
            return metrics


def build_context(
    clients: ClientFactory,
    settings: Settings,
    *,
    registry: Registry | None = None,
    prom_registry: CollectorRegistry | None = REGISTRY,
    executor: ThreadPoolExecutor | None = None,
    store: S3ObjectStore | None = None,
) -> BatcherContext:
    """A fresh context (tests use this directly to get their own budget and names)."""
    tune_interpreter(settings.worker)
    redis_client = clients.redis()
    layout = DedupeLayout.for_stream(settings.resources.stream, settings.redis.dedupe_window_seconds)
    deps = FlushDeps(
        stream=settings.resources.stream,
        bucket=settings.resources.bucket,
        registry=registry or load_registry(),
        layout=layout,
        dedupe=RedisDedupeStore(redis_client, layout),
        store=store or S3ObjectStore(clients.s3(), settings.resources.bucket),
        announcer=SqsAnnouncer(clients.sqs(), settings.resources.queue),
        executor=executor or ThreadPoolExecutor(IO_THREADS, thread_name_prefix="batcher-io"),
    )
    budget = MemoryBudget(settings.worker.max_buffer_bytes)
    prom = prom_metrics(prom_registry) if prom_registry is not None else None
    if prom is not None:
        prom.buffer_bytes.set_function(lambda: budget.total)
    return BatcherContext(
        settings=settings,
        registry=deps.registry,
        policy=FlushPolicy.from_settings(settings.worker),
        budget=budget,
        deps=deps,
        prom=prom,
        admission=Admission.from_settings(settings.worker, redis_client, settings.resources.stream),
    )


# Net container allocations between young collections (Python's default: 700). The buffer holds
# no container per event (buffer.TypeRows), so young passes are rare, but each one visits every
# value of the open batches' flat lists (~25 ms at 50,000 rows): at the default, 5-6 such
# passes per 1M events, 0.12-0.19 s (bench_batcher "collector pauses").
YOUNG_COLLECTION_ALLOCATIONS = 20_000


def tune_interpreter(worker: WorkerSettings) -> None:
    """Process-wide. Shorten the GIL switch interval: a flush's helper threads (Redis, the
    Parquet encoders, S3) need the GIL back for a moment after each wait, and with Python's 5 ms
    default each such moment queues behind the thread decoding the next batch: on one shard that
    cost a third of the throughput (docs/benchmarks.md, batcher). And let the cyclic collector's
    young generation fill to YOUNG_COLLECTION_ALLOCATIONS (never lowering it)."""
    if worker.gil_switch_interval_ms > 0:
        sys.setswitchinterval(worker.gil_switch_interval_ms / 1000)
    young, *older = gc.get_threshold()
    if young < YOUNG_COLLECTION_ALLOCATIONS:
        gc.set_threshold(YOUNG_COLLECTION_ALLOCATIONS, *older)


_contexts: IdentityMemo[BatcherContext] = IdentityMemo(build_context)


def context_for(clients: ClientFactory, settings: Settings) -> BatcherContext:
    """The process's shared context for this (clients, settings) pair."""
    return _contexts.get(clients, settings)
