"""KPL de-aggregation: one Kinesis record → its user records with sub-sequence numbers.

Format: magic F3 89 9A C2 ‖ protobuf ``AggregatedRecord`` ‖ MD5 of the protobuf bytes. Only a
record whose magic, length, digest and protobuf all check out is split; anything else passes
through whole with sub-sequence 0, as KCL does.

Bounded, unlike KCL: one forged 1 MB aggregate can hold ~167k empty sub-records (~43 MiB of
Python objects), and a GetRecords page can carry ten of them. An aggregate over
:class:`AggregateLimits` raises :class:`AggregateRefused` before any sub-record is built; the
runtime dead-letters the whole record with the reason. The defaults are far above what the KPL
writes (its ``AggregationMaxSize`` is 51,200 bytes by default, 1 MiB at most).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from pipeline.consumer.processor import Record

MAGIC = b"\xf3\x89\x9a\xc2"
_DIGEST = 16
TOO_MANY_RECORDS = "aggregate_too_many_records"
TOO_LARGE = "aggregate_too_large"


@dataclass(frozen=True, slots=True)
class AggregateLimits:
    max_records: int = 50_000
    #: Sub-record data and partition keys together.
    max_bytes: int = 1024 * 1024


class AggregateRefused(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _messages() -> Any:
    # The aggregator import puts the generated protobuf modules on sys.path first.
    import aws_kinesis_agg.aggregator  # noqa: F401
    from aws_kinesis_agg import messages_pb2

    return messages_pb2


def _parse(data: bytes) -> Any | None:
    if len(data) <= len(MAGIC) + _DIGEST or not data.startswith(MAGIC):
        return None
    body, digest = data[len(MAGIC) : -_DIGEST], data[-_DIGEST:]
    if hashlib.md5(body, usedforsecurity=False).digest() != digest:
        return None
    aggregate = _messages().AggregatedRecord()
    try:
        aggregate.ParseFromString(body)
    except Exception:  # a malformed protobuf is passed through whole, like KCL
        return None
    return aggregate if len(aggregate.records) > 0 else None


def deaggregate(
    data: bytes,
    partition_key: str,
    sequence_number: str,
    arrival_ms: int,
    limits: AggregateLimits = AggregateLimits(),
) -> list[Record]:
    aggregate = _parse(data)
    if aggregate is None:
        return [Record(data, partition_key, sequence_number, 0, arrival_ms)]
    count = len(aggregate.records)
    if count > limits.max_records:
        raise AggregateRefused(TOO_MANY_RECORDS, f"{count} sub-records (limit {limits.max_records})")
    keys = list(aggregate.partition_key_table)
    size = sum(len(sub.data) for sub in aggregate.records) + sum(len(k) for k in keys)
    if size > limits.max_bytes:
        raise AggregateRefused(TOO_LARGE, f"{size} bytes of sub-records and keys (limit {limits.max_bytes})")
    return [
        Record(
            sub.data,
            keys[sub.partition_key_index] if sub.partition_key_index < len(keys) else partition_key,
            sequence_number,
            index,
            arrival_ms,
        )
        for index, sub in enumerate(aggregate.records)
    ]
