"""In-memory stand-ins for the projector's unit tests (no servers): synthetic records with a
fixed clock, a recording checkpointer, and a store that records messages and can be told to fail.
The same scenarios against real Redis live in tests/integration/projector/."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import msgspec
import redis

from pipeline.consumer.processor import (
    InitializeInput,
    Record,
)
from pipeline.core.errors import TransientError
from pipeline.core.retry import Backoff
from pipeline.core.settings import Settings
from pipeline.producer.synthetic import SyntheticRecord
from schemas import Event, encode_event, load_registry
from support import records
from support.checkpoints import Checkpoints
from support.records import deliver
from workers.projector import keys
from workers.projector.context import ProjectorContext
from workers.projector.plan import GateConfig, Message
from workers.projector.processor import ProjectorProcessor
from workers.projector.store import ApplyResult, ProjectionStore

SHARD = "shardId-000000000000"
REGISTRY = load_registry()
#: A fixed origin; the processors' clock (NOW) keeps it inside every retention.
T0 = datetime(2026, 6, 1, 9, tzinfo=UTC)
#: The processor's injected clock: three hours after the events began.
NOW = (T0 + timedelta(hours=3)).timestamp()

synthetic = partial(records.synthetic, origin=T0, seed=7, customers=3, step_ms=50)
records_of = partial(records.records_of, first_seq=10**20, origin_ms=0, step_ms=0)


def decoded(items: Sequence[SyntheticRecord]) -> list[Event]:
    return [REGISTRY.decode(s.data) for s in items if s.valid]


def decode_message(message: Message) -> dict[str, Any]:
    header, events, effects, entities = msgspec.msgpack.decode(message.body)
    return {
        "header": header,
        "gate": [message.gate[i : i + 24] for i in range(0, len(message.gate), 24)],
        "events": [events[i : i + 5] for i in range(0, len(events), 5)],
        "effects": [effects[i : i + 4] for i in range(0, len(effects), 4)],
        "entities": [entities[i : i + 7] for i in range(0, len(entities), 7)],
    }


class FakeStore:
    """Records applied messages; ``down`` makes every apply fail as Redis being away would."""

    def __init__(self, log: list[str] | None = None) -> None:
        self.applied: list[Message] = []
        self.down = False
        self.calls = 0
        self.log = log

    def apply(self, messages: Sequence[Message]) -> list[ApplyResult]:
        self.calls += 1
        if self.down:
            raise TransientError("apply read models: ConnectionError: gone")
        self.applied.extend(messages)
        if self.log is not None:
            self.log.append(f"apply {len(messages)}")
        return [ApplyResult(len(m.gate) // 24, len(m.gate) // 24, ("1",)) for m in messages]

    def gate_since(self) -> int:
        return 0  # an empty namespace: the old gate layout is never consulted

    def applied_ids(self) -> list[bytes]:
        return [m.gate[i + 8 : i + 24] for m in self.applied for i in range(0, len(m.gate), 24)]


def context(store: FakeStore, *, max_pending: int = 64, chunk_events: int = 4096) -> ProjectorContext:
    ctx = ProjectorContext(
        settings=Settings(),
        registry=REGISTRY,
        namespace=keys.Namespace("rm:unit:"),
        store=ProjectionStore(redis.Redis(port=1), keys.Namespace("rm:unit:")),
        gate=GateConfig(),
        entity_ttl=3600,
        chunk_events=chunk_events,
        prom=None,
        max_pending_batches=max_pending,
    )
    ctx.store = store  # type: ignore[assignment]
    return ctx


def processor(store: FakeStore, **kw: Any) -> ProjectorProcessor:
    proc = ProjectorProcessor(
        context(store, **kw), checkpoint_backoff=Backoff(base=0.0, cap=0.0, max_attempts=4), clock=lambda: NOW
    )
    proc.initialize(InitializeInput(SHARD, "TRIM_HORIZON", 0))
    return proc


def batches(records: Sequence[Record], size: int) -> Iterator[list[Record]]:
    for i in range(0, len(records), size):
        yield list(records[i : i + size])


# -- hand-made events -------------------------------------------------------------------------

AT = datetime(2024, 5, 31, 23, 59, 58, 123456, tzinfo=UTC)


def event(
    etype: str, version: int, payload: dict[str, Any], *, at: datetime = AT, eid: str | None = None
) -> Event:
    return REGISTRY.decode(
        encode_event(
            {
                "event_id": eid or str(uuid.uuid4()),
                "customer_id": "cust_0001",
                "type": etype,
                "version": version,
                "occurred_at": at,
                "payload": payload,
            }
        )
    )


def order(status: str, **extra: Any) -> Event:
    payload = {
        "order_id": "ord_1",
        "user_id": "user_7",
        "status": status,
        "currency": "EUR",
        "total_cents": 5000,
        "item_count": 2,
        "items": [{"sku": "sku-1", "qty": 2, "price_cents": 2500}],
    }
    payload.update(extra)
    return event("order_placed", 2 if "coupon_code" in extra else 1, payload)


def appointment(status: str, starts_at: datetime) -> Event:
    return event(
        "appointment_booked",
        1,
        {
            "appointment_id": "appt_1",
            "provider_id": "prov:9",
            "patient_id": "pat_1",
            "starts_at": starts_at,
            "duration_minutes": 30,
            "status": status,
            "fee": "60.5",
        },
    )


__all__ = ["Checkpoints", "deliver", "records_of", "synthetic"]
