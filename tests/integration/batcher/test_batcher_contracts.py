"""One contract per batcher interface, run against every implementation: the real adapters on
the real servers, and the in-memory ones the unit tests use (so those tests mean something)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from batcher_harness import make_env
from support.batcher_fakes import MemoryDedupe, MemoryStore

from pipeline.core.clients import ClientFactory
from pipeline.core.settings import Settings
from workers.batcher.dedupe import RedisDedupeStore
from workers.batcher.sinks import DedupeStore, ObjectStore, S3ObjectStore
from workers.idset.layout import DedupeLayout

pytestmark = pytest.mark.integration


@pytest.fixture(params=["redis", "memory"])
def dedupe(request: Any, clients: ClientFactory, unique_name: str) -> tuple[DedupeStore, DedupeLayout]:
    layout = DedupeLayout.for_stream(unique_name, 600)
    if request.param == "memory":
        return MemoryDedupe(), layout
    return RedisDedupeStore(clients.redis(), layout), layout


@pytest.fixture(params=["s3", "memory"])
def store(request: Any, clients: ClientFactory, settings: Settings, unique_name: str) -> ObjectStore:
    if request.param == "memory":
        return MemoryStore()
    env = make_env(clients, settings, unique_name)
    return S3ObjectStore(clients.s3(), env.bucket)


def test_dedupe_contract(dedupe: tuple[DedupeStore, DedupeLayout]) -> None:
    store, layout = dedupe
    now = datetime.now(UTC)
    a, b, c = (layout.pack("acme", str(uuid.uuid4()), now) for _ in range(3))
    first = store.check("batch-1", [a, b])
    assert not first.batch_committed and first.seen == [False, False]
    store.mark("batch-1", [a, b])
    assert store.check("batch-1", [a, b, c]).batch_committed
    later = store.check("batch-2", [c, b, a])
    assert not later.batch_committed and later.seen == [False, True, True]
    store.mark(None, [c])  # ids without a batch marker
    assert store.check("batch-3", [c]).seen == [True]
    assert not store.check("batch-3", []).batch_committed


def test_object_store_contract(store: ObjectStore) -> None:
    key = f"events/contract/{uuid.uuid4().hex}.parquet"
    meta = {"rows": "2", "min-occurred-at": "a", "max-occurred-at": "b", "batch-id": "x"}
    first = store.put_once(key, b"first", metadata=meta, content_type="application/octet-stream")
    assert first.created and first.size == 5 and dict(first.metadata) == meta
    second = store.put_once(key, b"second!", metadata={"rows": "9"}, content_type="application/octet-stream")
    assert not second.created and second.size == 5 and second.metadata["rows"] == "2"
