"""What a sealed batch becomes — pure functions, no I/O.

Groups of (customer, type, version), their deterministic S3 keys, the dead-letter document, the
batch id and the manifest are all derived from the batch's content and stream position, so a
replay of the same records derives the same names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

from pipeline.core.layout import EventObjectKey, dead_letter_key
from pipeline.core.manifest import (
    FORMAT,
    BatchManifest,
    BatchObject,
    CustomerRows,
    batch_id,
    encode_manifest,
)
from workers.batcher.buffer import Batch

GroupKey = tuple[str | None, str, int]  # (customer_id — None: the shared object —, type, version)

#: A customer with at least this many rows of one type+version in a batch gets its own object;
#: the others share one object per (batch, type, version). Objects per flush are then at most
#: types x versions + rows / OWN_OBJECT_ROWS, whatever the number of customers.
OWN_OBJECT_ROWS = 5_000

# SQS refuses bodies over 256 KiB; a manifest bigger than this is split into parts.
MAX_MANIFEST_BYTES = 240 * 1024


def batch_day(batch: Batch) -> date:
    """The ``dt=`` of a batch's keys: the UTC day its first record reached Kinesis.

    Taken from the stream, not the clock, so a replay names the same objects; and not from the
    events' ``occurred_at``, so one batch writes one object per group however old its events are.
    """
    return datetime.fromtimestamp(batch.first_arrival_ms / 1000, tz=UTC).date()


def batch_id_of(stream: str, batch: Batch) -> str:
    return batch_id(stream, batch.shard_id, batch.first.sequence_number, batch.last.sequence_number)


def object_key(batch: Batch, group: GroupKey) -> str:
    customer_id, event_type, version = group
    return str(
        EventObjectKey(
            customer_id=customer_id,
            event_type=event_type,
            version=version,
            day=batch_day(batch),
            shard_id=batch.shard_id,
            first_sequence=batch.first.sequence_number,
            last_sequence=batch.last.sequence_number,
        )
    )


def dead_letter_key_of(stream: str, batch: Batch) -> str:
    return dead_letter_key(
        stream, batch.shard_id, batch_day(batch), batch.first.sequence_number, batch.last.sequence_number
    )


def rfc3339(value: datetime) -> str:
    """UTC, microseconds, ``Z`` — the manifest's timestamp spelling."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    """What an object's S3 metadata records about it; a replay that finds the object reads it back."""

    rows: int
    min_occurred_at: str
    max_occurred_at: str
    #: A shared object's (customer, rows) in file order; () for a customer's own object. Not
    #: in S3 metadata (2 KiB): a replay or a reused object reads it from the rows themselves.
    customers: tuple[tuple[str, int], ...] = ()

    def to_s3(self, batch_id: str) -> dict[str, str]:
        return {
            "rows": str(self.rows),
            "min-occurred-at": self.min_occurred_at,
            "max-occurred-at": self.max_occurred_at,
            "batch-id": batch_id,
        }

    @classmethod
    def from_s3(cls, metadata: dict[str, str]) -> ObjectMeta:
        """Raises KeyError/ValueError when the object was not written by a batcher."""
        return cls(
            rows=int(metadata["rows"]),
            min_occurred_at=metadata["min-occurred-at"],
            max_occurred_at=metadata["max-occurred-at"],
        )


def batch_object(key: str, group: GroupKey, meta: ObjectMeta, size: int) -> BatchObject:
    customer_id, event_type, version = group
    return BatchObject(
        key=key,
        customer_id=customer_id or "",
        type=event_type,
        version=version,
        rows=meta.rows,
        bytes=size,
        min_occurred_at=meta.min_occurred_at,
        max_occurred_at=meta.max_occurred_at,
        customers=tuple(CustomerRows(c, n) for c, n in meta.customers),
    )


def build_manifests(
    *,
    stream: str,
    bucket: str,
    batch: Batch,
    objects: Sequence[BatchObject],
    created_at: datetime,
    max_bytes: int = MAX_MANIFEST_BYTES,
) -> list[BatchManifest]:
    """Normally one manifest per batch. A batch with so many objects that its manifest would not
    fit an SQS message is announced in parts with ids ``<batch_id>#<i>of<n>``; each part is a
    complete, independently loadable manifest, and the split is deterministic."""
    base_id = batch_id_of(stream, batch)
    ordered = sorted(objects, key=lambda o: o.key)

    def make(ident: str, part: Sequence[BatchObject]) -> BatchManifest:
        return BatchManifest(
            format=FORMAT,
            batch_id=ident,
            stream=stream,
            shard_id=batch.shard_id,
            first_sequence=batch.first.sequence_number,
            last_sequence=batch.last.sequence_number,
            bucket=bucket,
            objects=tuple(part),
            created_at=rfc3339(created_at),
        )

    whole = make(base_id, ordered)
    size = len(encode_manifest(whole).encode())
    if size <= max_bytes or len(ordered) <= 1:
        return [whole]
    parts = -(-size // max_bytes) + 1
    per = -(-len(ordered) // parts)
    chunks = [ordered[i : i + per] for i in range(0, len(ordered), per)]
    return [make(f"{base_id}#{n}of{len(chunks)}", chunk) for n, chunk in enumerate(chunks, start=1)]
