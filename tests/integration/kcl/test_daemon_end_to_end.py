"""The real Java KCL MultiLangDaemon (KCL 3.1.3 from amazon-kclpy) consuming a stream on the local
emulators through pipeline/app/kcl_entry.py with the recording processor: nothing skipped, nothing
repeated, checkpoints in KCL's lease table, resume after a graceful restart."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from kcl_harness import (
    DaemonStarter,
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

from pipeline.app import kcl_daemon
from pipeline.app.servers.process import free_port
from pipeline.app.servers.stack import StackState
from pipeline.core.clients import ClientFactory
from pipeline.core.errors import ConfigError
from pipeline.core.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.kcl, pytest.mark.timeout(240)]


@pytest.mark.parametrize(
    "client_version", [kcl_daemon.CLIENT_VERSION_2X_COMPATIBLE, kcl_daemon.CLIENT_VERSION_3X]
)
def test_daemon_consumes_checkpoints_and_resumes(
    kcl_settings: Settings,
    kcl_clients: ClientFactory,
    start_daemon: DaemonStarter,
    tmp_path: Path,
    unique_name: str,
    client_version: str,
) -> None:
    kinesis, dynamodb, rds = kcl_clients.kinesis(), kcl_clients.dynamodb(), kcl_clients.redis()
    stream = table = unique_name
    shards = create_stream(kinesis, stream, 2)
    bootstrap_leases(dynamodb, kinesis, table, stream)
    first = put_payloads(kinesis, stream, [f"first-{i}".encode() for i in range(40)])
    assert {p.shard_id for p in first} == set(shards), "both shards must get records"

    daemon = start_daemon(kcl_settings, app=table, worker_id="java-a", client_version=client_version)
    wait_until(
        lambda: len(recorded(rds, stream)) >= 40,
        timeout=90,
        what="the daemon to deliver the first 40 records",
        detail=lambda: daemon_log(tmp_path, "java-a"),
    )
    # Records arriving while the daemon runs are picked up by polling.
    second = put_payloads(kinesis, stream, [f"second-{i}".encode() for i in range(20)], key_prefix="q")
    wait_until(lambda: len(recorded(rds, stream)) >= 60, timeout=60, what="60 records")

    assert daemon.stop(grace=30) is not None
    rows = recorded(rds, stream)
    sent = first + second
    assert Counter(r["data"] for r in rows) == Counter(p.data for p in sent), "each record exactly once"
    for shard in shards:
        seqs = [(int(r["seq"]), r["subseq"]) for r in rows if r["shard"] == shard]
        assert seqs == sorted(seqs), f"{shard} delivered out of order"
    assert {(r["shard"], r["seq"]) for r in rows} == {(p.shard_id, p.seq) for p in sent}

    events = recorder_events(rds, stream)
    assert {e["shard"] for e in events if e["event"] == "initialize"} == set(shards)
    assert {e["shard"] for e in events if e["event"] == "shutdown_requested"} == set(shards), (
        "SIGTERM must reach each child as shutdown_requested (shutdownGraceMillis > 0)"
    )
    assert not [e for e in events if e["event"] == "checkpoint_refused"]
    last = per_shard_last(sent)
    lease_rows = leases(dynamodb, table)
    assert {k: v["checkpoint"] for k, v in lease_rows.items()} == last

    # A new daemon (another worker) resumes right after the checkpoints.
    third = put_payloads(kinesis, stream, [f"third-{i}".encode() for i in range(10)], key_prefix="r")
    start_daemon(kcl_settings, app=table, worker_id="java-b", client_version=client_version)
    wait_until(
        lambda: len(recorded(rds, stream)) >= 70,
        timeout=90,
        what="the second daemon to deliver the 10 new records",
        detail=lambda: daemon_log(tmp_path, "java-b"),
    )
    rows = recorded(rds, stream)
    assert Counter(r["data"] for r in rows) == Counter(p.data for p in sent + third), (
        "no repeats after restart"
    )
    inits = [e for e in recorder_events(rds, stream) if e["event"] == "initialize"][-2:]
    assert {e["shard"]: e["seq"] for e in inits} == last, "initialize carries the checkpoint"


def test_preflight_tells_moto_from_kinesis_mock(stack: StackState, kinesis_mock_endpoint: str) -> None:
    assert kcl_daemon.probe_h2c(kinesis_mock_endpoint) == "h2c"
    assert kcl_daemon.probe_h2c(stack.aws_endpoint) == "no-h2c"  # moto: HTTP/1.1 only
    assert kcl_daemon.probe_h2c(f"http://127.0.0.1:{free_port()}") == "unreachable"
    cfg = kcl_daemon.DaemonConfig("a", "s", "noop", kinesis_endpoint=stack.aws_endpoint)
    with pytest.raises(ConfigError, match="does not speak HTTP/2"):
        kcl_daemon.preflight(cfg)
    kcl_daemon.preflight(kcl_daemon.DaemonConfig("a", "s", "noop", kinesis_endpoint=kinesis_mock_endpoint))
