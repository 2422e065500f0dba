"""Where things live in S3. Keys derive from a batch's position in the stream, so a replayed
flush overwrites (or finds, with If-None-Match) the same object instead of adding another.

Only values that passed validation reach these builders; they re-check anyway, because a key
built from an unchecked value is a path-traversal bug.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

SAFE_COMPONENT = re.compile(r"^[a-z0-9][a-z0-9_]{0,47}$")
SHARD_ID = re.compile(r"^shardId-[0-9]{12}$")
SEQUENCE = re.compile(r"^[0-9]{1,80}$")

EVENTS_PREFIX = "events/"
DEAD_LETTER_PREFIX = "dead-letter/"

#: The path segment of objects many customers share (``customer=`` is never "shared": a
#: customer id cannot hold the "=" that segment lacks, and the segment is not ``customer=…``).
SHARED_SEGMENT = "shared"

_EVENT_KEY = re.compile(
    r"^events/(?:customer=(?P<customer>[a-z0-9][a-z0-9_]{0,47})|shared)"
    r"/type=(?P<type>[a-z0-9][a-z0-9_]{0,47})"
    r"/v=(?P<version>[0-9]{1,4})/dt=(?P<dt>[0-9]{4}-[0-9]{2}-[0-9]{2})"
    r"/(?P<shard>shardId-[0-9]{12})-(?P<first>[0-9]{1,80})-(?P<last>[0-9]{1,80})\.parquet$"
)


class UnsafeKeyComponent(ValueError):
    pass


def _check(value: str, pattern: re.Pattern[str], what: str) -> str:
    if not pattern.fullmatch(value):
        raise UnsafeKeyComponent(f"unsafe {what} for an S3 key: {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class EventObjectKey:
    """One Parquet object of a flush: one customer's rows of one type+version
    (``events/customer=<c>/…``), or — ``customer_id`` None — the rows of every customer of the
    flush below the own-object threshold, sorted by customer (``events/shared/…``)."""

    customer_id: str | None
    event_type: str
    version: int
    day: date
    shard_id: str
    first_sequence: str
    last_sequence: str

    @property
    def shared(self) -> bool:
        return self.customer_id is None

    def __str__(self) -> str:
        if self.customer_id is None:
            owner = SHARED_SEGMENT
        else:
            owner = f"customer={_check(self.customer_id, SAFE_COMPONENT, 'customer_id')}"
        _check(self.event_type, SAFE_COMPONENT, "event type")
        _check(self.shard_id, SHARD_ID, "shard id")
        _check(self.first_sequence, SEQUENCE, "sequence number")
        _check(self.last_sequence, SEQUENCE, "sequence number")
        if not 0 < self.version < 10_000:
            raise UnsafeKeyComponent(f"unsafe version for an S3 key: {self.version!r}")
        return (
            f"{EVENTS_PREFIX}{owner}/type={self.event_type}/v={self.version}"
            f"/dt={self.day.isoformat()}/{self.shard_id}-{self.first_sequence}-{self.last_sequence}.parquet"
        )


def parse_event_key(key: str) -> EventObjectKey:
    match = _EVENT_KEY.fullmatch(key)
    if match is None:
        raise UnsafeKeyComponent(f"not an event object key: {key!r}")
    return EventObjectKey(
        customer_id=match["customer"],
        event_type=match["type"],
        version=int(match["version"]),
        day=date.fromisoformat(match["dt"]),
        shard_id=match["shard"],
        first_sequence=match["first"],
        last_sequence=match["last"],
    )


def dead_letter_key(stream: str, shard_id: str, day: date, first_sequence: str, last_sequence: str) -> str:
    """Dead letters of one flush: newline JSON, one line per rejected record."""
    _check(shard_id, SHARD_ID, "shard id")
    _check(first_sequence, SEQUENCE, "sequence number")
    _check(last_sequence, SEQUENCE, "sequence number")
    safe_stream = re.sub(r"[^A-Za-z0-9_.-]", "_", stream)[:128]
    return (
        f"{DEAD_LETTER_PREFIX}stream={safe_stream}/dt={day.isoformat()}/"
        f"{shard_id}-{first_sequence}-{last_sequence}.jsonl"
    )


def runtime_dead_letter_key(
    stream: str, application: str, reason: str, shard_id: str, day: date, sequence: str, sub: int
) -> str:
    """The dead letter of one record the consumer runtime refused (``aggregate_too_large``…) or a
    processor could not process (``processor_error``): one object per record and application, so
    two applications refusing the same record do not overwrite each other."""
    _check(shard_id, SHARD_ID, "shard id")
    _check(sequence, SEQUENCE, "sequence number")
    safe_stream = re.sub(r"[^A-Za-z0-9_.-]", "_", stream)[:128]
    safe_app = re.sub(r"[^A-Za-z0-9_.-]", "_", application)[:128]
    safe_reason = re.sub(r"[^a-z0-9_]", "_", reason)[:64]
    return (
        f"{DEAD_LETTER_PREFIX}stream={safe_stream}/dt={day.isoformat()}/{safe_reason}/"
        f"app={safe_app}/{shard_id}-{sequence}-{sub}.jsonl"
    )
