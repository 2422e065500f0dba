"""A 2.x-compatible table shared by a KCL 3.1.3 Java daemon and a native worker, upgraded to 3.x.

KCL 3.x in ``COMPATIBLE_WITH_2X`` writes ``Migration3.0 = CLIENT_VERSION_UPGRADE_FROM_2X`` and
keeps the 2.x take/steal protocol. Its leader flips the table to ``CLIENT_VERSION_3X_WITH_ROLLBACK``
once the GSI is active and every lease owner has published WorkerMetricStats for 10 minutes
(``MigrationReadyMonitor``, hard-coded); the test makes that same conditional write itself rather
than wait. Then the Java worker (its ``ClientVersionChangeMonitor`` polls every minute) and the
native one (every second here) both switch to leader-assigned leases, and every record put before,
during and after the flip is processed.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from kcl_harness import DaemonStarter, bootstrap_leases, create_stream, daemon_log, recorded, wait_until

from pipeline.app import kcl_daemon
from pipeline.consumer.diagnostic import create_recorder
from pipeline.consumer.kcl3 import Kcl3Config
from pipeline.consumer.kcl3_state import ClientVersion, Protocol
from pipeline.consumer.kcl3_tables import CoordinatorState, WorkerMetricsTable
from pipeline.consumer.lease_store import LeaseStore
from pipeline.consumer.worker import Worker, WorkerConfig
from pipeline.core.clients import ClientFactory
from pipeline.core.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.kcl, pytest.mark.timeout(400)]


def put_some(kinesis: Any, stream: str, tag: str, n: int = 40) -> set[tuple[str, str]]:
    out = kinesis.put_records(
        StreamName=stream,
        Records=[{"Data": f"{tag}{i}".encode(), "PartitionKey": f"{tag}{i}"} for i in range(n)],
    )
    return {(r["ShardId"], r["SequenceNumber"]) for r in out["Records"] if "ErrorCode" not in r}


def entered_3x(log: Path) -> bool:
    """KCL logs ``Entering <state> from <version>`` when its ClientVersionChangeMonitor moves it."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return any(
        "Entering" in line and "3xwithrollback" in line.lower().replace("_", "") for line in text.splitlines()
    )


def test_upgrade_from_2x_with_native_and_java_workers(
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
    state, metrics = CoordinatorState(dynamodb, table), WorkerMetricsTable(dynamodb, table)

    java_settings = replace(kcl_settings, worker=replace(kcl_settings.worker, worker_id="java-a"))
    start_daemon(
        java_settings, app=table, worker_id="java-a", client_version=kcl_daemon.CLIENT_VERSION_2X_COMPATIBLE,
        extra={"workerMetricsReporterFreqInMillis": "2000"},
    )  # fmt: skip

    def owners() -> dict[str, str | None]:
        return {x.lease_key: x.lease_owner for x in LeaseStore(dynamodb, table).list_leases()}

    def until(what: str, predicate: Any, timeout: float = 120) -> None:
        wait_until(
            predicate,
            timeout=timeout,
            what=what,
            detail=lambda: f"{owners()}\n{daemon_log(tmp_path, 'java-a')}",
        )

    sent = put_some(kinesis, stream, "a")
    until("java-a in UPGRADE_FROM_2X holding both leases", lambda: (
        state.exists() and state.client_version() is ClientVersion.UPGRADE_FROM_2X and set(owners().values()) == {"java-a"}
    ), 150)  # fmt: skip

    py_settings = replace(kcl_settings, worker=replace(kcl_settings.worker, worker_id="py-1"))
    py_clients = ClientFactory(py_settings)
    native = Worker(
        WorkerConfig(
            application=table, stream=stream, worker_id="py-1", failover_s=3.0, idle_between_reads_s=0.2,
            kcl3=Kcl3Config(mode_check_s=1.0, reporter_s=2.0),
        ),
        store=LeaseStore(py_clients.dynamodb(), table), kinesis=py_clients.kinesis(),
        processor_factory=lambda: create_recorder(py_clients, py_settings),
    )  # fmt: skip
    thread = threading.Thread(target=native.run, daemon=True)
    thread.start()
    try:
        # 2.x protocol: the native worker steals one of the two leases; it publishes metrics,
        # which is what lets a KCL leader declare the fleet ready for 3.x.
        until("py-1 to steal a lease (2.x)", lambda: sorted(owners().values()) == ["java-a", "py-1"], 90)
        assert native.kcl3.protocol is Protocol.KCL2
        until("py-1's WorkerMetricStats", lambda: "py-1" in {w.worker_id for w in metrics.all()}, 30)
        sent |= put_some(kinesis, stream, "b")

        # The flip KCL's MigrationReadyMonitor makes (conditional on the version read).
        assert state.set_client_version(
            ClientVersion.V3X_WITH_ROLLBACK, "java-a", ClientVersion.UPGRADE_FROM_2X, int(time.time() * 1000)
        )
        until("py-1 on the 3.x protocol", lambda: native.kcl3.protocol is Protocol.KCL3, 20)
        sent |= put_some(kinesis, stream, "c")
        until("java-a on the 3.x protocol", lambda: entered_3x(tmp_path / "java-a.log"), 150)
        sent |= put_some(kinesis, stream, "d")
        until(
            "every record processed",
            lambda: sent <= {(r["shard"], r["seq"]) for r in recorded(rds, stream)},
            120,
        )
        until("both leases owned by a live worker", lambda: set(owners().values()) <= {"java-a", "py-1"}, 30)
    finally:
        native.request_shutdown("test")
        thread.join(timeout=60)
    assert state.client_version() is ClientVersion.V3X_WITH_ROLLBACK
