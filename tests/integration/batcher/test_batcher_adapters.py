"""The batcher's adapters against the real servers: Redis dedupe store, S3 write-once store, SQS."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import redis
from batcher_harness import make_env

from pipeline.core.clients import ClientFactory
from pipeline.core.manifest import FORMAT, BatchManifest, BatchObject, decode_manifest
from pipeline.core.settings import Settings
from workers.batcher.dedupe import RedisDedupeStore
from workers.batcher.sinks import MiB, S3ObjectStore, SqsAnnouncer
from workers.idset.layout import DedupeLayout

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC)


def _evalsha_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0)) + int(
        stats.get("cmdstat_eval", {}).get("calls", 0)
    )


def test_dedupe_is_exact_across_levels_in_one_round_trip(clients: ClientFactory, unique_name: str) -> None:
    client = clients.redis()
    # Tiny level 0 (4 keys of 50 ids) so 20,000 ids spill through several levels of full keys.
    layout = DedupeLayout(
        prefix=f"seen:{unique_name}:",
        window_seconds=600,
        ids_per_key=50,
        base_bits=2,
        level_bits=4,
        max_level=6,
    )
    store = RedisDedupeStore(client, layout)
    marked = [layout.pack("acme", str(uuid.uuid4()), NOW) for _ in range(20_000)]
    fresh = [layout.pack("acme", str(uuid.uuid4()), NOW) for _ in range(20_000)]

    calls = _evalsha_calls(client)
    answer = store.check("b1", marked)
    assert _evalsha_calls(client) - calls <= 2  # one round trip (plus a SCRIPT LOAD retry at most)
    assert not answer.batch_committed and not any(answer.seen)
    assert store.mark("b1", marked) == 20_000
    assert store.check("b1", fresh).batch_committed  # the batch marker
    again = store.check("other", marked + fresh)
    assert again.seen == [True] * 20_000 + [False] * 20_000  # exact: no false "seen"
    keys = list(client.scan_iter(match=f"seen:{unique_name}:*", count=1000))
    levels = {k.decode().split(":")[3] for k in keys if b":b:" not in k}
    assert len(levels) >= 3
    for key in keys[:200]:
        assert 0 < client.ttl(key) <= 600
        if b":b:" not in key:
            size = client.strlen(key)
            assert size % 16 == 0 and 0 < size <= 16 * layout.ids_per_key
    # Each id is stored once, on its path, below full keys only (so a walk reaches it).
    full = {k for k in keys if client.strlen(k) == 16 * layout.ids_per_key}
    for blob in marked[:300]:
        path = [k.encode() for k in layout.path(blob)]
        values = [client.get(k) or b"" for k in path]
        homes = [
            n for n, v in enumerate(values) if any(v[i : i + 16] == blob[8:] for i in range(0, len(v), 16))
        ]
        assert len(homes) == 1 and set(path[: homes[0]]) <= full


def test_dedupe_matches_whole_ids_only(clients: ClientFactory, unique_name: str) -> None:
    """16 bytes that straddle two stored ids are not an id: only aligned matches count."""
    client = clients.redis()
    layout = DedupeLayout(prefix=f"seen:{unique_name}:", window_seconds=600, base_bits=0)  # one key
    store = RedisDedupeStore(client, layout)
    ra, rb = (layout.pack("acme", str(uuid.uuid4()), NOW) for _ in range(2))
    store.mark(None, [ra, rb])
    straddling = ra[:8] + ra[16:] + rb[8:16]  # the key holds ra's identity, then rb's
    answer = store.check(None, [straddling, rb])
    assert answer.seen == [False, True]


def test_dedupe_is_per_customer(clients: ClientFactory, unique_name: str) -> None:
    """Customer B's event reusing customer A's id is new to B; A's own repeat is a duplicate."""
    layout = DedupeLayout.for_stream(unique_name, 600)
    store = RedisDedupeStore(clients.redis(), layout)
    eid = str(uuid.uuid4())
    store.mark(None, [layout.pack("acme", eid, NOW)])
    answer = store.check(None, [layout.pack("acme", eid, NOW), layout.pack("globex", eid, NOW)])
    assert answer.seen == [True, False]


def test_dedupe_marks_are_idempotent_and_hour_scoped(clients: ClientFactory, unique_name: str) -> None:
    layout = DedupeLayout.for_stream(unique_name, 600)
    store = RedisDedupeStore(clients.redis(), layout)
    eid = str(uuid.uuid4())
    now, later = layout.pack("acme", eid, NOW), layout.pack("acme", eid, NOW + timedelta(hours=2))
    store.mark(None, [now])
    store.mark(None, [now])
    assert store.check(None, [now, later]).seen == [True, False]


def test_s3_write_once_and_multipart(clients: ClientFactory, settings: Settings, unique_name: str) -> None:
    env = make_env(clients, settings, unique_name)
    store = S3ObjectStore(clients.s3(), env.bucket, multipart_threshold=6 * MiB, part_size=5 * MiB)
    meta = {"rows": "3", "min-occurred-at": "a", "max-occurred-at": "b", "batch-id": "x"}
    small = store.put_once("k/small", b"abc", metadata=meta, content_type="text/plain")
    assert small.created and small.size == 3
    again = store.put_once("k/small", b"different", metadata={"rows": "9"}, content_type="text/plain")
    assert not again.created and again.size == 3 and again.metadata["rows"] == "3"  # the stored truth
    big_body = os.urandom(11 * MiB)
    big = store.put_once("k/big", big_body, metadata=meta, content_type="application/octet-stream")
    assert big.created
    assert env.body("k/big") == big_body
    assert clients.s3().head_object(Bucket=env.bucket, Key="k/big")["Metadata"]["rows"] == "3"
    big_again = store.put_once("k/big", big_body, metadata=meta, content_type="application/octet-stream")
    assert not big_again.created and big_again.size == 11 * MiB
    assert clients.s3().list_multipart_uploads(Bucket=env.bucket).get("Uploads", []) == []


def test_sqs_announcer_standard_and_fifo(
    clients: ClientFactory, settings: Settings, unique_name: str
) -> None:
    env = make_env(clients, settings, unique_name)
    manifest = BatchManifest(
        format=FORMAT,
        batch_id="s/shardId-000000000000/1-2",
        stream="s",
        shard_id="shardId-000000000000",
        first_sequence="1",
        last_sequence="2",
        bucket=env.bucket,
        objects=(BatchObject("k", "c", "page_view", 1, 1, 10, "a", "b"),),
    )
    SqsAnnouncer(clients.sqs(), env.settings.resources.queue).announce(manifest)
    assert env.manifests() == [manifest]

    sqs = clients.sqs()
    fifo = sqs.create_queue(QueueName=f"{unique_name}.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
    announcer = SqsAnnouncer(sqs, f"{unique_name}.fifo")
    announcer.announce(manifest)
    announcer.announce(manifest)  # a replay inside the dedupe window: SQS drops it
    got = sqs.receive_message(QueueUrl=fifo, MaxNumberOfMessages=10)["Messages"]
    assert [decode_manifest(m["Body"]) for m in got] == [manifest]


def test_dedupe_splits_huge_batches_and_marks_the_batch_last(
    clients: ClientFactory, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import workers.batcher.dedupe as dedupe_module

    monkeypatch.setattr(dedupe_module, "MAX_IDS_PER_CALL", 7)
    layout = DedupeLayout.for_stream(unique_name, 600)
    store = RedisDedupeStore(clients.redis(), layout)
    ids = [layout.pack("acme", str(uuid.uuid4()), NOW) for _ in range(30)]
    assert store.check("big", ids).seen == [False] * 30
    assert store.mark("big", ids[:20]) == 20
    assert store.check("big", ids).batch_committed
    assert store.check(None, ids).seen == [True] * 20 + [False] * 10
