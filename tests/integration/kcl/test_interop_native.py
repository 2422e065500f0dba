"""Java MultiLangDaemon ⇄ native runtime (pipeline.consumer.Worker) on ONE lease table.

The Java daemon (KCL 3.1.3, clientVersionConfig COMPATIBLE_WITH_2X) consumes part of a stream
and checkpoints; it stops; the native runtime takes the leases and continues from Java's
checkpoints; it stops (releasing its leases); a new Java daemon continues from the native
checkpoints. The recorder checkpoints every batch and on shutdown_requested, so every record
must be delivered exactly once across the three owners.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from pathlib import Path

import pytest
from kcl_harness import (
    DaemonStarter,
    Put,
    bootstrap_leases,
    create_stream,
    daemon_log,
    leases,
    per_shard_last,
    put_payloads,
    recorded,
    recorder_events,
    wait_until,
)

from pipeline.consumer.diagnostic import create_recorder
from pipeline.consumer.lease_store import LeaseStore
from pipeline.consumer.worker import Worker, WorkerConfig
from pipeline.core.clients import ClientFactory
from pipeline.core.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.kcl, pytest.mark.timeout(300)]


def exactly_once(rows: list[dict[str, object]], sent: list[Put]) -> None:
    got = Counter((r["shard"], r["seq"]) for r in rows)
    want = Counter((p.shard_id, p.seq) for p in sent)
    assert got == want, f"missing {want - got}, repeated {got - want}"


def test_java_then_native_then_java(
    kcl_settings: Settings,
    kcl_clients: ClientFactory,
    start_daemon: DaemonStarter,
    tmp_path: Path,
    unique_name: str,
) -> None:
    kinesis, dynamodb, rds = kcl_clients.kinesis(), kcl_clients.dynamodb(), kcl_clients.redis()
    stream = table = unique_name
    create_stream(kinesis, stream, 2)
    bootstrap_leases(dynamodb, kinesis, table, stream)

    # 1. Java consumes, checkpoints, stops gracefully (KCL keeps its leases: KCL #845).
    sent = put_payloads(kinesis, stream, [f"a{i}".encode() for i in range(30)], key_prefix="a")
    java_a = start_daemon(kcl_settings, app=table, worker_id="java-a")
    wait_until(
        lambda: len(recorded(rds, stream)) >= 30,
        timeout=90,
        what="java-a to deliver 30",
        detail=lambda: daemon_log(tmp_path, "java-a"),
    )
    java_a.stop(grace=30)
    java_checkpoints = {k: v["checkpoint"] for k, v in leases(dynamodb, table).items()}
    assert java_checkpoints == per_shard_last(sent)
    assert {v["owner"] for v in leases(dynamodb, table).values()} == {"java-a"}

    # 2. The native runtime takes the (expired) leases and resumes after Java's checkpoints.
    sent += put_payloads(kinesis, stream, [f"b{i}".encode() for i in range(20)], key_prefix="b")
    config = WorkerConfig(
        application=table,
        stream=stream,
        worker_id="py-1",
        failover_s=3.0,
        idle_between_reads_s=0.2,
        parent_poll_s=0.5,
    )
    native = Worker(
        config,
        store=LeaseStore(dynamodb, table),
        kinesis=kinesis,
        processor_factory=lambda: create_recorder(kcl_clients, kcl_settings),
    )
    thread = threading.Thread(target=native.run, name="native-worker", daemon=True)
    thread.start()
    try:
        wait_until(
            lambda: len(recorded(rds, stream)) >= 50, timeout=90, what="the native worker to deliver 20"
        )
        native_inits = [
            e for e in recorder_events(rds, stream) if e["event"] == "initialize" and e["pid"] == os.getpid()
        ]
        assert {e["shard"]: e["seq"] for e in native_inits} == java_checkpoints
        sent += put_payloads(kinesis, stream, [f"c{i}".encode() for i in range(10)], key_prefix="c")
        wait_until(
            lambda: len(recorded(rds, stream)) >= 60, timeout=60, what="the native worker to deliver 10"
        )
    finally:
        native.request_shutdown("test")
        thread.join(timeout=60)
    assert not thread.is_alive()
    native_checkpoints = {k: v["checkpoint"] for k, v in leases(dynamodb, table).items()}
    assert native_checkpoints == per_shard_last(sent)
    exactly_once(recorded(rds, stream), sent)
    native_rows = [r for r in recorded(rds, stream)[30:60]]
    assert {r["worker"] for r in native_rows} == {kcl_settings.worker.worker_id}

    # 3. A new Java daemon resumes after the native checkpoints.
    sent += put_payloads(kinesis, stream, [f"d{i}".encode() for i in range(10)], key_prefix="d")
    start_daemon(kcl_settings, app=table, worker_id="java-b")
    wait_until(
        lambda: len(recorded(rds, stream)) >= 70,
        timeout=90,
        what="java-b to deliver 10",
        detail=lambda: daemon_log(tmp_path, "java-b"),
    )
    rows = recorded(rds, stream)
    exactly_once(rows, sent)
    java_b_inits = [e for e in recorder_events(rds, stream) if e["event"] == "initialize"][-2:]
    assert {e["shard"]: e["seq"] for e in java_b_inits} == native_checkpoints
    wait_until(
        lambda: {k: v["checkpoint"] for k, v in leases(dynamodb, table).items()} == per_shard_last(sent),
        timeout=30,
        what="java-b checkpoints",
    )
    owners = {v["owner"] for v in leases(dynamodb, table).values()}
    assert owners == {"java-b"}
