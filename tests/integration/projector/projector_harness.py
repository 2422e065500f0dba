"""Helpers for projector tests on the real local servers: a test's own stream name (hence its
own Redis namespace ``rm:<stream>:`` and bucket), synthetic records on a fixed recent clock, a
recording checkpointer, the batcher's archive written the way the batcher writes it, and the
reference fold to compare with. Nothing here fakes Redis or S3."""

from __future__ import annotations

import io
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from functools import partial
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from support import records
from support.checkpoints import Checkpoints
from support.records import after
from support.records import deliver_batches as deliver

from pipeline.app.provision import ensure_bucket
from pipeline.consumer.processor import InitializeInput, Record
from pipeline.core.clients import ClientFactory
from pipeline.core.layout import EventObjectKey
from pipeline.core.settings import Settings
from pipeline.producer.synthetic import SyntheticRecord
from schemas import Event, load_registry
from workers.projector import (
    ProjectionStore,
    ProjectorContext,
    ProjectorProcessor,
    ReadModels,
    build_context,
    fold,
)
from workers.projector.keys import Namespace

REGISTRY = load_registry()
SHARD = "shardId-000000000000"
#: Recent enough for every retention (counts, gate window).
T0 = (datetime.now(UTC) - timedelta(hours=5)).replace(minute=0, second=0, microsecond=0)

synthetic = partial(records.synthetic, origin=T0, seed=11, customers=4, step_ms=40)
records_of = partial(records.records_of, first_seq=10**20, origin_ms=0, step_ms=0)


def events_of(items: Sequence[SyntheticRecord] | Sequence[Record]) -> list[Event]:
    out = []
    for item in items:
        raw = item.data if isinstance(item, SyntheticRecord) else item.binary_data
        try:
            out.append(REGISTRY.decode(raw))
        except Exception:
            continue
    return out


def chunks(items: Sequence[Record], sizes: Sequence[int]) -> Iterator[list[Record]]:
    """``items`` cut into batches cycling through ``sizes``."""
    i = k = 0
    while i < len(items):
        n = sizes[k % len(sizes)]
        yield list(items[i : i + n])
        i += n
        k += 1


def shuffled_within(items: Sequence[Record], window: int, seed: int, first_seq: int) -> list[Record]:
    """The same payloads put on the stream again, out of order inside windows of ``window``
    (what producer retries and replays do), at new, increasing sequence numbers."""
    rng = random.Random(seed)
    out: list[Record] = []
    for i in range(0, len(items), window):
        part = list(items[i : i + window])
        rng.shuffle(part)
        out.extend(part)
    return [replace(r, sequence_number=str(first_seq + i)) for i, r in enumerate(out)]


@dataclass
class Env:
    settings: Settings
    clients: ClientFactory

    @property
    def namespace(self) -> Namespace:
        return Namespace.for_stream(self.settings.resources.stream)

    @property
    def store(self) -> ProjectionStore:
        return ProjectionStore(self.clients.redis(), self.namespace)

    def context(self, **kw: Any) -> ProjectorContext:
        """A fresh process's context (a restart gets a new one)."""
        return build_context(self.clients, self.settings, registry=REGISTRY, prom_registry=None, **kw)

    def processor(self, shard: str = SHARD, context: ProjectorContext | None = None) -> ProjectorProcessor:
        proc = ProjectorProcessor(context or self.context())
        proc.initialize(InitializeInput(shard, "TRIM_HORIZON", 0))
        return proc

    def snapshot(self) -> ReadModels:
        return self.store.snapshot()

    def keys(self, pattern: str = "*") -> list[str]:
        r = self.clients.redis()
        return sorted(k.decode() for k in r.scan_iter(match=self.namespace.prefix + pattern, count=1000))

    def forget_everything(self) -> None:
        """What a Redis restart without persistence does to this namespace."""
        r = self.clients.redis()
        doomed = list(r.scan_iter(match=self.namespace.prefix + "*", count=1000))
        for i in range(0, len(doomed), 500):
            r.delete(*doomed[i : i + 500])

    def archive(self, events: Sequence[Event], *, first_sequence: int = 10**20) -> list[str]:
        """Write ``events`` to S3 as the batcher would: one Parquet object per customer, type,
        version and day, at keys derived from their stream position."""
        ensure_bucket(self.clients.s3(), self.settings.resources.bucket, self.settings.aws.region)
        groups: dict[tuple[str, str, int, date], list[tuple[Event, str, str, int]]] = {}
        for i, ev in enumerate(events):
            group = (ev.customer_id, ev.type, ev.version, ev.occurred_at.date())
            groups.setdefault(group, []).append((ev, SHARD, str(first_sequence + i), 0))
        written = []
        for (customer, etype, version, day), rows in groups.items():
            et = REGISTRY.get(etype, version)
            table = pa.table(et.to_columns(rows), schema=et.arrow_schema)
            buf = io.BytesIO()
            pq.write_table(table, buf, compression="zstd")
            key = str(EventObjectKey(customer, etype, version, day, SHARD, rows[0][2], rows[-1][2]))
            self.clients.s3().put_object(Bucket=self.settings.resources.bucket, Key=key, Body=buf.getvalue())
            written.append(key)
        return written


def make_env(settings: Settings, name: str) -> Env:
    mine = replace(settings, resources=replace(settings.resources, stream=name, bucket=name))
    return Env(mine, ClientFactory(mine))


def expected(items: Sequence[SyntheticRecord] | Sequence[Record]) -> ReadModels:
    return fold(events_of(items))


__all__ = ["Checkpoints", "after", "deliver"]
