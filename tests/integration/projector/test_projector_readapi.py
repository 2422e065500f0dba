"""The HTTP read API on a free port, queried with urllib, against models the projector built in
real Redis; every answer is checked against the reference fold."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from projector_harness import (
    REGISTRY,
    T0,
    Checkpoints,
    Env,
    chunks,
    deliver,
    events_of,
    make_env,
    records_of,
    synthetic,
)
from prometheus_client import CollectorRegistry

from pipeline.core.settings import Settings
from schemas.read_models import hour_bucket, hour_of
from workers.projector import ReadModels, fold
from workers.projector.readapi import ReadApiServer
from workers.projector.reader import ReadModelReader

pytestmark = pytest.mark.integration


@pytest.fixture
def served(settings: Settings, unique_name: str) -> Iterator[tuple[str, ReadModels]]:
    env: Env = make_env(settings, unique_name)
    items = synthetic(3000, duplicate_ratio=0.02, invalid_ratio=0.01, customers=3)
    deliver(env.processor(), chunks(records_of(items), [700]), Checkpoints())
    models = fold(events_of(items))
    reader = ReadModelReader(env.clients.redis(), env.namespace, REGISTRY.type_names(), clock=lambda: T0)
    server = ReadApiServer(("127.0.0.1", 0), reader, prom_registry=CollectorRegistry())
    server.start()
    try:
        yield f"http://127.0.0.1:{server.port}", models
    finally:
        server.close()


def get(base: str, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(base + path, timeout=10) as resp:
            assert resp.headers["Content-Type"] == "application/json"
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_entities_come_back_as_folded(served: tuple[str, ReadModels]) -> None:
    base, models = served
    for (customer, kind, entity_id), state in list(models.entities.items())[:25]:
        status, body = get(base, f"/v1/customers/{customer}/entities/{kind}/{quote(entity_id, safe='')}")
        assert status == 200
        assert body["state"] == orjson.loads(state.state)
        assert body["events"] == state.events
        assert body["type"] == state.type_tag.split("/")[0]
        assert body["event_id"].replace("-", "") == state.version[18:]


def test_counts_per_hour_and_per_day(served: tuple[str, ReadModels]) -> None:
    base, models = served
    customer, etype = "cust_0001", "page_view"
    status, body = get(
        base,
        f"/v1/customers/{customer}/counts/{etype}?by=hour&from={T0:%Y-%m-%dT%H:%M:%SZ}&to="
        + (T0 + timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    assert status == 200
    want = [
        models.hourly.get((customer, etype, hour_bucket(hour_of(T0) + i).hour_label), 0) for i in range(4)
    ]
    assert [b["count"] for b in body["buckets"]] == want and sum(want) > 0
    assert body["buckets"][0]["start"] == f"{T0:%Y-%m-%dT%H}:00:00Z"
    status, days = get(
        base, f"/v1/customers/{customer}/counts/{etype}?by=day&from={T0:%Y-%m-%d}&to={T0:%Y-%m-%d}"
    )
    assert days["buckets"] == [
        {"start": f"{T0:%Y-%m-%d}", "count": models.daily[(customer, etype, f"{T0:%Y-%m-%d}")]}
    ]


def test_top_rankings(served: tuple[str, ReadModels]) -> None:
    base, models = served
    for (customer, measure), ranking in models.top.items():
        status, body = get(base, f"/v1/customers/{customer}/top/{measure}?n=5")
        assert status == 200
        assert body["total_members"] == len(ranking)
        got = [(m["member"], m["score"]) for m in body["members"]]
        assert [s for _, s in got] == sorted(ranking.values(), reverse=True)[:5]
        assert all(ranking[m] == s for m, s in got)


def test_provider_calendars(served: tuple[str, ReadModels]) -> None:
    base, models = served
    (customer, _, provider), entries = next(iter(models.indexes.items()))
    frm, to = T0 - timedelta(days=1), T0 + timedelta(days=60)
    status, body = get(
        base,
        f"/v1/customers/{customer}/calendars/{quote(provider, safe='')}?from={frm:%Y-%m-%d}&to={to:%Y-%m-%d}&limit=1000",
    )
    assert status == 200
    assert [a["appointment_id"] for a in body["appointments"]] == sorted(
        entries, key=lambda k: (entries[k], k)
    )
    assert all(
        a["state"]["status"] != "cancelled" and a["state"]["provider_id"] == provider
        for a in body["appointments"]
    )


def test_errors_and_status(served: tuple[str, ReadModels]) -> None:
    base, _ = served
    assert get(base, "/v1/customers/Nope!/top/page_views")[0] == 400
    assert get(base, "/v1/customers/cust_0001/top/page_views?n=x") == (
        400,
        {"error": "n: 'x' is not an integer"},
    )
    assert get(base, "/v1/customers/cust_0001/entities/user/nobody") == (404, {"error": "not found"})
    assert get(base, "/v1/elsewhere")[0] == 404
    status, body = get(base, "/v1/status")
    assert status == 200 and body["generation"] == "1" and body["origin"]["kind"] == "live"
    assert get(base, "/healthz")[1]["ok"] is True
