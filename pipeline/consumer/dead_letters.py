"""Where the runtime dead-letters a record its processor cannot process: one S3 object per record
under ``dead-letter/`` (pipeline.core.layout.runtime_dead_letter_key), in the dead-letter format every
other dead letter uses, so operators and the demo's verdict read them the same way."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import TYPE_CHECKING

from pipeline.consumer.processor import Record
from pipeline.core.aws_errors import classify_aws
from pipeline.core.dead_letters import Rejected, dead_letter_document
from pipeline.core.layout import runtime_dead_letter_key
from pipeline.core.retry import Backoff, call_with_retry

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


class S3DeadLetters:
    """A :data:`pipeline.consumer.resilient.DeadLetterSink` writing to S3 (retried, then raises:
    the record is then kept, never dropped)."""

    def __init__(self, s3: S3Client, bucket: str, stream: str, application: str) -> None:
        self.s3, self.bucket, self.stream, self.application = s3, bucket, stream, application
        self.backoff = Backoff(base=0.2, cap=5.0, max_attempts=6)

    def __call__(self, shard_id: str, record: Record, reason: str, detail: str) -> None:
        at = record.approximate_arrival_timestamp
        day = _day_of(at)
        key = runtime_dead_letter_key(
            self.stream, self.application, reason, shard_id, day, record.sequence_number,
            record.sub_sequence_number,
        )  # fmt: skip
        rejected = Rejected(
            record.binary_data, record.partition_key, record.sequence_number,
            record.sub_sequence_number, at, reason, detail,
        )  # fmt: skip
        body = dead_letter_document(self.stream, shard_id, [rejected])

        def put() -> None:
            try:
                self.s3.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType="application/x-ndjson")
            except Exception as exc:
                raise classify_aws(exc, f"dead letter s3://{self.bucket}/{key}") from exc

        call_with_retry(put, what=f"{reason} dead letter", backoff=self.backoff)


def _day_of(arrival_ms: int) -> date:
    """The arrival day, or today for a timestamp no calendar holds (the key must always exist)."""
    try:
        if arrival_ms > 0:
            return datetime.fromtimestamp(arrival_ms / 1000, UTC).date()
    except (OverflowError, OSError, ValueError):
        pass
    return datetime.now(UTC).date()
