"""Every long-running role serves Prometheus metrics on SHARDHOUSE_METRICS_PORT and writes one
JSON object per log line: batcher and projector workers, the inserter, the read API."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from pipeline.app.provision import provision_all
from pipeline.app.servers.process import free_port
from pipeline.core.clients import ClientFactory
from pipeline.core.settings import ResourceSettings, Settings
from pipeline.producer.client import Producer
from pipeline.producer.synthetic import SyntheticConfig, generate

ROLES = {
    "batcher": (["worker", "--app", "{app}-batcher", "--processor", "batcher", "--worker-id", "b1"],
                ["shardhouse_consumer_", "shardhouse_batcher_records_total"]),
    "projector": (["worker", "--app", "{app}-projector", "--processor", "projector", "--worker-id", "p1"],
                  ["shardhouse_consumer_", "shardhouse_projector_events_applied_total"]),
    "inserter": (["inserter", "--wait-seconds", "1"], ["shardhouse_inserter_rows_loaded_total"]),
    "read-api": (["serve-api", "--port", "0"], ["shardhouse_readapi_"]),
}  # fmt: skip


@pytest.fixture
def resources(settings: Settings, clients: ClientFactory, unique_name: str) -> Iterator[Settings]:
    r = ResourceSettings(stream=unique_name, shard_count=1, bucket=unique_name.replace("_", "-"),
                         queue=f"{unique_name}-q", dead_letter_queue=f"{unique_name}-dlq")  # fmt: skip
    provision_all(kinesis=clients.kinesis(), s3=clients.s3(), sqs=clients.sqs(), resources=r,
                  region=settings.aws.region, warehouse_url=None)  # fmt: skip
    yield replace(settings, resources=r)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
        return str(resp.read().decode())


@pytest.mark.parametrize("role", sorted(ROLES))
def test_each_role_serves_metrics_and_logs_json(
    role: str, resources: Settings, clients: ClientFactory, unique_name: str, tmp_path: Path
) -> None:
    args, wanted = ROLES[role]
    port = free_port()
    env = {**os.environ, **resources.to_env(), "SHARDHOUSE_METRICS_PORT": str(port),
           "SHARDHOUSE_STATE_DIR": str(tmp_path / "no-stack"), "SHARDHOUSE_IDLE_BETWEEN_READS_MS": "200"}  # fmt: skip
    Producer(clients.kinesis(), unique_name).put(
        (r.data, r.partition_key) for r in generate(SyntheticConfig(seed=5, customers=2), 50)
    )
    log = tmp_path / f"{role}.log"
    cmd = [
        sys.executable,
        "-c",
        "from pipeline.app.cli import main; main()",
        *(a.format(app=unique_name) for a in args),
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=out)
    try:
        text, deadline = "", time.monotonic() + 60
        while time.monotonic() < deadline and not all(w in text for w in wanted):
            with contextlib.suppress(OSError):
                text = scrape(port)
            time.sleep(0.3)
        assert all(w in text for w in wanted), (wanted, text[:2000], log.read_text()[-2000:])
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    lines = [line for line in log.read_bytes().splitlines() if line.strip()]
    assert lines, f"{role} logged nothing"
    docs = [orjson.loads(line) for line in lines]  # every line is one JSON object
    assert all({"ts", "level", "msg"} <= doc.keys() for doc in docs)
    assert any(doc.get("role") for doc in docs)
