"""Identity is per customer (DESIGN invariant 9), end to end on the real servers: two customers
sharing event ids both land once in the warehouse and in the read models, while a customer's own
repeats are dropped — in the batch, by Redis, and (after Redis forgot) by the warehouse merge."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from inserter_harness import Env, payload
from integration.batcher.batcher_harness import deliver as batcher_deliver
from integration.batcher.batcher_harness import make_env as batcher_env
from integration.projector.projector_harness import events_of
from integration.projector.projector_harness import make_env as projector_env
from support.checkpoints import Checkpoints
from support.records import deliver, records_of

from inserter.destinations.postgres.dialect import SORTED_PROBE_BYTES
from pipeline.consumer.processor import Record, ShutdownRequestedInput
from pipeline.core.clients import ClientFactory
from pipeline.core.settings import Settings
from schemas import encode_event
from workers.projector.fold import fold

pytestmark = pytest.mark.integration

AT = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)  # inside every retention


def event(customer: str, event_id: str, event_type: str, i: int) -> bytes:
    return encode_event(
        {
            "event_id": event_id,
            "customer_id": customer,
            "type": event_type,
            "version": 1,
            "occurred_at": (AT + timedelta(seconds=i)).isoformat(),
            "payload": payload(event_type, 1, i),
        }
    )


def batch(
    env: Env, clients: ClientFactory, settings: Settings, items: list[bytes], first_seq: int
) -> list[Record]:
    """One batcher process: the items as one delivery, flushed by a graceful shutdown."""
    benv = batcher_env(clients, settings, env.bucket)
    recs = records_of(items, first_seq=first_seq)
    proc = benv.processor()
    ckpt = Checkpoints()
    batcher_deliver(proc, recs, ckpt)
    proc.shutdown_requested(ShutdownRequestedInput(ckpt))
    return recs


@pytest.mark.parametrize("probe_bytes", [SORTED_PROBE_BYTES, 0], ids=["unsorted_probe", "sorted_probe"])
def test_two_customers_sharing_event_ids_both_land(
    env: Env, clients: ClientFactory, settings: Settings, probe_bytes: int
) -> None:
    a, b = f"{env.bucket}_a", f"{env.bucket}_b"
    e = [str(uuid.uuid4()) for _ in range(4)]
    order = str(uuid.uuid4())
    # 1: both customers use e0, e1 and the order id; a's e0 twice (an in-batch duplicate).
    first = [event(a, x, "page_view", i) for i, x in enumerate(e)]
    first += [event(b, e[0], "page_view", 10), event(b, e[1], "page_view", 11), first[0]]
    first += [event(a, order, "order_placed", 20), event(b, order, "order_placed", 21)]
    # 2 (Redis remembers batch 1): b reuses a's e2, e3; a's e1 and b's e0 come again (dropped by Redis).
    second = [event(b, e[2], "page_view", 12), event(b, e[3], "page_view", 13), first[1], first[4]]
    # 3 (Redis forgot everything): a's e2 and b's e3 again — only the warehouse merge can drop them.
    third = [first[2], second[1]]

    recs = batch(env, clients, settings, first, 1000)
    recs += batch(env, clients, settings, second, 2000)
    redis = clients.redis()
    for key in list(redis.scan_iter(match=f"seen:{env.bucket}:*", count=1000)):
        redis.delete(key)
    recs += batch(env, clients, settings, third, 3000)
    env.drain(sorted_probe_bytes=probe_bytes)

    for customer in (a, b):
        assert Counter(env.event_ids(customer)) == Counter({x: 1 for x in e}), customer
        assert env.event_ids(customer, "order_placed") == [order]
    rows = env.query(f'SELECT customer_id FROM "c_{b}"."page_view"')
    assert {r[0] for r in rows} == {b}  # b's rows carry b's own data

    # Read models: the projector over every record (duplicates included) equals the fold of the
    # distinct (customer, id) pairs; each customer counts its own four page views and one order.
    penv = projector_env(settings, env.bucket)
    proc = penv.processor()
    deliver(proc, recs, Checkpoints())
    got, want = penv.snapshot(), fold(events_of(recs))
    assert got.diff(want) == []
    per_customer = Counter[str]()
    for (customer, etype, _hour), n in got.hourly.items():
        if etype == "page_view":
            per_customer[customer] += n
    assert per_customer == Counter({a: 4, b: 4})
    assert {c for (c, kind, _id) in got.entities if kind == "order"} == {a, b}
