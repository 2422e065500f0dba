"""`shardhouse produce` without servers: bad input is one line; sources and reporting."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.app.cli.produce import (
    PlainReporter,
    RecordsFailed,
    SourceStats,
    Summary,
    _send,
    ndjson_records,
    raise_if_failed,
)
from pipeline.core.retry import Backoff
from pipeline.producer.batching import hash_partition_key
from pipeline.producer.client import FailedRecord, ProduceResult
from pipeline.producer.synthetic import SyntheticConfig

SHARDHOUSE = Path(sys.executable).parent / "shardhouse"

CASES = [
    (["--count", "0"], "Invalid value for '--count'"),
    (["--count", "many"], "Invalid value for '--count'"),
    (["--rate", "-1"], "Invalid value for '--rate'"),
    (["--duplicate-ratio", "1.5"], "Invalid value for '--duplicate-ratio'"),
    (["--invalid-ratio", "x"], "Invalid value for '--invalid-ratio'"),
    (["--customers", "0"], "Invalid value for '--customers'"),
    (["--concurrency", "0"], "Invalid value for '--concurrency'"),
    (["--no-such-flag"], "No such option: --no-such-flag"),
    (["--file", "/nonexistent/events.ndjson"], "--file /nonexistent/events.ndjson: no such file"),
    (["--file", "/"], "--file /: Is a directory"),
    (["--file", "-", "--seed", "3", "--customers", "2"], "--customers, --seed: only for synthetic load"),
    (["--stream", " "], "--stream must not be empty"),
    (["--customers", "100000"], "customers must be 1..99999"),
    (["--duplicate-ratio", "0.5", "--invalid-ratio", "0.5"], "must leave room for valid events"),
    (["--occurred-at", "yesterday"], "--occurred-at 'yesterday': expected an RFC 3339 time"),
    (["--file", "-", "--occurred-at", "2026-01-01T00:00:00Z"], "--occurred-at: only for synthetic load"),
]


def run(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        "SHARDHOUSE_STATE_DIR": "/nonexistent-shardhouse",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "x",
        **env,
    }
    environment.pop("AWS_ENDPOINT_URL_KINESIS", None)
    return subprocess.run(
        [str(SHARDHOUSE), "produce", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
        stdin=subprocess.DEVNULL,
    )


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("shardhouse: error: ")
    return lines[0]


@pytest.mark.parametrize(("args", "expected"), CASES)
def test_bad_input_is_one_clear_line(args: list[str], expected: str) -> None:
    assert expected in one_error_line(run(args))


def test_unreachable_endpoint_is_one_line() -> None:
    line = one_error_line(run(["--count", "10"]))
    assert line == (
        "shardhouse: error: cannot reach Kinesis at http://127.0.0.1:9 (EndpointConnectionError)"
        " — is the local stack up? run `shardhouse up`"
    )


def test_ndjson_lines_are_sent_as_is_and_counted() -> None:
    stats = SourceStats()
    lines = [
        b'{"customer_id": "acme", "entity_id": 4}\n',
        b"\n",
        b"not json\r\n",
        b"[]\n",
        b"  \n",
        b'{"a": 1}',
    ]
    out = list(ndjson_records(lines, stats, None))
    assert out == [
        (b'{"customer_id": "acme", "entity_id": 4}', "acme:4"),
        (b"not json", hash_partition_key(b"not json")),
        (b"[]", hash_partition_key(b"[]")),
        (b'{"a": 1}', hash_partition_key(b'{"a": 1}')),
    ]
    assert (stats.read, stats.invalid, stats.blank_lines) == (4, 1, 2)


def test_ndjson_limit_stops_reading() -> None:
    stats = SourceStats()
    consumed = []

    def lines():  # type: ignore[no-untyped-def]
        for i in range(100):
            consumed.append(i)
            yield b'{"customer_id": "c%d"}' % i

    assert len(list(ndjson_records(lines(), stats, 10))) == 10
    assert len(consumed) == 11 and stats.read == 10


def test_plain_progress_lines_are_periodic() -> None:
    now = [0.0]
    err = io.StringIO()
    reporter = PlainReporter(err, every=5, clock=lambda: now[0])
    stats = SourceStats(read=10)
    for t in (1.0, 4.9, 5.0, 6.0, 10.5):
        now[0] = t
        reporter.update(stats, ProduceResult(sent=int(t * 1000)))
    assert err.getvalue().splitlines() == [
        "produce: 10 read, 5,000 sent (1,000 rec/s), 0 retries, 0 failed",
        "produce: 10 read, 10,500 sent (1,000 rec/s), 0 retries, 0 failed",
    ]


def test_summary_lines() -> None:
    result = ProduceResult(sent=998, retries=7, throttled=5, calls=3)
    result.failed = [FailedRecord(b"x", "k", "InternalFailure", "")] * 2
    summary = Summary(
        "events",
        SourceStats(read=1000, duplicates=10, invalid=4),
        result,
        2.0,
        SyntheticConfig(seed=7, customers=100),
    )
    summary.failed_user_records = 2
    assert summary.lines() == [
        "produced 998 records to stream 'events' in 2.0s (499 rec/s)",
        "  sent 998, failed 2, retries 7 (throttled 5), PutRecords calls 3",
        "  synthetic: seed 7, 100 customers, 10 duplicates, 4 invalid",
    ]
    aggregated = Summary("events", SourceStats(read=1000), ProduceResult(sent=5, calls=1), 1.0, None, True)
    assert aggregated.lines() == [
        "produced 1,000 records to stream 'events' in 1.0s (1,000 rec/s)",
        "  aggregated into 5 Kinesis records (KPL format)",
        "  sent 1,000, failed 0, retries 0 (throttled 0), PutRecords calls 1",
        "  input: 1,000 lines, 0 not valid JSON (sent anyway; the batcher dead-letters them), "
        "0 blank skipped",
    ]


class Throttles:
    """Accepts everything except records containing b"slow", which are always throttled."""

    def put_records(self, *, StreamName: str, Records: list[dict[str, object]]) -> dict[str, object]:
        results = [
            {"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "slow down"}
            if b"slow" in r["Data"]  # type: ignore[operator]
            else {"SequenceNumber": "1", "ShardId": "s"}
            for r in Records
        ]
        return {"FailedRecordCount": sum("ErrorCode" in r for r in results), "Records": results}


def test_records_that_never_got_in_fail_the_command_with_the_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Backoff, "delays", lambda self: iter([0.0, 0.0]))  # 3 attempts, no waiting
    stats = SourceStats()
    lines = [b'{"customer_id": "c1", "n": %d}' % i for i in range(1_000)] + [b"slow 1", b"slow 2"]
    summary = _send(Throttles(), "events", ndjson_records(lines, stats, None), stats, None,
                    PlainReporter(io.StringIO(), 0), 0.0, False, 1)  # fmt: skip
    assert summary.result.sent == 1_000 and summary.failed_user_records == 2
    with pytest.raises(RecordsFailed) as info:
        raise_if_failed(summary)
    assert str(info.value) == (
        "2 records were not accepted by Kinesis after retries (ProvisionedThroughputExceededException x2)"
    )
