"""Re-announce batches already in S3 (backfill, recovery, a new warehouse): list event objects
under a prefix, group them back into their original batches (shard + first-last sequence, which
every key carries), describe each object from its Parquet footer (rows, occurred_at range) and
send one manifest per batch through the same queue the batcher uses. A shared object
(``events/shared/…``) is read whole: its entry lists its customers, counted from its rows.

Replay is safe to repeat: the ledger skips objects already loaded and the merge drops
(customer_id, event_id) pairs already present, so replaying everything twice changes no row.
Grouping and manifest building are pure; listing, footer reads and sends are the I/O edge
(:class:`Replayer`).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from inserter.queue import BatchQueue
from inserter.source import ObjectSource, ParquetSummary
from pipeline.core.aws_errors import classify_aws
from pipeline.core.errors import ConfigError
from pipeline.core.layout import EventObjectKey, UnsafeKeyComponent, parse_event_key
from pipeline.core.manifest import (
    FORMAT,
    BatchManifest,
    BatchObject,
    CustomerRows,
    batch_id,
    encode_manifest,
)
from pipeline.core.retry import call_with_retry

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

BatchKey = tuple[str, int, int]  # shard id, first sequence, last sequence (numeric order)
#: SQS bodies are limited to 256 KiB; a batch with more objects than fit goes in several parts
#: (the same batch id: the ledger is per object, so parts load independently).
MAX_MANIFEST_BYTES = 240 * 1024


@dataclass(frozen=True, slots=True)
class Listed:
    key: str
    size: int
    parsed: EventObjectKey


@dataclass
class ReplayReport:
    listed: int = 0
    selected: int = 0
    ignored: list[str] = field(default_factory=list)  # keys that are not event objects
    batches: int = 0
    messages: int = 0
    rows: int = 0


def parse_location(text: str, default_bucket: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` or a bare ``prefix`` (in the configured bucket)."""
    if text.startswith("s3://"):
        bucket, _, prefix = text[5:].partition("/")
        if not bucket:
            raise ConfigError(f"--from {text!r}: no bucket")
        return bucket, prefix
    return default_bucket, text.lstrip("/")


def select(
    objects: Iterable[tuple[str, int]], since: date | None, until: date | None
) -> tuple[list[Listed], list[str]]:
    """Event objects whose ``dt=`` (the batch's arrival day) lies in [since, until]; and the
    keys that are not event objects at all."""
    chosen: list[Listed] = []
    ignored: list[str] = []
    for key, size in objects:
        try:
            parsed = parse_event_key(key)
        except UnsafeKeyComponent:
            ignored.append(key)
            continue
        if (since is None or parsed.day >= since) and (until is None or parsed.day <= until):
            chosen.append(Listed(key, size, parsed))
    return chosen, ignored


def group_batches(listed: Iterable[Listed]) -> dict[BatchKey, list[Listed]]:
    """Objects per original batch, batches in stream order per shard, objects by key."""
    groups: dict[BatchKey, list[Listed]] = defaultdict(list)
    for obj in listed:
        p = obj.parsed
        groups[(p.shard_id, int(p.first_sequence), int(p.last_sequence))].append(obj)
    return {k: sorted(groups[k], key=lambda o: o.key) for k in sorted(groups)}


def _rfc3339(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def build_manifests(
    stream: str,
    bucket: str,
    key: BatchKey,
    objects: Sequence[tuple[Listed, ParquetSummary]],
    *,
    created_at: datetime,
    max_bytes: int = MAX_MANIFEST_BYTES,
) -> list[BatchManifest]:
    """The manifest(s) of one batch, as the batcher would have announced it."""
    shard, first, last = key
    entries = [
        BatchObject(
            key=o.key,
            customer_id=o.parsed.customer_id or "",
            type=o.parsed.event_type,
            version=o.parsed.version,
            rows=s.rows,
            bytes=o.size,
            min_occurred_at=_rfc3339(s.min_occurred_at),
            max_occurred_at=_rfc3339(s.max_occurred_at),
            customers=tuple(CustomerRows(c, n) for c, n in s.customers),
        )
        for o, s in objects
    ]

    def manifest(part: Sequence[BatchObject]) -> BatchManifest:
        return BatchManifest(
            format=FORMAT,
            batch_id=batch_id(stream, shard, str(first), str(last)),
            stream=stream,
            shard_id=shard,
            first_sequence=str(first),
            last_sequence=str(last),
            bucket=bucket,
            objects=tuple(part),
            created_at=_rfc3339(created_at),
        )

    parts: list[list[BatchObject]] = [[]]
    for entry in entries:
        if parts[-1] and len(encode_manifest(manifest([*parts[-1], entry]))) > max_bytes:
            parts.append([])
        parts[-1].append(entry)
    return [manifest(p) for p in parts if p]


class Replayer:
    def __init__(
        self,
        s3: S3Client,
        source: ObjectSource,
        queue: BatchQueue | None,
        *,
        stream: str,
        workers: int = 8,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.s3 = s3
        self.source = source
        self.queue = queue  # None: dry run
        self.stream = stream
        self.workers = workers
        self.clock = clock

    def list(self, bucket: str, prefix: str) -> Iterator[tuple[str, int]]:
        token: str | None = None
        while True:

            def page(token: str | None = token) -> dict[str, object]:
                kwargs: dict[str, object] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": 1000}
                if token:
                    kwargs["ContinuationToken"] = token
                try:
                    return dict(self.s3.list_objects_v2(**kwargs))  # type: ignore[arg-type]
                except (ClientError, BotoCoreError) as exc:
                    raise classify_aws(exc, f"list s3://{bucket}/{prefix}") from exc

            resp = call_with_retry(page, what=f"list s3://{bucket}/{prefix}")
            for obj in resp.get("Contents", []):  # type: ignore[attr-defined]
                yield str(obj["Key"]), int(obj["Size"])
            if not resp.get("IsTruncated"):
                return
            token = str(resp["NextContinuationToken"])

    def _describe(self, bucket: str, obj: Listed) -> ParquetSummary:
        """A customer's object from its footer; a shared one read whole (its customers)."""
        if obj.parsed.shared:
            return self.source.shared_summary(bucket, obj.key)
        return self.source.summary(bucket, obj.key, obj.size)

    def run(
        self,
        bucket: str,
        prefix: str,
        *,
        since: date | None = None,
        until: date | None = None,
        on_manifest: Callable[[BatchManifest], None] = lambda _m: None,
    ) -> ReplayReport:
        report = ReplayReport()
        listing = list(self.list(bucket, prefix))
        report.listed = len(listing)
        chosen, report.ignored = select(listing, since, until)
        report.selected = len(chosen)
        groups = group_batches(chosen)
        report.batches = len(groups)
        with ThreadPoolExecutor(max_workers=max(1, self.workers)) as pool:
            summaries = dict(
                zip(
                    [o.key for o in chosen],
                    pool.map(lambda o: self._describe(bucket, o), chosen),
                    strict=True,
                )
            )
        now = self.clock()
        for key, objects in groups.items():
            described = [(o, summaries[o.key]) for o in objects]
            report.rows += sum(s.rows for _, s in described)
            for manifest in build_manifests(self.stream, bucket, key, described, created_at=now):
                on_manifest(manifest)
                if self.queue is not None:
                    self.queue.send(encode_manifest(manifest), {"batch_id": manifest.batch_id, "replay": "1"})
                report.messages += 1
        log.info(
            "replay announced" if self.queue is not None else "replay planned (dry run)",
            extra={
                "bucket": bucket,
                "prefix": prefix,
                "objects": report.selected,
                "batches": report.batches,
                "messages": report.messages,
                "rows": report.rows,
                "ignored": len(report.ignored),
            },
        )
        return report
