"""Replay and backfill (``shardhouse replay``) and the ``shardhouse loads`` report, on real
servers."""

from __future__ import annotations

from collections import Counter
from datetime import date
from pathlib import Path

import pytest
from inserter_harness import Env, fresh_database, make_events, outcomes

from inserter.queue import BatchQueue
from inserter.replay import Replayer
from inserter.source import ObjectSource
from pipeline.core.manifest import BatchManifest, BatchObject
from pipeline.core.settings import Settings

pytestmark = pytest.mark.integration
SHARD0, SHARD1 = "shardId-000000000000", "shardId-000000000001"


def announce_three_batches(env: Env, name: str) -> list[BatchManifest]:
    a, b = f"{name}_a", f"{name}_b"
    pv = make_events(a, "page_view", 1, 100)
    batch1 = [
        env.put_object(pv[:60], first=1000, last=1099),
        env.put_object(make_events(b, "order_placed", 2, 40), first=1000, last=1099),
    ]
    batch2 = [
        env.put_object(
            make_events(a, "page_view", 2, 30, start=500),
            shard=SHARD1,
            first=7000,
            last=7029,
            day=date(2024, 5, 2),
        )
    ]
    batch3 = [env.put_object(pv[40:], first=2000, last=2059, day=date(2024, 5, 3))]  # overlaps batch1
    manifests = [
        env.manifest(batch1, first=1000, last=1099),
        env.manifest(batch2, shard=SHARD1, first=7000, last=7029),
        env.manifest(batch3, first=2000, last=2059),
    ]
    for m in manifests:
        env.send(m)
    return manifests


def snapshot(env: Env, name: str) -> tuple[Counter[str], Counter[str], list[tuple[object, ...]]]:
    pv = Counter(env.event_ids(f"{name}_a"))
    orders = Counter(env.event_ids(f"{name}_b", "order_placed"))
    ledger = [tuple(r.values()) for r in env.ledger()]
    return pv, orders, ledger


def replayer(env: Env, *, dry_run: bool = False) -> Replayer:
    r = env.settings.resources
    queue = None if dry_run else BatchQueue(env.clients.sqs(), r.queue, r.dead_letter_queue)
    return Replayer(env.clients.s3(), ObjectSource(env.clients.s3()), queue, stream=r.stream)


def describe(objects: tuple[BatchObject, ...]) -> list[tuple[object, ...]]:
    return sorted(
        (o.key, o.customer_id, o.type, o.version, o.rows, o.bytes, o.min_occurred_at, o.max_occurred_at)
        for o in objects
    )


def test_replaying_everything_twice_changes_no_row(env: Env, unique_name: str) -> None:
    originals = announce_three_batches(env, unique_name)
    env.drain()
    before = snapshot(env, unique_name)
    assert sum(before[0].values()) == 130 and set(before[0].values()) == {1}
    assert len(before[1]) == 40 and len(before[2]) == 4

    seen: list[BatchManifest] = []
    for _ in range(2):
        report = replayer(env).run(env.bucket, "events/", on_manifest=seen.append)
        assert (report.selected, report.batches, report.messages, report.rows) == (4, 3, 3, 190)
    ins = env.drain()

    assert snapshot(env, unique_name) == before
    assert outcomes(ins) == Counter({"duplicate": 6})
    # The replayed manifests are the batcher's, rebuilt from keys and Parquet footers alone.
    by_id = {m.batch_id: m for m in originals}
    for m in seen[:3]:
        original = by_id[m.batch_id]
        assert (m.shard_id, m.first_sequence, m.last_sequence) == (
            original.shard_id,
            original.first_sequence,
            original.last_sequence,
        )
        assert describe(m.objects) == describe(original.objects)


def test_replay_rebuilds_another_warehouse_and_filters_by_day(
    env: Env, unique_name: str, settings: Settings, tmp_path: Path
) -> None:
    announce_three_batches(env, unique_name)
    env.drain()
    before = snapshot(env, unique_name)

    dry = env.run_cli(
        tmp_path, "replay", "--from", f"s3://{env.bucket}/events/", "--since", "2024-05-02", "--dry-run"
    )
    assert dry.returncode == 0, dry.stderr
    assert "would announce 2 batches (2 messages, 2 objects, 90 rows)" in dry.stdout
    assert env.queue_depth() == 0

    env.db_url = fresh_database(settings.warehouse.url, "replay_target")  # an empty warehouse
    done = env.run_cli(tmp_path, "replay", "--from", "events/")
    assert done.returncode == 0, done.stderr
    assert "announced 3 batches (3 messages, 4 objects, 190 rows)" in done.stdout
    env.drain()
    rebuilt = snapshot(env, unique_name)
    assert rebuilt[:2] == before[:2]
    assert [row[0] for row in rebuilt[2]] == [row[0] for row in before[2]]  # same objects in the ledger

    bad = env.run_cli(
        tmp_path, "replay", "--from", "events/", "--since", "2024-05-03", "--until", "2024-05-01"
    )
    assert bad.returncode == 2 and "is after --until" in bad.stderr


def test_loads_lists_recent_loads_per_customer(env: Env, unique_name: str, tmp_path: Path) -> None:
    announce_three_batches(env, unique_name)
    env.drain(max_messages=1)  # one load per batch (a receive of several is one load)

    out = env.run_cli(tmp_path, "loads", "--customer", f"{unique_name}_a")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["customer", "loaded", "at"]
    rows = [line.split() for line in lines[1:]]
    assert len(rows) == 3 and all(r[0] == f"{unique_name}_a" for r in rows)
    # objects, rows, skipped per load: batch3 repeats 20 of batch1's page views
    assert sorted((int(r[3]), int(r[4]), int(r[5])) for r in rows) == [(1, 30, 0), (1, 40, 20), (1, 60, 0)]
    assert all(r[-3].endswith("d") for r in rows)  # lag from 2024 events to now: days

    everyone = env.run_cli(tmp_path, "loads", "--limit", "2")
    assert everyone.returncode == 0 and len(everyone.stdout.splitlines()) == 3
    nobody = env.run_cli(tmp_path, "loads", "--customer", "nobody_here")
    assert "(no loads recorded for nobody_here)" in nobody.stdout
