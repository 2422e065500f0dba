"""`shardhouse produce` and the Producer SDK against the real local moto server.

Records are read back from every shard with GetRecords and compared, byte for byte, with what
was generated or written.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from aws_kinesis_agg.deaggregator import iter_deaggregate_records
from support.records import synthetic

from pipeline.app.provision import ensure_stream
from pipeline.app.servers.process import free_port
from pipeline.app.servers.stack import StackState
from pipeline.consumer.shard_sync import stream_pages
from pipeline.core.clients import ClientFactory
from pipeline.producer.batching import hash_partition_key
from pipeline.producer.client import Producer
from pipeline.producer.synthetic import SyntheticRecord

pytestmark = pytest.mark.integration

SHARDHOUSE = Path(sys.executable).parent / "shardhouse"


def cli_env(stack: StackState, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, **stack.env, "SHARDHOUSE_STATE_DIR": str(tmp_path / "state"), **extra}
    env.pop("AWS_ENDPOINT_URL_KINESIS", None)  # moto serves Kinesis here
    return env


def produce_cli(
    stack: StackState, tmp_path: Path, *args: str, stdin: bytes | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SHARDHOUSE), "produce", *args],
        input=stdin.decode() if stdin is not None else None,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(stack, tmp_path),
    )


def read_stream(kinesis: Any, stream: str) -> list[dict[str, Any]]:
    """Every record of every shard, from TRIM_HORIZON until a shard returns nothing more."""
    return [r for _, page in stream_pages(kinesis, stream) for r in page]


def received(kinesis: Any, stream: str) -> Counter[tuple[bytes, str]]:
    return Counter((r["Data"], r["PartitionKey"]) for r in read_stream(kinesis, stream))


@pytest.fixture
def stream(clients: ClientFactory, unique_name: str) -> str:
    ensure_stream(clients.kinesis(), unique_name, 4)
    return unique_name


AT = "2026-11-22T09:30:00Z"
AT_DT = datetime(2026, 11, 22, 9, 30, tzinfo=UTC)


@pytest.mark.timeout(900)  # moto's PutRecords slows as shards grow (O(n) per record)
def test_produce_100k_synthetic_records_and_read_them_back(
    stack: StackState, clients: ClientFactory, stream: str, tmp_path: Path
) -> None:
    count, seed = 100_000, 20261122
    started = time.monotonic()
    done = produce_cli(
        stack, tmp_path, "--count", str(count), "--stream", stream, "--seed", str(seed),
        "--customers", "40", "--duplicate-ratio", "0.02", "--invalid-ratio", "0.01", "--occurred-at", AT,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert f"produced {count:,} records to stream '{stream}'" in done.stdout
    assert "failed 0," in done.stdout

    expected = synthetic(
        count, origin=AT_DT, step_ms=0, seed=seed, customers=40, duplicate_ratio=0.02, invalid_ratio=0.01
    )
    duplicates = sum(1 for r in expected if r.is_duplicate)
    invalid = sum(1 for r in expected if not r.valid)
    assert f"{duplicates:,} duplicates, {invalid:,} invalid" in done.stdout
    assert duplicates > 1_000 and invalid > 500

    got = received(clients.kinesis(), stream)
    assert sum(got.values()) == count
    assert got == Counter((r.data, r.partition_key) for r in expected)
    valid_ids = {r.event_id for r in expected if r.valid}
    assert len(valid_ids) == count - duplicates - invalid
    valid = valid_bytes(expected)
    assert valid_ids == {orjson.loads(data)["event_id"] for (data, _) in got if data in valid}
    print(f"\nproduce --count {count}: {count / elapsed:,.0f} rec/s end to end (CLI process)")


def valid_bytes(records: list[SyntheticRecord]) -> set[bytes]:
    return {r.data for r in records if r.valid}


def event_ids(got: Counter[tuple[bytes, str]]) -> Counter[str]:
    ids: Counter[str] = Counter()
    for (data, _), n in got.items():
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            continue
        if isinstance(event, dict) and isinstance(event.get("event_id"), str):
            ids[event["event_id"]] += n
    return ids


def test_same_seed_produces_the_same_events(
    stack: StackState, clients: ClientFactory, unique_name: str, tmp_path: Path
) -> None:
    """Same ids and keys from the wall clock; byte-identical with --occurred-at."""
    runs = []
    for suffix, pin in (("a", []), ("b", []), ("c", ["--occurred-at", AT]), ("d", ["--occurred-at", AT])):
        name = f"{unique_name}{suffix}"
        ensure_stream(clients.kinesis(), name, 2)
        done = produce_cli(stack, tmp_path, "--count", "3000", "--stream", name, "--seed", "5", *pin)
        assert done.returncode == 0, done.stderr
        runs.append(received(clients.kinesis(), name))
    assert all(sum(run.values()) == 3000 for run in runs)
    assert event_ids(runs[0]) == event_ids(runs[1]) == event_ids(runs[2])
    keys = [Counter(key for (_, key), n in run.items() for _ in range(n)) for run in runs]
    assert keys[0] == keys[1] == keys[2]
    assert (
        runs[2]
        == runs[3]
        == Counter((r.data, r.partition_key) for r in synthetic(3000, origin=AT_DT, step_ms=0, seed=5))
    )


def ndjson_lines(n: int) -> list[bytes]:
    lines = [
        orjson.dumps(
            {
                "event_id": str(uuid.UUID(int=i)),
                "customer_id": f"c{i % 13}",
                "type": "order_placed",
                "version": 1,
                "occurred_at": "2026-11-22T10:00:00Z",
                "payload": {"entity_id": f"o{i % 101}", "amount": i},
            }
        )
        for i in range(n)
    ]
    lines[7] = b"{this is not json"
    lines[8] = b'["json", "but not an object"]'
    return lines


@pytest.mark.parametrize("via", ["file", "stdin"])
def test_produce_ndjson_sends_every_line_as_is(
    stack: StackState, clients: ClientFactory, stream: str, tmp_path: Path, via: str
) -> None:
    lines = ndjson_lines(2_500)
    body = b"\n".join(lines[:1000]) + b"\n\n" + b"\n".join(lines[1000:]) + b"\n"
    if via == "file":
        path = tmp_path / "events.ndjson"
        path.write_bytes(body)
        done = produce_cli(stack, tmp_path, "--stream", stream, "--file", str(path))
    else:
        done = produce_cli(stack, tmp_path, "--stream", stream, "--file", "-", stdin=body)
    assert done.returncode == 0, done.stderr
    assert "input: 2,500 lines, 1 not valid JSON" in done.stdout
    assert "1 blank skipped" in done.stdout

    got = received(clients.kinesis(), stream)
    expected = Counter[tuple[bytes, str]]()
    for line in lines:
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            event = None
        if isinstance(event, dict):
            key = f"{event['customer_id']}:{event['payload']['entity_id']}"
        else:
            key = hash_partition_key(line)
        expected[(line, key)] += 1
    assert got == expected


def test_produce_aggregated_records_deaggregate_to_the_same_user_records(
    stack: StackState, clients: ClientFactory, stream: str, tmp_path: Path
) -> None:
    done = produce_cli(
        stack,
        tmp_path,
        "--count",
        "20000",
        "--stream",
        stream,
        "--seed",
        "9",
        "--aggregate",
        "--occurred-at",
        AT,
    )
    assert done.returncode == 0, done.stderr
    assert "aggregated into" in done.stdout
    raw = read_stream(clients.kinesis(), stream)
    assert len(raw) < 20_000 / 20  # many user records per Kinesis record
    users: Counter[tuple[bytes, str]] = Counter()
    for record in iter_deaggregate_records(raw, data_format="Boto3"):
        k = record["kinesis"]
        data = base64.b64decode(k["data"]) if k.get("aggregated") else k["data"]
        users[(data, k["partitionKey"])] += 1
    assert users == Counter(
        (r.data, r.partition_key) for r in synthetic(20_000, origin=AT_DT, step_ms=0, seed=9)
    )


def test_sdk_put_events_round_trip(clients: ClientFactory, stream: str) -> None:
    events = [
        {"event_id": str(uuid.uuid4()), "customer_id": f"c{i % 5}", "type": "t", "payload": {"entity_id": i}}
        for i in range(3_000)
    ]
    progress: list[int] = []
    # concurrency 1: moto's Kinesis loses records under concurrent PutRecords (see Producer).
    producer = Producer(clients.kinesis(), stream, on_progress=lambda r: progress.append(r.sent))
    result = producer.put_events(events)
    assert (result.sent, result.failed_permanently, result.calls) == (3_000, 0, 6)
    assert progress[-1] == 3_000
    got = received(clients.kinesis(), stream)
    assert got == Counter(
        (orjson.dumps(e), f"{e['customer_id']}:{e['payload']['entity_id']}")  # type: ignore[index]
        for e in events
    )


def test_missing_stream_is_one_clear_line(stack: StackState, unique_name: str, tmp_path: Path) -> None:
    done = produce_cli(stack, tmp_path, "--count", "10", "--stream", unique_name)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"shardhouse: error: stream '{unique_name}' does not exist — run `shardhouse provision`"
    ]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--count", "-5"], "Invalid value for '--count'"),
        (["--rate", "fast"], "Invalid value for '--rate'"),
        (["--file", "/nonexistent/x.ndjson"], "--file /nonexistent/x.ndjson: no such file"),
    ],
)
def test_bad_flags_are_one_clear_line(
    stack: StackState, stream: str, tmp_path: Path, args: list[str], expected: str
) -> None:
    done = produce_cli(stack, tmp_path, "--stream", stream, *args)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("shardhouse: error: ") and expected in lines[0]


def test_unreachable_endpoint_is_one_clear_line(stack: StackState, tmp_path: Path) -> None:
    port = free_port()
    env = cli_env(stack, tmp_path, AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")
    done = subprocess.run(
        [str(SHARDHOUSE), "produce", "--count", "10"],
        capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        f"shardhouse: error: cannot reach Kinesis at http://127.0.0.1:{port} (EndpointConnectionError)"
        " — is the local stack up? run `shardhouse up`"
    ]
