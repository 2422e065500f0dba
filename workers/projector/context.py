"""What the projector's shards in one process share: registry, store, gate settings, metrics.

:func:`context_for` returns one context per (ClientFactory, Settings) pair, so Prometheus
metrics are registered once however many shards the runtime opens.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Gauge, Histogram
from prometheus_client import Counter as PromCounter

from pipeline.core.clients import ClientFactory
from pipeline.core.errors import ShardhouseError
from pipeline.core.memo import IdentityMemo
from pipeline.core.settings import Settings
from schemas import Registry, load_registry
from schemas.read_models import ENTITY_RETENTION
from workers.projector import keys
from workers.projector.plan import DEFAULT_CHUNK_EVENTS, GateConfig, Planner
from workers.projector.store import ProjectionStore, listpack_cap
from workers.tenancy.admission import Admission

log = logging.getLogger("shardhouse.projector")


@dataclass
class PromMetrics:
    records: PromCounter
    applied: PromCounter
    duplicates: PromCounter
    invalid: PromCounter
    apply_seconds: Histogram
    event_age_seconds: Histogram
    pending: Gauge


def prom_metrics(registry: CollectorRegistry) -> PromMetrics:
    """One PromMetrics per registry (a series may be registered only once per registry)."""
    return _prom_by_registry.get(registry)


def _new_metrics(registry: CollectorRegistry) -> PromMetrics:
    return PromMetrics(
        records=PromCounter(
            "shardhouse_projector_records", "Records delivered to the projector", registry=registry
        ),
        applied=PromCounter(
            "shardhouse_projector_events_applied", "Events new to the current read models", registry=registry
        ),
        duplicates=PromCounter(
            "shardhouse_projector_duplicates",
            "Events skipped as already applied (replays, producer retries)",
            registry=registry,
        ),
        invalid=PromCounter(
            "shardhouse_projector_invalid",
            "Invalid records skipped (the batcher dead-letters them)",
            ["reason"],
            registry=registry,
        ),
        apply_seconds=Histogram(
            "shardhouse_projector_apply_seconds",
            "Time to apply one batch to Redis",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=registry,
        ),
        event_age_seconds=Histogram(
            "shardhouse_projector_event_age_seconds",
            "Per applied batch: apply time minus the middle of its records' arrival on the stream "
            "(produce to read model)",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300),
            registry=registry,
        ),
        pending=Gauge(
            "shardhouse_projector_pending_batches",
            "Batches waiting for Redis to come back (nothing is checkpointed meanwhile)",
            registry=registry,
        ),
    )


_prom_by_registry: IdentityMemo[PromMetrics] = IdentityMemo(_new_metrics)


@dataclass
class ShardStats:
    """Plain counters per shard (tests, logs)."""

    records: int = 0
    events: int = 0
    applied: int = 0
    duplicates: int = 0
    unprojected: int = 0
    invalid: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    failed_applies: int = 0
    checkpoints: int = 0


@dataclass
class ProjectorContext:
    settings: Settings
    registry: Registry
    namespace: keys.Namespace
    store: ProjectionStore
    gate: GateConfig
    entity_ttl: int
    chunk_events: int
    prom: PromMetrics | None
    admission: Admission = field(default_factory=Admission.everyone)
    #: Batches kept for retry while Redis is unreachable, per shard, before the shard gives up.
    max_pending_batches: int = 64
    _stats: dict[str, ShardStats] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _legacy_until: int | None = None

    def planner(self) -> Planner:
        return Planner(
            self.registry,
            self.namespace,
            self.gate,
            entity_ttl=self.entity_ttl,
            chunk_events=self.chunk_events,
            legacy_until=self.legacy_until(),
            admission=self.admission,
        )

    def legacy_until(self) -> int:
        """Until when (epoch s) the script also consults the gate's old layout: two windows after
        the first projector with the identity-only gate met the namespace — one for a rolling
        upgrade to finish, one for the last old marks to expire (docs/projector.md).
        Redis unreachable: as if the upgrade began now (checking costs time, never correctness)."""
        with self._lock:
            if self._legacy_until is None:
                try:
                    since = self.store.gate_since()
                except ShardhouseError as exc:
                    log.warning("gate marker unreadable; consulting the old gate layout", exc_info=exc)
                    return int(time.time()) + 2 * self.gate.window_seconds
                self._legacy_until = since + 2 * self.gate.window_seconds if since else 0
            return self._legacy_until

    def shard_stats(self, shard_id: str) -> ShardStats:
        with self._lock:
            stats = self._stats.get(shard_id)
            if stats is None:
                stats = self._stats[shard_id] = ShardStats()
            return stats

    def stats_snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {sid: vars(s).copy() for sid, s in sorted(self._stats.items())}


def build_context(
    clients: ClientFactory,
    settings: Settings,
    *,
    registry: Registry | None = None,
    namespace: keys.Namespace | None = None,
    prom_registry: CollectorRegistry | None = REGISTRY,
    chunk_events: int = DEFAULT_CHUNK_EVENTS,
) -> ProjectorContext:
    """A fresh context (tests and benchmarks use this to get their own namespace and metrics)."""
    client = clients.redis()
    ns = namespace or keys.Namespace.for_stream(settings.resources.stream)
    gate = GateConfig(
        window_seconds=settings.redis.dedupe_window_seconds, old_ids_per_hash=listpack_cap(client) - 1
    )
    return ProjectorContext(
        settings=settings,
        registry=registry or load_registry(),
        namespace=ns,
        store=ProjectionStore(client, ns),
        gate=gate,
        entity_ttl=int(ENTITY_RETENTION.total_seconds()),
        chunk_events=chunk_events,
        prom=prom_metrics(prom_registry) if prom_registry is not None else None,
        admission=Admission.from_settings(settings.worker, client, settings.resources.stream),
    )


_contexts: IdentityMemo[ProjectorContext] = IdentityMemo(build_context)


def context_for(clients: ClientFactory, settings: Settings) -> ProjectorContext:
    """The process's context for this factory and settings (created on first use)."""
    return _contexts.get(clients, settings)
