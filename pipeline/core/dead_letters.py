"""The dead-letter contract: one JSON line per refused record, the raw bytes kept, with a reason.

Written by the batcher (invalid events, under a flush's key) and by the consumer runtime (records
a processor cannot process, ``processor_error``); read by operators and by the demo's verdict.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass

import orjson


@dataclass(frozen=True, slots=True)
class Rejected:
    """An invalid record, kept byte for byte for its dead letter."""

    data: bytes
    partition_key: str
    sequence_number: str
    sub_sequence_number: int
    arrival_ms: int
    reason: str
    detail: str


def dead_letter_document(stream: str, shard_id: str, rejected: Sequence[Rejected]) -> bytes:
    """Newline JSON, one rejected record per line, the raw bytes base64-encoded."""
    lines = [
        orjson.dumps(
            {
                "stream": stream,
                "shard_id": shard_id,
                "sequence_number": r.sequence_number,
                "sub_sequence_number": r.sub_sequence_number,
                "partition_key": r.partition_key,
                "approximate_arrival_timestamp": r.arrival_ms,
                "reason": r.reason,
                "detail": r.detail[:2000],
                "data_base64": base64.b64encode(r.data).decode("ascii"),
            }
        )
        for r in rejected
    ]
    return b"\n".join(lines) + b"\n" if lines else b""
