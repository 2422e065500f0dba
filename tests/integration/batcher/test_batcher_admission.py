"""New customers on the real local servers (S3, SQS, Redis): an allow-list and a limit on new
customers per hour refuse the same events in the batcher (dead letters with the reason) and in
the projector (counted, not applied), decided once in the shared Redis."""

from __future__ import annotations

import base64
from collections import Counter
from dataclasses import replace

import pytest
from batcher_harness import Checkpoints, deliver, make_env, records
from support.batcher_fakes import event_bytes

from pipeline.consumer.processor import ShardEndedInput
from pipeline.core.clients import ClientFactory
from pipeline.core.settings import Settings
from workers.projector.context import build_context as projector_context

pytestmark = pytest.mark.integration


def test_refused_customers_are_dead_lettered_and_the_projector_refuses_the_same(
    clients: ClientFactory, settings: Settings, unique_name: str
) -> None:
    env = make_env(clients, settings, unique_name)
    limits = {"allowed_customers": "c1,c2,c3,c4", "new_customers_per_hour": 2}
    customers = ["c1", "c2", "c3", "c4", "c5"]
    recs = records([event_bytes(i, customer=customers[i % 5]) for i in range(15)])
    # The projector meets the records first (another process): the decisions are made there.
    worker = replace(env.settings.worker, **limits)
    proj = projector_context(clients, replace(env.settings, worker=worker), prom_registry=None)
    plan = proj.planner().plan_records(
        recs, "shardId-000000000000", now=recs[-1].approximate_arrival_timestamp // 1000
    )
    assert plan.invalid == Counter({"tenant_rate_limited": 6, "customer_not_allowed": 3})

    proc = env.processor(**limits)
    ckpt = Checkpoints()
    deliver(proc, recs, ckpt)
    proc.shard_ended(ShardEndedInput(ckpt))

    landed = {row["customer_id"] for rows in env.rows_by_key().values() for row in rows}
    assert landed == {"c1", "c2"}
    dead = env.dead_letters()
    assert Counter(d["reason"] for d in dead) == Counter(
        {"tenant_rate_limited": 6, "customer_not_allowed": 3}
    )
    refused = {base64.b64decode(d["data_base64"]) for d in dead}
    assert refused == {r.binary_data for i, r in enumerate(recs) if i % 5 >= 2}
    assert "not in the allow-list" in next(d["detail"] for d in dead if d["reason"] == "customer_not_allowed")
    assert ckpt.calls[-1] == (None, None)
