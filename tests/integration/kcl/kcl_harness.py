"""Helpers for the Java-daemon tests: streams, payloads, KCL-schema leases, recorder reads."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import redis

from pipeline.app import kcl_daemon
from pipeline.consumer.diagnostic import recorder_keys

DaemonStarter = Callable[..., kcl_daemon.DaemonProcess]


@dataclass(frozen=True)
class Put:
    shard_id: str
    seq: str
    data: bytes


def wait_until(
    predicate: Callable[[], bool], *, timeout: float, what: str, detail: Callable[[], str] = str
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{detail()}")


def create_stream(kinesis: Any, name: str, shards: int) -> list[str]:
    kinesis.create_stream(StreamName=name, ShardCount=shards)
    wait_until(
        lambda: (
            kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamStatus"]
            == "ACTIVE"
        ),
        timeout=30,
        what=f"stream {name} ACTIVE",
    )
    return [s["ShardId"] for s in kinesis.list_shards(StreamName=name)["Shards"]]


def put_payloads(
    kinesis: Any,
    stream: str,
    payloads: Sequence[bytes],
    *,
    key_prefix: str = "pk",
    keys: Sequence[str] | None = None,
) -> list[Put]:
    """PutRecords in chunks of 500, resending throttled entries; returns where each landed."""
    out: list[Put] = []
    for start in range(0, len(payloads), 500):
        pending = [
            (i, {"Data": payloads[i], "PartitionKey": keys[i] if keys else f"{key_prefix}{i}"})
            for i in range(start, min(start + 500, len(payloads)))
        ]
        for _ in range(20):
            if not pending:
                break
            resp = kinesis.put_records(StreamName=stream, Records=[entry for _, entry in pending])
            retry = []
            for (i, entry), result in zip(pending, resp["Records"], strict=True):
                if "ErrorCode" in result:
                    retry.append((i, entry))
                else:
                    out.append(Put(result["ShardId"], result["SequenceNumber"], payloads[i]))
            pending = retry
            if pending:
                time.sleep(0.2)
        assert not pending, f"{len(pending)} records never accepted"
    return out


def bootstrap_leases(dynamodb: Any, kinesis: Any, table: str, stream: str) -> list[str]:
    """KCL-schema TRIM_HORIZON leases written from Python: skips KCL's random 1-30 s empty-table
    wait, and doubles as a check that Java reads leases written by Python."""
    created = kcl_daemon.precreate_leases(dynamodb, kinesis, table, stream)
    assert created, "no leases created"
    return created


def leases(dynamodb: Any, table: str) -> dict[str, dict[str, Any]]:
    items = dynamodb.scan(TableName=table, ConsistentRead=True)["Items"]
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        if item.get("entityType", {}).get("S", "LEASE") != "LEASE":
            continue
        out[item["leaseKey"]["S"]] = {
            "owner": item.get("leaseOwner", {}).get("S"),
            "counter": int(item["leaseCounter"]["N"]),
            "checkpoint": item["checkpoint"]["S"],
            "subseq": int(item.get("checkpointSubSequenceNumber", {}).get("N", "0")),
            "owner_switches": int(item.get("ownerSwitchesSinceCheckpoint", {}).get("N", "0")),
        }
    return out


def recorded(client: redis.Redis, stream: str) -> list[dict[str, Any]]:
    rows = [orjson.loads(raw) for raw in client.lrange(recorder_keys(stream)[0], 0, -1)]
    for row in rows:
        row["data"] = base64.b64decode(row["data"])
    return rows


def recorder_events(client: redis.Redis, stream: str) -> list[dict[str, Any]]:
    return [orjson.loads(raw) for raw in client.lrange(recorder_keys(stream)[1], 0, -1)]


def per_shard_last(puts: Sequence[Put]) -> dict[str, str]:
    last: dict[str, str] = {}
    for p in puts:
        if p.shard_id not in last or int(p.seq) > int(last[p.shard_id]):
            last[p.shard_id] = p.seq
    return last


def daemon_log(tmp_path: Path, worker_id: str, lines: int = 60) -> str:
    path = tmp_path / f"{worker_id}.log"
    if not path.exists():
        return "(no log)"
    text = path.read_text(errors="replace").splitlines()
    interesting = [line for line in text if " ERROR " in line or " WARN " in line or "Exception" in line]
    return "\n".join((interesting[-20:] or []) + ["--- tail ---"] + text[-lines:])
