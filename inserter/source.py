"""S3 for the inserter: whole objects (to stage them), Parquet footers (to replay them), small
puts (Redshift COPY manifests). Each call is bounded (botocore timeouts) and retried with
backoff + jitter on transient errors; failures are classified where they enter.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from botocore.exceptions import BotoCoreError, ClientError

from inserter.errors import LoadError
from pipeline.core.aws_errors import classify_aws, error_code
from pipeline.core.retry import Backoff, call_with_retry

if TYPE_CHECKING:
    from collections.abc import Callable

    from mypy_boto3_s3 import S3Client

T = TypeVar("T")
_MISSING = frozenset({"NoSuchKey", "404", "NotFound", "NoSuchBucket"})
#: One ranged GET usually holds the whole footer of a batcher object (a few KiB).
FOOTER_GUESS = 64 * 1024


@dataclass(frozen=True, slots=True)
class ParquetSummary:
    """What replay needs from a Parquet footer: rows and the occurred_at range (and, for a
    shared object, its customers with their rows — read from the customer_id column)."""

    rows: int
    min_occurred_at: datetime | None
    max_occurred_at: datetime | None
    customers: tuple[tuple[str, int], ...] = ()


class ObjectSource:
    def __init__(self, s3: S3Client, *, backoff: Backoff | None = None) -> None:
        self.s3 = s3
        self.backoff = backoff or Backoff(base=0.2, cap=5.0, max_attempts=5)

    def _call(self, fn: Callable[[], T], what: str) -> T:
        def attempt() -> T:
            try:
                return fn()
            except ClientError as exc:
                if error_code(exc) in _MISSING:
                    raise LoadError(f"{what}: object not found ({error_code(exc)})") from exc
                raise classify_aws(exc, what) from exc
            except BotoCoreError as exc:
                raise classify_aws(exc, what) from exc

        return call_with_retry(attempt, what=what, backoff=self.backoff)

    def read(self, bucket: str, key: str) -> bytes:
        return self._call(
            lambda: self.s3.get_object(Bucket=bucket, Key=key)["Body"].read(), f"get s3://{bucket}/{key}"
        )

    def size(self, bucket: str, key: str) -> int:
        return self._call(
            lambda: int(self.s3.head_object(Bucket=bucket, Key=key)["ContentLength"]),
            f"head s3://{bucket}/{key}",
        )

    def put(self, bucket: str, key: str, body: bytes, content_type: str) -> None:
        self._call(
            lambda: self.s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type),
            f"put s3://{bucket}/{key}",
        )

    def _range(self, bucket: str, key: str, spec: str) -> bytes:
        return self._call(
            lambda: self.s3.get_object(Bucket=bucket, Key=key, Range=spec)["Body"].read(),
            f"get s3://{bucket}/{key} ({spec})",
        )

    def shared_summary(self, bucket: str, key: str) -> ParquetSummary:
        """A shared object's summary: its footer and its customers (the whole object is read)."""
        body = self.read(bucket, key)
        what = f"s3://{bucket}/{key}"
        base = summarize_footer(body[-(struct.unpack("<I", body[-8:-4])[0] + 8) :], what=what)
        customers = customer_rows(body, what=what)
        return ParquetSummary(base.rows, base.min_occurred_at, base.max_occurred_at, customers)

    def summary(self, bucket: str, key: str, size: int) -> ParquetSummary:
        """Rows and occurred_at range from the footer alone (one or two ranged GETs)."""
        if size < 12:
            raise LoadError(f"s3://{bucket}/{key}: {size} bytes is not a Parquet file")
        tail = self._range(bucket, key, f"bytes=-{min(size, FOOTER_GUESS)}")
        if tail[-4:] != b"PAR1":
            raise LoadError(f"s3://{bucket}/{key}: no Parquet footer")
        (footer_len,) = struct.unpack("<I", tail[-8:-4])
        need = footer_len + 8
        if need > size - 4:
            raise LoadError(f"s3://{bucket}/{key}: footer length {footer_len} exceeds the object")
        if need > len(tail):
            tail = self._range(bucket, key, f"bytes=-{need}")
        return summarize_footer(tail[-need:], what=f"s3://{bucket}/{key}")


def customer_rows(body: bytes, *, what: str = "object") -> tuple[tuple[str, int], ...]:
    """(customer, rows) of a Parquet object, in order of first appearance."""
    try:
        column = pq.read_table(pa.BufferReader(body), columns=["customer_id"]).column("customer_id")
    except (pa.ArrowInvalid, OSError, KeyError) as exc:
        raise LoadError(f"{what}: no readable customer_id column: {exc}") from exc
    counts = pc.value_counts(column.combine_chunks())
    return tuple(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True))


def summarize_footer(footer: bytes, *, what: str = "object") -> ParquetSummary:
    """Parse a Parquet footer (metadata + length + magic) without the data pages it points to."""
    try:
        meta = pq.read_metadata(pa.BufferReader(b"PAR1" + footer))
    except (pa.ArrowInvalid, OSError) as exc:
        raise LoadError(f"{what}: unreadable Parquet footer: {exc}") from exc
    names = meta.schema.names
    if "occurred_at" not in names:
        raise LoadError(f"{what}: no occurred_at column")
    col = names.index("occurred_at")
    lows: list[datetime] = []
    highs: list[datetime] = []
    for i in range(meta.num_row_groups):
        group = meta.row_group(i)
        if group.num_rows == 0:
            continue
        stats = group.column(col).statistics
        if stats is None or not stats.has_min_max:
            return ParquetSummary(meta.num_rows, None, None)  # unknown: the manifest says ''
        lows.append(_utc(stats.min))
        highs.append(_utc(stats.max))
    return ParquetSummary(meta.num_rows, min(lows, default=None), max(highs, default=None))


def _utc(value: Any) -> datetime:
    if not isinstance(value, datetime):
        raise LoadError(f"occurred_at statistics of type {type(value).__name__}")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
