"""Producer retry logic against a tiny scripted stand-in for the Kinesis client (no servers)."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.errors import RetriesExhausted, TerminalError
from pipeline.core.retry import Backoff
from pipeline.producer.client import (
    Producer,
    ProduceResult,
    StreamNotFound,
    describe_stream,
    encode_event,
    split_response,
)

THROTTLED = "ProvisionedThroughputExceededException"


def client_error(code: str, status: int = 400) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "PutRecords",
    )


# Decides, per call, what happens to each record: None = accepted, else an ErrorCode.
Verdict = Callable[[int, int, bytes], str | None]


class FakeKinesis:
    """Records every PutRecords call; entries are accepted or failed by ``verdict``."""

    def __init__(self, verdict: Verdict | None = None, raises: Sequence[Exception] = ()) -> None:
        self.verdict = verdict or (lambda call, i, data: None)
        self.raises = list(raises)
        self.calls: list[list[bytes]] = []
        self.accepted: list[tuple[bytes, str]] = []
        self.lock = threading.Lock()

    def put_records(self, *, StreamName: str, Records: list[dict[str, Any]]) -> dict[str, Any]:
        with self.lock:
            call = len(self.calls)
            self.calls.append([r["Data"] for r in Records])
            if self.raises:
                raise self.raises.pop(0)
            results: list[dict[str, Any]] = []
            for i, r in enumerate(Records):
                code = self.verdict(call, i, r["Data"])
                if code is None:
                    self.accepted.append((r["Data"], r["PartitionKey"]))
                    results.append({"SequenceNumber": str(len(self.accepted)), "ShardId": "s"})
                else:
                    results.append({"ErrorCode": code, "ErrorMessage": f"{code} for record"})
            failed = sum(1 for r in results if "ErrorCode" in r)
            return {"FailedRecordCount": failed, "Records": results}


def make(n: int) -> list[tuple[bytes, str]]:
    return [(b"rec-%05d" % i, f"k{i % 3}") for i in range(n)]


def producer(client: FakeKinesis, **kw: Any) -> tuple[Producer, list[float]]:
    sleeps: list[float] = []
    kw.setdefault("backoff", Backoff(base=0.1, cap=1.0, max_attempts=4, rng=random.Random(1)))
    return Producer(client, "events", sleep=sleeps.append, **kw), sleeps  # type: ignore[arg-type]


def test_only_the_failed_entries_are_sent_again() -> None:
    # First call: records 1 and 3 are throttled, 4 has an internal failure; then all succeed.
    first = {1: THROTTLED, 3: THROTTLED, 4: "InternalFailure"}
    client = FakeKinesis(lambda call, i, data: first.get(i) if call == 0 else None)
    p, sleeps = producer(client)
    result = p.put(make(6))
    assert client.calls[1] == [b"rec-00001", b"rec-00003", b"rec-00004"]
    assert len(client.calls) == 2
    assert sorted(d for d, _ in client.accepted) == [d for d, _ in make(6)]
    assert (result.sent, result.retries, result.throttled, result.calls) == (6, 3, 2, 2)
    assert result.failed == []
    assert len(sleeps) == 1 and 0 <= sleeps[0] <= 0.1


def test_non_retryable_entry_errors_are_reported_not_retried() -> None:
    client = FakeKinesis(lambda call, i, data: "KMSAccessDeniedException" if i == 2 else None)
    p, sleeps = producer(client)
    result = p.put(make(5))
    assert len(client.calls) == 1 and sleeps == []
    assert result.sent == 4
    assert [(f.data, f.error_code) for f in result.failed] == [(b"rec-00002", "KMSAccessDeniedException")]


def test_entries_still_failing_after_the_last_attempt_are_returned() -> None:
    client = FakeKinesis(lambda call, i, data: THROTTLED if data == b"rec-00007" else None)
    p, sleeps = producer(client, max_attempts=3)
    result = p.put(make(10))
    assert len(client.calls) == 3 and len(sleeps) == 2
    assert result.sent == 9 and result.failed_permanently == 1
    failed = result.failed[0]
    assert (failed.data, failed.partition_key, failed.error_code) == (b"rec-00007", "k1", THROTTLED)
    assert "gave up after 3 attempts" in failed.error_message
    assert result.retries == 2 and result.throttled == 3


def test_backoff_grows_with_full_jitter_within_the_cap() -> None:
    client = FakeKinesis(lambda call, i, data: THROTTLED if call < 5 else None)
    backoff = Backoff(base=0.1, cap=0.5, max_attempts=8, rng=random.Random(7))
    p, sleeps = producer(client, backoff=backoff)
    assert p.put(make(3)).sent == 3
    assert len(sleeps) == 5
    for n, delay in enumerate(sleeps):
        assert 0 <= delay <= min(0.5, 0.1 * 2**n)


def test_whole_request_transient_errors_are_retried() -> None:
    client = FakeKinesis(raises=[client_error(THROTTLED), client_error("InternalFailure", 500)])
    p, sleeps = producer(client)
    result = p.put(make(4))
    assert result.sent == 4 and result.calls == 3 and result.retries == 8
    assert client.calls[0] == client.calls[2] and len(sleeps) == 2


def test_whole_request_failing_every_attempt_raises() -> None:
    errors = [EndpointConnectionError(endpoint_url="http://x") for _ in range(4)]
    p, _ = producer(FakeKinesis(raises=errors))
    with pytest.raises(RetriesExhausted, match="put records to stream 'events': gave up after 4"):
        p.put(make(2))


def test_missing_stream_is_a_clear_terminal_error() -> None:
    p, sleeps = producer(FakeKinesis(raises=[client_error("ResourceNotFoundException")]))
    with pytest.raises(StreamNotFound) as info:
        p.put(make(1))
    assert str(info.value) == "stream 'events' does not exist — run `shardhouse provision`"
    assert sleeps == []


def test_access_denied_is_terminal_and_not_retried() -> None:
    client = FakeKinesis(raises=[client_error("AccessDeniedException")])
    p, sleeps = producer(client)
    with pytest.raises(TerminalError, match="AccessDeniedException"):
        p.put(make(1))
    assert len(client.calls) == 1 and sleeps == []


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(0, 1300),
    fail_rate=st.floats(0, 0.9),
    seed=st.integers(0, 2**16),
    attempts=st.integers(1, 6),
    concurrency=st.sampled_from([1, 3]),
)
def test_nothing_lost_nothing_accepted_twice(
    n: int, fail_rate: float, seed: int, attempts: int, concurrency: int
) -> None:
    rng = random.Random(seed)
    codes = [THROTTLED, "InternalFailure", "KMSDisabledException"]
    client = FakeKinesis(lambda call, i, data: rng.choice(codes) if rng.random() < fail_rate else None)
    p, _ = producer(client, max_attempts=attempts, concurrency=concurrency)
    records = make(n)
    result = p.put(records)
    accepted = [d for d, _ in client.accepted]
    assert len(accepted) == len(set(accepted)) == result.sent
    assert sorted(accepted + [f.data for f in result.failed]) == [d for d, _ in records]
    assert all(len(call) <= 500 for call in client.calls)


def test_concurrent_requests_report_progress_in_order() -> None:
    client = FakeKinesis()
    seen: list[int] = []
    p, _ = producer(client, concurrency=4, on_progress=lambda r: seen.append(r.sent))
    result = p.put(make(4_321))
    assert result.sent == 4_321 and result.calls == 9
    assert seen == [500 * i for i in range(1, 9)] + [4_321]
    assert sorted(d for d, _ in client.accepted) == [d for d, _ in make(4_321)]


def test_a_broken_source_stops_after_inflight_requests_are_counted() -> None:
    client = FakeKinesis()
    totals: list[ProduceResult] = []

    def records() -> Any:
        yield from make(1_500)
        raise ValueError("source broke")

    p, _ = producer(client, concurrency=2, on_progress=totals.append)
    with pytest.raises(ValueError, match="source broke"):
        p.put(records())
    # The unfinished third batch was never sent; the two complete ones were, and were counted.
    assert totals[-1].sent == len(client.accepted) == 1_000


def test_a_failed_request_is_raised_after_the_others_in_flight_finish() -> None:
    class Denies(FakeKinesis):
        def put_records(self, *, StreamName: str, Records: list[dict[str, Any]]) -> dict[str, Any]:
            if Records[0]["Data"] == b"rec-00500":
                raise client_error("AccessDeniedException")
            return super().put_records(StreamName=StreamName, Records=Records)

    client = Denies()
    totals: list[ProduceResult] = []
    p, _ = producer(client, concurrency=2, on_progress=totals.append)
    with pytest.raises(TerminalError, match="AccessDeniedException"):
        p.put(make(5_000))
    # Batch 2 was in flight when batch 1's failure was seen: it is counted, nothing after it sent.
    assert totals[-1].sent == len(client.accepted) == 1_000
    assert {d for d, _ in client.accepted} == {d for d, _ in make(500) + make(1_500)[1_000:]}


def test_put_events_keys_by_customer_and_entity() -> None:
    client = FakeKinesis()
    p, _ = producer(client)
    events = [
        {"event_id": "e1", "customer_id": "acme", "payload": {"entity_id": "o-1"}},
        {"event_id": "e2", "customer_id": "acme"},
        {"event_id": "e3"},
    ]
    assert p.put_events(events).sent == 3
    assert [k for _, k in client.accepted][:2] == ["acme:o-1", "acme"]
    assert [orjson.loads(d)["event_id"] for d, _ in client.accepted] == ["e1", "e2", "e3"]
    assert encode_event(events[2])[1] == client.accepted[2][1]


def test_split_response_rejects_a_mismatched_answer() -> None:
    with pytest.raises(TerminalError, match="answered 1 results for 2 records"):
        split_response(make(2), [{"SequenceNumber": "1"}])


class FakeDescribe:
    class meta:  # mirrors boto3's client.meta
        endpoint_url = "http://127.0.0.1:9"

    def __init__(self, exc: Exception | None) -> None:
        self.exc = exc

    def describe_stream_summary(self, *, StreamName: str) -> dict[str, Any]:
        if self.exc is not None:
            raise self.exc
        return {"StreamDescriptionSummary": {"StreamStatus": "ACTIVE", "OpenShardCount": 4}}


def test_describe_stream_errors_say_what_to_do() -> None:
    info = describe_stream(FakeDescribe(None), "s")  # type: ignore[arg-type]
    assert (info.status, info.open_shards) == ("ACTIVE", 4)
    with pytest.raises(StreamNotFound, match="run `shardhouse provision`"):
        describe_stream(FakeDescribe(client_error("ResourceNotFoundException")), "s")  # type: ignore[arg-type]
    down = EndpointConnectionError(endpoint_url="http://127.0.0.1:9")
    with pytest.raises(Exception, match=r"cannot reach Kinesis at http://127.0.0.1:9 .*shardhouse up"):
        describe_stream(FakeDescribe(down), "s")  # type: ignore[arg-type]
