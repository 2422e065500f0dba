"""KPL de-aggregation: one Kinesis record → its user records with sub-sequence numbers.

Format: magic F3 89 9A C2 ‖ protobuf ``AggregatedRecord`` ‖ MD5 of the protobuf bytes. Only a
record whose magic, length, digest and protobuf all check out is split; anything else passes
through whole with sub-sequence 0, as KCL does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

from pipeline.consumer.processor import Record

MAGIC = b"\xf3\x89\x9a\xc2"
_DIGEST = 16


def _messages() -> Any:
    # The aggregator import puts the generated protobuf modules on sys.path first.
    import aws_kinesis_agg.aggregator  # noqa: F401
    from aws_kinesis_agg import messages_pb2

    return messages_pb2


def deaggregate(data: bytes, partition_key: str, sequence_number: str, arrival_ms: int) -> Iterator[Record]:
    if len(data) > len(MAGIC) + _DIGEST and data.startswith(MAGIC):
        body, digest = data[len(MAGIC) : -_DIGEST], data[-_DIGEST:]
        if hashlib.md5(body, usedforsecurity=False).digest() == digest:
            aggregate = _messages().AggregatedRecord()
            try:
                aggregate.ParseFromString(body)
            except Exception:  # a malformed protobuf is passed through whole, like KCL
                aggregate = None
            if aggregate is not None and len(aggregate.records) > 0:
                keys = list(aggregate.partition_key_table)
                for index, sub in enumerate(aggregate.records):
                    key = (
                        keys[sub.partition_key_index]
                        if sub.partition_key_index < len(keys)
                        else partition_key
                    )
                    yield Record(sub.data, key, sequence_number, index, arrival_ms)
                return
    yield Record(data, partition_key, sequence_number, 0, arrival_ms)
