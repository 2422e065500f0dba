"""The local stack is real: each server answers its own protocol on its port."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg

from pipeline.app.provision import ensure_bucket, ensure_database, ensure_queues, ensure_stream
from pipeline.app.servers import stack as local_stack
from pipeline.core.clients import ClientFactory
from pipeline.core.settings import ResourceSettings, Settings


def test_servers_answer(clients: ClientFactory, settings: Settings) -> None:
    assert clients.redis().ping()
    with clients.warehouse() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert "Buckets" in clients.s3().list_buckets()
    assert "StreamNames" in clients.kinesis().list_streams()


def test_provision_is_idempotent(clients: ClientFactory, settings: Settings, unique_name: str) -> None:
    res = ResourceSettings(
        stream=unique_name,
        shard_count=2,
        bucket=unique_name,
        queue=unique_name,
        dead_letter_queue=f"{unique_name}-dlq",
        max_receive_count=3,
    )
    first = [
        ensure_stream(clients.kinesis(), res.stream, res.shard_count),
        ensure_bucket(clients.s3(), res.bucket, settings.aws.region),
        ensure_queues(clients.sqs(), res),
    ]
    second = [
        ensure_stream(clients.kinesis(), res.stream, res.shard_count),
        ensure_bucket(clients.s3(), res.bucket, settings.aws.region),
        ensure_queues(clients.sqs(), res),
    ]
    assert first == ["created"] * 3
    assert second == ["exists"] * 3
    shards = clients.kinesis().list_shards(StreamName=res.stream)["Shards"]
    assert len(shards) == 2
    url = clients.sqs().get_queue_url(QueueName=res.queue)["QueueUrl"]
    attrs = clients.sqs().get_queue_attributes(QueueUrl=url, AttributeNames=["RedrivePolicy"])
    assert int(json.loads(attrs["Attributes"]["RedrivePolicy"])["maxReceiveCount"]) == 3


def test_ensure_database_creates_once(settings: Settings, unique_name: str) -> None:
    url = psycopg.conninfo.make_conninfo(settings.warehouse.url, dbname=unique_name)
    assert ensure_database(url) == "created"
    assert ensure_database(url) == "exists"


def test_up_down_lifecycle_via_cli(tmp_path: Path) -> None:
    """`up` starts, a second `up` says so, `down` stops exactly what was started."""
    from pipeline.app.servers.process import free_port, pid_alive

    ports = [str(free_port()) for _ in range(3)]
    cmd = [
        sys.executable,
        "-c",
        "from pipeline.app.cli import main; main()",
        "up",
        "--aws-port",
        ports[0],
        "--redis-port",
        ports[1],
        "--pg-port",
        ports[2],
        "--state-dir",
        str(tmp_path),
    ]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert f"AWS_ENDPOINT_URL=http://127.0.0.1:{ports[0]}" in first.stdout
    state = local_stack.read_state(tmp_path)
    assert state is not None and set(state.services) == {"moto", "redis", "postgres"}
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0 and "already up" in second.stderr
    down = subprocess.run(
        [
            sys.executable,
            "-c",
            "from pipeline.app.cli import main; main()",
            "down",
            "--state-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert down.returncode == 0, down.stderr
    assert not any(pid_alive(s.pid) for s in state.services.values())
    assert local_stack.read_state(tmp_path) is None
