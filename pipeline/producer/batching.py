"""Shape records for Kinesis ``PutRecords``: size limits, request batches, partition keys.

Pure functions over ``(data, partition_key)`` pairs, so the limits are property-tested without
a server. Sizes count the data bytes plus the UTF-8 bytes of the partition key, which is how
Kinesis (and moto) apply both the 1 MiB per-record and the 5 MiB per-request limit.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import orjson

from pipeline.core.errors import TerminalError

#: One PutRecords entry: the record's bytes and its partition key.
Entry = tuple[bytes, str]

MAX_RECORDS_PER_REQUEST = 500
MAX_REQUEST_BYTES = 5 * 1024 * 1024
MAX_RECORD_BYTES = 1024 * 1024
MAX_PARTITION_KEY_CHARS = 256

#: Where :func:`partition_key_for_event` looks for the entity an event is about (top level, then
#: payload), first match wins: an order's events follow the order, an appointment's its
#: provider's calendar, a page view its user. Same keys as :mod:`pipeline.producer.synthetic` assigns.
ENTITY_FIELDS = ("entity_id", "order_id", "provider_id", "user_id")


class RecordTooLarge(TerminalError):
    """A single record cannot be sent at all; Kinesis would reject the whole request."""

    def __init__(self, index: int, size: int) -> None:
        super().__init__(
            f"record #{index} is {size:,} bytes (data + partition key); "
            f"Kinesis accepts at most {MAX_RECORD_BYTES:,} bytes per record"
        )
        self.index = index
        self.size = size


class InvalidPartitionKey(TerminalError):
    """Kinesis partition keys are 1-256 Unicode characters."""


def record_size(data: bytes, partition_key: str) -> int:
    """The bytes a record counts against the per-record and per-request limits."""
    return len(data) + len(partition_key.encode("utf-8"))


def check_record(data: bytes, partition_key: str, index: int) -> int:
    """Validate one record before it is sent; returns its size. ``index`` is for the message."""
    if not 1 <= len(partition_key) <= MAX_PARTITION_KEY_CHARS:
        raise InvalidPartitionKey(
            f"record #{index}: partition key must be 1-{MAX_PARTITION_KEY_CHARS} characters, "
            f"got {len(partition_key)}"
        )
    size = record_size(data, partition_key)
    if size > MAX_RECORD_BYTES:
        raise RecordTooLarge(index, size)
    return size


def batches(
    records: Iterable[Entry],
    *,
    max_records: int = MAX_RECORDS_PER_REQUEST,
    max_bytes: int = MAX_REQUEST_BYTES,
    max_age: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[list[Entry]]:
    """Split records, in order, into PutRecords requests within the count and byte limits.

    Lazy: a batch is yielded as soon as the next record would not fit, so the input can be an
    endless stream. Each record is checked with :func:`check_record` when it is reached, so an
    oversize record raises before the batch containing it is yielded (earlier batches may
    already have been sent). ``max_age`` also closes a batch once its first record has waited
    that long (checked when the next record arrives), so a rate-limited source is sent promptly.
    """
    if not 1 <= max_records <= MAX_RECORDS_PER_REQUEST:
        raise ValueError(f"max_records must be 1-{MAX_RECORDS_PER_REQUEST}, got {max_records}")
    if not MAX_RECORD_BYTES <= max_bytes <= MAX_REQUEST_BYTES:
        raise ValueError(f"max_bytes must be {MAX_RECORD_BYTES}-{MAX_REQUEST_BYTES}, got {max_bytes}")
    batch: list[Entry] = []
    batch_bytes = 0
    started = 0.0
    for index, entry in enumerate(records):
        size = check_record(entry[0], entry[1], index)
        if batch and (
            len(batch) >= max_records
            or batch_bytes + size > max_bytes
            or (max_age is not None and clock() - started >= max_age)
        ):
            yield batch
            batch = []
            batch_bytes = 0
        if not batch and max_age is not None:
            started = clock()
        batch.append(entry)
        batch_bytes += size
    if batch:
        yield batch


def hash_partition_key(data: bytes) -> str:
    """A stable partition key for a record without a usable customer id (spreads evenly)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def partition_key_for_event(event: Mapping[str, Any]) -> str | None:
    """``customer_id`` or ``customer_id:entity`` for an event envelope; None if it has no
    usable ``customer_id``.

    The customer keeps a customer's events together for the batcher's per-customer files; the
    entity (the first of :data:`ENTITY_FIELDS` at the top level or in ``payload``) spreads one
    large customer over shards while keeping each entity's events on one shard, in order, for
    the projector.
    Keys longer than Kinesis allows are replaced by their hash (still deterministic).
    """
    customer = event.get("customer_id")
    if not isinstance(customer, str) or not customer:
        return None
    key = customer
    payload = event.get("payload")
    for name in ENTITY_FIELDS:
        entity = event.get(name)
        if entity is None and isinstance(payload, Mapping):
            entity = payload.get(name)
        if isinstance(entity, str | int) and not isinstance(entity, bool) and str(entity):
            key = f"{customer}:{entity}"
            break
    if len(key) > MAX_PARTITION_KEY_CHARS:
        return hash_partition_key(key.encode("utf-8"))
    return key


def partition_key_for_line(line: bytes) -> tuple[str, bool]:
    """Partition key for one NDJSON line, and whether the line parsed as JSON.

    Unparseable lines (and JSON without a customer id) are still sent, under a hash of their
    bytes: the batcher dead-letters them with a reason; the producer never drops input.
    """
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError:
        return hash_partition_key(line), False
    key = partition_key_for_event(event) if isinstance(event, dict) else None
    return (key if key is not None else hash_partition_key(line)), True
