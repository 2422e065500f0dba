"""Producer SDK: send records to a Kinesis stream with PutRecords, retrying only what failed.

Records are split into requests within Kinesis's limits (:mod:`pipeline.producer.batching`). A
PutRecords response can accept some entries and reject others; only the rejected entries with
a retryable code (throughput exceeded, internal failure) are sent again, with full-jitter
backoff, up to ``backoff.max_attempts`` requests per batch. Entries that still fail, or fail
with a non-retryable code, are returned in :attr:`ProduceResult.failed`, never dropped. A whole
request that fails transiently is retried within the same bound; if that bound runs out, or the
failure is terminal (missing stream, access denied), :meth:`Producer.put` raises, after
reporting the batches that did complete through ``on_progress``. A request that timed out may
still have been applied, so a retry can duplicate records; the pipeline dedupes by
``event_id``, which is why producers assign it.

Ordering: a retried entry lands after entries sent later than it, and with ``concurrency > 1``
batches overlap, so order within a partition key is best-effort. The pipeline does not rely on
it (dedupe is by ``event_id``, read models apply events by version).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import orjson
from botocore.exceptions import BotoCoreError, ClientError

from pipeline.core.aws_errors import TRANSIENT_CODES, classify_aws, error_code, is_transient_aws
from pipeline.core.errors import RetriesExhausted, TerminalError, TransientError
from pipeline.core.retry import Backoff
from pipeline.producer.batching import (
    MAX_RECORDS_PER_REQUEST,
    Entry,
    batches,
    hash_partition_key,
    partition_key_for_event,
)

if TYPE_CHECKING:
    from mypy_boto3_kinesis import KinesisClient


class StreamNotFound(TerminalError):
    def __init__(self, stream: str) -> None:
        super().__init__(f"stream {stream!r} does not exist — run `shardhouse provision`")
        self.stream = stream


class EndpointUnreachable(TransientError):
    """The Kinesis endpoint did not answer (after botocore's own retries)."""


@dataclass(frozen=True)
class FailedRecord:
    """A record Kinesis did not accept, with the last error it gave for it."""

    data: bytes
    partition_key: str
    error_code: str
    error_message: str


@dataclass
class ProduceResult:
    """Counts for one :meth:`Producer.put` (or one batch). ``retries`` counts re-sent records."""

    sent: int = 0
    retries: int = 0
    throttled: int = 0
    calls: int = 0
    failed: list[FailedRecord] = field(default_factory=list)

    @property
    def failed_permanently(self) -> int:
        return len(self.failed)

    def merge(self, other: ProduceResult) -> None:
        self.sent += other.sent
        self.retries += other.retries
        self.throttled += other.throttled
        self.calls += other.calls
        self.failed.extend(other.failed)


@dataclass(frozen=True)
class ResponseSplit:
    """What one PutRecords response means for the entries that were sent."""

    succeeded: int
    retry: list[Entry]
    #: (ErrorCode, ErrorMessage) of each entry in ``retry``, for the report if we give up.
    retry_errors: list[tuple[str, str]]
    failed: list[FailedRecord]
    throttled: int


def split_response(
    entries: Sequence[Entry],
    results: Sequence[Mapping[str, Any]],
    *,
    retryable: frozenset[str] = TRANSIENT_CODES,
) -> ResponseSplit:
    """Pair request entries with response results (same order, per the API) and sort them into
    accepted, to retry (retryable ErrorCode) and failed for good (any other ErrorCode)."""
    if len(results) != len(entries):
        raise TerminalError(f"PutRecords answered {len(results)} results for {len(entries)} records")
    succeeded = throttled = 0
    retry: list[Entry] = []
    retry_errors: list[tuple[str, str]] = []
    failed: list[FailedRecord] = []
    for entry, result in zip(entries, results, strict=True):
        code = result.get("ErrorCode")
        if not code:
            succeeded += 1
            continue
        message = str(result.get("ErrorMessage", ""))
        if code == "ProvisionedThroughputExceededException":
            throttled += 1
        if code in retryable:
            retry.append(entry)
            retry_errors.append((str(code), message))
        else:
            failed.append(FailedRecord(entry[0], entry[1], str(code), message))
    return ResponseSplit(succeeded, retry, retry_errors, failed, throttled)


def encode_event(event: Mapping[str, Any]) -> Entry:
    """An event envelope as a record: orjson bytes, keyed by :func:`partition_key_for_event`
    (customer id plus entity id), or by a hash of the bytes when it has no customer id."""
    data = orjson.dumps(event)
    return data, partition_key_for_event(event) or hash_partition_key(data)


DEFAULT_BACKOFF = Backoff(base=0.1, cap=5.0, max_attempts=8)


class Producer:
    """Sends records to one stream. Thread-compatible: one ``put`` at a time per instance.

    ``concurrency`` > 1 keeps that many PutRecords requests in flight (boto3 clients are
    thread-safe). Not against moto: its shards assign sequence numbers without a lock, and
    concurrent PutRecords silently overwrite each other's records (74 of 20,000 lost at 4).
    ``on_progress`` is called in the caller's thread, in batch order, with the running totals
    after each batch completes. ``max_batch_age`` closes a batch early when
    records arrive slowly (e.g. a rate-limited source).
    """

    def __init__(
        self,
        kinesis: KinesisClient,
        stream_name: str,
        *,
        backoff: Backoff = DEFAULT_BACKOFF,
        max_attempts: int | None = None,
        concurrency: int = 1,
        max_batch_records: int = MAX_RECORDS_PER_REQUEST,
        max_batch_age: float | None = None,
        on_progress: Callable[[ProduceResult], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.kinesis = kinesis
        self.stream_name = stream_name
        self.backoff = backoff if max_attempts is None else replace(backoff, max_attempts=max_attempts)
        if self.backoff.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.concurrency = concurrency
        self.max_batch_records = max_batch_records
        self.max_batch_age = max_batch_age
        self.on_progress = on_progress
        self._sleep = sleep

    def put_events(self, events: Iterable[Mapping[str, Any]]) -> ProduceResult:
        """Encode event envelopes with orjson and send them (see :func:`encode_event`)."""
        return self.put(encode_event(e) for e in events)

    def put(self, records: Iterable[Entry]) -> ProduceResult:
        """Send ``(data, partition_key)`` records; returns totals including records that failed
        for good. Raises on terminal errors or when a whole request keeps failing."""
        total = ProduceResult()
        chunks = batches(records, max_records=self.max_batch_records, max_age=self.max_batch_age)
        if self.concurrency == 1:
            for batch in chunks:
                self._done(total, self.send_batch(batch))
            return total
        inflight: deque[Future[ProduceResult]] = deque()
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="produce") as pool:
            try:
                for batch in chunks:
                    if len(inflight) >= self.concurrency:
                        self._done(total, inflight.popleft().result())
                    inflight.append(pool.submit(self.send_batch, batch))
            finally:
                # Whatever stopped the loop, account for every request already sent, then
                # re-raise the first error (the source's, or a request's).
                error: BaseException | None = None
                while inflight:
                    try:
                        self._done(total, inflight.popleft().result())
                    except Exception as exc:
                        error = error or exc
                if error is not None:
                    raise error
        return total

    def _done(self, total: ProduceResult, batch: ProduceResult) -> None:
        total.merge(batch)
        if self.on_progress is not None:
            self.on_progress(total)

    def send_batch(self, batch: Sequence[Entry]) -> ProduceResult:
        """One PutRecords request (≤ 500 records, ≤ 5 MiB) and its bounded retries."""
        outcome = ProduceResult()
        pending: Sequence[Entry] = batch
        delays = self.backoff.delays()
        attempt = 1
        while pending:
            outcome.calls += 1
            try:
                response = self.kinesis.put_records(
                    StreamName=self.stream_name,
                    Records=[{"Data": data, "PartitionKey": key} for data, key in pending],
                )
            except (ClientError, BotoCoreError) as exc:
                if error_code(exc) == "ResourceNotFoundException":
                    raise StreamNotFound(self.stream_name) from exc
                if not is_transient_aws(exc):
                    raise classify_aws(exc, f"put records to stream {self.stream_name!r}") from exc
                delay = next(delays, None)
                if delay is None:
                    raise RetriesExhausted(
                        f"put records to stream {self.stream_name!r}", attempt, exc
                    ) from exc
                outcome.retries += len(pending)
            else:
                split = split_response(pending, response["Records"])
                outcome.sent += split.succeeded
                outcome.throttled += split.throttled
                outcome.failed.extend(split.failed)
                if not split.retry:
                    break
                delay = next(delays, None)
                if delay is None:
                    outcome.failed.extend(
                        FailedRecord(data, key, code, f"{message} (gave up after {attempt} attempts)")
                        for (data, key), (code, message) in zip(split.retry, split.retry_errors, strict=True)
                    )
                    break
                outcome.retries += len(split.retry)
                pending = split.retry
            self._sleep(delay)
            attempt += 1
        return outcome


@dataclass(frozen=True)
class StreamInfo:
    name: str
    status: str
    open_shards: int


def describe_stream(kinesis: KinesisClient, stream: str) -> StreamInfo:
    """Check the stream exists and the endpoint answers, with errors a person can act on."""
    try:
        summary = kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]
    except ClientError as exc:
        if error_code(exc) == "ResourceNotFoundException":
            raise StreamNotFound(stream) from exc
        raise classify_aws(exc, f"describe stream {stream!r}") from exc
    except BotoCoreError as exc:
        if is_transient_aws(exc):
            endpoint = kinesis.meta.endpoint_url
            raise EndpointUnreachable(
                f"cannot reach Kinesis at {endpoint} ({type(exc).__name__}) — "
                "is the local stack up? run `shardhouse up`"
            ) from exc
        raise classify_aws(exc, f"describe stream {stream!r}") from exc
    return StreamInfo(
        name=stream,
        status=str(summary["StreamStatus"]),
        open_shards=int(summary.get("OpenShardCount", 0)),
    )
